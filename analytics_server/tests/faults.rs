//! Crashes and outages on real servers: nothing accepted is lost, nothing shows twice.

mod common;

use common::{Stack, events};
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_clickhouse_outage_loses_nothing() {
    let mut stack = Stack::start().await;
    let app = stack.run_in_process(&[]).await;
    let batch = events(2000);
    stack.publish_all(&batch[..1000]).await;
    stack.wait_for_rows(1000, Duration::from_secs(30)).await;

    stack.clickhouse.stop().await;
    stack.publish_all(&batch[1000..]).await;
    // Several INSERTs fail and are retried while ClickHouse is away.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = reqwest::get(app.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("reason=\"insert\""),
        "INSERT failures are counted: {metrics}"
    );
    let ready = reqwest::get(app.url("/ready")).await.expect("ready");
    assert_eq!(ready.status(), 503, "not ready without ClickHouse");

    stack.clickhouse.restart().await.expect("clickhouse restarts");
    let started = Instant::now();
    stack.wait_for_rows(2000, Duration::from_secs(60)).await;
    eprintln!(
        "drained 1000 held events {:?} after ClickHouse came back",
        started.elapsed()
    );
    stack.wait_consumer_idle(Duration::from_secs(30)).await;
    assert_eq!(stack.distinct_ids().await, 2000);
    assert_eq!(reqwest::get(app.url("/ready")).await.expect("ready").status(), 200);
    app.stop().await;
}

/// Held anywhere, messages outlive an outage several times their ack wait without being redelivered: the batch
/// the sink retries, and the batch the pipeline holds behind it, get progress signals.
#[tokio::test]
async fn a_long_outage_keeps_messages_from_being_redelivered_or_given_up() {
    let mut stack = Stack::start().await;
    // A short ack wait: the outage outlasts it several times, so only progress signals keep the batches held.
    let app = stack
        .run_in_process(&[
            ("ANALYTICS__JETSTREAM__ACK_WAIT_SECONDS", "5"),
            ("ANALYTICS__BATCH_SIZE", "100"),
        ])
        .await;
    stack.clickhouse.stop().await;
    let events = events(300);
    // A full batch, which the sink takes and retries; then two more, which wait in the pipeline behind it.
    stack.publish_all(&events[..100]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.publish_all(&events[100..]).await;
    tokio::time::sleep(Duration::from_secs(14)).await;
    let stream = stack.js.get_stream("ANALYTICS").await.expect("stream");
    let info = stream.consumer_info("analytics_server").await.expect("consumer");
    assert_eq!(info.num_ack_pending, 300, "every message held");
    assert_eq!(
        info.num_redelivered, 0,
        "progress signals stop redelivery while the batches are held"
    );
    stack.clickhouse.restart().await.expect("restart");
    stack.wait_for_rows(300, Duration::from_secs(60)).await;
    app.stop().await;
}

#[tokio::test]
async fn sigkill_mid_stream_then_restart_stores_every_event_once() {
    let stack = Stack::start().await;
    // The killed instance's unacknowledged messages come back after the ack wait; keep it short for the test.
    let fast_redelivery = [("ANALYTICS__JETSTREAM__ACK_WAIT_SECONDS", "10")];
    let (mut child, _) = stack.spawn_binary(&fast_redelivery).await;
    let batch = events(20_000);
    stack.publish_all(&batch).await;
    // Kill once some, but not all, rows have landed.
    test_support::wait_until("first rows", Duration::from_secs(30), || async {
        (stack.physical_rows().await > 0).then_some(())
    })
    .await
    .expect("rows start landing");
    child.kill().await;
    let at_kill = stack.count_final().await;
    eprintln!("killed with {at_kill} of 20000 rows stored");

    let started = Instant::now();
    let (_restarted, _) = stack.spawn_binary(&fast_redelivery).await;
    stack.wait_for_rows(20_000, Duration::from_secs(90)).await;
    eprintln!("caught up {:?} after restart", started.elapsed());
    assert_eq!(stack.distinct_ids().await, 20_000);
}

#[tokio::test]
async fn sigterm_flushes_the_partial_batch_and_acknowledges_it() {
    let stack = Stack::start().await;
    // A flush interval far longer than the test (and an ack wait longer still, as the settings require): only
    // the shutdown flush can store these.
    let (mut child, _) = stack
        .spawn_binary(&[
            ("ANALYTICS__FLUSH_INTERVAL_SECONDS", "600"),
            ("ANALYTICS__JETSTREAM__ACK_WAIT_SECONDS", "900"),
        ])
        .await;
    stack.publish_all(&events(10)).await;
    test_support::wait_until("events pulled", Duration::from_secs(10), || async {
        let stream = stack.js.get_stream("ANALYTICS").await.ok()?;
        let info = stream.consumer_info("analytics_server").await.ok()?;
        (info.num_ack_pending == 10).then_some(())
    })
    .await
    .expect("pulled");
    assert_eq!(stack.count_final().await, 0);
    let status = child.terminate(Duration::from_secs(30)).await.expect("exits");
    assert!(status.success(), "{status:?}\n{}", child.log_contents());
    assert_eq!(stack.count_final().await, 10);
    stack.wait_consumer_idle(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn sigterm_with_nats_down_still_exits_and_loses_nothing() {
    let mut stack = Stack::start().await;
    let (mut child, _) = stack.spawn_binary(&[]).await;
    stack.publish_all(&events(10)).await;
    stack.wait_for_rows(10, Duration::from_secs(30)).await;
    stack.nats.stop().await;
    let started = Instant::now();
    // SHUTDOWN_GRACE (30 s) bounds the in-flight work; nothing after it may wait for NATS to come back.
    let status = child
        .terminate(Duration::from_secs(45))
        .await
        .expect("exits with NATS down");
    assert!(status.success(), "{status:?}\n{}", child.log_contents());
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(stack.count_final().await, 10);
}

/// Progress signals are best effort and never hold anything up: with NATS down when one is due, the partial
/// batch still goes to ClickHouse on time (an awaited signal waited for NATS to come back, and so did the batch).
#[tokio::test]
async fn a_progress_signal_due_while_nats_is_down_holds_up_no_insert() {
    let mut stack = Stack::start().await;
    // Signals every 5/3 s; the partial batch is due after 4 s.
    let app = stack
        .run_in_process(&[
            ("ANALYTICS__JETSTREAM__ACK_WAIT_SECONDS", "5"),
            ("ANALYTICS__FLUSH_INTERVAL_SECONDS", "4"),
        ])
        .await;
    stack.publish_all(&events(3)).await;
    stack.nats.stop().await;
    stack.wait_for_rows(3, Duration::from_secs(15)).await;
    // Back, so that the stored batch's acknowledgements leave and shutdown is prompt.
    stack.nats.restart().await.expect("nats restarts");
    app.stop().await;
}

#[tokio::test]
async fn a_nats_restart_is_survived_without_loss() {
    let mut stack = Stack::start().await;
    let app = stack.run_in_process(&[]).await;
    stack.publish_all(&events(500)).await;
    stack.wait_for_rows(500, Duration::from_secs(30)).await;
    stack.nats.stop().await;
    stack.nats.restart().await.expect("nats restarts");
    // The test's own client reconnects too; wait for it before publishing.
    test_support::wait_until("client reconnected", Duration::from_secs(20), || async {
        (stack.client.connection_state() == async_nats::connection::State::Connected).then_some(())
    })
    .await
    .expect("reconnected");
    stack.publish_all(&events(500)).await;
    stack.wait_for_rows(1000, Duration::from_secs(60)).await;
    app.stop().await;
}

#[tokio::test]
async fn a_table_or_database_dropped_while_running_is_re_created_and_nothing_is_lost() {
    let stack = Stack::start().await;
    let app = stack.run_in_process(&[]).await;
    let batch = events(300);
    stack.publish_all(&batch[..100]).await;
    stack.wait_for_rows(100, Duration::from_secs(30)).await;

    // Dropped by hand: the INSERTs fail, the sink re-creates the table, and what it held is stored.
    let drop_table = format!("DROP TABLE {}.analytics_events", stack.database);
    stack.clickhouse.query(&drop_table).await.expect("drop table");
    stack.publish_all(&batch[100..200]).await;
    stack.wait_for_rows(100, Duration::from_secs(60)).await;
    let drop_database = format!("DROP DATABASE {}", stack.database);
    stack.clickhouse.query(&drop_database).await.expect("drop database");
    stack.publish_all(&batch[200..]).await;
    stack.wait_for_rows(100, Duration::from_secs(60)).await;
    stack.wait_consumer_idle(Duration::from_secs(30)).await;

    // The rows of before each drop went with it; each event published since is there, once.
    assert_eq!(stack.count_final().await, 100);
    assert_eq!(stack.distinct_ids().await, 100);
    app.stop().await;
}
