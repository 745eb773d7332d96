//! The middle of the ingester: decodes incoming messages, dead-letters poison, and groups rows into batches
//! handed to the sink.
//!
//! A batch is due at `batch_size` rows, when its oldest row has waited `flush_interval`, or when a backlog of
//! `batch_size` messages or more has drained (JetStream tells each message's backlog); while such a backlog waits
//! behind it, at the ceiling of rows instead, or once delivery pauses or the batch is a second old (see
//! [`FlushPolicy`]). It goes to the sink when the sink next asks for
//! one ([`handoff`](crate::handoff)). Until then it keeps taking rows, up to the ceiling; there the pipeline
//! stops reading from the source, which is the backpressure that stops pulling when ClickHouse is slow or down.
//!
//! While a batch waits for the sink (ClickHouse slow or down), its messages, and those taken but not yet added,
//! get a progress signal (`+WPI`) every third of the ack wait, so JetStream does not redeliver what is held.
//!
//! It runs until its input channel closes (the source stopped), then hands over what it holds and drops its
//! end of the hand-over, so shutdown loses nothing in flight.

use crate::batcher::{Batch, FlushPolicy};
use crate::config::Settings;
use crate::dead_letter::{DeadLetterWorkers, HEADER_REDRIVE_OF, log_poison};
use crate::decode::{Limits, decode, subject_mismatch};
use crate::handoff::Giver;
use crate::metrics::Metrics;
use crate::row::{Origin, to_row};
use crate::source::{Ack, Incoming, signal_progress};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Most messages taken from the source's channel at a time. Taking what is there in one go, rather than one
/// message per turn of the loop, spares a wake-up and a flush timer armed and disarmed per message while a
/// backlog drains; a few hundred messages are a few milliseconds of work, so the flush deadline stays exact.
const INBOX: usize = 256;

/// Settings of the pipeline.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// When a batch is due, and the ceiling of rows a batch takes (`max_rows`) while it waits for the sink or
    /// grows in a backlog.
    pub flush: FlushPolicy,
    /// The subject carrying batch requests.
    pub batch_subject: String,
    /// What a message may hold.
    pub limits: Limits,
    /// Stream name, for legacy ids.
    pub stream: String,
    /// How often held messages are signalled as in progress ([`Settings::keep_alive`]).
    pub keep_alive: Duration,
}

impl PipelineSettings {
    /// The pipeline's part of the service's settings.
    ///
    /// The ceiling, `flush.max_rows`, is derived, not configured: half of what the consumer may hold
    /// unacknowledged, after two pulls in flight, so that, for one instance, the batch being inserted and the one
    /// growing behind it fit in what JetStream delivers (`max_ack_pending` is checked at start-up to be at least
    /// `3 × batch_size + 2 × pull_batch`, which keeps this at 1.5 × `batch_size` or more). Instances sharing the
    /// consumer, and a batch whose acks are still going out, hold part of it too; delivery then pauses before a
    /// growing batch reaches the ceiling, and the batch goes after [`crate::batcher::QUIET`].
    pub fn from_settings(settings: &Settings) -> Self {
        let js = &settings.jetstream;
        let room = js.max_ack_pending.saturating_sub(2 * js.pull_batch) / 2;
        Self {
            flush: FlushPolicy {
                batch_size: settings.batch_size,
                max_rows: room.max(settings.batch_size),
                flush_interval: settings.flush_interval(),
            },
            batch_subject: settings.integrations.messaging.subjects.analytics_batch.clone(),
            limits: Limits::from_settings(settings),
            stream: js.stream.clone(),
            keep_alive: settings.keep_alive(),
        }
    }
}

/// Runs the pipeline until `rx` closes. `nats` carries the progress signals of held JetStream messages.
pub async fn run(
    settings: PipelineSettings,
    mut rx: mpsc::Receiver<Incoming>,
    mut sink: Giver,
    mut dead_letters: Option<DeadLetterWorkers>,
    nats: Option<async_nats::Client>,
    metrics: Arc<Metrics>,
) {
    let mut batch: Batch<Ack> = Batch::new(settings.flush);
    let mut inbox = Vec::with_capacity(INBOX);
    // Messages taken from the channel but not yet handled: handling stops at the ceiling, and a batch message may
    // hold up to `limits.max_events` events, so the rest wait here for room.
    let mut waiting: VecDeque<Incoming> = VecDeque::with_capacity(INBOX);
    // When the held messages were last signalled as in progress (`None`: since the batch opened).
    let mut signalled: Option<Instant> = None;
    loop {
        let deadline = batch.deadline();
        let keep_alive = signalled
            .or_else(|| batch.opened_at())
            .map(|at| at + settings.keep_alive)
            .filter(|_| nats.is_some());
        let due = batch.is_due(Instant::now());
        let full = batch.at_ceiling();
        // Messages to take at most: one event each in the common case.
        let room = batch.room().min(INBOX);
        tokio::select! {
            biased;
            ready = sink.ready(), if due => {
                hand_over(&mut sink, ready, &mut batch);
                signalled = None;
                continue;
            }
            _ = sleep_until(keep_alive), if keep_alive.is_some() => {
                if let Some(nats) = &nats {
                    let held = batch.acks.iter().chain(waiting.iter().map(|m| &m.ack));
                    signal_progress(nats, held, settings.keep_alive);
                }
                signalled = Some(Instant::now());
                continue;
            }
            // Only wakes the loop up: the batch is due from now on.
            _ = sleep_until(deadline), if deadline.is_some() && !due => continue,
            received = rx.recv_many(&mut inbox, room), if waiting.is_empty() && room > 0 => {
                if received == 0 {
                    break;
                }
                waiting.extend(inbox.drain(..));
            }
            () = std::future::ready(()), if !waiting.is_empty() && !full => {}
        }
        // Up to the ceiling, checked after every message.
        while !batch.at_ceiling()
            && let Some(message) = waiting.pop_front()
        {
            handle(&settings, message, &mut batch, dead_letters.as_mut(), &metrics).await;
        }
    }
    if !batch.is_empty() {
        let ready = sink.ready().await;
        hand_over(&mut sink, ready, &mut batch);
    }
    if let Some(dead_letters) = dead_letters.as_mut() {
        dead_letters.drain().await;
    }
    tracing::info!("pipeline drained");
}

/// Gives the batch to the sink, which has asked for it when `ready`.
fn hand_over(sink: &mut Giver, ready: bool, batch: &mut Batch<Ack>) {
    let taken = batch.take();
    if !ready || sink.give(taken).is_err() {
        // The sink only stops after this task does; unreachable short of a panic there. The messages stay
        // unacknowledged and are redelivered.
        tracing::error!("sink is gone; batch left unacknowledged for redelivery");
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline).await;
    }
}

fn now_seconds() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or(0)
}

async fn handle(
    settings: &PipelineSettings,
    message: Incoming,
    batch: &mut Batch<Ack>,
    dead_letters: Option<&mut DeadLetterWorkers>,
    metrics: &Metrics,
) {
    metrics.messages_received.inc();
    batch.note_pending(message.pending, Instant::now());
    tracing::debug!(
        "📨 Received analytics event from subject: {} (size: {} bytes)",
        message.subject,
        message.payload.len()
    );
    match decode(
        &message.subject,
        &message.payload,
        &settings.batch_subject,
        settings.limits,
    ) {
        Ok(events) => {
            let ingested_at = now_seconds();
            let Incoming {
                subject,
                headers,
                stream_sequence,
                published_ns,
                ack,
                ..
            } = message;
            let redrive_of = headers
                .as_ref()
                .and_then(|h| h.get(HEADER_REDRIVE_OF))
                .map(|v| v.as_str());
            // Built straight into the batch: no vector of rows per message.
            let rows = events.into_iter().enumerate().map(|(index, decoded)| {
                tracing::debug!("✅ Successfully parsed protobuf event: {}", decoded.kind.type_name());
                if let Some(named) = subject_mismatch(&subject, &decoded.kind) {
                    tracing::warn!(
                        subject = %subject,
                        subject_type = named,
                        event_type = decoded.kind.type_name(),
                        "subject disagrees with the event type; storing by the event type"
                    );
                }
                let origin = Origin {
                    subject: &subject,
                    stream: &settings.stream,
                    stream_sequence,
                    published_ns,
                    index,
                    ingested_at,
                    redrive_of,
                };
                to_row(decoded.context, &decoded.kind, &origin)
            });
            let added = batch.push(rows, ack, Instant::now());
            metrics.events_received.inc_by(added as u64);
        }
        Err(err) => {
            metrics.fail(err.reason());
            let Some(dead_letters) = dead_letters else {
                // Core NATS: nothing can be redelivered or terminated; the count above and this line are the
                // record.
                log_poison(&message, err.reason(), &err.to_string());
                return;
            };
            // The dead-letter task logs it: a log line written here held up every good message behind it.
            dead_letters.submit(message, err.reason(), err.to_string()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handoff::{self, Taker};
    use fechatter_protos::sample_events;
    use prost::Message as _;

    fn settings(batch_size: usize, max_batch_rows: usize, flush_interval: Duration) -> PipelineSettings {
        PipelineSettings {
            flush: FlushPolicy {
                batch_size,
                max_rows: max_batch_rows,
                flush_interval,
            },
            batch_subject: "fechatter.analytics.batch".into(),
            limits: Limits {
                max_bytes: 1 << 20,
                max_events: 1000,
            },
            stream: "ANALYTICS".into(),
            keep_alive: Duration::from_secs(20),
        }
    }

    fn message(sequence: u64) -> Incoming {
        let event = sample_events().remove(0);
        Incoming {
            subject: "fechatter.analytics.app.start".into(),
            payload: event.encode_to_vec().into(),
            headers: None,
            stream_sequence: sequence,
            published_ns: 0,
            delivered: 1,
            pending: 0,
            ack: Ack::None,
        }
    }

    /// Starts a pipeline; returns the source's sender, the sink's end and the pipeline task.
    fn start(settings: PipelineSettings) -> (mpsc::Sender<Incoming>, Taker, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(1000);
        let (giver, taker) = handoff::channel();
        let task = tokio::spawn(run(settings, rx, giver, None, None, Arc::new(Metrics::new())));
        (tx, taker, task)
    }

    async fn rows_of(taker: &Taker) -> Option<usize> {
        taker.next().await.map(|batch| batch.rows.len())
    }

    #[tokio::test]
    async fn a_batch_grows_while_the_sink_is_busy_up_to_the_ceiling() {
        let (tx, taker, task) = start(settings(10, 50, Duration::from_secs(3600)));
        for sequence in 1..=120 {
            tx.send(message(sequence)).await.expect("pipeline runs");
        }
        // The sink asks only once the pipeline has stopped reading at the ceiling (70 messages left in the
        // channel), as after a long INSERT: the batch has grown past batch_size, to the ceiling.
        test_support::wait_until("the pipeline stops at the ceiling", Duration::from_secs(10), || async {
            (tx.capacity() == 1000 - 70).then_some(())
        })
        .await
        .expect("the pipeline reads 50 messages, then no more");
        assert_eq!(rows_of(&taker).await, Some(50));
        assert_eq!(rows_of(&taker).await, Some(50));
        // 20 left: due (over batch_size), handed over at once.
        assert_eq!(rows_of(&taker).await, Some(20));
        drop(tx);
        assert_eq!(rows_of(&taker).await, None, "the pipeline has finished");
        task.await.expect("pipeline task");
    }

    #[tokio::test]
    async fn batch_messages_stop_the_batch_at_the_ceiling_however_many_are_waiting() {
        use fechatter_protos::v1::BatchRecordEventsRequest;
        let (tx, taker, task) = start(settings(10, 50, Duration::from_secs(3600)));
        let events = vec![sample_events().remove(0); 30];
        for sequence in 1..=10 {
            let mut m = message(sequence);
            m.subject = "fechatter.analytics.batch".into();
            m.payload = BatchRecordEventsRequest { events: events.clone() }
                .encode_to_vec()
                .into();
            tx.send(m).await.expect("pipeline runs");
        }
        // The sink asks only once the pipeline has taken every message from the channel.
        test_support::wait_until("the pipeline takes every message", Duration::from_secs(10), || async {
            (tx.capacity() == 1000).then_some(())
        })
        .await
        .expect("the channel drains");
        // The ceiling is checked after every message: 30 rows, then 60, and the eight other messages wait (taken
        // all at once, they would have made one batch of 300 rows).
        let mut sizes = Vec::new();
        for _ in 0..5 {
            sizes.push(rows_of(&taker).await.expect("a batch"));
        }
        assert_eq!(sizes, vec![60; 5]);
        drop(tx);
        assert_eq!(rows_of(&taker).await, None);
        task.await.expect("pipeline task");
    }

    #[tokio::test]
    async fn a_ready_sink_gets_batch_size_rows_or_what_waited_flush_interval() {
        let (tx, taker, task) = start(settings(10, 50, Duration::from_millis(200)));
        let sink = tokio::spawn(async move {
            let mut sizes = Vec::new();
            while let Some(rows) = rows_of(&taker).await {
                sizes.push((rows, Instant::now()));
            }
            sizes
        });
        for sequence in 1..=10 {
            tx.send(message(sequence)).await.expect("pipeline runs");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let partial_sent = Instant::now();
        for sequence in 11..=13 {
            tx.send(message(sequence)).await.expect("pipeline runs");
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        drop(tx);
        let sizes = sink.await.expect("sink task");
        assert_eq!(sizes.iter().map(|(rows, _)| *rows).collect::<Vec<_>>(), vec![10, 3]);
        let waited = sizes[1].1 - partial_sent;
        assert!(
            waited >= Duration::from_millis(190) && waited < Duration::from_millis(900),
            "the partial batch went after its flush interval, not at shutdown: {waited:?}"
        );
        task.await.expect("pipeline task");
    }

    #[tokio::test]
    async fn the_end_of_a_backlog_goes_without_waiting_for_the_flush_interval() {
        let (tx, taker, task) = start(settings(100, 500, Duration::from_secs(3600)));
        for sequence in 1..=130 {
            let mut m = message(sequence);
            m.pending = 130 - sequence;
            tx.send(m).await.expect("pipeline runs");
        }
        let mut stored = 0;
        while stored < 130 {
            let rows = tokio::time::timeout(Duration::from_secs(5), rows_of(&taker)).await;
            stored += rows.expect("handed over once the backlog drained").expect("a batch");
        }
        assert_eq!(stored, 130);
        drop(tx);
        assert_eq!(rows_of(&taker).await, None);
        task.await.expect("pipeline task");
    }

    #[tokio::test]
    async fn a_ready_sink_gets_batches_of_the_ceiling_while_a_backlog_waits() {
        let (tx, taker, task) = start(settings(10, 50, Duration::from_secs(3600)));
        let sink = tokio::spawn(async move {
            let mut sizes = Vec::new();
            while let Some(rows) = rows_of(&taker).await {
                sizes.push(rows);
            }
            sizes
        });
        for sequence in 1..=130 {
            let mut m = message(sequence);
            m.pending = 130 - sequence;
            tx.send(m).await.expect("pipeline runs");
        }
        let sizes = tokio::time::timeout(Duration::from_secs(10), async {
            drop(tx);
            sink.await.expect("sink task")
        })
        .await
        .expect("the backlog is handed over without waiting for the flush interval");
        assert_eq!(sizes, vec![50, 50, 30], "not batches of batch_size (10)");
        task.await.expect("pipeline task");
    }

    #[tokio::test(start_paused = true)]
    async fn a_growing_batch_goes_once_delivery_stops_although_more_wait() {
        // JetStream stopped delivering (max_ack_pending held by others) with 100 messages still in the stream.
        let (tx, taker, task) = start(settings(10, 50, Duration::from_secs(3600)));
        let started = Instant::now();
        for sequence in 1..=15 {
            let mut m = message(sequence);
            m.pending = 100;
            tx.send(m).await.expect("pipeline runs");
        }
        assert_eq!(rows_of(&taker).await, Some(15));
        let waited = started.elapsed();
        assert!(
            waited >= crate::batcher::QUIET && waited < crate::batcher::GROW_WAIT,
            "handed over once no message came for QUIET: {waited:?}"
        );
        drop(tx);
        assert_eq!(rows_of(&taker).await, None);
        task.await.expect("pipeline task");
    }

    #[tokio::test]
    async fn shutdown_hands_over_a_partial_batch_at_once() {
        let (tx, taker, task) = start(settings(10, 50, Duration::from_secs(3600)));
        for sequence in 1..=4 {
            tx.send(message(sequence)).await.expect("pipeline runs");
        }
        drop(tx);
        let rows = tokio::time::timeout(Duration::from_secs(5), rows_of(&taker)).await;
        assert_eq!(rows.expect("not held for the flush interval"), Some(4));
        assert_eq!(rows_of(&taker).await, None);
        task.await.expect("pipeline task");
    }
}
