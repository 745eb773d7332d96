//! Analytics events of the chat API. [`event`] builds them with a full context, [`Analytics::record`] writes
//! them to the transactional outbox in the caller's transaction ([`outbox`]), and the relay publishes them to
//! JetStream through [`publisher`], acknowledged and deduplicated by `event_id`.

pub mod client;
pub mod event;
pub mod outbox;
pub mod publisher;

pub use client::ClientInfo;
pub use event::{RequestContext, build_event};
pub use outbox::OutboxRow;
pub use publisher::{AnalyticsPublisher, PublishError, PublishOutcome, PublisherSettings};

use crate::metrics::Metrics;
use fechatter_protos::v1::analytics_event::EventType;
use sqlx::PgConnection;
use std::sync::Arc;
use tokio::sync::Notify;

/// Records analytics events, or nothing when `features.messaging.enabled` is false.
#[derive(Clone)]
pub struct Analytics {
    enabled: bool,
    metrics: Arc<Metrics>,
    /// Wakes this process's relay (see [`outbox::run_relay`]) once a row is committed.
    relay_wake: Arc<Notify>,
}

impl Analytics {
    /// A recorder; `enabled` is `features.messaging.enabled`.
    pub fn new(enabled: bool, metrics: Arc<Metrics>) -> Self {
        Self {
            enabled,
            metrics,
            relay_wake: Arc::new(Notify::new()),
        }
    }

    /// What [`Analytics::written`] signals; the relay of this process waits on it.
    pub fn relay_wake(&self) -> Arc<Notify> {
        self.relay_wake.clone()
    }

    /// Whether events are written at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Writes an event of `kind` to the outbox on `conn` — pass the transaction of the change the event
    /// describes, so both commit or neither does.
    pub async fn record(
        &self,
        conn: &mut PgConnection,
        kind: EventType,
        request: &RequestContext,
    ) -> Result<(), sqlx::Error> {
        if !self.enabled {
            return Ok(());
        }
        outbox::enqueue(conn, &build_event(kind, request)).await?;
        self.metrics.events_written.inc();
        Ok(())
    }

    /// The outbox row of an event of `kind`, for a statement that writes it itself; `None` when analytics is
    /// off. Call [`Analytics::written`] once the statement committed the row.
    pub fn outbox_row(&self, kind: EventType, request: &RequestContext) -> Result<Option<OutboxRow>, sqlx::Error> {
        if !self.enabled {
            return Ok(None);
        }
        OutboxRow::new(&build_event(kind, request)).map(Some)
    }

    /// Counts an event written to the outbox by a statement given its [`Analytics::outbox_row`], and wakes this
    /// process's relay. Call it only after the row committed: a relay woken earlier finds nothing and sleeps.
    pub fn written(&self) {
        self.metrics.events_written.inc();
        self.relay_wake.notify_one();
    }
}
