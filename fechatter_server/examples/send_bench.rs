//! Message-send benchmark: `cargo run --release -p fechatter_server --example send_bench [-- --messages N --clients C --rounds R --durability on|off]`.
//!
//! In one run, on private PostgreSQL and NATS servers started for it, it measures:
//! 1. the raw PostgreSQL single-row INSERT + COMMIT rate with C connections (the machine's limit for this work),
//! 2. `POST /api/chats/{id}/messages` with analytics off, then on (the event written to the outbox in the same
//!    transaction, relayed to JetStream), with C concurrent clients.
//!
//! It prints sends/s, p50/p99 latency, and the ratios on/off (target ≥ 0.9) and on/raw (target ≥ 0.5); and for
//! every step the CPU each program used per send (PostgreSQL's processes, nats-server, and this process, which
//! holds both the server and its clients) and how busy the machine was.
//!
//! PostgreSQL runs with its default, production durability (`--durability on`): a commit returns once it is on
//! disk, so "insert + commit" means what it means in production. `--durability off` runs with the tests'
//! settings (no `fsync`), where a commit costs only CPU.
//!
//! The machine drifts (other tenants, PostgreSQL's background work after each run), so every measurement runs
//! `--rounds R` times (default 2), alternating the order (raw, off, on; then on, off, raw; ...) so that drift
//! favours neither, each on a fresh database, and the figures are the medians.

use fechatter_server::auth::JwtKeys;
use fechatter_server::config::Settings;
use fechatter_server::startup::Application;
use std::sync::Arc;
use std::time::{Duration, Instant};
use test_support::cpu::{CpuSnapshot, CpuUse, Timed};
use test_support::{Durability, NatsServer, PostgresServer};
use tokio_util::sync::CancellationToken;

// The server runs in this process, so it gets the allocator the `fechatter_server` binary ships with; with glibc's
// malloc it would be measured on an allocator it never runs on.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Command-line options (the file's header says more).
#[derive(clap::Parser)]
#[command(
    name = "send_bench",
    about = "Message sends with analytics on and off, against raw PostgreSQL"
)]
struct Args {
    /// Messages per measurement.
    #[arg(long, default_value_t = 20_000, value_parser = test_support::bench_args::at_least_one())]
    messages: usize,
    /// Concurrent clients (and raw connections).
    #[arg(long, default_value_t = 16, value_parser = test_support::bench_args::at_least_one())]
    clients: usize,
    /// How many times each measurement runs, alternating the order; the figures are the medians.
    #[arg(long, default_value_t = 2, value_parser = test_support::bench_args::at_least_one())]
    rounds: usize,
    /// PostgreSQL's durability: `on` (production: a commit returns once on disk) or `off` (the tests' settings).
    #[arg(long, default_value = "on", value_parser = test_support::bench_args::durability)]
    durability: Durability,
}

/// Sends/s and latency percentiles of one run.
struct Figures {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Figures {
    /// The median of each figure over rounds.
    fn median(rounds: &[Figures]) -> Figures {
        let of = |f: fn(&Figures) -> f64| {
            let mut v: Vec<f64> = rounds.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            match v.len() {
                0 => 0.0,
                n if n % 2 == 1 => v[n / 2],
                n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
            }
        };
        Figures {
            rate: of(|f| f.rate),
            p50_ms: of(|f| f.p50_ms),
            p99_ms: of(|f| f.p99_ms),
        }
    }
}

/// Each program's CPU microseconds per send (`send_bench` holds both the server and its clients), and how busy
/// the machine was: where the CPU of a send goes, and whether the step was short of it.
fn per_send(cpu: &CpuUse, sends: usize) -> String {
    let mut parts: Vec<String> = cpu
        .programs
        .iter()
        .map(|(name, seconds, _)| format!("{name} {:.0}", seconds * 1e6 / sends as f64))
        .collect();
    parts.push(format!("all {:.0}", cpu.ours * 1e6 / sends as f64));
    parts.join(", ")
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

async fn raw_insert_rate(
    postgres: &PostgresServer,
    url: &str,
    total: usize,
    clients: usize,
) -> anyhow::Result<(Figures, CpuUse)> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(u32::try_from(clients)?)
        .connect(url)
        .await?;
    sqlx::query("CREATE TABLE raw_bench (id BIGSERIAL PRIMARY KEY, chat_id BIGINT, sender_id BIGINT, content TEXT, created_at TIMESTAMPTZ DEFAULT now())")
        .execute(&pool)
        .await?;
    let per = total / clients;
    let cpu = CpuSnapshot::take_with(postgres.pid().as_slice());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let t = Instant::now();
                // Autocommit: each statement is its own transaction, committed before the next.
                sqlx::query("INSERT INTO raw_bench (chat_id, sender_id, content) VALUES ($1, $2, $3)")
                    .bind(1i64)
                    .bind(c as i64)
                    .bind(format!("message {i} from client {c}"))
                    .execute(&pool)
                    .await?;
                lat.push(t.elapsed());
            }
            Ok::<_, sqlx::Error>(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let timed = Timed::since(started, &cpu);
    all.sort();
    Ok((
        Figures {
            rate: all.len() as f64 / timed.elapsed.as_secs_f64(),
            p50_ms: percentile(&all, 0.5),
            p99_ms: percentile(&all, 0.99),
        },
        timed.cpu,
    ))
}

async fn api_send_rate(
    postgres: &PostgresServer,
    nats: &NatsServer,
    keys_dir: &std::path::Path,
    database: &str,
    analytics: bool,
    total: usize,
    clients: usize,
) -> anyhow::Result<(Figures, i64, CpuUse)> {
    let db = postgres.create_database(database).await?;
    let files = tempfile::tempdir()?;
    let vars: Vec<(String, String)> = [
        ("FECHATTER__SERVER__HOST", "127.0.0.1".to_owned()),
        ("FECHATTER__SERVER__PORT", "0".to_owned()),
        ("FECHATTER__DATABASE__URL", db.clone()),
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
    let token = CancellationToken::new();
    let handle = tokio::spawn(app.run_until_stopped(token.clone()));

    // One workspace, one group chat with every client's user as a member.
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
            "INSERT INTO users (workspace_id, fullname, email, password_hash) VALUES ($1, $2, $3, 'x') RETURNING id",
        )
        .bind(ws)
        .bind(format!("client {c}"))
        .bind(format!("client{c}@bench.local"))
        .fetch_one(&pool)
        .await?;
        users.push((id, keys.issue(id, ws)?));
    }
    let chat: i64 = sqlx::query_scalar(
        "INSERT INTO chats (workspace_id, name, chat_type, owner_id) VALUES ($1, 'bench', 'group', $2) RETURNING id",
    )
    .bind(ws)
    .bind(users[0].0)
    .fetch_one(&pool)
    .await?;
    for (id, _) in &users {
        sqlx::query("INSERT INTO chat_members (chat_id, user_id) VALUES ($1, $2)")
            .bind(chat)
            .bind(id)
            .execute(&pool)
            .await?;
    }

    let http = reqwest::Client::builder().pool_max_idle_per_host(clients).build()?;
    let url = Arc::new(format!("http://127.0.0.1:{port}/api/chats/{chat}/messages"));
    let per = total / clients;
    let cpu = CpuSnapshot::take_with(postgres.pid().as_slice());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, (_, token)) in users.into_iter().enumerate() {
        let (http, url) = (http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let t = Instant::now();
                let response = http
                    .post(url.as_str())
                    .bearer_auth(&token)
                    .json(
                        &serde_json::json!({ "content": format!("message {i} from client {c} see https://x.y @bob") }),
                    )
                    .send()
                    .await?;
                anyhow::ensure!(response.status().is_success(), "send failed: {}", response.status());
                // Read to the end, as a client does: an unread body keeps the connection from being reused.
                response.bytes().await?;
                lat.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let timed = Timed::since(started, &cpu);
    all.sort();
    let outbox_left = fechatter_server::analytics::outbox::depth(&pool).await?;
    token.cancel();
    let _ = handle.await;
    let rendered = metrics.render();
    let sample = |name: &str| {
        rendered
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    eprintln!(
        "    sends per statement: {:.2}",
        sample("fechatter_message_send_batch_size_sum") / sample("fechatter_message_send_batch_size_count")
    );
    Ok((
        Figures {
            rate: all.len() as f64 / timed.elapsed.as_secs_f64(),
            p50_ms: percentile(&all, 0.5),
            p99_ms: percentile(&all, 0.99),
        },
        outbox_left,
        timed.cpu,
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Args {
        messages,
        clients,
        rounds,
        durability,
    } = <Args as clap::Parser>::parse();
    println!(
        "send_bench: {messages} messages, {clients} concurrent clients, {rounds} rounds, PostgreSQL durability {durability:?}"
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

    let (mut raws, mut offs, mut ons, mut outbox_left) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for round in 0..rounds {
        let order = if round % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] };
        for which in order {
            let name = ["raw", "off", "on"][which];
            let cpu = match which {
                0 => {
                    let db = postgres.create_database(&format!("raw_bench_{round}")).await?;
                    let (figures, cpu) = raw_insert_rate(&postgres, &db, messages, clients).await?;
                    raws.push(figures);
                    cpu
                }
                _ => {
                    let on = which == 2;
                    let db = format!("send_bench_{name}_{round}");
                    let (figures, left, cpu) =
                        api_send_rate(&postgres, &nats, keys_dir.path(), &db, on, messages, clients).await?;
                    if on {
                        outbox_left = outbox_left.max(left);
                        ons.push(figures);
                    } else {
                        offs.push(figures);
                    }
                    cpu
                }
            };
            let last = [&raws, &offs, &ons][which].last().map_or(0.0, |f| f.rate);
            println!("  round {}: {name:<3} {last:>8.0}/s", round + 1);
            println!("    CPU µs per send: {}", per_send(&cpu, messages));
            println!("    {}", cpu.line());
        }
    }
    let (raw, off, on) = (Figures::median(&raws), Figures::median(&offs), Figures::median(&ons));

    println!();
    println!("medians of {rounds} rounds:");
    println!("| measurement                               |  per second |  p50 ms |  p99 ms |");
    println!("|-------------------------------------------|------------:|--------:|--------:|");
    for (name, f) in [
        ("raw PostgreSQL INSERT + COMMIT (1 row)", &raw),
        ("POST message, analytics off", &off),
        ("POST message, analytics on             ", &on),
    ] {
        println!(
            "| {name:<41} | {:>11.0} | {:>7.2} | {:>7.2} |",
            f.rate, f.p50_ms, f.p99_ms
        );
    }
    let on_off = on.rate / off.rate;
    let on_raw = on.rate / raw.rate;
    println!();
    println!(
        "analytics on / off     = {on_off:.2} (target >= 0.90) {}",
        if on_off >= 0.9 { "met" } else { "TARGET MISSED" }
    );
    println!(
        "analytics on / raw     = {on_raw:.2} (target >= 0.50) {}",
        if on_raw >= 0.5 { "met" } else { "TARGET MISSED" }
    );
    // The machine drifts within minutes; the ratio of the two runs of one round (back to back) shows how much.
    let paired: Vec<String> = ons
        .iter()
        .zip(&offs)
        .map(|(on, off)| format!("{:.2}", on.rate / off.rate))
        .collect();
    println!("analytics on / off of each round: {}", paired.join(" / "));
    println!("outbox rows left when sending stopped (most of any round): {outbox_left}");
    Ok(())
}
