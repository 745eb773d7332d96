//! Message-send benchmark: `cargo run --release -p fechatter_server --example send_bench [-- --messages N --clients C --rounds R --durability on|off]`.
//!
//! In one run, on private PostgreSQL and NATS servers started for it, it measures:
//! 1. the raw PostgreSQL single-row INSERT + COMMIT rate with C connections (the machine's limit for this work),
//! 2. `POST /api/chats/{id}/messages` with analytics off, then on (the event written in the send's transaction,
//!    relayed to JetStream), with C concurrent clients.
//!
//! It prints sends/s, p50/p99 latency, and the ratios on/off (target ≥ 0.9) and on/raw (target ≥ 0.5); and for
//! every measurement the CPU each program used per send (PostgreSQL's processes, nats-server, and this process,
//! which holds both servers and their clients) and how busy the machine was.
//!
//! PostgreSQL runs with its default, production durability (`--durability on`): a commit returns once it is on
//! disk, so "insert + commit" means what it means in production. `--durability off` runs with the tests' settings
//! (no `fsync`), where a commit costs only CPU.
//!
//! The machines this runs on drift: within one run their speed has changed by a third (other tenants). So the
//! three measurements are interleaved rather than run one after the other: the raw table and both servers (each
//! on a database of its own) are set up once, and each measurement's N messages are sent in R slices, taking
//! turns (raw, off, on; then on, off, raw; ...), so that a slow minute slows all three alike. A measurement's
//! rate is its messages over the time its slices took. Before the first slice each one sends a few messages
//! untimed (connections opened, statements prepared), and after each slice with analytics on the relay is let
//! publish what the slice left in the journal (untimed: its rounds run alongside the sends, and would otherwise
//! be charged to the next slice, of another measurement).
//!
//! `--both-on` turns analytics on in the "off" server too: an A/A run, whose on/off (ideally 1.00) shows how much
//! of a difference the bench itself can make up.

use fechatter_server::analytics::outbox;
use fechatter_server::auth::JwtKeys;
use fechatter_server::config::Settings;
use fechatter_server::metrics::Metrics;
use fechatter_server::startup::Application;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use test_support::cpu::{CpuSnapshot, CpuUse, Timed};
use test_support::{Durability, NatsServer, PostgresServer};
use tokio_util::sync::CancellationToken;

// The server runs in this process, so it gets the allocator the `fechatter_server` binary ships with; with glibc's
// malloc it would be measured on an allocator it never runs on.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Messages each client sends untimed before a measurement's first slice.
const WARM_UP_PER_CLIENT: usize = 20;

/// Command-line options (the file's header says more).
#[derive(clap::Parser)]
#[command(
    name = "send_bench",
    about = "Message sends with analytics on and off, against raw PostgreSQL"
)]
struct Args {
    /// Messages per measurement, over all its slices.
    #[arg(long, default_value_t = 30_000, value_parser = test_support::bench_args::at_least_one())]
    messages: usize,
    /// Concurrent clients (and raw connections).
    #[arg(long, default_value_t = 16, value_parser = test_support::bench_args::at_least_one())]
    clients: usize,
    /// Slices each measurement is sent in, taking turns with the others' (the file's header says why).
    #[arg(long, default_value_t = 10, value_parser = test_support::bench_args::at_least_one())]
    rounds: usize,
    /// PostgreSQL's durability: `on` (production: a commit returns once on disk) or `off` (the tests' settings).
    #[arg(long, default_value = "on", value_parser = test_support::bench_args::durability)]
    durability: Durability,
    /// Analytics on in the "off" server too: an A/A run, whose on/off shows how far the bench's own noise moves it.
    #[arg(long)]
    both_on: bool,
}

/// What one measurement has measured so far, over its slices.
struct Measurement {
    name: &'static str,
    sends: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    cpu: CpuUse,
    /// Each slice's sends/s, in order.
    slices: Vec<f64>,
}

impl Measurement {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            sends: 0,
            elapsed: Duration::ZERO,
            latencies: Vec::new(),
            cpu: CpuUse::none(),
            slices: Vec::new(),
        }
    }

    /// Adds a slice: its sends' latencies and its time and CPU.
    fn record(&mut self, latencies: Vec<Duration>, timed: &Timed) {
        self.sends += latencies.len();
        self.elapsed += timed.elapsed;
        self.slices.push(latencies.len() as f64 / timed.elapsed.as_secs_f64());
        self.latencies.extend(latencies);
        self.cpu.add(&timed.cpu);
    }

    /// Sends per second over all slices.
    fn rate(&self) -> f64 {
        self.sends as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency at percentile `p` (0 to 1) over all slices, in milliseconds.
    fn percentile_ms(&mut self, p: f64) -> f64 {
        self.latencies.sort_unstable();
        match self.latencies.len() {
            0 => 0.0,
            n => self.latencies[((n as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0,
        }
    }

    /// Each program's CPU microseconds per send (`send_bench` holds both servers and their clients): where the CPU
    /// of a send goes.
    fn cpu_per_send(&self) -> String {
        let sends = self.sends.max(1) as f64;
        let mut parts: Vec<String> = self
            .cpu
            .programs
            .iter()
            .map(|(name, seconds, _)| format!("{name} {:.0}", seconds * 1e6 / sends))
            .collect();
        parts.push(format!("all {:.0}", self.cpu.ours * 1e6 / sends));
        parts.join(", ")
    }
}

/// The median of `values` (0 when empty).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Runs `send(client, message)` for messages `first..first + per_client` of each of `clients` clients, the
/// clients at once and each client's messages one after the other; the latency of every send.
async fn concurrently<F, Fut>(clients: usize, per_client: usize, first: usize, send: F) -> anyhow::Result<Vec<Duration>>
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let mut tasks = Vec::new();
    for c in 0..clients {
        let send = send.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            for i in first..first + per_client {
                let t = Instant::now();
                send(c, i).await?;
                latencies.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut all = Vec::with_capacity(clients * per_client);
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(all)
}

/// The raw measurement's table, on a database of its own, and its connections.
struct Raw {
    pool: PgPool,
    clients: usize,
}

impl Raw {
    async fn start(postgres: &PostgresServer, clients: usize) -> anyhow::Result<Self> {
        let url = postgres.create_database("raw_bench").await?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(u32::try_from(clients)?)
            .connect(&url)
            .await?;
        sqlx::query(
            "CREATE TABLE raw_bench (id BIGSERIAL PRIMARY KEY, chat_id BIGINT, sender_id BIGINT, content TEXT, \
             created_at TIMESTAMPTZ DEFAULT now())",
        )
        .execute(&pool)
        .await?;
        Ok(Self { pool, clients })
    }

    /// `per_client` single-row inserts on each connection at once; the latency of each.
    async fn run(&self, per_client: usize, first: usize) -> anyhow::Result<Vec<Duration>> {
        let pool = self.pool.clone();
        concurrently(self.clients, per_client, first, move |c, i| {
            let pool = pool.clone();
            async move {
                // Autocommit: each statement is its own transaction, committed before the next.
                sqlx::query("INSERT INTO raw_bench (chat_id, sender_id, content) VALUES ($1, $2, $3)")
                    .bind(1i64)
                    .bind(c as i64)
                    .bind(format!("message {i} from client {c}"))
                    .execute(&pool)
                    .await?;
                Ok(())
            }
        })
        .await
    }
}

/// One chat API server, analytics on or off, on a database of its own, with one workspace, one group chat and a
/// client per member.
struct Api {
    pool: PgPool,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    http: reqwest::Client,
    url: Arc<String>,
    tokens: Vec<String>,
    _files: tempfile::TempDir,
}

impl Api {
    async fn start(
        postgres: &PostgresServer,
        nats: &NatsServer,
        keys_dir: &std::path::Path,
        analytics: bool,
        clients: usize,
    ) -> anyhow::Result<Self> {
        let db = postgres
            .create_database(&format!("send_bench_{}", uuid::Uuid::new_v4().simple()))
            .await?;
        let files = tempfile::tempdir()?;
        let vars: Vec<(String, String)> = [
            ("FECHATTER__SERVER__HOST", "127.0.0.1".to_owned()),
            ("FECHATTER__SERVER__PORT", "0".to_owned()),
            ("FECHATTER__DATABASE__URL", db),
            ("FECHATTER__DATABASE__MAX_CONNECTIONS", (clients + 4).to_string()),
            ("FECHATTER__MESSAGING__NATS_URL", nats.url()),
            ("FECHATTER__FEATURES__MESSAGING__ENABLED", analytics.to_string()),
            (
                "FECHATTER__AUTH__PRIVATE_KEY_PATH",
                keys_dir.join("private.pem").display().to_string(),
            ),
            (
                "FECHATTER__AUTH__PUBLIC_KEY_PATH",
                keys_dir.join("public.pem").display().to_string(),
            ),
            ("FECHATTER__FILES__DIR", files.path().display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let app = Application::build(Settings::load(None, vars)?).await?;
        let port = app.port();
        let pool = app.state().pool.clone();
        let metrics = app.state().metrics.clone();
        let stop = CancellationToken::new();
        let server = tokio::spawn(app.run_until_stopped(stop.clone()));

        let keys = JwtKeys::from_pem(
            &std::fs::read(keys_dir.join("private.pem"))?,
            &std::fs::read(keys_dir.join("public.pem"))?,
            "fechatter",
            3600,
        )?;
        let ws: i64 = sqlx::query_scalar("INSERT INTO workspaces (name) VALUES ('bench') RETURNING id")
            .fetch_one(&pool)
            .await?;
        let mut users = Vec::new();
        for c in 0..clients {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO users (workspace_id, fullname, email, password_hash) VALUES ($1, $2, $3, 'x') \
                 RETURNING id",
            )
            .bind(ws)
            .bind(format!("client {c}"))
            .bind(format!("client{c}@bench.local"))
            .fetch_one(&pool)
            .await?;
            users.push(id);
        }
        let chat: i64 = sqlx::query_scalar(
            "INSERT INTO chats (workspace_id, name, chat_type, owner_id) VALUES ($1, 'bench', 'group', $2) \
             RETURNING id",
        )
        .bind(ws)
        .bind(users[0])
        .fetch_one(&pool)
        .await?;
        sqlx::query("INSERT INTO chat_members (chat_id, user_id) SELECT $1, unnest($2::bigint[])")
            .bind(chat)
            .bind(&users)
            .execute(&pool)
            .await?;
        let tokens = users
            .iter()
            .map(|&id| keys.issue(id, ws))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            pool,
            metrics,
            stop,
            server,
            http: reqwest::Client::builder().pool_max_idle_per_host(clients).build()?,
            url: Arc::new(format!("http://127.0.0.1:{port}/api/chats/{chat}/messages")),
            tokens,
            _files: files,
        })
    }

    /// `per_client` sends from each client at once; the latency of each.
    async fn run(&self, per_client: usize, first: usize) -> anyhow::Result<Vec<Duration>> {
        let (http, url, tokens) = (self.http.clone(), self.url.clone(), Arc::new(self.tokens.clone()));
        concurrently(self.tokens.len(), per_client, first, move |c, i| {
            let (http, url, tokens) = (http.clone(), url.clone(), tokens.clone());
            async move {
                let content = format!("message {i} from client {c} see https://x.y @bob");
                let response = http
                    .post(url.as_str())
                    .bearer_auth(&tokens[c])
                    .json(&serde_json::json!({ "content": content }))
                    .send()
                    .await?;
                anyhow::ensure!(response.status().is_success(), "send failed: {}", response.status());
                // Read to the end, as a client does: an unread body keeps the connection from being reused.
                response.bytes().await?;
                Ok(())
            }
        })
        .await
    }

    /// Events the relay has not published yet.
    async fn waiting_events(&self) -> anyhow::Result<i64> {
        Ok(outbox::depth(&self.pool).await?)
    }

    /// Waits until the relay has published every event (at most a minute).
    async fn drained(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.waiting_events().await? > 0 {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the relay did not publish the events within a minute"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Sends per statement of the send queue's writers so far.
    fn sends_per_statement(&self) -> f64 {
        let rendered = self.metrics.render();
        let sample = |name: &str| {
            rendered
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        sample("fechatter_message_send_batch_size_sum") / sample("fechatter_message_send_batch_size_count")
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.server.await;
    }
}

/// The three measurements' senders.
enum Target<'a> {
    Raw(&'a Raw),
    Api(&'a Api),
}

impl Target<'_> {
    async fn run(&self, per_client: usize, first: usize) -> anyhow::Result<Vec<Duration>> {
        match self {
            Target::Raw(raw) => raw.run(per_client, first).await,
            Target::Api(api) => api.run(per_client, first).await,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Args {
        messages,
        clients,
        rounds,
        durability,
        both_on,
    } = <Args as clap::Parser>::parse();
    let per_client = (messages / rounds / clients).max(1);
    println!(
        "send_bench: {} messages per measurement in {rounds} slices of {clients} clients × {per_client}, \
         PostgreSQL durability {durability:?}",
        per_client * clients * rounds
    );
    let (postgres, nats) = tokio::join!(PostgresServer::start_with(durability), NatsServer::start());
    let (postgres, nats) = (postgres?, nats?);
    let client = async_nats::connect(nats.url()).await?;
    async_nats::jetstream::new(client)
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "ANALYTICS".into(),
            subjects: vec!["fechatter.analytics.>".into()],
            ..Default::default()
        })
        .await?;
    let keys_dir = tempfile::tempdir()?;
    let (private, public) = fechatter_server::auth::tokens::generate_key_pair()?;
    std::fs::write(keys_dir.path().join("private.pem"), private)?;
    std::fs::write(keys_dir.path().join("public.pem"), public)?;

    let raw = Raw::start(&postgres, clients).await?;
    let off = Api::start(&postgres, &nats, keys_dir.path(), both_on, clients).await?;
    let on = Api::start(&postgres, &nats, keys_dir.path(), true, clients).await?;
    let targets = [Target::Raw(&raw), Target::Api(&off), Target::Api(&on)];
    for target in &targets {
        target.run(WARM_UP_PER_CLIENT, 0).await?;
    }
    on.drained().await?;

    let mut measured = [Measurement::new("raw"), Measurement::new("off"), Measurement::new("on")];
    let mut left_in_journal = 0;
    for round in 0..rounds {
        let order = if round % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] };
        let mut line = Vec::new();
        for which in order {
            let first = WARM_UP_PER_CLIENT + round * per_client;
            let cpu = CpuSnapshot::take_with(postgres.pid().as_slice());
            let started = Instant::now();
            let latencies = targets[which].run(per_client, first).await?;
            let timed = Timed::since(started, &cpu);
            measured[which].record(latencies, &timed);
            if let Target::Api(api) = &targets[which] {
                // The relay's work left at the slice's end is not timed (in steady state it runs alongside the
                // sends), but its CPU is the measurement's.
                let drain = CpuSnapshot::take_with(postgres.pid().as_slice());
                let draining = Instant::now();
                left_in_journal = left_in_journal.max(api.waiting_events().await?);
                api.drained().await?;
                measured[which].cpu.add(&Timed::since(draining, &drain).cpu);
            }
            line.push(format!(
                "{} {:.0}/s ({:.0}% busy)",
                measured[which].name,
                measured[which].slices.last().copied().unwrap_or(0.0),
                100.0 * (timed.cpu.ours + timed.cpu.others) / timed.cpu.available.max(1e-9)
            ));
        }
        println!("  slice {:>2}: {}", round + 1, line.join(", "));
    }
    let (off_batch, on_batch) = (off.sends_per_statement(), on.sends_per_statement());
    off.stop().await;
    on.stop().await;

    println!();
    for m in &measured {
        println!("  {}: CPU µs per send: {}", m.name, m.cpu_per_send());
        println!("    {}", m.cpu.line());
    }
    println!("  sends per statement: off {off_batch:.2}, on {on_batch:.2}");
    println!();
    if both_on {
        println!("A/A run (--both-on): analytics on in the \"off\" server too; on/off measures the bench's noise");
    }
    println!("{rounds} slices each, interleaved:");
    println!("| measurement                               |  per second |  p50 ms |  p99 ms |");
    println!("|-------------------------------------------|------------:|--------:|--------:|");
    for (m, title) in measured.iter_mut().zip([
        "raw PostgreSQL INSERT + COMMIT (1 row)",
        "POST message, analytics off",
        "POST message, analytics on",
    ]) {
        println!(
            "| {title:<41} | {:>11.0} | {:>7.2} | {:>7.2} |",
            m.rate(),
            m.percentile_ms(0.5),
            m.percentile_ms(0.99)
        );
    }
    let [raw_m, off_m, on_m] = &measured;
    let on_off = on_m.rate() / off_m.rate();
    let on_raw = on_m.rate() / raw_m.rate();
    println!();
    println!(
        "analytics on / off     = {on_off:.2} (target >= 0.90) {}",
        if on_off >= 0.9 { "met" } else { "TARGET MISSED" }
    );
    println!(
        "analytics on / raw     = {on_raw:.2} (target >= 0.50) {}",
        if on_raw >= 0.5 { "met" } else { "TARGET MISSED" }
    );
    // How far the slices of one round, a few seconds apart, disagree: the noise left in the ratios above.
    let spread = |a: &Measurement, b: &Measurement| {
        let ratios: Vec<f64> = a.slices.iter().zip(&b.slices).map(|(x, y)| x / y).collect();
        let (low, high) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), &r| (l.min(r), h.max(r)));
        format!("median {:.2}, {low:.2}-{high:.2}", median(ratios))
    };
    println!("on / off of each round's slices: {}", spread(on_m, off_m));
    println!("on / raw of each round's slices: {}", spread(on_m, raw_m));
    println!("events waiting for the relay when a slice ended (most): {left_in_journal}");
    Ok(())
}
