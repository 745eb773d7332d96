//! The authorization matrix: for every route about a chat, its messages, members or files, someone outside the
//! chat (same workspace, not a member) or outside the workspace gets 404 — the same answer as for a chat that
//! does not exist — and nobody gets anything without a valid token.

mod common;

use common::{TestApp, User};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

struct World {
    owner: User,
    same_workspace_outsider: User,
    other_workspace: User,
    chat_id: i64,
    message_id: i64,
    file_url: String,
}

async fn world(app: &TestApp) -> World {
    let owner = app.direct_user("Owner", None).await;
    let member = app.direct_user("Member", Some(owner.workspace_id)).await;
    let same_workspace_outsider = app.direct_user("Outsider", Some(owner.workspace_id)).await;
    let other_workspace = app.direct_user("Stranger", None).await;
    let (status, chat) = app
        .post(
            "/api/chats",
            &owner,
            json!({"name": "secret plans", "chat_type": "private_channel", "members": [member.id]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{chat}");
    let chat_id = chat["id"].as_i64().expect("chat id");
    let (status, message) = app
        .post(
            &format!("/api/chats/{chat_id}/messages"),
            &owner,
            json!({"content": "launch at dawn"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{message}");
    let message_id = message["id"].as_i64().expect("message id");
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"plan".to_vec()).file_name("plan.txt"),
    );
    let (status, uploaded) = app
        .send(app.request(Method::POST, "/api/upload", &owner).multipart(form))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{uploaded}");
    World {
        file_url: uploaded["files"][0]["url"].as_str().expect("url").to_owned(),
        owner,
        same_workspace_outsider,
        other_workspace,
        chat_id,
        message_id,
    }
}

/// Every chat-scoped route, with a body where it takes one.
fn chat_routes(w: &World) -> Vec<(Method, String, Option<Value>)> {
    let (c, m) = (w.chat_id, w.message_id);
    vec![
        (Method::GET, format!("/api/chats/{c}"), None),
        (
            Method::PATCH,
            format!("/api/chats/{c}"),
            Some(json!({"name": "mine now"})),
        ),
        (Method::DELETE, format!("/api/chats/{c}"), None),
        (Method::GET, format!("/api/chats/{c}/members"), None),
        (
            Method::POST,
            format!("/api/chats/{c}/members"),
            Some(json!({"user_ids": [w.owner.id]})),
        ),
        (Method::DELETE, format!("/api/chats/{c}/members/{}", w.owner.id), None),
        (Method::GET, format!("/api/chats/{c}/messages"), None),
        (
            Method::POST,
            format!("/api/chats/{c}/messages"),
            Some(json!({"content": "hi"})),
        ),
        (
            Method::PATCH,
            format!("/api/chats/{c}/messages/{m}"),
            Some(json!({"content": "edited"})),
        ),
        (Method::DELETE, format!("/api/chats/{c}/messages/{m}"), None),
        (Method::GET, format!("/api/chats/{c}/messages/search?q=dawn"), None),
    ]
}

#[tokio::test]
async fn outsiders_get_404_on_every_chat_message_member_and_file_route() {
    let app = TestApp::start(&[]).await;
    let w = world(&app).await;
    let mut checked = 0;
    for outsider in [&w.same_workspace_outsider, &w.other_workspace] {
        for (method, path, body) in chat_routes(&w) {
            let (status, answer) = app.call(outsider, method.clone(), &path, body.as_ref()).await;
            assert_eq!(
                status,
                StatusCode::NOT_FOUND,
                "{method} {path} as {}: {answer}",
                outsider.email
            );
            assert_eq!(answer["error"], "not_found", "{method} {path}: {answer}");
            assert!(!answer.to_string().contains("dawn"), "nothing leaks: {answer}");
            checked += 1;
        }
    }
    // Files belong to the workspace: the stranger gets 404, a workspace member may read them.
    let (status, _) = app.get(&w.file_url, &w.other_workspace).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.get(&w.file_url, &w.same_workspace_outsider).await;
    assert_eq!(status, StatusCode::OK);
    // Nothing changed: the chat, its message and its members are intact.
    let (status, chat) = app.get(&format!("/api/chats/{}", w.chat_id), &w.owner).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(chat["name"], "secret plans");
    let (_, messages) = app.get(&format!("/api/chats/{}/messages", w.chat_id), &w.owner).await;
    assert!(messages.to_string().contains("launch at dawn"), "{messages}");
    // Outsiders' chat lists do not show it.
    for outsider in [&w.same_workspace_outsider, &w.other_workspace] {
        let (_, list) = app.get("/api/chats", outsider).await;
        assert!(!list.to_string().contains("secret plans"), "{list}");
    }
    eprintln!("checked {checked} outsider requests");
}

#[tokio::test]
async fn every_protected_route_needs_a_valid_token() {
    let app = TestApp::start(&[]).await;
    let w = world(&app).await;
    let mut routes = chat_routes(&w);
    routes.extend([
        (Method::GET, "/api/chats".to_owned(), None),
        (
            Method::POST,
            "/api/chats".to_owned(),
            Some(json!({"name": "x", "chat_type": "group", "members": []})),
        ),
        (Method::GET, "/api/users".to_owned(), None),
        (Method::GET, "/api/users/me".to_owned(), None),
        (Method::GET, w.file_url.clone(), None),
        (Method::POST, "/api/upload".to_owned(), None),
        (Method::GET, "/api/events".to_owned(), None),
        (
            Method::POST,
            "/api/logout".to_owned(),
            Some(json!({"refresh_token": "x"})),
        ),
    ]);
    let forged = User {
        access_token: "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.".into(),
        ..w.owner.clone()
    };
    for (method, path, body) in routes {
        let mut request = app.http.request(method.clone(), app.url(&path));
        if let Some(body) = &body {
            request = request.json(body);
        }
        let (status, answer) = app.send(request).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} without a token: {answer}"
        );
        let (status, answer) = app.call(&forged, method.clone(), &path, body.as_ref()).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} with a forged token: {answer}"
        );
    }
}
