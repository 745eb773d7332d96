//! Turning a NATS message into analytics events: pure, so it is unit-tested without I/O.
//!
//! The batch subject carries a `BatchRecordEventsRequest`, every other subject one `AnalyticsEvent`. A message
//! that cannot be decoded, holds an event without its oneof, exceeds the size limit or (a batch) holds more events
//! than the event limit is poison: the caller dead-letters it instead of retrying it forever.

use fechatter_protos::v1::analytics_event::EventType;
use fechatter_protos::v1::{AnalyticsEvent, EventContext};
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
    #[error("batch of {count} events exceeds the limit of {limit} events")]
    TooManyEvents { count: usize, limit: usize },
}

impl DecodeError {
    /// Short, stable name used as a metric label and in dead-letter headers.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::InvalidProtobuf(_) => "invalid_protobuf",
            Self::MissingEventType { .. } => "missing_event_type",
            Self::EmptyBatch => "empty_batch",
            Self::TooManyEvents { .. } => "too_many_events",
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

/// What a message may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload, in bytes.
    pub max_bytes: usize,
    /// Most events in one batch message.
    pub max_events: usize,
}

impl Limits {
    /// `jetstream.max_message_bytes`, and `server.max_batch_events`: a batch message holds no more events than
    /// `POST /api/batch` accepts.
    pub fn from_settings(settings: &crate::config::Settings) -> Self {
        Self {
            max_bytes: settings.jetstream.max_message_bytes,
            max_events: settings.server.max_batch_events,
        }
    }
}

/// A `BatchRecordEventsRequest` with its events left encoded: counting them first keeps a batch of a million
/// tiny events (a 1 MiB message of 4-byte events is 260,000 of them) from being decoded, and its rows built,
/// before it is refused.
#[derive(Clone, PartialEq, prost::Message)]
struct EncodedBatch {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    events: Vec<bytes::Bytes>,
}

/// Decodes the payload of a message received on `subject`.
pub fn decode(
    subject: &str,
    payload: &[u8],
    batch_subject: &str,
    limits: Limits,
) -> Result<Vec<DecodedEvent>, DecodeError> {
    if payload.len() > limits.max_bytes {
        return Err(DecodeError::TooLarge {
            size: payload.len(),
            limit: limits.max_bytes,
        });
    }
    let invalid = |e: prost::DecodeError| DecodeError::InvalidProtobuf(e.to_string());
    let events = if subject == batch_subject {
        let batch = EncodedBatch::decode(payload).map_err(invalid)?;
        if batch.events.is_empty() {
            return Err(DecodeError::EmptyBatch);
        }
        if batch.events.len() > limits.max_events {
            return Err(DecodeError::TooManyEvents {
                count: batch.events.len(),
                limit: limits.max_events,
            });
        }
        batch
            .events
            .into_iter()
            .map(AnalyticsEvent::decode)
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?
    } else {
        vec![AnalyticsEvent::decode(payload).map_err(invalid)?]
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
    use fechatter_protos::v1::BatchRecordEventsRequest;

    const BATCH: &str = "fechatter.analytics.batch";

    /// Limits of `max_bytes` bytes and the shipped 1,000 events per batch.
    fn limits(max_bytes: usize) -> Limits {
        Limits {
            max_bytes,
            max_events: 1000,
        }
    }

    #[test]
    fn a_single_event_decodes_with_its_kind() {
        let event = sample_events().remove(2);
        let bytes = event.encode_to_vec();
        let decoded = decode("fechatter.analytics.user.login", &bytes, BATCH, limits(1 << 20)).expect("valid");
        assert_eq!(decoded.len(), 1);
        assert_eq!(decoded[0].to_event(), event);
    }

    #[test]
    fn the_batch_subject_carries_many_events() {
        let events = sample_events();
        let bytes = BatchRecordEventsRequest { events: events.clone() }.encode_to_vec();
        let decoded = decode(BATCH, &bytes, BATCH, limits(1 << 20)).expect("valid");
        assert_eq!(decoded.iter().map(DecodedEvent::to_event).collect::<Vec<_>>(), events);
    }

    #[test]
    fn garbage_is_poison() {
        let err = decode("fechatter.analytics.x", &[0xff, 0xff, 0xff], BATCH, limits(1 << 20)).expect_err("garbage");
        assert_eq!(err.reason(), "invalid_protobuf");
    }

    #[test]
    fn an_event_without_its_oneof_is_poison() {
        let bytes = AnalyticsEvent::default().encode_to_vec();
        assert_eq!(
            decode("fechatter.analytics.x", &bytes, BATCH, limits(1 << 20)),
            Err(DecodeError::MissingEventType { index: 0 })
        );
    }

    #[test]
    fn a_batch_over_the_event_limit_is_poison_whatever_its_size() {
        let login = sample_events().remove(2);
        let at = |n: usize| {
            BatchRecordEventsRequest {
                events: vec![login.clone(); n],
            }
            .encode_to_vec()
        };
        let three = Limits {
            max_bytes: 1 << 20,
            max_events: 3,
        };
        assert_eq!(decode(BATCH, &at(3), BATCH, three).map(|e| e.len()), Ok(3));
        assert_eq!(
            decode(BATCH, &at(4), BATCH, three),
            Err(DecodeError::TooManyEvents { count: 4, limit: 3 })
        );
        // The cheapest events there are (an app_start with nothing else: 4 bytes each in a batch), counted
        // before any is decoded.
        let tiny = AnalyticsEvent {
            context: None,
            event_type: Some(EventType::AppStart(Default::default())),
        };
        let flood = BatchRecordEventsRequest {
            events: vec![tiny; 250_000],
        }
        .encode_to_vec();
        assert!(flood.len() <= 1 << 20, "{} bytes", flood.len());
        assert_eq!(
            decode(BATCH, &flood, BATCH, limits(1 << 20)),
            Err(DecodeError::TooManyEvents {
                count: 250_000,
                limit: 1000
            })
        );
    }

    #[test]
    fn oversize_messages_are_poison_before_decoding() {
        let err = decode("fechatter.analytics.x", &[0u8; 11], BATCH, limits(10)).expect_err("too big");
        assert_eq!(err, DecodeError::TooLarge { size: 11, limit: 10 });
    }

    #[test]
    fn an_empty_batch_is_poison() {
        assert_eq!(decode(BATCH, &[], BATCH, limits(10)), Err(DecodeError::EmptyBatch));
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

    // Hostile input. Every decode below must return (a panic fails the test, and proptest shrinks the input that
    // caused it), every Err must name a known reason, and the size limit must hold before anything is decoded.
    // The generators are seeded (same inputs every run); `FECHATTER_TEST_FULL=1` tries ten times as many.

    use proptest::prelude::*;
    use proptest::test_runner::{Config as ProptestConfig, RngAlgorithm, TestRng, TestRunner};
    use std::cell::Cell;

    const SINGLE: &str = "fechatter.analytics.user.login";
    const LIMIT: usize = 1 << 20;
    const REASONS: [&str; 5] = [
        "too_large",
        "invalid_protobuf",
        "missing_event_type",
        "empty_batch",
        "too_many_events",
    ];

    /// `n`, or ten times `n` with `FECHATTER_TEST_FULL=1`.
    fn scaled(n: u32) -> u32 {
        if std::env::var("FECHATTER_TEST_FULL").is_ok_and(|v| v == "1") {
            n * 10
        } else {
            n
        }
    }

    /// Decodes `payload` on `subject` and checks what every answer must satisfy, whatever the bytes.
    fn check(subject: &str, payload: &[u8], max: usize) -> Result<Vec<DecodedEvent>, DecodeError> {
        let result = decode(subject, payload, BATCH, limits(max));
        match &result {
            Ok(events) if subject == BATCH => assert!(!events.is_empty(), "a decoded batch is never empty"),
            Ok(events) => assert_eq!(events.len(), 1, "a single-event subject yields one event"),
            Err(err) => {
                assert!(REASONS.contains(&err.reason()), "unknown reason {:?}", err.reason());
                assert!(!err.to_string().is_empty(), "{err:?} has no message");
            }
        }
        if payload.len() > max {
            assert_eq!(
                result,
                Err(DecodeError::TooLarge {
                    size: payload.len(),
                    limit: max
                }),
                "over the limit is too_large, before decoding"
            );
        } else {
            assert!(
                !matches!(result, Err(DecodeError::TooLarge { .. })),
                "within the limit is never too_large"
            );
        }
        result
    }

    /// Checks `payload` on the single-event subject and on the batch subject; returns the number of decodes (2).
    fn check_both(payload: &[u8], max: usize) -> usize {
        check(SINGLE, payload, max).ok();
        check(BATCH, payload, max).ok();
        2
    }

    /// Like [`check_both`], and the payload must be refused as invalid protobuf on both subjects.
    fn invalid_on_both(payload: &[u8]) -> usize {
        for subject in [SINGLE, BATCH] {
            let reason = check(subject, payload, LIMIT).err().map(|e| e.reason());
            assert_eq!(
                reason,
                Some("invalid_protobuf"),
                "{subject}: {:?}",
                &payload[..payload.len().min(40)]
            );
        }
        2
    }

    /// Runs `test` on `cases` values of `strategy` from a fixed seed, fails with the shrunk input on a panic or
    /// failed assertion, and prints how many decodes ran.
    fn run_seeded<S: Strategy>(name: &str, cases: u32, strategy: S, test: impl Fn(S::Value) -> usize)
    where
        S::Value: std::fmt::Debug,
    {
        let tried = Cell::new(0usize);
        let config = ProptestConfig {
            cases: scaled(cases),
            failure_persistence: None,
            ..ProptestConfig::default()
        };
        let mut runner = TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
        let result = runner.run(&strategy, |value| {
            tried.set(tried.get() + test(value));
            Ok(())
        });
        if let Err(failure) = result {
            panic!("{name}: {failure}");
        }
        println!("FIGURES hostile_input_decode_{name}: inputs={}", tried.get());
    }

    /// The valid encodings every mutation starts from, with the subject each is valid on: each sample event
    /// alone, and all of them as one batch.
    fn valid_encodings() -> Vec<(&'static str, Vec<u8>)> {
        let mut all: Vec<(&str, Vec<u8>)> = sample_events().iter().map(|e| (SINGLE, e.encode_to_vec())).collect();
        let batch = BatchRecordEventsRequest {
            events: sample_events(),
        };
        all.push((BATCH, batch.encode_to_vec()));
        all
    }

    /// A varint as protobuf writes it.
    fn varint(value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        prost::encoding::encode_varint(value, &mut out);
        out
    }

    /// A field key: field number and wire type.
    fn key(field: u64, wire_type: u64) -> Vec<u8> {
        varint((field << 3) | wire_type)
    }

    /// Lengths no real payload has.
    const HUGE_LENGTHS: [u64; 9] = [
        u64::MAX,
        i64::MAX as u64,
        u64::MAX - 1,
        1 << 63,
        u32::MAX as u64,
        (u32::MAX as u64) + 1,
        i32::MAX as u64,
        1 << 31,
        LIMIT as u64,
    ];

    #[test]
    fn arbitrary_bytes_never_panic_on_either_subject() {
        let limits = prop_oneof![Just(LIMIT), 0..64usize];
        run_seeded(
            "arbitrary_bytes",
            2048,
            (prop::collection::vec(any::<u8>(), 0..2048), limits),
            |(bytes, max)| check_both(&bytes, max),
        );
    }

    #[test]
    fn every_truncation_of_a_valid_encoding_is_decoded_or_refused() {
        let mut tried = 0;
        for (subject, full) in valid_encodings() {
            for len in 0..=full.len() {
                tried += check_both(&full[..len], LIMIT);
            }
            assert!(check(subject, &full, LIMIT).is_ok(), "the whole encoding is valid");
        }
        println!("FIGURES hostile_input_decode_truncations: inputs={tried}");
    }

    #[test]
    fn every_single_bit_flip_of_a_valid_encoding_is_decoded_or_refused() {
        let mut tried = 0;
        for (_, full) in valid_encodings() {
            for bit in 0..full.len() * 8 {
                let mut flipped = full.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                tried += check_both(&flipped, LIMIT);
            }
        }
        println!("FIGURES hostile_input_decode_bit_flips: inputs={tried}");
    }

    #[test]
    fn several_bit_flips_and_byte_overwrites_are_decoded_or_refused() {
        let encodings = valid_encodings();
        let count = encodings.len();
        let edits = prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), any::<bool>()), 1..16);
        run_seeded("mutations", 1024, (0..count, edits), |(which, edits)| {
            let mut bytes = encodings[which].1.clone();
            for (at, value, overwrite) in edits {
                let i = at.index(bytes.len());
                if overwrite {
                    bytes[i] = value;
                } else {
                    bytes[i] ^= 1 << (value % 8);
                }
            }
            check_both(&bytes, LIMIT)
        });
    }

    #[test]
    fn huge_length_prefixes_are_refused_without_allocating_them() {
        let event = sample_events().remove(2).encode_to_vec();
        let mut tried = 0;
        // At the top level of an event and of a batch, inside a (correctly framed) context and inside a batched
        // event, after a valid prefix, and as overlong varints.
        for len in HUGE_LENGTHS {
            for field in [1, 10, 12, 16, 25, 99, 536_870_911] {
                let mut top = key(field, 2);
                top.extend(varint(len));
                top.extend(b"tail");
                tried += invalid_on_both(&top);
                let mut after_valid = event.clone();
                after_valid.extend(&top);
                tried += invalid_on_both(&after_valid);

                let mut inner = key(field.min(12), 2);
                inner.extend(varint(len));
                inner.extend(b"xy");
                let mut framed = key(1, 2);
                framed.extend(varint(inner.len() as u64));
                framed.extend(&inner);
                tried += invalid_on_both(&framed);
                let mut batched = key(1, 2);
                batched.extend(varint(framed.len() as u64));
                batched.extend(&framed);
                tried += invalid_on_both(&batched);
            }
        }
        for overlong in [
            vec![0xff; 10],
            vec![0xff; 11],
            vec![0x80; 64],
            [vec![0x0a], vec![0xff; 12]].concat(),
        ] {
            tried += invalid_on_both(&overlong);
            let mut after_valid = event.clone();
            after_valid.extend(&overlong);
            tried += invalid_on_both(&after_valid);
        }
        // Random lengths after random valid prefixes, on random field numbers.
        let encodings = valid_encodings();
        let count = encodings.len();
        let tail = prop::collection::vec(any::<u8>(), 0..64);
        run_seeded(
            "huge_lengths",
            1024,
            (
                0..count,
                any::<prop::sample::Index>(),
                1u64..1 << 29,
                any::<u64>(),
                tail,
            ),
            |(which, cut, field, len, tail)| {
                let full = &encodings[which].1;
                let mut bytes = full[..cut.index(full.len() + 1)].to_vec();
                bytes.extend(key(field, 2));
                bytes.extend(varint(len));
                bytes.extend(tail);
                check_both(&bytes, LIMIT)
            },
        );
        println!("FIGURES hostile_input_decode_huge_lengths_fixed: inputs={tried}");
    }

    #[test]
    fn deep_nesting_is_refused_without_exhausting_the_stack() {
        let mut tried = 0;
        // 100k unknown start-groups, and 100k nested length-delimited fields (each claims to hold the rest).
        let groups: Vec<u8> = key(99, 3).repeat(100_000);
        tried += invalid_on_both(&groups);
        // Built inside out: each level's prefix frames everything inside it.
        let mut prefixes: Vec<Vec<u8>> = Vec::new();
        let mut inside = 0usize;
        for _ in 0..100_000 {
            let prefix = [key(1, 2), varint(inside as u64)].concat();
            inside += prefix.len();
            prefixes.push(prefix);
        }
        let nested: Vec<u8> = prefixes.into_iter().rev().flatten().collect();
        for subject in [SINGLE, BATCH] {
            assert!(
                check(subject, &nested, LIMIT).is_err(),
                "{subject}: holds no event type"
            );
        }
        tried += 2 + check_both(&nested, usize::MAX);
        println!("FIGURES hostile_input_decode_deep_nesting: inputs={tried}");
    }

    /// One protobuf field with an arbitrary number, wire type and content: what a hostile encoder would write.
    fn field() -> impl Strategy<Value = Vec<u8>> {
        let number = prop_oneof![1u64..32, 0u64..1 << 29, Just(0u64)];
        let content = prop_oneof![
            any::<u64>().prop_map(varint),
            any::<[u8; 8]>().prop_map(|b| b.to_vec()),
            any::<[u8; 4]>().prop_map(|b| b.to_vec()),
            prop::collection::vec(any::<u8>(), 0..48).prop_map(|b| [varint(b.len() as u64), b].concat()),
            (any::<u64>(), prop::collection::vec(any::<u8>(), 0..8)).prop_map(|(n, b)| [varint(n), b].concat()),
            Just(Vec::new()),
        ];
        (number, 0u64..8, content).prop_map(|(number, wire_type, content)| [key(number, wire_type), content].concat())
    }

    /// A message made of such fields, nested in length-delimited fields up to a few levels deep.
    fn message() -> impl Strategy<Value = Vec<u8>> {
        let leaf = prop::collection::vec(field(), 0..8).prop_map(|fields| fields.concat());
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop::collection::vec((1u64..32, inner), 0..6).prop_map(|fields| {
                fields
                    .into_iter()
                    .flat_map(|(number, body)| [key(number, 2), varint(body.len() as u64), body].concat())
                    .collect()
            })
        })
    }

    #[test]
    fn structured_garbage_is_decoded_or_refused() {
        run_seeded("structured", 2048, message(), |bytes| check_both(&bytes, LIMIT));
    }

    #[test]
    fn the_size_limit_holds_at_every_length() {
        let full = BatchRecordEventsRequest {
            events: sample_events(),
        }
        .encode_to_vec();
        let len = full.len();
        run_seeded("size_limit", 512, (0..=len, 0..=len + 1), |(cut, max)| {
            let bytes = &full[..cut];
            let _ = check(BATCH, bytes, max);
            if cut == len {
                assert_eq!(decode(BATCH, bytes, BATCH, limits(max)).is_ok(), len <= max);
            }
            1
        });
    }

    #[test]
    fn valid_events_with_arbitrary_field_values_decode_to_themselves() {
        let samples = sample_events();
        let count = samples.len();
        let text = prop_oneof![any::<String>(), "[\\x00-\\x7f]{0,300}", Just(String::new())];
        run_seeded(
            "valid_arbitrary",
            512,
            (0..count, text.clone(), text, any::<i64>(), any::<i64>()),
            |(which, user_id, event_id, client_ts, server_ts)| {
                let mut event = samples[which].clone();
                let ctx = event.context.get_or_insert_with(Default::default);
                ctx.user_id = user_id;
                ctx.event_id = event_id;
                ctx.client_ts = client_ts;
                ctx.server_ts = server_ts;
                let bytes = event.encode_to_vec();
                let decoded = check(SINGLE, &bytes, LIMIT).expect("a valid event decodes");
                assert_eq!(decoded[0].to_event(), event);
                let batch = BatchRecordEventsRequest {
                    events: vec![event.clone(), event.clone()],
                }
                .encode_to_vec();
                assert_eq!(check(BATCH, &batch, LIMIT).expect("a valid batch decodes").len(), 2);
                2
            },
        );
    }
}
