//! The analytics outbox on real servers: events reach JetStream once, with `Nats-Msg-Id = event_id`; NATS down
//! never stops the API and loses nothing; several relays at once publish nothing twice.

mod common;

use common::{TestApp, User, create_analytics_stream, sample};
use fechatter_protos::v1::AnalyticsEvent;
use fechatter_server::analytics::MAX_DETACHED_WRITES;
use fechatter_server::live::journal;
use prost::Message as _;
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use std::collections::HashSet;
use std::time::Duration;
use test_support::wait_until;

/// One user action that writes one analytics event (`file_uploaded`).
async fn act(app: &TestApp, user: &User, n: usize) {
    let form = Form::new().part(
        "file",
        Part::bytes(format!("file {n}").into_bytes()).file_name(format!("{n}.txt")),
    );
    let (status, body) = app
        .send(app.request(reqwest::Method::POST, "/api/upload", user).multipart(form))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

async fn stream_events(stream: &async_nats::jetstream::stream::Stream) -> Vec<(String, AnalyticsEvent)> {
    let mut info = stream.clone();
    let last = info.info().await.expect("info").state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = stream.get_raw_message(seq).await {
            let id = m
                .headers
                .get("Nats-Msg-Id")
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            out.push((id, AnalyticsEvent::decode(m.payload).expect("decodes")));
        }
    }
    out
}

async fn wait_outbox_empty(app: &TestApp, timeout: Duration) {
    wait_until("outbox drained", timeout, || async {
        (app.outbox_depth().await == 0).then_some(())
    })
    .await
    .unwrap_or_else(|_| panic!("outbox still holds rows"));
}

#[tokio::test]
async fn events_reach_jetstream_once_with_their_id_as_message_id() {
    let app = TestApp::start(&[]).await;
    let stream = create_analytics_stream(&app.nats.url()).await;
    let alice = app.direct_user("Alice", None).await;
    for n in 0..5 {
        act(&app, &alice, n).await;
    }
    wait_outbox_empty(&app, Duration::from_secs(10)).await;
    let events = stream_events(&stream).await;
    assert_eq!(events.len(), 5);
    for (msg_id, event) in &events {
        assert_eq!(msg_id, event.event_id());
        assert_eq!(event.type_name(), Some("file_uploaded"));
        let ctx = event.context.as_ref().expect("context");
        assert_eq!(ctx.user_id, alice.id.to_string());
        assert_eq!(ctx.workspace_id, alice.workspace_id.to_string());
        assert_eq!(ctx.ip, "127.0.0.1");
        assert!(ctx.server_ts > 0 && !ctx.app_version.is_empty());
        assert_eq!(uuid::Uuid::parse_str(&ctx.event_id).expect("uuid").get_version_num(), 7);
    }
}

/// The relay never waits for `flush_interval_ms` (ten minutes here) while rows come in: a message send wakes it
/// in memory once its statement committed, and any other action once its transaction committed (neither by a
/// `NOTIFY`).
#[tokio::test]
async fn new_rows_wake_the_relay_long_before_the_flush_interval() {
    let app = TestApp::start(&[("FECHATTER__ANALYTICS__FLUSH_INTERVAL_MS", "600000")]).await;
    let stream = create_analytics_stream(&app.nats.url()).await;
    let alice = app.direct_user("Alice", None).await;
    let chat = app.create_chat(&alice, "Wake", "group", &[]).await;
    wait_outbox_empty(&app, Duration::from_secs(5)).await;
    for n in 0..3 {
        app.send_message(&alice, chat, &format!("message {n}")).await;
        wait_outbox_empty(&app, Duration::from_secs(5)).await;
        act(&app, &alice, n).await;
        wait_outbox_empty(&app, Duration::from_secs(5)).await;
    }
    let kinds: Vec<String> = stream_events(&stream)
        .await
        .iter()
        .map(|(_, e)| e.type_name().unwrap_or_default().to_owned())
        .collect();
    let expected = ["chat_created", "chat_joined", "message_sent", "file_uploaded"];
    let expected: Vec<&str> = expected[..2]
        .iter()
        .chain(expected[2..].iter().cycle().take(6))
        .copied()
        .collect();
    assert_eq!(kinds, expected);
}

#[tokio::test]
async fn with_nats_down_the_api_keeps_serving_and_the_outbox_drains_once_it_is_back() {
    let mut app = TestApp::start(&[]).await;
    let stream = create_analytics_stream(&app.nats.url()).await;
    let alice = app.direct_user("Alice", None).await;
    act(&app, &alice, 0).await;
    wait_outbox_empty(&app, Duration::from_secs(10)).await;
    let written = sample(&app.metrics().await, "fechatter_analytics_events_written_total");

    app.nats.stop().await;
    for n in 1..=30 {
        act(&app, &alice, n).await;
    }
    assert!(app.outbox_depth().await > 0, "events wait in the outbox");
    let metrics = app.metrics().await;
    assert!(metrics.contains("fechatter_analytics_outbox_depth"), "{metrics}");
    assert_eq!(
        sample(&metrics, "fechatter_analytics_events_written_total") - written,
        app.outbox_depth().await as f64,
        "each committed event is counted as written, once"
    );
    let ready = app.http.get(app.url("/ready")).send().await.expect("ready");
    assert_eq!(
        ready.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "NATS down shows in /ready"
    );

    app.nats.restart().await.expect("nats restarts");
    wait_outbox_empty(&app, Duration::from_secs(60)).await;
    let events = stream_events(&stream).await;
    let ids: HashSet<&str> = events.iter().map(|(_, e)| e.event_id()).collect();
    assert_eq!(events.len(), 31, "every event once");
    assert_eq!(ids.len(), 31);
}

#[tokio::test]
async fn with_nats_down_the_server_still_stops_promptly_and_keeps_its_events() {
    let mut app = TestApp::start(&[]).await;
    let alice = app.direct_user("Alice", None).await;
    app.nats.stop().await;
    for n in 0..3 {
        act(&app, &alice, n).await;
    }
    let started = std::time::Instant::now();
    app.token.cancel();
    let handle = app.handle.take().expect("running");
    // A relay round gives up on its acks after `ack_timeout_ms` (5 s); nothing after it may wait for NATS.
    let stopped = tokio::time::timeout(Duration::from_secs(30), handle).await;
    assert!(
        stopped.is_ok(),
        "still stopping after {:?} with NATS down",
        started.elapsed()
    );
    assert_eq!(
        app.outbox_depth().await,
        3,
        "the events wait in the outbox for the next start"
    );
}

#[tokio::test]
async fn two_relays_at_once_publish_every_event_once() {
    let app = TestApp::start(&[("FECHATTER__ANALYTICS__BATCH_SIZE", "7")]).await;
    let alice = app.direct_user("Alice", None).await;
    // Fill the outbox, and the journal with message sends' events, while no stream exists (nothing can be
    // published yet).
    for n in 0..60 {
        act(&app, &alice, n).await;
    }
    let chat = app.create_chat(&alice, "Busy", "group", &[]).await;
    for n in 0..30 {
        app.send_message(&alice, chat, &format!("message {n}")).await;
    }
    // A second instance on the same database: two relays compete for the rows.
    let second = fechatter_server::startup::Application::build(
        fechatter_server::config::Settings::load(None, app.env()).expect("settings"),
    )
    .await
    .expect("second instance");
    let token = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(second.run_until_stopped(token.clone()));
    let stream = create_analytics_stream(&app.nats.url()).await;
    wait_outbox_empty(&app, Duration::from_secs(30)).await;
    let mut info = stream.clone();
    // 60 uploads, the chat's chat_created and its owner's chat_joined, 30 sends.
    assert_eq!(info.info().await.expect("info").state.messages, 60 + 2 + 30);
    token.cancel();
    let _ = handle.await;
}

/// Prunes the journal as the live hub does; returns the rows deleted.
async fn prune_now(app: &TestApp, pruner: &mut journal::Pruner) -> u64 {
    let cursor = journal::Cursor::now(&app.pool).await.expect("cursor");
    pruner.maybe_prune(&app.pool, &cursor).await.expect("prune")
}

/// Message sends carry their events in their live-update journal rows: those rows outlive the journal's pruning
/// until the relay has published them, and a backlog larger than a round is read in pages, each event once.
#[tokio::test]
async fn message_events_wait_in_the_journal_through_its_pruning_and_are_published_once_in_pages() {
    let app = TestApp::start(&[
        ("FECHATTER__ANALYTICS__BATCH_SIZE", "2"),
        ("FECHATTER__ANALYTICS__FLUSH_INTERVAL_MS", "300"),
    ])
    .await;
    let alice = app.direct_user("Alice", None).await;
    let chat = app.create_chat(&alice, "Paged", "group", &[]).await;
    // The sends' transaction ids cross a power of ten (999 → 1000), where their order as text differs.
    let xid = || async {
        sqlx::query_scalar::<_, i64>("SELECT pg_current_xact_id()::text::bigint")
            .fetch_one(&app.pool)
            .await
            .expect("xid")
    };
    let boundary = 10i64.pow(xid().await.ilog10() + 1);
    while xid().await < boundary - 4 {}
    for n in 0..7 {
        app.send_message(&alice, chat, &format!("message {n}")).await;
    }
    let crossed: bool = sqlx::query_scalar(
        "SELECT min(xid::text::bigint) < $1 AND max(xid::text::bigint) >= $1 FROM live_events WHERE event IS NOT NULL",
    )
    .bind(boundary)
    .fetch_one(&app.pool)
    .await
    .expect("xids");
    assert!(crossed, "the sends straddle {boundary}");
    // No stream yet: nothing is published. Prune as the live hub does, with no retention.
    let mut pruner = journal::Pruner::retaining(Duration::ZERO);
    prune_now(&app, &mut pruner).await;
    let pruned = prune_now(&app, &mut pruner).await;
    assert!(pruned >= 1, "the chat's notice, which carries no event, is pruned");
    assert_eq!(
        app.outbox_events("fechatter.analytics.message.sent").await.len(),
        7,
        "the events are kept"
    );

    let stream = create_analytics_stream(&app.nats.url()).await;
    wait_outbox_empty(&app, Duration::from_secs(15)).await;
    let events = stream_events(&stream).await;
    let sent: HashSet<&str> = events
        .iter()
        .filter(|(_, e)| e.type_name() == Some("message_sent"))
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(sent.len(), 7, "{events:?}");
    assert_eq!(
        events.len(),
        2 + 7,
        "chat_created, chat_joined and each message_sent once"
    );
    assert_eq!(
        sample(&app.metrics().await, "fechatter_analytics_events_published_total"),
        9.0,
        "and published once: JetStream's dedup would hide a second publish"
    );

    // Published now, so the next prunes take them.
    prune_now(&app, &mut pruner).await;
    prune_now(&app, &mut pruner).await;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM live_events WHERE event IS NOT NULL")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(left, 0, "relayed events are pruned with their notices");
}

/// An event that cannot be published (here: no stream covers its subject) stays in the outbox and holds up no
/// other: the rows published in the same relay round are deleted, the rest kept for later rounds.
#[tokio::test]
async fn a_row_that_cannot_be_published_holds_up_no_other() {
    // Rounds of 2 rows, and a timer too slow to matter: the two sign-ups' events, which no stream takes, fill a
    // whole round, and the file events must still go out as soon as they are written.
    let app = TestApp::start(&[
        ("FECHATTER__ANALYTICS__FLUSH_INTERVAL_MS", "60000"),
        ("FECHATTER__ANALYTICS__BATCH_SIZE", "2"),
    ])
    .await;
    let alice = app.signup("Alice", "Acme").await;
    app.signup("Bob", "Beta").await;
    // Ten more rounds' worth of them, ahead of the file events: the relay must not wait between these rounds.
    sqlx::query(
        "INSERT INTO analytics_outbox (event_id, subject, payload) \
         SELECT gen_random_uuid(), subject, payload FROM analytics_outbox, generate_series(1, 10) \
         WHERE subject = 'fechatter.analytics.user.register'",
    )
    .execute(&app.pool)
    .await
    .expect("more refused rows");
    let nats = async_nats::connect(app.nats.url()).await.expect("connect");
    let files = async_nats::jetstream::new(nats)
        .create_stream(async_nats::jetstream::stream::Config {
            name: "FILES_ONLY".into(),
            subjects: vec!["fechatter.analytics.file.>".into()],
            ..Default::default()
        })
        .await
        .expect("stream");
    for n in 0..3 {
        act(&app, &alice, n).await;
    }
    wait_until("file events published", Duration::from_secs(15), || async {
        app.outbox_events("fechatter.analytics.file.uploaded")
            .await
            .is_empty()
            .then_some(())
    })
    .await
    .expect("the file events left the outbox");
    let mut info = files.clone();
    assert_eq!(info.info().await.expect("info").state.messages, 3);
    let kept = app.outbox_events("fechatter.analytics.user.register").await;
    assert_eq!(
        kept.len(),
        22,
        "the sign-ups' events wait for a stream that covers them"
    );
    assert_eq!(kept[0].user_id(), alice.id.to_string());
    let metrics = app.metrics().await;
    assert!(
        sample(&metrics, "fechatter_analytics_publish_failures_total") >= 1.0,
        "failures are counted: {metrics}"
    );
    assert_eq!(sample(&metrics, "fechatter_analytics_events_published_total"), 3.0);
}

#[tokio::test]
async fn an_outbox_row_with_no_analytics_subject_is_dropped_and_holds_up_no_other() {
    // The relay sends rows as stored; a row whose subject was corrupted in the database would fail every round.
    let app = TestApp::start(&[("FECHATTER__ANALYTICS__FLUSH_INTERVAL_MS", "300")]).await;
    let stream = create_analytics_stream(&app.nats.url()).await;
    sqlx::query("INSERT INTO analytics_outbox (event_id, subject, payload) VALUES ($1, 'fechatter.nothing', '')")
        .bind(uuid::Uuid::now_v7())
        .execute(&app.pool)
        .await
        .expect("corrupted row");
    let alice = app.signup("Alice", "Acme").await;
    act(&app, &alice, 0).await;
    wait_until("the outbox is empty", Duration::from_secs(15), || async {
        (app.outbox_depth().await == 0).then_some(())
    })
    .await
    .expect("the corrupted row is deleted and the others published");
    let mut stream = stream;
    let stored = stream.info().await.expect("info").state.messages;
    let metrics = app.metrics().await;
    assert_eq!(
        sample(&metrics, "fechatter_analytics_events_published_total"),
        stored as f64
    );
    assert_eq!(sample(&metrics, "fechatter_analytics_publish_failures_total"), 0.0);
}

/// A cursor naming transactions the database has not reached (a dump restored into another cluster) would make
/// every new event look relayed already; the relay starts over instead.
#[tokio::test]
async fn a_journal_cursor_from_another_cluster_is_reset_and_no_event_is_skipped() {
    let app = TestApp::start(&[("FECHATTER__ANALYTICS__FLUSH_INTERVAL_MS", "300")]).await;
    let stream = create_analytics_stream(&app.nats.url()).await;
    sqlx::query(
        "UPDATE analytics_journal_cursor SET relayed = format('%s:%s:', x, x)::pg_snapshot \
         FROM (SELECT pg_current_xact_id()::text::bigint + 1000000 AS x) AS future",
    )
    .execute(&app.pool)
    .await
    .expect("a cursor from the future");
    let alice = app.direct_user("Alice", None).await;
    let chat = app.create_chat(&alice, "Restored", "group", &[]).await;
    app.send_message(&alice, chat, "after the restore").await;
    wait_until("the message's event published", Duration::from_secs(15), || async {
        let kinds: Vec<String> = stream_events(&stream)
            .await
            .iter()
            .map(|(_, e)| e.type_name().unwrap_or_default().to_owned())
            .collect();
        kinds.iter().any(|k| k == "message_sent").then_some(())
    })
    .await
    .expect("the event was not skipped");
}

#[tokio::test]
async fn a_journal_event_with_no_analytics_subject_is_passed_over_and_holds_up_no_other() {
    let app = TestApp::start(&[("FECHATTER__ANALYTICS__FLUSH_INTERVAL_MS", "300")]).await;
    let alice = app.direct_user("Alice", None).await;
    let chat = app.create_chat(&alice, "Corrupt", "group", &[]).await;
    app.send_message(&alice, chat, "corrupted in the database").await;
    sqlx::query("UPDATE live_events SET event_subject = 'fechatter.nothing' WHERE event IS NOT NULL")
        .execute(&app.pool)
        .await
        .expect("corrupt");
    app.send_message(&alice, chat, "fine").await;
    let stream = create_analytics_stream(&app.nats.url()).await;
    wait_outbox_empty(&app, Duration::from_secs(15)).await;
    let mut kinds: Vec<String> = stream_events(&stream)
        .await
        .iter()
        .map(|(_, e)| e.type_name().unwrap_or_default().to_owned())
        .collect();
    // The outbox's and the journal's events reach the stream in either order (the outbox's rows, refused before
    // the stream existed, may wait out their parking).
    kinds.sort();
    assert_eq!(kinds, ["chat_created", "chat_joined", "message_sent"]);
}

#[tokio::test]
async fn with_analytics_disabled_no_events_are_written() {
    let app = TestApp::start(&[("FECHATTER__FEATURES__MESSAGING__ENABLED", "false")]).await;
    let alice = app.direct_user("Alice", None).await;
    act(&app, &alice, 0).await;
    assert_eq!(app.outbox_depth().await, 0);
}

#[tokio::test]
async fn a_5xx_answer_is_opaque_and_recorded_as_error_occurred() {
    let app = TestApp::start(&[]).await;
    let alice = app.direct_user("Alice", None).await;
    // Break the storage behind one route: the next upload fails inside the server.
    sqlx::query("DROP TABLE files").execute(&app.pool).await.expect("drop");
    let form = Form::new().part("file", Part::bytes(b"x".to_vec()).file_name("x.txt"));
    let (status, body) = app
        .send(
            app.request(reqwest::Method::POST, "/api/upload", &alice)
                .multipart(form),
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        body,
        serde_json::json!({"error": "internal", "message": "internal error"}),
        "no detail leaks"
    );
    // Written after the answer, in a task of its own.
    let errors = error_events(&app, 1).await;
    assert_eq!(errors[0].user_id(), alice.id.to_string());
    let Some(fechatter_protos::v1::analytics_event::EventType::ErrorOccurred(e)) = &errors[0].event_type else {
        panic!("not an error_occurred event");
    };
    assert_eq!(e.error_code, "500");
    assert!(e.context.starts_with("/api/upload"), "{}", e.context);

    // A caller without an access token is nobody: no user id, rather than a user 0 that does not exist.
    let bob = app.signup("Bob", "Beta").await;
    sqlx::query("DROP TABLE refresh_tokens")
        .execute(&app.pool)
        .await
        .expect("drop");
    let signin = serde_json::json!({ "email": bob.email, "password": bob.password });
    let (status, _) = app.send(app.http.post(app.url("/api/signin")).json(&signin)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let errors = error_events(&app, 2).await;
    let context = errors[1].context.as_ref().expect("context");
    assert_eq!((context.user_id.as_str(), context.workspace_id.as_str()), ("", ""));
    assert!(!context.ip.is_empty(), "the rest of the context is kept");
}

/// An upload that fails inside the server once `DROP TABLE files` ran.
async fn failing_upload(app: &TestApp, user: &User) -> StatusCode {
    let form = Form::new().part("file", Part::bytes(b"x".to_vec()).file_name("x.txt"));
    let request = app.request(reqwest::Method::POST, "/api/upload", user).multipart(form);
    app.send(request).await.0
}

/// The `error_occurred` rows of the outbox, once there are `n`.
async fn error_events(app: &TestApp, n: usize) -> Vec<AnalyticsEvent> {
    wait_until("error_occurred rows", Duration::from_secs(10), || async {
        let errors = app.outbox_events("fechatter.analytics.error.occurred").await;
        (errors.len() == n).then_some(errors)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn a_5xx_is_answered_at_once_while_its_event_cannot_be_written_and_excess_events_are_dropped() {
    let app = TestApp::start(&[]).await;
    let alice = app.direct_user("Alice", None).await;
    sqlx::query("DROP TABLE files").execute(&app.pool).await.expect("drop");
    // Every write to the outbox now waits for this transaction, as it would for a database that hangs.
    let mut outbox_lock = app.pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE analytics_outbox IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *outbox_lock)
        .await
        .expect("lock");
    let excess = 3;

    for n in 0..MAX_DETACHED_WRITES + excess {
        let answer = tokio::time::timeout(Duration::from_secs(5), failing_upload(&app, &alice)).await;
        assert_eq!(
            answer.ok(),
            Some(StatusCode::INTERNAL_SERVER_ERROR),
            "failure {n} answered at once, not after its event"
        );
    }
    outbox_lock.rollback().await.expect("unlock");

    // The writes that were waiting complete; the ones beyond the bound were dropped and counted.
    error_events(&app, MAX_DETACHED_WRITES).await;
    let dropped = sample(&app.metrics().await, "fechatter_analytics_events_dropped_total");
    assert_eq!(dropped, excess as f64);
}

#[tokio::test]
async fn the_openapi_document_and_its_ui_are_served() {
    let app = TestApp::start(&[]).await;
    let doc: serde_json::Value = app
        .http
        .get(app.url("/api-docs/openapi.json"))
        .send()
        .await
        .expect("doc")
        .json()
        .await
        .expect("json");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{doc}");
    for path in ["/api/upload", "/api/files/{workspace_id}/{sha256}"] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing from the document");
    }
    let ui = app.http.get(app.url("/swagger-ui/")).send().await.expect("ui");
    assert_eq!(ui.status(), StatusCode::OK);
    assert!(
        ui.text().await.expect("html").contains("swagger"),
        "the UI page is served"
    );
}

/// A pool connected as the API's are (`startup::connect_database`, with its session settings).
async fn api_pool(app: &TestApp) -> sqlx::PgPool {
    let settings = fechatter_server::config::Settings::load(None, app.env()).expect("settings");
    fechatter_server::startup::connect_database(&settings)
        .await
        .expect("pool")
}

#[tokio::test]
async fn the_api_connections_run_without_jit_compilation() {
    let app = TestApp::start(&[]).await;
    let pool = api_pool(&app).await;
    // The outbox-depth count that every /metrics scrape runs was JIT-compiled (~70 ms of CPU) on a long journal.
    let jit: String = sqlx::query_scalar("SHOW jit").fetch_one(&pool).await.expect("jit");
    assert_eq!(jit, "off");
}

/// The relay asks whether events wait before every round; on a journal of already relayed sends, the answer must
/// come from the primary key's newest entries, not from reading the whole journal (a minute of sends), which an
/// `EXISTS` did: 10-20 ms of PostgreSQL's CPU per round at 30,000 rows.
#[tokio::test]
async fn the_relays_check_for_waiting_events_reads_no_whole_journal() {
    let app = TestApp::start(&[]).await;
    let pool = api_pool(&app).await;
    journal_events(&pool, 20_000).await;
    // As a relay that passed them all leaves it.
    sqlx::query("UPDATE analytics_journal_cursor SET relayed = pg_current_snapshot(), upper = NULL")
        .execute(&pool)
        .await
        .expect("cursor");
    assert!(!events_wait(&pool).await, "every event was relayed");

    // A constant of this crate's, not input.
    let plan: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {}",
        fechatter_server::analytics::journal_relay::WORK_WAITS
    )))
    .fetch_one(&pool)
    .await
    .expect("plan");
    let blocks = plan[0]["Plan"]["Shared Hit Blocks"].as_u64().unwrap_or(0)
        + plan[0]["Plan"]["Shared Read Blocks"].as_u64().unwrap_or(0);
    // The journal's 20,000 rows fill over 100 pages; its newest index entries and the cursor, a handful.
    assert!(blocks < 20, "the check read {blocks} pages: {plan}");

    // And it still sees a new event.
    journal_events(&pool, 1).await;
    assert!(events_wait(&pool).await, "a new event waits");

    // Rows above the cursor's oldest running transaction but already relayed are passed over, and the event
    // of a transaction that was running at the cursor's snapshot, committed since, is seen.
    let mut running = pool.begin().await.expect("begin");
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *running)
        .await
        .expect("xid");
    for _ in 0..3 {
        journal_events(&pool, 100).await;
    }
    sqlx::query("UPDATE analytics_journal_cursor SET relayed = pg_current_snapshot(), upper = NULL")
        .execute(&pool)
        .await
        .expect("cursor");
    assert!(
        !events_wait(&pool).await,
        "the rows after the running transaction were relayed"
    );
    journal_events(&mut *running, 1).await;
    running.commit().await.expect("commit");
    assert!(events_wait(&pool).await, "the running transaction's event waits");
}

/// Writes `n` journal rows carrying an event, as message sends do.
async fn journal_events<'c>(conn: impl sqlx::PgExecutor<'c>, n: i32) {
    sqlx::query(
        "INSERT INTO live_events (notice, event_id, event_subject, event) \
         SELECT '{}', gen_random_uuid(), 'fechatter.analytics.message.sent', '\\x00' FROM generate_series(1, $1)",
    )
    .bind(n)
    .execute(conn)
    .await
    .expect("journal rows");
}

/// The relay's check before each round.
async fn events_wait(pool: &sqlx::PgPool) -> bool {
    sqlx::query_scalar(fechatter_server::analytics::journal_relay::WORK_WAITS)
        .fetch_one(pool)
        .await
        .expect("check")
}

/// A relay round's commit does not wait for the disk (losing it only publishes its events again, which the
/// dedup absorbs); the setting ends with the round, so the connection goes back to the pool as it was.
#[tokio::test]
async fn a_relay_round_commits_without_waiting_for_the_disk_and_alone() {
    let app = TestApp::start(&[]).await;
    let settings = fechatter_server::config::Settings::load(None, app.env()).expect("settings");
    // One connection that commits durably by default (the tests' server does not: it runs without fsync).
    let options: sqlx::postgres::PgConnectOptions = settings.database.url.parse().expect("url");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.options([("synchronous_commit", "on")]))
        .await
        .expect("pool");
    let mut round = fechatter_server::analytics::outbox::begin_round(&pool)
        .await
        .expect("round");
    let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&mut *round)
        .await
        .expect("show");
    assert_eq!(setting, "off");
    round.commit().await.expect("commit");
    let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&pool)
        .await
        .expect("show");
    assert_eq!(setting, "on", "the same connection, after the round");
}

/// `/metrics` answers anyone, and the outbox depth is a count of every waiting row: scrapes count it at most
/// every 5 s, the others report the last count.
#[tokio::test]
async fn scrapes_count_the_outbox_depth_at_most_every_five_seconds() {
    let mut app = TestApp::start(&[]).await;
    let alice = app.direct_user("Alice", None).await;
    app.nats.stop().await;
    let first = sample(&app.metrics().await, "fechatter_analytics_outbox_depth");
    act(&app, &alice, 1).await;
    assert!(app.outbox_depth().await as f64 > first, "the action's events wait");
    let second = sample(&app.metrics().await, "fechatter_analytics_outbox_depth");
    assert_eq!(second, first, "not counted again so soon");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let third = sample(&app.metrics().await, "fechatter_analytics_outbox_depth");
    assert_eq!(third, app.outbox_depth().await as f64, "counted again after 5 s");
}
