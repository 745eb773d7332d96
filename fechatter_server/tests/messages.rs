//! The `messages` routes against real PostgreSQL and NATS servers: sending (idempotently, with the
//! `message_sent` outbox row in the same transaction), paging through history, editing and deleting one's own
//! messages, and full-text search (scoped to the chat, with bound parameters, recorded as `search_performed`).
//! Outsiders' 404s on these routes are covered with the other routes in `tests/chats.rs`.

mod common;

use common::{TestApp, User};
use fechatter_protos::v1::AnalyticsEvent;
use fechatter_protos::v1::analytics_event::EventType;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The analytics events in the outbox on `subject` (e.g. `message.sent`), oldest first. Nothing relays them:
/// the test NATS server has no ANALYTICS stream, so every publish fails and the rows stay.
async fn outbox(app: &TestApp, subject: &str) -> Vec<AnalyticsEvent> {
    app.outbox_events(&format!("fechatter.analytics.{subject}")).await
}

async fn create(app: &TestApp, owner: &User, name: &str, members: &[&User]) -> i64 {
    let ids: Vec<i64> = members.iter().map(|u| u.id).collect();
    app.create_chat(owner, name, "group", &ids).await
}

fn ids(messages: &Value) -> Vec<i64> {
    messages
        .as_array()
        .expect("array")
        .iter()
        .map(|m| m["id"].as_i64().expect("id"))
        .collect()
}

async fn message_rows(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn a_sent_message_is_stored_bumps_the_chat_and_records_message_sent() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let bob = app.direct_user("Bob", Some(ada.workspace_id)).await;
    let chat = create(&app, &ada, "Team", &[&bob]).await;
    let content = "hi @bob, notes at https://example.com/notes";
    let file = app.upload_file(&bob, b"the notes").await;

    let (status, message) = app
        .post(
            &format!("/api/chats/{chat}/messages"),
            &bob,
            json!({ "content": content, "files": [file] }),
        )
        .await;

    assert_eq!(status, StatusCode::CREATED, "{message}");
    assert_eq!(message["chat_id"].as_i64(), Some(chat));
    assert_eq!(message["sender_id"].as_i64(), Some(bob.id));
    assert_eq!(message["content"], content);
    assert_eq!(message["files"], json!([file]));
    assert!(message["edited_at"].is_null() && message["created_at"].is_string());
    let id = message["id"].as_i64().expect("id");
    let (stored, files): (String, Vec<String>) = sqlx::query_as("SELECT content, files FROM messages WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .expect("row");
    assert_eq!((stored.as_str(), files.as_slice()), (content, &[file][..]));
    let (_, shown) = app.get(&format!("/api/chats/{chat}"), &bob).await;
    assert_eq!(
        shown["last_activity_at"], message["created_at"],
        "the chat's last activity is its newest message"
    );
    let sent = outbox(&app, "message.sent").await;
    assert_eq!(sent.len(), 1);
    let context = sent[0].context.as_ref().expect("context");
    assert_eq!(
        (context.user_id.clone(), context.workspace_id.clone()),
        (bob.id.to_string(), bob.workspace_id.to_string())
    );
    let Some(EventType::MessageSent(event)) = &sent[0].event_type else {
        panic!("not message_sent: {:?}", sent[0]);
    };
    assert_eq!(
        (event.chat_id.clone(), event.r#type.as_str()),
        (chat.to_string(), "file")
    );
    assert_eq!(event.size, i32::try_from(content.len()).expect("small"));
    assert_eq!(
        (event.total_files, event.has_mentions, event.has_links),
        (1, true, true)
    );

    let plain = app.send_message(&ada, chat, "plain words").await;
    let sent = outbox(&app, "message.sent").await;
    let Some(EventType::MessageSent(event)) = &sent[1].event_type else {
        panic!("not message_sent");
    };
    assert!(plain > id);
    assert_eq!((event.r#type.as_str(), event.size, event.total_files), ("text", 11, 0));
    assert!(!event.has_mentions && !event.has_links);
}

#[tokio::test]
async fn a_message_needs_content_or_files_within_the_limits() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let outsider = app.direct_user("Eve", None).await;
    let chat = create(&app, &ada, "Team", &[]).await;
    let path = format!("/api/chats/{chat}/messages");
    let file = app.upload_file(&ada, b"shared").await;
    let foreign = app.upload_file(&outsider, b"not yours").await;
    let never_uploaded = format!("/api/files/{}/{}", ada.workspace_id, "ab".repeat(32));
    let refusals = [
        (json!({ "content": "" }), "empty_message"),
        (json!({ "content": " \n\t" }), "empty_message"),
        (json!({}), "empty_message"),
        (json!({ "content": "x".repeat(4001) }), "content_too_long"),
        (
            json!({ "content": "x", "files": vec![file.as_str(); 11] }),
            "too_many_files",
        ),
        (json!({ "content": "x", "files": [foreign] }), "invalid_file"),
        (json!({ "files": ["javascript:alert(1)"] }), "invalid_file"),
        (json!({ "files": [format!("{file}/../x")] }), "invalid_file"),
        (json!({ "files": [file.to_uppercase()] }), "invalid_file"),
        (json!({ "files": [file, never_uploaded] }), "unknown_file"),
        (
            json!({ "content": "x", "idempotency_key": "" }),
            "invalid_idempotency_key",
        ),
        (json!({ "content": 42 }), "invalid_json"),
    ];
    for (body, code) in refusals {
        let (status, answer) = app.post(&path, &ada, body.clone()).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some(code)),
            "{body}: {answer}"
        );
    }
    assert_eq!(message_rows(&app).await, 0);
    assert!(outbox(&app, "message.sent").await.is_empty());

    let (status, longest) = app.post(&path, &ada, json!({ "content": "€".repeat(4000) })).await;
    assert_eq!(status, StatusCode::CREATED, "{longest}");
    let (status, files_only) = app.post(&path, &ada, json!({ "files": vec![file.as_str(); 10] })).await;
    assert_eq!(status, StatusCode::CREATED, "{files_only}");
    assert_eq!(files_only["content"], "");
    assert_eq!(message_rows(&app).await, 2);
}

#[tokio::test]
async fn the_same_idempotency_key_returns_the_same_message_and_records_one_event() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let bob = app.direct_user("Bob", Some(ada.workspace_id)).await;
    let chat = create(&app, &ada, "Team", &[&bob]).await;
    let other_chat = create(&app, &ada, "Other", &[&bob]).await;
    let path = format!("/api/chats/{chat}/messages");
    let body = json!({ "content": "exactly once", "idempotency_key": "k-1" });

    let (first_status, first) = app.post(&path, &ada, body.clone()).await;
    let (again_status, again) = app
        .post(&path, &ada, json!({ "content": "retried", "idempotency_key": "k-1" }))
        .await;

    assert_eq!(first_status, StatusCode::CREATED, "{first}");
    assert_eq!(again_status, StatusCode::OK, "{again}");
    assert_eq!(again, first, "a replay answers the original message");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE idempotency_key = 'k-1'")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(rows, 1);
    assert_eq!(outbox(&app, "message.sent").await.len(), 1);

    // Concurrent sends of a new key: the unique index makes one wait for the other, then both answer its row.
    let concurrent = json!({ "content": "raced", "idempotency_key": "k-2" });
    let (a, b, c) = tokio::join!(
        app.post(&path, &ada, concurrent.clone()),
        app.post(&path, &ada, concurrent.clone()),
        app.post(&path, &ada, concurrent.clone()),
    );
    let answers = [a, b, c];
    let created = answers.iter().filter(|(s, _)| *s == StatusCode::CREATED).count();
    assert_eq!(created, 1, "{answers:?}");
    assert!(
        answers.iter().all(|(_, m)| m["id"] == answers[0].1["id"]),
        "{answers:?}"
    );
    assert_eq!(outbox(&app, "message.sent").await.len(), 2);

    // The key is the sender's and the chat's: the same key elsewhere is another message.
    let (status, bobs) = app.post(&path, &bob, body.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{bobs}");
    let (status, elsewhere) = app.post(&format!("/api/chats/{other_chat}/messages"), &ada, body).await;
    assert_eq!(status, StatusCode::CREATED, "{elsewhere}");
    assert_eq!(message_rows(&app).await, 4);
    assert_eq!(outbox(&app, "message.sent").await.len(), 4);
}

#[tokio::test]
async fn a_key_whose_message_was_deleted_sends_a_new_message() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let chat = create(&app, &ada, "Team", &[]).await;
    let path = format!("/api/chats/{chat}/messages");
    let body = json!({ "content": "once", "idempotency_key": "k-1" });
    let (status, first) = app.post(&path, &ada, body.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let first_id = first["id"].as_i64().expect("id");
    let (status, _) = app.delete(&format!("{path}/{first_id}"), &ada).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // Deletion removes the row, and the key with it (README: the key is free again).
    let (status, again) = app.post(&path, &ada, body).await;

    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_ne!(again["id"].as_i64(), Some(first_id));
    assert_eq!(message_rows(&app).await, 1);
}

#[tokio::test]
async fn a_send_to_a_chat_being_deleted_answers_404() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let chat = create(&app, &ada, "Doomed", &[]).await;
    // The send passes its membership check (the deletion is not committed), finds the chat's row locked, and
    // waits for the deletion on a connection of its own; the deletion commits under it.
    let path = format!("/api/chats/{chat}/messages");
    let send = app.post(&path, &ada, json!({ "content": "too late" }));
    let (status, body) = app.racing_chat_deletion(chat, WAIT_FOR_CHAT, send).await;

    assert_eq!(status, StatusCode::NOT_FOUND, "not a foreign-key 500: {body}");
    assert_eq!(body["error"], "not_found");
    assert_eq!(message_rows(&app).await, 0);
    assert!(outbox(&app, "message.sent").await.is_empty());
}

/// The statement with which a send to a chat being deleted waits for the deletion (`store::wait_for_chat`).
const WAIT_FOR_CHAT: &str = "FROM chats WHERE id = $1 FOR KEY SHARE";

/// While a chat's deletion runs (its cascade deletes every message of the chat, for as long as that takes),
/// sends to the chat wait for it, each on its own, and sends to other chats go on: more clients sending to the
/// doomed chat than there are send writers must not stop every send. A deletion that rolls back lets the waiting
/// sends through.
#[tokio::test]
async fn sends_to_other_chats_go_on_while_a_chat_is_being_deleted() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let doomed = create(&app, &ada, "Doomed", &[]).await;
    let other = create(&app, &ada, "Other", &[]).await;
    let deleting = app.begin_chat_deletion(doomed).await;

    let path = format!("/api/chats/{doomed}/messages");
    let waiting =
        futures::future::join_all((0..4).map(|n| app.post(&path, &ada, json!({ "content": format!("wait {n}") }))));
    let meanwhile = async {
        // A send to the doomed chat has reached the deletion's lock. Were it waiting in a writer's statement (one
        // writer by default), no writer would be left for the next send.
        app.wait_for_lock_waits("%", 1).await;
        let other_chat = format!("/api/chats/{other}/messages");
        let sent = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            app.post(&other_chat, &ada, json!({ "content": "meanwhile" })),
        )
        .await
        .expect("a send to another chat is not held up by the deletion");
        deleting.rollback().await.expect("rollback");
        sent
    };
    let (waited, (status, body)) = tokio::join!(waiting, meanwhile);

    assert_eq!(status, StatusCode::CREATED, "{body}");
    for (status, body) in waited {
        assert_eq!(status, StatusCode::CREATED, "the deletion rolled back: {body}");
    }
    assert_eq!(message_rows(&app).await, 5);
}

#[tokio::test]
async fn a_body_that_is_not_json_answers_415_naming_the_type_expected() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let chat = create(&app, &ada, "Team", &[]).await;
    let path = format!("/api/chats/{chat}/messages");
    let (status, body) = app
        .send(
            app.request(reqwest::Method::POST, &path, &ada)
                .header("content-type", "text/plain")
                .body(r#"{"content":"hi"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    assert_eq!(body["error"], "unsupported_content_type");
    assert!(
        body["message"].as_str().is_some_and(|m| m.contains("application/json")),
        "{body}"
    );
    assert_eq!(message_rows(&app).await, 0);
}

#[tokio::test]
async fn empty_optional_numbers_in_the_query_count_as_absent() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let chat = create(&app, &ada, "Team", &[]).await;
    let sent = app.send_message(&ada, chat, "findable words").await;
    let path = format!("/api/chats/{chat}/messages");

    for query in ["before=&limit=20", "before=&limit=", "limit=", "before="] {
        let (status, page) = app.get(&format!("{path}?{query}"), &ada).await;
        assert_eq!(status, StatusCode::OK, "{query}: {page}");
        assert_eq!(ids(&page), vec![sent], "{query}");
    }
    let (status, found) = app.get(&format!("{path}/search?q=findable&limit="), &ada).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(ids(&found), vec![sent]);
}

#[tokio::test]
async fn history_pages_newest_first_with_before_and_limit() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let chat = create(&app, &ada, "Team", &[]).await;
    let other = create(&app, &ada, "Other", &[]).await;
    let mut sent = Vec::new();
    for i in 0..7 {
        sent.push(app.send_message(&ada, chat, &format!("message {i}")).await);
    }
    app.send_message(&ada, other, "elsewhere").await;
    let newest_first: Vec<i64> = sent.iter().rev().copied().collect();
    let path = format!("/api/chats/{chat}/messages");

    let (status, page1) = app.get(&format!("{path}?limit=3"), &ada).await;
    assert_eq!(status, StatusCode::OK, "{page1}");
    let (_, page2) = app
        .get(&format!("{path}?limit=3&before={}", newest_first[2]), &ada)
        .await;
    let (_, page3) = app
        .get(&format!("{path}?limit=3&before={}", newest_first[5]), &ada)
        .await;
    let (_, page4) = app
        .get(&format!("{path}?limit=3&before={}", newest_first[6]), &ada)
        .await;
    let (_, all) = app.get(&path, &ada).await;

    assert_eq!(ids(&page1), newest_first[0..3]);
    assert_eq!(ids(&page2), newest_first[3..6]);
    assert_eq!(ids(&page3), newest_first[6..7]);
    assert_eq!(ids(&page4), Vec::<i64>::new());
    assert_eq!(ids(&all), newest_first);
    assert_eq!(page1[0]["content"], "message 6");
    for bad in ["limit=0", "limit=101", "limit=-1", "limit=ten", "before=x"] {
        let (status, body) = app.get(&format!("{path}?{bad}"), &ada).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (status, max) = app.get(&format!("{path}?limit=100"), &ada).await;
    assert_eq!((status, ids(&max).len()), (StatusCode::OK, 7));
}

#[tokio::test]
async fn only_the_sender_may_edit_or_delete_a_message() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let bob = app.direct_user("Bob", Some(ada.workspace_id)).await;
    let chat = create(&app, &ada, "Team", &[&bob]).await;
    let other_chat = create(&app, &ada, "Other", &[&bob]).await;
    let id = app.send_message(&bob, chat, "first draft").await;
    let path = format!("/api/chats/{chat}/messages/{id}");

    let (status, body) = app.patch(&path, &ada, json!({ "content": "ada's words" })).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the owner of the chat is not the sender: {body}"
    );
    let (status, body) = app.delete(&path, &ada).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = app
        .patch(
            &format!("/api/chats/{other_chat}/messages/{id}"),
            &bob,
            json!({ "content": "x" }),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a message is addressed through its own chat: {body}"
    );
    let (status, body) = app.patch(&path, &bob, json!({ "content": "" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (status, edited) = app.patch(&path, &bob, json!({ "content": "final words" })).await;

    assert_eq!(status, StatusCode::OK, "{edited}");
    assert_eq!(
        (edited["id"].as_i64(), edited["content"].as_str()),
        (Some(id), Some("final words"))
    );
    assert!(edited["edited_at"].is_string());
    let (content, edited_at): (String, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT content, edited_at FROM messages WHERE id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .expect("row");
    assert_eq!(content, "final words");
    assert!(edited_at.is_some());
    let (_, found) = app
        .get(&format!("/api/chats/{chat}/messages/search?q=final"), &ada)
        .await;
    assert_eq!(ids(&found), vec![id], "the search column follows edits");

    let (status, body) = app.delete(&path, &bob).await;

    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(message_rows(&app).await, 0);
    let (status, _) = app.delete(&path, &bob).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.patch(&path, &bob, json!({ "content": "again" })).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn search_finds_messages_by_word_newest_first_only_in_that_chat_and_is_recorded() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let chat = create(&app, &ada, "Team", &[]).await;
    let other = create(&app, &ada, "Other", &[]).await;
    let older = app.send_message(&ada, chat, "The deploy is scheduled for Friday").await;
    app.send_message(&ada, chat, "Lunch at noon?").await;
    let newer = app.send_message(&ada, chat, "deploy postponed; Friday is off").await;
    app.send_message(&ada, other, "deploy the other thing").await;
    let path = format!("/api/chats/{chat}/messages/search");

    let (status, found) = app.get(&format!("{path}?q=deploy"), &ada).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(ids(&found), vec![newer, older]);
    let (_, both_words) = app.get(&format!("{path}?q=DEPLOY%20scheduled"), &ada).await;
    assert_eq!(ids(&both_words), vec![older]);
    let (_, excluded) = app.get(&format!("{path}?q=deploy%20-postponed"), &ada).await;
    assert_eq!(ids(&excluded), vec![older]);
    let (_, limited) = app.get(&format!("{path}?q=friday&limit=1"), &ada).await;
    assert_eq!(ids(&limited), vec![newer]);
    let (_, none) = app.get(&format!("{path}?q=holiday"), &ada).await;
    assert_eq!(ids(&none), Vec::<i64>::new());

    let searches = outbox(&app, "search.performed").await;
    assert_eq!(searches.len(), 5);
    assert_eq!(searches[0].user_id(), ada.id.to_string());
    let Some(EventType::SearchPerformed(first)) = &searches[0].event_type else {
        panic!("not search_performed: {:?}", searches[0]);
    };
    assert_eq!(
        (first.search_type.as_str(), first.query_length.as_str()),
        ("messages", "6")
    );
    assert_eq!((first.results_count, first.has_filters), (2, false));
    assert!(first.search_duration_ms >= 0);
    let Some(EventType::SearchPerformed(last)) = &searches[4].event_type else {
        panic!("not search_performed");
    };
    assert_eq!((last.query_length.as_str(), last.results_count), ("7", 0));
}

#[tokio::test]
async fn search_text_is_a_bound_parameter_so_sql_in_it_is_harmless() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let chat = create(&app, &ada, "Team", &[]).await;
    let id = app.send_message(&ada, chat, "robert said messages must survive").await;
    let path = format!("/api/chats/{chat}/messages/search");

    for q in [
        "'); DROP TABLE messages; --",
        "x' OR '1'='1",
        "\"unterminated",
        "a & | ! <-> :* ()",
        "\\",
        "messages'; DELETE FROM chats; --",
    ] {
        let (status, body) = app
            .send(app.request(reqwest::Method::GET, &path, &ada).query(&[("q", q)]))
            .await;
        assert_eq!(status, StatusCode::OK, "{q}: {body}");
        assert!(body.is_array(), "{q}: {body}");
    }

    let (_, found) = app
        .send(
            app.request(reqwest::Method::GET, &path, &ada)
                .query(&[("q", "'); DROP TABLE messages; --")]),
        )
        .await;
    assert_eq!(ids(&found), Vec::<i64>::new());
    let (_, found) = app
        .send(
            app.request(reqwest::Method::GET, &path, &ada)
                .query(&[("q", "survive'; DELETE FROM chats; --")]),
        )
        .await;
    assert_eq!(
        ids(&found),
        Vec::<i64>::new(),
        "every word must match: \"delete\", \"from\", \"chats\" do not"
    );
    let (_, found) = app
        .send(
            app.request(reqwest::Method::GET, &path, &ada)
                .query(&[("q", "survive'); --")]),
        )
        .await;
    assert_eq!(ids(&found), vec![id], "the words are searched for, nothing more");
    assert_eq!(message_rows(&app).await, 1);
    let chats: i64 = sqlx::query_scalar("SELECT count(*) FROM chats")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(chats, 1);
}

#[tokio::test]
async fn search_queries_must_have_1_to_200_characters() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let chat = create(&app, &ada, "Team", &[]).await;
    let path = format!("/api/chats/{chat}/messages/search");

    for query in [
        String::new(),
        "q=".into(),
        "q=%20%20".into(),
        format!("q={}", "a".repeat(201)),
        "q=a&limit=0".into(),
    ] {
        let (status, body) = app.get(&format!("{path}?{query}"), &ada).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        let code = if query.contains("limit") {
            "invalid_limit"
        } else {
            "invalid_query"
        };
        assert_eq!(body["error"], code, "{query}");
    }
    let (status, _) = app.get(&format!("{path}?q={}", "é".repeat(200)), &ada).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        outbox(&app, "search.performed").await.len(),
        1,
        "refused searches are not recorded"
    );
}
