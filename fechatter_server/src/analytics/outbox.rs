//! The transactional outbox: an analytics event is written to `analytics_outbox` in the same transaction as the
//! change it describes, so an event exists exactly when its change committed, whatever NATS is doing. (A message
//! send writes its event in its live-update journal row instead; the relay below reads those too, through
//! [`super::journal_relay`].)
//!
//! The relay publishes outbox rows in batches and deletes only the rows JetStream acknowledged. Rows are
//! claimed with `FOR UPDATE SKIP LOCKED`, so several server instances relay side by side without publishing a
//! row twice; and were a row published twice anyway (a crash between the ack and the delete), its
//! `Nats-Msg-Id = event_id` makes JetStream drop the copy, and ClickHouse collapses any later one.
//!
//! The relay wakes as soon as a new row is visible instead of waiting for `flush_interval_ms`: the transaction that
//! wrote it, once committed, wakes the relay of its own process in memory ([`super::Analytics::written`] for a
//! message send, [`super::Analytics::committed`] for the others). Not through PostgreSQL: `NOTIFY` serializes the
//! commits of every notifying transaction on one lock, disk flush included (see `crate::live::journal`), and
//! searches, downloads and sign-ins each write an event. The relay still listens on [`CHANNEL`], where builds
//! before 2026-11-30 notified, so that during a rolling upgrade their rows are relayed as promptly.
//!
//! Rows whose instance stopped before relaying them are picked up by any relay within `flush_interval_ms`.

use super::journal_relay;
use super::publisher::{AnalyticsPublisher, Encoded, PublishError, PublishOutcome, subject_suffix};
use crate::metrics::Metrics;
use fechatter_protos::type_name_from_subject;
use fechatter_protos::v1::AnalyticsEvent;
use prost::Message as _;
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool, Row as _};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The notification channel relays listen on: builds before 2026-11-30 notified on it with every outbox row.
pub const CHANNEL: &str = "analytics_outbox";

/// An outbox row, encoded before it is written: statements that write it themselves (the message send, see
/// `chat::store::send_messages`) bind these fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// The event's id, JetStream's dedup key.
    pub event_id: uuid::Uuid,
    /// The NATS subject it is published on.
    pub subject: String,
    /// The protobuf-encoded [`AnalyticsEvent`].
    pub payload: Vec<u8>,
}

impl OutboxRow {
    /// The row of `event`; refused when the event lacks a type or a UUID `event_id`.
    pub fn new(event: &AnalyticsEvent) -> Result<Self, sqlx::Error> {
        let (Some(subject), Ok(event_id)) = (event.subject(), uuid::Uuid::parse_str(event.event_id())) else {
            // Events are built by `build_event`, which always sets both; refuse loudly rather than store junk.
            return Err(sqlx::Error::Protocol(
                "analytics event without type or UUID event_id".into(),
            ));
        };
        Ok(Self {
            event_id,
            subject,
            payload: event.encode_to_vec(),
        })
    }

    /// The subject's suffix (`message.sent`), as the log lines name the event.
    pub fn suffix(&self) -> &str {
        subject_suffix(&self.subject)
    }
}

/// The seed's first log line of an event, as it is about to be written to the outbox.
pub fn log_queuing(event: &AnalyticsEvent) {
    let suffix = event
        .event_type
        .as_ref()
        .map(|k| k.subject_suffix())
        .unwrap_or_default();
    tracing::debug!("📊 Queuing analytics event: {} for user: {}", suffix, event.user_id());
}

/// The seed's second log line of an event, once its outbox row is written; the relay logs the third (📤) when
/// JetStream has it.
pub fn log_queued(row: &OutboxRow) {
    tracing::debug!("✅ Analytics event {} queued successfully", row.suffix());
}

/// Writes `events` to the outbox on `conn` (the caller's transaction), in one statement however many they are (a
/// chat's deletion writes one per member): a round trip each would hold the caller's locks that much longer. The
/// caller wakes the relay once it committed ([`super::Analytics::committed`]).
pub async fn enqueue(conn: &mut PgConnection, events: &[AnalyticsEvent]) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    events.iter().for_each(log_queuing);
    let rows = events.iter().map(OutboxRow::new).collect::<Result<Vec<_>, _>>()?;
    sqlx::query(
        "INSERT INTO analytics_outbox (event_id, subject, payload) \
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[])",
    )
    .bind(rows.iter().map(|r| r.event_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.subject.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.payload.as_slice()).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    rows.iter().for_each(log_queued);
    Ok(())
}

/// Events waiting to be published: the outbox's rows, and the message sends' events in the journal that the
/// relay has not passed ([`super::journal_relay`]).
pub async fn depth(pool: &PgPool) -> Result<i64, sqlx::Error> {
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM analytics_outbox")
        .fetch_one(pool)
        .await?;
    Ok(rows + super::journal_relay::depth(pool).await?)
}

/// Settings of the relay.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Rows per round.
    pub batch_size: usize,
    /// Longest sleep between rounds.
    pub flush_interval: Duration,
}

/// How long a woken relay waits for the rows committing alongside the one that woke it. Each round is a
/// transaction, a dozen statements; when its commit still waited for the disk, at 5 ms, sends with analytics on
/// ran at 0.78-0.80 of sends without it (`send_bench`, durable PostgreSQL), at 20 ms at 0.87-0.96; once sends were
/// group-committed (and so faster), 0.84-0.89 at 20 ms and 0.95 at 50 ms. Events reach JetStream 45 ms later;
/// nobody waits for them. (Not measured again since rounds commit without waiting for the disk.)
const COALESCE: Duration = Duration::from_millis(50);

/// What one relay round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Round {
    /// Rows claimed.
    pub claimed: usize,
    /// Rows acknowledged by JetStream and deleted.
    pub published: usize,
    /// Rows not published (kept in the outbox), by id.
    pub failed: Vec<i64>,
}

/// Longest a round publishes: past it, the events not acknowledged yet wait for a later round. A round's
/// transaction is open while it publishes, and an open transaction holds back PostgreSQL's cleanup (vacuum, and
/// the pruning of the live-update journal), so it must not last for the length of an outage.
const ROUND_DEADLINE: Duration = Duration::from_secs(15);

/// Publishes one relay round's `events` (the outbox's or the journal's, [`super::journal_relay`]) within
/// [`ROUND_DEADLINE`]; one result per event, in order, all failed when the deadline passed. Messages sent but
/// not acknowledged by then may be stored; their next publish is a duplicate JetStream drops.
pub(super) async fn publish_round(
    publisher: &AnalyticsPublisher,
    events: Vec<Encoded>,
) -> Vec<Result<PublishOutcome, PublishError>> {
    let sent = events.len();
    match tokio::time::timeout(ROUND_DEADLINE, publisher.publish_encoded(events)).await {
        Ok(results) => results,
        Err(_) => (0..sent)
            .map(|_| Err(PublishError::Ack("the relay round's deadline passed".into())))
            .collect(),
    }
}

/// Begins a relay round's transaction, set so that its commit does not wait for the disk
/// (`synchronous_commit = off`, for this transaction alone; sent with the `BEGIN`, so it costs no round trip).
///
/// A round's commit records what JetStream acknowledged: outbox rows deleted, the journal's cursor moved.
/// Losing it (PostgreSQL crashing before its WAL writer flushes it, within 3 × `wal_writer_delay`, 0.6 s by
/// default) is the same as a relay crashing between the acks and its commit, which the relay survives anyway:
/// the rows are published again, JetStream drops the copies within its duplicate window, and ClickHouse
/// collapses later ones (every query reads with `FINAL`). Nothing else can outrun the lost commit: the
/// write-ahead log is flushed in order, so a later commit that acted on this one (the journal's pruning reading
/// the cursor) reaching the disk brings this one with it. What it saves: one disk flush per round, which the
/// message sends' own commits would otherwise queue behind.
pub async fn begin_round(pool: &PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    pool.begin_with("BEGIN; SET LOCAL synchronous_commit = off").await
}

/// Publishes up to `batch_size` outbox rows, except those of `parked`, and deletes those JetStream
/// acknowledged, in one transaction.
pub async fn relay_once(
    pool: &PgPool,
    publisher: &AnalyticsPublisher,
    batch_size: usize,
    parked: &[i64],
    metrics: &Metrics,
) -> Result<Round, sqlx::Error> {
    let mut tx = begin_round(pool).await?;
    let rows = sqlx::query(
        // `NOT IN (SELECT unnest …)` and not `<> ALL($2)`: PostgreSQL hashes the subquery's ids, while it would
        // compare each row with every parked id in turn.
        "SELECT id, event_id, subject, payload FROM analytics_outbox \
         WHERE id NOT IN (SELECT unnest($2::bigint[])) ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(i64::try_from(batch_size).unwrap_or(i64::MAX))
    .bind(parked)
    .fetch_all(&mut *tx)
    .await?;
    let claimed = rows.len();
    let mut ids = Vec::with_capacity(claimed);
    let mut events = Vec::with_capacity(claimed);
    let mut done: Vec<i64> = Vec::with_capacity(claimed);
    // Sent as stored: `OutboxRow::new` encoded them from events it checked, so they are not decoded again (a
    // payload corrupted in the database reaches the ingester, which dead-letters what it cannot decode).
    for row in rows {
        let id: i64 = row.try_get("id")?;
        let subject: String = row.try_get("subject")?;
        if type_name_from_subject(&subject).is_none() {
            // Only this server writes the outbox, so this is a corrupted row; no stream would ever take it, and
            // keeping it would fail every round. Drop it, loudly.
            tracing::error!(id, subject, "outbox row with no analytics subject deleted");
            done.push(id);
            continue;
        }
        ids.push(id);
        events.push(Encoded {
            event_id: row.try_get::<uuid::Uuid, _>("event_id")?.to_string(),
            subject: subject.into(),
            payload: row.try_get::<Vec<u8>, _>("payload")?.into(),
        });
    }
    let results = publish_round(publisher, events).await;
    // One line per round, not per row: while NATS is down every row of every round fails the same way.
    let mut failed = Vec::new();
    let mut first_error = None;
    for (id, result) in ids.iter().zip(&results) {
        match result {
            Ok(_) => done.push(*id),
            Err(err) => {
                metrics.publish_failures.inc();
                failed.push(*id);
                first_error.get_or_insert_with(|| crate::error_chain(err));
            }
        }
    }
    if let Some(error) = first_error {
        tracing::warn!(failed = failed.len(), error = %error, "analytics events not published; kept in the outbox");
    }
    let published = results.iter().filter(|r| r.is_ok()).count();
    if !done.is_empty() {
        sqlx::query("DELETE FROM analytics_outbox WHERE id = ANY($1)")
            .bind(&done)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    metrics.events_published.inc_by(published as u64);
    Ok(Round {
        claimed,
        published,
        failed,
    })
}

/// Rows that failed to publish, left out of the relay's rounds for a while so that they hold up no others:
/// a row that JetStream refuses (no stream takes its subject, a permission) fails in every round, and without
/// this `batch_size` such rows at the head of the outbox would stop every later event.
#[derive(Debug, Default)]
struct Parked {
    until: HashMap<i64, Instant>,
}

/// Most rows parked at once; beyond it failed rows are claimed again, and the relay backs off (bounds the
/// memory, and the size of the claim's list of ids to leave out).
const MAX_PARKED: usize = 10_000;

/// Shortest time a failed row is left out (it is `flush_interval` otherwise): a drain, which goes on past the
/// rows it parks without waiting, must reach the rows behind them before the first ones come back.
const MIN_PARK: Duration = Duration::from_secs(1);

impl Parked {
    /// Parks `ids` for `period` (at least [`MIN_PARK`]); false when some found no room. The period is the
    /// relay's `flush_interval`: when JetStream refused every row because it was failing as a whole (no stream
    /// yet), they are tried again as soon as the relay's timer would have tried them anyway.
    fn park(&mut self, ids: &[i64], period: Duration) -> bool {
        let until = Instant::now() + period.max(MIN_PARK);
        for id in ids {
            if self.until.len() >= MAX_PARKED {
                return false;
            }
            self.until.insert(*id, until);
        }
        true
    }

    /// The ids parked now, after releasing those whose period ended.
    fn current(&mut self) -> Vec<i64> {
        let now = Instant::now();
        self.until.retain(|_, until| *until > now);
        self.until.keys().copied().collect()
    }
}

/// Runs the relay until `shutdown` is cancelled: a round whenever a new row commits (`wake`, or a notification),
/// every `flush_interval` otherwise, and rounds back to back while full batches keep coming. Failures (NATS or
/// PostgreSQL down) back off up to `flush_interval`; the rows wait in the outbox. While NATS is disconnected no
/// round runs; rows that fail are parked for `flush_interval` ([`Parked`]) and the next round claims the rows
/// after them at once.
pub async fn run_relay(
    pool: PgPool,
    publisher: AnalyticsPublisher,
    settings: RelaySettings,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut listener = connect_listener(&pool).await;
    let mut failures = 0u32;
    let mut parked = Parked::default();
    // As the client is at start (it may still be connecting), so that only a change is logged.
    let mut was_connected = publisher.is_connected();
    loop {
        let connected = publisher.is_connected();
        if connected != was_connected {
            if connected {
                tracing::info!("NATS connected: the outbox relay resumes");
            } else {
                tracing::warn!("NATS disconnected: analytics events wait in the outbox until it is back");
            }
            was_connected = connected;
        }
        if connected {
            // Drain both sources; a full round means more rows are waiting. A source whose round came back short
            // is not asked again in this drain (its rows committing meanwhile wake the relay anew), and after a
            // full journal round the journal's "anything waiting?" check is skipped: under load a drain would
            // otherwise repeat both round trips for nothing.
            let (mut outbox_more, mut journal_more, mut journal_full) = (true, true, false);
            loop {
                let mut failed = false;
                if outbox_more {
                    match relay_once(&pool, &publisher, settings.batch_size, &parked.current(), &metrics).await {
                        // Failed rows are set aside and the drain goes on with the rows after them. Only when they
                        // find no room (JetStream refusing everything, for long) does the relay wait before its
                        // next try, and claims the same rows again.
                        Ok(round) => {
                            failed |= !parked.park(&round.failed, settings.flush_interval);
                            outbox_more = round.claimed >= settings.batch_size;
                        }
                        Err(err) => {
                            failed = true;
                            tracing::warn!(error = %crate::error_chain(&err), "outbox relay round failed");
                        }
                    }
                }
                if journal_more {
                    let round =
                        journal_relay::relay_once(&pool, &publisher, settings.batch_size, journal_full, &metrics).await;
                    match round {
                        // The journal's events all go to one subject: a failure is JetStream's, not an event's.
                        Ok(round) => {
                            failed |= round.published < round.claimed;
                            journal_more = round.claimed >= settings.batch_size;
                            journal_full = journal_more;
                        }
                        Err(err) => {
                            failed = true;
                            tracing::warn!(error = %crate::error_chain(&err), "journal relay round failed");
                        }
                    }
                }
                if failed {
                    failures += 1;
                    break;
                }
                failures = 0;
                if !(outbox_more || journal_more) || shutdown.is_cancelled() {
                    break;
                }
            }
        } else {
            // No round while NATS is unreachable: each would hold a transaction open only to fail. The client
            // reconnects by itself; the rows wait in the outbox.
            failures += 1;
        }
        if shutdown.is_cancelled() {
            break;
        }
        let wait = if failures == 0 {
            settings.flush_interval
        } else {
            (Duration::from_millis(100) * 2u32.saturating_pow(failures.min(10))).min(settings.flush_interval)
        };
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(wait) => {
                if listener.is_none() {
                    listener = connect_listener(&pool).await;
                }
            }
            () = wake.notified(), if failures == 0 => {
                // As for notifications (see `recv`): the sends committing alongside join this round. Their own
                // wake-ups are stored as one permit, so at most one nearly empty round follows.
                tokio::time::sleep(COALESCE).await;
            }
            notified = recv(&mut listener), if failures == 0 => {
                if !notified {
                    listener = connect_listener(&pool).await;
                }
            }
        }
    }
    tracing::info!("outbox relay stopped");
}

async fn connect_listener(pool: &PgPool) -> Option<PgListener> {
    let mut listener = PgListener::connect_with(pool).await.ok()?;
    listener.listen(CHANNEL).await.ok()?;
    Some(listener)
}

/// Waits for a notification; false when the listener is gone (then the timer drives the relay).
///
/// Under load (builds that notified did so with every row) notifications arrive far faster than rounds are needed:
/// one round claims every row committed so far. The notifications already buffered are therefore dropped after the
/// first, and the round waits [`COALESCE`] for the rows committing alongside, instead of one (mostly empty) round
/// per row.
async fn recv(listener: &mut Option<PgListener>) -> bool {
    let Some(l) = listener else {
        return std::future::pending().await;
    };
    if l.recv().await.is_err() {
        return false;
    }
    tokio::time::sleep(COALESCE).await;
    while l.next_buffered().is_some() {}
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::{RequestContext, build_event};
    use fechatter_protos::v1::MessageSentEvent;
    use fechatter_protos::v1::analytics_event::EventType;

    #[test]
    fn a_row_names_its_event_as_the_log_lines_do() {
        let event = build_event(
            EventType::MessageSent(MessageSentEvent::default()),
            &RequestContext::default(),
        );
        let row = OutboxRow::new(&event).expect("a typed event with an id");
        assert_eq!(row.subject, "fechatter.analytics.message.sent");
        assert_eq!(row.suffix(), "message.sent");
        assert_eq!(row.payload, event.encode_to_vec());
    }
}
