//! What every handler can reach. Cheap to clone: one `Arc`.

use crate::analytics::Analytics;
use crate::auth::JwtKeys;
use crate::chat::send_queue::SendQueue;
use crate::config::Settings;
use crate::live::LiveHub;
use crate::metrics::Metrics;
use fechatter_service::rate_limit::RateLimiter;
use sqlx::PgPool;
use std::sync::Arc;

/// Shared application state, reached through [`std::ops::Deref`] (`state.pool`). Cloned for every request, by
/// each extractor that needs it, hence one `Arc` around all of it: cloning the fields one by one (the pools, the
/// NATS client with its channel sender, the queues) was ~3 % of the server's CPU in a message-send run.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// The state holding `shared`.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct Shared {
    /// Validated settings.
    pub settings: Arc<Settings>,
    /// PostgreSQL pool.
    pub pool: PgPool,
    /// Message sends, written in groups.
    pub sends: SendQueue,
    /// Token keys.
    pub keys: JwtKeys,
    /// Analytics events, written to the outbox.
    pub analytics: Analytics,
    /// Live updates fan-out (server-sent events).
    pub live: LiveHub,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// NATS connection, for readiness (`None` when analytics is disabled).
    pub nats: Option<async_nats::Client>,
    /// Sign-in / sign-up attempts per client address.
    pub auth_limiter: Arc<RateLimiter>,
}
