//! Hostile input against every route of the chat API, on real servers (PostgreSQL, NATS), the service in process.
//!
//! A seeded proptest generator sends, per route: malformed, truncated and bit-flipped JSON, wrong and missing
//! content types, bodies over `server.max_body_bytes`, deeply nested JSON, invalid UTF-8, NUL characters, extreme
//! numbers and non-numbers for ids in paths, queries and bodies (`i64::MAX`, negative, `1e400`, `"abc"`), very long
//! strings, SQL-injection-looking search queries, broken and foreign access tokens, malformed multipart uploads,
//! and unrouted paths and methods. Every answer must be a 2xx/3xx or a 4xx with a JSON body
//! `{"error": …, "message": …}` (where the input makes the refusal certain, exactly that status and code): never a
//! 5xx, never a dropped connection. Afterwards the service still answers.
//!
//! The same inputs every run; `FECHATTER_TEST_FULL=1` sends ten times as many.

mod common;

use common::{TestApp, User};
use proptest::prelude::*;
use proptest::strategy::ValueTree as _;
use proptest::test_runner::{Config as ProptestConfig, RngAlgorithm, TestRng, TestRunner};
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use test_support::raw_http::{self, Answer, Payload, RawRequest, is_error_body, rss_mib, send_all};

/// `server.max_body_bytes` (the shipped default).
const MAX_BODY: usize = 262_144;
/// `files.max_upload_bytes` for this test (smaller than the default, so oversize uploads stay cheap).
const MAX_UPLOAD: usize = 1 << 20;
/// Inputs of a default run.
const INPUTS: usize = 2500;
/// Requests in flight at once.
const CONCURRENCY: usize = 8;

fn scaled(n: usize) -> usize {
    if std::env::var("FECHATTER_TEST_FULL").is_ok_and(|v| v == "1") {
        n * 10
    } else {
        n
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The world the probes act on.

/// Users, chats, messages and a file made before the run; the generators pick real ids from here as often as
/// hostile ones, so that requests get past the 404s into the handlers.
#[derive(Debug)]
struct Fixture {
    a: User,
    b: User,
    c: User,
    workspace: String,
    /// Chats A can reach: a group (A owner, B member), a single chat with B, a public channel of B's.
    chats: Vec<i64>,
    /// A group chat of another workspace (C's): 404 for A.
    foreign_chat: i64,
    /// Group chats of A that `DELETE /api/chats/{id}` may delete.
    doomed_chats: Vec<i64>,
    /// Messages in A's group chat: A's own and B's.
    messages: Vec<i64>,
    /// Messages of A that `DELETE …/messages/{mid}` may delete.
    doomed_messages: Vec<i64>,
    /// The uploaded file's SHA-256.
    sha256: String,
}

async fn fixture(app: &TestApp) -> Fixture {
    let workspace = format!("hostile-{}", uuid::Uuid::new_v4().simple());
    let a = app.signup("Hostile A", &workspace).await;
    let b = app.direct_user("Hostile B", Some(a.workspace_id)).await;
    let c = app.direct_user("Hostile C", None).await;
    let group = app.create_chat(&a, "group", "group", &[b.id]).await;
    let single = app.create_chat(&a, "single", "single", &[b.id]).await;
    let public = app.create_chat(&b, "public", "public_channel", &[]).await;
    let foreign_chat = app.create_chat(&c, "foreign", "group", &[]).await;
    let mut doomed_chats = Vec::new();
    for i in 0..4 {
        doomed_chats.push(
            app.create_chat(&a, &format!("doomed {i}"), "private_channel", &[b.id])
                .await,
        );
    }
    let mut messages = Vec::new();
    for i in 0..3 {
        messages.push(app.send_message(&a, group, &format!("hello {i} from a")).await);
    }
    messages.push(app.send_message(&b, group, "hello from b").await);
    let mut doomed_messages = Vec::new();
    for i in 0..6 {
        doomed_messages.push(app.send_message(&a, group, &format!("doomed {i}")).await);
    }
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"fixture file".to_vec()).file_name("fixture.txt"),
    );
    let (status, body) = app
        .send(app.request(Method::POST, "/api/upload", &a).multipart(form))
        .await;
    assert_eq!(status, 201, "upload: {body}");
    let sha256 = body["files"][0]["sha256"].as_str().expect("sha256").to_owned();
    Fixture {
        a,
        b,
        c,
        workspace,
        chats: vec![group, single, public],
        foreign_chat,
        doomed_chats,
        messages,
        doomed_messages,
        sha256,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Probes.

/// What the answer must be.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Not a 5xx; a 4xx has a JSON error body.
    Any,
    /// Exactly this status and error code.
    Exactly(u16, &'static str),
    /// 404 or 405 (no such route or method); the body is checked by `unknown_paths_and_methods_answer_a_json_error`.
    Unrouted,
}

/// One request.
#[derive(Debug, Clone)]
struct Probe {
    /// The route it targets (for the per-route counts).
    route: &'static str,
    method: Method,
    path: String,
    authorization: Option<Vec<u8>>,
    content_type: Option<Vec<u8>>,
    body: Payload,
    expect: Expect,
}

impl Probe {
    fn describe(&self) -> String {
        format!(
            "[{}] {} {} authorization={:?} content-type={:?} body={}",
            self.route,
            self.method,
            self.path,
            self.authorization
                .as_deref()
                .map(|a| String::from_utf8_lossy(&a[..a.len().min(40)]).into_owned()),
            self.content_type.as_deref().map(String::from_utf8_lossy),
            self.body.describe()
        )
    }

    /// Bodies over the limit are answered before they are read; they go out over a raw socket that reads the
    /// answer while it writes (see the analytics_server test of the same name for why).
    fn raw(&self) -> bool {
        self.body.len() > MAX_BODY
    }
}

/// Where a request's credentials leave it.
#[derive(Debug, Clone, PartialEq)]
enum Credentials {
    Valid(Vec<u8>),
    /// Certainly refused with 401.
    Refused(Vec<u8>),
    Missing,
}

impl Credentials {
    fn header(&self) -> Option<Vec<u8>> {
        match self {
            Self::Valid(h) | Self::Refused(h) => Some(h.clone()),
            Self::Missing => None,
        }
    }
}

fn bearer(user: &User) -> Vec<u8> {
    format!("Bearer {}", user.access_token).into_bytes()
}

/// Mostly A's token; sometimes B's or C's (valid, other rights); sometimes missing, malformed or forged.
fn credentials(fx: &Arc<Fixture>) -> BoxedStrategy<Credentials> {
    let a = fx.a.access_token.clone();
    let mut tampered = a.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    let payload = a.split('.').nth(1).unwrap_or_default().to_owned();
    let refused: Vec<Vec<u8>> = vec![
        b"Bearer".to_vec(),
        b"Bearer ".to_vec(),
        b"Bearer garbage".to_vec(),
        b"Basic dXNlcjpwYXNzd29yZA==".to_vec(),
        format!("Bearer {tampered}").into_bytes(),
        // {"alg":"none","typ":"JWT"} with A's claims and no signature.
        format!("Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.").into_bytes(),
        format!("Bearer {}", "a".repeat(8000)).into_bytes(),
        b"Bearer \xff\xfe\x80".to_vec(),
        b"Bearer a.b.c".to_vec(),
        format!("Bearer {a}.{a}").into_bytes(),
    ];
    let valid = vec![
        bearer(&fx.a),
        bearer(&fx.a),
        bearer(&fx.a),
        // The scheme's name is case-insensitive (RFC 9110).
        format!("bearer {a}").into_bytes(),
        bearer(&fx.b),
        bearer(&fx.c),
    ];
    prop_oneof![
        12 => prop::sample::select(valid).prop_map(Credentials::Valid),
        2 => prop::sample::select(refused).prop_map(Credentials::Refused),
        1 => Just(Credentials::Missing),
    ]
    .boxed()
}

/// An id in a path: percent-encoded as sent, and whether it parses as an `i64` once decoded.
#[derive(Debug, Clone)]
struct PathId {
    text: String,
    parses: bool,
}

/// Ids that are not ids, or no one's: percent-encoded as they go into a path.
const HOSTILE_IDS: [&str; 25] = [
    "0",
    "-1",
    "9223372036854775807",
    "-9223372036854775808",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551616",
    "1e400",
    "1e3",
    "abc",
    "1.5",
    "%201",
    "1%20",
    "%00",
    "%EF%BC%91",
    "0x10",
    "%2B1",
    "007",
    "null",
    "true",
    "%5B1%5D",
    "1%2F2",
    "%ff",
    "NaN",
    "' OR 1=1 --",
];

/// Decodes `%XX` escapes (what axum does to a path segment before parsing it).
fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

fn path_id(text: &str) -> PathId {
    let text = text.replace(' ', "%20").replace('\'', "%27");
    let parses = String::from_utf8(percent_decode(&text)).is_ok_and(|s| s.parse::<i64>().is_ok());
    PathId { text, parses }
}

/// Real ids (from `real`) or hostile ones, with a digit string 10 000 long among them.
fn id(real: Vec<i64>) -> impl Strategy<Value = PathId> {
    let hostile: Vec<String> = HOSTILE_IDS
        .iter()
        .map(|s| (*s).to_owned())
        .chain(["9".repeat(10_000)])
        .collect();
    prop_oneof![
        5 => prop::sample::select(real).prop_map(|i| path_id(&i.to_string())),
        2 => prop::sample::select(hostile).prop_map(|s| path_id(&s)),
        1 => any::<i64>().prop_map(|i| path_id(&i.to_string())),
    ]
}

/// JSON text of a string.
fn js(s: &str) -> String {
    serde_json::to_string(s).expect("json string")
}

/// Strings that break naive code, as JSON text: empty, blank, NUL escapes (refused as `invalid_text`), an escaped
/// backslash before `u0000` (plain text, accepted), a lone surrogate (not JSON), injection and markup, control and
/// bidi characters, and lengths around every limit.
fn hostile_string() -> impl Strategy<Value = String> {
    let fixed: Vec<String> = vec![
        js(""),
        js(" "),
        js("\t\n"),
        "\"\\u0000\"".into(),
        "\"a\\u0000b\"".into(),
        "\"\\\\u0000\"".into(),
        "\"\\ud800\"".into(),
        js("' OR '1'='1"),
        js("'; DROP TABLE users; --"),
        js("\"; DELETE FROM messages WHERE 1=1; --"),
        js("<script>alert(1)</script>"),
        js("${jndi:ldap://x/y}"),
        js("\u{202e}evil\u{202d}"),
        js("%00%ff"),
        js("\u{1}\u{7f}\u{9f}"),
        js(&"x".repeat(101)),
        js(&"é".repeat(100)),
        js(&"🦀".repeat(129)),
        js(&"x".repeat(4001)),
        js(&"x".repeat(4000)),
        js(&"y".repeat(200_000)),
        js(&"z".repeat(300_000)),
    ];
    prop_oneof![
        4 => prop::sample::select(fixed),
        2 => any::<String>().prop_map(|s| js(&s)),
        1 => "[\\x00-\\x1f\"\\\\'%_*&|!:<>()-]{0,40}".prop_map(|s| js(&s)),
    ]
}

/// Numbers no id is, and things that are not numbers: raw JSON text (some of it not JSON at all).
const EXTREME_NUMBERS: [&str; 30] = [
    "0",
    "-0",
    "-1",
    "1.5",
    "1e2",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551616",
    "1e400",
    "-1e400",
    "123456789012345678901234567890",
    "\"1\"",
    "\"NaN\"",
    "NaN",
    "Infinity",
    "\"abc\"",
    "null",
    "true",
    "[]",
    "{}",
    "[1]",
    "0x10",
    "01",
    "+1",
    ".5",
    "1e",
    "--1",
    "\"9223372036854775808\"",
];

/// Values of whatever type the field is not.
const WRONG_TYPES: [&str; 8] = ["7", "\"x\"", "[]", "{}", "null", "true", "[[[]]]", "{\"a\":{\"b\":1}}"];

/// A field's value: valid (from `valid`) most of the time, else hostile, of the wrong type, or left out.
fn value(
    valid: impl Strategy<Value = String> + 'static,
    hostile: BoxedStrategy<String>,
) -> BoxedStrategy<Option<String>> {
    prop_oneof![
        7 => valid.prop_map(Some),
        3 => hostile.prop_map(Some),
        1 => prop::sample::select(WRONG_TYPES.to_vec()).prop_map(|s| Some(s.to_owned())),
        1 => Just(None),
    ]
    .boxed()
}

fn string_value(valid: impl Strategy<Value = String> + 'static) -> BoxedStrategy<Option<String>> {
    value(valid.prop_map(|s| js(&s)), hostile_string().boxed())
}

fn number(real: Vec<i64>) -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(real).prop_map(|i| i.to_string()),
        2 => prop::sample::select(EXTREME_NUMBERS.to_vec()).prop_map(str::to_owned),
        1 => any::<i64>().prop_map(|i| i.to_string()),
    ]
    .boxed()
}

/// A JSON array of ids: real ones, extremes, not-numbers, duplicates, or 600 of them.
fn id_list(real: Vec<i64>) -> BoxedStrategy<Option<String>> {
    let many = (0..600i64)
        .map(|i| (i * 7919).to_string())
        .collect::<Vec<_>>()
        .join(",");
    let list = prop::collection::vec(number(real.clone()), 0..5).prop_map(|items| format!("[{}]", items.join(",")));
    let valid = prop::collection::vec(prop::sample::select(real), 0..3)
        .prop_map(|ids| serde_json::to_string(&ids).expect("json"));
    value(valid, prop_oneof![4 => list, 1 => Just(format!("[{many}]"))].boxed())
}

/// `{"k": v, …}` from the fields that are present, sometimes with an unknown field or a duplicate key.
fn object(fields: Fields) -> BoxedStrategy<Vec<u8>> {
    let (names, values): (Vec<&'static str>, Vec<BoxedStrategy<Option<String>>>) = fields.into_iter().unzip();
    let extra = prop_oneof![
        6 => Just(None),
        1 => Just(Some("\"unknown_field\":{\"deep\":[1,2,3]}".to_owned())),
        1 => Just(Some(format!("{}:1", js(names[0])))),
        1 => Just(Some(format!("{}:1", js(&"k".repeat(10_000))))),
    ];
    (values, extra)
        .prop_map(move |(values, extra)| {
            let mut parts: Vec<String> = names
                .iter()
                .zip(values)
                .filter_map(|(name, value)| value.map(|v| format!("{}:{v}", js(name))))
                .collect();
            parts.extend(extra);
            format!("{{{}}}", parts.join(",")).into_bytes()
        })
        .boxed()
}

/// How a JSON body is spoiled (or not).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Spoil {
    None,
    Truncate,
    Mutate,
    InvalidUtf8,
    Deep,
    WrongContentType,
    NoContentType,
    TopLevel,
    Huge,
    Bom,
    Empty,
}

fn spoil() -> impl Strategy<Value = (Spoil, prop::sample::Index, u8)> {
    let how = prop_oneof![
        14 => Just(Spoil::None),
        2 => Just(Spoil::Truncate),
        2 => Just(Spoil::Mutate),
        1 => Just(Spoil::InvalidUtf8),
        1 => Just(Spoil::Deep),
        1 => Just(Spoil::WrongContentType),
        1 => Just(Spoil::NoContentType),
        1 => Just(Spoil::TopLevel),
        1 => Just(Spoil::Huge),
        1 => Just(Spoil::Bom),
        1 => Just(Spoil::Empty),
    ];
    (how, any::<prop::sample::Index>(), any::<u8>())
}

/// The content type, body and (when the spoiling alone makes it certain) the refusal of a spoiled JSON body.
fn spoiled(
    body: Vec<u8>,
    (how, at, byte): (Spoil, prop::sample::Index, u8),
) -> (Option<Vec<u8>>, Payload, Option<Expect>) {
    let json = Some(b"application/json".to_vec());
    let invalid_json = Some(Expect::Exactly(400, "invalid_json"));
    match how {
        Spoil::None => (json, Payload::Bytes(body), None),
        Spoil::Truncate => {
            let cut = at.index(body.len());
            (json, Payload::Bytes(body[..cut].to_vec()), None)
        }
        Spoil::Mutate => {
            let mut b = body;
            let i = at.index(b.len());
            b[i] = byte;
            (json, Payload::Bytes(b), None)
        }
        Spoil::InvalidUtf8 => {
            // Inside the first string value, where no JSON text may hold these bytes.
            let Some(q) = body.windows(2).position(|w| w == b":\"") else {
                return (json, Payload::Bytes(body), None);
            };
            let bad: &[u8] =
                [b"\xff".as_slice(), b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"][usize::from(byte % 4)];
            (
                json,
                Payload::Bytes([&body[..q + 2], bad, &body[q + 2..]].concat()),
                invalid_json,
            )
        }
        Spoil::Deep => {
            let depth = [200, 5_000, 60_000][usize::from(byte % 3)];
            let b = if byte % 2 == 0 {
                ["[".repeat(depth), "]".repeat(depth)].concat().into_bytes()
            } else {
                "{\"a\":".repeat(depth).into_bytes()
            };
            (json, Payload::Bytes(b), invalid_json)
        }
        Spoil::WrongContentType => {
            let types = [
                "text/plain",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                "application/jsonx",
                "json",
                "\u{e9}",
            ];
            let ct = types[usize::from(byte) % types.len()];
            (Some(ct.as_bytes().to_vec()), Payload::Bytes(body), None)
        }
        Spoil::NoContentType => (None, Payload::Bytes(body), None),
        Spoil::TopLevel => {
            let b = [b"null".as_slice(), b"[]", b"\"x\"", b"1", b"true", b"[{}]"][usize::from(byte % 6)].to_vec();
            (json, Payload::Bytes(b), invalid_json)
        }
        Spoil::Huge => {
            let len = [MAX_BODY + 1, MAX_BODY * 2, 4 << 20][usize::from(byte % 3)];
            (json, Payload::Filled { byte: b'[', len }, None)
        }
        Spoil::Bom => (
            json,
            Payload::Bytes([b"\xef\xbb\xbf".as_slice(), &body].concat()),
            invalid_json,
        ),
        Spoil::Empty => (json, Payload::Bytes(Vec::new()), invalid_json),
    }
}

/// The refusal of a JSON body, in the order the server checks: content type, size, NUL, then the JSON itself.
fn body_refusal(spoil: Spoil, payload: &Payload, spoil_refusal: Option<Expect>) -> Option<Expect> {
    match spoil {
        Spoil::WrongContentType | Spoil::NoContentType => Some(Expect::Exactly(415, "unsupported_content_type")),
        _ if payload.len() > MAX_BODY => Some(Expect::Exactly(413, "payload_too_large")),
        _ if has_escaped_nul(&payload.bytes()) => Some(Expect::Exactly(400, "invalid_text")),
        _ => spoil_refusal,
    }
}

/// The fields of a JSON body: name and value (JSON text, `None` when left out).
type Fields = Vec<(&'static str, BoxedStrategy<Option<String>>)>;

/// A route and the shape of its requests.
struct Route {
    name: &'static str,
    method: Method,
    /// Path with `{}` for each id.
    path: &'static str,
    /// Ids to fill the path with.
    ids: Vec<BoxedStrategy<PathId>>,
    auth: bool,
    /// The JSON body's fields (`None`: the route takes no body).
    body: Option<Fields>,
    /// A query string.
    query: Option<BoxedStrategy<String>>,
}

/// A query value: percent-encoded, and whether it holds NUL (refused as `invalid_text`).
fn encode_query(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Search text: SQL-injection look-alikes, web-search syntax, tsquery operators, blanks, NUL, long and odd.
fn search_text() -> BoxedStrategy<String> {
    let fixed: Vec<String> = vec![
        "hello".into(),
        "' OR 1=1 --".into(),
        "'; DROP TABLE messages; --".into(),
        "1); SELECT pg_sleep(10); --".into(),
        "\" OR \"\"=\"".into(),
        "%' AND 1=0 UNION SELECT password_hash FROM users --".into(),
        "$$; DELETE FROM users; $$".into(),
        "\\".into(),
        "%".into(),
        "_".into(),
        "a & b | !c".into(),
        "a <-> b".into(),
        "a:*".into(),
        "!!!".into(),
        "(((".into(),
        "\"unterminated".into(),
        "or".into(),
        "-".into(),
        "- -hello".into(),
        String::new(),
        "   ".into(),
        "\u{0}".into(),
        "a\u{0}b".into(),
        "x".repeat(200),
        "x".repeat(201),
        "ü".repeat(200),
        "🦀 emoji".into(),
        "\u{202e}".into(),
    ];
    prop_oneof![
        4 => prop::sample::select(fixed),
        1 => any::<String>(),
        1 => "[ -~]{0,60}",
    ]
    .boxed()
}

fn query_number() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(vec!["1", "50", "100", "101", "0", "-1", "9223372036854775807", "9223372036854775808", "-9223372036854775809", "1e400", "1.5", "abc", "", "%00", " 1", "+1", "0x10"]).prop_map(str::to_owned),
        1 => any::<i64>().prop_map(|i| i.to_string()),
    ]
    .boxed()
}

fn routes(fx: &Arc<Fixture>) -> Vec<Route> {
    let chats: Vec<i64> = fx.chats.iter().copied().chain([fx.foreign_chat]).collect();
    let users = vec![fx.a.id, fx.b.id, fx.c.id];
    let messages = fx.messages.clone();
    let chat = || id(chats.clone()).boxed();
    // The messages live in the group chat: pick it most of the time where a message id follows.
    let group = fx.chats[0];
    let message_chat = || {
        id(vec![group, group, group, group]
            .into_iter()
            .chain(chats.clone())
            .collect())
        .boxed()
    };
    let text =
        |valid: &'static [&'static str]| string_value(prop::sample::select(valid.to_vec()).prop_map(str::to_owned));
    let workspace = fx.workspace.clone();
    let email = fx.a.email.clone();
    let refresh = fx.a.refresh_token.clone();
    vec![
        Route {
            name: "signup",
            method: Method::POST,
            path: "/api/signup",
            ids: vec![],
            auth: false,
            body: Some(vec![
                ("fullname", text(&["Fuzz User", "F"])),
                (
                    "email",
                    string_value(any::<u32>().prop_map(|n| format!("fuzz-{n}@example.com"))),
                ),
                ("password", text(&["correct horse battery", "12345678"])),
                (
                    "workspace",
                    string_value(prop::sample::select(vec![workspace, "fuzz".into()])),
                ),
            ]),
            query: None,
        },
        Route {
            name: "signin",
            method: Method::POST,
            path: "/api/signin",
            ids: vec![],
            auth: false,
            body: Some(vec![
                (
                    "email",
                    string_value(prop::sample::select(vec![email, "nobody@example.com".into()])),
                ),
                ("password", text(&["correct horse battery", "wrong password"])),
            ]),
            query: None,
        },
        Route {
            name: "refresh",
            method: Method::POST,
            path: "/api/refresh",
            ids: vec![],
            auth: false,
            body: Some(vec![(
                "refresh_token",
                string_value(prop::sample::select(vec![refresh.clone(), "x".into()])),
            )]),
            query: None,
        },
        Route {
            name: "logout",
            method: Method::POST,
            path: "/api/logout",
            ids: vec![],
            auth: true,
            body: Some(vec![(
                "refresh_token",
                string_value(prop::sample::select(vec![refresh, "x".into()])),
            )]),
            query: None,
        },
        Route {
            name: "users_me",
            method: Method::GET,
            path: "/api/users/me",
            ids: vec![],
            auth: true,
            body: None,
            query: None,
        },
        Route {
            name: "users",
            method: Method::GET,
            path: "/api/users",
            ids: vec![],
            auth: true,
            body: None,
            query: Some(
                (prop::option::of(query_number()), prop::option::of(query_number()))
                    .prop_map(|(after, limit)| {
                        let mut q = Vec::new();
                        for (name, value) in [("after", after), ("limit", limit)] {
                            if let Some(v) = value {
                                q.push(format!("{name}={}", if v == "%00" { v } else { encode_query(&v) }));
                            }
                        }
                        q.join("&")
                    })
                    .boxed(),
            ),
        },
        Route {
            name: "chats_create",
            method: Method::POST,
            path: "/api/chats",
            ids: vec![],
            auth: true,
            body: Some(vec![
                ("name", text(&["fuzz chat", "x"])),
                (
                    "chat_type",
                    text(&["group", "single", "private_channel", "public_channel", "GROUP", "dm"]),
                ),
                ("members", id_list(users.clone())),
            ]),
            query: None,
        },
        Route {
            name: "chats_list",
            method: Method::GET,
            path: "/api/chats",
            ids: vec![],
            auth: true,
            body: None,
            query: None,
        },
        Route {
            name: "chat_get",
            method: Method::GET,
            path: "/api/chats/{}",
            ids: vec![chat()],
            auth: true,
            body: None,
            query: None,
        },
        Route {
            name: "chat_rename",
            method: Method::PATCH,
            path: "/api/chats/{}",
            ids: vec![chat()],
            auth: true,
            body: Some(vec![("name", text(&["renamed", "group"]))]),
            query: None,
        },
        Route {
            name: "chat_delete",
            method: Method::DELETE,
            path: "/api/chats/{}",
            ids: vec![id(fx.doomed_chats.iter().copied().chain([fx.foreign_chat]).collect()).boxed()],
            auth: true,
            body: None,
            query: None,
        },
        Route {
            name: "members_list",
            method: Method::GET,
            path: "/api/chats/{}/members",
            ids: vec![chat()],
            auth: true,
            body: None,
            query: None,
        },
        Route {
            name: "members_add",
            method: Method::POST,
            path: "/api/chats/{}/members",
            ids: vec![chat()],
            auth: true,
            body: Some(vec![("user_ids", id_list(users.clone()))]),
            query: None,
        },
        Route {
            name: "member_remove",
            method: Method::DELETE,
            path: "/api/chats/{}/members/{}",
            ids: vec![chat(), id(users.clone()).boxed()],
            auth: true,
            body: None,
            query: None,
        },
        Route {
            name: "message_send",
            method: Method::POST,
            path: "/api/chats/{}/messages",
            ids: vec![message_chat()],
            auth: true,
            body: Some(vec![
                ("content", text(&["hello", "", "fuzz message"])),
                (
                    "files",
                    value(
                        Just(format!(
                            "[{}]",
                            js(&format!("/api/files/{}/{}", fx.a.workspace_id, fx.sha256))
                        )),
                        prop_oneof![
                            prop::collection::vec(hostile_string(), 0..12).prop_map(|v| format!("[{}]", v.join(","))),
                            Just("[1,2]".to_owned()),
                        ]
                        .boxed(),
                    ),
                ),
                (
                    "idempotency_key",
                    string_value(any::<u64>().prop_map(|n| format!("key-{n}"))),
                ),
            ]),
            query: None,
        },
        Route {
            name: "messages_list",
            method: Method::GET,
            path: "/api/chats/{}/messages",
            ids: vec![message_chat()],
            auth: true,
            body: None,
            query: Some(
                (
                    prop::option::of(query_number()),
                    prop::option::of(query_number()),
                    any::<bool>(),
                )
                    .prop_map(|(before, limit, junk)| {
                        let mut q = Vec::new();
                        if let Some(b) = before {
                            q.push(format!("before={}", if b == "%00" { b } else { encode_query(&b) }));
                        }
                        if let Some(l) = limit {
                            q.push(format!("limit={}", if l == "%00" { l } else { encode_query(&l) }));
                        }
                        if junk {
                            q.push("limit=1&limit=2&x[]=1&%ff=%fe".into());
                        }
                        q.join("&")
                    })
                    .boxed(),
            ),
        },
        Route {
            name: "message_edit",
            method: Method::PATCH,
            path: "/api/chats/{}/messages/{}",
            ids: vec![message_chat(), id(messages.clone()).boxed()],
            auth: true,
            body: Some(vec![("content", text(&["edited", ""]))]),
            query: None,
        },
        Route {
            name: "message_delete",
            method: Method::DELETE,
            path: "/api/chats/{}/messages/{}",
            ids: vec![message_chat(), id(fx.doomed_messages.clone()).boxed()],
            auth: true,
            body: None,
            query: None,
        },
        Route {
            name: "search",
            method: Method::GET,
            path: "/api/chats/{}/messages/search",
            ids: vec![message_chat()],
            auth: true,
            body: None,
            query: Some(
                (prop::option::of(search_text()), prop::option::of(query_number()))
                    .prop_map(|(q, limit)| {
                        let mut parts = Vec::new();
                        if let Some(q) = q {
                            parts.push(format!("q={}", encode_query(&q)));
                        }
                        if let Some(l) = limit {
                            parts.push(format!("limit={}", if l == "%00" { l } else { encode_query(&l) }));
                        }
                        parts.join("&")
                    })
                    .boxed(),
            ),
        },
        Route {
            name: "events",
            method: Method::GET,
            path: "/api/events",
            ids: vec![],
            auth: true,
            body: None,
            query: Some(prop_oneof![Just(String::new()), "[a-z=&%0-9]{0,20}"].boxed()),
        },
    ]
}

/// A request to `route`: its ids, query, credentials and (spoiled or not) JSON body, with the certain refusal.
fn route_probe(route: Route, fx: &Arc<Fixture>) -> BoxedStrategy<Probe> {
    let Route {
        name,
        method,
        path,
        ids,
        auth,
        body,
        query,
    } = route;
    let creds = if auth {
        credentials(fx)
    } else {
        Just(Credentials::Missing).boxed()
    };
    let body = match body {
        Some(fields) => (object(fields), spoil()).prop_map(Some).boxed(),
        None => Just(None).boxed(),
    };
    let query = query.unwrap_or_else(|| Just(String::new()).boxed());
    (ids, creds, body, query)
        .prop_map(move |(ids, creds, body, query)| {
            let mut path_text = path.to_owned();
            for id in &ids {
                path_text = path_text.replacen("{}", &id.text, 1);
            }
            if !query.is_empty() {
                path_text = format!("{path_text}?{query}");
            }
            let (content_type, payload, refusal) = match body {
                Some((object, spoiling)) => {
                    let how = spoiling.0;
                    let (content_type, payload, refusal) = spoiled(object, spoiling);
                    let refusal = body_refusal(how, &payload, refusal);
                    (content_type, payload, refusal)
                }
                None => (None, Payload::Bytes(Vec::new()), None),
            };
            let expect = if matches!(creds, Credentials::Refused(_) | Credentials::Missing) && auth {
                Expect::Exactly(401, "unauthorized")
            } else if ids.iter().any(|i| !i.parses) {
                Expect::Exactly(400, "invalid_path")
            } else if let Some(r) = refusal {
                r
            } else if query.contains("%00") && (name == "search" || name == "messages_list") {
                Expect::Exactly(400, "invalid_text")
            } else {
                Expect::Any
            };
            Probe {
                route: name,
                method: method.clone(),
                path: path_text,
                authorization: creds.header(),
                content_type,
                body: payload,
                expect,
            }
        })
        .boxed()
}

/// Whether JSON text holds the escape `\u0000` (an escaped backslash followed by `u0000` is text).
fn has_escaped_nul(json: &[u8]) -> bool {
    let mut i = 0;
    while i < json.len() {
        if json[i] == b'\\' {
            if json.get(i + 1..i + 6) == Some(b"u0000".as_slice()) {
                return true;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    false
}

/// One multipart part.
fn part(boundary: &str, name: &str, filename: Option<&str>, content_type: &str, data: &[u8]) -> Vec<u8> {
    let disposition = match filename {
        Some(f) => format!("form-data; name=\"{name}\"; filename=\"{f}\""),
        None => format!("form-data; name=\"{name}\""),
    };
    [
        format!("--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {content_type}\r\n\r\n")
            .as_bytes(),
        data,
        b"\r\n",
    ]
    .concat()
}

/// Uploads: valid ones with odd names and types, none, no or wrong boundary, truncated, garbage, oversize.
fn upload_probe(fx: &Arc<Fixture>) -> BoxedStrategy<Probe> {
    let names = prop::sample::select(vec![
        "a.txt",
        "../../etc/passwd",
        "..\\\\..\\\\boot.ini",
        "",
        "\u{202e}gpj.exe",
        "名前.txt",
        "a\tb",
        "%00.txt",
        "con",
    ]);
    let types = prop::sample::select(vec![
        "text/plain",
        "application/octet-stream",
        "",
        "x/y; a=b",
        "image/png\u{e9}",
    ]);
    let shape = prop_oneof![
        6 => Just("valid"),
        1 => Just("no_parts"),
        1 => Just("no_boundary"),
        1 => Just("wrong_boundary"),
        2 => Just("truncated"),
        1 => Just("garbage"),
        1 => Just("json"),
        1 => Just("oversize"),
        1 => Just("oversize_body"),
    ];
    (
        credentials(fx),
        shape,
        names,
        types,
        prop::collection::vec(any::<u8>(), 0..2048),
        1..4usize,
        any::<prop::sample::Index>(),
    )
        .prop_map(|(creds, shape, name, ct, data, parts, cut)| {
            let boundary = "hostileBoundary7MA4YWxk";
            let mut body: Vec<u8> = (0..parts)
                .flat_map(|i| part(boundary, &format!("f{i}"), Some(name), ct, &data))
                .collect();
            body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
            let multipart = format!("multipart/form-data; boundary={boundary}");
            let (content_type, payload, refusal) = match shape {
                "valid" => (multipart, Payload::Bytes(body), None),
                "no_parts" => (
                    multipart,
                    Payload::Bytes(format!("--{boundary}--\r\n").into_bytes()),
                    Some(Expect::Exactly(400, "no_files")),
                ),
                "no_boundary" => (
                    "multipart/form-data".into(),
                    Payload::Bytes(body),
                    Some(Expect::Exactly(400, "invalid_multipart")),
                ),
                "wrong_boundary" => ("multipart/form-data; boundary=other".into(), Payload::Bytes(body), None),
                "truncated" => {
                    let at = cut.index(body.len());
                    (multipart, Payload::Bytes(body[..at].to_vec()), None)
                }
                "garbage" => (multipart, Payload::Bytes(data), None),
                "json" => (
                    "application/json".into(),
                    Payload::Bytes(b"{\"file\":\"x\"}".to_vec()),
                    Some(Expect::Exactly(400, "invalid_multipart")),
                ),
                "oversize" => {
                    // One file over files.max_upload_bytes, within the body limit of uploads.
                    let big = part(
                        boundary,
                        "big",
                        Some("big.bin"),
                        "application/octet-stream",
                        &vec![b'x'; MAX_UPLOAD + 1],
                    );
                    let b = [big, format!("--{boundary}--\r\n").into_bytes()].concat();
                    (
                        multipart,
                        Payload::Bytes(b),
                        Some(Expect::Exactly(413, "payload_too_large")),
                    )
                }
                _ => {
                    // A body over the upload route's own limit.
                    (
                        multipart,
                        Payload::Filled {
                            byte: b'x',
                            len: MAX_UPLOAD + 128 * 1024,
                        },
                        Some(Expect::Exactly(413, "payload_too_large")),
                    )
                }
            };
            let expect = match (&creds, refusal) {
                (Credentials::Refused(_) | Credentials::Missing, _) => Expect::Exactly(401, "unauthorized"),
                (_, Some(r)) => r,
                _ => Expect::Any,
            };
            Probe {
                route: "upload",
                method: Method::POST,
                path: "/api/upload".into(),
                authorization: creds.header(),
                content_type: Some(content_type.into_bytes()),
                body: payload,
                expect,
            }
        })
        .boxed()
}

/// Downloads: the real file, other workspaces, malformed digests, traversal, hostile workspace ids.
fn download_probe(fx: &Arc<Fixture>) -> BoxedStrategy<Probe> {
    let sha = fx.sha256.clone();
    let shas = prop::sample::select(vec![
        sha.clone(),
        sha.to_uppercase(),
        sha[..63].to_owned(),
        format!("{sha}0"),
        "..%2F..%2Fetc%2Fpasswd".to_owned(),
        "%00".to_owned(),
        "g".repeat(64),
        "0".repeat(64),
        "x".repeat(5000),
    ]);
    let workspaces = id(vec![fx.a.workspace_id, fx.c.workspace_id]);
    (credentials(fx), workspaces, shas)
        .prop_map(|(creds, ws, sha)| {
            let expect = match &creds {
                Credentials::Refused(_) | Credentials::Missing => Expect::Exactly(401, "unauthorized"),
                _ if !ws.parses => Expect::Exactly(400, "invalid_path"),
                _ => Expect::Any,
            };
            Probe {
                route: "file_download",
                method: Method::GET,
                path: format!("/api/files/{}/{sha}", ws.text),
                authorization: creds.header(),
                content_type: None,
                body: Payload::Bytes(Vec::new()),
                expect,
            }
        })
        .boxed()
}

/// `/health`, `/ready`, `/metrics`, the OpenAPI document: 200 whatever the query or body.
fn operator_probe() -> BoxedStrategy<Probe> {
    let paths = prop::sample::select(vec!["/health", "/ready", "/metrics", "/api-docs/openapi.json"]);
    let query = prop_oneof![Just(String::new()), Just("?%00=%ff".to_owned()), "\\?[a-z=&0-9]{0,20}"];
    (paths, query)
        .prop_map(|(path, query)| Probe {
            route: "operator",
            method: Method::GET,
            path: format!("{path}{query}"),
            authorization: Some(b"Bearer nonsense".to_vec()),
            content_type: Some(b"application/json".to_vec()),
            body: Payload::Bytes(b"{\"x\":[[[".to_vec()),
            expect: Expect::Any,
        })
        .boxed()
}

/// Paths no route has, and routes with a method they do not take.
fn unrouted_probe(fx: &Arc<Fixture>) -> BoxedStrategy<Probe> {
    let a = bearer(&fx.a);
    let paths = prop::sample::select(vec![
        (Method::GET, "/"),
        (Method::GET, "/api"),
        (Method::GET, "/api/nope"),
        (Method::GET, "/api/chats/1/nope"),
        (Method::GET, "/api/files/1"),
        (Method::POST, "/api/users"),
        (Method::PUT, "/api/chats"),
        (Method::DELETE, "/api/chats"),
        (Method::PATCH, "/api/users/me"),
        (Method::GET, "/api/signin"),
        (Method::DELETE, "/api/upload"),
        (Method::POST, "/health"),
        (Method::GET, "/%2e%2e/%2e%2e/etc/passwd"),
        (Method::GET, "/api/%00"),
    ]);
    paths
        .prop_map(move |(method, path)| Probe {
            route: "unrouted",
            method,
            path: path.into(),
            authorization: Some(a.clone()),
            content_type: Some(b"application/json".to_vec()),
            body: Payload::Bytes(b"{}".to_vec()),
            expect: Expect::Unrouted,
        })
        .boxed()
}

/// Every route, weighted so that the ones that hash a password (sign-up, sign-in: about a second each in a debug
/// build) stay rare.
fn probe(fx: &Arc<Fixture>) -> impl Strategy<Value = Probe> + use<> {
    let mut weighted: Vec<(u32, BoxedStrategy<Probe>)> = routes(fx)
        .into_iter()
        .map(|r| {
            let weight = match r.name {
                "signup" => 1,
                "signin" => 1,
                "events" => 2,
                _ => 10,
            };
            (weight, route_probe(r, fx))
        })
        .collect();
    weighted.push((10, upload_probe(fx)));
    weighted.push((8, download_probe(fx)));
    weighted.push((3, operator_probe()));
    weighted.push((6, unrouted_probe(fx)));
    prop::strategy::Union::new_weighted(weighted)
}

/// `n` probes from a fixed seed.
fn generate(n: usize, fx: &Arc<Fixture>) -> Vec<Probe> {
    let config = ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let strategy = probe(fx);
    (0..n)
        .map(|_| strategy.new_tree(&mut runner).expect("generate").current())
        .collect()
}

// ---------------------------------------------------------------------------------------------------------------
// Sending and judging.

/// Sends `probe`; an `Err` is a dropped connection or a timeout. Event streams are not read past their headers.
async fn send(http: &reqwest::Client, port: u16, probe: &Probe) -> Result<Answer, String> {
    if probe.raw() {
        return send_raw(port, probe).await;
    }
    let mut request = http
        .request(probe.method.clone(), format!("http://127.0.0.1:{port}{}", probe.path))
        .body(probe.body.bytes());
    if let Some(ct) = &probe.content_type {
        request = request.header(CONTENT_TYPE, HeaderValue::from_bytes(ct).expect("valid header value"));
    }
    if let Some(auth) = &probe.authorization {
        request = request.header(
            AUTHORIZATION,
            HeaderValue::from_bytes(auth).expect("valid header value"),
        );
    }
    let response = request.send().await.map_err(|e| format!("send: {e:?}"))?;
    let status = response.status().as_u16();
    let streaming = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if streaming {
        return Ok(Answer {
            status,
            body: Vec::new(),
        });
    }
    let body = response.bytes().await.map_err(|e| format!("body: {e:?}"))?.to_vec();
    Ok(Answer { status, body })
}

/// Sends `probe` with a `Content-Length` over a raw socket, reading the answer while the body is being written.
async fn send_raw(port: u16, probe: &Probe) -> Result<Answer, String> {
    let body = probe.body.bytes();
    let method = probe.method.to_string();
    let mut headers: Vec<(&str, &[u8])> = Vec::new();
    for (name, value) in [
        ("Content-Type", &probe.content_type),
        ("Authorization", &probe.authorization),
    ] {
        if let Some(v) = value {
            headers.push((name, v));
        }
    }
    let request = RawRequest {
        method: &method,
        path: &probe.path,
        headers,
        body: &body,
        chunked: false,
    };
    raw_http::send(port, &request).await
}

fn judge(probe: &Probe, answer: &Answer) -> Result<(), String> {
    let status = answer.status;
    if status >= 500 {
        return Err(format!("5xx: {status}"));
    }
    if probe.expect == Expect::Unrouted {
        return if status == 404 || status == 405 {
            Ok(())
        } else {
            Err(format!("expected 404 or 405, got {status}"))
        };
    }
    if (400..500).contains(&status) && !is_error_body(&answer.body) {
        return Err(format!("{status} without a JSON error body"));
    }
    let code = serde_json::from_slice::<Value>(&answer.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_default();
    match probe.expect {
        Expect::Exactly(s, c) if (status, code.as_str()) != (s, c) => {
            Err(format!("expected {s} {c}, got {status} {code}"))
        }
        _ => Ok(()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_to_every_route_get_a_2xx_or_a_json_4xx() {
    let started = Instant::now();
    let max_upload = MAX_UPLOAD.to_string();
    let app = TestApp::start(&[("FECHATTER__FILES__MAX_UPLOAD_BYTES", max_upload.as_str())]).await;
    let fx = Arc::new(fixture(&app).await);
    let probes = generate(scaled(INPUTS), &fx);
    // Kept-alive connections, as real clients use them: an answer given before the body was read must leave the
    // client able to go on (`an_early_refusal_leaves_the_connection_usable`).
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let rss_before = rss_mib();
    let run_started = Instant::now();
    let port = app.port;
    let answers = send_all(&probes, CONCURRENCY, |probe| send(&http, port, probe)).await;
    let run_time = run_started.elapsed();

    let mut per_route: BTreeMap<&'static str, [usize; 4]> = BTreeMap::new();
    let mut classes: BTreeMap<u16, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut unrouted_without_json = 0;
    for (i, answer) in answers {
        let probe = &probes[i];
        let counts = per_route.entry(probe.route).or_default();
        counts[0] += 1;
        match answer {
            Err(dropped) => failures.push(format!("dropped: {dropped}: {}", probe.describe())),
            Ok(answer) => {
                *classes.entry(answer.status / 100).or_default() += 1;
                match answer.status / 100 {
                    2 | 3 => counts[1] += 1,
                    4 => counts[2] += 1,
                    _ => counts[3] += 1,
                }
                if probe.expect == Expect::Unrouted && !is_error_body(&answer.body) {
                    unrouted_without_json += 1;
                }
                if let Err(why) = judge(probe, &answer) {
                    failures.push(format!(
                        "{why}: {} -> {} {}",
                        probe.describe(),
                        answer.status,
                        answer.excerpt()
                    ));
                }
            }
        }
    }

    // Still serving: health, and a normal request of the signed-up user.
    let (status, _) = app.send(app.http.get(app.url("/health"))).await;
    assert_eq!(status, 200);
    let (status, body) = app.get("/api/users/me", &fx.a).await;
    assert_eq!(status, 200, "{body}");
    let rss_after = rss_mib();

    let class = |c: u16| classes.get(&c).copied().unwrap_or(0);
    // Per route: inputs(2xx or 3xx / 4xx / 5xx).
    let routes: Vec<String> = per_route
        .iter()
        .map(|(route, [n, ok, refused, errors])| format!("{route}={n}({ok}/{refused}/{errors})"))
        .collect();
    let inputs = probes.len();
    println!(
        "FIGURES hostile_input_chat: inputs={inputs} {} 2xx={} 3xx={} 4xx={} 5xx={} dropped={} \
         rss_mib_before={rss_before} after={rss_after} run_s={:.1} total_s={:.1}",
        routes.join(" "),
        class(2),
        class(3),
        class(4),
        class(5),
        inputs - classes.values().sum::<usize>(),
        run_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "FIGURES hostile_input_chat unrouted answers without a JSON body: {unrouted_without_json} of {}",
        per_route.get("unrouted").map_or(0, |c| c[0])
    );
    assert!(
        failures.is_empty(),
        "{} of {inputs} answers broke the contract; first ones:\n{}",
        failures.len(),
        failures.iter().take(25).cloned().collect::<Vec<_>>().join("\n")
    );
    assert_eq!(class(5), 0);
}

/// An unknown path (404) and a known path with another method (405) answer the API's `{"error": …, "message": …}`
/// that README promises for every error (the routers' fallbacks). Found by this suite: both used to be empty.
#[tokio::test]
async fn unknown_paths_and_methods_answer_a_json_error() {
    let app = TestApp::start(&[]).await;
    for (method, path, status) in [
        (Method::GET, "/api/nope", 404),
        (Method::GET, "/api/chats/1/nope", 404),
        (Method::PUT, "/api/chats", 405),
        (Method::POST, "/health", 405),
    ] {
        let (got, body) = app.send(app.http.request(method.clone(), app.url(path))).await;
        assert_eq!(got.as_u16(), status, "{method} {path}");
        assert!(
            body["error"].is_string() && body["message"].is_string(),
            "{method} {path}: {status} with body {body}"
        );
    }
}

/// A request refused before its body is read (401 from `AuthUser`, 400 `invalid_path` from `ApiPath`) with a body
/// larger than hyper drains at once (~50 KB and up) leaves the client able to send its next request: the answer
/// says `Connection: close`. Found by this suite: hyper closed the kept-alive connection without saying so, and
/// the client's next request on it failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_refusal_leaves_the_connection_usable() {
    let app = TestApp::start(&[]).await;
    let user = app.direct_user("Early", None).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .expect("client");
    let body = format!("{{\"name\":\"{}\"}}", "y".repeat(100_000));
    let mut failures = Vec::new();
    for (path, token) in [("/api/chats/abc", Some(&user.access_token)), ("/api/chats/1", None)] {
        for round in 0..20 {
            let mut refused = http
                .patch(app.url(path))
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
            if let Some(token) = token {
                refused = refused.bearer_auth(token);
            }
            let status = refused.send().await.map(|r| r.status().as_u16());
            let next = http.get(app.url("/health")).send().await.map(|r| r.status().as_u16());
            if !matches!((&status, &next), (Ok(400 | 401), Ok(200))) {
                failures.push(format!("PATCH {path} #{round}: {status:?}, then GET /health: {next:?}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 40 failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
