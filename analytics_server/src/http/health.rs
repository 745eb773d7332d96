//! `GET /health` (the process answers), `GET /ready` (its dependencies answer) and `GET /metrics`.

use super::AppState;
use crate::schema::queries;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use std::time::Duration;

/// How long one readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok", "service": "analytics_server" }))
}

fn check(ok: bool, detail: impl Into<String>) -> Value {
    json!({ "ok": ok, "detail": detail.into() })
}

async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let messaging = &state.settings.integrations.messaging;
    let nats = match &state.nats {
        None => check(true, "messaging disabled"),
        Some(client) => {
            let s = client.connection_state();
            check(
                s == async_nats::connection::State::Connected,
                format!("{s:?}").to_lowercase(),
            )
        }
    };
    let stream = match &state.jetstream {
        None if messaging.enabled && messaging.jetstream_enabled => check(false, "no JetStream context"),
        None => check(true, "JetStream not used"),
        Some(js) => {
            let name = &state.settings.jetstream.stream;
            match tokio::time::timeout(CHECK_TIMEOUT, js.get_stream(name)).await {
                Ok(Ok(_)) => check(true, format!("stream {name} present")),
                Ok(Err(e)) => check(false, format!("stream {name}: {e}")),
                Err(_) => check(false, format!("stream {name}: timed out")),
            }
        }
    };
    let clickhouse =
        match tokio::time::timeout(CHECK_TIMEOUT, state.clickhouse.query(queries::PING).fetch_one::<u8>()).await {
            Ok(Ok(_)) => check(true, "SELECT 1 answered"),
            Ok(Err(e)) => check(false, e.to_string()),
            Err(_) => check(false, "timed out"),
        };
    let all_ok = [&nats, &stream, &clickhouse].iter().all(|c| c["ok"] == true);
    let status = if all_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if all_ok { "ready" } else { "not_ready" },
        "checks": { "nats": nats, "stream": stream, "clickhouse": clickhouse },
    });
    (status, Json(body))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    if let Some(consumer) = &state.consumer
        && let Ok(Ok(info)) = tokio::time::timeout(CHECK_TIMEOUT, consumer.get_info()).await
    {
        state
            .metrics
            .consumer_pending
            .set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
        state.metrics.consumer_ack_pending.set(info.num_ack_pending as i64);
        state.metrics.consumer_redelivered.set(info.num_redelivered as i64);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
}
