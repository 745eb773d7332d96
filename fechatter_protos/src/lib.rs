//! The protobuf contract shared by `fechatter_server`, `analytics_server` and
//! client apps.
//!
//! [`v1`] holds the prost types generated from `proto/fechatter/v1/*.proto`
//! together with pbjson serde impls that follow the canonical proto3 JSON
//! mapping (lowerCamelCase names, 64-bit integers as strings, enums by name).
//! [`event_kind`] adds naming helpers (type names, NATS subjects) and
//! per-kind JSON payloads; [`samples`] provides test fixtures.

pub mod event_kind;
pub mod samples;

pub use event_kind::{
    ALL_SUBJECT_SUFFIXES, ALL_TYPE_NAMES, BATCH_SUBJECT, KindError, SUBJECT_PREFIX, all_subjects,
    type_name_from_subject,
};
pub use samples::sample_events;

/// Generated `fechatter.v1` messages (prost) and their proto3 JSON serde impls (pbjson).
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/fechatter.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/fechatter.v1.serde.rs"));
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use crate::{
        ALL_TYPE_NAMES, sample_events,
        v1::{
            AnalyticsEvent, BatchRecordEventsRequest, BotResponseEvent, EventContext, ExitCode, MessageSentEvent,
            UserLoginEvent, analytics_event::EventType,
        },
    };

    /// Reads every (field number, wire type) key at the top level of `bytes`.
    fn top_level_keys(mut bytes: &[u8]) -> Vec<(u32, prost::encoding::WireType)> {
        let mut keys = Vec::new();
        while !bytes.is_empty() {
            let (tag, wire_type) = prost::encoding::decode_key(&mut bytes).expect("valid key");
            prost::encoding::skip_field(wire_type, tag, &mut bytes, Default::default()).expect("valid field");
            keys.push((tag, wire_type));
        }
        keys
    }

    #[test]
    fn every_kind_round_trips_through_protobuf() {
        for event in sample_events() {
            let decoded = AnalyticsEvent::decode(event.encode_to_vec().as_slice());
            assert_eq!(decoded, Ok(event));
        }
        let batch = BatchRecordEventsRequest {
            events: sample_events(),
        };
        let decoded = BatchRecordEventsRequest::decode(batch.encode_to_vec().as_slice());
        assert_eq!(decoded, Ok(batch));
    }

    #[test]
    fn every_kind_round_trips_through_canonical_json() {
        for event in sample_events() {
            let json = serde_json::to_string(&event).expect("serializable");
            let parsed: AnalyticsEvent = serde_json::from_str(&json).expect("parsable");
            assert_eq!(parsed, event, "{json}");
        }
    }

    #[test]
    fn field_numbers_match_the_wire_contract() {
        let event = AnalyticsEvent {
            context: Some(EventContext {
                event_id: "x".into(),
                ..Default::default()
            }),
            event_type: Some(EventType::UserLogin(UserLoginEvent {
                email: "e".into(),
                ..Default::default()
            })),
        };
        // context (1, len) { event_id (11, len) "x" }, user_login (12, len) { email (1, len) "e" }
        let expected = [0x0a, 0x03, 0x5a, 0x01, b'x', 0x62, 0x03, 0x0a, 0x01, b'e'];
        assert_eq!(event.encode_to_vec(), expected);

        // Tag 25 needs a two-byte varint key: (25 << 3 | 2) = 0xca 0x01.
        let bot = [0xca, 0x01, 0x04, 0x20, 0x07, 0x28, 0x09];
        let decoded = AnalyticsEvent::decode(bot.as_slice()).expect("valid bytes");
        let expected = EventType::BotResponse(BotResponseEvent {
            response_time_ms: 7,
            tokens_used: 9,
            ..Default::default()
        });
        assert_eq!(decoded.event_type, Some(expected));
    }

    #[test]
    fn event_context_field_numbers_match_the_wire_contract() {
        // Keys: (field << 3) | wire type; strings/messages are 2, varints 0.
        let bytes = [
            0x0a, 1, b'c', // client_id = 1
            0x12, 1, b's', // session_id = 2
            0x1a, 1, b'u', // user_id = 3
            0x22, 1, b'v', // app_version = 4
            0x28, 5, // client_ts = 5
            0x30, 6, // server_ts = 6
            0x3a, 1, b'a', // user_agent = 7
            0x42, 1, b'i', // ip = 8
            0x4a, 3, 0x0a, 1, b'o', // system = 9 { os = 1 }
            0x52, 3, 0x1a, 1, b't', // geo = 10 { city = 3 }
            0x5a, 1, b'e', // event_id = 11
            0x62, 1, b'w', // workspace_id = 12
        ];
        let context = EventContext::decode(bytes.as_slice()).expect("valid bytes");
        let fields = [
            &context.client_id,
            &context.session_id,
            &context.user_id,
            &context.app_version,
            &context.user_agent,
            &context.ip,
            &context.event_id,
            &context.workspace_id,
        ];
        assert_eq!(fields.map(String::as_str), ["c", "s", "u", "v", "a", "i", "e", "w"]);
        assert_eq!((context.client_ts, context.server_ts), (5, 6));
        assert_eq!(context.system.map(|system| system.os).as_deref(), Some("o"));
        assert_eq!(context.geo.map(|geo| geo.city).as_deref(), Some("t"));
    }

    #[test]
    fn oneof_field_numbers_follow_all_type_names() {
        for (event, field_number) in sample_events().into_iter().zip(10..) {
            let keys = top_level_keys(&event.encode_to_vec());
            let numbers: Vec<u32> = keys.iter().map(|(tag, _)| *tag).collect();
            assert_eq!(numbers, [1, field_number], "{:?}", event.type_name());
            assert_eq!(
                ALL_TYPE_NAMES[field_number as usize - 10],
                event.type_name().unwrap_or("")
            );
        }
    }

    #[test]
    fn message_sent_type_field_is_number_two() {
        let bytes = [0x12, 4, b't', b'e', b'x', b't'];
        let message = MessageSentEvent::decode(bytes.as_slice()).expect("valid bytes");
        assert_eq!(message.r#type, "text");
    }

    #[test]
    fn json_uses_proto3_names() {
        let json = r#"{"context":{"userId":"u","serverTs":"5"},"userLogin":{"email":"e"}}"#;
        let event: AnalyticsEvent = serde_json::from_str(json).expect("canonical JSON parses");
        assert_eq!(event.user_id(), "u");
        assert_eq!(event.context.as_ref().map(|context| context.server_ts), Some(5));
        assert_eq!(event.type_name(), Some("user_login"));
        // Default values are omitted and int64 is emitted as a string.
        assert_eq!(serde_json::to_string(&event).expect("serializable"), json);
    }

    #[test]
    fn json_encodes_64_bit_integers_as_strings_and_enums_by_name() {
        let events = sample_events();
        let json = serde_json::to_value(&events[10]).expect("serializable");
        assert_eq!(json["fileUploaded"]["fileSize"], "9007199254740993");
        assert_eq!(json["context"]["clientTs"], "1700000020000");
        let json = serde_json::to_value(&events[15]).expect("serializable");
        assert_eq!(json["botResponse"]["responseTimeMs"], "9007199254740997");
        assert_eq!(json["botResponse"]["tokensUsed"], 4_000_000_000_u32);
        let json = serde_json::to_value(&events[1]).expect("serializable");
        assert_eq!(json["appExit"]["exitCode"], "EXIT_CODE_CRASH");
        assert_eq!(
            events[1].event_type,
            Some(EventType::AppExit(crate::v1::AppExitEvent {
                exit_code: ExitCode::Crash.into(),
            }))
        );
    }

    #[test]
    fn json_accepts_numbers_for_64_bit_integers() {
        let json = r#"{"context":{"clientTs":7,"serverTs":"8"}}"#;
        let event: AnalyticsEvent = serde_json::from_str(json).expect("parses");
        let context = event.context.expect("context is set");
        assert_eq!((context.client_ts, context.server_ts), (7, 8));
    }

    #[test]
    fn samples_set_every_field_to_a_non_default_value() {
        // Canonical JSON omits default values, so a fully set message has one
        // JSON member per proto field.
        let kind_field_counts = [0, 1, 2, 1, 3, 3, 6, 2, 2, 3, 4, 3, 5, 3, 5, 7];
        for (event, expected) in sample_events().iter().zip(kind_field_counts) {
            let json = serde_json::to_value(event).expect("serializable");
            let members = json.as_object().expect("an object");
            let len = |value: &serde_json::Value| value.as_object().map(|o| o.len());
            let kind = members.iter().find(|(name, _)| *name != "context");
            assert_eq!(kind.and_then(|(_, kind)| len(kind)), Some(expected), "{json}");
            assert_eq!(len(&json["context"]), Some(12), "{json}");
            assert_eq!(len(&json["context"]["system"]), Some(6), "{json}");
            assert_eq!(len(&json["context"]["geo"]), Some(3), "{json}");
        }
    }
}
