//! The `users` routes against real PostgreSQL and NATS servers: the caller's profile, the member list of the
//! caller's workspace (and only that workspace), and the 401s for requests without a valid access token.

mod common;

use common::TestApp;
use fechatter_server::auth::{Claims, JwtKeys};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::Value;
use std::time::{SystemTime, UNIX_EPOCH};

/// A token signed with the service's own key whose `exp` passed two minutes ago.
fn expired_token(app: &TestApp, user_id: i64, workspace_id: i64) -> String {
    let pem = std::fs::read(app.keys_dir.path().join("private.pem")).expect("private key");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    let claims = Claims {
        sub: user_id.to_string(),
        ws: workspace_id,
        iss: "fechatter".into(),
        iat: now - 1000,
        exp: now - 120,
    };
    let key = EncodingKey::from_ed_pem(&pem).expect("Ed25519 key");
    jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &key).expect("sign")
}

/// A well-formed, unexpired token for the same user, signed with a key the service does not know.
fn foreign_token(user_id: i64, workspace_id: i64) -> String {
    let (private, public) = fechatter_server::auth::tokens::generate_key_pair().expect("keys");
    let keys = JwtKeys::from_pem(private.as_bytes(), public.as_bytes(), "fechatter", 900).expect("keys");
    keys.issue(user_id, workspace_id).expect("token")
}

#[tokio::test]
async fn me_answers_the_callers_profile_and_workspace() {
    let app = TestApp::start(&[]).await;
    let user = app.signup("Ada Lovelace", "Engines").await;

    let (status, me) = app.get("/api/users/me", &user).await;

    assert_eq!(status, StatusCode::OK, "{me}");
    let (fullname, created_at): (String, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("SELECT fullname, created_at FROM users WHERE id = $1")
            .bind(user.id)
            .fetch_one(&app.pool)
            .await
            .expect("user row");
    assert_eq!(me["id"].as_i64(), Some(user.id));
    assert_eq!(me["fullname"].as_str(), Some(fullname.as_str()));
    assert_eq!(me["email"].as_str(), Some(user.email.as_str()));
    assert_eq!(me["workspace_id"].as_i64(), Some(user.workspace_id));
    assert_eq!(me["workspace_name"], "Engines");
    let answered: chrono::DateTime<chrono::Utc> = me["created_at"]
        .as_str()
        .expect("created_at")
        .parse()
        .expect("RFC 3339");
    assert_eq!(answered, created_at);
    assert!(me.get("password_hash").is_none());
}

#[tokio::test]
async fn the_user_list_holds_only_the_callers_workspace_ordered_by_id() {
    let app = TestApp::start(&[]).await;
    let alice = app.signup("Alice", "Acme").await;
    let outsider = app.signup("Outsider", "Globex").await;
    let bob = app.join("Bob", &alice).await;

    let (status, list) = app.get("/api/users", &bob).await;
    let (_, outsiders_list) = app.get("/api/users", &outsider).await;

    assert_eq!(status, StatusCode::OK, "{list}");
    let members: Vec<(i64, &str, &str)> = list
        .as_array()
        .expect("array")
        .iter()
        .map(|m| {
            (
                m["id"].as_i64().expect("id"),
                m["fullname"].as_str().expect("fullname"),
                m["email"].as_str().expect("email"),
            )
        })
        .collect();
    assert_eq!(
        members,
        vec![
            (alice.id, "Alice", alice.email.as_str()),
            (bob.id, "Bob", bob.email.as_str())
        ]
    );
    let outsider_ids: Vec<Option<i64>> = outsiders_list
        .as_array()
        .expect("array")
        .iter()
        .map(|m| m["id"].as_i64())
        .collect();
    assert_eq!(outsider_ids, vec![Some(outsider.id)]);
}

#[tokio::test]
async fn requests_without_a_valid_access_token_are_refused_with_401() {
    let app = TestApp::start(&[]).await;
    let user = app.signup("Guarded", "Fortress").await;
    let expired = expired_token(&app, user.id, user.workspace_id);
    let foreign = foreign_token(user.id, user.workspace_id);
    let authorizations = [
        None,
        Some("Bearer garbage".to_owned()),
        Some("Bearer ".to_owned()),
        Some(format!("Basic {}", user.access_token)),
        Some(format!("Bearer {expired}")),
        Some(format!("Bearer {foreign}")),
    ];

    for path in ["/api/users/me", "/api/users"] {
        for authorization in &authorizations {
            let mut request = app.http.get(app.url(path));
            if let Some(value) = authorization {
                request = request.header("authorization", value);
            }
            let (status, body) = app.send(request).await;
            assert_eq!(
                (status, body["error"].as_str()),
                (StatusCode::UNAUTHORIZED, Some("unauthorized")),
                "{path} with {authorization:?}: {body}"
            );
            assert!(body["message"].is_string());
        }
    }
    assert_eq!(
        app.get("/api/users/me", &user).await.0,
        StatusCode::OK,
        "the real token still works"
    );
}

#[tokio::test]
async fn a_token_outliving_its_account_is_refused_with_401() {
    let app = TestApp::start(&[]).await;
    let user = app.signup("Gone", "Vanishing").await;
    sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(user.id)
        .execute(&app.pool)
        .await
        .expect("delete");

    let (status, body) = app.get("/api/users/me", &user).await;

    assert_eq!(
        (status, body["error"].clone()),
        (StatusCode::UNAUTHORIZED, Value::from("unauthorized"))
    );
}

#[tokio::test]
async fn the_openapi_document_describes_the_user_routes_as_protected() {
    let app = TestApp::start(&[]).await;

    let (status, doc) = app.send(app.http.get(app.url("/api-docs/openapi.json"))).await;

    assert_eq!(status, StatusCode::OK);
    for path in ["/api/users/me", "/api/users"] {
        assert_eq!(
            doc["paths"][path]["get"]["security"],
            serde_json::json!([{ "bearer": [] }]),
            "{path}"
        );
    }
    assert!(doc["components"]["schemas"]["Profile"].is_object());
}

#[tokio::test]
async fn the_user_list_comes_a_page_at_a_time_after_the_last_id() {
    let app = TestApp::start(&[]).await;
    let alice = app.signup("Alice", "Acme").await;
    let bob = app.join("Bob", &alice).await;
    let carol = app.join("Carol", &alice).await;
    let ids = |list: &serde_json::Value| -> Vec<i64> {
        list.as_array()
            .expect("array")
            .iter()
            .map(|m| m["id"].as_i64().expect("id"))
            .collect()
    };

    let (status, first) = app.get("/api/users?limit=2", &bob).await;
    assert_eq!((status, ids(&first)), (StatusCode::OK, vec![alice.id, bob.id]));
    let (status, second) = app.get(&format!("/api/users?limit=2&after={}", bob.id), &bob).await;
    assert_eq!((status, ids(&second)), (StatusCode::OK, vec![carol.id]));
    let (status, rest) = app.get(&format!("/api/users?after={}", carol.id), &bob).await;
    assert_eq!((status, ids(&rest)), (StatusCode::OK, vec![]));
    let (status, all) = app.get("/api/users?after=&limit=", &bob).await;
    assert_eq!((status, ids(&all)), (StatusCode::OK, vec![alice.id, bob.id, carol.id]));

    for query in ["limit=0", "limit=101", "after=abc", "limit=1.5"] {
        let (status, body) = app.get(&format!("/api/users?{query}"), &bob).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{query}: {body}"
        );
    }
}
