//! Wires the chat API together: PostgreSQL pool and migrations, signing keys, NATS, the outbox relay, the live
//! updates hub and the HTTP API. [`Application::build`] does every fallible step up front;
//! [`Application::run_until_stopped`] serves until the token is cancelled, finishing in-flight requests.

use crate::analytics::outbox::{self, RelaySettings};
use crate::analytics::{Analytics, AnalyticsPublisher, PublisherSettings};
use crate::auth::{JwtKeys, prune};
use crate::chat::send_queue::SendQueue;
use crate::config::Settings;
use crate::http;
use crate::live::LiveHub;
use crate::metrics::Metrics;
use crate::state::{AppState, Shared};
use anyhow::Context as _;
use axum::serve::ListenerExt as _;
use fechatter_service::rate_limit::RateLimiter;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The running service.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    publisher: Option<AnalyticsPublisher>,
    port: u16,
}

/// How long a connection's peer may leave sent data unacknowledged, or stay silent through keep-alive probes,
/// before the connection is closed. A live-update stream to a peer that vanished without closing (a phone
/// changing networks) otherwise lives on until its token expires: its keep-alive comments fill the kernel's send
/// buffer without error, and it holds one of the user's 16 stream slots all that time.
const DEAD_PEER: Duration = Duration::from_secs(60);

/// Makes the kernel detect a vanished peer of `tcp` within about [`DEAD_PEER`]: TCP keep-alive probes while the
/// connection is idle, and `TCP_USER_TIMEOUT` while sent data waits for its acknowledgement. Best effort: a
/// connection the options cannot be set on is served all the same.
pub fn detect_dead_peers(tcp: &mut tokio::net::TcpStream) {
    let socket = socket2::SockRef::from(&*tcp);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(DEAD_PEER / 2)
        .with_interval(DEAD_PEER / 6)
        .with_retries(3);
    if let Err(err) = socket
        .set_tcp_keepalive(&keepalive)
        .and_then(|()| socket.set_tcp_user_timeout(Some(DEAD_PEER)))
    {
        tracing::debug!(error = %err, "could not set dead-peer detection on a connection");
    }
}

/// Connects to PostgreSQL (waiting up to a minute for it) and applies the migrations.
///
/// The connections run without JIT compilation (`jit = off`). PostgreSQL compiles a query whose estimated cost
/// passes `jit_above_cost`, at some 70 ms of CPU each time: a profile of `send_bench` caught it compiling the
/// count behind the outbox-depth metric, which runs on every scrape (on a 200,000-row journal, `EXPLAIN ANALYZE`:
/// 73 ms of JIT in 177), and a search over a large chat would pay it in its latency. The API's
/// queries are index lookups that JIT does not speed up.
pub async fn connect_database(settings: &Settings) -> anyhow::Result<sqlx::PgPool> {
    let options = settings
        .database
        .url
        .parse::<PgConnectOptions>()
        .context("Invalid database.url")?
        .options([("jit", "off")]);
    let pool = PgPoolOptions::new()
        .max_connections(settings.database.max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options);
    let pool = tokio::time::timeout(Duration::from_secs(60), pool)
        .await
        .context("Timed out connecting to database.url")?
        .context("Failed to connect to database.url")?;
    sqlx::migrate!("./migrations")
        .run(&pool)
        .await
        .context("Failed to apply database migrations")?;
    Ok(pool)
}

impl Application {
    /// Connects to everything, applies migrations, and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let settings = Arc::new(settings);
        let metrics = Arc::new(Metrics::new());
        // The keys first: a missing key is named at once, not after waiting for the database.
        let keys = JwtKeys::load(&settings.auth)?;
        let pool = connect_database(&settings).await?;
        crate::http::remove_stale_uploads(&settings.files.dir).await;
        let enabled = settings.features.messaging.enabled;
        let (nats, publisher) = if enabled {
            // The API must serve while NATS is down: connect in the background and keep retrying; events
            // wait in the outbox meanwhile.
            let client = async_nats::ConnectOptions::new()
                .name("fechatter_server")
                .retry_on_initial_connect()
                .reconnect_delay_callback(fechatter_service::reconnect::nats_reconnect_delay)
                .connect(settings.messaging.nats_url.as_str())
                .await
                .with_context(|| format!("Invalid messaging.nats_url {}", settings.messaging.nats_url))?;
            let publisher = AnalyticsPublisher::new(
                client.clone(),
                PublisherSettings {
                    max_in_flight: settings.analytics.max_in_flight,
                    ack_timeout: Duration::from_millis(settings.analytics.ack_timeout_ms),
                },
            );
            (Some(client), Some(publisher))
        } else {
            tracing::warn!("features.messaging.enabled is false: no analytics events are written");
            (None, None)
        };
        let address = format!("{}:{}", settings.server.host, settings.server.port);
        let listener = TcpListener::bind(&address)
            .await
            .with_context(|| format!("Failed to bind {address}"))?;
        let port = listener.local_addr()?.port();
        let state = AppState::new(Shared {
            auth_limiter: Arc::new(RateLimiter::per_minute(settings.server.auth_rate_limit_per_minute)),
            analytics: Analytics::new(enabled, metrics.clone()),
            live: LiveHub::new(),
            sends: SendQueue::start(&pool, settings.database.send_writers as usize, metrics.clone()),
            settings,
            pool,
            keys,
            metrics,
            nats,
        });
        Ok(Self {
            listener,
            state,
            publisher,
            port,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The shared state (tests reach the pool through it).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` is cancelled, then finishes in-flight requests and stops the background tasks.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let Self {
            listener,
            state,
            publisher,
            port,
        } = self;
        let tracker = TaskTracker::new();
        if let Some(publisher) = publisher {
            let relay = RelaySettings {
                batch_size: state.settings.analytics.batch_size,
                flush_interval: state.settings.flush_interval(),
            };
            tracker.spawn(outbox::run_relay(
                state.pool.clone(),
                publisher,
                relay,
                state.metrics.clone(),
                state.analytics.relay_wake(),
                shutdown.clone(),
            ));
        }
        tracker.spawn(state.live.clone().run(state.pool.clone(), shutdown.clone()));
        tracker.spawn(prune::run(state.pool.clone(), shutdown.clone()));
        tracker.close();
        tracing::info!(port, "fechatter_server listening");
        let app = http::router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let stop = shutdown.clone();
        let served = axum::serve(listener.tap_io(detect_dead_peers), app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        shutdown.cancel();
        if tokio::time::timeout(Duration::from_secs(15), tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("background tasks did not stop in time");
        }
        // Whatever the relay published is acknowledged already; this only pushes out buffered bytes.
        if let Some(nats) = &state.nats
            && !fechatter_service::shutdown::flush_nats(nats).await
        {
            tracing::warn!("NATS unreachable at shutdown; events not yet published stay in the outbox");
        }
        tracing::info!("fechatter_server stopped");
        served
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_detect_a_vanished_peer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (accepted, _client) = tokio::join!(listener.accept(), tokio::net::TcpStream::connect(address));
        let (mut tcp, _) = accepted.expect("accept");

        detect_dead_peers(&mut tcp);

        let socket = socket2::SockRef::from(&tcp);
        assert!(socket.keepalive().expect("keepalive"));
        assert_eq!(socket.tcp_user_timeout().expect("user timeout"), Some(DEAD_PEER));
        assert_eq!(socket.tcp_keepalive_time().expect("idle"), DEAD_PEER / 2);
    }
}
