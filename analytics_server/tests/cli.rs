//! The operator commands of the binary against a real NATS server: `monitor` decodes and filters live events,
//! `ensure-stream` sets JetStream up and is idempotent, `status` reports what the stream and consumer hold, and
//! a server without JetStream is named as such.

use fechatter_protos::sample_events;
use fechatter_protos::v1::AnalyticsEvent;
use prost::Message as _;
use serde_json::Value;
use std::process::Stdio;
use std::time::Duration;
use test_support::NatsServer;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn command(nats: &NatsServer, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_analytics_server"));
    c.args(args)
        .env("ANALYTICS__INTEGRATIONS__MESSAGING__NATS_URL", nats.url())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    c
}

async fn run(nats: &NatsServer, args: &[&str]) -> (bool, String) {
    let out = command(nats, args).output().await.expect("binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn event_of(kind_index: usize, user: &str) -> AnalyticsEvent {
    let mut event = sample_events().remove(kind_index);
    if let Some(ctx) = event.context.as_mut() {
        ctx.user_id = user.to_owned();
    }
    event
}

#[tokio::test]
async fn monitor_prints_the_matching_events_decoded() {
    let nats = NatsServer::start().await.expect("nats");
    let mut child = command(
        &nats,
        &[
            "monitor",
            "--type",
            "user_login",
            "--user",
            "u-7",
            "--json",
            "--count",
            "1",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("monitor starts");
    // It says so on stderr once subscribed.
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), stderr.next_line())
        .await
        .expect("monitor subscribes")
        .expect("readable");
    assert!(first.is_some_and(|l| l.contains("watching fechatter.analytics.>")));

    let client = async_nats::connect(nats.url()).await.expect("connect");
    let skipped = [event_of(0, "u-7"), event_of(2, "someone-else")];
    for event in &skipped {
        let subject = event.subject().expect("kind");
        client
            .publish(subject, event.encode_to_vec().into())
            .await
            .expect("publish");
    }
    client
        .publish(
            "fechatter.analytics.user.login",
            b"\xff\xff not protobuf".to_vec().into(),
        )
        .await
        .expect("publish");
    let wanted = event_of(2, "u-7");
    client
        .publish("fechatter.analytics.user.login", wanted.encode_to_vec().into())
        .await
        .expect("publish");
    client.flush().await.expect("flush");

    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("monitor exits after --count 1")
        .expect("output");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    // The garbage is reported, the two non-matching events are not printed, the match is printed once.
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with("! fechatter.analytics.user.login undecodable"),
        "{stdout}"
    );
    let json: Value = serde_json::from_str(lines[1]).expect("a JSON line");
    assert_eq!(json["type"], "user_login");
    assert_eq!(json["user_id"], "u-7");
    assert_eq!(json["subject"], "fechatter.analytics.user.login");
    assert_eq!(json["event"]["userLogin"]["email"], "login@acme.test");
    assert!(json["server_time"].as_str().is_some_and(|t| t.ends_with('Z')), "{json}");
}

#[tokio::test]
async fn monitor_refuses_an_unknown_type() {
    let nats = NatsServer::start().await.expect("nats");
    let (ok, out) = run(&nats, &["monitor", "--type", "user_logn"]).await;
    assert!(!ok);
    assert!(
        out.contains("user_logn") && out.contains("is not an event type"),
        "{out}"
    );
}

#[tokio::test]
async fn ensure_stream_is_idempotent_and_status_counts_what_the_stream_holds() {
    let nats = NatsServer::start().await.expect("nats");
    let (ok, out) = run(&nats, &["status"]).await;
    assert!(!ok, "no stream yet: {out}");
    assert!(out.contains("❌ stream ANALYTICS missing"), "{out}");

    let (ok, out) = run(&nats, &["ensure-stream"]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("stream ANALYTICS (fechatter.analytics.>, file storage, 30 days): created"),
        "{out}"
    );
    let (ok, out) = run(&nats, &["ensure-stream"]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("ANALYTICS (fechatter.analytics.>, file storage, 30 days): present"),
        "{out}"
    );

    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    for event in sample_events().iter().take(3) {
        js.publish(event.subject().expect("kind"), event.encode_to_vec().into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    let (ok, out) = run(&nats, &["status", "--json"]).await;
    assert!(ok, "{out}");
    let status: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(status["stream"]["messages"], 3, "{status}");
    assert_eq!(status["consumer"]["num_pending"], 3, "{status}");
    assert_eq!(status["consumer"]["num_redelivered"], 0, "{status}");
    assert_eq!(status["dead_letter_stream"]["messages"], 0, "{status}");
}

#[tokio::test]
async fn a_server_without_jetstream_is_named() {
    // `NatsServer` waits for the server's health endpoint, not just an open port: a connection to a
    // port nobody listens on yet can succeed by connecting to itself (TCP simultaneous open), the
    // likely reason this test once ran the command before its hand-started server was up.
    let mut server = NatsServer::start_without_jetstream()
        .await
        .expect("nats-server without JetStream");
    let url = server.url();
    let out = Command::new(env!("CARGO_BIN_EXE_analytics_server"))
        .arg("ensure-stream")
        .env("ANALYTICS__INTEGRATIONS__MESSAGING__NATS_URL", &url)
        .output()
        .await
        .expect("runs");
    server.kill().await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("JetStream is not enabled on {url}")),
        "{stderr}"
    );
}
