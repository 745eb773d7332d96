//! Live updates (server-sent events) of new, edited and deleted messages and membership changes, across
//! several server instances. (Being implemented.)

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Fans committed chat changes out to the connected clients of this instance.
#[derive(Clone, Default)]
pub struct LiveHub {}

impl LiveHub {
    /// An empty hub.
    pub fn new() -> Self {
        Self {}
    }

    /// Listens for changes committed by any instance until `shutdown` is cancelled.
    pub async fn run(self, _pool: PgPool, shutdown: CancellationToken) {
        shutdown.cancelled().await;
    }
}
