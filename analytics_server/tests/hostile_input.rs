//! Hostile input against the HTTP API on real servers (NATS with JetStream, ClickHouse), the service in process.
//!
//! A seeded proptest generator makes requests of every kind a careless or malicious client sends to
//! `POST /api/event` and `POST /api/batch` (malformed, truncated, bit-flipped protobuf, huge length prefixes,
//! malformed and truncated JSON, deep nesting, invalid UTF-8, extreme numbers in every numeric field, unknown
//! fields, wrong types, wrong and missing content types, bodies over `server.max_body_bytes`, too many events),
//! plus `GET /health`, `/ready`, `/metrics` and unrouted paths and methods. Every answer must be a 2xx for valid
//! input or a 4xx with a JSON body `{"error": …, "message": …}`: never a 5xx, never a dropped connection. After
//! the run the server still answers `/health`, and the process's resident memory stays under a stated bound.
//!
//! The same inputs every run; `FECHATTER_TEST_FULL=1` sends ten times as many.

mod common;

use common::Stack;
use fechatter_protos::sample_events;
use fechatter_protos::v1::{AnalyticsEvent, BatchRecordEventsRequest};
use futures::StreamExt as _;
use proptest::prelude::*;
use proptest::strategy::ValueTree as _;
use proptest::test_runner::{Config as ProptestConfig, RngAlgorithm, TestRng, TestRunner};
use prost::Message as _;
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderValue, USER_AGENT};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use test_support::raw_http::{self, Answer, Payload, RawRequest, is_error_body, rss_mib, send_all};

/// `server.max_body_bytes` (the shipped default).
const MAX_BODY: usize = 524_288;
/// `server.max_batch_events` (the shipped default).
const MAX_EVENTS: usize = 1000;
/// Inputs of a default run.
const INPUTS: usize = 8000;
/// Requests in flight at once.
const CONCURRENCY: usize = 8;
/// The stated bound: resident memory of the test process (service and client) may grow by at most this much
/// over the run, and never exceed `RSS_LIMIT_MIB` at any sample.
const RSS_GROWTH_LIMIT_MIB: u64 = 256;
const RSS_LIMIT_MIB: u64 = 768;

/// No per-client ingest limit in the way of the run.
const UNLIMITED: (&str, &str) = ("ANALYTICS__SERVER__INGEST_RATE_LIMIT_PER_MINUTE", "100000000");

const PROTOBUF_TYPES: [&str; 3] = [
    "application/protobuf",
    "application/x-protobuf",
    "application/octet-stream",
];
/// Codes a decodable-or-not body may be refused with.
const DECODE_CODES: [&str; 5] = [
    "invalid_protobuf",
    "invalid_json",
    "missing_event_type",
    "invalid_event_id",
    "empty_batch",
];

fn scaled(n: usize) -> usize {
    if std::env::var("FECHATTER_TEST_FULL").is_ok_and(|v| v == "1") {
        n * 10
    } else {
        n
    }
}

/// What the answer to a probe must be.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// 202 accepting exactly this many events.
    Accepted(usize),
    /// Exactly this status and error code.
    Refused(u16, &'static str),
    /// 202, or 400/413 with a decode refusal: input whose validity the test does not predict.
    AcceptedOrRefused,
    /// 200.
    Ok,
    /// 404 or 405: no such route, or not this method.
    Unrouted,
}

/// How a probe is sent.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Via {
    /// reqwest, with a `Content-Length`.
    Client,
    /// A raw socket, with a `Content-Length`, reading the answer while the body is still being written.
    RawLength,
    /// A raw socket, `Transfer-Encoding: chunked` (64 KiB chunks), reading the answer while writing.
    RawChunked,
}

/// One request.
#[derive(Debug, Clone)]
struct Probe {
    /// The generator that made it (for the per-kind counts).
    kind: &'static str,
    method: Method,
    path: String,
    content_type: Option<Vec<u8>>,
    user_agent: Option<String>,
    /// How the request goes out.
    via: Via,
    body: Payload,
    expect: Expect,
}

impl Probe {
    fn post(kind: &'static str, path: &str, content_type: &str, body: Vec<u8>, expect: Expect) -> Self {
        Self {
            kind,
            method: Method::POST,
            path: path.into(),
            content_type: Some(content_type.as_bytes().to_vec()),
            user_agent: None,
            via: Via::Client,
            body: Payload::Bytes(body),
            expect,
        }
    }

    fn describe(&self) -> String {
        format!(
            "[{}] {} {} content-type={:?} via={:?} body={}",
            self.kind,
            self.method,
            self.path,
            self.content_type.as_deref().map(String::from_utf8_lossy),
            self.via,
            self.body.describe()
        )
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Generators.

fn route() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("/api/event"), Just("/api/batch")]
}

fn protobuf_type() -> impl Strategy<Value = &'static str> {
    prop::sample::select(PROTOBUF_TYPES.to_vec())
}

fn json_type() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "application/json",
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        " application/json ;x=y",
    ])
}

/// Arbitrary text, often with what breaks naive code (NUL, control characters, astral characters, quotes).
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<String>(),
        1 => "[\\x00-\\x1f\"\\\\'%<>{}]{0,40}",
        1 => Just(String::new()),
        1 => Just("'; DROP TABLE analytics_events; --".to_owned()),
    ]
}

/// A sample event of any kind with arbitrary context values; its id kept, replaced by any UUID, or left out.
fn valid_event() -> impl Strategy<Value = AnalyticsEvent> {
    let id = prop_oneof![
        Just(None),
        any::<u128>().prop_map(|n| Some(uuid::Uuid::from_u128(n).to_string())),
        any::<u128>().prop_map(|n| Some(uuid::Uuid::from_u128(n).urn().to_string())),
    ];
    (0..16usize, id, text(), text(), any::<i64>(), any::<bool>()).prop_map(
        |(which, id, user_id, client_id, client_ts, no_context)| {
            let mut event = sample_events().swap_remove(which);
            if no_context && id.is_none() {
                event.context = None;
                return event;
            }
            let ctx = event.context.get_or_insert_with(Default::default);
            ctx.event_id = id.unwrap_or_default();
            ctx.user_id = user_id;
            ctx.client_id = client_id;
            ctx.client_ts = client_ts;
            event
        },
    )
}

fn encode(event: &AnalyticsEvent, json: bool) -> Vec<u8> {
    if json {
        serde_json::to_vec(event).expect("serializable")
    } else {
        event.encode_to_vec()
    }
}

fn encode_batch(events: Vec<AnalyticsEvent>, json: bool) -> Vec<u8> {
    let batch = BatchRecordEventsRequest { events };
    if json {
        serde_json::to_vec(&batch).expect("serializable")
    } else {
        batch.encode_to_vec()
    }
}

fn valid_single() -> impl Strategy<Value = Probe> {
    (valid_event(), any::<bool>(), protobuf_type(), json_type()).prop_map(|(event, json, pb_type, json_type)| {
        let content_type = if json { json_type } else { pb_type };
        Probe::post(
            if json { "json_valid" } else { "pb_valid" },
            "/api/event",
            content_type,
            encode(&event, json),
            Expect::Accepted(1),
        )
    })
}

fn valid_batch() -> impl Strategy<Value = Probe> {
    (prop::collection::vec(valid_event(), 1..40), any::<bool>()).prop_map(|(events, json)| {
        let n = events.len();
        let content_type = if json {
            "application/json"
        } else {
            "application/protobuf"
        };
        Probe::post(
            "batch_valid",
            "/api/batch",
            content_type,
            encode_batch(events, json),
            Expect::Accepted(n),
        )
    })
}

/// A valid event with a string field of 100 KB to 400 KB: within the body limit, so accepted.
fn huge_strings() -> impl Strategy<Value = Probe> {
    (valid_event(), 100_000..400_000usize, any::<bool>()).prop_map(|(mut event, len, json)| {
        event.context.get_or_insert_with(Default::default).session_id = "s".repeat(len);
        let content_type = if json {
            "application/json"
        } else {
            "application/protobuf"
        };
        Probe::post(
            "huge_string_valid",
            "/api/event",
            content_type,
            encode(&event, json),
            Expect::Accepted(1),
        )
    })
}

/// Protobuf bodies that are garbage, truncated, bit-flipped or carry lengths no body has.
fn broken_protobuf() -> impl Strategy<Value = Probe> {
    let garbage = prop::collection::vec(any::<u8>(), 0..2048).prop_map(|b| ("pb_garbage", b));
    let truncated = (valid_event(), any::<prop::sample::Index>()).prop_map(|(event, at)| {
        let bytes = event.encode_to_vec();
        let cut = at.index(bytes.len());
        ("pb_truncated", bytes[..cut].to_vec())
    });
    let flipped = (
        valid_event(),
        prop::collection::vec((any::<prop::sample::Index>(), 0..8u8), 1..6),
    )
        .prop_map(|(event, flips)| {
            let mut bytes = event.encode_to_vec();
            for (at, bit) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= 1 << bit;
            }
            ("pb_bitflip", bytes)
        });
    let huge_length = (
        valid_event(),
        prop_oneof![Just(1u64), Just(10), Just(12), 1u64..1 << 29],
        prop_oneof![
            Just(u64::MAX),
            Just(i64::MAX as u64),
            Just(u32::MAX as u64),
            Just(MAX_BODY as u64 + 1),
            any::<u64>()
        ],
    )
        .prop_map(|(event, field, len)| {
            let mut bytes = event.encode_to_vec();
            prost::encoding::encode_varint((field << 3) | 2, &mut bytes);
            prost::encoding::encode_varint(len, &mut bytes);
            bytes.extend_from_slice(b"short");
            ("pb_huge_length", bytes)
        });
    (
        prop_oneof![3 => garbage, 3 => truncated, 3 => flipped, 2 => huge_length],
        route(),
        protobuf_type(),
    )
        .prop_map(|((kind, body), path, content_type)| {
            Probe::post(kind, path, content_type, body, Expect::AcceptedOrRefused)
        })
}

/// The JSON of a valid event or batch, as a `Value` to corrupt.
fn json_value() -> impl Strategy<Value = (&'static str, Value)> {
    prop_oneof![
        valid_event().prop_map(|e| ("/api/event", serde_json::to_value(&e).expect("json"))),
        prop::collection::vec(valid_event(), 1..4).prop_map(|events| (
            "/api/batch",
            serde_json::to_value(BatchRecordEventsRequest { events }).expect("json")
        )),
    ]
}

/// Malformed JSON: a valid body truncated, with a byte deleted, inserted or replaced, with a BOM, trailing
/// garbage or a comment.
fn malformed_json() -> impl Strategy<Value = Probe> {
    let edit = (
        0..7u8,
        any::<prop::sample::Index>(),
        prop::sample::select(b"{}[]\":,\\ 0e-+.tnx".to_vec()),
    );
    (json_value(), edit).prop_map(|((path, value), (how, at, byte))| {
        let mut text = serde_json::to_vec(&value).expect("json");
        let i = at.index(text.len());
        match how {
            0 => text.truncate(i),
            1 => {
                text.remove(i);
            }
            2 => text.insert(i, byte),
            3 => text[i] = byte,
            4 => text = [b"\xef\xbb\xbf".as_slice(), &text].concat(),
            5 => text.extend_from_slice(b" {}"),
            _ => text = [b"/* c */".as_slice(), &text].concat(),
        }
        Probe::post(
            "json_malformed",
            path,
            "application/json",
            text,
            Expect::AcceptedOrRefused,
        )
    })
}

/// Invalid UTF-8 (or lone surrogate escapes) inside a JSON string: always `invalid_json`.
fn invalid_utf8_json() -> impl Strategy<Value = Probe> {
    let bad: Vec<&'static [u8]> = vec![
        b"\xff",
        b"\xc3\x28",
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
        b"\xc0\xaf",
        b"\xe2\x82",
        b"\x80",
        b"\\ud800",
        b"\\udfff\\ud800",
    ];
    (json_value(), prop::sample::select(bad), any::<prop::sample::Index>()).prop_map(|((path, value), bad, at)| {
        let text = serde_json::to_vec(&value).expect("json");
        // Inside a string: right after one of the opening quotes of a value.
        let quotes: Vec<usize> = text
            .windows(2)
            .enumerate()
            .filter(|(_, w)| w == b":\"")
            .map(|(i, _)| i + 2)
            .collect();
        let at = if quotes.is_empty() {
            0
        } else {
            quotes[at.index(quotes.len())]
        };
        let mut body = text[..at].to_vec();
        body.extend_from_slice(bad);
        body.extend_from_slice(&text[at..]);
        let expect = if quotes.is_empty() {
            Expect::AcceptedOrRefused
        } else {
            Expect::Refused(400, "invalid_json")
        };
        Probe::post("json_invalid_utf8", path, "application/json", body, expect)
    })
}

/// Deeply nested JSON, up to the body limit: always `invalid_json`.
fn deep_json() -> impl Strategy<Value = Probe> {
    let shapes = prop::sample::select(vec![
        ("", "[", "]"),
        ("", "{\"a\":", "}"),
        ("", "{\"events\":[", "]}"),
        ("{\"appStart\":{\"x\":", "[", "]"),
        ("{\"context\":", "{\"system\":", "}"),
        ("{\"userLogin\":{\"email\":", "[", "]"),
    ]);
    (
        shapes,
        prop_oneof![Just(100_000usize), 129..2000usize, 10_000..40_000usize],
        any::<bool>(),
        route(),
    )
        .prop_map(|((prefix, open, close), depth, balanced, path)| {
            let depth = depth.min((MAX_BODY - prefix.len()) / (open.len() + if balanced { close.len() } else { 0 }));
            Probe {
                kind: "json_deep",
                method: Method::POST,
                path: path.into(),
                content_type: Some(b"application/json".to_vec()),
                user_agent: None,
                via: Via::Client,
                body: Payload::Nested {
                    prefix,
                    open,
                    depth,
                    close,
                    close_depth: if balanced { depth } else { 0 },
                },
                // `{"appStart":{"x":[[…]]}}` balanced: the unknown key is refused before its value is read.
                expect: Expect::Refused(400, "invalid_json"),
            }
        })
}

/// Every numeric (and boolean) field of the contract, by the JSON key of its kind.
const NUMERIC_FIELDS: [(&str, &str); 20] = [
    ("context", "clientTs"),
    ("context", "serverTs"),
    ("appExit", "exitCode"),
    ("chatCreated", "initialMembersCount"),
    ("messageSent", "size"),
    ("messageSent", "totalFiles"),
    ("messageSent", "hasMentions"),
    ("navigation", "durationMs"),
    ("fileUploaded", "fileSize"),
    ("fileUploaded", "uploadDurationMs"),
    ("fileDownloaded", "fileSize"),
    ("fileDownloaded", "downloadDurationMs"),
    ("searchPerformed", "resultsCount"),
    ("searchPerformed", "searchDurationMs"),
    ("searchPerformed", "hasFilters"),
    ("notificationReceived", "wasClicked"),
    ("botResponse", "responseTimeMs"),
    ("botResponse", "tokensUsed"),
    ("botResponse", "success"),
    ("context", "eventId"),
];

/// Numbers no field holds, and things that are not numbers: raw JSON text (some of it not JSON at all).
const EXTREME_NUMBERS: [&str; 56] = [
    "0",
    "-0",
    "-0.0",
    "0.0",
    "1.0",
    "1.5",
    "1e2",
    "1E+2",
    "-1",
    "2147483647",
    "2147483648",
    "-2147483648",
    "-2147483649",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "1e400",
    "-1e400",
    "1e-400",
    "123456789012345678901234567890123456789012345678901234567890",
    "\"NaN\"",
    "\"Infinity\"",
    "\"-Infinity\"",
    "\"nan\"",
    "NaN",
    "Infinity",
    "-Infinity",
    "\"1e400\"",
    "\"9223372036854775808\"",
    "\"-9223372036854775809\"",
    "\"18446744073709551616\"",
    "\"-0\"",
    "\"\"",
    "\" 1\"",
    "\"0x10\"",
    "\"1_000\"",
    "null",
    "true",
    "false",
    "[]",
    "{}",
    "[1]",
    "\"abc\"",
    "0x10",
    "01",
    "+1",
    ".5",
    "5.",
    "1e",
    "--1",
    "\"EXIT_CODE_CRASH\"",
];

/// A sample event of the kind holding `key` with `field` set to raw `literal`.
fn with_literal(key: &str, field: &str, literal: &str) -> Vec<u8> {
    let event = sample_events()
        .into_iter()
        .find(|e| key == "context" || serde_json::to_value(e).expect("json").get(key).is_some())
        .expect("a sample of every kind");
    let mut value = serde_json::to_value(&event).expect("json");
    value[key][field] = json!("__LITERAL__");
    serde_json::to_string(&value)
        .expect("json")
        .replace("\"__LITERAL__\"", literal)
        .into_bytes()
}

fn extreme_numbers() -> impl Strategy<Value = Probe> {
    (
        prop::sample::select(NUMERIC_FIELDS.to_vec()),
        prop::sample::select(EXTREME_NUMBERS.to_vec()),
    )
        .prop_map(|((key, field), literal)| {
            Probe::post(
                "json_extreme_number",
                "/api/event",
                "application/json",
                with_literal(key, field, literal),
                Expect::AcceptedOrRefused,
            )
        })
}

/// Each object of `value` with its path of keys, for picking one to corrupt.
fn object_paths(value: &Value, path: Vec<String>, out: &mut Vec<Vec<String>>) {
    if let Value::Object(map) = value {
        out.push(path.clone());
        for (k, v) in map {
            let mut p = path.clone();
            p.push(k.clone());
            object_paths(v, p, out);
        }
    } else if let Value::Array(items) = value {
        for (i, v) in items.iter().enumerate() {
            let mut p = path.clone();
            p.push(i.to_string());
            object_paths(v, p, out);
        }
    }
}

fn at_path<'a>(value: &'a mut Value, path: &[String]) -> &'a mut Value {
    path.iter().fold(value, |v, k| match v {
        Value::Array(items) => &mut items[k.parse::<usize>().expect("index")],
        other => &mut other[k.as_str()],
    })
}

/// Values of the wrong type for whatever field they replace.
const WRONG_VALUES: [&str; 12] = [
    "7",
    "\"x\"",
    "[]",
    "{}",
    "null",
    "true",
    "[[[]]]",
    "{\"a\":{\"b\":1}}",
    "-1e400",
    "\"\\u0000\"",
    "[\"appStart\"]",
    "{\"appStart\":{}}",
];

/// Unknown fields (and aliases, duplicates and oddities) added to any object of a valid body, or a field's
/// value replaced by one of the wrong type.
fn unknown_fields_and_wrong_types() -> impl Strategy<Value = Probe> {
    let keys = prop::sample::select(vec![
        "bogus".to_owned(),
        "__proto__".to_owned(),
        "user_login".to_owned(),
        "event_id".to_owned(),
        "USERLOGIN".to_owned(),
        String::new(),
        "\u{0}".to_owned(),
        "k".repeat(10_000),
        "appStart".to_owned(),
        "context".to_owned(),
    ]);
    (
        json_value(),
        any::<prop::sample::Index>(),
        any::<bool>(),
        keys,
        prop::sample::select(WRONG_VALUES.to_vec()),
    )
        .prop_map(|((path, mut value), at, add, key, wrong)| {
            let mut objects = Vec::new();
            object_paths(&value, Vec::new(), &mut objects);
            let target = &objects[at.index(objects.len())];
            let kind = if add {
                if let Value::Object(map) = at_path(&mut value, target) {
                    map.insert(key, json!("__LITERAL__"));
                }
                "json_unknown_field"
            } else {
                let object = at_path(&mut value, target);
                if let Value::Object(map) = object
                    && let Some(first) = map.keys().next().cloned()
                {
                    map.insert(first, json!("__LITERAL__"));
                }
                "json_wrong_type"
            };
            let body = serde_json::to_string(&value)
                .expect("json")
                .replace("\"__LITERAL__\"", wrong)
                .into_bytes();
            Probe::post(kind, path, "application/json", body, Expect::AcceptedOrRefused)
        })
}

/// Bodies that are JSON, but not an object.
fn top_level_json() -> impl Strategy<Value = Probe> {
    let bodies = prop::sample::select(vec![
        "null",
        "[]",
        "\"x\"",
        "1",
        "true",
        "{}",
        "[{}]",
        "",
        " ",
        "{\"events\":[]}",
    ]);
    (bodies, route()).prop_map(|(body, path)| {
        let expect = match (body, path) {
            ("{}", "/api/event") => Expect::Refused(400, "missing_event_type"),
            ("{}" | "{\"events\":[]}", "/api/batch") => Expect::Refused(400, "empty_batch"),
            _ => Expect::Refused(400, "invalid_json"),
        };
        Probe::post(
            "json_top_level",
            path,
            "application/json",
            body.as_bytes().to_vec(),
            expect,
        )
    })
}

/// What the documented contract says about a Content-Type: the encoding, or `None` (415).
fn accepted_encoding(content_type: Option<&[u8]>) -> Option<bool> {
    let text = std::str::from_utf8(content_type?).ok()?;
    if !text.is_ascii() {
        return None;
    }
    let mime = text.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => Some(true),
        m if PROTOBUF_TYPES.contains(&m) => Some(false),
        _ => None,
    }
}

/// Wrong, odd and missing content types on valid bodies of both encodings.
fn content_types() -> impl Strategy<Value = Probe> {
    let named = prop::sample::select(vec![
        Some(b"text/plain".to_vec()),
        Some(b"application/jsonx".to_vec()),
        Some(b"application/json+protobuf".to_vec()),
        Some(b"text/json".to_vec()),
        Some(b"application/problem+json".to_vec()),
        Some(b"multipart/form-data; boundary=x".to_vec()),
        Some(b"application/x-www-form-urlencoded".to_vec()),
        Some(b"".to_vec()),
        Some(b";".to_vec()),
        Some(b"application/json;;;;".to_vec()),
        Some(b"Application/X-Protobuf; proto=fechatter.v1.AnalyticsEvent".to_vec()),
        Some(b"application/protobuf\t".to_vec()),
        Some(b"application/\xe9json".to_vec()),
        Some(b"\xff\xfe".to_vec()),
        Some(format!("application/json; {}", "p=v;".repeat(2000)).into_bytes()),
        Some("x".repeat(8000).into_bytes()),
        None,
    ]);
    let random = "[ -~]{0,60}".prop_map(|s| Some(s.into_bytes()));
    (valid_event(), any::<bool>(), prop_oneof![3 => named, 1 => random]).prop_map(|(event, json, content_type)| {
        let body = encode(&event, json);
        let expect = match accepted_encoding(content_type.as_deref()) {
            None => Expect::Refused(415, "unsupported_content_type"),
            Some(decodes_as_json) if decodes_as_json == json => Expect::Accepted(1),
            Some(_) => Expect::AcceptedOrRefused,
        };
        Probe {
            kind: "content_type",
            method: Method::POST,
            path: "/api/event".into(),
            content_type,
            user_agent: None,
            via: Via::Client,
            body: Payload::Bytes(body),
            expect,
        }
    })
}

/// Bodies over `server.max_body_bytes` (413), with a `Content-Length` or chunked; with a wrong content type the
/// content type is refused first (415). These go out over a raw socket that reads the answer while it writes, and
/// may send any framing; the same bodies through reqwest are `bodies_far_over_the_limit_get_their_413_with_reqwest_too`.
fn huge_bodies() -> impl Strategy<Value = Probe> {
    let len = prop_oneof![Just(MAX_BODY + 1), MAX_BODY + 1..2 * MAX_BODY, Just(8 * 1024 * 1024),];
    let content_type = prop::sample::select(vec!["application/protobuf", "application/json", "text/plain"]);
    (len, content_type, route(), any::<u8>(), any::<bool>()).prop_map(|(len, content_type, path, byte, chunked)| {
        let expect = if content_type == "text/plain" {
            Expect::Refused(415, "unsupported_content_type")
        } else {
            Expect::Refused(413, "payload_too_large")
        };
        Probe {
            kind: if chunked { "huge_body_chunked" } else { "huge_body" },
            via: if chunked { Via::RawChunked } else { Via::RawLength },
            method: Method::POST,
            path: path.into(),
            content_type: Some(content_type.as_bytes().to_vec()),
            user_agent: None,
            body: Payload::Filled { byte, len },
            expect,
        }
    })
}

/// Valid small bodies sent chunked (no `Content-Length`): decoded like any other.
fn chunked_valid() -> impl Strategy<Value = Probe> {
    valid_single().prop_map(|mut probe| {
        probe.kind = "chunked_valid";
        probe.via = Via::RawChunked;
        probe
    })
}

/// Batches refused as a whole: too many events, an event without a type or with a bad id among valid ones.
fn bad_batches() -> impl Strategy<Value = Probe> {
    let too_many = (MAX_EVENTS + 1..MAX_EVENTS + 200, any::<bool>()).prop_map(|(n, json)| {
        let events = vec![
            AnalyticsEvent {
                context: None,
                event_type: sample_events().swap_remove(0).event_type,
            };
            n
        ];
        let content_type = if json {
            "application/json"
        } else {
            "application/protobuf"
        };
        Probe::post(
            "batch_too_many",
            "/api/batch",
            content_type,
            encode_batch(events, json),
            Expect::Refused(413, "too_many_events"),
        )
    });
    let one_bad = (
        prop::collection::vec(valid_event(), 1..10),
        any::<prop::sample::Index>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(mut events, at, no_type, json)| {
            let i = at.index(events.len() + 1).min(events.len());
            let mut bad = sample_events().swap_remove(3);
            let code = if no_type {
                bad.event_type = None;
                "missing_event_type"
            } else {
                bad.context.get_or_insert_with(Default::default).event_id = "not-a-uuid".into();
                "invalid_event_id"
            };
            events.insert(i, bad);
            let content_type = if json {
                "application/json"
            } else {
                "application/protobuf"
            };
            Probe::post(
                "batch_one_bad",
                "/api/batch",
                content_type,
                encode_batch(events, json),
                Expect::Refused(400, code),
            )
        });
    prop_oneof![1 => too_many, 4 => one_bad]
}

/// Query strings and junk headers on the operator routes.
fn operator_routes() -> impl Strategy<Value = Probe> {
    let query = prop_oneof![
        Just(String::new()),
        "[a-z0-9=&%;]{0,40}".prop_map(|q| format!("?{q}")),
        Just("?x=%00%ff%fe".to_owned()),
        Just(format!("?{}", "a=b&".repeat(1000))),
    ];
    (
        prop::sample::select(vec!["/health", "/ready", "/metrics"]),
        query,
        any::<bool>(),
    )
        .prop_map(|(path, query, with_body)| Probe {
            kind: "operator_route",
            method: Method::GET,
            path: format!("{path}{query}"),
            content_type: with_body.then(|| b"application/json".to_vec()),
            user_agent: None,
            via: Via::Client,
            body: Payload::Bytes(if with_body { b"{\"x\":[[[[".to_vec() } else { Vec::new() }),
            expect: Expect::Ok,
        })
}

const ROUTES: [&str; 5] = ["/api/event", "/api/batch", "/health", "/ready", "/metrics"];

/// Paths and methods with no route: 404 or 405.
fn unrouted() -> impl Strategy<Value = Probe> {
    let path = prop_oneof![
        Just("/".to_owned()),
        Just("/api".to_owned()),
        Just("/api/events".to_owned()),
        Just("/api/event/".to_owned()),
        Just("/api/event/1".to_owned()),
        Just("/api//event".to_owned()),
        Just("/API/EVENT".to_owned()),
        Just("/%2e%2e/%2e%2e/etc/passwd".to_owned()),
        Just("/api/%00".to_owned()),
        Just("/api/%ff%fe".to_owned()),
        Just(format!("/{}", "a".repeat(6000))),
        "/[a-zA-Z0-9_.~%-]{1,30}(/[a-zA-Z0-9_.~-]{0,10}){0,3}"
            .prop_filter("not a route", |p| !ROUTES.contains(&p.trim_end_matches('/'))),
    ];
    let wrong_method = (
        prop::sample::select(vec!["/api/event", "/api/batch", "/health", "/ready", "/metrics"]),
        prop::sample::select(vec![
            Method::GET,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::POST,
        ]),
    )
        .prop_filter("a routed method", |(path, method)| {
            !((path.starts_with("/api") && *method == Method::POST)
                || (!path.starts_with("/api") && *method == Method::GET))
        })
        .prop_map(|(path, method)| (path.to_owned(), method));
    prop_oneof![
        (
            path,
            prop::sample::select(vec![Method::GET, Method::POST, Method::DELETE])
        ),
        wrong_method
    ]
    .prop_map(|(path, method)| Probe {
        kind: "unrouted",
        method,
        path,
        content_type: Some(b"application/json".to_vec()),
        user_agent: None,
        via: Via::Client,
        body: Payload::Bytes(b"{\"appStart\":{}}".to_vec()),
        expect: Expect::Unrouted,
    })
}

/// Long and odd User-Agent headers on valid events (the server stamps them, up to 512 characters).
fn user_agents() -> impl Strategy<Value = Probe> {
    let ua = prop_oneof![
        "[ -~]{0,600}",
        Just("x".repeat(20_000)),
        Just("Mozilla/5.0 \u{e9}".to_owned()),
    ];
    (valid_single(), ua).prop_map(|(mut probe, ua)| {
        probe.kind = "user_agent";
        probe.user_agent = Some(ua);
        probe
    })
}

fn probe() -> impl Strategy<Value = Probe> {
    prop_oneof![
        90 => valid_single(),
        40 => valid_batch(),
        4 => huge_strings(),
        200 => broken_protobuf(),
        70 => malformed_json(),
        40 => invalid_utf8_json(),
        25 => deep_json(),
        140 => extreme_numbers(),
        90 => unknown_fields_and_wrong_types(),
        20 => top_level_json(),
        70 => content_types(),
        12 => huge_bodies(),
        15 => chunked_valid(),
        25 => bad_batches(),
        30 => operator_routes(),
        45 => unrouted(),
        25 => user_agents(),
    ]
}

/// `n` probes from a fixed seed.
fn generate(n: usize) -> Vec<Probe> {
    let config = ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let strategy = probe();
    (0..n)
        .map(|_| strategy.new_tree(&mut runner).expect("generate").current())
        .collect()
}

// ---------------------------------------------------------------------------------------------------------------
// Sending and judging.

/// Sends `probe`; an `Err` is a dropped connection or a timeout.
async fn send(http: &reqwest::Client, port: u16, probe: &Probe) -> Result<Answer, String> {
    if probe.via != Via::Client {
        return send_raw(port, probe).await;
    }
    let mut request = http
        .request(probe.method.clone(), format!("http://127.0.0.1:{port}{}", probe.path))
        .body(probe.body.bytes());
    if let Some(ct) = &probe.content_type {
        request = request.header(CONTENT_TYPE, HeaderValue::from_bytes(ct).expect("a valid header value"));
    }
    if let Some(ua) = &probe.user_agent {
        request = request.header(
            USER_AGENT,
            HeaderValue::from_bytes(ua.as_bytes()).expect("valid header"),
        );
    }
    let response = request.send().await.map_err(|e| format!("send: {e:?}"))?;
    let status = response.status().as_u16();
    let body = response.bytes().await.map_err(|e| format!("body: {e:?}"))?.to_vec();
    Ok(Answer { status, body })
}

/// Sends `probe` over a raw socket, reading the answer while the body is being written.
async fn send_raw(port: u16, probe: &Probe) -> Result<Answer, String> {
    let body = probe.body.bytes();
    let method = probe.method.to_string();
    let mut headers: Vec<(&str, &[u8])> = Vec::new();
    if let Some(ct) = &probe.content_type {
        headers.push(("Content-Type", ct));
    }
    let request = RawRequest {
        method: &method,
        path: &probe.path,
        headers,
        body: &body,
        chunked: probe.via == Via::RawChunked,
    };
    raw_http::send(port, &request).await
}

/// Whether `answer` is what `probe` must get; `Err` says why not.
fn judge(probe: &Probe, answer: &Answer) -> Result<(), String> {
    let status = answer.status;
    if status >= 500 {
        return Err(format!("5xx: {status}"));
    }
    let api = probe.path.starts_with("/api/event") || probe.path.starts_with("/api/batch");
    if (400..500).contains(&status) && probe.expect != Expect::Unrouted && !is_error_body(&answer.body) {
        return Err(format!("{status} without a JSON error body"));
    }
    let code = serde_json::from_slice::<Value>(&answer.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let accepted = |n: Option<usize>| -> Result<(), String> {
        let body: Value = serde_json::from_slice(&answer.body).map_err(|e| format!("202 body not JSON: {e}"))?;
        let ids = body["event_ids"].as_array().map(Vec::len);
        let count = body["accepted"].as_u64().and_then(|c| usize::try_from(c).ok());
        if count.is_none() || ids != count || n.is_some_and(|n| count != Some(n)) {
            return Err(format!("202 with {body}, expected {n:?} events"));
        }
        Ok(())
    };
    match probe.expect {
        Expect::Accepted(n) if status == 202 => accepted(Some(n)),
        Expect::Refused(s, c) if status == s && code == c => Ok(()),
        Expect::AcceptedOrRefused if status == 202 => accepted(None),
        Expect::AcceptedOrRefused
            if api
                && ((status == 400 && DECODE_CODES.contains(&code.as_str()))
                    || (status == 413 && code == "too_many_events")) =>
        {
            Ok(())
        }
        Expect::Ok if status == 200 => Ok(()),
        Expect::Unrouted if status == 404 || status == 405 => Ok(()),
        expected => Err(format!("expected {expected:?}, got {status} {code:?}")),
    }
}

/// Samples [`rss_mib`] every 20 ms until stopped; returns the peak.
fn watch_rss() -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(rss_mib()));
    let handle = tokio::spawn({
        let stop = stop.clone();
        async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_mib(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak.load(Ordering::Relaxed)
        }
    });
    (stop, handle)
}

#[derive(Default)]
struct Tally {
    /// Per generator: inputs, 2xx, 4xx.
    by_kind: BTreeMap<&'static str, [usize; 3]>,
    by_class: BTreeMap<u16, usize>,
    unrouted_without_json: Vec<String>,
    failures: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_a_2xx_or_a_json_4xx_and_memory_stays_bounded() {
    let started = Instant::now();
    let stack = Stack::start().await;
    // The per-client ingest limit (6000 a minute) would answer most of a run 429: these inputs all come from one
    // address, and each must reach the decoding it is meant for.
    let app = stack.run_in_process(&[UNLIMITED]).await;
    // Kept-alive connections, as real clients use them: an answer given before the body was read must leave the
    // client able to go on (`an_early_refusal_leaves_the_connection_usable`).
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let health = http.get(app.url("/health")).send().await.expect("health");
    assert_eq!(health.status(), 200);
    let probes = generate(scaled(INPUTS));
    let rss_before = rss_mib();
    let (stop, peak) = watch_rss();
    let run_started = Instant::now();

    let port = app.port;
    let answers = send_all(&probes, CONCURRENCY, |probe| send(&http, port, probe)).await;
    let run_time = run_started.elapsed();

    let mut tally = Tally::default();
    for (i, answer) in answers {
        let probe = &probes[i];
        tally.by_kind.entry(probe.kind).or_default()[0] += 1;
        match answer {
            Err(dropped) => tally.failures.push(format!("dropped: {dropped}: {}", probe.describe())),
            Ok(answer) => {
                *tally.by_class.entry(answer.status / 100).or_default() += 1;
                match answer.status / 100 {
                    2 => tally.by_kind.entry(probe.kind).or_default()[1] += 1,
                    4 => tally.by_kind.entry(probe.kind).or_default()[2] += 1,
                    _ => {}
                }
                if let Err(why) = judge(probe, &answer) {
                    tally.failures.push(format!(
                        "{why}: {} -> {} {}",
                        probe.describe(),
                        answer.status,
                        answer.excerpt()
                    ));
                }
                if probe.expect == Expect::Unrouted && !is_error_body(&answer.body) {
                    tally
                        .unrouted_without_json
                        .push(format!("{} {}", probe.method, probe.path));
                }
            }
        }
    }

    // Still alive and answering.
    let health = http.get(app.url("/health")).send().await.expect("health after the run");
    assert_eq!(health.status(), 200);
    let valid = sample_events().swap_remove(2).encode_to_vec();
    let again = http
        .post(app.url("/api/event"))
        .header(CONTENT_TYPE, "application/protobuf")
        .body(valid)
        .send()
        .await
        .expect("ingest after the run");
    assert_eq!(again.status(), 202);
    stop.store(true, Ordering::Relaxed);
    let rss_peak = peak.await.expect("rss watcher");
    let rss_after = rss_mib();

    let inputs = probes.len();
    let class = |c: u16| tally.by_class.get(&c).copied().unwrap_or(0);
    let kinds: Vec<String> = tally
        .by_kind
        .iter()
        .map(|(k, [n, ok, refused])| format!("{k}={n}({ok}/{refused})"))
        .collect();
    println!(
        "FIGURES hostile_input_analytics: inputs={inputs} 4xx={} 2xx={} 5xx={} dropped={} rss_mib_before={rss_before} \
         after={rss_after} peak={rss_peak} (bound: +{RSS_GROWTH_LIMIT_MIB}, <{RSS_LIMIT_MIB}) run_s={:.1} total_s={:.1}",
        class(4),
        class(2),
        class(5),
        inputs - tally.by_class.values().sum::<usize>(),
        run_time.as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
    println!(
        "FIGURES hostile_input_analytics per kind (inputs(2xx/4xx)): {}",
        kinds.join(" ")
    );
    println!(
        "FIGURES hostile_input_analytics unrouted answers without a JSON body: {} of {}",
        tally.unrouted_without_json.len(),
        tally.by_kind.get("unrouted").map_or(0, |c| c[0])
    );
    assert!(
        tally.failures.is_empty(),
        "{} of {inputs} answers broke the contract; first ones:\n{}",
        tally.failures.len(),
        tally.failures.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    assert_eq!(class(5), 0);
    assert!(
        rss_peak <= RSS_LIMIT_MIB && rss_after <= rss_before + RSS_GROWTH_LIMIT_MIB,
        "memory: before {rss_before} MiB, peak {rss_peak} MiB, after {rss_after} MiB"
    );
    app.stop().await;
}

/// Status and JSON body, or why there is none.
type Answered = Result<(u16, Value), String>;

/// A body of `len` bytes over the limit, sent with reqwest (which writes the whole body before it reads).
async fn reqwest_over_the_limit(url: &str, len: usize) -> Answered {
    let response = reqwest::Client::new()
        .post(url)
        .header(CONTENT_TYPE, "application/protobuf")
        .body(vec![0x52u8; len])
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.map_err(|e| format!("{e:?}"))?;
    Ok((status, body))
}

/// A body far over `server.max_body_bytes` gets its 413 even from a client that writes the whole body before
/// reading (reqwest/hyper, most HTTP libraries): `read_body` reads and drops the rest (within bounds) before
/// answering. Found by this suite: it used to stop at the limit, and such clients got a broken pipe instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_far_over_the_limit_get_their_413_with_reqwest_too() {
    let stack = Stack::start().await;
    let app = stack.run_in_process(&[UNLIMITED]).await;
    let url = app.url("/api/event");
    // Under load, as in the hostile-input run where it showed: small valid requests alongside.
    let busy = Arc::new(AtomicBool::new(true));
    let load = tokio::spawn({
        let (busy, url) = (busy.clone(), url.clone());
        async move {
            let http = reqwest::Client::new();
            let event = sample_events().swap_remove(2).encode_to_vec();
            while busy.load(Ordering::Relaxed) {
                let send = |_| {
                    http.post(&url)
                        .header(CONTENT_TYPE, "application/protobuf")
                        .body(event.clone())
                        .send()
                };
                futures::future::join_all((0..8).map(send)).await;
            }
        }
    });
    let sizes: Vec<usize> = [MAX_BODY + 1, 2 * MAX_BODY, 8 << 20, 16 << 20, 32 << 20].repeat(12);
    let answers: Vec<(usize, Answered)> = futures::stream::iter(sizes)
        .map(|len| {
            let url = url.clone();
            async move { (len, reqwest_over_the_limit(&url, len).await) }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    busy.store(false, Ordering::Relaxed);
    load.await.expect("load");
    let dropped: Vec<String> = answers
        .iter()
        .filter(|(_, a)| !matches!(a, Ok((413, body)) if body["error"] == "payload_too_large"))
        .map(|(len, a)| format!("{len} bytes: {a:?}"))
        .collect();
    assert!(
        dropped.is_empty(),
        "{} of {} got no 413:\n{}",
        dropped.len(),
        answers.len(),
        dropped.join("\n")
    );
    app.stop().await;
}

/// An unknown path (404) and a known path with another method (405) answer the API's `{"error": …, "message": …}`
/// (the routers' fallbacks). Found by this suite: both used to answer an empty body.
#[tokio::test]
async fn unknown_paths_and_methods_answer_a_json_error() {
    let stack = Stack::start().await;
    let app = stack.run_in_process(&[UNLIMITED]).await;
    let http = reqwest::Client::new();
    for (method, path, status) in [
        (Method::GET, "/nope", 404),
        (Method::POST, "/api/events", 404),
        (Method::GET, "/api/event", 405),
        (Method::DELETE, "/health", 405),
    ] {
        let response = http
            .request(method.clone(), app.url(path))
            .send()
            .await
            .expect("answer");
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
        let body = response.bytes().await.expect("body");
        assert!(
            is_error_body(&body),
            "{method} {path}: {status} with body {:?}",
            String::from_utf8_lossy(&body)
        );
    }
    app.stop().await;
}

/// The size of `events` once the server has stamped them (event id, server time, IP, User-Agent), as published.
fn stamped_len(events: &[AnalyticsEvent], user_agent: &str) -> usize {
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms");
    let stamped: Vec<AnalyticsEvent> = events
        .iter()
        .cloned()
        .map(|mut e| {
            let ctx = e.context.get_or_insert_with(Default::default);
            ctx.event_id = uuid::Uuid::now_v7().to_string();
            ctx.server_ts = now_ms;
            ctx.ip = "127.0.0.1".into();
            ctx.user_agent = user_agent.into();
            e
        })
        .collect();
    BatchRecordEventsRequest { events: stamped }.encoded_len()
}

/// A batch body (no contexts: the server adds them) whose stamped encoding is exactly `target` bytes.
fn batch_stamped_to(target: usize, user_agent: &str) -> Option<Vec<u8>> {
    let mut events: Vec<AnalyticsEvent> = vec![
        AnalyticsEvent {
            context: None,
            event_type: sample_events().swap_remove(0).event_type,
        };
        MAX_EVENTS
    ];
    let pad = |events: &mut Vec<AnalyticsEvent>, n: usize| {
        events[0].event_type = Some(fechatter_protos::v1::analytics_event::EventType::UserLogin(
            fechatter_protos::v1::UserLoginEvent {
                email: "e".repeat(n),
                login_method: String::new(),
            },
        ));
    };
    pad(&mut events, 0);
    let base = stamped_len(&events, user_agent);
    let mut n = target.checked_sub(base)?;
    // Length prefixes grow with the padding: step down until the total is exact.
    loop {
        pad(&mut events, n);
        let len = stamped_len(&events, user_agent);
        if len == target {
            break;
        }
        n = n.checked_sub(len.checked_sub(target)?)?;
    }
    let body = BatchRecordEventsRequest { events }.encode_to_vec();
    (body.len() <= MAX_BODY).then_some(body)
}

/// A batch whose stamped encoding fits `jetstream.max_message_bytes` but not NATS's `max_payload` once the
/// `Nats-Msg-Id` header is counted is a 413, not a 503 "retry later" that no retry could fix (found by this
/// suite). With the defaults (both 1 MiB) the window is the header's bytes; it is reachable from a 470 KB body:
/// 1000 events and a 512-character User-Agent, which the server copies into every event.
#[tokio::test]
async fn a_batch_at_the_message_limit_is_accepted_or_refused_with_a_4xx() {
    let stack = Stack::start().await;
    let app = stack.run_in_process(&[UNLIMITED]).await;
    let max_payload = stack.client.server_info().max_payload;
    let max_message_bytes = 1_048_576usize;
    let user_agent = "u".repeat(512);
    let http = reqwest::Client::new();
    let mut answers = Vec::new();
    for target in [
        max_message_bytes + 1,
        max_message_bytes,
        max_message_bytes - 1,
        max_payload - 40,
        max_payload - 63,
        max_payload - 64,
        max_payload - 200,
    ] {
        let body = batch_stamped_to(target, &user_agent).expect("a body under the limit reaches the target");
        let response = http
            .post(app.url("/api/batch"))
            .header(CONTENT_TYPE, "application/protobuf")
            .header(USER_AGENT, &user_agent)
            .body(body.clone())
            .send()
            .await
            .expect("answer");
        let status = response.status().as_u16();
        let json: Value = response.json().await.expect("json");
        answers.push(format!("stamped {target} B (body {} B) -> {status} {json}", body.len()));
        let expected = if target > max_message_bytes { 413 } else { 202 };
        assert!(
            status == expected || (400..500).contains(&status),
            "stamped {target} bytes: {status} {json}\n{}",
            answers.join("\n")
        );
    }
    println!("{}", answers.join("\n"));
    app.stop().await;
}

/// A request refused before its body is read (415 for its content type, 429 over the rate limit) with a body
/// larger than hyper drains at once (~50 KB and up) leaves the client able to send its next request: the answer
/// says `Connection: close`. Found by this suite: hyper closed the kept-alive connection without saying so, and
/// the client's next request on it failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_refusal_leaves_the_connection_usable() {
    let stack = Stack::start().await;
    let app = stack.run_in_process(&[UNLIMITED]).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .expect("client");
    let mut failures = Vec::new();
    for round in 0..100 {
        let refused = http
            .post(app.url("/api/event"))
            .header(CONTENT_TYPE, "text/plain")
            .body(vec![b'x'; [50_000, 100_000, 200_000, 400_000][round % 4]])
            .send()
            .await
            .map(|r| r.status().as_u16());
        let next = http.get(app.url("/health")).send().await.map(|r| r.status().as_u16());
        if !matches!((&refused, &next), (Ok(415), Ok(200))) {
            failures.push(format!("#{round}: {refused:?}, then GET /health: {next:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 100 failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    app.stop().await;
}

/// The JSON decoder never bends a number to fit: an extreme value in a numeric field is either refused or kept
/// exactly (no wrapping into 32 bits, no rounding through a double, no clamping).
#[test]
fn extreme_numbers_are_refused_or_kept_exactly() {
    let mut accepted = 0;
    let mut refused = 0;
    for (key, field) in NUMERIC_FIELDS {
        if matches!(
            field,
            "hasMentions" | "hasFilters" | "wasClicked" | "success" | "exitCode" | "eventId"
        ) {
            continue;
        }
        for literal in EXTREME_NUMBERS {
            let Ok(event) = serde_json::from_slice::<AnalyticsEvent>(&with_literal(key, field, literal)) else {
                refused += 1;
                continue;
            };
            accepted += 1;
            let value = serde_json::to_value(&event).expect("json");
            // Proto3 JSON leaves out zeros and writes 64-bit integers as strings.
            let kept: i128 = match &value[key][field] {
                Value::Null => 0,
                Value::String(s) => s.parse().expect("an integer string"),
                other => other.as_i64().map(i128::from).expect("an integer"),
            };
            let given: i128 = literal
                .trim_matches('"')
                .parse()
                .unwrap_or_else(|_| panic!("{key}.{field} accepted the non-integer {literal}, kept as {kept}"));
            assert_eq!(kept, given, "{key}.{field} = {literal}");
        }
    }
    println!(
        "FIGURES hostile_input_analytics_numbers: inputs={} accepted={accepted} refused={refused}",
        accepted + refused
    );
}
