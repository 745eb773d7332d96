//! JetStream → ClickHouse on real servers: round trips, exactly-once, poison, stream set-up, core NATS.

mod common;

use common::{Stack, events};
use fechatter_protos::v1::{AnalyticsEvent, BatchRecordEventsRequest};
use fechatter_protos::{BATCH_SUBJECT, sample_events};
use prost::Message as _;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn every_kind_lands_once_with_every_field_intact() {
    let stack = Stack::start().await;
    let app = stack.run_in_process(&[]).await;
    let samples = sample_events();
    for event in &samples {
        stack.publish_with_id(event, event.event_id()).await;
    }
    stack.wait_for_rows(samples.len() as u64, WAIT).await;

    let rows = stack.rows().await;
    let mut stored: Vec<AnalyticsEvent> = rows
        .iter()
        .map(|r| analytics_server::row::to_event(r).expect("row decodes"))
        .collect();
    let mut expected = samples.clone();
    stored.sort_by(|a, b| a.event_id().cmp(b.event_id()));
    expected.sort_by(|a, b| a.event_id().cmp(b.event_id()));
    assert_eq!(stored, expected);
    for row in &rows {
        assert!(row.subject.starts_with("fechatter.analytics."), "{}", row.subject);
        assert!(row.stream_sequence > 0);
        assert!(row.ingested_at > 0);
    }
    app.stop().await;
}

#[tokio::test]
async fn a_batch_message_stores_each_of_its_events() {
    let stack = Stack::start().await;
    let app = stack.run_in_process(&[]).await;
    let batch = BatchRecordEventsRequest { events: events(50) };
    stack.publish_raw(BATCH_SUBJECT, batch.encode_to_vec()).await;
    stack.wait_for_rows(50, WAIT).await;
    let rows = stack.rows().await;
    assert!(rows.iter().all(|r| r.subject == BATCH_SUBJECT));
    app.stop().await;
}

#[tokio::test]
async fn republished_and_redelivered_events_never_show_twice() {
    let stack = Stack::start().await;
    let app = stack.run_in_process(&[]).await;
    let batch = events(1000);
    stack.publish_all(&batch).await;
    stack.wait_for_rows(1000, WAIT).await;

    // A publisher retrying after JetStream's duplicate window: same event ids, new message ids.
    for event in batch.iter().take(300) {
        stack.publish_with_id(event, &uuid::Uuid::new_v4().to_string()).await;
    }
    stack.wait_consumer_idle(WAIT).await;
    // And a redelivery after a lost ack: restart the service without acking (in-flight state dropped).
    app.stop().await;
    let app = stack.run_in_process(&[]).await;
    for event in batch.iter().skip(700) {
        stack.publish_with_id(event, &uuid::Uuid::new_v4().to_string()).await;
    }
    stack.wait_consumer_idle(WAIT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    assert!(stack.physical_rows().await > 1000, "the copies really were inserted");
    assert_eq!(stack.count_final().await, 1000);
    assert_eq!(stack.distinct_ids().await, 1000);
    app.stop().await;
}

#[tokio::test]
async fn legacy_events_without_an_id_get_a_stable_one() {
    let stack = Stack::start().await;
    let app = stack.run_in_process(&[]).await;
    let mut event = sample_events().remove(3);
    if let Some(ctx) = event.context.as_mut() {
        ctx.event_id.clear();
    }
    stack
        .publish_raw("fechatter.analytics.user.logout", event.encode_to_vec())
        .await;
    stack.wait_for_rows(1, WAIT).await;
    let rows = stack.rows().await;
    assert_eq!(
        uuid::Uuid::parse_str(&rows[0].event_id)
            .expect("uuid")
            .get_version_num(),
        5
    );
    app.stop().await;
}

/// A stream deleted and re-created numbers its messages from 1 again: a legacy event there must not take the id
/// of the old event of the same sequence (the ReplacingMergeTree would collapse the two, losing one).
#[tokio::test]
async fn legacy_events_of_a_recreated_stream_do_not_replace_older_ones() {
    let stack = Stack::start().await;
    let app = stack.run_in_process(&[]).await;
    let legacy = |index: usize| {
        let mut event = sample_events().remove(index);
        if let Some(ctx) = event.context.as_mut() {
            ctx.event_id.clear();
        }
        event
    };
    let first = legacy(3);
    stack
        .publish_raw(&first.subject().expect("typed"), first.encode_to_vec())
        .await;
    stack.wait_for_rows(1, WAIT).await;

    stack
        .js
        .delete_stream("ANALYTICS")
        .await
        .expect("an operator deletes the stream");
    // The ingester re-creates the stream and its consumer; publish once it has.
    test_support::wait_until("the stream is back", WAIT, || async {
        let mut stream = stack.js.get_stream("ANALYTICS").await.ok()?;
        let info = stream.info().await.ok()?;
        (info.state.consumer_count > 0).then_some(())
    })
    .await
    .expect("stream re-created");
    let second = legacy(2);
    let ack = stack
        .js
        .publish(second.subject().expect("typed"), second.encode_to_vec().into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    assert_eq!(ack.sequence, 1, "the new stream numbers from 1 again");
    stack.wait_for_rows(2, WAIT).await;
    let rows = stack.rows().await;
    assert_ne!(rows[0].event_id, rows[1].event_id);
    app.stop().await;
}

/// An operator deletes the dead-letter stream while the ingester runs: the next poison message fails its copy, and
/// the ingester creates the stream again, so the message's redelivery is dead-lettered instead of coming back
/// after every ack wait for good.
#[tokio::test]
async fn a_dead_letter_stream_deleted_while_running_is_created_again() {
    let stack = Stack::start().await;
    let app = stack
        .run_in_process(&[
            ("ANALYTICS__JETSTREAM__ACK_WAIT_SECONDS", "5"),
            ("ANALYTICS__FLUSH_INTERVAL_SECONDS", "0.5"),
        ])
        .await;
    stack
        .publish_raw("fechatter.analytics.user.login", vec![0xff, 0xff, 0xff, 0x01])
        .await;
    test_support::wait_until("the first dead letter", WAIT, || async {
        (stack.stream_messages("ANALYTICS_DLQ").await == 1).then_some(())
    })
    .await
    .expect("dead-lettered");
    stack
        .js
        .delete_stream("ANALYTICS_DLQ")
        .await
        .expect("an operator deletes the dead-letter stream");

    stack
        .publish_raw("fechatter.analytics.user.login", vec![0xff, 0xff, 0xff, 0x02])
        .await;
    let good = events(1);
    stack.publish_all(&good).await;

    stack.wait_for_rows(1, WAIT).await;
    // The copy failed once (no stream took it), the stream came back, and the redelivery was copied.
    test_support::wait_until("the second dead letter, in a new stream", WAIT, || async {
        (stack.stream_messages("ANALYTICS_DLQ").await == 1).then_some(())
    })
    .await
    .expect("dead-lettered after the stream was created again");
    stack.wait_consumer_idle(WAIT).await;
    let dlq = stack.js.get_stream("ANALYTICS_DLQ").await.expect("dlq stream");
    let letter = dlq.get_raw_message(1).await.expect("the dead letter");
    assert_eq!(letter.payload.as_ref(), &[0xff, 0xff, 0xff, 0x02]);
    app.stop().await;
}

#[tokio::test]
async fn poison_is_dead_lettered_and_the_good_events_around_it_are_stored() {
    let stack = Stack::start().await;
    let app = stack
        .run_in_process(&[
            ("ANALYTICS__JETSTREAM__MAX_MESSAGE_BYTES", "4096"),
            ("ANALYTICS__SERVER__MAX_BATCH_EVENTS", "3"),
        ])
        .await;
    let good = events(4);
    stack.publish_all(&good[..2]).await;
    stack
        .publish_raw("fechatter.analytics.user.login", vec![0xff, 0xff, 0xff, 0x01])
        .await;
    stack
        .publish_raw(
            "fechatter.analytics.user.login",
            AnalyticsEvent::default().encode_to_vec(),
        )
        .await;
    stack
        .publish_raw("fechatter.analytics.navigation", vec![0x0a; 5000])
        .await;
    stack
        .publish_raw(BATCH_SUBJECT, BatchRecordEventsRequest::default().encode_to_vec())
        .await;
    // Small, but more events than `server.max_batch_events`.
    let crowded = BatchRecordEventsRequest { events: events(4) }.encode_to_vec();
    assert!(crowded.len() < 4096);
    stack.publish_raw(BATCH_SUBJECT, crowded).await;
    stack.publish_all(&good[2..]).await;

    stack.wait_for_rows(4, WAIT).await;
    stack.wait_consumer_idle(WAIT).await;
    assert_eq!(stack.stream_messages("ANALYTICS_DLQ").await, 5);

    let dlq = stack.js.get_stream("ANALYTICS_DLQ").await.expect("dlq stream");
    let first = dlq.get_raw_message(1).await.expect("first dead letter");
    let headers = first.headers;
    assert_eq!(
        headers.get("Fechatter-Original-Subject").map(|v| v.as_str()),
        Some("fechatter.analytics.user.login")
    );
    assert_eq!(
        headers.get("Fechatter-Error-Reason").map(|v| v.as_str()),
        Some("invalid_protobuf")
    );
    assert!(headers.get("Fechatter-Delivery-Count").is_some());
    assert_eq!(first.payload.as_ref(), &[0xff, 0xff, 0xff, 0x01]);

    let metrics = reqwest::get(app.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("analytics_events_dead_lettered_total 5"), "{metrics}");
    assert!(metrics.contains("reason=\"invalid_protobuf\""), "{metrics}");
    assert!(metrics.contains("reason=\"too_many_events\""), "{metrics}");
    app.stop().await;
}

/// A poison message too close to NATS's `max_payload` to be copied with the dead-letter headers is copied cut,
/// with its full size, instead of failing (and being redelivered) forever.
#[tokio::test]
async fn poison_near_the_nats_payload_limit_is_dead_lettered_cut() {
    let stack = Stack::start().await;
    let max_payload = stack.client.server_info().max_payload;
    let app = stack
        .run_in_process(&[("ANALYTICS__JETSTREAM__MAX_MESSAGE_BYTES", &max_payload.to_string())])
        .await;
    let size = max_payload - 100;
    stack
        .publish_raw("fechatter.analytics.user.login", vec![0xff; size])
        .await;
    let good = events(1);
    stack.publish_all(&good).await;
    stack.wait_for_rows(1, WAIT).await;
    stack.wait_consumer_idle(WAIT).await;
    assert_eq!(stack.stream_messages("ANALYTICS_DLQ").await, 1);
    let dlq = stack.js.get_stream("ANALYTICS_DLQ").await.expect("dlq stream");
    let copy = dlq.get_raw_message(1).await.expect("the dead letter");
    assert_eq!(
        copy.headers
            .get("Fechatter-Original-Size")
            .map(|v| v.as_str().to_owned()),
        Some(size.to_string())
    );
    assert!(
        copy.payload.len() < size && copy.payload.len() > size / 2,
        "{}",
        copy.payload.len()
    );
    assert!(copy.payload.iter().all(|b| *b == 0xff), "the start of the payload");
    app.stop().await;
}

/// A consumer left by an operator or an older deployment: a delivery limit (which would give messages up) is
/// lifted; acknowledgements other than explicit ones (which lose what is in flight) stop start-up, named.
#[tokio::test]
async fn an_existing_consumer_that_could_give_messages_up_is_mended_or_refused() {
    use analytics_server::jetstream::{SetupError, ensure_all};
    use async_nats::jetstream::consumer::{AckPolicy, pull};

    let stack = Stack::start().await;
    let settings = stack.settings(&[]);
    ensure_all(&stack.js, &settings).await.expect("set-up");
    let stream = stack.js.get_stream("ANALYTICS").await.expect("stream");
    let consumer = settings.jetstream.consumer.clone();
    let mut limited = analytics_server::jetstream::consumer_config(&settings);
    limited.max_deliver = 5;
    stream.update_consumer(limited).await.expect("limit deliveries");
    ensure_all(&stack.js, &settings).await.expect("set-up again");
    let mut mended = stream.get_consumer::<pull::Config>(&consumer).await.expect("consumer");
    let info = mended.info().await.expect("info");
    assert!(
        info.config.max_deliver <= 0,
        "delivery limit lifted: {}",
        info.config.max_deliver
    );

    stream.delete_consumer(&consumer).await.expect("delete");
    let mut careless = analytics_server::jetstream::consumer_config(&settings);
    careless.ack_policy = AckPolicy::None;
    stream.create_consumer(careless).await.expect("ack-less consumer");
    let err = ensure_all(&stack.js, &settings).await.expect_err("refused");
    assert!(matches!(err, SetupError::AckPolicy { .. }), "{err:?}");
    assert!(err.to_string().contains(&consumer), "{err}");
}

#[tokio::test]
async fn a_narrow_existing_stream_is_widened_and_keeps_its_messages() {
    let stack = Stack::start().await;
    stack
        .js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "ANALYTICS".into(),
            subjects: vec!["fechatter.analytics.events".into()],
            ..Default::default()
        })
        .await
        .expect("narrow stream");
    stack.publish_raw("fechatter.analytics.events", vec![1, 2, 3]).await;

    let app = stack.run_in_process(&[]).await;
    let mut stream = stack.js.get_stream("ANALYTICS").await.expect("stream");
    let info = stream.info().await.expect("info");
    assert_eq!(info.config.subjects, vec!["fechatter.analytics.>".to_string()]);
    assert!(info.config.duplicate_window >= Duration::from_secs(120));
    // The old message is kept (and, being garbage, dead-lettered rather than blocking anything).
    assert!(info.state.messages >= 1);
    let good = events(3);
    stack.publish_all(&good).await;
    stack.wait_for_rows(3, WAIT).await;
    app.stop().await;
}

#[tokio::test]
async fn core_nats_mode_stores_events_published_while_it_runs_and_creates_the_stream_for_publishers() {
    let stack = Stack::start().await;
    let app = stack
        .run_in_process(&[("ANALYTICS__INTEGRATIONS__MESSAGING__JETSTREAM_ENABLED", "false")])
        .await;
    // Let the subscription register before publishing (core NATS keeps nothing for absent subscribers).
    tokio::time::sleep(Duration::from_millis(300)).await;
    for event in events(5) {
        stack
            .client
            .publish(event.subject().expect("typed"), event.encode_to_vec().into())
            .await
            .expect("publish");
    }
    stack.client.flush().await.expect("flush");
    stack.wait_for_rows(5, WAIT).await;

    // fechatter_server publishes through JetStream and waits for the ack: on this fresh NATS the service
    // created the stream for it, and the event reaches the core subscription as well.
    let event = &events(1)[0];
    let ack = stack
        .js
        .publish(event.subject().expect("typed"), event.encode_to_vec().into())
        .await
        .expect("publish")
        .await
        .expect("JetStream acknowledges: the stream exists in core mode too");
    assert_eq!(ack.stream, "ANALYTICS");
    stack.wait_for_rows(6, WAIT).await;
    app.stop().await;
}

/// The last, partial batch of a backlog goes once the backlog has drained, not after `flush_interval_seconds`
/// (50 s here); an event that trickles in afterwards still waits for `batch_size` rows or the interval.
#[tokio::test]
async fn a_backlog_ends_without_waiting_for_the_flush_interval() {
    let stack = Stack::start().await;
    let settings = [("ANALYTICS__FLUSH_INTERVAL_SECONDS", "50")];
    // A first start creates the stream and the consumer; the backlog builds up while no ingester runs.
    stack.run_in_process(&settings).await.stop().await;
    stack.publish_all(&events(1234)).await;
    let started = std::time::Instant::now();
    let app = stack.run_in_process(&settings).await;
    stack.wait_for_rows(1234, Duration::from_secs(20)).await;
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());

    stack.publish_all(&events(1)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        stack.count_final().await,
        1234,
        "a lone event waits for more rows or the interval"
    );
    app.stop().await;
    assert_eq!(stack.count_final().await, 1235, "shutdown flushes it");
}

/// Core-NATS mode reads no stream, so it leaves the limits an operator gave the stream as they are (JetStream
/// mode widens them: it reads every event from the stream and must lose none to a limit).
#[tokio::test]
async fn core_nats_mode_leaves_an_existing_stream_as_it_is() {
    let stack = Stack::start().await;
    stack
        .js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "ANALYTICS".into(),
            subjects: vec!["fechatter.analytics.>".into()],
            max_messages: 1000,
            ..Default::default()
        })
        .await
        .expect("operator's stream");
    let app = stack
        .run_in_process(&[("ANALYTICS__INTEGRATIONS__MESSAGING__JETSTREAM_ENABLED", "false")])
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut stream = stack.js.get_stream("ANALYTICS").await.expect("stream");
    assert_eq!(stream.info().await.expect("info").config.max_messages, 1000);
    app.stop().await;
}

/// `redrive` re-publishes the dead letters an operator chooses (here: a batch over `server.max_batch_events`, the
/// limit raised since), which are then stored once and removed from the dead-letter stream; the others stay. A
/// run without `--reason` re-publishes what is still poison too, which comes back once and is not chased round;
/// a dead letter naming a subject the ingester does not consume is never published.
#[tokio::test]
async fn redrive_stores_the_dead_letters_that_are_poison_no_longer() {
    use analytics_server::cli::{RedriveArgs, redrive};
    let stack = Stack::start().await;
    let strict = stack
        .run_in_process(&[("ANALYTICS__SERVER__MAX_BATCH_EVENTS", "2")])
        .await;
    stack
        .publish_raw(
            BATCH_SUBJECT,
            BatchRecordEventsRequest { events: events(3) }.encode_to_vec(),
        )
        .await;
    stack
        .publish_raw("fechatter.analytics.user.login", vec![0xff, 0xff, 0xff, 0x01])
        .await;
    stack.wait_consumer_idle(WAIT).await;
    assert_eq!(stack.stream_messages("ANALYTICS_DLQ").await, 2);
    strict.stop().await;
    // A forged dead letter asking for a JetStream command.
    let mut forged = async_nats::HeaderMap::new();
    forged.insert("Fechatter-Original-Subject", "$JS.API.STREAM.PURGE.ANALYTICS");
    stack
        .js
        .publish_with_headers("fechatter.deadletter.analytics", forged, vec![1].into())
        .await
        .expect("publish")
        .await
        .expect("ack");

    let app = stack.run_in_process(&[]).await;
    let settings = stack.settings(&[]);
    let only = RedriveArgs {
        reason: Some("too_many_events".into()),
        dry_run: true,
    };
    let listed = redrive(&stack.js, &settings, &only).await.expect("dry run");
    assert_eq!((listed.redriven, listed.passed_over, listed.foreign), (1, 1, 1));
    assert_eq!(
        stack.stream_messages("ANALYTICS_DLQ").await,
        3,
        "a dry run changes nothing"
    );

    let published = stack.stream_messages("ANALYTICS").await;
    let done = redrive(
        &stack.js,
        &settings,
        &RedriveArgs {
            dry_run: false,
            ..only.clone()
        },
    )
    .await
    .expect("redrive");
    assert_eq!((done.redriven, done.passed_over, done.foreign, done.cut), (1, 1, 1, 0));
    assert_eq!(
        stack.stream_messages("ANALYTICS").await,
        published + 1,
        "published once"
    );
    stack.wait_for_rows(3, WAIT).await;
    assert_eq!(
        stack.stream_messages("ANALYTICS_DLQ").await,
        2,
        "the garbage and the forgery stay"
    );

    // Everything, the garbage included: it is dead-lettered again, at a later sequence, and left there.
    let all = redrive(&stack.js, &settings, &RedriveArgs::default())
        .await
        .expect("all");
    assert_eq!((all.redriven, all.foreign), (1, 1));
    stack.wait_consumer_idle(WAIT).await;
    assert_eq!(
        stack.stream_messages("ANALYTICS_DLQ").await,
        2,
        "the garbage came back once"
    );
    assert_eq!(stack.count_final().await, 3);
    app.stop().await;
}

/// A redrive interrupted after re-publishing a dead letter but before removing it, and run again once JetStream's
/// duplicate window has passed, publishes the dead letter twice, at two sequences. Its events that carry no
/// `event_id` (whose ids are otherwise derived from the message's sequence) are still stored once: every copy
/// takes its ids from the dead letter.
#[tokio::test]
async fn a_dead_letter_redriven_twice_stores_its_events_without_event_id_once() {
    use analytics_server::cli::{RedriveArgs, redrive, republication_headers};
    let stack = Stack::start().await;
    let strict = stack
        .run_in_process(&[("ANALYTICS__SERVER__MAX_BATCH_EVENTS", "2")])
        .await;
    let mut legacy = events(3);
    for event in &mut legacy {
        if let Some(context) = event.context.as_mut() {
            context.event_id.clear();
        }
    }
    stack
        .publish_raw(
            BATCH_SUBJECT,
            BatchRecordEventsRequest { events: legacy }.encode_to_vec(),
        )
        .await;
    stack.wait_consumer_idle(WAIT).await;
    assert_eq!(stack.stream_messages("ANALYTICS_DLQ").await, 1);
    strict.stop().await;

    let app = stack.run_in_process(&[]).await;
    let settings = stack.settings(&[]);
    // The interrupted run: its copy went out, and the dead letter stayed. A `Nats-Msg-Id` of its own stands for the
    // duplicate window having passed since (JetStream has forgotten the id).
    let name = &settings.jetstream.dead_letter_stream;
    let dead_letters = stack.js.get_stream(name).await.expect("dead-letter stream");
    let dead = dead_letters
        .get_first_raw_message_by_subject(">", 1)
        .await
        .expect("the dead letter");
    let mut headers = republication_headers(name, &dead);
    headers.insert(async_nats::header::NATS_MESSAGE_ID, "an earlier run's copy");
    stack
        .js
        .publish_with_headers(BATCH_SUBJECT, headers, dead.payload.clone())
        .await
        .expect("publish")
        .await
        .expect("ack");
    stack.wait_for_rows(3, WAIT).await;

    let done = redrive(&stack.js, &settings, &RedriveArgs::default())
        .await
        .expect("the second run");
    assert_eq!(done.redriven, 1);
    stack.wait_consumer_idle(WAIT).await;
    assert_eq!(stack.stream_messages("ANALYTICS_DLQ").await, 0);
    // Consumed, so stored (a message is acknowledged once its rows are in ClickHouse).
    assert_eq!(
        stack.distinct_ids().await,
        3,
        "both copies stored their events under the same ids"
    );
    assert_eq!(stack.count_final().await, 3);
    app.stop().await;
}
