//! `analytics_server send-test-event`: the whole path, end to end, with one event.
//!
//! Publishes an `app_start` event through JetStream (acknowledged, with `Nats-Msg-Id`), then polls ClickHouse
//! until the running ingester has stored it, and reports how long that took. The event is marked as a probe
//! (`client_id` [`PROBE_CLIENT_ID`], `user_id` [`PROBE_USER_ID`]) so that reports can leave it out.

use crate::config::Settings;
use crate::http::now_ms;
use crate::schema::queries;
use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream;
use fechatter_protos::v1::analytics_event::EventType;
use fechatter_protos::v1::{AnalyticsEvent, AppStartEvent, EventContext};
use prost::Message as _;
use std::time::{Duration, Instant};

/// `client_id` of probe events.
pub const PROBE_CLIENT_ID: &str = "analytics_server send-test-event";
/// `user_id` of probe events.
pub const PROBE_USER_ID: &str = "connection-test";

/// The probe event, with a fresh id.
fn probe_event() -> AnalyticsEvent {
    let now_ms = now_ms();
    AnalyticsEvent {
        context: Some(EventContext {
            event_id: uuid::Uuid::now_v7().to_string(),
            client_id: PROBE_CLIENT_ID.to_owned(),
            user_id: PROBE_USER_ID.to_owned(),
            app_version: env!("CARGO_PKG_VERSION").to_owned(),
            client_ts: now_ms,
            server_ts: now_ms,
            ..Default::default()
        }),
        event_type: Some(EventType::AppStart(AppStartEvent {})),
    }
}

/// Publishes the probe and waits up to `timeout` for its row; `Ok(false)` if it never arrived.
pub async fn run(settings: &Settings, timeout: Duration) -> anyhow::Result<bool> {
    let event = probe_event();
    let id = event.event_id().to_owned();
    let subject = event.subject().context("the probe has a type")?;
    let client = super::connect_nats(settings, "analytics_server send-test-event").await?;
    let js = jetstream::new(client);
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id.as_str());
    let started = Instant::now();
    js.publish_with_headers(subject.clone(), headers, event.encode_to_vec().into())
        .await
        .with_context(|| format!("publishing to {subject}"))?
        .await
        .with_context(|| format!("no JetStream acknowledgement for {subject}: does a stream cover it?"))?;
    println!("✅ test event {id} published to {subject} and acknowledged by JetStream");

    let ch = &settings.clickhouse;
    let db = ch.client().with_database(&ch.database);
    let deadline = started + timeout;
    let mut last_error = None;
    while Instant::now() < deadline {
        match db.query(queries::COUNT_EVENT_ID).bind(&id).fetch_one::<u64>().await {
            Ok(n) if n > 0 => {
                println!(
                    "✅ test event stored in ClickHouse ({}.analytics_events) after {} ms",
                    ch.database,
                    started.elapsed().as_millis()
                );
                return Ok(true);
            }
            Ok(_) => last_error = None,
            Err(err) => last_error = Some(err),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    match last_error {
        Some(err) => println!("❌ could not query ClickHouse at {}: {err}", ch.url),
        None => println!(
            "❌ test event {id} not in ClickHouse after {} s: is analytics_server running and consuming \
             (analytics_server status)? It flushes every flush_interval_seconds ({} s).",
            timeout.as_secs(),
            settings.flush_interval_seconds
        ),
    }
    Ok(false)
}
