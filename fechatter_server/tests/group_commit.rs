//! Group commit of message sends (`chat::send_queue`) against a real PostgreSQL: sends written together in one
//! statement each get their own answer (created, replayed or refused), a send that makes the statement fail
//! fails alone, concurrent HTTP sends are written in shared statements yet each stored exactly once, with its
//! event and its live-update notice, and the writers' own connections survive a database restart.

mod common;

use common::{TestApp, User, sample};
use fechatter_protos::v1::analytics_event::EventType;
use fechatter_protos::v1::{AnalyticsEvent, EventContext, MessageSentEvent};
use fechatter_server::analytics::outbox::OutboxRow;
use fechatter_server::auth::AuthUser;
use fechatter_server::chat::send_queue::write_together;
use fechatter_server::chat::store::{NewMessage, Sent};
use reqwest::StatusCode;
use serde_json::json;
use std::collections::{HashMap, HashSet};

fn message(sender: &User, chat_id: i64, content: &str, key: Option<&str>, with_event: bool) -> NewMessage {
    NewMessage {
        sender: AuthUser {
            user_id: sender.id,
            workspace_id: sender.workspace_id,
        },
        chat_id,
        content: content.to_owned(),
        files: vec![format!("/files/{}/abc.txt", sender.workspace_id)],
        idempotency_key: key.map(str::to_owned),
        event: with_event.then(|| {
            let event = AnalyticsEvent {
                context: Some(EventContext {
                    event_id: uuid::Uuid::now_v7().to_string(),
                    ..EventContext::default()
                }),
                event_type: Some(EventType::MessageSent(MessageSentEvent {
                    chat_id: chat_id.to_string(),
                    ..MessageSentEvent::default()
                })),
            };
            OutboxRow::new(&event).expect("outbox row")
        }),
    }
}

async fn count(app: &TestApp, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&app.pool).await.expect(sql)
}

/// How many messages, `message_sent` events and `message_created` live-update notices there are.
async fn written(app: &TestApp) -> (i64, i64, i64) {
    (
        count(app, "SELECT count(*) FROM messages").await,
        count(
            app,
            "SELECT count(*) FROM live_events WHERE event_subject = 'fechatter.analytics.message.sent'",
        )
        .await,
        count(
            app,
            "SELECT count(*) FROM live_events WHERE notice::json->>'kind' = 'message_created'",
        )
        .await,
    )
}

/// The created message's id and content, or a panic naming what came instead.
fn created(outcome: &Result<Sent, sqlx::Error>) -> (i64, String, bool) {
    match outcome {
        Ok(Sent::Created { message, event_written }) => (message.id, message.content.clone(), *event_written),
        other => panic!("expected a created message, got {other:?}"),
    }
}

#[tokio::test]
async fn sends_written_together_each_get_their_own_answer_in_order() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let bob = app.direct_user("Bob", Some(ada.workspace_id)).await;
    let eve = app.direct_user("Eve", None).await;
    let team = app.create_chat(&ada, "Team", "group", &[bob.id]).await;
    let notes = app.create_chat(&ada, "Notes", "group", &[]).await;

    let outcomes = write_together(
        &app.pool,
        vec![
            message(&ada, team, "first", None, true),
            message(&eve, team, "outsider", None, true),
            message(&bob, team, "keyed", Some("k1"), true),
            message(&bob, team, "keyed again", Some("k1"), true),
            message(&ada, notes, "elsewhere", None, false),
            message(&bob, notes, "not a member of notes", None, true),
        ],
    )
    .await;

    assert_eq!(outcomes.len(), 6);
    let (first, content, event) = created(&outcomes[0]);
    assert_eq!((content.as_str(), event), ("first", true));
    assert!(matches!(outcomes[1], Ok(Sent::NotMember)), "{:?}", outcomes[1]);
    let (keyed, content, _) = created(&outcomes[2]);
    assert_eq!(content, "keyed");
    assert!(matches!(outcomes[3], Ok(Sent::Replay)), "{:?}", outcomes[3]);
    let (elsewhere, content, event) = created(&outcomes[4]);
    assert_eq!((content.as_str(), event), ("elsewhere", false));
    assert!(matches!(outcomes[5], Ok(Sent::NotMember)), "{:?}", outcomes[5]);
    assert!(first < keyed && keyed < elsewhere, "ids follow the order of the sends");

    assert_eq!(written(&app).await, (3, 2, 3), "messages, events, notices");
    assert_eq!(
        count(&app, "SELECT count(*) FROM messages WHERE cardinality(files) = 1").await,
        3,
        "files are stored"
    );
}

#[tokio::test]
async fn a_send_that_fails_the_shared_statement_fails_alone() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let team = app.create_chat(&ada, "Team", "group", &[]).await;

    // PostgreSQL refuses a NUL character in text, which fails the whole statement (the HTTP API refuses such
    // text before it gets here; this stands for any error of one send).
    let outcomes = write_together(
        &app.pool,
        vec![
            message(&ada, team, "before", None, true),
            message(&ada, team, "bad \0 text", None, true),
            message(&ada, team, "after", Some("k"), true),
        ],
    )
    .await;

    assert_eq!(created(&outcomes[0]).1, "before");
    assert!(outcomes[1].is_err(), "{:?}", outcomes[1]);
    assert_eq!(created(&outcomes[2]).1, "after");
    assert_eq!(written(&app).await, (2, 2, 2), "messages, events, notices");
}

#[tokio::test]
async fn concurrent_sends_share_statements_and_each_is_stored_once() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let bob = app.direct_user("Bob", Some(ada.workspace_id)).await;
    let eve = app.direct_user("Eve", Some(ada.workspace_id)).await;
    let team = app.create_chat(&ada, "Team", "group", &[bob.id]).await;
    let path = format!("/api/chats/{team}/messages");

    // 200 sends at once: 150 distinct, 25 keys sent twice each, and 25 from a workspace member outside the chat.
    let mut requests = Vec::new();
    for i in 0..150 {
        let sender = if i % 2 == 0 { &ada } else { &bob };
        requests.push((sender, json!({ "content": format!("message {i}") })));
    }
    for i in 0..50 {
        requests.push((
            &bob,
            json!({ "content": format!("keyed {}", i / 2), "idempotency_key": format!("key-{}", i / 2) }),
        ));
    }
    for i in 0..25 {
        requests.push((&eve, json!({ "content": format!("outsider {i}") })));
    }
    let answers =
        futures::future::join_all(requests.iter().map(|(user, body)| app.post(&path, user, body.clone()))).await;

    let mut by_status: HashMap<StatusCode, usize> = HashMap::new();
    let mut keyed: HashMap<String, HashSet<i64>> = HashMap::new();
    for ((_, body), (status, answer)) in requests.iter().zip(&answers) {
        *by_status.entry(*status).or_default() += 1;
        if let Some(key) = body["idempotency_key"].as_str() {
            keyed
                .entry(key.to_owned())
                .or_default()
                .insert(answer["id"].as_i64().expect("id"));
        }
    }
    assert_eq!(by_status[&StatusCode::CREATED], 175, "{by_status:?}");
    assert_eq!(
        by_status[&StatusCode::OK],
        25,
        "each repeated key answers the original once: {by_status:?}"
    );
    assert_eq!(by_status[&StatusCode::NOT_FOUND], 25, "{by_status:?}");
    assert!(
        keyed.values().all(|ids| ids.len() == 1),
        "a key's two sends answer one message"
    );

    assert_eq!(written(&app).await, (175, 175, 175), "messages, events, notices");

    let metrics = app.metrics().await;
    let sends = sample(&metrics, "fechatter_message_send_batch_size_sum");
    let statements = sample(&metrics, "fechatter_message_send_batch_size_count");
    assert_eq!(sends, 225.0, "every send went through the queue: {metrics}");
    assert!(
        statements < sends,
        "{statements} statements for {sends} sends: none shared"
    );
}

#[tokio::test]
async fn sends_go_on_after_a_database_restart() {
    let mut app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let team = app.create_chat(&ada, "Team", "group", &[]).await;
    // The writers hold their connections from the first send on; the restart breaks them under the queue.
    app.send_message(&ada, team, "before the restart").await;

    app.postgres.stop().await;
    app.postgres.restart().await.expect("PostgreSQL restarts");

    let id = app.send_message(&ada, team, "after the restart").await;
    let (status, history) = app.get(&format!("/api/chats/{team}/messages"), &ada).await;
    assert_eq!(status, StatusCode::OK, "{history}");
    assert_eq!(history[0]["id"].as_i64(), Some(id));
    assert_eq!(written(&app).await, (2, 2, 2), "messages, events, notices");
}
