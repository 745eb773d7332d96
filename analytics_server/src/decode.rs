//! Turning a NATS message into analytics events: pure, so it is unit-tested without I/O.
//!
//! The batch subject carries a `BatchRecordEventsRequest`, every other subject one `AnalyticsEvent`. A message
//! that cannot be decoded, holds an event without its oneof, or exceeds the size limit is poison: the caller
//! dead-letters it instead of retrying it forever.

use fechatter_protos::v1::analytics_event::EventType;
use fechatter_protos::v1::{AnalyticsEvent, BatchRecordEventsRequest, EventContext};
use prost::Message as _;

/// Why a message is poison. The variant name is the `reason` label of the failure metric.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("invalid protobuf: {0}")]
    InvalidProtobuf(String),
    #[error("event {index} has no event type (the oneof is not set)")]
    MissingEventType { index: usize },
    #[error("batch holds no events")]
    EmptyBatch,
}

impl DecodeError {
    /// Short, stable name used as a metric label and in dead-letter headers.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::InvalidProtobuf(_) => "invalid_protobuf",
            Self::MissingEventType { .. } => "missing_event_type",
            Self::EmptyBatch => "empty_batch",
        }
    }
}

/// An event with its oneof taken out, so callers need no second check.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedEvent {
    /// The event's context as received (moved out of the event, not copied: this is the hot path).
    pub context: Option<EventContext>,
    /// Its kind.
    pub kind: EventType,
}

impl DecodedEvent {
    /// The event put back together (tests and diagnostics; the pipeline never needs it).
    pub fn to_event(&self) -> AnalyticsEvent {
        AnalyticsEvent {
            context: self.context.clone(),
            event_type: Some(self.kind.clone()),
        }
    }
}

/// Decodes the payload of a message received on `subject`.
pub fn decode(
    subject: &str,
    payload: &[u8],
    batch_subject: &str,
    max_bytes: usize,
) -> Result<Vec<DecodedEvent>, DecodeError> {
    if payload.len() > max_bytes {
        return Err(DecodeError::TooLarge {
            size: payload.len(),
            limit: max_bytes,
        });
    }
    let events = if subject == batch_subject {
        let batch =
            BatchRecordEventsRequest::decode(payload).map_err(|e| DecodeError::InvalidProtobuf(e.to_string()))?;
        if batch.events.is_empty() {
            return Err(DecodeError::EmptyBatch);
        }
        batch.events
    } else {
        vec![AnalyticsEvent::decode(payload).map_err(|e| DecodeError::InvalidProtobuf(e.to_string()))?]
    };
    events
        .into_iter()
        .enumerate()
        .map(|(index, event)| match event.event_type {
            Some(kind) => Ok(DecodedEvent {
                context: event.context,
                kind,
            }),
            None => Err(DecodeError::MissingEventType { index }),
        })
        .collect()
}

/// The event type a subject names, when it disagrees with the event's own: worth a warning, never a rejection
/// (the oneof is the truth).
pub fn subject_mismatch(subject: &str, kind: &EventType) -> Option<&'static str> {
    fechatter_protos::type_name_from_subject(subject).filter(|named| *named != kind.type_name())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fechatter_protos::sample_events;

    const BATCH: &str = "fechatter.analytics.batch";

    #[test]
    fn a_single_event_decodes_with_its_kind() {
        let event = sample_events().remove(2);
        let bytes = event.encode_to_vec();
        let decoded = decode("fechatter.analytics.user.login", &bytes, BATCH, 1 << 20).expect("valid");
        assert_eq!(decoded.len(), 1);
        assert_eq!(decoded[0].to_event(), event);
    }

    #[test]
    fn the_batch_subject_carries_many_events() {
        let events = sample_events();
        let bytes = BatchRecordEventsRequest { events: events.clone() }.encode_to_vec();
        let decoded = decode(BATCH, &bytes, BATCH, 1 << 20).expect("valid");
        assert_eq!(decoded.iter().map(DecodedEvent::to_event).collect::<Vec<_>>(), events);
    }

    #[test]
    fn garbage_is_poison() {
        let err = decode("fechatter.analytics.x", &[0xff, 0xff, 0xff], BATCH, 1 << 20).expect_err("garbage");
        assert_eq!(err.reason(), "invalid_protobuf");
    }

    #[test]
    fn an_event_without_its_oneof_is_poison() {
        let bytes = AnalyticsEvent::default().encode_to_vec();
        assert_eq!(
            decode("fechatter.analytics.x", &bytes, BATCH, 1 << 20),
            Err(DecodeError::MissingEventType { index: 0 })
        );
    }

    #[test]
    fn oversize_messages_are_poison_before_decoding() {
        let err = decode("fechatter.analytics.x", &[0u8; 11], BATCH, 10).expect_err("too big");
        assert_eq!(err, DecodeError::TooLarge { size: 11, limit: 10 });
    }

    #[test]
    fn an_empty_batch_is_poison() {
        assert_eq!(decode(BATCH, &[], BATCH, 10), Err(DecodeError::EmptyBatch));
    }

    #[test]
    fn a_subject_naming_another_type_is_reported() {
        let login = sample_events()
            .into_iter()
            .find_map(|e| e.event_type.filter(|k| k.type_name() == "user_login"))
            .expect("sample has a login");
        assert_eq!(subject_mismatch("fechatter.analytics.user.login", &login), None);
        assert_eq!(
            subject_mismatch("fechatter.analytics.user.logout", &login),
            Some("user_logout")
        );
        assert_eq!(subject_mismatch("fechatter.analytics.whatever", &login), None);
    }
}
