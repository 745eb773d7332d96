//! The `chats` and `members` routes against real PostgreSQL and NATS servers: creating, listing, viewing,
//! renaming and deleting chats, adding, joining, removing and leaving, with the rows and analytics outbox rows
//! each change leaves; and the refusals — owner-only changes (403) and outsiders, of another workspace or of
//! the same one, who get the same 404 on every route about a chat as for a chat that does not exist.

mod common;

use common::{TestApp, User};
use fechatter_protos::v1::AnalyticsEvent;
use fechatter_protos::v1::analytics_event::EventType;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The analytics events in the outbox on `subject` (e.g. `chat.created`), oldest first. Nothing relays them:
/// the test NATS server has no ANALYTICS stream, so every publish fails and the rows stay.
async fn outbox(app: &TestApp, subject: &str) -> Vec<AnalyticsEvent> {
    app.outbox_events(&format!("fechatter.analytics.{subject}")).await
}

/// The `chat_joined` events of joins after a chat's creation (each initial member has one of `join_method`
/// "created").
async fn later_joins(app: &TestApp) -> Vec<AnalyticsEvent> {
    let created =
        |e: &AnalyticsEvent| matches!(&e.event_type, Some(EventType::ChatJoined(j)) if j.join_method == "created");
    outbox(app, "chat.joined")
        .await
        .into_iter()
        .filter(|e| !created(e))
        .collect()
}

/// The users of `events`, ascending, with each event's `join_method` or `leave_reason`.
fn membership_changes(events: &[AnalyticsEvent]) -> Vec<(String, String)> {
    let mut changes: Vec<(String, String)> = events
        .iter()
        .map(|e| match &e.event_type {
            Some(EventType::ChatJoined(j)) => (e.user_id().to_owned(), j.join_method.clone()),
            Some(EventType::ChatLeft(l)) => (e.user_id().to_owned(), l.leave_reason.clone()),
            other => panic!("not a membership change: {other:?}"),
        })
        .collect();
    changes.sort();
    changes
}

async fn create(app: &TestApp, owner: &User, name: &str, chat_type: &str, members: &[&User]) -> i64 {
    let ids: Vec<i64> = members.iter().map(|u| u.id).collect();
    app.create_chat(owner, name, chat_type, &ids).await
}

async fn member_ids(app: &TestApp, chat_id: i64) -> Vec<i64> {
    sqlx::query_scalar("SELECT user_id FROM chat_members WHERE chat_id = $1 ORDER BY user_id")
        .bind(chat_id)
        .fetch_all(&app.pool)
        .await
        .expect("members")
}

fn sorted(mut ids: Vec<i64>) -> Vec<i64> {
    ids.sort_unstable();
    ids
}

#[tokio::test]
async fn creating_a_group_stores_it_with_the_creator_as_owner_and_member_and_records_chat_created() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let bob = app.direct_user("Bob", Some(ada.workspace_id)).await;
    let cy = app.direct_user("Cy", Some(ada.workspace_id)).await;

    let (status, chat) = app
        .post(
            "/api/chats",
            &ada,
            json!({ "name": "  Launch  ", "chat_type": "group", "members": [bob.id, cy.id, bob.id] }),
        )
        .await;

    assert_eq!(status, StatusCode::CREATED, "{chat}");
    let id = chat["id"].as_i64().expect("id");
    assert_eq!(chat["name"], "Launch");
    assert_eq!(chat["chat_type"], "group");
    assert_eq!(chat["owner_id"].as_i64(), Some(ada.id));
    assert_eq!(chat["workspace_id"].as_i64(), Some(ada.workspace_id));
    assert_eq!(chat["members"], json!(sorted(vec![ada.id, bob.id, cy.id])));
    assert!(chat["created_at"].is_string() && chat["last_activity_at"].is_string());
    let (name, chat_type, owner_id): (String, String, i64) =
        sqlx::query_as("SELECT name, chat_type, owner_id FROM chats WHERE id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .expect("chat row");
    assert_eq!(
        (name.as_str(), chat_type.as_str(), owner_id),
        ("Launch", "group", ada.id)
    );
    assert_eq!(member_ids(&app, id).await, sorted(vec![ada.id, bob.id, cy.id]));
    let events = outbox(&app, "chat.created").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].user_id(), ada.id.to_string());
    let Some(EventType::ChatCreated(created)) = &events[0].event_type else {
        panic!("not chat_created: {:?}", events[0]);
    };
    assert_eq!(created.workspace_id, ada.workspace_id.to_string());
    assert_eq!(
        (created.chat_type.as_str(), created.initial_members_count),
        ("group", 3)
    );
    let mut expected: Vec<(String, String)> = [&ada, &bob, &cy]
        .iter()
        .map(|u| (u.id.to_string(), "created".to_owned()))
        .collect();
    expected.sort();
    assert_eq!(membership_changes(&outbox(&app, "chat.joined").await), expected);

    let (status, fetched) = app.get(&format!("/api/chats/{id}"), &bob).await;
    assert_eq!(status, StatusCode::OK, "{fetched}");
    assert_eq!(fetched, chat);
}

#[tokio::test]
async fn members_who_are_not_users_of_the_callers_workspace_are_refused_by_name() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let bob = app.direct_user("Bob", Some(ada.workspace_id)).await;
    let eve = app.direct_user("Eve", None).await;

    let (status, body) = app
        .post(
            "/api/chats",
            &ada,
            json!({ "name": "Mixed", "chat_type": "group", "members": [bob.id, eve.id, 999_999] }),
        )
        .await;

    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "unknown_members");
    let message = body["message"].as_str().expect("message");
    let named: Vec<i64> = message
        .rsplit(':')
        .next()
        .expect("list")
        .split(',')
        .map(|id| id.trim().parse().expect("an id"))
        .collect();
    assert_eq!(named, vec![eve.id, 999_999], "{message}");
    let chats: i64 = sqlx::query_scalar("SELECT count(*) FROM chats")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(chats, 0);
    assert!(outbox(&app, "chat.created").await.is_empty());
}

#[tokio::test]
async fn a_single_chat_needs_exactly_one_other_member_and_names_need_1_to_100_characters() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let bob = app.direct_user("Bob", Some(ada.workspace_id)).await;
    let cy = app.direct_user("Cy", Some(ada.workspace_id)).await;
    let refusals = [
        (
            json!({ "name": "Dm", "chat_type": "single", "members": [] }),
            "invalid_members",
        ),
        (
            json!({ "name": "Dm", "chat_type": "single", "members": [ada.id] }),
            "invalid_members",
        ),
        (
            json!({ "name": "Dm", "chat_type": "single", "members": [bob.id, cy.id] }),
            "invalid_members",
        ),
        (
            json!({ "name": " ", "chat_type": "group", "members": [] }),
            "invalid_name",
        ),
        (
            json!({ "name": "x".repeat(101), "chat_type": "group", "members": [] }),
            "invalid_name",
        ),
        (
            json!({ "name": "Odd", "chat_type": "secret", "members": [] }),
            "invalid_json",
        ),
    ];
    for (body, code) in refusals {
        let (status, answer) = app.post("/api/chats", &ada, body.clone()).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some(code)),
            "{body}: {answer}"
        );
    }

    let single = create(&app, &ada, "Dm", "single", &[&bob]).await;
    let long = create(&app, &ada, &"é".repeat(100), "group", &[]).await;

    assert_eq!(member_ids(&app, single).await, sorted(vec![ada.id, bob.id]));
    assert_eq!(member_ids(&app, long).await, vec![ada.id]);
    assert_eq!(outbox(&app, "chat.created").await.len(), 2);
}

#[tokio::test]
async fn the_chat_list_holds_the_callers_chats_with_the_most_recently_active_first() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let bob = app.direct_user("Bob", Some(ada.workspace_id)).await;
    let first = create(&app, &ada, "First", "group", &[&bob]).await;
    let second = create(&app, &ada, "Second", "private_channel", &[]).await;
    let third = create(&app, &bob, "Third", "group", &[&ada]).await;
    let _not_ada = create(&app, &bob, "Bob only", "group", &[]).await;

    let (status, chats) = app.get("/api/chats", &ada).await;
    assert_eq!(status, StatusCode::OK, "{chats}");
    let ids: Vec<i64> = chats
        .as_array()
        .expect("array")
        .iter()
        .map(|c| c["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids, vec![third, second, first]);

    let (status, bump) = app
        .post(
            &format!("/api/chats/{first}/messages"),
            &bob,
            json!({ "content": "bump" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let (_, chats) = app.get("/api/chats", &ada).await;
    let ids: Vec<i64> = chats
        .as_array()
        .expect("array")
        .iter()
        .map(|c| c["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids, vec![first, third, second]);
    assert_eq!(chats[0]["last_activity_at"], bump["created_at"], "{chats}");
    assert_eq!(
        chats[1]["last_activity_at"], chats[1]["created_at"],
        "no message: created"
    );
}

/// The ids of a list answer's items under `key`.
fn ids_of(answer: &Value, key: &str) -> Vec<i64> {
    answer
        .as_array()
        .expect("array")
        .iter()
        .map(|item| item[key].as_i64().expect("id"))
        .collect()
}

#[tokio::test]
async fn the_chat_list_comes_in_pages_that_follow_each_other_without_gap_or_repeat() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let mut chats = Vec::new();
    for n in 0..5 {
        chats.push(create(&app, &ada, &format!("Chat {n}"), "group", &[]).await);
    }
    // Two chats with the same activity instant, so that only the id orders them: the cursor must hold both.
    sqlx::query("UPDATE chats SET last_activity_at = '2026-01-01T00:00:00Z' WHERE id = ANY($1)")
        .bind(&chats[1..3])
        .execute(&app.pool)
        .await
        .expect("same instant");
    let (status, whole) = app.get("/api/chats", &ada).await;
    assert_eq!(status, StatusCode::OK, "{whole}");
    let expected = vec![chats[4], chats[3], chats[0], chats[2], chats[1]];
    assert_eq!(ids_of(&whole, "id"), expected);

    let mut paged = Vec::new();
    let mut path = "/api/chats?limit=2".to_owned();
    loop {
        let (status, page) = app.get(&path, &ada).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let items = page.as_array().expect("array");
        paged.extend(ids_of(&page, "id"));
        let Some(last) = items.last().filter(|_| items.len() == 2) else {
            break;
        };
        let activity = last["last_activity_at"].as_str().expect("activity");
        path = format!("/api/chats?limit=2&before_activity={activity}&before_id={}", last["id"]);
    }
    assert_eq!(paged, expected, "pages of 2, in order, each chat once");

    for (path, code) in [
        ("/api/chats?before_id=5", "invalid_cursor"),
        ("/api/chats?before_activity=2026-01-01T00:00:00Z", "invalid_cursor"),
        ("/api/chats?before_activity=yesterday&before_id=5", "invalid_query"),
        ("/api/chats?limit=0", "invalid_limit"),
        ("/api/chats?limit=101", "invalid_limit"),
    ] {
        let (status, body) = app.get(path, &ada).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some(code)),
            "{path}: {body}"
        );
    }
    let (status, body) = app.get("/api/chats?before_activity=&before_id=&limit=", &ada).await;
    assert_eq!(status, StatusCode::OK, "empty parameters are absent ones: {body}");
    assert_eq!(ids_of(&body, "id"), expected);
}

#[tokio::test]
async fn a_chats_members_come_in_pages_by_user_id() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let mut others = Vec::new();
    for name in ["Bob", "Cy", "Dan", "Eve"] {
        others.push(app.direct_user(name, Some(ada.workspace_id)).await);
    }
    let channel = create(
        &app,
        &ada,
        "Everyone",
        "public_channel",
        &others.iter().collect::<Vec<_>>(),
    )
    .await;
    let base = format!("/api/chats/{channel}/members");

    let (status, first) = app.get(&format!("{base}?limit=2"), &others[0]).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (_, second) = app
        .get(&format!("{base}?limit=2&after={}", first[1]["user_id"]), &others[0])
        .await;
    let (_, third) = app
        .get(&format!("{base}?limit=2&after={}", second[1]["user_id"]), &others[0])
        .await;
    let paged: Vec<i64> = [first, second, third]
        .iter()
        .flat_map(|page| ids_of(page, "user_id"))
        .collect();
    assert_eq!(paged, member_ids(&app, channel).await, "three pages, by user id");
    assert_eq!(paged.len(), 5);

    let (status, body) = app.get(&format!("{base}?limit=1000"), &ada).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_limit")),
        "{body}"
    );
    let (status, body) = app.get(&format!("{base}?after=first"), &ada).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_query")),
        "{body}"
    );
}

/// A chat lists at most 100 of its members (a public channel may hold the whole workspace) and counts them all;
/// its creation still records every initial member's join, and the members route pages through all of them.
#[tokio::test]
async fn a_large_chat_lists_its_first_100_members_and_counts_them_all() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let others: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO users (workspace_id, fullname, email, password_hash) \
         SELECT $1, 'member ' || n, 'member-' || n || '-' || $1 || '@example.com', 'x' \
         FROM generate_series(1, 150) AS n RETURNING id",
    )
    .bind(ada.workspace_id)
    .fetch_all(&app.pool)
    .await
    .expect("users");

    let (status, created) = app
        .post(
            "/api/chats",
            &ada,
            json!({ "name": "Everyone", "chat_type": "public_channel", "members": others }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let all = sorted(others.iter().copied().chain([ada.id]).collect());
    for chat in [
        created.clone(),
        app.get(&format!("/api/chats/{}", created["id"]), &ada).await.1,
    ] {
        assert_eq!(chat["member_count"], 151, "{chat}");
        assert_eq!(ids_of_values(&chat["members"]), all[..100], "the first 100 by id");
    }
    let joins = outbox(&app, "chat.joined").await;
    assert_eq!(joins.len(), 151, "every initial member's join is recorded");

    let base = format!("/api/chats/{}/members", created["id"]);
    let (_, first) = app.get(&format!("{base}?limit=100"), &ada).await;
    let (_, rest) = app
        .get(&format!("{base}?limit=100&after={}", first[99]["user_id"]), &ada)
        .await;
    let paged: Vec<i64> = [first, rest].iter().flat_map(|page| ids_of(page, "user_id")).collect();
    assert_eq!(paged, all);
}

/// The numbers of a JSON array.
fn ids_of_values(array: &Value) -> Vec<i64> {
    array
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_i64().expect("id"))
        .collect()
}

#[tokio::test]
async fn only_the_owner_may_rename_or_delete_a_chat() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let bob = app.direct_user("Bob", Some(ada.workspace_id)).await;
    let chat = create(&app, &ada, "Team", "group", &[&bob]).await;
    let path = format!("/api/chats/{chat}");

    let (status, body) = app.patch(&path, &bob, json!({ "name": "Bob's" })).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "{body}"
    );
    let (status, body) = app.delete(&path, &bob).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = app.patch(&path, &ada, json!({ "name": "" })).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_name")),
        "{body}"
    );

    // A chat's type never changes: a rename that asks for it is refused, not half done.
    let (status, body) = app
        .patch(&path, &ada, json!({ "name": "x", "chat_type": "public_channel" }))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_json")),
        "{body}"
    );
    assert!(
        body["message"].as_str().expect("message").contains("chat_type"),
        "{body}"
    );

    let (status, renamed) = app.patch(&path, &ada, json!({ "name": "Renamed" })).await;
    assert_eq!(status, StatusCode::OK, "{renamed}");
    assert_eq!(renamed["name"], "Renamed");
    let name: String = sqlx::query_scalar("SELECT name FROM chats WHERE id = $1")
        .bind(chat)
        .fetch_one(&app.pool)
        .await
        .expect("name");
    assert_eq!(name, "Renamed");

    let (status, _) = app
        .post(&format!("{path}/messages"), &bob, json!({ "content": "bye" }))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = app.delete(&path, &ada).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let left: (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM chats), (SELECT count(*) FROM chat_members), (SELECT count(*) FROM messages)",
    )
    .fetch_one(&app.pool)
    .await
    .expect("counts");
    assert_eq!(left, (0, 0, 0));
    let (status, _) = app.get(&path, &ada).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let mut expected: Vec<(String, String)> = [&ada, &bob]
        .iter()
        .map(|u| (u.id.to_string(), "chat_deleted".to_owned()))
        .collect();
    expected.sort();
    assert_eq!(
        membership_changes(&outbox(&app, "chat.left").await),
        expected,
        "every membership ends with a chat_left"
    );
}

#[tokio::test]
async fn outsiders_get_404_on_every_chat_message_member_and_search_route() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let bob = app.direct_user("Bob", Some(ada.workspace_id)).await;
    let colleague = app.direct_user("Carl", Some(ada.workspace_id)).await;
    let stranger = app.direct_user("Eve", None).await;
    let private_chat = create(&app, &ada, "Private", "private_channel", &[&bob]).await;
    let group = create(&app, &ada, "Group", "group", &[&bob]).await;
    let public_channel = create(&app, &ada, "Public", "public_channel", &[&bob]).await;
    let (_, message) = app
        .post(
            &format!("/api/chats/{group}/messages"),
            &bob,
            json!({ "content": "hello there" }),
        )
        .await;
    let message_id = message["id"].as_i64().expect("message id");
    let (_, absent) = app.get("/api/chats/999999", &ada).await;
    assert_eq!(absent["error"], "not_found");

    // Same workspace but not a member of a group or private channel; or another workspace altogether, for
    // which even a public channel does not exist.
    let hidden = [
        (&colleague, group),
        (&colleague, private_chat),
        (&stranger, group),
        (&stranger, private_chat),
        (&stranger, public_channel),
    ];
    for (outsider, chat) in hidden {
        let base = format!("/api/chats/{chat}");
        let answers = [
            app.get(&base, outsider).await,
            app.patch(&base, outsider, json!({ "name": "Mine" })).await,
            app.delete(&base, outsider).await,
            app.get(&format!("{base}/members"), outsider).await,
            app.post(
                &format!("{base}/members"),
                outsider,
                json!({ "user_ids": [outsider.id] }),
            )
            .await,
            app.delete(&format!("{base}/members/{}", bob.id), outsider).await,
            app.delete(&format!("{base}/members/{}", outsider.id), outsider).await,
            app.get(&format!("{base}/messages"), outsider).await,
            app.post(&format!("{base}/messages"), outsider, json!({ "content": "hi" }))
                .await,
            app.patch(
                &format!("{base}/messages/{message_id}"),
                outsider,
                json!({ "content": "x" }),
            )
            .await,
            app.delete(&format!("{base}/messages/{message_id}"), outsider).await,
            app.get(&format!("{base}/messages/search?q=hello"), outsider).await,
        ];
        for (i, (status, body)) in answers.into_iter().enumerate() {
            assert_eq!(status, StatusCode::NOT_FOUND, "route #{i} of chat {chat}: {body}");
            assert_eq!(body, absent, "route #{i} of chat {chat} must look like a missing chat");
        }
        let (_, listed) = app.get("/api/chats", outsider).await;
        assert_eq!(listed, json!([]));
    }

    let (name, members, content): (String, i64, String) = sqlx::query_as(
        "SELECT c.name, (SELECT count(*) FROM chat_members m WHERE m.chat_id = c.id), \
         (SELECT content FROM messages WHERE id = $2) FROM chats c WHERE c.id = $1",
    )
    .bind(group)
    .bind(message_id)
    .fetch_one(&app.pool)
    .await
    .expect("rows");
    assert_eq!((name.as_str(), members, content.as_str()), ("Group", 2, "hello there"));
    assert_eq!(member_ids(&app, public_channel).await, sorted(vec![ada.id, bob.id]));
    assert!(outbox(&app, "search.performed").await.is_empty());
}

#[tokio::test]
async fn users_of_the_workspace_may_view_and_join_a_public_channel_but_read_it_only_once_joined() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let carl = app.direct_user("Carl", Some(ada.workspace_id)).await;
    let dan = app.direct_user("Dan", Some(ada.workspace_id)).await;
    let channel = create(&app, &ada, "Announcements", "public_channel", &[]).await;
    let base = format!("/api/chats/{channel}");

    let (status, viewed) = app.get(&base, &carl).await;
    assert_eq!(status, StatusCode::OK, "{viewed}");
    assert_eq!(viewed["name"], "Announcements");
    let (status, members) = app.get(&format!("{base}/members"), &carl).await;
    assert_eq!(status, StatusCode::OK, "{members}");
    assert_eq!(members[0]["user_id"].as_i64(), Some(ada.id));
    assert_eq!(members[0]["fullname"], "Ada");
    for (status, body) in [
        app.get(&format!("{base}/messages"), &carl).await,
        app.post(&format!("{base}/messages"), &carl, json!({ "content": "hi" }))
            .await,
        app.get(&format!("{base}/messages/search?q=hi"), &carl).await,
        app.patch(&base, &carl, json!({ "name": "Mine" })).await,
        app.post(
            &format!("{base}/members"),
            &carl,
            json!({ "user_ids": [carl.id, dan.id] }),
        )
        .await,
        app.post(&format!("{base}/members"), &carl, json!({ "user_ids": [dan.id] }))
            .await,
    ] {
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }

    let (status, members) = app
        .post(&format!("{base}/members"), &carl, json!({ "user_ids": [carl.id] }))
        .await;

    assert_eq!(status, StatusCode::OK, "{members}");
    assert_eq!(
        ids_of(&members, "user_id"),
        vec![carl.id],
        "the answer names the users the request named"
    );
    assert_eq!(member_ids(&app, channel).await, sorted(vec![ada.id, carl.id]));
    let joined = later_joins(&app).await;
    assert_eq!(joined.len(), 1);
    assert_eq!(joined[0].user_id(), carl.id.to_string());
    let Some(EventType::ChatJoined(event)) = &joined[0].event_type else {
        panic!("not chat_joined: {:?}", joined[0]);
    };
    assert_eq!(
        (event.chat_id.clone(), event.join_method.as_str()),
        (channel.to_string(), "self")
    );
    let (status, _) = app
        .post(&format!("{base}/messages"), &carl, json!({ "content": "hi all" }))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, listed) = app.get("/api/chats", &carl).await;
    assert_eq!(listed[0]["id"].as_i64(), Some(channel));

    // Joining again changes nothing and records nothing.
    let (status, _) = app
        .post(&format!("{base}/members"), &carl, json!({ "user_ids": [carl.id] }))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(later_joins(&app).await.len(), 1);
}

#[tokio::test]
async fn joining_a_chat_while_it_is_being_deleted_answers_404() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let carl = app.direct_user("Carl", Some(ada.workspace_id)).await;
    let channel = create(&app, &ada, "Doomed", "public_channel", &[]).await;
    // The join runs between the deletion and its commit: it must wait for the deletion, then find no chat.
    let path = format!("/api/chats/{channel}/members");
    let join = app.post(&path, &carl, json!({ "user_ids": [carl.id] }));
    let (status, body) = app.racing_chat_deletion(channel, "chat_members", join).await;

    assert_eq!(status, StatusCode::NOT_FOUND, "not a foreign-key 500: {body}");
    assert_eq!(body["error"], "not_found");
    assert!(later_joins(&app).await.is_empty());
}

#[tokio::test]
async fn a_member_leaving_while_the_chat_is_deleted_leaves_once() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let bob = app.direct_user("Bob", Some(ada.workspace_id)).await;
    let chat = create(&app, &ada, "Team", "group", &[&bob]).await;
    // Bob's leave is held after its access check (at the removal of his row) while the deletion starts: the
    // deletion must wait for the leave instead of reading Bob as a member and recording his leaving too.
    let mut hold = app.pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM chat_members WHERE chat_id = $1 AND user_id = $2 FOR UPDATE")
        .bind(chat)
        .bind(bob.id)
        .execute(&mut *hold)
        .await
        .expect("hold Bob's row");
    let leaving = format!("/api/chats/{chat}/members/{}", bob.id);
    let (leave, delete, ()) = tokio::join!(
        app.delete(&leaving, &bob),
        async {
            app.wait_for_lock_waits("%", 1).await;
            app.delete(&format!("/api/chats/{chat}"), &ada).await
        },
        async {
            app.wait_for_lock_waits("%", 2).await;
            hold.commit().await.expect("release");
        }
    );

    assert_eq!(leave.0, StatusCode::NO_CONTENT, "{}", leave.1);
    assert_eq!(delete.0, StatusCode::NO_CONTENT, "{}", delete.1);
    let changes = membership_changes(&outbox(&app, "chat.left").await);
    assert_eq!(
        changes,
        vec![
            (ada.id.to_string(), "chat_deleted".into()),
            (bob.id.to_string(), "left".into())
        ],
        "each membership ends once"
    );
}

#[tokio::test]
async fn of_two_deletions_of_a_chat_one_deletes_it_and_the_other_answers_404() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let bob = app.direct_user("Bob", Some(ada.workspace_id)).await;
    let chat = create(&app, &ada, "Team", "group", &[&bob]).await;
    // Both deletions pass their access check, then wait for the chat's row.
    let mut hold = app.pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM chats WHERE id = $1 FOR KEY SHARE")
        .bind(chat)
        .execute(&mut *hold)
        .await
        .expect("hold the chat");
    let path = format!("/api/chats/{chat}");
    let (first, second, ()) = tokio::join!(app.delete(&path, &ada), app.delete(&path, &ada), async {
        app.wait_for_lock_waits("%", 2).await;
        hold.commit().await.expect("release");
    });

    let mut statuses = [first.0, second.0];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::NO_CONTENT, StatusCode::NOT_FOUND],
        "{first:?} {second:?}"
    );
    let changes = membership_changes(&outbox(&app, "chat.left").await);
    assert_eq!(
        changes,
        vec![
            (ada.id.to_string(), "chat_deleted".into()),
            (bob.id.to_string(), "chat_deleted".into())
        ],
        "each member leaves once"
    );
}

#[tokio::test]
async fn the_owner_adds_and_removes_members_and_each_change_is_recorded_for_the_member_concerned() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let bob = app.direct_user("Bob", Some(ada.workspace_id)).await;
    let cy = app.direct_user("Cy", Some(ada.workspace_id)).await;
    let eve = app.direct_user("Eve", None).await;
    let chat = create(&app, &ada, "Team", "private_channel", &[&bob]).await;
    let base = format!("/api/chats/{chat}/members");

    let (status, body) = app.post(&base, &ada, json!({ "user_ids": [cy.id, eve.id] })).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unknown_members")),
        "{body}"
    );
    assert!(body["message"].as_str().expect("message").contains(&eve.id.to_string()));
    let (status, body) = app.post(&base, &ada, json!({ "user_ids": [] })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(member_ids(&app, chat).await, sorted(vec![ada.id, bob.id]));

    let (status, members) = app.post(&base, &ada, json!({ "user_ids": [cy.id, bob.id] })).await;

    assert_eq!(status, StatusCode::OK, "{members}");
    assert_eq!(
        ids_of(&members, "user_id"),
        sorted(vec![bob.id, cy.id]),
        "the users named, by id"
    );
    assert_eq!(member_ids(&app, chat).await, sorted(vec![ada.id, bob.id, cy.id]));
    let joined = later_joins(&app).await;
    assert_eq!(joined.len(), 1, "bob was a member already");
    assert_eq!(joined[0].user_id(), cy.id.to_string());
    let Some(EventType::ChatJoined(event)) = &joined[0].event_type else {
        panic!("not chat_joined");
    };
    assert_eq!(
        (event.chat_id.clone(), event.join_method.as_str()),
        (chat.to_string(), "added")
    );

    let (status, body) = app.delete(&format!("{base}/{}", cy.id), &ada).await;

    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(member_ids(&app, chat).await, sorted(vec![ada.id, bob.id]));
    let left = outbox(&app, "chat.left").await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].user_id(), cy.id.to_string());
    let Some(EventType::ChatLeft(event)) = &left[0].event_type else {
        panic!("not chat_left");
    };
    assert_eq!(
        (event.chat_id.clone(), event.leave_reason.as_str()),
        (chat.to_string(), "removed")
    );
    let (status, _) = app.delete(&format!("{base}/{}", cy.id), &ada).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "cy is no longer a member");
    let (status, _) = app.get(&format!("/api/chats/{chat}"), &cy).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a removed member is an outsider");
}

#[tokio::test]
async fn members_may_leave_but_not_add_or_remove_others_and_the_owner_may_not_leave() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let bob = app.direct_user("Bob", Some(ada.workspace_id)).await;
    let cy = app.direct_user("Cy", Some(ada.workspace_id)).await;
    let dan = app.direct_user("Dan", Some(ada.workspace_id)).await;
    let chat = create(&app, &ada, "Team", "group", &[&bob, &cy]).await;
    let base = format!("/api/chats/{chat}/members");

    let (status, body) = app.post(&base, &bob, json!({ "user_ids": [dan.id] })).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = app.delete(&format!("{base}/{}", cy.id), &bob).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = app.delete(&format!("{base}/{}", ada.id), &ada).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("owner cannot leave")
    );
    assert_eq!(member_ids(&app, chat).await, sorted(vec![ada.id, bob.id, cy.id]));

    let (status, body) = app.delete(&format!("{base}/{}", bob.id), &bob).await;

    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(member_ids(&app, chat).await, sorted(vec![ada.id, cy.id]));
    let left = outbox(&app, "chat.left").await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].user_id(), bob.id.to_string());
    let Some(EventType::ChatLeft(event)) = &left[0].event_type else {
        panic!("not chat_left");
    };
    assert_eq!(event.leave_reason, "left");
    let (status, _) = app.get(&format!("/api/chats/{chat}/messages"), &bob).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_members_of_a_single_chat_never_change() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let bob = app.direct_user("Bob", Some(ada.workspace_id)).await;
    let cy = app.direct_user("Cy", Some(ada.workspace_id)).await;
    let chat = create(&app, &ada, "Ada & Bob", "single", &[&bob]).await;
    let base = format!("/api/chats/{chat}/members");

    let (status, body) = app.post(&base, &ada, json!({ "user_ids": [cy.id] })).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("single_chat")),
        "{body}"
    );
    let (status, body) = app.delete(&format!("{base}/{}", bob.id), &ada).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("single_chat")),
        "{body}"
    );
    let (status, body) = app.delete(&format!("{base}/{}", bob.id), &bob).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    assert_eq!(member_ids(&app, chat).await, sorted(vec![ada.id, bob.id]));
}

#[tokio::test]
async fn every_chat_route_refuses_requests_without_a_valid_token() {
    let app = TestApp::start(&[]).await;
    let ada = app.direct_user("Ada", None).await;
    let chat = create(&app, &ada, "Team", "group", &[]).await;
    let routes = [
        (reqwest::Method::GET, "/api/chats".to_owned()),
        (reqwest::Method::POST, "/api/chats".to_owned()),
        (reqwest::Method::GET, format!("/api/chats/{chat}")),
        (reqwest::Method::PATCH, format!("/api/chats/{chat}")),
        (reqwest::Method::DELETE, format!("/api/chats/{chat}")),
        (reqwest::Method::GET, format!("/api/chats/{chat}/members")),
        (reqwest::Method::POST, format!("/api/chats/{chat}/members")),
        (reqwest::Method::DELETE, format!("/api/chats/{chat}/members/{}", ada.id)),
        (reqwest::Method::GET, format!("/api/chats/{chat}/messages")),
        (reqwest::Method::POST, format!("/api/chats/{chat}/messages")),
        (reqwest::Method::PATCH, format!("/api/chats/{chat}/messages/1")),
        (reqwest::Method::DELETE, format!("/api/chats/{chat}/messages/1")),
        (reqwest::Method::GET, format!("/api/chats/{chat}/messages/search?q=x")),
        (reqwest::Method::GET, "/api/events".to_owned()),
    ];
    let forged = User {
        access_token: "not-a-token".into(),
        ..ada.clone()
    };
    for (method, path) in routes {
        let (status, body) = app.send(app.http.request(method.clone(), app.url(&path))).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} without token: {body}"
        );
        assert_eq!(body["error"], "unauthorized");
        let (status, _) = app
            .send(app.request(method.clone(), &path, &forged).json(&json!({})))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} with a forged token");
    }
}

#[tokio::test]
async fn the_openapi_document_describes_the_chat_member_message_and_event_routes() {
    let app = TestApp::start(&[]).await;

    let response = app
        .http
        .get(app.url("/api-docs/openapi.json"))
        .send()
        .await
        .expect("request");
    let doc: Value = response.json().await.expect("json");

    let paths = &doc["paths"];
    for (path, methods) in [
        ("/api/chats", &["get", "post"][..]),
        ("/api/chats/{id}", &["get", "patch", "delete"][..]),
        ("/api/chats/{id}/members", &["get", "post"][..]),
        ("/api/chats/{id}/members/{user_id}", &["delete"][..]),
        ("/api/chats/{id}/messages", &["get", "post"][..]),
        ("/api/chats/{id}/messages/{message_id}", &["patch", "delete"][..]),
        ("/api/chats/{id}/messages/search", &["get"][..]),
        ("/api/events", &["get"][..]),
    ] {
        for method in methods {
            let operation = &paths[path][method];
            assert!(operation.is_object(), "{method} {path} missing");
            assert_eq!(operation["security"], json!([{ "bearer": [] }]), "{method} {path}");
        }
    }
    for schema in ["Chat", "ChatType", "Member", "Message", "CreateChat", "SendMessage"] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "schema {schema} missing"
        );
    }
}
