//! Publishes analytics events to JetStream: subject `fechatter.analytics.<suffix>`, `Nats-Msg-Id = event_id`
//! (so a re-publish inside the duplicate window is dropped by JetStream, and any later copy collapses in
//! ClickHouse), acknowledgements awaited.
//!
//! Publishing is pipelined: many messages are sent before their acks come back, which is ~6x faster than
//! awaiting each ack. A semaphore bounds the un-acknowledged messages across all callers; besides bounding
//! memory, this avoids async-nats' hang when more than `max_ack_inflight` (5000) ack futures are held.

use bytes::Bytes;
use fechatter_protos::SUBJECT_PREFIX;
use fechatter_protos::v1::AnalyticsEvent;
use futures::stream::{FuturesUnordered, StreamExt};
use prost::Message as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Limits of the publisher.
#[derive(Debug, Clone)]
pub struct PublisherSettings {
    /// Most messages sent and not yet acknowledged, across all callers (below async-nats' 5000).
    pub max_in_flight: usize,
    /// How long to wait for one acknowledgement before reporting the event as not published.
    pub ack_timeout: Duration,
}

impl Default for PublisherSettings {
    fn default() -> Self {
        Self {
            max_in_flight: 1024,
            ack_timeout: Duration::from_secs(5),
        }
    }
}

/// What JetStream said about a published event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOutcome {
    /// Stream sequence of the stored message (of the original, for a duplicate).
    pub sequence: u64,
    /// True when JetStream recognised the `Nats-Msg-Id` and did not store a second copy.
    pub duplicate: bool,
}

/// Why an event was not published. The caller keeps the event (the outbox) and tries again later.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("event has no event type, so it has no subject")]
    NoEventType,
    #[error("event has no event_id, which JetStream deduplicates by")]
    NoEventId,
    #[error("failed to send the event to NATS")]
    Send(#[source] async_nats::Error),
    #[error("JetStream did not acknowledge the event")]
    Ack(#[source] async_nats::Error),
}

/// The analytics publisher; cheap to clone and share.
#[derive(Clone)]
pub struct AnalyticsPublisher {
    js: async_nats::jetstream::Context,
    in_flight: Arc<Semaphore>,
}

type AckFuture = futures::future::BoxFuture<'static, (usize, Result<PublishOutcome, PublishError>)>;

impl AnalyticsPublisher {
    /// A publisher over `client` with `settings`.
    pub fn new(client: async_nats::Client, settings: PublisherSettings) -> Self {
        let js = async_nats::jetstream::ContextBuilder::new()
            .timeout(settings.ack_timeout)
            .build(client);
        Self {
            js,
            in_flight: Arc::new(Semaphore::new(settings.max_in_flight.max(1))),
        }
    }

    /// Whether the NATS connection is up now (it reconnects by itself when it is not).
    pub fn is_connected(&self) -> bool {
        self.js.client().connection_state() == async_nats::connection::State::Connected
    }

    /// Publishes one event and waits for its acknowledgement.
    pub async fn publish(&self, event: &AnalyticsEvent) -> Result<PublishOutcome, PublishError> {
        self.publish_all(std::slice::from_ref(event))
            .await
            .pop()
            .unwrap_or(Err(PublishError::NoEventType))
    }

    /// Publishes `events`, pipelined, and returns one result per event, in order.
    pub async fn publish_all(&self, events: &[AnalyticsEvent]) -> Vec<Result<PublishOutcome, PublishError>> {
        self.publish_each(events.iter().map(Encoded::new)).await
    }

    /// Publishes events encoded already (the outbox relay's rows, which it sends as stored instead of decoding
    /// and encoding each again), pipelined; one result per event, in order.
    pub async fn publish_encoded(&self, events: Vec<Encoded>) -> Vec<Result<PublishOutcome, PublishError>> {
        self.publish_each(events.into_iter().map(Ok)).await
    }

    async fn publish_each(
        &self,
        events: impl ExactSizeIterator<Item = Result<Encoded, PublishError>>,
    ) -> Vec<Result<PublishOutcome, PublishError>> {
        let mut results: Vec<Option<Result<PublishOutcome, PublishError>>> = (0..events.len()).map(|_| None).collect();
        let mut pending: FuturesUnordered<AckFuture> = FuturesUnordered::new();
        for (index, event) in events.enumerate() {
            let event = match event {
                Ok(event) => event,
                Err(err) => {
                    results[index] = Some(Err(err));
                    continue;
                }
            };
            // Wait for a slot, settling our own acks meanwhile (otherwise our held permits could starve us).
            let permit = loop {
                tokio::select! {
                    permit = self.in_flight.clone().acquire_owned() => break permit,
                    Some((i, r)) = pending.next(), if !pending.is_empty() => results[i] = Some(r),
                }
            };
            let Ok(permit) = permit else {
                results[index] = Some(Err(PublishError::Send("publisher closed".into())));
                continue;
            };
            match self.send(event, permit).await {
                Ok(ack) => pending.push(Box::pin(async move { (index, ack.await) })),
                Err(err) => results[index] = Some(Err(err)),
            }
        }
        while let Some((i, r)) = pending.next().await {
            results[i] = Some(r);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(PublishError::Send("not attempted".into()))))
            .collect()
    }

    /// Sends one event; the returned future resolves with JetStream's acknowledgement and frees the slot.
    async fn send(
        &self,
        event: Encoded,
        permit: OwnedSemaphorePermit,
    ) -> Result<impl Future<Output = Result<PublishOutcome, PublishError>> + Send + 'static, PublishError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, event.event_id.as_str());
        let ack = self
            .js
            .publish_with_headers(event.subject.clone(), headers, event.payload)
            .await
            .map_err(|e| PublishError::Send(e.into()))?;
        let subject = event.subject;
        Ok(async move {
            let result = ack.await;
            drop(permit);
            let ack = result.map_err(|e| PublishError::Ack(e.into()))?;
            tracing::debug!("📤 Published analytics event: {}", subject_suffix(&subject));
            Ok(PublishOutcome {
                sequence: ack.sequence,
                duplicate: ack.duplicate,
            })
        })
    }
}

/// An event ready to send: its subject, its id (JetStream's dedup key) and its protobuf bytes.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// `fechatter.analytics.<suffix>`.
    pub subject: async_nats::Subject,
    /// The event's `event_id`, sent as `Nats-Msg-Id`.
    pub event_id: String,
    /// The protobuf-encoded `AnalyticsEvent`.
    pub payload: Bytes,
}

impl Encoded {
    /// `event`, encoded; refused when it has no type (so no subject) or no `event_id`.
    pub fn new(event: &AnalyticsEvent) -> Result<Self, PublishError> {
        let kind = event.event_type.as_ref().ok_or(PublishError::NoEventType)?;
        if event.event_id().is_empty() {
            return Err(PublishError::NoEventId);
        }
        Ok(Self {
            subject: kind.subject().into(),
            event_id: event.event_id().to_owned(),
            payload: event.encode_to_vec().into(),
        })
    }
}

/// The part of an analytics subject after `fechatter.analytics.` (`user.login`), as the log lines name events.
pub fn subject_suffix(subject: &str) -> &str {
    subject
        .strip_prefix(SUBJECT_PREFIX)
        .and_then(|rest| rest.strip_prefix('.'))
        .unwrap_or(subject)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_suffix_is_what_follows_the_analytics_prefix() {
        assert_eq!(subject_suffix("fechatter.analytics.user.login"), "user.login");
        assert_eq!(subject_suffix("fechatter.analyticsx.user"), "fechatter.analyticsx.user");
        assert_eq!(subject_suffix("other.subject"), "other.subject");
    }
}
