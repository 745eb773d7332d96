//! Analytics events of the chat API. [`event`] builds them with a full context, [`Analytics::record`] writes
//! them to the transactional outbox in the caller's transaction ([`outbox`]; a message send writes its event in
//! its live-update journal row, [`journal_relay`]), and the relay publishes them to JetStream through
//! [`publisher`], acknowledged and deduplicated by `event_id`.

pub mod client;
pub mod event;
pub mod journal_relay;
pub mod outbox;
pub mod publisher;

pub use client::{CLIENT_HEADERS, ClientInfo};
pub use event::{RequestContext, build_event};
pub use outbox::OutboxRow;
pub use publisher::{AnalyticsPublisher, PublishError, PublishOutcome, PublisherSettings};

use crate::metrics::Metrics;
use fechatter_protos::v1::analytics_event::EventType;
use sqlx::{PgConnection, PgPool};
use std::borrow::Borrow;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

/// Most events [`Analytics::record_detached`] writes at once. Each write holds one of the pool's connections, so
/// this stays a small share of `database.max_connections`: while PostgreSQL is slow, error events must not take
/// the connections the requests need. Beyond it, events are dropped (and counted), never queued.
pub const MAX_DETACHED_WRITES: usize = 4;

/// How long a detached write waits for a connection. Short, unlike the pool's own 10 s: nobody waits for the
/// write, and a database that hands out no connection for a second is not going to take the event soon.
const DETACHED_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

/// Events written by [`Analytics::record`] in a transaction that has not committed yet.
#[must_use = "pass it to Analytics::committed once the transaction has committed"]
#[derive(Debug, Default)]
pub struct Recorded(u64);

impl std::ops::AddAssign for Recorded {
    fn add_assign(&mut self, other: Self) {
        self.0 += other.0;
    }
}

/// Records analytics events, or nothing when `features.messaging.enabled` is false.
#[derive(Clone)]
pub struct Analytics {
    enabled: bool,
    metrics: Arc<Metrics>,
    /// Wakes this process's relay (see [`outbox::run_relay`]) once a row is committed.
    relay_wake: Arc<Notify>,
    /// Permits of [`Analytics::record_detached`], [`MAX_DETACHED_WRITES`] in all.
    detached: Arc<Semaphore>,
}

impl Analytics {
    /// A recorder; `enabled` is `features.messaging.enabled`.
    pub fn new(enabled: bool, metrics: Arc<Metrics>) -> Self {
        Self {
            enabled,
            metrics,
            relay_wake: Arc::new(Notify::new()),
            detached: Arc::new(Semaphore::new(MAX_DETACHED_WRITES)),
        }
    }

    /// What [`Analytics::written`] and [`Analytics::committed`] signal; the relay of this process waits on it.
    pub fn relay_wake(&self) -> Arc<Notify> {
        self.relay_wake.clone()
    }

    /// Whether events are written at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Writes an event of `kind` to the outbox on `conn` — pass the transaction of the change the event
    /// describes, so both commit or neither does — and hand what it returns to [`Analytics::committed`] once
    /// that transaction has committed.
    pub async fn record(
        &self,
        conn: &mut PgConnection,
        kind: EventType,
        request: &RequestContext,
    ) -> Result<Recorded, sqlx::Error> {
        self.record_all(conn, [(kind, request)]).await
    }

    /// Writes the events of `events`, each of a kind and its context, to the outbox on `conn` in one statement, as
    /// [`Analytics::record`] writes one: for changes that concern many users (a chat's creation, deletion, new
    /// members), whose transaction would otherwise hold its locks for a round trip per user.
    pub async fn record_all<C: Borrow<RequestContext>>(
        &self,
        conn: &mut PgConnection,
        events: impl IntoIterator<Item = (EventType, C)>,
    ) -> Result<Recorded, sqlx::Error> {
        if !self.enabled {
            return Ok(Recorded::default());
        }
        let events: Vec<_> = events
            .into_iter()
            .map(|(kind, request)| build_event(kind, request.borrow()))
            .collect();
        outbox::enqueue(conn, &events).await?;
        Ok(Recorded(events.len() as u64))
    }

    /// Counts the events `recorded` in a transaction that has now committed
    /// (`fechatter_analytics_events_written_total`; an event of a change that rolled back was never written), and
    /// wakes this process's relay to publish them. Without the call they are still published, within
    /// `flush_interval_ms`.
    pub fn committed(&self, recorded: Recorded) {
        if recorded.0 > 0 {
            self.metrics.events_written.inc_by(recorded.0);
            self.relay_wake.notify_one();
        }
    }

    /// Writes an event of `kind` in a task of its own, on a connection of `pool`, for an event that describes no
    /// change of its own (`error_occurred`): the caller goes on at once. Best effort and bounded: when
    /// [`MAX_DETACHED_WRITES`] writes are under way, or no connection comes within a second, the event is
    /// dropped, counted (`fechatter_analytics_events_dropped_total`) and logged at warn.
    pub fn record_detached(&self, pool: &PgPool, kind: EventType, request: RequestContext) {
        if !self.enabled {
            return;
        }
        let event = kind.subject_suffix();
        let Ok(permit) = self.detached.clone().try_acquire_owned() else {
            self.dropped(event, "too many events being written");
            return;
        };
        let (analytics, pool) = (self.clone(), pool.clone());
        // Not on the server's task tracker: a write cut short by shutdown loses one best-effort event, and
        // every write ends within DETACHED_ACQUIRE_TIMEOUT plus one insert anyway.
        tokio::spawn(async move {
            let _permit = permit;
            let conn = tokio::time::timeout(DETACHED_ACQUIRE_TIMEOUT, pool.acquire()).await;
            let written = match conn {
                // On a connection of its own, outside any transaction: written is committed.
                Ok(Ok(mut conn)) => analytics.record(&mut conn, kind, &request).await.map(|recorded| {
                    analytics.committed(recorded);
                }),
                Ok(Err(err)) => Err(err),
                Err(_) => Err(sqlx::Error::PoolTimedOut),
            };
            if let Err(err) = written {
                analytics.dropped(event, &crate::error_chain(&err));
            }
        });
    }

    /// Counts and logs an event that was not written.
    fn dropped(&self, event: &str, why: &str) {
        self.metrics.events_dropped.inc();
        tracing::warn!(event, error = why, "analytics event not recorded");
    }

    /// The outbox row of an event of `kind`, for a statement that writes it itself; `None` when analytics is
    /// off. Call [`Analytics::written`] once the statement committed the row.
    pub fn outbox_row(&self, kind: EventType, request: &RequestContext) -> Result<Option<OutboxRow>, sqlx::Error> {
        if !self.enabled {
            return Ok(None);
        }
        let event = build_event(kind, request);
        outbox::log_queuing(&event);
        OutboxRow::new(&event).map(Some)
    }

    /// Counts an event written to the outbox by a statement given its [`Analytics::outbox_row`], and wakes this
    /// process's relay. Call it only after the row committed: a relay woken earlier finds nothing and sleeps.
    pub fn written(&self, row: &OutboxRow) {
        outbox::log_queued(row);
        self.metrics.events_written.inc();
        self.relay_wake.notify_one();
    }
}
