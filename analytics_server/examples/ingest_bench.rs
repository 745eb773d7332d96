//! Ingest throughput benchmark of `analytics_server`, against private NATS (JetStream) and ClickHouse servers.
//!
//! ```text
//! cargo run --release -p analytics_server --example ingest_bench                    # 200 000 events
//! cargo run --release -p analytics_server --example ingest_bench -- --events 20000  # quick run
//! ```
//!
//! Options:
//! * `--events N` — backlog size (default 200000);
//! * `--rounds K` — how many times (a), (b) and (c) are measured; the summary uses the medians (default 3);
//! * `--batch-size N` — rows per INSERT, of the service and of (b) (default 10000);
//! * `--pull-batch N` — messages per pull request, of the service and of (a) (default 2000);
//! * `--max-ack-pending N` — of the service's consumer and of (a)'s (default 40000);
//! * `--service-env KEY=VALUE` — repeatable: more environment for the service (another `ANALYTICS__…` key,
//!   `LD_PRELOAD`, …), applied last;
//! * `--drop-between-steps` — drop each step's database as soon as the step is done, as the bench did before
//!   2026-11-29, instead of keeping it to the end of the run (see [`retire_database`]);
//! * `--no-build` — do not run `cargo build` for the service binary first.
//!
//! One run:
//! 1. starts a private nats-server (JetStream) and clickhouse-server (18.16) via `test_support`;
//! 2. publishes N events (every sample kind in turn, unique UUIDv7 ids, `Nats-Msg-Id` set) into the `ANALYTICS`
//!    stream, which becomes the backlog; the publish rate is informational;
//! 3. then, per round:
//!    * (a) drains the backlog with a bare durable pull consumer (`bench_bare_<round>`, the service's consumer
//!      settings): pull, prost-decode, ack — what JetStream delivers on this machine;
//!    * (b) inserts N pre-built [`EventRow`]s into a scratch database made by [`schema::migrate`], `batch_size`
//!      rows per INSERT, one INSERT at a time like the service's sink — what ClickHouse accepts;
//!    * (c) starts the real `analytics_server` release binary against the same backlog (a durable consumer of its
//!      own, `analytics_server` in round 1, that starts at the beginning of the stream; a fresh database) and
//!      times it until `count() FINAL` is N, sampling its RSS every 100 ms; then checks exactly-once:
//!      `count() FINAL` and `uniqExact(event_id)` must both be N. (c) is timed, like (a), from the moment its
//!      consumer exists (polled every 5 ms): (a) runs on a client connected before its clock starts, so the
//!      service's process start-up (exec, configuration, NATS and ClickHouse connections, schema migration)
//!      is measured and printed apart, with the rate that includes it;
//! 4. prints a summary: publish rate, (a), (b), (c), c/a (target ≥ 0.8), c/b, the ingester's peak RSS (until
//!    half the backlog was stored, after, at the end), and the CPU each program used in each step — on a small
//!    machine NATS, ClickHouse and the service share the cores, which is what bounds (c).
//!
//! The exit status is 0 when the throughput target is missed (it is a measurement; the summary says
//! `TARGET MISSED`), and 1 when exactly-once is violated or a step fails.
//!
//! `cargo run --example` does not build the package's binaries, so before step 1 the benchmark runs
//! `cargo build [--release] -p analytics_server --bin analytics_server --example ingest_bench` itself (a no-op
//! when up to date; it may wait for the shared target directory's lock while other builds run).

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
use test_support::cpu::{CpuSnapshot, CpuUse, Timed};
use test_support::{ChildProcess, ClickHouseServer, NatsServer, cargo_bin, free_port, wait_until};
use tokio::sync::Mutex;
use uuid::Uuid;

/// Un-awaited publish acks allowed in flight (async-nats stalls at 5000).
const PUBLISH_WINDOW: usize = 2_000;
/// The throughput target: the service drains at least this fraction of the bare consumer's rate.
const TARGET_RATIO: f64 = 0.8;
/// RSS sampling period.
const RSS_PERIOD: Duration = Duration::from_millis(100);
/// Share of the machine's CPU used by processes outside this benchmark above which a step's figure is flagged.
const NOISE_SHARE: f64 = 0.10;

/// Command-line options (the file's header says more).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "ingest_bench",
    about = "Ingest throughput of analytics_server against its raw limits"
)]
struct Args {
    /// Backlog size.
    #[arg(long, default_value_t = 200_000, value_parser = test_support::bench_args::at_least_one())]
    events: usize,
    /// How many times (a), (b) and (c) are measured; the summary uses the medians.
    #[arg(long, default_value_t = 3, value_parser = test_support::bench_args::at_least_one())]
    rounds: usize,
    /// Rows per INSERT, of the service and of (b).
    #[arg(long, default_value_t = 10_000, value_parser = test_support::bench_args::at_least_one())]
    batch_size: usize,
    /// Messages per pull request, of the service and of (a).
    #[arg(long, default_value_t = 2_000, value_parser = test_support::bench_args::at_least_one())]
    pull_batch: usize,
    /// Of the service's consumer and of (a)'s.
    #[arg(long, default_value_t = 40_000, value_parser = test_support::bench_args::at_least_one())]
    max_ack_pending: usize,
    /// Do not run `cargo build` for the service binary first.
    #[arg(long = "no-build", action = clap::ArgAction::SetFalse)]
    build: bool,
    /// Drop each step's database as soon as the step is done, instead of keeping it to the end of the run.
    #[arg(long)]
    drop_between_steps: bool,
    /// More environment for the service (another `ANALYTICS__…` key, `LD_PRELOAD`, …), applied last; repeatable.
    #[arg(long = "service-env", value_name = "KEY=VALUE", value_parser = key_value)]
    service_env: Vec<(String, String)>,
}

fn key_value(pair: &str) -> std::result::Result<(String, String), String> {
    let (key, value) = pair.split_once('=').ok_or("needs KEY=VALUE")?;
    Ok((key.to_owned(), value.to_owned()))
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
    let digits = (r.round() as u64).to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        len if len % 2 == 1 => v[len / 2],
        len => (v[len / 2 - 1] + v[len / 2]) / 2.0,
    }
}

fn now_seconds() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
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
    println!("building the service binary: cargo build --release -p analytics_server --bin analytics_server …");
    let started = Instant::now();
    let status = command.status().context("running cargo build")?;
    ensure!(status.success(), "cargo build of analytics_server failed ({status})");
    println!("  service binary ready in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Backlog

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
    let cpu = CpuSnapshot::take();
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

// ---------------------------------------------------------------------------------------------------------------
// (a) bare consumer

/// A bare durable pull consumer named `name` (the service's consumer settings) that pulls, decodes and
/// acknowledges all `n` messages; done when the server has recorded every ack.
async fn bare_consume(js: &jetstream::Context, settings: &Settings, n: usize, name: &str) -> Result<Timed> {
    let stream = js.get_stream(&settings.jetstream.stream).await?;
    let mut config: pull::Config = consumer_config(settings);
    config.durable_name = Some(name.into());
    config.name = Some(name.into());
    config.description = Some("ingest_bench: bare consume + decode + ack".into());
    let cpu = CpuSnapshot::take();
    let started = Instant::now();
    let consumer = stream.get_or_create_consumer(name, config).await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(settings.jetstream.pull_batch)
        .expires(Duration::from_secs(30))
        .heartbeat(Duration::from_secs(10))
        .messages()
        .await?;
    let mut typed = 0usize;
    for _ in 0..n {
        let message = tokio::time::timeout(Duration::from_secs(60), messages.next())
            .await
            .context("bare consumer: no message for 60 s")?
            .context("bare consumer: pull stream ended")?
            .map_err(|e| anyhow::anyhow!("bare consumer: {e}"))?;
        let event = AnalyticsEvent::decode(message.payload.as_ref()).context("bare consumer: decode")?;
        typed += usize::from(event.event_type.is_some());
        message
            .ack()
            .await
            .map_err(|e| anyhow::anyhow!("bare consumer: ack: {e}"))?;
    }
    drop(messages);
    js.client().flush().await?;
    wait_until("bare consumer acks recorded", Duration::from_secs(60), || async {
        let info = stream.consumer_info(name).await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await?;
    let timed = Timed::since(started, &cpu);
    ensure!(typed == n, "bare consumer decoded {typed} typed events of {n}");
    let _ = stream.delete_consumer(name).await;
    Ok(timed)
}

// ---------------------------------------------------------------------------------------------------------------
// (b) raw ClickHouse inserts

/// Builds the rows the service would build: prost decode + [`to_row`], on one thread, timed (informational: the
/// CPU cost of the service's pipeline per event, without NATS).
fn build_rows(events: &[AnalyticsEvent]) -> Result<(Vec<EventRow>, Duration)> {
    let encoded: Vec<(String, Vec<u8>)> = events
        .iter()
        .map(|e| Ok((e.subject().context("sample event without a type")?, e.encode_to_vec())))
        .collect::<Result<_>>()?;
    let ingested_at = now_seconds();
    let started = Instant::now();
    let rows = encoded
        .iter()
        .enumerate()
        .map(|(i, (subject, payload))| {
            let event = AnalyticsEvent::decode(payload.as_slice())?;
            let kind = event.event_type.context("sample event without a type")?;
            let origin = Origin {
                subject,
                stream: "ANALYTICS",
                stream_sequence: i as u64 + 1,
                published_ns: 0,
                index: 0,
                ingested_at,
                redrive_of: None,
            };
            Ok(to_row(event.context, &kind, &origin))
        })
        .collect::<Result<_>>()?;
    Ok((rows, started.elapsed()))
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

/// Inserts `rows` into the scratch database `database`, `batch_size` rows per INSERT, one INSERT at a time.
async fn raw_insert(
    clickhouse: &ClickHouseServer,
    settings: &Settings,
    rows: &[EventRow],
    database: &str,
    drop: bool,
) -> Result<Timed> {
    let batch_size = settings.batch_size;
    // The service's compression, so (b) and (c) send the same bytes.
    let server = clickhouse::Client::default()
        .with_url(clickhouse.http_url())
        .with_compression(settings.clickhouse.compression.into())
        .with_validation(false);
    let client = server.clone().with_database(database);
    schema::migrate(&server, &client, database).await?;
    let cpu = CpuSnapshot::take();
    let started = Instant::now();
    for chunk in rows.chunks(batch_size) {
        insert(&client, chunk).await?;
    }
    let timed = Timed::since(started, &cpu);
    let stored = scalar(clickhouse, &format!("SELECT count() FROM {database}.{EVENTS_TABLE}")).await?;
    ensure!(
        stored == rows.len() as u64,
        "raw insert stored {stored} rows of {}",
        rows.len()
    );
    retire_database(clickhouse, database, drop).await?;
    Ok(timed)
}

/// Gets the scratch database `database` of a finished step out of the next step's way.
///
/// By default the database stays until the private server is removed at the end of the run, and this waits
/// until ClickHouse has no merge of it running (3 looks in a row, 100 ms apart). Dropping it instead
/// (`--drop-between-steps`, what the bench did before 2026-11-29) deletes some 2,000 files right before the
/// next step, as ClickHouse 18.16 writes two files per column of each part; and on ext4 without a journal the
/// kernel then checks every inode it considers for a new file for a recent deletion (minutes, while its inode
/// table block is not written back; `recently_deleted`), which made (c) pay for (b)'s clean-up. A production
/// server deletes merged-away parts only `old_parts_lifetime` (8 min) after the merge, a few at a time, not a
/// whole table at once.
async fn retire_database(clickhouse: &ClickHouseServer, database: &str, drop: bool) -> Result<()> {
    if drop {
        clickhouse.query(&format!("DROP DATABASE {database}")).await?;
        return Ok(());
    }
    let sql = format!("SELECT count() FROM system.merges WHERE database = '{database}'");
    let mut idle_looks = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    while idle_looks < 3 {
        ensure!(
            Instant::now() < deadline,
            "merges of {database} still running after 300 s"
        );
        idle_looks = if scalar(clickhouse, &sql).await? == 0 {
            idle_looks + 1
        } else {
            0
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn scalar(clickhouse: &ClickHouseServer, sql: &str) -> Result<u64> {
    let text = clickhouse.query(sql).await?;
    text.trim()
        .parse()
        .with_context(|| format!("`{sql}` answered {text:?}"))
}

// ---------------------------------------------------------------------------------------------------------------
// (c) the service

/// The type and device of the file system holding `path`, from `/proc/mounts` (the longest mount point above it).
fn filesystem_of(path: &std::path::Path) -> Option<String> {
    let path = std::fs::canonicalize(path).ok()?;
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (device, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            path.starts_with(point)
                .then(|| (point.len(), format!("{kind} on {device}")))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, described)| described)
}

/// Resident set size of `pid` in KiB, from `/proc/<pid>/status`.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// What step (c) measured.
struct ServiceRun {
    /// Spawn until `count() FINAL` == N.
    total: Duration,
    /// Spawn until the service's consumer existed: its start-up, which (a) has no equivalent of.
    startup: Duration,
    /// Spawn until the first rows were visible (start-up plus the first batch).
    first_rows: Duration,
    /// Spawn until half the rows were visible.
    half: Duration,
    peak_first_half_kib: u64,
    peak_second_half_kib: u64,
    end_kib: u64,
    final_count: u64,
    distinct_ids: u64,
    physical_rows: u64,
    /// `(rows, ms)` of each INSERT, from the service's log.
    inserts: Vec<(u64, u64)>,
    consumer_idle: bool,
    /// Highest `num_ack_pending` of the service's consumer seen while draining (sampled about once a second).
    max_ack_pending_seen: usize,
    cpu: CpuUse,
}

impl ServiceRun {
    fn peak_kib(&self) -> u64 {
        self.peak_first_half_kib.max(self.peak_second_half_kib)
    }

    fn exactly_once(&self, n: usize) -> bool {
        self.final_count == n as u64 && self.distinct_ids == n as u64
    }
}

/// Removes ANSI escape sequences (in case the service's log is colored).
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

/// Starts the service binary with `vars` (its consumer `consumer` and database `database`), times it until
/// `count() FINAL` of `database` is `n`, then checks exactly-once and stops it.
async fn run_service(
    clickhouse: &ClickHouseServer,
    js: &jetstream::Context,
    vars: &[(String, String)],
    consumer: &str,
    database: &str,
    n: usize,
    drop: bool,
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
    let cpu = CpuSnapshot::take();
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

    let table = format!("{database}.{EVENTS_TABLE}");
    let stream = js.get_stream("ANALYTICS").await?;
    let startup = loop {
        if stream.consumer_info(consumer).await.is_ok() {
            break started.elapsed();
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "analytics_server exited early ({status}); its log:\n{}",
                child.log_contents()
            );
        }
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "analytics_server created no consumer {consumer} in 60 s; its log:\n{}",
            child.log_contents()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let (mut max_ack_pending_seen, mut polls) = (0, 0u64);
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
        if Instant::now() >= deadline {
            let have = scalar(clickhouse, &format!("SELECT count() FROM {table}"))
                .await
                .unwrap_or(0);
            let log = child.log_contents();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            bail!(
                "analytics_server did not store {n} rows in time (have {have}); end of its log:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        // Progress is read from the service's own log (one line per INSERT), not by querying ClickHouse: polled
        // queries are ClickHouse work that the measured INSERTs would compete with. ClickHouse is asked only once
        // the log says every row could be in (`count() FINAL`, which also ignores re-inserted rows).
        let stored: u64 = parse_inserts(&child.log_contents()).iter().map(|(rows, _)| rows).sum();
        if stored > 0 && first_rows.is_none() {
            first_rows = Some(started.elapsed());
        }
        if stored >= n64 / 2 && half.is_none() {
            half = Some(started.elapsed());
        }
        // Consumer info once a second: NATS (2.9) counts a filtered consumer's pending messages by walking the
        // stream, and every 100 ms that took NATS CPU from (c) (4.97-5.85 CPU s instead of 6.2-7.8 per 200k).
        polls += 1;
        if polls % 100 == 0
            && let Ok(info) = stream.consumer_info(consumer).await
        {
            max_ack_pending_seen = max_ack_pending_seen.max(info.num_ack_pending);
        }
        if stored >= n64 && scalar(clickhouse, &format!("SELECT count() FROM {table} FINAL")).await? == n64 {
            break started.elapsed();
        }
        // Often enough that noticing the end adds little to (c) (a's end is noticed within milliseconds).
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let cpu = CpuUse::between(&cpu, &CpuSnapshot::take(), total);
    let end_kib = rss_kib(pid).unwrap_or(0);

    // The service acknowledges after each INSERT: its consumer should show nothing pending shortly after.
    let consumer_idle = wait_until("service consumer idle", Duration::from_secs(15), || async {
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
    if let Err(e) = child.terminate(Duration::from_secs(40)).await {
        eprintln!("warning: stopping analytics_server: {e:#}");
    }
    let inserts = parse_inserts(&child.log_contents());
    retire_database(clickhouse, database, drop).await?;

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
        startup,
        first_rows: first_rows.unwrap_or(total),
        half,
        peak_first_half_kib: peak(Duration::ZERO, half),
        peak_second_half_kib: peak(half, total),
        end_kib,
        final_count,
        distinct_ids,
        physical_rows,
        inserts,
        consumer_idle,
        max_ack_pending_seen,
        cpu,
    })
}

// ---------------------------------------------------------------------------------------------------------------
// The run

/// One round's measurements.
struct Round {
    bare: Timed,
    raw: Timed,
    service: ServiceRun,
}

impl Round {
    fn bare_rate(&self, n: usize) -> f64 {
        rate(n, self.bare.elapsed)
    }

    fn raw_rate(&self, n: usize) -> f64 {
        rate(n, self.raw.elapsed)
    }

    /// (c) from its consumer's creation, as (a) is timed.
    fn service_rate(&self, n: usize) -> f64 {
        rate(n, self.service.total.saturating_sub(self.service.startup))
    }

    /// (c) from spawn: with the process start-up.
    fn service_rate_with_startup(&self, n: usize) -> f64 {
        rate(n, self.service.total)
    }
}

/// `(vars, consumer, database)` of the service in round `round` (0-based): a fresh durable consumer (the
/// configured one in the first round) and a fresh database, so every round drains the whole backlog.
fn round_service_env(
    base: &[(String, String)],
    settings: &Settings,
    round: usize,
) -> (Vec<(String, String)>, String, String) {
    let consumer = match round {
        0 => settings.jetstream.consumer.clone(),
        r => format!("{}_{}", settings.jetstream.consumer, r + 1),
    };
    let database = format!("bench_service_{}", round + 1);
    let mut vars = base.to_vec();
    let set = |vars: &mut Vec<(String, String)>, key: &str, value: String| {
        vars.retain(|(k, _)| k != key);
        vars.push((key.to_owned(), value));
    };
    set(&mut vars, "ANALYTICS__JETSTREAM__CONSUMER", consumer.clone());
    set(&mut vars, "ANALYTICS__CLICKHOUSE__DATABASE", database.clone());
    set(&mut vars, "ANALYTICS__SERVER__PORT", free_port().to_string());
    (vars, consumer, database)
}

async fn run() -> Result<bool> {
    let mut args = <Args as clap::Parser>::parse();
    let n = args.events;
    let wall = Instant::now();
    println!(
        "ingest_bench: {n} events, {} round(s), batch_size {}, pull_batch {}, max_ack_pending {} ({} build)",
        args.rounds,
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

    let data = std::env::temp_dir();
    println!(
        "[1] starting private nats-server and clickhouse-server, their data under {} ({}; TMPDIR moves it)",
        data.display(),
        filesystem_of(&data).unwrap_or_else(|| "file system unknown".into())
    );
    let (nats, clickhouse) = tokio::join!(NatsServer::start(), ClickHouseServer::start());
    let nats = nats.context("nats-server starts")?;
    let clickhouse = clickhouse.context("clickhouse-server starts")?;
    let version = clickhouse.query("SELECT version()").await?;
    println!(
        "    NATS {} | ClickHouse {} at {}",
        nats.url(),
        version.trim(),
        clickhouse.http_url()
    );

    let mut vars: Vec<(String, String)> = vec![
        ("ANALYTICS__SERVER__HOST".into(), "127.0.0.1".into()),
        ("ANALYTICS__SERVER__PORT".into(), free_port().to_string()),
        ("ANALYTICS__INTEGRATIONS__MESSAGING__NATS_URL".into(), nats.url()),
        ("ANALYTICS__CLICKHOUSE__URL".into(), clickhouse.http_url()),
        ("ANALYTICS__CLICKHOUSE__DATABASE".into(), "bench_service_1".into()),
        ("ANALYTICS__BATCH_SIZE".into(), args.batch_size.to_string()),
        (
            "ANALYTICS__JETSTREAM__MAX_ACK_PENDING".into(),
            args.max_ack_pending.to_string(),
        ),
        ("ANALYTICS__JETSTREAM__PULL_BATCH".into(), args.pull_batch.to_string()),
        // `flush_interval_seconds` stays the shipped one: the backlog's last, partial batch goes once the
        // backlog has drained, not after the interval (`Batch::note_pending`).
    ];
    for (key, value) in &args.service_env {
        vars.retain(|(k, _)| k != key);
        vars.push((key.clone(), value.clone()));
        println!("    service environment: {key}={value}");
    }
    let settings = Settings::load(None, vars.clone()).context("service settings")?;
    // `--service-env` may have overridden these.
    args.batch_size = settings.batch_size;
    args.pull_batch = settings.jetstream.pull_batch;
    args.max_ack_pending = settings.jetstream.max_ack_pending;

    let client = async_nats::connect(nats.url()).await?;
    let js = jetstream::new(client.clone());
    ensure_stream(&js, &settings).await?;

    println!("[2] publishing {n} events into {}", settings.jetstream.stream);
    let events = make_events(n);
    let published = publish(&js, &events).await?;
    let stored = js
        .get_stream(&settings.jetstream.stream)
        .await?
        .info()
        .await?
        .state
        .messages;
    ensure!(stored == n as u64, "stream holds {stored} messages, expected {n}");
    let publish_rate = rate(n, published.elapsed);
    println!(
        "    {:.2} s: {} events/s",
        published.elapsed.as_secs_f64(),
        fmt_rate(publish_rate)
    );
    println!("    {}", published.cpu.line());
    let (rows, build_time) = build_rows(&events)?;
    drop(events);
    let build_rate = rate(n, build_time);

    let mut rounds: Vec<Round> = Vec::new();
    for round in 0..args.rounds {
        let tag = format!("[3.{}]", round + 1);
        println!("{tag} (a) bare JetStream consumer: pull + decode + ack");
        let bare = bare_consume(&js, &settings, n, &format!("bench_bare_{}", round + 1)).await?;
        println!(
            "      {:.2} s: {} events/s",
            bare.elapsed.as_secs_f64(),
            fmt_rate(rate(n, bare.elapsed))
        );
        println!("      {}", bare.cpu.line());

        println!("{tag} (b) raw ClickHouse INSERT, {} rows per INSERT", args.batch_size);
        let raw = raw_insert(
            &clickhouse,
            &settings,
            &rows,
            &format!("bench_raw_{}", round + 1),
            args.drop_between_steps,
        )
        .await?;
        println!(
            "      {:.2} s: {} rows/s",
            raw.elapsed.as_secs_f64(),
            fmt_rate(rate(n, raw.elapsed))
        );
        println!("      {}", raw.cpu.line());

        let (round_vars, consumer, database) = round_service_env(&vars, &settings, round);
        println!("{tag} (c) analytics_server binary drains the backlog (consumer {consumer}, database {database})");
        let service = run_service(
            &clickhouse,
            &js,
            &round_vars,
            &consumer,
            &database,
            n,
            args.drop_between_steps,
        )
        .await?;
        let insert_ms: u64 = service.inserts.iter().map(|(_, ms)| ms).sum();
        println!(
            "      {:.2} s: {} events/s | start-up {:.2} s (then {} events/s) | first rows after {:.2} s, half after \
             {:.2} s | {} INSERTs took {} ms | \
             peak RSS {:.1} MiB (first half {:.1}, second half {:.1}, drained {:.1}) | max ack pending seen {} \
             | exactly once: {}",
            service.total.as_secs_f64(),
            fmt_rate(rate(n, service.total)),
            service.startup.as_secs_f64(),
            fmt_rate(rate(n, service.total.saturating_sub(service.startup))),
            service.first_rows.as_secs_f64(),
            service.half.as_secs_f64(),
            service.inserts.len(),
            insert_ms,
            mib(service.peak_kib()),
            mib(service.peak_first_half_kib),
            mib(service.peak_second_half_kib),
            mib(service.end_kib),
            service.max_ack_pending_seen,
            if service.exactly_once(n) { "OK" } else { "VIOLATED" }
        );
        println!("      {}", service.cpu.line());
        rounds.push(Round { bare, raw, service });
    }

    print_summary(&args, publish_rate, build_rate, &rounds, wall.elapsed());
    Ok(rounds.iter().all(|r| r.service.exactly_once(n)))
}

fn print_summary(args: &Args, publish_rate: f64, build_rate: f64, rounds: &[Round], wall: Duration) {
    let n = args.events;
    let bare: Vec<f64> = rounds.iter().map(|r| r.bare_rate(n)).collect();
    let raw: Vec<f64> = rounds.iter().map(|r| r.raw_rate(n)).collect();
    let service: Vec<f64> = rounds.iter().map(|r| r.service_rate(n)).collect();
    let with_startup: Vec<f64> = rounds.iter().map(|r| r.service_rate_with_startup(n)).collect();
    let startup: Vec<f64> = rounds.iter().map(|r| r.service.startup.as_secs_f64()).collect();
    let ratios_a: Vec<f64> = rounds.iter().map(|r| r.service_rate(n) / r.bare_rate(n)).collect();
    let (a, b, c) = (median(&bare), median(&raw), median(&service));
    let ratio_a = c / a;
    let ratio_b = c / b;
    let each = |values: &[f64]| values.iter().map(|v| fmt_rate(*v)).collect::<Vec<_>>().join(" / ");
    let drain: Vec<f64> = rounds
        .iter()
        .map(|r| rate(n, r.service.total.saturating_sub(r.service.first_rows)))
        .collect();
    let insert_share: Vec<f64> = rounds
        .iter()
        .map(|r| {
            let ms: u64 = r.service.inserts.iter().map(|(_, ms)| ms).sum();
            ms as f64 / 1000.0 / r.service.total.as_secs_f64().max(1e-9)
        })
        .collect();
    let cpu_ratio: Vec<f64> = rounds
        .iter()
        .map(|r| r.service.cpu.ours / r.bare.cpu.ours.max(1e-9))
        .collect();
    let peak = rounds.iter().map(|r| r.service.peak_kib()).max().unwrap_or(0);
    let first_half = rounds.iter().map(|r| r.service.peak_first_half_kib).max().unwrap_or(0);
    let second_half = rounds.iter().map(|r| r.service.peak_second_half_kib).max().unwrap_or(0);
    let drained = rounds.iter().map(|r| r.service.end_kib).max().unwrap_or(0);
    let all_once = rounds.iter().all(|r| r.service.exactly_once(n));

    println!();
    println!(
        "======== ingest_bench summary: {n} events, {} round(s), batch_size {}, pull_batch {}, max_ack_pending {} \
         ========",
        rounds.len(),
        args.batch_size,
        args.pull_batch,
        args.max_ack_pending
    );
    println!("                                              median    (each round)");
    println!(
        "publish, JetStream-acked           {:>12} events/s",
        fmt_rate(publish_rate)
    );
    println!(
        "(a) bare consume + decode + ack    {:>12} events/s  ({})",
        fmt_rate(a),
        each(&bare)
    );
    println!(
        "(b) raw ClickHouse INSERT          {:>12} rows/s    ({})",
        fmt_rate(b),
        each(&raw)
    );
    println!(
        "(c) analytics_server drain         {:>12} events/s  ({}; from its consumer's creation, as (a))",
        fmt_rate(c),
        each(&service)
    );
    println!(
        "    (c) with process start-up      {:>12} events/s  ({}; start-up {} s)",
        fmt_rate(median(&with_startup)),
        each(&with_startup),
        startup
            .iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    println!(
        "    (c) after its first rows       {:>12} events/s  ({}; start-up + first batch excluded)",
        fmt_rate(median(&drain)),
        each(&drain)
    );
    println!(
        "    decode + to_row, 1 thread      {:>12} events/s  (informational, no NATS)",
        fmt_rate(build_rate)
    );
    println!(
        "    share of (c) inside INSERTs    {:>12.0} %       ({})",
        100.0 * median(&insert_share),
        insert_share
            .iter()
            .map(|s| format!("{:.0} %", 100.0 * s))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    println!(
        "    CPU s of (c) / CPU s of (a)    {:>12.2}         ({})",
        median(&cpu_ratio),
        cpu_ratio
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    println!(
        "ratio c/a                          {:>12.2}          ({}; target >= {TARGET_RATIO})",
        ratio_a,
        ratios_a
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    println!("ratio c/b                          {:>12.2}", ratio_b);
    let ack_seen = rounds.iter().map(|r| r.service.max_ack_pending_seen).max().unwrap_or(0);
    println!(
        "service consumer's ack pending    {:>12}  of max_ack_pending {}{}",
        ack_seen,
        args.max_ack_pending,
        if ack_seen >= args.max_ack_pending {
            " — reached: JetStream stopped delivering until INSERTs were acknowledged"
        } else {
            ""
        }
    );
    println!("ingester peak RSS                  {:>12.1} MiB", mib(peak));
    println!("    until half the backlog stored  {:>12.1} MiB", mib(first_half));
    println!("    in the second half             {:>12.1} MiB", mib(second_half));
    println!("    when drained                   {:>12.1} MiB", mib(drained));
    for (i, r) in rounds.iter().enumerate() {
        println!(
            "exactly once, round {}             {:>12}  (count() FINAL {}, uniqExact(event_id) {}, physical rows {}, \
             consumer idle {})",
            i + 1,
            if r.service.exactly_once(n) { "OK" } else { "VIOLATED" },
            r.service.final_count,
            r.service.distinct_ids,
            r.service.physical_rows,
            r.service.consumer_idle
        );
    }
    println!("wall time                          {:>12.1} s", wall.as_secs_f64());
    let noisy: Vec<String> = rounds
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            [("a", &r.bare.cpu), ("b", &r.raw.cpu), ("c", &r.service.cpu)]
                .into_iter()
                .filter(|(_, cpu)| cpu.noise() > NOISE_SHARE)
                .map(move |(step, cpu)| format!("round {} ({step}) {:.0} %", i + 1, 100.0 * cpu.noise()))
        })
        .collect();
    if !noisy.is_empty() {
        println!(
            "NOTE: other processes used more than {:.0} % of the CPU during: {} — those figures are unreliable",
            100.0 * NOISE_SHARE,
            noisy.join(", ")
        );
    }
    if ratio_a >= TARGET_RATIO {
        println!("TARGET MET: c/a = {ratio_a:.3} >= {TARGET_RATIO}");
    } else {
        println!("TARGET MISSED: c/a = {ratio_a:.3} < {TARGET_RATIO}");
    }
    if !all_once {
        println!("EXACTLY-ONCE VIOLATED: count() FINAL or uniqExact(event_id) differs from {n}");
    }
}
