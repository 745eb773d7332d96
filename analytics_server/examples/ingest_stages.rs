//! Where does `analytics_server`'s drain time go? Runs the service's own stages in process, one more at a time,
//! against one JetStream backlog, and times each (a companion of `ingest_bench`, for investigating a missed
//! target).
//!
//! ```text
//! cargo run --release -p analytics_server --example ingest_stages -- --events 200000
//! ```
//!
//! Options: `--events N` (default 200000), `--batch-size N` (default 10000), `--pull-batch N` (default 2000),
//! `--max-ack-pending N` (default 40000).
//!
//! Every stage uses a fresh durable consumer on the same stream (so each starts at the beginning of the backlog)
//! and ends when the consumer has nothing pending or unacknowledged:
//!
//! * S1 `source → ack`: [`source::run_jetstream`] into its channel, each message acknowledged at once;
//! * S2 `source → pipeline → ack`: plus [`pipeline::run`] (decode, rows, batches), batches acknowledged without
//!   an INSERT;
//! * S3 `… → ClickHouseSink` — the service's full ingest path, in process;
//! * S4 the same with a replica of the sink's `write` that times the wait for a batch, the INSERT, the acks and
//!   dropping the batch separately;
//! * S5 like S4, but the acks and the drop of a stored batch run in a separate task, so the next INSERT starts at
//!   once (a candidate change of `sink.rs`).

use analytics_server::batcher::Batch;
use analytics_server::config::Settings;
use analytics_server::handoff::{self, Taker};
use analytics_server::jetstream::{consumer_config, ensure_stream};
use analytics_server::metrics::Metrics;
use analytics_server::pipeline::{self, PipelineSettings};
use analytics_server::row::EventRow;
use analytics_server::schema::{self, EVENTS_TABLE};
use analytics_server::sink::{ClickHouseSink, SinkSettings};
use analytics_server::source::{self, Ack, Incoming};
use anyhow::{Context, Result, ensure};
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use fechatter_protos::v1::AnalyticsEvent;
use prost::Message as _;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use test_support::{ClickHouseServer, NatsServer, free_port, wait_until};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Un-awaited publish acks allowed in flight (async-nats stalls at 5000).
const PUBLISH_WINDOW: usize = 2_000;

/// Command-line options.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "ingest_stages",
    about = "Where analytics_server's drain time goes, stage by stage"
)]
struct Args {
    /// Backlog size.
    #[arg(long, default_value_t = 200_000, value_parser = test_support::bench_args::at_least_one())]
    events: usize,
    /// Rows per INSERT.
    #[arg(long, default_value_t = 10_000, value_parser = test_support::bench_args::at_least_one())]
    batch_size: usize,
    /// Messages per pull request.
    #[arg(long, default_value_t = 2_000, value_parser = test_support::bench_args::at_least_one())]
    pull_batch: usize,
    /// Of the consumer.
    #[arg(long, default_value_t = 40_000, value_parser = test_support::bench_args::at_least_one())]
    max_ack_pending: usize,
}

/// What one stage is made of.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    SourceAck,
    PipelineAck,
    ServiceSink,
    TimedSink,
    OverlappedSink,
}

impl Stage {
    const ALL: [Stage; 5] = [
        Stage::SourceAck,
        Stage::PipelineAck,
        Stage::ServiceSink,
        Stage::TimedSink,
        Stage::OverlappedSink,
    ];

    fn label(self) -> &'static str {
        match self {
            Stage::SourceAck => "S1 source -> ack",
            Stage::PipelineAck => "S2 source -> pipeline -> ack (no INSERT)",
            Stage::ServiceSink => "S3 source -> pipeline -> ClickHouseSink (service path)",
            Stage::TimedSink => "S4 = S3 with a timed replica of the sink",
            Stage::OverlappedSink => "S5 = S4 with acks + drop off the INSERT path",
        }
    }
}

/// Time spent by a timed sink, per part.
#[derive(Debug, Default, Clone, Copy)]
struct SinkTimes {
    batches: usize,
    waiting: Duration,
    insert: Duration,
    acks: Duration,
    drop: Duration,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = <Args as clap::Parser>::parse();
    let n = args.events;
    println!(
        "ingest_stages: {n} events, batch_size {}, pull_batch {}, max_ack_pending {}",
        args.batch_size, args.pull_batch, args.max_ack_pending
    );
    let (nats, clickhouse) = tokio::join!(NatsServer::start(), ClickHouseServer::start());
    let (nats, clickhouse) = (nats?, clickhouse?);
    let vars: Vec<(String, String)> = vec![
        ("ANALYTICS__SERVER__PORT".into(), free_port().to_string()),
        ("ANALYTICS__INTEGRATIONS__MESSAGING__NATS_URL".into(), nats.url()),
        ("ANALYTICS__CLICKHOUSE__URL".into(), clickhouse.http_url()),
        ("ANALYTICS__BATCH_SIZE".into(), args.batch_size.to_string()),
        (
            "ANALYTICS__JETSTREAM__MAX_ACK_PENDING".into(),
            args.max_ack_pending.to_string(),
        ),
        ("ANALYTICS__JETSTREAM__PULL_BATCH".into(), args.pull_batch.to_string()),
    ];
    let settings = Settings::load(None, vars)?;
    let client = async_nats::connect(nats.url()).await?;
    let js = jetstream::new(client.clone());
    ensure_stream(&js, &settings).await?;
    let started = Instant::now();
    publish(&js, n).await?;
    println!("published {n} events in {:.2} s", started.elapsed().as_secs_f64());

    for stage in Stage::ALL {
        let (elapsed, times) = run_stage(stage, &settings, &client, &js, &clickhouse, n).await?;
        println!(
            "{:<58} {:>6.2} s {:>9.0} events/s",
            stage.label(),
            elapsed.as_secs_f64(),
            n as f64 / elapsed.as_secs_f64()
        );
        if let Some(t) = times {
            println!(
                "    per batch ({} batches): waiting for a batch {:.0} ms, INSERT {:.0} ms, acks {:.0} ms, drop {:.0} ms",
                t.batches,
                per(t.waiting, t.batches),
                per(t.insert, t.batches),
                per(t.acks, t.batches),
                per(t.drop, t.batches)
            );
        }
    }
    Ok(())
}

fn per(total: Duration, batches: usize) -> f64 {
    total.as_secs_f64() * 1000.0 / batches.max(1) as f64
}

async fn publish(js: &jetstream::Context, n: usize) -> Result<()> {
    let samples = fechatter_protos::sample_events();
    let mut in_flight = VecDeque::with_capacity(PUBLISH_WINDOW);
    for i in 0..n {
        let mut event: AnalyticsEvent = samples[i % samples.len()].clone();
        if let Some(ctx) = event.context.as_mut() {
            ctx.event_id = Uuid::now_v7().to_string();
            ctx.user_id = i.to_string();
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, event.event_id());
        let subject = event.subject().context("typed")?;
        in_flight.push_back(
            js.publish_with_headers(subject, headers, Bytes::from(event.encode_to_vec()))
                .await?,
        );
        if in_flight.len() >= PUBLISH_WINDOW
            && let Some(ack) = in_flight.pop_front()
        {
            ack.await?;
        }
    }
    for ack in in_flight {
        ack.await?;
    }
    Ok(())
}

async fn run_stage(
    stage: Stage,
    settings: &Settings,
    client: &async_nats::Client,
    js: &jetstream::Context,
    clickhouse: &ClickHouseServer,
    n: usize,
) -> Result<(Duration, Option<SinkTimes>)> {
    let index = Stage::ALL.iter().position(|s| *s == stage).unwrap_or(0) + 1;
    let name = format!("stage_{index}");
    let database = format!("stage_{index}");
    let ch_server = clickhouse::Client::default()
        .with_url(clickhouse.http_url())
        .with_validation(false);
    let ch = ch_server.clone().with_database(&database);
    schema::migrate(&ch_server, &ch, &database).await?;

    let stream = js.get_stream(&settings.jetstream.stream).await?;
    let mut config = consumer_config(settings);
    config.durable_name = Some(name.clone());
    config.name = Some(name.clone());
    let consumer = stream.get_or_create_consumer(&name, config).await?;

    let js_settings = &settings.jetstream;
    let token = CancellationToken::new();
    let (in_tx, in_rx) = mpsc::channel(js_settings.pull_batch.max(1));
    let (batch_giver, batch_taker) = handoff::channel();
    let started = Instant::now();
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    // The source re-creates the consumer by the settings' name if pulling fails: give it this stage's name.
    let mut source_settings = settings.clone();
    source_settings.jetstream.consumer = name.clone();
    tasks.push(tokio::spawn(source::run_jetstream(
        js.clone(),
        Arc::new(source_settings),
        consumer,
        in_tx,
        token.clone(),
    )));
    let mut timed: Option<JoinHandle<SinkTimes>> = None;
    if stage == Stage::SourceAck {
        drop(batch_giver);
        drop(batch_taker);
        let nats = client.clone();
        tasks.push(tokio::spawn(ack_each(in_rx, nats)));
    } else {
        let metrics = Arc::new(Metrics::new());
        tasks.push(tokio::spawn(pipeline::run(
            PipelineSettings::from_settings(settings),
            in_rx,
            batch_giver,
            None,
            Some(client.clone()),
            metrics.clone(),
        )));
        let nats = client.clone();
        match stage {
            Stage::PipelineAck => tasks.push(tokio::spawn(ack_batches(batch_taker, nats))),
            Stage::ServiceSink => {
                let sink = ClickHouseSink::new(
                    ch.clone(),
                    SinkSettings {
                        insert_timeout: Duration::from_secs(30),
                        max_backoff: Duration::from_secs(1),
                        keep_alive: settings.keep_alive(),
                    },
                    metrics,
                    Some(nats),
                );
                tasks.push(tokio::spawn(sink.run(batch_taker)));
            }
            Stage::TimedSink => timed = Some(tokio::spawn(timed_sink(batch_taker, ch.clone(), nats, false))),
            Stage::OverlappedSink => timed = Some(tokio::spawn(timed_sink(batch_taker, ch.clone(), nats, true))),
            Stage::SourceAck => {}
        }
    }

    // Done when JetStream has every message acknowledged (the sinks acknowledge only after their INSERT).
    wait_until(&format!("{name} drained"), Duration::from_secs(300), || async {
        let info = stream.consumer_info(&name).await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await?;
    let elapsed = started.elapsed();
    token.cancel();
    for task in tasks {
        let _ = task.await;
    }
    let times = match timed {
        Some(handle) => Some(handle.await?),
        None => None,
    };
    if stage != Stage::SourceAck && stage != Stage::PipelineAck {
        let text = clickhouse
            .query(&format!("SELECT count() FROM {database}.{EVENTS_TABLE} FINAL"))
            .await?;
        ensure!(
            text.trim() == n.to_string(),
            "{name}: {} rows stored of {n}",
            text.trim()
        );
    }
    clickhouse.query(&format!("DROP DATABASE {database}")).await?;
    let _ = stream.delete_consumer(&name).await;
    Ok((elapsed, times))
}

/// S1: acknowledges every message as soon as the source hands it over.
async fn ack_each(mut rx: mpsc::Receiver<Incoming>, nats: async_nats::Client) {
    while let Some(message) = rx.recv().await {
        let _ = message.ack.send(&nats, AckKind::Ack).await;
    }
    let _ = nats.flush().await;
}

/// S2: acknowledges every batch without storing it.
async fn ack_batches(batches: Taker, nats: async_nats::Client) {
    while let Some(batch) = batches.next().await {
        for ack in &batch.acks {
            let _ = ack.send(&nats, AckKind::Ack).await;
        }
        let _ = nats.flush().await;
    }
}

/// The sink's INSERT, as in `sink.rs`.
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

/// Acknowledges a stored batch and drops it; returns how long each took.
async fn ack_and_drop(batch: Batch<Ack>, nats: &async_nats::Client) -> (Duration, Duration) {
    let t = Instant::now();
    for ack in &batch.acks {
        let _ = ack.send(nats, AckKind::Ack).await;
    }
    let _ = nats.flush().await;
    let acks = t.elapsed();
    let t = Instant::now();
    drop(batch);
    (acks, t.elapsed())
}

/// S4/S5: the sink's `write` (INSERT, then acks), timed per part; with `overlap`, the acks and the drop run in
/// a spawned task (at most one at a time) so the next INSERT can start.
async fn timed_sink(batches: Taker, client: clickhouse::Client, nats: async_nats::Client, overlap: bool) -> SinkTimes {
    let mut times = SinkTimes::default();
    let mut pending: Option<JoinHandle<(Duration, Duration)>> = None;
    loop {
        let t = Instant::now();
        let Some(batch) = batches.next().await else { break };
        times.waiting += t.elapsed();
        let t = Instant::now();
        while let Err(err) = insert(&client, &batch.rows).await {
            eprintln!("INSERT failed, retrying: {err:#}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        times.insert += t.elapsed();
        times.batches += 1;
        if overlap {
            if let Some(previous) = pending.take()
                && let Ok((acks, drop)) = previous.await
            {
                times.acks += acks;
                times.drop += drop;
            }
            let nats = nats.clone();
            pending = Some(tokio::spawn(async move { ack_and_drop(batch, &nats).await }));
        } else {
            let (acks, drop) = ack_and_drop(batch, &nats).await;
            times.acks += acks;
            times.drop += drop;
        }
    }
    if let Some(previous) = pending.take()
        && let Ok((acks, drop)) = previous.await
    {
        times.acks += acks;
        times.drop += drop;
    }
    times
}
