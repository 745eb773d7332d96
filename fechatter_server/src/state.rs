//! What every handler can reach. Cheap to clone: everything heavy is behind an `Arc` or is a pool handle.

use crate::analytics::Analytics;
use crate::auth::JwtKeys;
use crate::chat::send_queue::SendQueue;
use crate::config::Settings;
use crate::live::LiveHub;
use crate::metrics::Metrics;
use fechatter_service::rate_limit::RateLimiter;
use sqlx::PgPool;
use std::sync::Arc;

/// Shared application state. Cloned for every request (by each extractor that needs it), hence every field is
/// a handle or an `Arc`.
#[derive(Clone)]
pub struct AppState {
    /// Validated settings.
    pub settings: Arc<Settings>,
    /// PostgreSQL pool.
    pub pool: PgPool,
    /// Message sends, written in groups.
    pub sends: SendQueue,
    /// Token keys.
    pub keys: Arc<JwtKeys>,
    /// Analytics events, written to the outbox.
    pub analytics: Analytics,
    /// Live updates fan-out (server-sent events).
    pub live: LiveHub,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// NATS connection, for readiness (`None` when analytics is disabled).
    pub nats: Option<async_nats::Client>,
    /// Sign-in / sign-up attempts per IP.
    pub auth_limiter: Arc<RateLimiter>,
}
