//! The HTTP API on real servers: health, readiness, metrics, and ingest in protobuf and JSON with its refusals.

mod common;

use common::{Stack, events};
use fechatter_protos::v1::BatchRecordEventsRequest;
use prost::Message as _;
use reqwest::header::CONTENT_TYPE;
use serde_json::Value;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

async fn post(url: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .header(CONTENT_TYPE, content_type)
        .header("User-Agent", "fechatter-test/1.0")
        .body(body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.expect("every answer is JSON");
    (status, body)
}

#[tokio::test]
async fn health_ready_and_metrics_answer() {
    let stack = Stack::start().await;
    let app = stack.run_in_process(&[]).await;
    let health = reqwest::get(app.url("/health")).await.expect("health");
    assert_eq!(health.status(), 200);
    let ready = reqwest::get(app.url("/ready")).await.expect("ready");
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.expect("json");
    assert_eq!(body["status"], "ready");
    for check in ["nats", "stream", "clickhouse"] {
        assert_eq!(body["checks"][check]["ok"], true, "{body}");
    }
    let metrics = reqwest::get(app.url("/metrics")).await.expect("metrics");
    assert!(
        metrics.headers()[CONTENT_TYPE]
            .to_str()
            .expect("ascii")
            .starts_with("text/plain")
    );
    let text = metrics.text().await.expect("text");
    for name in [
        "analytics_events_received_total",
        "analytics_events_inserted_total",
        "analytics_events_dead_lettered_total",
        "analytics_batch_rows_bucket",
        "analytics_insert_duration_seconds_bucket",
        "analytics_end_to_end_latency_seconds_bucket",
        "analytics_consumer_pending",
    ] {
        assert!(text.contains(name), "{name} missing from {text}");
    }
    app.stop().await;
}

#[tokio::test]
async fn events_are_ingested_in_protobuf_and_json_and_stamped_by_the_server() {
    let stack = Stack::start().await;
    let app = stack.run_in_process(&[]).await;
    let sample = events(4);

    let (status, body) = post(
        &app.url("/api/event"),
        "application/x-protobuf",
        sample[0].encode_to_vec(),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["event_ids"][0], sample[0].event_id());
    let (status, _) = post(
        &app.url("/api/event"),
        "application/protobuf",
        sample[1].encode_to_vec(),
    )
    .await;
    assert_eq!(status, 202);
    let json = serde_json::to_vec(&sample[2]).expect("json");
    let (status, _) = post(&app.url("/api/event"), "application/json; charset=utf-8", json).await;
    assert_eq!(status, 202);
    // An event without an id gets one from the server.
    let mut anonymous = sample[3].clone();
    if let Some(ctx) = anonymous.context.as_mut() {
        ctx.event_id.clear();
    }
    let (status, body) = post(
        &app.url("/api/event"),
        "application/octet-stream",
        anonymous.encode_to_vec(),
    )
    .await;
    assert_eq!(status, 202);
    let assigned = body["event_ids"][0].as_str().expect("id").to_owned();

    let batch = BatchRecordEventsRequest { events: events(20) };
    let (status, body) = post(&app.url("/api/batch"), "application/protobuf", batch.encode_to_vec()).await;
    assert_eq!((status, body["accepted"].as_u64()), (202, Some(20)));
    let json_batch = BatchRecordEventsRequest { events: events(5) };
    let (status, _) = post(
        &app.url("/api/batch"),
        "application/json",
        serde_json::to_vec(&json_batch).expect("json"),
    )
    .await;
    assert_eq!(status, 202);

    stack.wait_for_rows(29, WAIT).await;
    let rows = stack.rows().await;
    assert!(rows.iter().any(|r| r.event_id == assigned));
    for row in &rows {
        assert_eq!(row.ip, "127.0.0.1");
        assert_eq!(row.user_agent, "fechatter-test/1.0");
        assert!(row.server_ts > 1_700_000_000_000);
    }
    // A client retrying the same request does not create a second row.
    let (status, _) = post(
        &app.url("/api/event"),
        "application/protobuf",
        sample[0].encode_to_vec(),
    )
    .await;
    assert_eq!(status, 202);
    stack.wait_consumer_idle(WAIT).await;
    assert_eq!(stack.count_final().await, 29);
    app.stop().await;
}

#[tokio::test]
async fn bad_requests_get_a_4xx_naming_the_problem() {
    let stack = Stack::start().await;
    let app = stack
        .run_in_process(&[
            ("ANALYTICS__SERVER__MAX_BODY_BYTES", "2048"),
            ("ANALYTICS__SERVER__MAX_BATCH_EVENTS", "10"),
        ])
        .await;
    let event = events(1).remove(0);
    let url = app.url("/api/event");
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "wrong content type",
            "text/plain",
            event.encode_to_vec(),
            415,
            "unsupported_content_type",
        ),
        (
            "garbage protobuf",
            "application/protobuf",
            vec![0xff, 0xff, 0xff],
            400,
            "invalid_protobuf",
        ),
        (
            "truncated protobuf",
            "application/protobuf",
            event.encode_to_vec()[..20].to_vec(),
            400,
            "invalid_protobuf",
        ),
        (
            "not JSON",
            "application/json",
            b"{not json".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "invalid UTF-8 JSON",
            "application/json",
            vec![b'"', 0xc3, 0x28, b'"'],
            400,
            "invalid_json",
        ),
        (
            "wrong JSON field type",
            "application/json",
            br#"{"userLogin": 7}"#.to_vec(),
            400,
            "invalid_json",
        ),
        (
            "no event type",
            "application/json",
            br#"{"context": {"userId": "1"}}"#.to_vec(),
            400,
            "missing_event_type",
        ),
        (
            "bad event id",
            "application/json",
            br#"{"context": {"eventId": "nope"}, "appStart": {}}"#.to_vec(),
            400,
            "invalid_event_id",
        ),
        (
            "oversize body",
            "application/protobuf",
            vec![0u8; 4096],
            413,
            "payload_too_large",
        ),
    ];
    for (what, content_type, body, status, code) in cases {
        let (got, body) = post(&url, content_type, body).await;
        assert_eq!(got, status, "{what}: {body}");
        assert_eq!(body["error"], code, "{what}: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {body}"
        );
    }
    let too_many = BatchRecordEventsRequest {
        events: events(11)
            .into_iter()
            .map(|mut e| {
                e.context = None;
                e
            })
            .collect(),
    };
    let (status, body) = post(&app.url("/api/batch"), "application/protobuf", too_many.encode_to_vec()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("too_many_events")),
        "{body}"
    );
    let (status, body) = post(&app.url("/api/batch"), "application/json", b"{}".to_vec()).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("empty_batch")), "{body}");

    let metrics = reqwest::get(app.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("analytics_http_rejected_total{reason=\"invalid_protobuf\"}"),
        "{metrics}"
    );
    stack.wait_consumer_idle(WAIT).await;
    assert_eq!(stack.count_final().await, 0, "nothing refused was stored");
    app.stop().await;
}

#[tokio::test]
async fn a_client_over_the_ingest_rate_limit_gets_429_before_its_body_is_read() {
    let stack = Stack::start().await;
    let app = stack
        .run_in_process(&[("ANALYTICS__SERVER__INGEST_RATE_LIMIT_PER_MINUTE", "3")])
        .await;
    let body = events(1)[0].encode_to_vec();
    for _ in 0..3 {
        let (status, body) = post(&app.url("/api/event"), "application/x-protobuf", body.clone()).await;
        assert_eq!(status, 202, "{body}");
    }
    let (status, answer) = post(&app.url("/api/event"), "application/x-protobuf", body).await;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(answer["error"], "rate_limited");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("server.ingest_rate_limit_per_minute")),
        "{answer}"
    );
    // A batch counts once, and the refusal comes before the body is even looked at.
    let (status, _) = post(
        &app.url("/api/batch"),
        "application/x-protobuf",
        b"not protobuf".to_vec(),
    )
    .await;
    assert_eq!(status, 429);
    app.stop().await;
}

/// POSTs one protobuf event through a reverse proxy that forwarded `x_forwarded_for`.
async fn post_forwarded(url: &str, event: Vec<u8>, x_forwarded_for: &str) -> u16 {
    let response = reqwest::Client::new()
        .post(url)
        .header(CONTENT_TYPE, "application/x-protobuf")
        .header("x-forwarded-for", x_forwarded_for)
        .body(event)
        .send()
        .await
        .expect("request");
    response.status().as_u16()
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_limited_and_stamped() {
    let stack = Stack::start().await;
    let app = stack
        .run_in_process(&[
            ("ANALYTICS__SERVER__INGEST_RATE_LIMIT_PER_MINUTE", "2"),
            ("ANALYTICS__SERVER__TRUSTED_PROXIES", "127.0.0.1"),
        ])
        .await;
    let sample = events(4);
    let url = app.url("/api/event");

    let first_client = [
        post_forwarded(&url, sample[0].encode_to_vec(), "203.0.113.7").await,
        // The client's own entry comes before the one its proxy appended, and is never read.
        post_forwarded(&url, sample[1].encode_to_vec(), "198.51.100.1, 203.0.113.7").await,
        post_forwarded(&url, sample[2].encode_to_vec(), "198.51.100.2, 203.0.113.7").await,
    ];
    let second_client = post_forwarded(&url, sample[3].encode_to_vec(), "203.0.113.8").await;

    assert_eq!(first_client, [202, 202, 429]);
    assert_eq!(second_client, 202, "another client behind the same proxy");
    stack.wait_for_rows(3, WAIT).await;
    let mut ips: Vec<String> = stack.rows().await.into_iter().map(|row| row.ip).collect();
    ips.sort();
    assert_eq!(ips, ["203.0.113.7", "203.0.113.7", "203.0.113.8"]);
    app.stop().await;
}

#[tokio::test]
async fn core_nats_mode_answers_503_when_nats_is_down() {
    let mut stack = Stack::start().await;
    let app = stack
        .run_in_process(&[("ANALYTICS__INTEGRATIONS__MESSAGING__JETSTREAM_ENABLED", "false")])
        .await;
    stack.nats.stop().await;
    // Not 202 (the event never reached NATS), and not a request hanging until NATS comes back.
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(15),
        post(
            &app.url("/api/event"),
            "application/x-protobuf",
            events(1)[0].encode_to_vec(),
        ),
    )
    .await
    .expect("answered within 15 s with NATS down");
    assert_eq!(status, 503, "{body}");
    app.stop().await;
}

#[tokio::test]
async fn a_publish_that_times_out_answers_the_ids_to_retry_with_and_the_retry_is_stored_once() {
    let mut stack = Stack::start().await;
    let app = stack.run_in_process(&[]).await;
    let mut event = events(1).remove(0);
    let context = event.context.as_mut().expect("context");
    context.event_id.clear();
    stack.nats.stop().await;

    // The publish waits in the client for NATS to come back, and may reach JetStream after the 503.
    let (status, body) = post(&app.url("/api/event"), "application/x-protobuf", event.encode_to_vec()).await;
    assert_eq!(status, 503, "{body}");
    let id = body["event_ids"][0].as_str().expect("the id to retry with").to_owned();
    stack.nats.restart().await.expect("NATS restarts");
    event.context.as_mut().expect("context").event_id = id.clone();
    let mut retried = None;
    for _ in 0..30 {
        let (status, body) = post(&app.url("/api/event"), "application/x-protobuf", event.encode_to_vec()).await;
        if status == 202 {
            retried = Some(body);
            break;
        }
        // The service reconnects to NATS within a few seconds.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    let retried = retried.expect("the retry is accepted once NATS is back");
    assert_eq!(retried["event_ids"][0], id.as_str());
    stack.wait_for_rows(1, WAIT).await;
    stack.wait_consumer_idle(WAIT).await;
    assert_eq!(
        stack.count_final().await,
        1,
        "the late publish and the retry are one event"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_body_that_never_arrives_is_answered_408() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let stack = Stack::start().await;
    let app = stack.run_in_process(&[]).await;
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connect");
    // 100 bytes announced, 3 sent, and the client goes quiet: it holds a place among the requests under way.
    let head =
        "POST /api/event HTTP/1.1\r\nHost: test\r\nContent-Type: application/x-protobuf\r\nContent-Length: 100\r\n\r\n";
    socket.write_all(head.as_bytes()).await.expect("head");
    socket.write_all(b"abc").await.expect("part of the body");

    let mut raw = Vec::new();
    let answer = tokio::time::timeout(Duration::from_secs(45), async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = socket.read(&mut chunk).await.expect("read");
            raw.extend_from_slice(&chunk[..n]);
            if let Ok(answer) = test_support::raw_http::parse_response(&raw)
                && serde_json::from_slice::<Value>(&answer.body).is_ok()
            {
                return answer;
            }
            assert!(n > 0, "closed without an answer: {:?}", String::from_utf8_lossy(&raw));
        }
    })
    .await
    .expect("answered within the body deadline");

    assert_eq!(answer.status, 408, "{:?}", String::from_utf8_lossy(&answer.body));
    let body: Value = serde_json::from_slice(&answer.body).expect("JSON");
    assert_eq!(body["error"], "body_timeout", "{body}");
    app.stop().await;
}

/// An `analytics_events` pattern that leaves event types out (the seed document's `fechatter.analytics.events` is
/// one such): an event of such a type gets an answer that names the key, not a 503 "retry later" that no retry
/// outlives, and the events the pattern covers are stored.
#[tokio::test]
async fn an_event_on_a_subject_the_ingester_does_not_consume_is_answered_naming_the_key() {
    let stack = Stack::start().await;
    let pattern = "fechatter.analytics.user.>";
    // The compatibility patterns and the batch subject must lie inside `analytics_events`.
    let vars = [
        (
            "ANALYTICS__INTEGRATIONS__MESSAGING__SUBJECTS__ANALYTICS_EVENTS",
            pattern,
        ),
        (
            "ANALYTICS__INTEGRATIONS__MESSAGING__SUBJECTS__ANALYTICS_BATCH",
            "fechatter.analytics.user.batch",
        ),
        ("ANALYTICS__INTEGRATIONS__MESSAGING__SUBJECTS__USER_EVENTS", pattern),
        ("ANALYTICS__INTEGRATIONS__MESSAGING__SUBJECTS__CHAT_EVENTS", pattern),
        ("ANALYTICS__INTEGRATIONS__MESSAGING__SUBJECTS__MESSAGE_EVENTS", pattern),
        ("ANALYTICS__INTEGRATIONS__MESSAGING__SUBJECTS__BOT_EVENTS", pattern),
        ("ANALYTICS__INTEGRATIONS__MESSAGING__SUBJECTS__ERROR_EVENTS", pattern),
    ];
    let app = stack.run_in_process(&vars).await;
    let sample = events(fechatter_protos::sample_events().len());
    let outside = sample
        .iter()
        .find(|e| !e.subject().expect("typed").starts_with("fechatter.analytics.user."))
        .expect("an event of another type");
    let inside = sample
        .iter()
        .find(|e| e.subject().expect("typed").starts_with("fechatter.analytics.user."))
        .expect("a user event");

    let (status, body) = post(
        &app.url("/api/event"),
        "application/x-protobuf",
        outside.encode_to_vec(),
    )
    .await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"], "not_consumed", "{body}");
    let message = body["message"].as_str().expect("message");
    assert!(
        message.contains("integrations.messaging.subjects.analytics_events") && message.contains(pattern),
        "{message}"
    );
    let (status, body) = post(&app.url("/api/event"), "application/x-protobuf", inside.encode_to_vec()).await;
    assert_eq!(status, 202, "{body}");
    stack.wait_for_rows(1, WAIT).await;
    app.stop().await;
}
