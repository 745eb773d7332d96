//! The HTTP API: health, readiness and metrics for operators, and event ingest for client apps.
//!
//! One `router()` per resource module, merged here; one error type whose JSON body always names the problem.

mod error;
mod health;
mod ingest;

pub(crate) use ingest::now_ms;

pub use error::ApiError;

use crate::config::Settings;
use crate::metrics::Metrics;
use async_nats::jetstream::consumer::{Consumer, pull};
use axum::Router;
use fechatter_service::rate_limit::RateLimiter;
use std::sync::Arc;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// Validated settings.
    pub settings: Arc<Settings>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// NATS connection (`None` when messaging is disabled).
    pub nats: Option<async_nats::Client>,
    /// JetStream context (`None` when messaging or JetStream is disabled).
    pub jetstream: Option<async_nats::jetstream::Context>,
    /// The durable consumer, for its pending counts.
    pub consumer: Option<Consumer<pull::Config>>,
    /// ClickHouse client bound to the analytics database.
    pub clickhouse: clickhouse::Client,
    /// Per-client limit of ingest requests.
    pub ingest_limiter: Arc<RateLimiter>,
    /// Ingest requests under way, [`MAX_INGEST_IN_FLIGHT`] at most.
    pub ingest_in_flight: Arc<tokio::sync::Semaphore>,
}

/// Most ingest requests under way at once, each holding up to `server.max_body_bytes` and its decoded events, for
/// as long as a publish may take: the rate limit counts requests as they start, so without this bound requests
/// waiting on a slow NATS, or sending their bodies slowly, could pile up without limit.
pub const MAX_INGEST_IN_FLIGHT: usize = 512;

/// The whole API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(health::router())
        .merge(ingest::router())
        .fallback(fechatter_service::http::not_found)
        .method_not_allowed_fallback(fechatter_service::http::method_not_allowed)
        .layer(axum::middleware::from_fn(
            fechatter_service::http::close_after_refused_body,
        ))
        .with_state(state)
}
