//! Live updates (`GET /api/events`, server-sent events) against real PostgreSQL and NATS servers, read the way a
//! browser would: a streaming HTTP response parsed into `data:` lines. Members receive the changes of their
//! chats and nothing of other chats, membership changes take effect on open streams, a large message arrives
//! whole, a second server instance on the same database delivers what the first one committed, and shutting
//! down ends open streams instead of hanging. The hub and its journal are also driven directly: a read returns
//! a change exactly once, even when its transaction commits after a later one; a change nobody woke the hub for
//! still arrives; a subscriber that falls behind is told to resync rather than buffered without bound; and
//! neither a lost wake-up connection nor a PostgreSQL restart loses a change.

mod common;

use bytes::Bytes;
use common::{TestApp, User};
use fechatter_server::auth::JwtKeys;
use fechatter_server::config::Settings;
use fechatter_server::live::{
    BUFFER_EVENTS, Delivery, LiveHub, LiveKind, MAX_CONCURRENT_LOADS, MAX_STREAMS_PER_USER, POLL_INTERVAL,
    Subscription, journal,
};
use fechatter_server::startup::Application;
use futures::{Stream, StreamExt as _};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::pin::Pin;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Longest wait for an expected event.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

async fn create(app: &TestApp, owner: &User, name: &str, members: &[&User]) -> i64 {
    let ids: Vec<i64> = members.iter().map(|u| u.id).collect();
    app.create_chat(owner, name, "group", &ids).await
}

/// An open `GET /api/events` stream.
struct Events {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buffer: Vec<u8>,
}

impl Events {
    /// Connects to the instance at `base` (`http://127.0.0.1:port`) and waits for `ready`: from then on every
    /// committed change is delivered.
    async fn connect(base: &str, user: &User) -> Events {
        let response = reqwest::Client::new()
            .get(format!("{base}/api/events"))
            .bearer_auth(&user.access_token)
            .send()
            .await
            .expect("connect");
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok());
        assert_eq!(content_type, Some("text/event-stream"));
        let mut events = Events {
            body: Box::pin(response.bytes_stream()),
            buffer: Vec::new(),
        };
        let ready = events.next().await;
        assert_eq!(ready["kind"], "ready", "{ready}");
        events
    }

    /// The data of the next event, within [`EVENT_TIMEOUT`].
    async fn next(&mut self) -> Value {
        tokio::time::timeout(EVENT_TIMEOUT, self.next_data())
            .await
            .expect("an event in time")
            .expect("the stream is open")
    }

    /// The data of the next event (keep-alive comments skipped); `None` when the stream ended.
    async fn next_data(&mut self) -> Option<Value> {
        loop {
            while let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8(block).expect("UTF-8 event");
                let data: Vec<&str> = text
                    .lines()
                    .filter_map(|line| line.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if !data.is_empty() {
                    return Some(serde_json::from_str(&data.join("\n")).expect("JSON data"));
                }
            }
            match self.body.next().await {
                Some(chunk) => self.buffer.extend_from_slice(&chunk.expect("chunk")),
                None => return None,
            }
        }
    }
}

fn base(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// Drains what was committed before now from `streams`, whose users are all members of `chat`: a stream
/// connected just after a change may still receive it (`ready` promises every later change, not only those).
/// Renames `chat` and discards each stream's events up to that rename; a change arrives after every change
/// committed before it began, so afterwards a stream holds only what is committed next.
async fn settle(app: &TestApp, owner: &User, chat: i64, streams: &mut [&mut Events]) {
    let name = format!("settled {}", uuid::Uuid::new_v4().simple());
    let (status, body) = app
        .patch(&format!("/api/chats/{chat}"), owner, json!({ "name": name }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for stream in streams {
        while !(stream.next().await == json!({ "kind": "chat_updated", "chat_id": chat })) {}
    }
}

#[tokio::test]
async fn a_member_receives_message_created_for_their_chat_and_nothing_from_chats_they_are_not_in() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let bob = app.direct_user("Bob", Some(ada.workspace_id)).await;
    let cy = app.direct_user("Cy", Some(ada.workspace_id)).await;
    let shared = create(&app, &ada, "Shared", &[&bob]).await;
    let mut bobs = Events::connect(&base(app.port), &bob).await;
    settle(&app, &ada, shared, &mut [&mut bobs]).await;

    // Committed first: were anything of it leaked to Bob, it would arrive before the shared chat's message.
    let private = create(&app, &ada, "Without Bob", &[&cy]).await;
    app.send_message(&ada, private, "not for bob").await;
    let (status, _) = app
        .post(
            &format!("/api/chats/{private}/members"),
            &ada,
            json!({ "user_ids": [ada.id] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let id = app.send_message(&ada, shared, "hello bob").await;

    let event = bobs.next().await;
    assert_eq!(event["kind"], "message_created", "{event}");
    assert_eq!(
        (event["chat_id"].as_i64(), event["message_id"].as_i64()),
        (Some(shared), Some(id))
    );
    assert_eq!(event["message"]["content"], "hello bob");
    assert_eq!(event["message"]["sender_id"].as_i64(), Some(ada.id));

    // A replayed send is not announced again.
    let keyed = json!({ "content": "once", "idempotency_key": "k" });
    let (_, first) = app
        .post(&format!("/api/chats/{shared}/messages"), &ada, keyed.clone())
        .await;
    let (status, _) = app.post(&format!("/api/chats/{shared}/messages"), &ada, keyed).await;
    assert_eq!(status, StatusCode::OK);
    let last = app.send_message(&bob, shared, "after the replay").await;
    assert_eq!(bobs.next().await["message_id"], first["id"]);
    assert_eq!(bobs.next().await["message_id"].as_i64(), Some(last));
}

#[tokio::test]
async fn edits_deletions_and_membership_changes_reach_the_members_of_the_chat() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let bob = app.direct_user("Bob", Some(ada.workspace_id)).await;
    let cy = app.direct_user("Cy", Some(ada.workspace_id)).await;
    let chat = create(&app, &ada, "Team", &[&bob]).await;
    let mut bobs = Events::connect(&base(app.port), &bob).await;
    settle(&app, &ada, chat, &mut [&mut bobs]).await;

    let (status, _) = app
        .post(
            &format!("/api/chats/{chat}/members"),
            &ada,
            json!({ "user_ids": [cy.id] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let id = app.send_message(&cy, chat, "draft").await;
    let (status, _) = app
        .patch(
            &format!("/api/chats/{chat}/messages/{id}"),
            &cy,
            json!({ "content": "final" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app.delete(&format!("/api/chats/{chat}/messages/{id}"), &cy).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app.delete(&format!("/api/chats/{chat}/members/{}", cy.id), &cy).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app
        .patch(&format!("/api/chats/{chat}"), &ada, json!({ "name": "Renamed" }))
        .await;
    assert_eq!(status, StatusCode::OK);

    let joined = bobs.next().await;
    assert_eq!(
        (joined["kind"].as_str(), joined["user_id"].as_i64()),
        (Some("member_joined"), Some(cy.id))
    );
    assert_eq!(joined["chat_id"].as_i64(), Some(chat));
    let created = bobs.next().await;
    assert_eq!(
        (created["kind"].as_str(), created["message_id"].as_i64()),
        (Some("message_created"), Some(id))
    );
    let updated = bobs.next().await;
    assert_eq!(
        (updated["kind"].as_str(), updated["message_id"].as_i64()),
        (Some("message_updated"), Some(id))
    );
    assert_eq!(updated["message"]["content"], "final");
    assert!(updated["message"]["edited_at"].is_string());
    let deleted = bobs.next().await;
    assert_eq!(
        (deleted["kind"].as_str(), deleted["message_id"].as_i64()),
        (Some("message_deleted"), Some(id))
    );
    assert_eq!(deleted["chat_id"].as_i64(), Some(chat));
    let left = bobs.next().await;
    assert_eq!(
        (left["kind"].as_str(), left["user_id"].as_i64()),
        (Some("member_left"), Some(cy.id))
    );
    let renamed = bobs.next().await;
    assert_eq!(
        (renamed["kind"].as_str(), renamed["chat_id"].as_i64()),
        (Some("chat_updated"), Some(chat))
    );
}

#[tokio::test]
async fn an_open_stream_follows_the_users_membership_without_reconnecting() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let cy = app.direct_user("Cy", Some(ada.workspace_id)).await;
    let mut cys = Events::connect(&base(app.port), &cy).await;

    let chat = create(&app, &ada, "Later", &[&cy]).await;
    // Cy hears of the new chat by its own join (the owner's, a chat Cy was not in yet, is not Cy's business).
    let joined = cys.next().await;
    assert_eq!(
        (joined["kind"].as_str(), joined["chat_id"].as_i64()),
        (Some("member_joined"), Some(chat))
    );
    assert_eq!(joined["user_id"].as_i64(), Some(cy.id));
    let id = app.send_message(&ada, chat, "welcome").await;
    assert_eq!(cys.next().await["message_id"].as_i64(), Some(id));

    let (status, _) = app.delete(&format!("/api/chats/{chat}/members/{}", cy.id), &ada).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let left = cys.next().await;
    assert_eq!(
        (left["kind"].as_str(), left["user_id"].as_i64()),
        (Some("member_left"), Some(cy.id))
    );
    app.send_message(&ada, chat, "cy is gone").await;
    let (status, _) = app.delete(&format!("/api/chats/{chat}"), &ada).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let next_chat = create(&app, &ada, "Again", &[&cy]).await;

    let next = cys.next().await;
    assert_eq!(
        (next["kind"].as_str(), next["chat_id"].as_i64()),
        (Some("member_joined"), Some(next_chat)),
        "nothing of the chat Cy left: {next}"
    );
}

#[tokio::test]
async fn a_large_message_arrives_whole() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let bob = app.direct_user("Bob", Some(ada.workspace_id)).await;
    let chat = create(&app, &ada, "Team", &[&bob]).await;
    let mut bobs = Events::connect(&base(app.port), &bob).await;
    settle(&app, &ada, chat, &mut [&mut bobs]).await;
    // 4000 characters of 3 bytes each: 12 kB, beyond what PostgreSQL stores inline in a row (it compresses or
    // moves it out of line).
    let content = "€".repeat(4000);

    let id = app.send_message(&ada, chat, &content).await;

    let event = bobs.next().await;
    assert_eq!(
        (event["kind"].as_str(), event["message_id"].as_i64()),
        (Some("message_created"), Some(id))
    );
    assert_eq!(event["message"]["content"].as_str(), Some(content.as_str()));
}

#[tokio::test]
async fn an_sse_client_of_one_instance_receives_a_message_sent_through_another() {
    let app = TestApp::start(&[]).await;
    let settings = Settings::load(None, app.env()).expect("settings");
    let second = Application::build(settings).await.expect("second instance starts");
    let second_port = second.port();
    assert_ne!(second_port, app.port);
    let stop_second = CancellationToken::new();
    let second = tokio::spawn(second.run_until_stopped(stop_second.clone()));
    let ada = app.direct_user("Ada", None).await;
    let bob = app.direct_user("Bob", Some(ada.workspace_id)).await;
    let chat = create(&app, &ada, "Team", &[&bob]).await;
    let mut bobs_on_second = Events::connect(&base(second_port), &bob).await;
    let mut adas_on_first = Events::connect(&base(app.port), &ada).await;
    settle(&app, &ada, chat, &mut [&mut bobs_on_second, &mut adas_on_first]).await;

    let id = app.send_message(&ada, chat, "sent through the first instance").await;

    let event = bobs_on_second.next().await;
    assert_eq!(
        (event["kind"].as_str(), event["message_id"].as_i64()),
        (Some("message_created"), Some(id))
    );
    assert_eq!(event["message"]["content"], "sent through the first instance");
    let (status, _) = app
        .send(
            app.http
                .post(format!("{}/api/chats/{chat}/messages", base(second_port)))
                .bearer_auth(&bob.access_token)
                .json(&json!({ "content": "and back" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        adas_on_first.next().await["message_id"].as_i64(),
        Some(id),
        "senders hear of their own messages"
    );
    let event = adas_on_first.next().await;
    assert_eq!(event["kind"], "message_created");
    assert_eq!(event["message"]["content"], "and back");

    stop_second.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(20), second).await;
    assert!(
        matches!(stopped, Ok(Ok(Ok(())))),
        "second instance stops cleanly: {stopped:?}"
    );
}

#[tokio::test]
async fn shutting_down_ends_open_event_streams_so_the_server_stops_promptly() {
    let mut app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let mut stream = Events::connect(&base(app.port), &ada).await;

    app.token.cancel();
    let handle = app.handle.take().expect("running");
    let stopped = tokio::time::timeout(Duration::from_secs(10), handle).await;

    assert!(
        matches!(stopped, Ok(Ok(Ok(())))),
        "server stops within 10 s: {stopped:?}"
    );
    let end = tokio::time::timeout(EVENT_TIMEOUT, stream.next_data()).await;
    assert!(matches!(end, Ok(None)), "the stream ended: {end:?}");
}

#[tokio::test]
async fn one_user_cannot_take_every_stream_slot() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let bob = app.direct_user("Bob", None).await;
    let mut open = Vec::new();
    for _ in 0..MAX_STREAMS_PER_USER {
        open.push(Events::connect(&base(app.port), &ada).await);
    }

    let (status, body) = app.get("/api/events", &ada).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"], "rate_limited", "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| m.contains("for this user")),
        "{body}"
    );
    // Another user still connects, and a closed stream gives its slot back.
    let _bob = Events::connect(&base(app.port), &bob).await;
    drop(open.pop());
    let mut again = None;
    for _ in 0..50 {
        let response = reqwest::Client::new()
            .get(format!("{}/api/events", base(app.port)))
            .bearer_auth(&ada.access_token)
            .send()
            .await
            .expect("connect");
        if response.status() == StatusCode::OK {
            again = Some(response);
            break;
        }
        // The server notices the closed connection a moment later.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again.is_some(), "a closed stream's slot came back");
}

#[tokio::test]
async fn an_event_stream_ends_when_its_access_token_expires() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let read = |name: &str| std::fs::read(app.keys_dir.path().join(name)).expect("key file");
    let short = JwtKeys::from_pem(&read("private.pem"), &read("public.pem"), "fechatter", 2).expect("keys");
    let brief = User {
        access_token: short.issue(ada.id, ada.workspace_id).expect("token"),
        ..ada.clone()
    };
    let mut stream = Events::connect(&base(app.port), &brief).await;

    let end = tokio::time::timeout(EVENT_TIMEOUT, stream.next_data()).await;

    assert!(matches!(end, Ok(None)), "the stream ended with the token: {end:?}");
}

/// A hub of its own on the test database, as a second instance would run it.
async fn standalone_hub(app: &TestApp) -> (LiveHub, CancellationToken) {
    hub_polling_every(app, POLL_INTERVAL).await
}

/// As [`standalone_hub`], reading the journal unwoken only every `poll_interval`.
async fn hub_polling_every(app: &TestApp, poll_interval: Duration) -> (LiveHub, CancellationToken) {
    let hub = LiveHub::polling_every(poll_interval);
    let stop = CancellationToken::new();
    tokio::spawn(hub.clone().run(app.pool.clone(), stop.clone()));
    (hub, stop)
}

/// `user`'s subscription to a standalone hub, once it is ready.
async fn ready_subscription(app: &TestApp, user: &User) -> (Subscription, CancellationToken) {
    let (hub, stop) = standalone_hub(app).await;
    let mut subscription = hub.subscribe(app.pool.clone(), user.id).expect("subscription");
    assert!(matches!(next_delivery(&mut subscription).await, Delivery::Ready { .. }));
    (subscription, stop)
}

/// Writes a `chat_updated` notice of `chat` to the journal directly, as a change's transaction would.
async fn write_chat_updated(app: &TestApp, chat: i64) {
    sqlx::query("INSERT INTO live_events (notice) SELECT json_build_object('kind', 'chat_updated', 'chat_id', $1::bigint)::text")
        .bind(chat)
        .execute(&app.pool)
        .await
        .expect("journal");
}

async fn next_delivery(subscription: &mut Subscription) -> Delivery {
    tokio::time::timeout(EVENT_TIMEOUT, subscription.next())
        .await
        .expect("a delivery in time")
        .expect("the subscription is open")
}

/// Every stream loads its membership when it starts, and again on each resync, which reaches all of them at once:
/// the loads hold at most `MAX_CONCURRENT_LOADS` of the pool's connections, however many streams load together,
/// and leave the others to the API's requests.
#[tokio::test]
async fn streams_loading_their_membership_together_leave_connections_to_requests() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let (hub, stop) = standalone_hub(&app).await;
    // One connection more than the loads may hold; a request must still get it while every load is stuck.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(u32::try_from(MAX_CONCURRENT_LOADS + 1).expect("small"))
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(&app.database_url)
        .expect("pool");
    // Membership reads wait, holding their connections, while this transaction holds the table.
    let mut lock = app.pool.begin().await.expect("transaction");
    sqlx::query("LOCK TABLE chat_members IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .expect("lock");
    let loads: Vec<_> = (0..MAX_STREAMS_PER_USER)
        .map(|_| {
            let mut subscription = hub.subscribe(pool.clone(), ada.id).expect("subscription");
            tokio::spawn(async move { next_delivery(&mut subscription).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let request = pool.acquire().await;

    assert!(
        request.is_ok(),
        "a request waited in vain for a connection while streams loaded"
    );
    drop(request);
    lock.rollback().await.expect("unlock");
    for load in loads {
        let delivery = load.await.expect("load task");
        assert!(matches!(delivery, Delivery::Ready { chats: 0 }), "{delivery:?}");
    }
    stop.cancel();
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_loses_the_oldest_events_and_is_told_to_resync() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let bob = app.direct_user("Bob", Some(ada.workspace_id)).await;
    let busy = create(&app, &ada, "Busy", &[]).await;
    let quiet = create(&app, &bob, "Quiet", &[]).await;
    let (hub, stop) = standalone_hub(&app).await;
    let mut slow = hub.subscribe(app.pool.clone(), ada.id).expect("subscription");
    let mut witness = hub.subscribe(app.pool.clone(), bob.id).expect("subscription");
    assert!(matches!(next_delivery(&mut slow).await, Delivery::Ready { chats: 1 }));
    assert!(matches!(
        next_delivery(&mut witness).await,
        Delivery::Ready { chats: 1 }
    ));
    let burst = BUFFER_EVENTS + 100;

    // Changes of others in Ada's chat, far more than a subscriber may fall behind, then one in Bob's.
    sqlx::query(
        "INSERT INTO live_events (notice) SELECT json_build_object('kind', 'member_left', 'chat_id', $1::bigint, \
         'ids', json_build_array(g))::text FROM generate_series(1, $2::int) AS g ORDER BY g",
    )
    .bind(busy)
    .bind(i32::try_from(burst).expect("small"))
    .execute(&app.pool)
    .await
    .expect("journal");
    write_chat_updated(&app, quiet).await;
    hub.committed();
    // Once Bob's subscriber sees its chat's change, the hub has broadcast everything.
    loop {
        match next_delivery(&mut witness).await {
            Delivery::Event(event) if event.chat_id == quiet => break,
            Delivery::Event(event) => panic!("Bob only hears of his chat: {event:?}"),
            Delivery::Resync { .. } | Delivery::Ready { .. } => {}
        }
    }

    let missed = u64::try_from(burst + 1 - BUFFER_EVENTS).expect("small");
    match next_delivery(&mut slow).await {
        Delivery::Resync { missed: reported } => assert_eq!(reported, missed),
        other => panic!("expected resync, got {other:?}"),
    }
    match next_delivery(&mut slow).await {
        Delivery::Event(event) => {
            let oldest_kept = i64::try_from(missed + 1).expect("small");
            assert_eq!(event.user_id, Some(oldest_kept), "the newest events are kept");
        }
        other => panic!("expected an event, got {other:?}"),
    }
    stop.cancel();
}

#[tokio::test]
async fn a_lost_wake_up_connection_loses_nothing() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let chat = create(&app, &ada, "Team", &[]).await;
    let (mut subscription, stop) = ready_subscription(&app, &ada).await;
    // The hub listens once it has read the journal: wait for its LISTEN connection.
    let mut killed: Vec<bool> = Vec::new();
    for _ in 0..100 {
        killed = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN \"chat_events\"%'",
        )
        .fetch_all(&app.pool)
        .await
        .expect("terminate");
        if !killed.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!killed.is_empty(), "a LISTEN connection was found");

    // Sent through the test app's own hub: this standalone one hears of it only by its wake-up channel,
    // re-established, or by polling.
    let id = app.send_message(&ada, chat, "after the reconnect").await;

    match next_delivery(&mut subscription).await {
        Delivery::Event(event) => {
            let data: Value = serde_json::from_str(&event.data).expect("json");
            assert_eq!(data["message_id"].as_i64(), Some(id));
        }
        other => panic!("expected the message, no resync: got {other:?}"),
    }
    stop.cancel();
}

#[tokio::test]
async fn a_database_restart_loses_no_change() {
    let mut app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let chat = create(&app, &ada, "Team", &[]).await;
    let (mut subscription, stop) = ready_subscription(&app, &ada).await;

    // A clean stop: the tests' PostgreSQL runs without durability, so a crash would lose its last commits.
    app.postgres.stop().await;
    // Long enough for the hub to fail a few reads and back off.
    tokio::time::sleep(Duration::from_secs(2)).await;
    app.postgres.restart().await.expect("PostgreSQL restarts");
    let id = app.send_message(&ada, chat, "after the crash").await;

    match next_delivery(&mut subscription).await {
        Delivery::Event(event) => {
            let data: Value = serde_json::from_str(&event.data).expect("json");
            assert_eq!(data["message_id"].as_i64(), Some(id));
        }
        other => panic!("expected the message, no resync: got {other:?}"),
    }
    stop.cancel();
}

#[tokio::test]
async fn a_change_nobody_woke_the_hub_for_arrives_within_the_poll_interval() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let chat = create(&app, &ada, "Team", &[]).await;
    let (mut subscription, stop) = ready_subscription(&app, &ada).await;

    // As left by an instance that crashed between its commit and waking anyone (nobody calls `committed`,
    // nobody notifies).
    let written = std::time::Instant::now();
    write_chat_updated(&app, chat).await;

    match next_delivery(&mut subscription).await {
        Delivery::Event(event) => assert_eq!((event.kind, event.chat_id), (LiveKind::ChatUpdated, chat)),
        other => panic!("expected the change, got {other:?}"),
    }
    let waited = written.elapsed();
    assert!(waited < POLL_INTERVAL * 3, "arrived after {waited:?}");
    stop.cancel();
}

#[tokio::test]
async fn a_hub_that_reads_its_own_instances_change_wakes_the_other_instances_hubs() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let chat = create(&app, &ada, "Team", &[]).await;
    // Neither hub reads unwoken within the test: only the wake-up can bring the change across.
    let (writer, stop_writer) = hub_polling_every(&app, Duration::from_secs(3600)).await;
    let (reader, stop_reader) = hub_polling_every(&app, Duration::from_secs(3600)).await;
    let mut subscription = reader.subscribe(app.pool.clone(), ada.id).expect("subscription");
    assert!(matches!(next_delivery(&mut subscription).await, Delivery::Ready { .. }));
    // Hubs listen for wake-ups once they have read the journal once; the test app's own hub is the third.
    let listeners = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN \"chat_events\"%'")
            .fetch_one(&app.pool)
            .await
            .expect("pg_stat_activity")
    };
    for _ in 0..100 {
        if listeners().await >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(listeners().await >= 3, "every hub listens");

    write_chat_updated(&app, chat).await;
    writer.committed();

    match next_delivery(&mut subscription).await {
        Delivery::Event(event) => assert_eq!((event.kind, event.chat_id), (LiveKind::ChatUpdated, chat)),
        other => panic!("expected the change, got {other:?}"),
    }
    stop_writer.cancel();
    stop_reader.cancel();
}

#[tokio::test]
async fn the_journal_keeps_a_row_for_a_retention_period_after_its_transaction_finished() {
    let app = TestApp::start(&[]).await;
    let rows = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM live_events")
            .fetch_one(&app.pool)
            .await
            .expect("count")
    };
    let retain = Duration::from_millis(300);
    let mut pruner = journal::Pruner::retaining(retain);
    let mut cursor = journal::Cursor::now(&app.pool).await.expect("cursor");
    let before = rows().await;
    write_chat_updated(&app, 1).await;
    journal::read(&app.pool, &mut cursor, 100).await.expect("read");
    assert_eq!(
        pruner.maybe_prune(&app.pool, &cursor).await.expect("prune"),
        0,
        "the first call marks"
    );

    // A retention period after the mark, the rows that had finished before it go; a later one stays.
    write_chat_updated(&app, 2).await;
    journal::read(&app.pool, &mut cursor, 100).await.expect("read");
    assert_eq!(
        pruner.maybe_prune(&app.pool, &cursor).await.expect("prune"),
        0,
        "not yet due"
    );
    tokio::time::sleep(retain).await;
    journal::read(&app.pool, &mut cursor, 100).await.expect("read");
    let deleted = pruner.maybe_prune(&app.pool, &cursor).await.expect("prune");
    assert_eq!(
        deleted,
        u64::try_from(before + 1).expect("small"),
        "rows up to the first mark"
    );
    assert_eq!(rows().await, 1, "the row written after the mark is kept");
}

#[tokio::test]
async fn a_journal_read_returns_each_change_once_even_when_an_older_transaction_commits_later() {
    let app = TestApp::start(&[]).await;
    let mut cursor = journal::Cursor::now(&app.pool).await.expect("cursor");
    let notices = |read: journal::Read| match read {
        journal::Read::Notices(notices) => notices,
        journal::Read::Overflow => panic!("no overflow expected"),
    };

    // `early` takes its transaction id first but commits last.
    let mut early = app.pool.begin().await.expect("begin");
    journal::append(&mut early, "early").await.expect("append");
    let mut late = app.pool.begin().await.expect("begin");
    journal::append(&mut late, "late").await.expect("append");
    late.commit().await.expect("commit");

    let first = notices(journal::read(&app.pool, &mut cursor, 100).await.expect("read"));
    assert_eq!(first, ["late"], "only committed changes are read");
    early.commit().await.expect("commit");
    let mut rolled_back = app.pool.begin().await.expect("begin");
    journal::append(&mut rolled_back, "rolled back").await.expect("append");
    rolled_back.rollback().await.expect("rollback");
    let second = notices(journal::read(&app.pool, &mut cursor, 100).await.expect("read"));
    assert_eq!(
        second,
        ["early"],
        "the older transaction's change is read once it commits, and only it"
    );
    let third = notices(journal::read(&app.pool, &mut cursor, 100).await.expect("read"));
    assert!(third.is_empty(), "nothing is read twice: {third:?}");

    for i in 0..3 {
        let mut tx = app.pool.begin().await.expect("begin");
        journal::append(&mut tx, &format!("burst {i}")).await.expect("append");
        tx.commit().await.expect("commit");
    }
    assert!(
        matches!(
            journal::read(&app.pool, &mut cursor, 2).await.expect("read"),
            journal::Read::Overflow
        ),
        "more than the limit is reported, not returned"
    );
    assert!(notices(journal::read(&app.pool, &mut cursor, 100).await.expect("read")).is_empty());
}
