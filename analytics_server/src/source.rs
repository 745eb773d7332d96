//! Where messages come from: a durable JetStream pull consumer (exactly once, with acks) or, when
//! `jetstream_enabled: false`, a core NATS subscription (at most once: nothing is stored while no subscriber
//! runs, and nothing is redelivered).
//!
//! A source task forwards each message, with its acknowledgement handle, into a bounded channel; the bound and
//! the consumer's `max_ack_pending` are what keep memory flat however large the backlog. The task stops
//! pulling when the shutdown token is cancelled and closes the channel, which lets the pipeline flush.

use crate::config::Settings;
use crate::jetstream::ensure_all;
use async_nats::Subject;
use async_nats::jetstream::consumer::{Consumer, pull};
use async_nats::jetstream::{AckKind, Context};
use bytes::Bytes;
use fechatter_service::error::chain;
use futures::StreamExt;
use std::sync::Arc;
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
    /// When JetStream stored it, in nanoseconds since the epoch (0 over core NATS). With the sequence it names
    /// the message uniquely, also across a stream deleted and re-created, whose sequences start again at 1.
    pub published_ns: i128,
    /// How many times JetStream has delivered it (1 over core NATS).
    pub delivered: i64,
    /// Messages JetStream still held for the consumer, undelivered, when it sent this one: the backlog behind
    /// it (0 over core NATS, which has none).
    pub pending: u64,
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

/// Tells JetStream that the messages of `acks` are still being worked on (`+WPI`), from a task of its own that
/// gives up after `within`. Best effort: a lost signal is made up by the next one. Never awaited by the caller,
/// because while NATS reconnects a publish waits for room and a flush for the connection: the pipeline or the
/// INSERT waiting on it would stand still until NATS came back.
pub fn signal_progress<'a>(nats: &async_nats::Client, acks: impl IntoIterator<Item = &'a Ack>, within: Duration) {
    let replies: Vec<Subject> = acks
        .into_iter()
        .filter_map(|ack| match ack {
            Ack::JetStream(reply) => Some(reply.clone()),
            Ack::None => None,
        })
        .collect();
    if replies.is_empty() {
        return;
    }
    let nats = nats.clone();
    tokio::spawn(async move {
        let sent = tokio::time::timeout(within, async {
            for reply in replies {
                nats.publish(reply, Bytes::from(AckKind::Progress)).await?;
            }
            nats.flush().await?;
            Ok::<_, async_nats::Error>(())
        })
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            tracing::debug!("progress signals not all sent; the next round makes up for them");
        }
    });
}

/// Most bytes one pull asks for, on top of its `jetstream.pull_batch` messages: with large events, that many
/// messages would take a gigabyte in the client's buffer.
const PULL_BYTES: usize = 16 << 20;

/// The bytes a pull asks for: [`PULL_BYTES`], or more when the server takes larger messages. A pull's bytes must
/// hold any message the stream may hold (the server's `max_payload`, with its headers and subject): JetStream
/// never delivers a message larger than a pull's bytes, and the consumer would stop at it.
fn pull_bytes(max_payload: usize) -> usize {
    PULL_BYTES.max(max_payload.saturating_add(64 << 10))
}

/// Pulls from `consumer` into `tx` until `shutdown` is cancelled or the receiver is gone.
///
/// Errors of the pull stream (a missed heartbeat, NATS restarting, the consumer or stream deleted) are logged,
/// the stream, dead-letter stream and consumer are made to exist again ([`ensure_all`]) and pulling resumes with
/// capped backoff: the consumer is durable, so nothing is skipped.
pub async fn run_jetstream(
    js: Context,
    settings: Arc<Settings>,
    mut consumer: Consumer<pull::Config>,
    tx: mpsc::Sender<Incoming>,
    shutdown: CancellationToken,
) {
    let stream = &settings.jetstream.stream;
    let mut backoff = Duration::from_millis(100);
    let mut failed = false;
    'outer: while !shutdown.is_cancelled() {
        if failed {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            match ensure_all(&js, &settings).await {
                Ok(c) => consumer = c,
                Err(err) => {
                    tracing::warn!(error = %chain(&err), %stream, "JetStream set-up failed; retrying");
                    continue;
                }
            }
        }
        let messages = consumer
            .stream()
            .max_messages_per_batch(settings.jetstream.pull_batch)
            .max_bytes_per_batch(pull_bytes(js.client().server_info().max_payload))
            .expires(Duration::from_secs(30))
            .heartbeat(Duration::from_secs(10))
            .messages()
            .await;
        let mut messages = match messages {
            Ok(m) => m,
            Err(err) => {
                tracing::warn!(error = %err, %stream, "failed to start pulling; retrying");
                failed = true;
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
                    if failed {
                        tracing::info!(%stream, "pulling again");
                        failed = false;
                        backoff = Duration::from_millis(100);
                    }
                    let (stream_sequence, published_ns, delivered, pending) = message
                        .info()
                        .map(|i| {
                            (
                                i.stream_sequence,
                                i.published.unix_timestamp_nanos(),
                                i.delivered,
                                i.pending,
                            )
                        })
                        .unwrap_or((0, 0, 1, 0));
                    let message: async_nats::Message = message.into();
                    let Some(reply) = message.reply.clone() else {
                        tracing::warn!(subject = %message.subject, "JetStream message without a reply subject");
                        continue;
                    };
                    let incoming = Incoming {
                        subject: message.subject.as_str().to_owned(),
                        payload: message.payload,
                        headers: message.headers,
                        stream_sequence,
                        published_ns,
                        delivered,
                        pending,
                        ack: Ack::JetStream(reply),
                    };
                    if tx.send(incoming).await.is_err() {
                        break 'outer;
                    }
                }
                Some(Err(err)) => {
                    tracing::warn!(error = %err, %stream, "pull stream error; re-creating the pull stream");
                    failed = true;
                    break;
                }
                None => {
                    failed = true;
                    break;
                }
            }
        }
    }
    tracing::info!(%stream, "stopped pulling");
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
            subject: message.subject.as_str().to_owned(),
            payload: message.payload,
            headers: message.headers,
            stream_sequence: 0,
            published_ns: 0,
            delivered: 1,
            pending: 0,
            ack: Ack::None,
        };
        if tx.send(incoming).await.is_err() {
            break;
        }
    }
    let _ = subscription.unsubscribe().await;
    tracing::info!(%subject, "unsubscribed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_holds_the_largest_message_the_server_takes() {
        assert_eq!(pull_bytes(1 << 20), PULL_BYTES);
        assert!(pull_bytes(64 << 20) > 64 << 20);
    }
}
