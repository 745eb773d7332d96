//! `analytics_server status` and `analytics_server ensure-stream`: the JetStream side of the pipeline, read and
//! repaired.
//!
//! `status` shows what an operator asks first when events do not arrive: does the stream exist and cover the
//! subjects, how many messages it holds, how far behind the consumer is (pending), what is held unacknowledged,
//! what was redelivered and how much was dead-lettered. `ensure-stream` runs the same set-up as start-up does
//! and says what it changed.

use crate::config::Settings;
use crate::jetstream::{StreamAction, ensure_consumer, ensure_dead_letter_stream, ensure_stream};
use anyhow::Context as _;
use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::{self, Context};
use serde_json::{Value, json};

/// Connects and checks that the server has JetStream at all (the first thing that is wrong on a bare
/// `nats-server` started without `-js`). Asks `$JS.API.INFO` directly: a server without JetStream has no
/// responder there, and the raw answer parses on every server version (the crate's typed account info does
/// not on nats-server 2.9).
pub(super) async fn jetstream_context(settings: &Settings, name: &str) -> anyhow::Result<Context> {
    let client = super::connect_nats(settings, name).await?;
    let url = &settings.integrations.messaging.nats_url;
    let not_enabled = || format!("JetStream is not enabled on {url} (start nats-server with -js / --jetstream)");
    let reply = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client.request("$JS.API.INFO", bytes::Bytes::new()),
    )
    .await
    .with_context(not_enabled)?
    .with_context(not_enabled)?;
    let info: Value = serde_json::from_slice(&reply.payload).context("unreadable $JS.API.INFO answer")?;
    if let Some(error) = info.get("error") {
        anyhow::bail!("{}: {error}", not_enabled());
    }
    Ok(jetstream::new(client))
}

/// Prints the stream, consumer and dead-letter state; `Ok(false)` when the stream or consumer is missing.
pub async fn run(settings: &Settings, as_json: bool) -> anyhow::Result<bool> {
    let js = jetstream_context(settings, "analytics_server status").await?;
    let names = &settings.jetstream;
    let stream = stream_state(&js, &names.stream).await;
    let dead_letters = stream_state(&js, &names.dead_letter_stream).await;
    let consumer = consumer_state(&js, &names.stream, &names.consumer).await;
    let ok = !stream.is_null() && !consumer.is_null();
    if as_json {
        let out = json!({
            "nats_url": settings.integrations.messaging.nats_url,
            "stream": stream,
            "consumer": consumer,
            "dead_letter_stream": dead_letters,
        });
        println!("{out}");
        return Ok(ok);
    }
    println!("NATS      {}", settings.integrations.messaging.nats_url);
    print_stream("stream", &names.stream, &stream);
    if consumer.is_null() {
        println!(
            "❌ consumer {} missing (analytics_server creates it at start-up; or run ensure-stream)",
            names.consumer
        );
    } else {
        println!(
            "✅ consumer {}: pending {} (not yet delivered), ack pending {} (held), redelivered {}, \
             delivered up to seq {}, acked up to seq {}",
            names.consumer,
            consumer["num_pending"],
            consumer["num_ack_pending"],
            consumer["num_redelivered"],
            consumer["delivered_stream_sequence"],
            consumer["ack_floor_stream_sequence"],
        );
    }
    print_stream("dead letters", &names.dead_letter_stream, &dead_letters);
    Ok(ok)
}

fn print_stream(what: &str, name: &str, state: &Value) {
    if state.is_null() {
        println!("❌ {what} {name} missing (run: analytics_server ensure-stream)");
    } else {
        println!(
            "✅ {what} {name}: {} messages, {} bytes, sequences {}..{}, subjects {}",
            state["messages"], state["bytes"], state["first_sequence"], state["last_sequence"], state["subjects"]
        );
    }
}

/// A stream's state as JSON, or null when it does not exist (one request: the lookup answers the info).
async fn stream_state(js: &Context, name: &str) -> Value {
    let Ok(stream) = js.get_stream(name).await else {
        return Value::Null;
    };
    let info = stream.cached_info();
    json!({
        "name": name,
        "subjects": info.config.subjects,
        "messages": info.state.messages,
        "bytes": info.state.bytes,
        "first_sequence": info.state.first_sequence,
        "last_sequence": info.state.last_sequence,
        "consumers": info.state.consumer_count,
    })
}

/// A durable consumer's state as JSON, or null when it (or its stream) does not exist (one request).
async fn consumer_state(js: &Context, stream: &str, name: &str) -> Value {
    let Ok(consumer) = js.get_consumer_from_stream::<pull::Config, _, _>(name, stream).await else {
        return Value::Null;
    };
    let info = consumer.cached_info();
    json!({
        "name": name,
        "num_pending": info.num_pending,
        "num_ack_pending": info.num_ack_pending,
        "num_redelivered": info.num_redelivered,
        "delivered_stream_sequence": info.delivered.stream_sequence,
        "ack_floor_stream_sequence": info.ack_floor.stream_sequence,
    })
}

fn describe(action: &StreamAction) -> String {
    match action {
        StreamAction::Created => "created".to_owned(),
        StreamAction::Widened(changes) => format!("widened ({})", changes.join("; ")),
        StreamAction::Unchanged => "present, already covers the configuration".to_owned(),
    }
}

/// Creates or widens the streams and the consumer, printing what each step did.
pub async fn ensure(settings: &Settings) -> anyhow::Result<bool> {
    let js = jetstream_context(settings, "analytics_server ensure-stream").await?;
    println!("✅ JetStream enabled on {}", settings.integrations.messaging.nats_url);
    let names = &settings.jetstream;
    let action = ensure_stream(&js, settings).await?;
    println!(
        "✅ stream {} ({}, file storage, {} days): {}",
        names.stream,
        settings.integrations.messaging.subjects.analytics_events,
        names.max_age_days,
        describe(&action)
    );
    let action = ensure_dead_letter_stream(&js, settings).await?;
    println!(
        "✅ dead-letter stream {}: {}",
        names.dead_letter_stream,
        describe(&action)
    );
    ensure_consumer(&js, settings).await?;
    println!("✅ durable consumer {} ready", names.consumer);
    Ok(true)
}
