//! Attacks on the chat API, each answered the safe way: forged, tampered, expired and algorithm-confused access
//! tokens get 401; CORS answers only the configured origins, and allows the client headers the API reads; SQL-injection attempts in search find nothing
//! beyond the caller's chat and change nothing; and the repository holds no secrets. (The authorization matrix,
//! refresh-token reuse, sign-in/sign-up rate limits and path traversal have their own tests in
//! authorization.rs, auth.rs and files.rs.)

mod common;

use base64::Engine as _;
use common::{TestApp, User};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn claims(user: &User, exp: u64) -> Value {
    json!({ "sub": user.id.to_string(), "ws": user.workspace_id, "iss": "fechatter", "iat": now(), "exp": exp })
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Tokens an attacker could present for `victim` (and, for tampering, starting from `attacker`'s own token).
fn forged_tokens(app: &TestApp, attacker: &User, victim: &User) -> Vec<(&'static str, String)> {
    let public_pem = std::fs::read(app.keys_dir.path().join("public.pem")).expect("public key");
    let private_pem = std::fs::read(app.keys_dir.path().join("private.pem")).expect("private key");
    let (other_private, _) = fechatter_server::auth::tokens::generate_key_pair().expect("key pair");
    let in_ten_minutes = now() + 600;

    // The attacker's valid token with the subject changed to the victim; the signature no longer matches.
    let mut parts: Vec<String> = attacker.access_token.split('.').map(str::to_owned).collect();
    parts[1] = b64(claims(victim, in_ten_minutes).to_string().as_bytes());
    let tampered = parts.join(".");

    let eddsa = |key: &EncodingKey, exp: u64| {
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims(victim, exp), key).expect("sign")
    };
    let wrong_key = eddsa(
        &EncodingKey::from_ed_pem(other_private.as_bytes()).expect("pem"),
        in_ten_minutes,
    );
    // Signed by the real key, but expired well beyond any leeway.
    let expired = eddsa(&EncodingKey::from_ed_pem(&private_pem).expect("pem"), now() - 3600);
    // Algorithm confusion: an HMAC keyed with the (public) verification key.
    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(victim, in_ten_minutes),
        &EncodingKey::from_secret(&public_pem),
    )
    .expect("sign");
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims(victim, in_ten_minutes).to_string().as_bytes())
    );
    let wrong_issuer = {
        let mut c = claims(victim, in_ten_minutes);
        c["iss"] = json!("someone-else");
        jsonwebtoken::encode(
            &Header::new(Algorithm::EdDSA),
            &c,
            &EncodingKey::from_ed_pem(&private_pem).expect("pem"),
        )
        .expect("sign")
    };
    vec![
        ("tampered claims", tampered),
        ("signed by another key", wrong_key),
        ("expired", expired),
        ("HS256 keyed with the public key", hs256),
        ("alg none", none),
        ("wrong issuer", wrong_issuer),
        ("garbage", "not.a.jwt".to_owned()),
        ("empty", String::new()),
    ]
}

#[tokio::test]
async fn forged_tampered_expired_and_confused_tokens_get_401() {
    let mut app = TestApp::start(&[]).await;
    let attacker = app.signup("Mallory Attacker", "evil-corp").await;
    let victim = app.signup("Alice Victim", "acme").await;
    let (status, _) = app.get("/api/users/me", &attacker).await;
    assert_eq!(status, StatusCode::OK, "the attacker's own token works");

    for (what, token) in forged_tokens(&app, &attacker, &victim) {
        for (method, path, body) in [
            (Method::GET, "/api/users/me", None),
            (Method::GET, "/api/chats", None),
            (
                Method::POST,
                "/api/chats",
                Some(json!({"name": "x", "chat_type": "group", "members": []})),
            ),
        ] {
            let forged = User {
                access_token: token.clone(),
                ..attacker.clone()
            };
            let (status, answer) = app.call(&forged, method.clone(), path, body.as_ref()).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{what}: {method} {path} answered {answer}"
            );
            assert!(answer["error"].is_string(), "{what}: a JSON error body: {answer}");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn cors_answers_only_the_configured_origins() {
    let mut app = TestApp::start(&[("FECHATTER__SERVER__CORS_ORIGINS", "https://chat.example.com")]).await;
    let preflight = |origin: &'static str| {
        app.http
            .request(Method::OPTIONS, app.url("/api/chats"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "authorization, content-type")
            .send()
    };
    let allowed = preflight("https://chat.example.com").await.expect("preflight");
    assert_eq!(
        allowed
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.as_bytes()),
        Some(b"https://chat.example.com".as_slice())
    );
    for origin in ["https://evil.example", "http://localhost:5173", "null"] {
        let refused = preflight(origin).await.expect("preflight");
        assert!(
            refused.headers().get("access-control-allow-origin").is_none(),
            "{origin} must not be allowed: {:?}",
            refused.headers()
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_preflight_allows_the_client_headers_read_into_analytics_events() {
    let app = TestApp::start(&[("FECHATTER__SERVER__CORS_ORIGINS", "https://chat.example.com")]).await;
    let requested = "authorization, content-type, x-client-id, x-session-id, x-app-version";

    let preflight = app
        .http
        .request(Method::OPTIONS, app.url("/api/chats"))
        .header("Origin", "https://chat.example.com")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", requested)
        .send()
        .await
        .expect("preflight");

    let allowed = preflight
        .headers()
        .get("access-control-allow-headers")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    for header in requested.split(", ") {
        assert!(
            allowed.split(',').any(|a| a.trim() == header),
            "{header} not allowed: {allowed}"
        );
    }
}

/// Every `content` string anywhere in `value`.
fn contents(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("content", Value::String(s)) => out.push(s.clone()),
                    _ => contents(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| contents(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn sql_injection_in_search_finds_nothing_else_and_changes_nothing() {
    let mut app = TestApp::start(&[]).await;
    let alice = app.signup("Alice Searcher", "acme").await;
    let bob = app.signup("Bob Other", "globex").await;
    let new_chat = |user: &'static str| json!({"name": format!("{user}'s chat"), "chat_type": "group", "members": []});
    let (status, chat) = app.post("/api/chats", &alice, new_chat("alice")).await;
    assert_eq!(status, StatusCode::CREATED, "{chat}");
    let alice_chat = chat["id"].as_i64().expect("id");
    let (status, chat) = app.post("/api/chats", &bob, new_chat("bob")).await;
    assert_eq!(status, StatusCode::CREATED, "{chat}");
    let bob_chat = chat["id"].as_i64().expect("id");
    for (user, chat, text) in [
        (&alice, alice_chat, "hello world from alice"),
        (&bob, bob_chat, "topsecret merger plans"),
    ] {
        let (status, body) = app
            .post(&format!("/api/chats/{chat}/messages"), user, json!({"content": text}))
            .await;
        assert!(status.is_success(), "{body}");
    }
    let messages_before: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&app.pool)
        .await
        .expect("count");

    let attempts = [
        "' OR '1'='1",
        "'; DROP TABLE messages; --",
        "topsecret' OR 1=1 --",
        "%' UNION SELECT content FROM messages --",
        "\\'; DELETE FROM users; --",
        "hello) OR (1=1",
        "!!! & | :* <-> ( )",
        "topsecret",
        "\u{0}",
    ];
    for q in attempts {
        let response = app
            .request(Method::GET, &format!("/api/chats/{alice_chat}/messages/search"), &alice)
            .query(&[("q", q)]);
        let (status, body) = app.send(response).await;
        assert!(
            status == StatusCode::OK || status.is_client_error(),
            "{q:?} answered {status} {body}"
        );
        let mut found = Vec::new();
        contents(&body, &mut found);
        assert!(
            found.iter().all(|c| !c.contains("topsecret")),
            "{q:?} leaked another chat's message: {body}"
        );
    }
    let messages_after: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&app.pool)
        .await
        .expect("messages table still there");
    assert_eq!(messages_before, messages_after);
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.pool)
        .await
        .expect("users table still there");
    assert!(users >= 2);
    app.stop().await;
}

/// Files of the repository: `git ls-files` when it is a checkout, else every file outside `target/` and `.git/`.
fn repository_files(root: &Path) -> Vec<std::path::PathBuf> {
    let listed = std::process::Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|o| o.status.success());
    if let Some(out) = listed {
        return out
            .stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| root.join(String::from_utf8_lossy(p).as_ref()))
            .collect();
    }
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable").flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if name == "target" || name == ".git" {
                continue;
            }
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

#[test]
fn the_repository_holds_no_secrets() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace");
    // Assembled so that this file does not match itself.
    let private_key = format!("-----BEGIN {}", "PRIVATE KEY-----");
    let key_markers = ["", "RSA ", "EC ", "OPENSSH ", "ENCRYPTED "]
        .map(|kind| private_key.replace("BEGIN ", &format!("BEGIN {kind}")));
    let mut findings = Vec::new();
    for path in repository_files(root) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name == ".env" || name.ends_with(".pem") || name.ends_with(".key") || name.ends_with(".p12") {
            findings.push(format!("{}: key or environment file committed", path.display()));
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        if key_markers.iter().any(|m| text.contains(m.as_str())) {
            findings.push(format!("{}: private key block", path.display()));
        }
        let aws = text.match_indices("AKIA").any(|(i, _)| {
            text[i + 4..]
                .chars()
                .take(16)
                .filter(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
                .count()
                == 16
        });
        if aws {
            findings.push(format!("{}: AWS access key id", path.display()));
        }
    }
    assert!(
        findings.is_empty(),
        "secrets in the repository:\n{}",
        findings.join("\n")
    );
}

#[tokio::test]
async fn nul_characters_get_400_naming_the_problem_not_500() {
    // PostgreSQL text cannot hold NUL; without the check these reached a query and failed as 500s.
    let mut app = TestApp::start(&[]).await;
    let user = app.signup("Nul Tester", "acme").await;
    let signin = app
        .http
        .post(app.url("/api/signin"))
        .json(&json!({"email": "a\u{0}b@example.com", "password": "whatever1"}));
    let chat = app.request(Method::POST, "/api/chats", &user).json(&json!({
        "name": "bad\u{0}name", "chat_type": "group", "members": []
    }));
    let search = app
        .request(Method::GET, "/api/chats/1/messages/search", &user)
        .query(&[("q", "a\u{0}b")]);
    for (what, request) in [("signin", signin), ("create chat", chat), ("search", search)] {
        let (status, body) = app.send(request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert_eq!(body["error"], "invalid_text", "{what}: {body}");
    }
    app.stop().await;
}
