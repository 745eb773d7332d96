//! `GET /health` (the process answers), `GET /ready` (PostgreSQL and NATS answer) and `GET /metrics`.

use crate::analytics::outbox;
use crate::state::AppState;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use std::time::Duration;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok", "service": "fechatter_server" }))
}

async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let postgres = match tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(&state.pool)).await {
        Ok(Ok(_)) => json!({ "ok": true, "detail": "SELECT 1 answered" }),
        // The cause goes to the log only: /ready answers anyone, and a driver's message can name the database
        // user, host or database.
        Ok(Err(err)) => {
            tracing::warn!(error = %crate::error_chain(&err), "readiness check: PostgreSQL failed");
            json!({ "ok": false, "detail": "query failed (cause logged)" })
        }
        Err(_) => json!({ "ok": false, "detail": "timed out" }),
    };
    let nats = match &state.nats {
        None => json!({ "ok": true, "detail": "analytics disabled" }),
        Some(client) => {
            let s = client.connection_state();
            json!({ "ok": s == async_nats::connection::State::Connected, "detail": format!("{s:?}").to_lowercase() })
        }
    };
    let ok = postgres["ok"] == true && nats["ok"] == true;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ok { "ready" } else { "not_ready" },
        "checks": { "postgres": postgres, "nats": nats },
    });
    (status, Json(body))
}

/// Scrapes count the outbox depth at most this often. The count reads every waiting row (a long outage leaves
/// many) and `/metrics` answers anyone: a flood of scrapes must not become a flood of counts holding the pool's
/// connections.
const DEPTH_REFRESH: Duration = Duration::from_secs(5);

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    refresh_outbox_depth(&state).await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
}

/// Counts the outbox depth unless it was counted within [`DEPTH_REFRESH`] or another scrape is counting it now
/// (those report the last count).
async fn refresh_outbox_depth(state: &AppState) {
    let Ok(mut counted) = state.metrics.outbox_depth_counted.try_lock() else {
        return;
    };
    if counted.is_some_and(|at| at.elapsed() < DEPTH_REFRESH) {
        return;
    }
    if let Ok(Ok(depth)) = tokio::time::timeout(CHECK_TIMEOUT, outbox::depth(&state.pool)).await {
        state.metrics.outbox_depth.set(depth);
    }
    *counted = Some(std::time::Instant::now());
}
