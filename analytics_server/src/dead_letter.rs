//! Copies poison messages to the dead-letter stream, so one bad message never blocks the stream and no bad
//! message is silently lost: the raw payload is kept with its subject, the error and the delivery count.
//!
//! Only after JetStream acknowledged the copy is the original terminated (`Term`); a failed copy leaves the
//! original unacknowledged, to be redelivered and tried again.

use crate::source::Incoming;
use async_nats::HeaderMap;
use async_nats::jetstream::Context;

/// Header holding the subject the poison message was published on.
pub const HEADER_SUBJECT: &str = "Fechatter-Original-Subject";
/// Header holding the decoding error.
pub const HEADER_ERROR: &str = "Fechatter-Error";
/// Header holding the error's short reason (`invalid_protobuf`, …).
pub const HEADER_REASON: &str = "Fechatter-Error-Reason";
/// Header holding how many times the message had been delivered.
pub const HEADER_DELIVERED: &str = "Fechatter-Delivery-Count";
/// Header holding the original stream sequence.
pub const HEADER_SEQUENCE: &str = "Fechatter-Stream-Sequence";

/// Publishes dead letters.
#[derive(Clone)]
pub struct DeadLetters {
    js: Context,
    client: async_nats::Client,
    subject: String,
    stream: String,
}

/// The copy was not acknowledged by JetStream.
#[derive(Debug, thiserror::Error)]
#[error("failed to dead-letter message {sequence} from {subject}")]
pub struct DeadLetterError {
    subject: String,
    sequence: u64,
    #[source]
    source: async_nats::Error,
}

impl DeadLetters {
    /// Dead letters go to `subject`; `stream` is the source stream, used in the dedup id.
    pub fn new(js: Context, subject: String, stream: String) -> Self {
        let client = js.client();
        Self {
            js,
            client,
            subject,
            stream,
        }
    }

    /// The NATS connection dead letters go through (also used to terminate the originals).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Copies `message` with `reason` and `error` and waits for JetStream's acknowledgement.
    pub async fn send(&self, message: &Incoming, reason: &str, error: &str) -> Result<(), DeadLetterError> {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_SUBJECT, message.subject.as_str());
        headers.insert(HEADER_ERROR, error);
        headers.insert(HEADER_REASON, reason);
        headers.insert(HEADER_DELIVERED, message.delivered.to_string().as_str());
        headers.insert(HEADER_SEQUENCE, message.stream_sequence.to_string().as_str());
        // The same poison message dead-lettered twice (its Term was lost) is stored once.
        let id = format!("dlq-{}-{}", self.stream, message.stream_sequence);
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        let err = |source: async_nats::Error| DeadLetterError {
            subject: message.subject.clone(),
            sequence: message.stream_sequence,
            source,
        };
        let ack = self
            .js
            .publish_with_headers(self.subject.clone(), headers, message.payload.clone())
            .await
            .map_err(|e| err(e.into()))?;
        ack.await.map_err(|e| err(e.into()))?;
        Ok(())
    }
}
