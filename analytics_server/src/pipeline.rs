//! The middle of the ingester: decodes incoming messages, dead-letters poison, and groups rows into batches
//! handed to the sink.
//!
//! It runs until its input channel closes (the source stopped), then flushes what it holds and closes the
//! sink's channel, so shutdown loses nothing in flight. The sink channel is bounded (one batch queued while one
//! is inserted), which is the backpressure that stops pulling when ClickHouse is slow or down.

use crate::batcher::Batch;
use crate::dead_letter::DeadLetterWorkers;
use crate::decode::{decode, subject_mismatch};
use crate::metrics::Metrics;
use crate::row::{Origin, to_row};
use crate::source::{Ack, Incoming};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Settings of the pipeline.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// Rows per batch.
    pub batch_size: usize,
    /// Longest wait of a row in a partial batch.
    pub flush_interval: Duration,
    /// The subject carrying batch requests.
    pub batch_subject: String,
    /// Largest accepted message.
    pub max_message_bytes: usize,
    /// Stream name, for legacy ids.
    pub stream: String,
}

/// Runs the pipeline until `rx` closes.
pub async fn run(
    settings: PipelineSettings,
    mut rx: mpsc::Receiver<Incoming>,
    sink: mpsc::Sender<Batch<Ack>>,
    mut dead_letters: Option<DeadLetterWorkers>,
    metrics: Arc<Metrics>,
) {
    let mut batch: Batch<Ack> = Batch::new(settings.batch_size);
    loop {
        let deadline = batch.deadline(settings.flush_interval);
        let next = tokio::select! {
            biased;
            _ = sleep_until(deadline), if deadline.is_some() => {
                flush(&mut batch, &sink).await;
                continue;
            }
            next = rx.recv() => next,
        };
        let Some(message) = next else { break };
        handle(&settings, message, &mut batch, dead_letters.as_mut(), &metrics).await;
        if batch.is_full(settings.batch_size) {
            flush(&mut batch, &sink).await;
        }
    }
    flush(&mut batch, &sink).await;
    if let Some(dead_letters) = dead_letters.as_mut() {
        dead_letters.drain().await;
    }
    tracing::info!("pipeline drained");
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline).await;
    }
}

async fn flush(batch: &mut Batch<Ack>, sink: &mpsc::Sender<Batch<Ack>>) {
    if batch.is_empty() {
        return;
    }
    if sink.send(batch.take()).await.is_err() {
        // The sink only stops after this task does; unreachable short of a panic there. The messages stay
        // unacknowledged and are redelivered.
        tracing::error!("sink is gone; batch left unacknowledged for redelivery");
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
    tracing::debug!(
        "📨 Received analytics event from subject: {} (size: {} bytes)",
        message.subject,
        message.payload.len()
    );
    match decode(
        &message.subject,
        &message.payload,
        &settings.batch_subject,
        settings.max_message_bytes,
    ) {
        Ok(events) => {
            let ingested_at = now_seconds();
            let Incoming {
                subject,
                stream_sequence,
                ack,
                ..
            } = message;
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
                    index,
                    ingested_at,
                };
                to_row(decoded.context, &decoded.kind, &origin)
            });
            let added = batch.push(rows, ack, Instant::now());
            metrics.events_received.inc_by(added as u64);
        }
        Err(err) => {
            metrics.fail(err.reason());
            tracing::warn!(
                subject = %message.subject,
                sequence = message.stream_sequence,
                delivered = message.delivered,
                reason = err.reason(),
                error = %err,
                "poison message"
            );
            let Some(dead_letters) = dead_letters else {
                // Core NATS: nothing can be redelivered or terminated; the count above is the record.
                return;
            };
            dead_letters.submit(message, err.reason(), err.to_string()).await;
        }
    }
}
