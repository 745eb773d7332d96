//! Ingest throughput benchmark of `analytics_server`, against private NATS (JetStream) and ClickHouse servers.
//!
//! ```text
//! cargo run --release -p analytics_server --example ingest_bench                  # 200 000 events
//! cargo run --release -p analytics_server --example ingest_bench -- --events 20000  # quick run
//! ```
//!
//! Options: `--events N` (default 200000), `--batch-size N` (rows per INSERT, default 10000), `--pull-batch N`
//! (messages per pull request, default 2000), `--max-ack-pending N` (default 40000), `--no-build` (do not run
//! `cargo build` for the service binary first).
//!
//! One run:
//! 1. starts a private nats-server (JetStream) and clickhouse-server (18.16) via `test_support`;
//! 2. publishes N events (every sample kind in turn, unique UUIDv7 ids, `Nats-Msg-Id` set) into the `ANALYTICS`
//!    stream, which becomes the backlog; the publish rate is informational;
//! 3. (a) drains the backlog with a bare durable pull consumer (`bench_bare`): pull, prost-decode, ack — the
//!    ceiling of what JetStream can deliver on this machine;
//! 4. (b) inserts N pre-built [`EventRow`]s into a scratch database in batches of `batch_size` rows, one INSERT
//!    at a time like the service's sink — the ceiling of what ClickHouse accepts;
//! 5. (c) starts the real `analytics_server` release binary against the same backlog (its own durable consumer
//!    starts at the beginning of the stream) and times it until `count() FINAL` is N, sampling its RSS every
//!    100 ms;
//! 6. prints a summary with the ratios c/a (target ≥ 0.8) and c/b and the ingester's peak RSS.
//!
//! The run exits 0 when the throughput target is missed (it is a measurement; the summary says `TARGET MISSED`),
//! and 1 when exactly-once is violated (`count() FINAL` or `uniqExact(event_id)` differs from N) or a step fails.
//!
//! `cargo run --example` does not build the package's binaries, so before step 1 the benchmark runs
//! `cargo build [--release] -p analytics_server --bin analytics_server --example ingest_bench` itself (a no-op when it is up to date; it
//! may wait for the shared target directory's lock while other builds run).

use analytics_server::config::Settings;
use analytics_server::jetstream::{consumer_config, ensure_stream};
use analytics_server::row::{EventRow, Origin, to_row};
use analytics_server::schema::{self, EVENTS_TABLE};
use anyhow::{Context, Result, bail, ensure};
use async_nats::jetstream::{self, consumer::pull};
use bytes::Bytes;
use fechatter_protos::v1::AnalyticsEvent;
use futures::StreamExt;
use prost::Message as _;
use std::collections::VecDeque;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use test_support::{ChildProcess, ClickHouseServer, NatsServer, cargo_bin, free_port, wait_until};
use tokio::sync::Mutex;
use uuid::Uuid;

/// Un-awaited publish acks allowed in flight (async-nats stalls at 5000).
const PUBLISH_WINDOW: usize = 2_000;
/// Name of the bare consumer of step (a).
const BARE_CONSUMER: &str = "bench_bare";
/// Scratch database of step (b).
const RAW_DATABASE: &str = "bench_raw";
/// Database the service writes to in step (c).
const SERVICE_DATABASE: &str = "bench_service";
/// The throughput target: the service drains at least this fraction of the bare consumer's rate.
const TARGET_RATIO: f64 = 0.8;
/// RSS sampling period.
const RSS_PERIOD: Duration = Duration::from_millis(100);

/// Command-line options.
#[derive(Debug, Clone)]
struct Args {
    events: usize,
    batch_size: usize,
    pull_batch: usize,
    max_ack_pending: usize,
    build: bool,
}

impl Args {
    fn parse() -> Result<Self> {
        let mut args = Self {
            events: 200_000,
            batch_size: 10_000,
            pull_batch: 2_000,
            max_ack_pending: 40_000,
            build: true,
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (arg.clone(), None),
            };
            let mut value = |name: &str| -> Result<usize> {
                let text = match inline.clone() {
                    Some(v) => v,
                    None => it.next().with_context(|| format!("{name} needs a value"))?,
                };
                let n: usize = text
                    .parse()
                    .with_context(|| format!("{name} {text:?} is not a number"))?;
                ensure!(n > 0, "{name} must be at least 1");
                Ok(n)
            };
            match name.as_str() {
                "--events" => args.events = value("--events")?,
                "--batch-size" => args.batch_size = value("--batch-size")?,
                "--pull-batch" => args.pull_batch = value("--pull-batch")?,
                "--max-ack-pending" => args.max_ack_pending = value("--max-ack-pending")?,
                "--no-build" => args.build = false,
                "-h" | "--help" => {
                    println!(
                        "usage: ingest_bench [--events N] [--batch-size N] [--pull-batch N] [--max-ack-pending N] \
                         [--no-build]"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?} (try --help)"),
            }
        }
        Ok(args)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("ingest_bench failed: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Events per second.
fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Formats a rate with thousands separators.
fn fmt_rate(r: f64) -> String {
    let n = r.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn now_seconds() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or(0)
}

/// Builds the service binary for the profile this benchmark was built with.
fn build_service_binary() -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let mut command = Command::new(cargo);
    command
        .arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        // Naming this example too keeps the dev-dependency feature unification of `cargo run --example`, so the
        // dependencies it already compiled are reused instead of being rebuilt with other features.
        .args([
            "-p",
            "analytics_server",
            "--bin",
            "analytics_server",
            "--example",
            "ingest_bench",
        ]);
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    // `cargo run` gives this process the package's CARGO_PKG_*/CARGO_MANIFEST_* variables. Some build scripts
    // (ring's) rerun when those change, so passing them on would rebuild ring, rustls and async-nats here and
    // again at the next plain `cargo` command.
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let injected = name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || matches!(
                name,
                "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_RUSTC_CURRENT_DIR" | "OUT_DIR"
            );
        if injected {
            command.env_remove(name);
        }
    }
    println!("building the service binary: {command:?}");
    let started = Instant::now();
    let status = command.status().context("running cargo build")?;
    ensure!(status.success(), "cargo build of analytics_server failed ({status})");
    println!("  service binary ready in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// `n` distinct events cycling through every kind, with fresh UUIDv7 ids and `user_id` = their index.
fn make_events(n: usize) -> Vec<AnalyticsEvent> {
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

/// Publishes every event (pre-encoded) with `Nats-Msg-Id`, keeping at most [`PUBLISH_WINDOW`] acks in flight.
async fn publish(js: &jetstream::Context, events: &[AnalyticsEvent]) -> Result<Timed> {
    let encoded: Vec<(String, String, Bytes)> = events
        .iter()
        .map(|e| {
            let subject = e.subject().context("sample event without a type")?;
            Ok((subject, e.event_id().to_owned(), Bytes::from(e.encode_to_vec())))
        })
        .collect::<Result<_>>()?;
    let cpu = cpu_snapshot();
    let started = Instant::now();
    let mut in_flight = VecDeque::with_capacity(PUBLISH_WINDOW);
    for (subject, id, payload) in encoded {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        in_flight.push_back(js.publish_with_headers(subject, headers, payload).await?);
        if in_flight.len() >= PUBLISH_WINDOW
            && let Some(ack) = in_flight.pop_front()
        {
            ack.await.context("publish ack")?;
        }
    }
    for ack in in_flight {
        ack.await.context("publish ack")?;
    }
    Ok(Timed::since(started, &cpu))
}

/// Step (a): a bare durable pull consumer that pulls, decodes and acknowledges all `n` messages.
async fn bare_consume(js: &jetstream::Context, settings: &Settings, n: usize) -> Result<Timed> {
    let stream = js.get_stream(&settings.jetstream.stream).await?;
    let mut config: pull::Config = consumer_config(settings);
    config.durable_name = Some(BARE_CONSUMER.into());
    config.name = Some(BARE_CONSUMER.into());
    config.description = Some("ingest_bench: bare consume + decode + ack".into());
    let cpu = cpu_snapshot();
    let started = Instant::now();
    let consumer = stream.get_or_create_consumer(BARE_CONSUMER, config).await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(settings.jetstream.pull_batch)
        .expires(Duration::from_secs(30))
        .heartbeat(Duration::from_secs(10))
        .messages()
        .await?;
    let mut seen = 0usize;
    let mut typed = 0usize;
    while seen < n {
        let message = tokio::time::timeout(Duration::from_secs(60), messages.next())
            .await
            .context("bare consumer: no message for 60 s")?
            .context("bare consumer: pull stream ended")?
            .map_err(|e| anyhow::anyhow!("bare consumer: {e}"))?;
        let event = AnalyticsEvent::decode(message.payload.as_ref()).context("bare consumer: decode")?;
        typed += usize::from(event.event_type.is_some());
        message.ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
        seen += 1;
    }
    drop(messages);
    js.client().flush().await?;
    // Done when the server has recorded every ack.
    wait_until("bare consumer acks recorded", Duration::from_secs(60), || async {
        let info = stream.consumer_info(BARE_CONSUMER).await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await?;
    let elapsed = Timed::since(started, &cpu);
    ensure!(typed == n, "bare consumer decoded {typed} typed events of {n}");
    let _ = stream.delete_consumer(BARE_CONSUMER).await;
    Ok(elapsed)
}

/// How long a step took and what CPU it used.
struct Timed {
    elapsed: Duration,
    cpu: String,
}

impl Timed {
    fn since(started: Instant, cpu_before: &[(String, u64)]) -> Self {
        let elapsed = started.elapsed();
        Self {
            elapsed,
            cpu: cpu_line(cpu_before, &cpu_snapshot(), elapsed),
        }
    }
}

/// One INSERT of `rows`, exactly as the service's sink does it.
async fn insert(client: &clickhouse::Client, rows: &[EventRow]) -> Result<()> {
    let timeout = Some(Duration::from_secs(30));
    let mut insert = client
        .insert::<EventRow>(EVENTS_TABLE)
        .await?
        .with_timeouts(timeout, timeout);
    for row in rows {
        insert.write(row).await?;
    }
    insert.end().await?;
    Ok(())
}

/// Step (b): inserts pre-built rows in batches of `batch_size`, one INSERT at a time.
async fn raw_insert(clickhouse: &ClickHouseServer, events: &[AnalyticsEvent], batch_size: usize) -> Result<Timed> {
    let server = clickhouse::Client::default()
        .with_url(clickhouse.http_url())
        .with_validation(false);
    let client = server.clone().with_database(RAW_DATABASE);
    schema::migrate(&server, &client, RAW_DATABASE).await?;
    let ingested_at = now_seconds();
    let rows: Vec<EventRow> = events
        .iter()
        .enumerate()
        .map(|(i, event)| {
            let kind = event.event_type.clone().context("sample event without a type")?;
            let subject = kind.subject();
            let origin = Origin {
                subject: &subject,
                stream: "ANALYTICS",
                stream_sequence: i as u64 + 1,
                index: 0,
                ingested_at,
            };
            Ok(to_row(event, &kind, &origin))
        })
        .collect::<Result<_>>()?;
    let cpu = cpu_snapshot();
    let started = Instant::now();
    for chunk in rows.chunks(batch_size) {
        insert(&client, chunk).await?;
    }
    let elapsed = Timed::since(started, &cpu);
    let stored = scalar(
        clickhouse,
        &format!("SELECT count() FROM {RAW_DATABASE}.{EVENTS_TABLE}"),
    )
    .await?;
    ensure!(
        stored == events.len() as u64,
        "raw insert stored {stored} rows of {}",
        events.len()
    );
    // Drop it so its background merges do not compete with step (c).
    clickhouse.query(&format!("DROP DATABASE {RAW_DATABASE}")).await?;
    Ok(elapsed)
}

async fn scalar(clickhouse: &ClickHouseServer, sql: &str) -> Result<u64> {
    let text = clickhouse.query(sql).await?;
    text.trim()
        .parse()
        .with_context(|| format!("`{sql}` answered {text:?}"))
}

/// Resident set size of `pid` in KiB, from `/proc/<pid>/status`.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// `(comm, ppid, utime + stime ticks)` of `pid`.
fn proc_stat(pid: u32) -> Option<(String, u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    // After the comm: state(3) ppid(4) … utime(14) stime(15), numbered from 1 in proc(5).
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, ppid, utime + stime))
}

/// CPU ticks used so far by this process and each of its children (nats-server, clickhouse-server, the
/// service), keyed by program name.
fn cpu_snapshot() -> Vec<(String, u64)> {
    let me = std::process::id();
    let mut out: Vec<(String, u64)> = Vec::new();
    let mut add = |name: String, ticks: u64| match out.iter_mut().find(|(n, _)| *n == name) {
        Some((_, t)) => *t += ticks,
        None => out.push((name, ticks)),
    };
    if let Some((_, _, ticks)) = proc_stat(me) {
        add("ingest_bench".into(), ticks);
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Some((comm, ppid, ticks)) = proc_stat(pid)
            && ppid == me
        {
            add(comm, ticks);
        }
    }
    out
}

/// CPU seconds each program used between two snapshots, and the wall time, as one line.
fn cpu_line(before: &[(String, u64)], after: &[(String, u64)], wall: Duration) -> String {
    let mut parts = Vec::new();
    let mut total = 0.0;
    for (name, ticks) in after {
        let start = before.iter().find(|(n, _)| n == name).map_or(0, |(_, t)| *t);
        let seconds = ticks.saturating_sub(start) as f64 / TICKS_PER_SECOND;
        if seconds > 0.0 {
            total += seconds;
            parts.push(format!("{name} {seconds:.2}"));
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    format!(
        "CPU s: {} | total {total:.2} of {:.2} available ({cores} cores x {:.2} s wall)",
        parts.join(", "),
        wall.as_secs_f64() * cores as f64,
        wall.as_secs_f64()
    )
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// What step (c) measured.
struct ServiceRun {
    /// Spawn until `count() FINAL` == N.
    total: Duration,
    /// Spawn until the first row was visible (start-up plus the first batch).
    first_rows: Duration,
    /// Spawn until half the rows were visible.
    half: Duration,
    peak_first_half_kib: u64,
    peak_second_half_kib: u64,
    peak_kib: u64,
    end_kib: u64,
    final_count: u64,
    distinct_ids: u64,
    physical_rows: u64,
    inserts: Vec<(u64, u64)>,
    consumer_idle: bool,
    cpu: String,
}

/// Removes ANSI escape sequences (the service's log is colored).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `(rows, ms)` of every "batch stored in ClickHouse" line of the service's log.
fn parse_inserts(log: &str) -> Vec<(u64, u64)> {
    log.lines()
        .filter(|l| l.contains("batch stored in ClickHouse"))
        .filter_map(|l| {
            let l = strip_ansi(l);
            let field = |name: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .and_then(|v| v.parse::<u64>().ok())
            };
            Some((field("rows=")?, field("ms=")?))
        })
        .collect()
}

/// Step (c): the real service drains the backlog.
async fn run_service(
    clickhouse: &ClickHouseServer,
    js: &jetstream::Context,
    vars: &[(String, String)],
    consumer: &str,
    n: usize,
) -> Result<ServiceRun> {
    let binary = cargo_bin("analytics_server");
    ensure!(
        binary.is_file(),
        "{} not found; build it with `cargo build --release -p analytics_server --bins`",
        binary.display()
    );
    let mut env = vars.to_vec();
    env.push(("RUST_LOG".into(), "info".into()));
    env.push(("NO_COLOR".into(), "1".into()));
    let cpu = cpu_snapshot();
    let started = Instant::now();
    let mut child = ChildProcess::spawn(&binary, Vec::<String>::new(), env).context("spawning analytics_server")?;
    let pid = child.pid();

    // RSS sampler: (time since spawn, KiB) every 100 ms until told to stop.
    let samples: Arc<Mutex<Vec<(Duration, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let samples = samples.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RSS_PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if let Some(kib) = rss_kib(pid) {
                    samples.lock().await.push((started.elapsed(), kib));
                }
            }
        })
    };

    let table = format!("{SERVICE_DATABASE}.{EVENTS_TABLE}");
    let n64 = n as u64;
    let (mut first_rows, mut half) = (None, None);
    let deadline = started + Duration::from_secs(120) + Duration::from_millis(n64 / 2);
    let total = loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "analytics_server exited early ({status}); its log:\n{}",
                child.log_contents()
            );
        }
        ensure!(
            Instant::now() < deadline,
            "analytics_server did not store {n} rows in time (have {}); end of its log:\n{}",
            scalar(clickhouse, &format!("SELECT count() FROM {table}"))
                .await
                .unwrap_or(0),
            child
                .log_contents()
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n")
        );
        // The cheap physical count first (0 until the table exists); FINAL only once it can be complete.
        let physical = scalar(clickhouse, &format!("SELECT count() FROM {table}"))
            .await
            .unwrap_or(0);
        if physical > 0 && first_rows.is_none() {
            first_rows = Some(started.elapsed());
        }
        if physical >= n64 / 2 && half.is_none() {
            half = Some(started.elapsed());
        }
        if physical >= n64 && scalar(clickhouse, &format!("SELECT count() FROM {table} FINAL")).await? == n64 {
            break started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let cpu = cpu_line(&cpu, &cpu_snapshot(), total);
    let end_kib = rss_kib(pid).unwrap_or(0);

    // The service acknowledges after each INSERT; wait (briefly) for the consumer to show nothing in flight.
    let consumer_idle = wait_until("service consumer idle", Duration::from_secs(15), || async {
        let stream = js.get_stream("ANALYTICS").await.ok()?;
        let info = stream.consumer_info(consumer).await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await
    .is_ok();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let final_count = scalar(clickhouse, &format!("SELECT count() FROM {table} FINAL")).await?;
    let distinct_ids = scalar(clickhouse, &format!("SELECT uniqExact(event_id) FROM {table}")).await?;
    let physical_rows = scalar(clickhouse, &format!("SELECT count() FROM {table}")).await?;
    let status = child.terminate(Duration::from_secs(40)).await;
    let inserts = parse_inserts(&child.log_contents());
    if let Err(e) = status {
        eprintln!("warning: stopping analytics_server: {e:#}");
    }

    let half = half.unwrap_or(total);
    let samples = samples.lock().await;
    let peak = |from: Duration, to: Duration| {
        samples
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|(_, kib)| *kib)
            .max()
            .unwrap_or(0)
    };
    Ok(ServiceRun {
        total,
        first_rows: first_rows.unwrap_or(total),
        half,
        peak_first_half_kib: peak(Duration::ZERO, half),
        peak_second_half_kib: peak(half, total),
        peak_kib: peak(Duration::ZERO, Duration::MAX),
        end_kib,
        final_count,
        distinct_ids,
        physical_rows,
        inserts,
        consumer_idle,
        cpu,
    })
}

async fn run() -> Result<bool> {
    let args = Args::parse()?;
    let n = args.events;
    let wall = Instant::now();
    println!(
        "ingest_bench: {n} events, batch_size {}, pull_batch {}, max_ack_pending {} ({} build)",
        args.batch_size,
        args.pull_batch,
        args.max_ack_pending,
        if cfg!(debug_assertions) { "DEBUG" } else { "release" }
    );
    if cfg!(debug_assertions) {
        println!("warning: debug build; run with --release for meaningful figures");
    }
    if args.build {
        build_service_binary()?;
    }

    println!("[1/5] starting private nats-server and clickhouse-server");
    let (nats, clickhouse) = tokio::join!(NatsServer::start(), ClickHouseServer::start());
    let nats = nats.context("nats-server starts")?;
    let clickhouse = clickhouse.context("clickhouse-server starts")?;
    let version = clickhouse.query("SELECT version()").await?;
    println!(
        "  NATS {} | ClickHouse {} at {}",
        nats.url(),
        version.trim(),
        clickhouse.http_url()
    );

    let vars: Vec<(String, String)> = vec![
        ("ANALYTICS__SERVER__HOST".into(), "127.0.0.1".into()),
        ("ANALYTICS__SERVER__PORT".into(), free_port().to_string()),
        ("ANALYTICS__INTEGRATIONS__MESSAGING__NATS_URL".into(), nats.url()),
        ("ANALYTICS__CLICKHOUSE__URL".into(), clickhouse.http_url()),
        ("ANALYTICS__CLICKHOUSE__DATABASE".into(), SERVICE_DATABASE.into()),
        ("ANALYTICS__BATCH_SIZE".into(), args.batch_size.to_string()),
        (
            "ANALYTICS__JETSTREAM__MAX_ACK_PENDING".into(),
            args.max_ack_pending.to_string(),
        ),
        ("ANALYTICS__JETSTREAM__PULL_BATCH".into(), args.pull_batch.to_string()),
        ("ANALYTICS__FLUSH_INTERVAL_SECONDS".into(), "1".into()),
    ];
    let settings = Settings::load(None, vars.clone()).context("service settings")?;

    let client = async_nats::connect(nats.url()).await?;
    let js = jetstream::new(client.clone());
    ensure_stream(&js, &settings).await?;

    println!("[2/5] publishing {n} events into {}", settings.jetstream.stream);
    let events = make_events(n);
    let published = publish(&js, &events).await?;
    let publish_time = published.elapsed;
    let stored = js
        .get_stream(&settings.jetstream.stream)
        .await?
        .info()
        .await?
        .state
        .messages;
    ensure!(stored == n as u64, "stream holds {stored} messages, expected {n}");
    let publish_rate = rate(n, publish_time);
    println!(
        "  published in {:.2} s: {} events/s",
        publish_time.as_secs_f64(),
        fmt_rate(publish_rate)
    );
    println!("  {}", published.cpu);

    println!("[3/5] (a) bare JetStream consumer: pull + decode + ack");
    let bare = bare_consume(&js, &settings, n).await?;
    let bare_rate = rate(n, bare.elapsed);
    println!(
        "  {:.2} s: {} events/s",
        bare.elapsed.as_secs_f64(),
        fmt_rate(bare_rate)
    );
    println!("  {}", bare.cpu);

    println!(
        "[4/5] (b) raw ClickHouse INSERT of pre-built rows, {} per INSERT",
        args.batch_size
    );
    let raw = raw_insert(&clickhouse, &events, args.batch_size).await?;
    let raw_rate = rate(n, raw.elapsed);
    println!("  {:.2} s: {} rows/s", raw.elapsed.as_secs_f64(), fmt_rate(raw_rate));
    println!("  {}", raw.cpu);
    drop(events);

    println!("[5/5] (c) analytics_server binary drains the backlog");
    let svc = run_service(&clickhouse, &js, &vars, &settings.jetstream.consumer, n).await?;
    let svc_rate = rate(n, svc.total);
    let drain_rate = rate(n, svc.total.saturating_sub(svc.first_rows));
    println!("  {:.2} s: {} events/s", svc.total.as_secs_f64(), fmt_rate(svc_rate));
    println!("  {}", svc.cpu);

    let ratio_a = svc_rate / bare_rate;
    let ratio_b = svc_rate / raw_rate;
    let exactly_once = svc.final_count == n as u64 && svc.distinct_ids == n as u64;
    let insert_ms: u64 = svc.inserts.iter().map(|(_, ms)| ms).sum();
    let insert_rows: u64 = svc.inserts.iter().map(|(rows, _)| rows).sum();

    println!();
    println!("================ ingest_bench summary ({n} events) ================");
    println!(
        "publish (JetStream, acked)            {:>12} events/s",
        fmt_rate(publish_rate)
    );
    println!(
        "(a) bare consume+decode+ack           {:>12} events/s",
        fmt_rate(bare_rate)
    );
    println!(
        "(b) raw ClickHouse INSERT             {:>12} rows/s",
        fmt_rate(raw_rate)
    );
    println!(
        "(c) analytics_server drain            {:>12} events/s",
        fmt_rate(svc_rate)
    );
    println!(
        "    (c) after its first rows landed    {:>12} events/s  (start-up + first batch {:.2} s)",
        fmt_rate(drain_rate),
        svc.first_rows.as_secs_f64()
    );
    println!(
        "    service INSERTs                    {:>12} in {} ms total ({} rows/s while inserting)",
        svc.inserts.len(),
        insert_ms,
        fmt_rate(insert_rows as f64 * 1000.0 / (insert_ms.max(1) as f64))
    );
    println!(
        "ratio c/a                              {:>12.2}  (target >= {TARGET_RATIO})",
        ratio_a
    );
    println!("ratio c/b                              {:>12.2}", ratio_b);
    println!("ingester peak RSS                      {:>12.1} MiB", mib(svc.peak_kib));
    println!(
        "    peak until half drained ({:>5.1} s) {:>12.1} MiB",
        svc.half.as_secs_f64(),
        mib(svc.peak_first_half_kib)
    );
    println!(
        "    peak in the second half            {:>12.1} MiB",
        mib(svc.peak_second_half_kib)
    );
    println!("    RSS when drained                   {:>12.1} MiB", mib(svc.end_kib));
    println!(
        "exactly once                           {:>12}  (FINAL count {}, uniqExact(event_id) {}, physical rows {}, \
         consumer idle: {})",
        if exactly_once { "OK" } else { "VIOLATED" },
        svc.final_count,
        svc.distinct_ids,
        svc.physical_rows,
        svc.consumer_idle
    );
    println!(
        "wall time                              {:>12.1} s",
        wall.elapsed().as_secs_f64()
    );
    if ratio_a >= TARGET_RATIO {
        println!("TARGET MET: c/a = {ratio_a:.2} >= {TARGET_RATIO}");
    } else {
        println!("TARGET MISSED: c/a = {ratio_a:.2} < {TARGET_RATIO}");
    }
    if !exactly_once {
        eprintln!(
            "EXACTLY-ONCE VIOLATED: expected {n}, FINAL count {}, uniqExact(event_id) {}",
            svc.final_count, svc.distinct_ids
        );
    }
    Ok(exactly_once)
}
