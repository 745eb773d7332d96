//! The analytics_server test stack: private NATS (JetStream) and ClickHouse servers, the service in process or
//! as a real child process, and typed helpers to publish events and read what landed.

#![allow(dead_code)]

use analytics_server::config::Settings;
use analytics_server::row::EventRow;
use analytics_server::startup::Application;
use async_nats::jetstream;
use fechatter_protos::v1::AnalyticsEvent;
use prost::Message as _;
use std::time::Duration;
use test_support::{ChildProcess, ClickHouseServer, NatsServer, wait_until};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Real servers for one test.
pub struct Stack {
    pub nats: NatsServer,
    pub clickhouse: ClickHouseServer,
    pub database: String,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
}

/// The service running inside the test process.
pub struct InProcess {
    pub port: u16,
    pub token: CancellationToken,
    pub handle: JoinHandle<std::io::Result<()>>,
}

impl InProcess {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Cancels the token and waits for the service to finish shutting down.
    pub async fn stop(self) {
        self.token.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(40), self.handle).await;
    }
}

impl Stack {
    pub async fn start() -> Stack {
        // Service logs only when asked for (RUST_LOG=info cargo test …), to keep test output readable.
        if std::env::var_os("RUST_LOG").is_some() {
            fechatter_service::telemetry::init();
        }
        let (nats, clickhouse) = tokio::join!(NatsServer::start(), ClickHouseServer::start());
        let nats = nats.expect("nats-server starts");
        let clickhouse = clickhouse.expect("clickhouse-server starts");
        let client = async_nats::connect(nats.url()).await.expect("connect to NATS");
        let js = jetstream::new(client.clone());
        let database = format!("test_{}", Uuid::new_v4().simple());
        Stack {
            nats,
            clickhouse,
            database,
            client,
            js,
        }
    }

    /// Environment overrides pointing the service at this stack, plus `extra`.
    pub fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = vec![
            ("ANALYTICS__SERVER__HOST".into(), "127.0.0.1".into()),
            ("ANALYTICS__SERVER__PORT".into(), "0".into()),
            ("ANALYTICS__INTEGRATIONS__MESSAGING__NATS_URL".into(), self.nats.url()),
            ("ANALYTICS__CLICKHOUSE__URL".into(), self.clickhouse.http_url()),
            ("ANALYTICS__CLICKHOUSE__DATABASE".into(), self.database.clone()),
            ("ANALYTICS__BATCH_SIZE".into(), "500".into()),
            ("ANALYTICS__FLUSH_INTERVAL_SECONDS".into(), "1".into()),
            ("ANALYTICS__CLICKHOUSE__MAX_RETRY_BACKOFF_SECONDS".into(), "1".into()),
        ];
        for (k, v) in extra {
            vars.retain(|(name, _)| name != k);
            vars.push(((*k).into(), (*v).into()));
        }
        vars
    }

    pub fn settings(&self, extra: &[(&str, &str)]) -> Settings {
        Settings::load(None, self.env(extra)).expect("valid test settings")
    }

    /// Builds and runs the service in this process.
    pub async fn run_in_process(&self, extra: &[(&str, &str)]) -> InProcess {
        let app = Application::build(self.settings(extra)).await.expect("service starts");
        let port = app.port();
        let token = CancellationToken::new();
        let handle = tokio::spawn(app.run_until_stopped(token.clone()));
        InProcess { port, token, handle }
    }

    /// Starts the real binary; returns it and its HTTP port once it answers /health.
    pub async fn spawn_binary(&self, extra: &[(&str, &str)]) -> (ChildProcess, u16) {
        let port = test_support::free_port();
        let port_text = port.to_string();
        let mut vars = self.env(extra);
        vars.retain(|(k, _)| k != "ANALYTICS__SERVER__PORT");
        vars.push(("ANALYTICS__SERVER__PORT".into(), port_text));
        vars.push(("RUST_LOG".into(), "info".into()));
        let child = ChildProcess::spawn(env!("CARGO_BIN_EXE_analytics_server"), Vec::<String>::new(), vars)
            .expect("spawn analytics_server");
        let http = reqwest::Client::new();
        let answered = wait_until("analytics_server /health", Duration::from_secs(60), || {
            let http = http.clone();
            async move {
                let r = http.get(format!("http://127.0.0.1:{port}/health")).send().await.ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
        if let Err(err) = answered {
            panic!("analytics_server answers: {err:#}\nits log:\n{}", child.log_contents());
        }
        (child, port)
    }

    /// Publishes one event on its own subject with `Nats-Msg-Id = msg_id` and waits for the ack.
    pub async fn publish_with_id(&self, event: &AnalyticsEvent, msg_id: &str) {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
        let subject = event.subject().expect("event has a type");
        self.js
            .publish_with_headers(subject, headers, event.encode_to_vec().into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }

    /// Publishes raw bytes on `subject` and waits for the ack.
    pub async fn publish_raw(&self, subject: &str, payload: Vec<u8>) {
        self.js
            .publish(subject.to_owned(), payload.into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }

    /// Publishes `events` in windows of 500 unawaited acks (the async-nats ack-inflight trap).
    pub async fn publish_all(&self, events: &[AnalyticsEvent]) {
        for chunk in events.chunks(500) {
            let mut acks = Vec::with_capacity(chunk.len());
            for event in chunk {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(async_nats::header::NATS_MESSAGE_ID, event.event_id());
                let subject = event.subject().expect("typed");
                acks.push(
                    self.js
                        .publish_with_headers(subject, headers, event.encode_to_vec().into())
                        .await
                        .expect("publish"),
                );
            }
            for ack in acks {
                ack.await.expect("ack");
            }
        }
    }

    pub fn ch_client(&self) -> clickhouse::Client {
        clickhouse::Client::default()
            .with_url(self.clickhouse.http_url())
            .with_database(&self.database)
            .with_validation(false)
    }

    /// Rows visible to queries (duplicates collapsed with FINAL). 0 while the table does not exist.
    pub async fn count_final(&self) -> u64 {
        self.scalar(&format!("SELECT count() FROM {}.analytics_events FINAL", self.database))
            .await
    }

    /// Distinct event ids stored.
    pub async fn distinct_ids(&self) -> u64 {
        self.scalar(&format!(
            "SELECT uniqExact(event_id) FROM {}.analytics_events",
            self.database
        ))
        .await
    }

    /// Physical rows stored (copies included).
    pub async fn physical_rows(&self) -> u64 {
        self.scalar(&format!("SELECT count() FROM {}.analytics_events", self.database))
            .await
    }

    async fn scalar(&self, sql: &str) -> u64 {
        match self.clickhouse.query(sql).await {
            Ok(text) => text.trim().parse().unwrap_or(0),
            Err(_) => 0,
        }
    }

    /// Waits until `count_final() == n`, failing after `timeout`.
    pub async fn wait_for_rows(&self, n: u64, timeout: Duration) {
        let result = wait_until(&format!("{n} rows in ClickHouse"), timeout, || async {
            (self.count_final().await == n).then_some(())
        })
        .await;
        if result.is_err() {
            panic!("expected {n} rows, have {} (FINAL)", self.count_final().await);
        }
    }

    /// All rows, duplicates collapsed, ordered by event id.
    pub async fn rows(&self) -> Vec<EventRow> {
        self.ch_client()
            .query("SELECT ?fields FROM analytics_events FINAL ORDER BY event_id")
            .fetch_all::<EventRow>()
            .await
            .expect("fetch rows")
    }

    /// Consumer counters (pending, ack pending) once the service has caught up.
    pub async fn wait_consumer_idle(&self, timeout: Duration) {
        wait_until("consumer idle", timeout, || async {
            let stream = self.js.get_stream("ANALYTICS").await.ok()?;
            let info = stream.consumer_info("analytics_server").await.ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        })
        .await
        .expect("consumer caught up");
    }

    /// Messages held by a stream.
    pub async fn stream_messages(&self, name: &str) -> u64 {
        match self.js.get_stream(name).await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        }
    }
}

/// `n` distinct events cycling through every kind, with fresh UUIDv7 ids and `user_id` = their index.
pub fn events(n: usize) -> Vec<AnalyticsEvent> {
    let samples = fechatter_protos::sample_events();
    (0..n)
        .map(|i| {
            let mut e = samples[i % samples.len()].clone();
            if let Some(ctx) = e.context.as_mut() {
                ctx.event_id = Uuid::now_v7().to_string();
                ctx.user_id = i.to_string();
            }
            e
        })
        .collect()
}
