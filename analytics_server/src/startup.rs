//! Wires the service together: ClickHouse schema, NATS and JetStream objects, the ingest tasks and the HTTP
//! API. [`Application::build`] does every fallible step up front so a misconfiguration fails start-up;
//! [`Application::run_until_stopped`] runs until the token is cancelled, then shuts down in order.

use crate::config::Settings;
use crate::dead_letter::{DeadLetterWorkers, DeadLetters};
use crate::handoff;
use crate::http::{self, AppState};
use crate::jetstream::{self, SetupError, ensure_all};
use crate::metrics::Metrics;
use crate::pipeline::{self, PipelineSettings};
use crate::schema::{self, SchemaError};
use crate::sink::{ClickHouseSink, SchemaHome, SinkSettings, backoff};
use crate::source;
use fechatter_service::error::chain;
use fechatter_service::rate_limit::RateLimiter;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long start-up waits for NATS and ClickHouse to answer.
const STARTUP_WAIT: Duration = Duration::from_secs(60);
/// How long shutdown waits for in-flight batches to be stored and acknowledged. Whatever is still
/// unacknowledged after it is redelivered by JetStream later: nothing is lost, only delayed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Poison messages being copied to the dead-letter stream at once (each waits for JetStream's acknowledgement).
const DEAD_LETTERS_IN_FLIGHT: usize = 256;

/// A start-up step that failed.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("failed to bring the ClickHouse schema up to date at {url}")]
    Schema {
        url: String,
        #[source]
        source: SchemaError,
    },
    #[error("failed to connect to NATS at {url}")]
    Nats {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("failed to set up JetStream")]
    JetStream(#[from] SetupError),
    #[error("failed to bind the HTTP listener on {address}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
}

/// The running service.
pub struct Application {
    settings: Arc<Settings>,
    listener: TcpListener,
    state: AppState,
    port: u16,
}

/// Retries `step` with backoff until it succeeds or [`STARTUP_WAIT`] has passed.
async fn with_startup_retries<T, E, F, Fut>(what: &str, mut step: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::error::Error + 'static,
{
    let deadline = tokio::time::Instant::now() + STARTUP_WAIT;
    let mut attempt = 0;
    loop {
        match step().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() < deadline => {
                attempt += 1;
                tracing::warn!(error = %chain(&e), attempt, "{what} not reachable yet; retrying");
                tokio::time::sleep(backoff(attempt, Duration::from_secs(2))).await;
            }
            Err(e) => return Err(e),
        }
    }
}

impl Application {
    /// Connects to everything, applies the schema and JetStream set-up, and binds the listener.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let settings = Arc::new(settings);
        let metrics = Arc::new(Metrics::new());
        let ch = &settings.clickhouse;
        let server = ch.client();
        let clickhouse = server.clone().with_database(&ch.database);
        let version = with_startup_retries("ClickHouse", || schema::migrate(&server, &clickhouse, &ch.database))
            .await
            .map_err(|source| StartupError::Schema {
                url: ch.url.clone(),
                source,
            })?;
        tracing::info!(database = %ch.database, version, "ClickHouse schema up to date");

        let messaging = &settings.integrations.messaging;
        let (mut nats, mut jetstream, mut consumer) = (None, None, None);
        if messaging.enabled {
            let client = with_startup_retries("NATS", || {
                async_nats::ConnectOptions::new()
                    .name("analytics_server")
                    .reconnect_delay_callback(fechatter_service::reconnect::nats_reconnect_delay)
                    .connect(messaging.nats_url.as_str())
            })
            .await
            .map_err(|source| StartupError::Nats {
                url: messaging.nats_url.clone(),
                source,
            })?;
            tracing::info!(url = %messaging.nats_url, "connected to NATS");
            if messaging.jetstream_enabled {
                let js = async_nats::jetstream::new(client.clone());
                // Retried like the connections: instances starting together race to create the streams and the
                // consumer, and JetStream may still be electing its leader right after NATS started.
                consumer = Some(with_startup_retries("JetStream set-up", || ensure_all(&js, &settings)).await?);
                jetstream = Some(js);
            }
            nats = Some(client);
        } else {
            tracing::warn!("integrations.messaging.enabled is false: consuming nothing");
        }
        let subjects = fechatter_protos::all_subjects();
        let missed = crate::config::uncovered(&messaging.subjects.analytics_events, &subjects);
        if messaging.enabled && !missed.is_empty() {
            // Not refused: `analytics_server check` must be able to load such a configuration to diagnose it.
            tracing::error!(
                analytics_events = %messaging.subjects.analytics_events,
                missed = %missed.join(", "),
                "integrations.messaging.subjects.analytics_events does not cover every event subject: events \
                 fechatter_server publishes there, and POST /api/event of those types, are never stored; set it \
                 to fechatter.analytics.>"
            );
        }

        let address = format!("{}:{}", settings.server.host, settings.server.port);
        let listener = TcpListener::bind(&address).await.map_err(|source| StartupError::Bind {
            address: address.clone(),
            source,
        })?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(settings.server.port);
        let state = AppState {
            ingest_limiter: Arc::new(RateLimiter::per_minute(settings.server.ingest_rate_limit_per_minute)),
            ingest_in_flight: Arc::new(tokio::sync::Semaphore::new(http::MAX_INGEST_IN_FLIGHT)),
            settings: settings.clone(),
            metrics,
            nats,
            jetstream,
            consumer,
            clickhouse,
        };
        Ok(Self {
            settings,
            listener,
            state,
            port,
        })
    }

    /// The bound HTTP port (useful when the configured port is 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs until `shutdown` is cancelled: stops pulling, flushes and acknowledges what is in flight, stops the
    /// HTTP server after in-flight requests, then returns.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let Self {
            settings,
            listener,
            state,
            port,
        } = self;
        let tracker = TaskTracker::new();
        let js_settings = &settings.jetstream;
        // Bounded so that a slow ClickHouse stops the pulling instead of growing memory.
        let (in_tx, in_rx) = mpsc::channel(js_settings.pull_batch.max(1));
        let (batch_giver, batch_taker) = handoff::channel();

        if let (Some(consumer), Some(js)) = (state.consumer.clone(), state.jetstream.clone()) {
            tracker.spawn(source::run_jetstream(
                js,
                settings.clone(),
                consumer,
                in_tx,
                shutdown.clone(),
            ));
        } else if let Some(nats) = state.nats.clone() {
            let subject = settings.integrations.messaging.subjects.analytics_events.clone();
            tracker.spawn(source::run_core(nats.clone(), subject, in_tx, shutdown.clone()));
            tracker.spawn(create_stream_for_publishers(nats, settings.clone(), shutdown.clone()));
        } else {
            drop(in_tx);
        }
        // Without a source (messaging disabled) the pipeline and the sink end at once, as they should.
        let ingesting = state.nats.is_some();
        let dead_letters = state.jetstream.clone().map(|js| {
            let letters = DeadLetters::new(js, js_settings.dead_letter_subject.clone(), js_settings.stream.clone());
            DeadLetterWorkers::new(letters, state.metrics.clone(), DEAD_LETTERS_IN_FLIGHT).restoring(settings.clone())
        });
        // Progress signals only mean something for JetStream's messages.
        let progress = state.jetstream.as_ref().and(state.nats.clone());
        let failed = CancellationToken::new();
        tracker.spawn(essential(
            "pipeline",
            pipeline::run(
                PipelineSettings::from_settings(&settings),
                in_rx,
                batch_giver,
                dead_letters,
                progress,
                state.metrics.clone(),
            ),
            ingesting,
            shutdown.clone(),
            failed.clone(),
        ));
        let sink = ClickHouseSink::new(
            state.clickhouse.clone(),
            SinkSettings {
                insert_timeout: Duration::from_secs(settings.clickhouse.insert_timeout_seconds),
                max_backoff: Duration::from_secs(settings.clickhouse.max_retry_backoff_seconds),
                keep_alive: settings.keep_alive(),
            },
            state.metrics.clone(),
            state.nats.clone(),
        )
        .restoring_schema(SchemaHome {
            server: settings.clickhouse.client(),
            database: settings.clickhouse.database.clone(),
        });
        tracker.spawn(essential(
            "ClickHouse sink",
            sink.run(batch_taker),
            ingesting,
            shutdown.clone(),
            failed.clone(),
        ));
        tracker.close();

        tracing::info!(port, "analytics_server listening");
        let app = http::router(state.clone())
            .layer(tower_http::trace::TraceLayer::new_for_http())
            .into_make_service_with_connect_info::<SocketAddr>();
        let http_shutdown = shutdown.clone();
        let server = axum::serve(listener, app).with_graceful_shutdown(async move { http_shutdown.cancelled().await });
        let served = server.await;

        if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await.is_err() {
            if state.jetstream.is_some() {
                tracing::warn!(
                    grace_seconds = SHUTDOWN_GRACE.as_secs(),
                    "in-flight batches not stored before the grace period; JetStream will redeliver them"
                );
            } else {
                // Core NATS (jetstream_enabled: false) redelivers nothing: at most once, as documented.
                tracing::error!(
                    grace_seconds = SHUTDOWN_GRACE.as_secs(),
                    "in-flight batches not stored before the grace period are lost (core NATS, at most once)"
                );
            }
        }
        // Pushes out the last acks (any not taken are redelivered later and collapse in ClickHouse).
        if let Some(nats) = &state.nats
            && !fechatter_service::shutdown::flush_nats(nats).await
        {
            tracing::warn!("NATS unreachable at shutdown; the last acknowledgements may be redelivered");
        }
        tracing::info!("analytics_server stopped");
        if failed.is_cancelled() {
            return Err(std::io::Error::other(
                "an ingest task stopped unexpectedly (see the log); the service stopped so that it is restarted",
            ));
        }
        served
    }
}

/// Runs `task`, one the ingest cannot go on without (it ends only once shutdown has begun). Should it end
/// before, or panic, the service stops (`shutdown` is cancelled) and [`Application::run_until_stopped`] fails
/// (`failed`): a pipeline without its sink would pull events and never store them, while `/ready` said ready.
/// With JetStream nothing is lost: what it held unacknowledged is redelivered to the restarted service (core NATS,
/// at most once, redelivers nothing).
async fn essential(
    name: &'static str,
    task: impl Future<Output = ()> + Send + 'static,
    ingesting: bool,
    shutdown: CancellationToken,
    failed: CancellationToken,
) {
    let outcome = tokio::spawn(task).await;
    if outcome.is_err() || (ingesting && !shutdown.is_cancelled()) {
        let why = outcome
            .err()
            .map(|err| err.to_string())
            .unwrap_or_else(|| "it returned".into());
        tracing::error!(
            task = name,
            why,
            "an ingest task stopped unexpectedly; stopping the service"
        );
        failed.cancel();
        shutdown.cancel();
    }
}

/// In core-NATS mode this service reads no stream, but fechatter_server publishes through JetStream and waits for
/// its acknowledgements: without the stream its events would wait in its outbox for good. So the stream is
/// created when missing (an existing one is left as its operator set it), tried again with backoff while it
/// fails (JetStream may still be starting, or be off on this NATS: then once a minute, with a warning) until it
/// exists or the service stops.
async fn create_stream_for_publishers(nats: async_nats::Client, settings: Arc<Settings>, shutdown: CancellationToken) {
    let js = async_nats::jetstream::new(nats);
    let mut attempt = 0u32;
    loop {
        match jetstream::create_stream_if_missing(&js, &settings).await {
            Ok(_) => return,
            Err(err) => {
                attempt += 1;
                tracing::warn!(
                    stream = %settings.jetstream.stream,
                    error = %chain(&err),
                    "core NATS mode: the stream is missing and could not be created; publishers that wait for \
                     JetStream's acknowledgements (fechatter_server) cannot publish until it exists"
                );
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff(attempt, Duration::from_secs(60))) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn outcome(task: impl Future<Output = ()> + Send + 'static, ingesting: bool, stopping: bool) -> bool {
        let (shutdown, failed) = (CancellationToken::new(), CancellationToken::new());
        if stopping {
            shutdown.cancel();
        }
        essential("test", task, ingesting, shutdown.clone(), failed.clone()).await;
        assert!(shutdown.is_cancelled(), "the service stops either way");
        failed.is_cancelled()
    }

    #[tokio::test]
    async fn an_ingest_task_ending_before_shutdown_or_panicking_stops_the_service_as_failed() {
        assert!(outcome(async {}, true, false).await, "ended on its own");
        assert!(outcome(async { panic!("sink bug") }, true, true).await, "panicked");
        assert!(!outcome(async {}, true, true).await, "ended by shutdown");
        let (shutdown, failed) = (CancellationToken::new(), CancellationToken::new());
        essential("test", async {}, false, shutdown.clone(), failed.clone()).await;
        assert!(
            !shutdown.is_cancelled() && !failed.is_cancelled(),
            "without a source, ending at once is normal"
        );
    }
}
