//! Writes batches to ClickHouse and acknowledges their messages only after the INSERT holding them succeeded.
//!
//! A failed INSERT is retried with capped exponential backoff and jitter, forever: the batch is kept, and the
//! messages' ack deadlines are extended (`+WPI`, every third of the ack wait) while an INSERT runs and while
//! retrying, so JetStream neither gives them up nor redelivers them elsewhere. An INSERT that succeeded on the
//! server but whose answer was lost is simply repeated; the ReplacingMergeTree collapses the copies.

use crate::batcher::Batch;
use crate::handoff::Taker;
use crate::metrics::Metrics;
use crate::row::EventRow;
use crate::schema::{self, EVENTS_TABLE};
use crate::source::{Ack, signal_progress};
use async_nats::jetstream::AckKind;
use fechatter_service::error::chain;
use rand::Rng;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Settings of the sink.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    /// Timeout of one INSERT.
    pub insert_timeout: Duration,
    /// Cap of the backoff between retries.
    pub max_backoff: Duration,
    /// How often the messages of the batch being stored are signalled as in progress ([`Settings::keep_alive`]).
    ///
    /// [`Settings::keep_alive`]: crate::config::Settings::keep_alive
    pub keep_alive: Duration,
}

/// The ClickHouse writer.
pub struct ClickHouseSink {
    client: clickhouse::Client,
    settings: SinkSettings,
    metrics: Arc<Metrics>,
    nats: Option<async_nats::Client>,
    /// How to re-create a schema an INSERT finds missing; `None`: retry only.
    schema: Option<SchemaHome>,
}

/// Where the schema lives: a client without a database (to create it) and the database's name.
pub struct SchemaHome {
    /// A client of the server, no database selected.
    pub server: clickhouse::Client,
    /// The database holding the tables.
    pub database: String,
}

/// Whether an INSERT failed because the events table or its database does not exist (ClickHouse's codes 60,
/// `UNKNOWN_TABLE`, and 81, `UNKNOWN_DATABASE`): dropped by hand while the service ran. Retrying alone would fail
/// until someone re-created them.
pub fn schema_missing(err: &clickhouse::error::Error) -> bool {
    let clickhouse::error::Error::BadResponse(text) = err else {
        return false;
    };
    // "Code: 60, e.displayText() = …" on 18.16, "Code: 60. DB::Exception: …" on later versions.
    let code: Option<String> = text
        .split("Code: ")
        .nth(1)
        .map(|rest| rest.chars().take_while(char::is_ascii_digit).collect());
    matches!(code.as_deref(), Some("60" | "81"))
}

/// Backoff before retry number `attempt` (1-based): 100 ms doubling up to `cap`, with ±25 % jitter so several
/// instances do not retry in step.
pub fn backoff(attempt: u32, cap: Duration) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)));
    let capped = base.min(cap);
    let jitter = rand::rng().random_range(0.75..=1.25);
    capped.mul_f64(jitter)
}

impl ClickHouseSink {
    /// A sink writing with `client`; `nats` is flushed after acknowledging so acks leave promptly.
    pub fn new(
        client: clickhouse::Client,
        settings: SinkSettings,
        metrics: Arc<Metrics>,
        nats: Option<async_nats::Client>,
    ) -> Self {
        Self {
            client,
            settings,
            metrics,
            nats,
            schema: None,
        }
    }

    /// This sink, re-creating the schema in `home` when an INSERT finds it missing ([`schema::restore`]).
    pub fn restoring_schema(mut self, home: SchemaHome) -> Self {
        self.schema = Some(home);
        self
    }

    /// Re-creates the schema after `err`, when `err` says it is missing and this sink knows where it lives.
    async fn restore_if_missing(&self, err: &clickhouse::error::Error) {
        let Some(home) = self.schema.as_ref().filter(|_| schema_missing(err)) else {
            return;
        };
        match schema::restore(&home.server, &self.client, &home.database).await {
            Ok(version) => tracing::warn!(
                database = %home.database,
                version,
                "re-created the ClickHouse schema an INSERT found missing"
            ),
            Err(err) => tracing::error!(error = %chain(&err), "failed to re-create the missing ClickHouse schema"),
        }
    }

    /// Asks `batches` for a batch, stores it, and asks again, until the pipeline has finished.
    ///
    /// A stored batch is acknowledged, and its rows freed, by a task of its own while the next INSERT runs: at
    /// 10,000 rows that took 60-65 ms of a 250 ms INSERT round (`--example ingest_stages`, S4 against S5), time
    /// in which ClickHouse sat idle. One such task at a time, so at most one stored batch waits for its acks;
    /// the last one is awaited before `run` returns, so shutdown acknowledges everything stored.
    pub async fn run(self, batches: Taker) {
        let mut acknowledging: Option<JoinHandle<()>> = None;
        while let Some(batch) = batches.next().await {
            self.store(&batch).await;
            await_acks(acknowledging.take()).await;
            let (nats, metrics) = (self.nats.clone(), Arc::clone(&self.metrics));
            acknowledging = Some(tokio::spawn(acknowledge(nats, metrics, batch)));
        }
        await_acks(acknowledging).await;
        tracing::info!("sink drained");
    }

    async fn insert(&self, rows: &[EventRow]) -> Result<(), clickhouse::error::Error> {
        let timeout = Some(self.settings.insert_timeout);
        let mut insert = self
            .client
            .insert::<EventRow>(EVENTS_TABLE)
            .await?
            .with_timeouts(timeout, timeout);
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await
    }

    /// Inserts `batch`, retrying until it succeeds.
    async fn store(&self, batch: &Batch<Ack>) {
        let rows = batch.rows.len();
        if rows == 0 {
            return;
        }
        let mut attempt = 0u32;
        // The pipeline signalled the batch's messages a third of the ack wait after the batch opened, and every
        // third after that: counting afresh from the hand-over keeps those gaps under two thirds of it. (A message
        // that waited in the source's channel before joining the batch may have had less: see README, Delivery
        // guarantees.)
        let mut last_progress = Instant::now();
        loop {
            let started = Instant::now();
            match self
                .keeping_alive(&batch.acks, &mut last_progress, self.insert(&batch.rows))
                .await
            {
                Ok(()) => {
                    let elapsed = started.elapsed();
                    self.metrics.insert_seconds.observe(elapsed.as_secs_f64());
                    self.metrics.batch_rows.observe(rows as f64);
                    self.metrics.events_inserted.inc_by(rows as u64);
                    self.observe_latency(&batch.rows);
                    tracing::info!(
                        rows,
                        ms = elapsed.as_millis() as u64,
                        attempts = attempt + 1,
                        "batch stored in ClickHouse"
                    );
                    break;
                }
                Err(err) => {
                    attempt += 1;
                    self.metrics.insert_retries.inc();
                    self.metrics.fail("insert");
                    let wait = backoff(attempt, self.settings.max_backoff);
                    tracing::error!(
                        rows,
                        attempt,
                        retry_in_ms = wait.as_millis() as u64,
                        error = %chain(&err),
                        "INSERT failed; batch kept for retry"
                    );
                    // Bounded, and signalling progress, like an INSERT: DDL may wait for a lock.
                    let restore = tokio::time::timeout(self.settings.insert_timeout, self.restore_if_missing(&err));
                    if self
                        .keeping_alive(&batch.acks, &mut last_progress, restore)
                        .await
                        .is_err()
                    {
                        tracing::error!("re-creating the missing ClickHouse schema timed out; retrying");
                    }
                    self.keeping_alive(&batch.acks, &mut last_progress, tokio::time::sleep(wait))
                        .await;
                }
            }
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            for row in &batch.rows {
                tracing::debug!(
                    "💾 Successfully stored analytics event: {} for user: {}",
                    row.event_type,
                    row.user_id
                );
            }
        }
    }

    /// Runs `work` while telling JetStream, every `keep_alive` (counted from `last_progress`), that
    /// the messages of `acks` are still being worked on: an INSERT may take up to `insert_timeout`, and a batch
    /// is retried for as long as ClickHouse fails.
    async fn keeping_alive<F: Future>(&self, acks: &[Ack], last_progress: &mut Instant, work: F) -> F::Output {
        let every = self.settings.keep_alive;
        tokio::pin!(work);
        loop {
            tokio::select! {
                output = &mut work => return output,
                () = tokio::time::sleep_until(*last_progress + every), if self.nats.is_some() => {
                    if let Some(nats) = &self.nats {
                        signal_progress(nats, acks, every);
                    }
                    *last_progress = Instant::now();
                }
            }
        }
    }

    fn observe_latency(&self, rows: &[EventRow]) {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        for row in rows.iter().filter(|r| r.server_ts > 0) {
            let seconds = (now_ms - row.server_ts).max(0) as f64 / 1000.0;
            self.metrics.end_to_end_seconds.observe(seconds);
        }
    }
}

/// Acknowledges the messages of the stored `batch` over `nats` (nothing to do over core NATS), then frees it.
async fn acknowledge(nats: Option<async_nats::Client>, metrics: Arc<Metrics>, batch: Batch<Ack>) {
    let Some(nats) = nats else { return };
    send_all(&nats, &batch.acks, AckKind::Ack, |err| {
        // The row is stored; a redelivery will be inserted again and collapse into it.
        metrics.fail("ack");
        tracing::warn!(error = %err, "failed to acknowledge a stored message");
    })
    .await;
}

/// Sends `kind` for each of `acks`, handing failures to `on_error`, then flushes so they leave at once.
async fn send_all(
    nats: &async_nats::Client,
    acks: &[Ack],
    kind: AckKind,
    mut on_error: impl FnMut(async_nats::PublishError),
) {
    for ack in acks {
        if let Err(err) = ack.send(nats, kind).await {
            on_error(err);
        }
    }
    let _ = nats.flush().await;
}

/// Waits for the acknowledging task of the previous batch, if any.
async fn await_acks(task: Option<JoinHandle<()>>) {
    let Some(task) = task else { return };
    if let Err(err) = task.await {
        // Only a panic gets here: those messages stay unacknowledged, are redelivered and collapse in ClickHouse.
        tracing::error!(error = %err, "acknowledging a stored batch failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_table_or_database_is_told_from_other_failures() {
        let answer = |text: &str| clickhouse::error::Error::BadResponse(text.to_owned());
        let old = "Code: 60, e.displayText() = DB::Exception: Table db.analytics_events doesn't exist., e.what() = DB";
        assert!(schema_missing(&answer(old)));
        assert!(schema_missing(&answer(
            "Code: 81. DB::Exception: Database db doesn't exist"
        )));
        assert!(!schema_missing(&answer(
            "Code: 241. DB::Exception: Memory limit exceeded"
        )));
        assert!(!schema_missing(&answer("Code: 600. something else")));
        assert!(!schema_missing(&clickhouse::error::Error::TimedOut));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let cap = Duration::from_secs(30);
        let first = backoff(1, cap);
        assert!(
            first >= Duration::from_millis(75) && first <= Duration::from_millis(125),
            "{first:?}"
        );
        let fifth = backoff(5, cap);
        assert!(
            fifth >= Duration::from_millis(1200) && fifth <= Duration::from_millis(2000),
            "{fifth:?}"
        );
        for attempt in [20, 100, u32::MAX] {
            assert!(backoff(attempt, cap) <= cap.mul_f64(1.25));
        }
    }
}
