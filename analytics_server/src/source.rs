//! Where messages come from: a durable JetStream pull consumer (exactly once, with acks) or, when
//! `jetstream_enabled: false`, a core NATS subscription (at most once: nothing is stored while no subscriber
//! runs, and nothing is redelivered).
//!
//! A source task forwards each message, with its acknowledgement handle, into a bounded channel; the bound and
//! the consumer's `max_ack_pending` are what keep memory flat however large the backlog. The task stops
//! pulling when the shutdown token is cancelled and closes the channel, which lets the pipeline flush.

use async_nats::Subject;
use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{Consumer, pull};
use bytes::Bytes;
use futures::StreamExt;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One message as the pipeline sees it.
pub struct Incoming {
    /// Subject it was published on.
    pub subject: String,
    /// Raw payload.
    pub payload: Bytes,
    /// Headers, kept for dead-lettering.
    pub headers: Option<async_nats::HeaderMap>,
    /// Stream sequence (0 over core NATS).
    pub stream_sequence: u64,
    /// How many times JetStream has delivered it (1 over core NATS).
    pub delivered: i64,
    /// How to acknowledge it.
    pub ack: Ack,
}

/// The acknowledgement handle of a message.
///
/// Only the reply subject is kept (not the crate's `Acker`, which carries a whole JetStream context): tens of
/// thousands of these are held while batches are built and retried.
pub enum Ack {
    /// A JetStream message: acknowledged, through its reply subject, after its INSERT succeeded.
    JetStream(Subject),
    /// A core NATS message: there is nothing to acknowledge.
    None,
}

impl Ack {
    /// Sends `kind` for this message over `nats` (a no-op for core NATS).
    pub async fn send(&self, nats: &async_nats::Client, kind: AckKind) -> Result<(), async_nats::PublishError> {
        match self {
            Self::JetStream(reply) => nats.publish(reply.clone(), Bytes::from(kind)).await,
            Self::None => Ok(()),
        }
    }
}

/// Settings of a pull source.
#[derive(Debug, Clone)]
pub struct PullSettings {
    /// Stream name, for logs.
    pub stream: String,
    /// Messages per pull request.
    pub pull_batch: usize,
}

/// Pulls from `consumer` into `tx` until `shutdown` is cancelled or the receiver is gone.
///
/// Errors of the pull stream (a missed heartbeat, NATS restarting) are logged and the stream is re-created
/// with capped backoff: the consumer is durable, so nothing is skipped.
pub async fn run_jetstream(
    consumer: Consumer<pull::Config>,
    settings: PullSettings,
    tx: mpsc::Sender<Incoming>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    'outer: while !shutdown.is_cancelled() {
        let messages = consumer
            .stream()
            .max_messages_per_batch(settings.pull_batch)
            .expires(Duration::from_secs(30))
            .heartbeat(Duration::from_secs(10))
            .messages()
            .await;
        let mut messages = match messages {
            Ok(m) => {
                backoff = Duration::from_millis(100);
                m
            }
            Err(err) => {
                tracing::warn!(error = %err, stream = %settings.stream, "failed to start pulling; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break 'outer,
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    let (stream_sequence, delivered) = message
                        .info()
                        .map(|i| (i.stream_sequence, i.delivered))
                        .unwrap_or((0, 1));
                    let message: async_nats::Message = message.into();
                    let Some(reply) = message.reply.clone() else {
                        tracing::warn!(subject = %message.subject, "JetStream message without a reply subject");
                        continue;
                    };
                    let incoming = Incoming {
                        subject: message.subject.to_string(),
                        payload: message.payload,
                        headers: message.headers,
                        stream_sequence,
                        delivered,
                        ack: Ack::JetStream(reply),
                    };
                    if tx.send(incoming).await.is_err() {
                        break 'outer;
                    }
                }
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "pull stream error; re-creating the pull stream");
                    break;
                }
                None => break,
            }
        }
    }
    tracing::info!(stream = %settings.stream, "stopped pulling");
}

/// Subscribes to `subject` with core NATS and forwards into `tx` until `shutdown` is cancelled.
pub async fn run_core(
    client: async_nats::Client,
    subject: String,
    tx: mpsc::Sender<Incoming>,
    shutdown: CancellationToken,
) {
    let mut subscription = match client.subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(err) => {
            tracing::error!(error = %err, %subject, "failed to subscribe");
            return;
        }
    };
    tracing::warn!(%subject, "consuming with core NATS (jetstream_enabled: false): at-most-once delivery");
    loop {
        let message = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            m = subscription.next() => m,
        };
        let Some(message) = message else { break };
        let incoming = Incoming {
            subject: message.subject.to_string(),
            payload: message.payload,
            headers: message.headers,
            stream_sequence: 0,
            delivered: 1,
            ack: Ack::None,
        };
        if tx.send(incoming).await.is_err() {
            break;
        }
    }
    let _ = subscription.unsubscribe().await;
    tracing::info!(%subject, "unsubscribed");
}
