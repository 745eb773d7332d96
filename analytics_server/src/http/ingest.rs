//! `POST /api/event` and `POST /api/batch`: events from client apps, in protobuf or proto3 JSON.
//!
//! The server stamps `server_ts`, `ip` and `user_agent`, gives events without one an `event_id` (UUIDv7),
//! publishes to JetStream with `Nats-Msg-Id` and answers 202 only once JetStream acknowledged: a 202 means the
//! event is durable and will reach ClickHouse. A client retrying a request whose answer it lost sends the same
//! ids again and is deduplicated, by JetStream within its window and by ClickHouse after it.

use super::{ApiError, AppState, MAX_INGEST_IN_FLIGHT};
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use axum::{Json, Router};
use bytes::{Bytes, BytesMut};
use fechatter_protos::v1::{AnalyticsEvent, BatchRecordEventsRequest};
use futures::StreamExt as _;
use prost::Message as _;
use serde_json::{Value, json};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::OwnedSemaphorePermit;
use uuid::Uuid;

/// Most bytes of an oversize body read and dropped before its 413 is answered.
const DRAIN_BYTES: usize = 64 << 20;
/// Longest time spent reading and dropping an oversize body.
const DRAIN_TIME: Duration = Duration::from_secs(10);
/// Bytes reserved for the NATS headers of a published message (`NATS/1.0`, `Nats-Msg-Id: <uuid>`, framing).
const HEADERS_ALLOWANCE: usize = 128;
/// Longest time a request's body may take to arrive (a body of `server.max_body_bytes` takes a fraction of a
/// second on any working link): a client sending slowly holds its place among [`MAX_INGEST_IN_FLIGHT`].
const BODY_TIME: Duration = Duration::from_secs(30);
/// How long a request waits for JetStream's acknowledgement before answering 503.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// Namespace of the message ids of batch messages (derived from their events' ids).
const BATCH_ID_NAMESPACE: Uuid = Uuid::from_u128(0x0b5e_77a1_2c4d_4e8f_9a10_3b2c_1d0e_f9a8);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/event", post(record_event))
        .route("/api/batch", post(record_batch))
}

/// Body encodings the API accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

/// Reads the encoding from the `Content-Type` header (parameters such as `charset` are ignored).
pub fn encoding(headers: &HeaderMap) -> Result<Encoding, ApiError> {
    let unsupported = |what: &str| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_content_type",
            format!(
                "{what}; use application/protobuf, application/x-protobuf, application/octet-stream or application/json"
            ),
        )
    };
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(unsupported("missing Content-Type"));
    };
    let mime = value
        .to_str()
        .map_err(|_| unsupported("Content-Type is not ASCII"))?
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/protobuf" | "application/x-protobuf" | "application/octet-stream" => Ok(Encoding::Protobuf),
        "application/json" => Ok(Encoding::Json),
        other => Err(unsupported(&format!("Content-Type {other} is not supported"))),
    }
}

/// Decodes a body holding a `T` in `encoding`.
pub fn decode_body<T>(encoding: Encoding, body: &[u8]) -> Result<T, ApiError>
where
    T: prost::Message + Default + serde::de::DeserializeOwned,
{
    match encoding {
        Encoding::Protobuf => T::decode(body)
            .map_err(|e| ApiError::bad_request("invalid_protobuf", format!("body is not valid protobuf: {e}"))),
        Encoding::Json => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request("invalid_json", format!("body is not a valid proto3 JSON event: {e}"))),
    }
}

/// Checks one event and fills in what the server owns. `index` names the event in a batch.
pub fn prepare(
    event: &mut AnalyticsEvent,
    index: Option<usize>,
    now_ms: i64,
    ip: &str,
    user_agent: Option<&str>,
) -> Result<(), ApiError> {
    let which = index.map(|i| format!("events[{i}]: ")).unwrap_or_default();
    if event.event_type.is_none() {
        return Err(ApiError::bad_request(
            "missing_event_type",
            format!("{which}no event type is set (one of appStart, userLogin, messageSent, …)"),
        ));
    }
    let ctx = event.context.get_or_insert_with(Default::default);
    if ctx.event_id.is_empty() {
        ctx.event_id = Uuid::now_v7().to_string();
    } else {
        let Ok(id) = Uuid::parse_str(&ctx.event_id) else {
            return Err(ApiError::bad_request(
                "invalid_event_id",
                format!("{which}context.eventId {:?} is not a UUID", truncate(&ctx.event_id, 64)),
            ));
        };
        // One spelling per id (lower case, hyphenated), whatever the client sent: the id is JetStream's dedup
        // key and ClickHouse's, so "ABC…" and "abc…", or a braced or `urn:uuid:` form, would be two events.
        ctx.event_id = id.hyphenated().to_string();
    }
    ctx.server_ts = now_ms;
    ctx.ip = ip.to_owned();
    if let Some(ua) = user_agent {
        ctx.user_agent = ua.to_owned();
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Now, in epoch milliseconds (the unit of `server_ts`); also stamps the operator probe (`cli::probe`).
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Reads the body up to the configured limit; larger bodies get 413.
async fn read_body(state: &AppState, body: Body) -> Result<Bytes, ApiError> {
    let limit = state.settings.server.max_body_bytes;
    let mut stream = body.into_data_stream();
    let mut buffer = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request("invalid_body", format!("request body unreadable: {e}")))?;
        if buffer.len() + chunk.len() > limit {
            // Read (and drop) the rest, within bounds, before answering: a client still writing a large body
            // when the connection closes sees a broken pipe instead of its 413.
            let mut seen = buffer.len() + chunk.len();
            let _ = tokio::time::timeout(DRAIN_TIME, async {
                while seen <= DRAIN_BYTES {
                    match stream.next().await {
                        Some(Ok(more)) => seen += more.len(),
                        _ => break,
                    }
                }
            })
            .await;
            state.metrics.reject("payload_too_large");
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body exceeds {limit} bytes (server.max_body_bytes)"),
            ));
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(buffer.freeze())
}

/// Request facts the server stamps on events.
struct Caller {
    ip: String,
    user_agent: Option<String>,
}

fn caller(client: IpAddr, headers: &HeaderMap) -> Caller {
    Caller {
        ip: client.to_string(),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| truncate(s, 512).to_owned()),
    }
}

/// Publishes `payload` to `subject` with `msg_id` and waits for JetStream's acknowledgement.
async fn publish(state: &AppState, subject: String, msg_id: &str, payload: Bytes) -> Result<(), ApiError> {
    let unavailable = |why: String| {
        state.metrics.reject("unavailable");
        tracing::error!(%why, "HTTP ingest could not publish");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the event bus is unavailable; retry later with the same event ids (event_ids): the events may still be \
             stored, and a retry with their ids is deduplicated",
        )
    };
    // The stamped message, with its headers, must fit both our own limit and the NATS server's max_payload
    // (which counts headers too); otherwise the publish fails for good, which is the client's 413, not a 503.
    let server_limit = state
        .nats
        .as_ref()
        .map_or(usize::MAX, |n| n.server_info().max_payload.max(1));
    let limit = state.settings.jetstream.max_message_bytes.min(server_limit);
    let size = payload.len() + HEADERS_ALLOWANCE;
    if size > limit {
        state.metrics.reject("payload_too_large");
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the stamped message would be {size} bytes with its headers; the limit is {limit} bytes \
                 (jetstream.max_message_bytes and the NATS server's max_payload); send fewer or smaller events"
            ),
        ));
    }
    match (&state.jetstream, &state.nats) {
        (Some(js), _) => {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
            let sent = tokio::time::timeout(PUBLISH_TIMEOUT, async {
                js.publish_with_headers(subject, headers, payload).await?.await?;
                Ok::<_, async_nats::Error>(())
            })
            .await;
            match sent {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(unavailable(e.to_string())),
                Err(_) => Err(unavailable("timed out waiting for the JetStream ack".into())),
            }
        }
        // jetstream_enabled: false — core NATS, at most once, as documented.
        (None, Some(nats)) => {
            nats.publish(subject, payload)
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            // Bounded like the JetStream path: with NATS down, a flush waits for the reconnection.
            match tokio::time::timeout(PUBLISH_TIMEOUT, nats.flush()).await {
                Ok(flushed) => flushed.map_err(|e| unavailable(e.to_string())),
                Err(_) => Err(unavailable("timed out handing the event to NATS".into())),
            }
        }
        (None, None) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "messaging_disabled",
            "integrations.messaging.enabled is false: this server accepts no events",
        )),
    }
}

fn accepted(ids: Vec<String>) -> (StatusCode, Json<Value>) {
    (
        StatusCode::ACCEPTED,
        Json(json!({ "accepted": ids.len(), "event_ids": ids })),
    )
}

/// What both ingest routes start from: the body, its encoding and who sent it. Extracting it here keeps the
/// content-type check, the body limit and the caller's facts in one place.
struct IngestRequest {
    encoding: Encoding,
    body: Bytes,
    caller: Caller,
    /// This request's place among those under way, held until it is answered.
    _in_flight: OwnedSemaphorePermit,
}

impl FromRequest<AppState> for IngestRequest {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        let refused = |err: ApiError| {
            state.metrics.reject(err.code);
            err
        };
        let encoding = encoding(&parts.headers).map_err(refused)?;
        let addr = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| *addr)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        // Before the body is read: a flooding client costs no more than this check. Keyed on the client address:
        // the peer's, which a client cannot forge the way it can a forwarded-for header, or, behind the operator's
        // trusted reverse proxies, the one they forwarded.
        let client = state.settings.server.trusted_proxies.client(addr.ip(), &parts.headers);
        if !state.ingest_limiter.check(client) {
            return Err(refused(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "more than {} requests per minute from {} (server.ingest_rate_limit_per_minute)",
                    state.settings.server.ingest_rate_limit_per_minute, client
                ),
            )));
        }
        let in_flight = state.ingest_in_flight.clone().try_acquire_owned().map_err(|_| {
            refused(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                format!("{MAX_INGEST_IN_FLIGHT} requests are under way on this server; retry later"),
            ))
        })?;
        let body = tokio::time::timeout(BODY_TIME, read_body(state, body))
            .await
            .map_err(|_| {
                refused(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!("the request body did not arrive within {} s", BODY_TIME.as_secs()),
                ))
            })??;
        Ok(Self {
            encoding,
            body,
            caller: caller(client, &parts.headers),
            _in_flight: in_flight,
        })
    }
}

async fn record_event(
    State(state): State<AppState>,
    request: IngestRequest,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let result = async {
        let mut event: AnalyticsEvent = decode_body(request.encoding, &request.body)?;
        let who = &request.caller;
        prepare(&mut event, None, now_ms(), &who.ip, who.user_agent.as_deref())?;
        let subject = event.subject().unwrap_or_default();
        let consumed = &state.settings.integrations.messaging.subjects.analytics_events;
        if !crate::config::subject_matches(consumed, &subject) {
            // The stream would refuse it, for good: the configuration's fault, not the client's, and not one a
            // retry outlives (a 503 "retry later" would send the client round in circles).
            state.metrics.reject("not_consumed");
            tracing::error!(subject, analytics_events = %consumed, "HTTP event on a subject this ingester does not consume");
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "not_consumed",
                format!(
                    "events of this type go to {subject}, which this ingester does not consume \
                     (integrations.messaging.subjects.analytics_events is {consumed}): its operator must fix the \
                     configuration; retrying does not help until then"
                ),
            ));
        }
        let ids = vec![event.event_id().to_owned()];
        publish(&state, subject, &ids[0], Bytes::from(event.encode_to_vec()))
            .await
            .map_err(|err| retry_with_ids(err, &ids))?;
        Ok(ids)
    }
    .await;
    finish(&state, result)
}

async fn record_batch(
    State(state): State<AppState>,
    request: IngestRequest,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let result = async {
        let mut batch: BatchRecordEventsRequest = decode_body(request.encoding, &request.body)?;
        let max = state.settings.server.max_batch_events;
        if batch.events.is_empty() {
            return Err(ApiError::bad_request("empty_batch", "events is empty"));
        }
        if batch.events.len() > max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_events",
                format!(
                    "{} events exceed the limit of {max} (server.max_batch_events)",
                    batch.events.len()
                ),
            ));
        }
        let who = &request.caller;
        let now = now_ms();
        for (i, event) in batch.events.iter_mut().enumerate() {
            prepare(event, Some(i), now, &who.ip, who.user_agent.as_deref())?;
        }
        let ids: Vec<String> = batch.events.iter().map(|e| e.event_id().to_owned()).collect();
        refuse_repeated_ids(&ids)?;
        let msg_id = Uuid::new_v5(&BATCH_ID_NAMESPACE, ids.join(",").as_bytes()).to_string();
        let subject = state.settings.integrations.messaging.subjects.analytics_batch.clone();
        publish(&state, subject, &msg_id, Bytes::from(batch.encode_to_vec()))
            .await
            .map_err(|err| retry_with_ids(err, &ids))?;
        Ok(ids)
    }
    .await;
    finish(&state, result)
}

/// A failed publish, answered with the events' ids when it was not refused for good (a 503: the publish may
/// yet reach JetStream). A client that gave no ids would otherwise retry with new ones, which no deduplication
/// recognises as the same events.
fn retry_with_ids(err: ApiError, ids: &[String]) -> ApiError {
    if err.status.is_server_error() {
        err.retry_with(ids)
    } else {
        err
    }
}

/// 400 when two events of a batch carry the same id: the second would be taken for a copy of the first and
/// dropped, while the answer counted it as accepted.
fn refuse_repeated_ids(ids: &[String]) -> Result<(), ApiError> {
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    match ids.iter().position(|id| !seen.insert(id.as_str())) {
        None => Ok(()),
        Some(i) => Err(ApiError::bad_request(
            "duplicate_event_id",
            format!("events[{i}].context.eventId {} repeats an earlier event's id", ids[i]),
        )),
    }
}

fn finish(state: &AppState, result: Result<Vec<String>, ApiError>) -> Result<(StatusCode, Json<Value>), ApiError> {
    match result {
        Ok(ids) => {
            state.metrics.http_events_accepted.inc_by(ids.len() as u64);
            Ok(accepted(ids))
        }
        Err(err) => {
            if err.status.is_client_error() {
                state.metrics.reject(err.code);
            }
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use fechatter_protos::sample_events;

    fn with_type(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).expect("ascii"));
        h
    }

    #[test]
    fn every_documented_content_type_is_accepted() {
        for ct in [
            "application/protobuf",
            "application/x-protobuf",
            "application/octet-stream",
        ] {
            assert_eq!(encoding(&with_type(ct)).expect("ok"), Encoding::Protobuf);
        }
        assert_eq!(
            encoding(&with_type("application/json; charset=utf-8")).expect("ok"),
            Encoding::Json
        );
    }

    #[test]
    fn other_or_missing_content_types_get_415() {
        assert_eq!(
            encoding(&with_type("text/plain")).expect_err("no").status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(
            encoding(&HeaderMap::new()).expect_err("no").status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }

    #[test]
    fn an_event_id_is_kept_in_one_spelling() {
        let canonical = "0192f3c4-5a6b-7c8d-9e0f-a1b2c3d4e5f6";
        for spelling in [
            canonical.to_uppercase(),
            canonical.replace('-', ""),
            format!("{{{canonical}}}"),
            format!("urn:uuid:{canonical}"),
        ] {
            let mut event = sample_events().remove(2);
            if let Some(ctx) = event.context.as_mut() {
                ctx.event_id = spelling.clone();
            }
            prepare(&mut event, None, 42, "10.0.0.1", None).expect("valid");
            assert_eq!(event.event_id(), canonical, "{spelling}");
        }
    }

    #[test]
    fn the_server_stamps_time_ip_agent_and_a_missing_id() {
        let mut event = sample_events().remove(2);
        if let Some(ctx) = event.context.as_mut() {
            ctx.event_id.clear();
        }
        prepare(&mut event, None, 42, "10.0.0.1", Some("curl/8")).expect("valid");
        let ctx = event.context.expect("context");
        assert_eq!(
            (ctx.server_ts, ctx.ip.as_str(), ctx.user_agent.as_str()),
            (42, "10.0.0.1", "curl/8")
        );
        assert_eq!(Uuid::parse_str(&ctx.event_id).expect("uuid").get_version_num(), 7);
    }

    #[test]
    fn a_client_event_id_is_kept_and_must_be_a_uuid() {
        let mut event = sample_events().remove(0);
        let id = event.event_id().to_owned();
        prepare(&mut event, None, 1, "ip", None).expect("valid");
        assert_eq!(event.event_id(), id);
        if let Some(ctx) = event.context.as_mut() {
            ctx.event_id = "not-a-uuid".into();
        }
        let err = prepare(&mut event, Some(3), 1, "ip", None).expect_err("bad id");
        assert_eq!(err.code, "invalid_event_id");
        assert!(err.message.starts_with("events[3]"), "{}", err.message);
    }

    #[test]
    fn a_batch_repeating_an_event_id_is_refused_naming_the_event() {
        let ids: Vec<String> = ["a", "b", "a"].map(String::from).to_vec();
        let err = refuse_repeated_ids(&ids).expect_err("repeated");
        assert_eq!((err.status, err.code), (StatusCode::BAD_REQUEST, "duplicate_event_id"));
        assert!(err.message.starts_with("events[2]"), "{}", err.message);
        refuse_repeated_ids(&ids[..2]).expect("distinct ids");
    }

    #[test]
    fn only_a_failure_that_may_yet_store_the_events_answers_their_ids() {
        let ids = vec!["id-1".to_owned()];
        let unavailable = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "down");
        assert_eq!(retry_with_ids(unavailable, &ids).event_ids, ids);
        let too_large = ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "big");
        assert!(retry_with_ids(too_large, &ids).event_ids.is_empty());
    }

    #[test]
    fn an_event_without_a_type_is_refused() {
        let mut event = AnalyticsEvent::default();
        assert_eq!(
            prepare(&mut event, None, 1, "ip", None).expect_err("no type").code,
            "missing_event_type"
        );
    }

    #[test]
    fn bodies_decode_in_both_encodings_and_garbage_is_named() {
        let event = sample_events().remove(5);
        let pb: AnalyticsEvent = decode_body(Encoding::Protobuf, &event.encode_to_vec()).expect("pb");
        assert_eq!(pb, event);
        let js: AnalyticsEvent = decode_body(Encoding::Json, &serde_json::to_vec(&event).expect("json")).expect("json");
        assert_eq!(js, event);
        let err = decode_body::<AnalyticsEvent>(Encoding::Json, b"{\"userLogin\": 5}").expect_err("bad");
        assert_eq!(err.code, "invalid_json");
        let err = decode_body::<AnalyticsEvent>(Encoding::Protobuf, &[0xff; 4]).expect_err("bad");
        assert_eq!(err.code, "invalid_protobuf");
    }
}
