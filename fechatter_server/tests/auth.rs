//! Sign-up, sign-in, refresh-token rotation and logout against real PostgreSQL and NATS servers, asserting on
//! the stored rows (users, workspaces, refresh tokens) and on the analytics events left in the outbox.
//!
//! No test creates the ANALYTICS stream, so the relay cannot publish and every event stays in the outbox to be
//! read back.

mod common;

use common::TestApp;
use fechatter_protos::v1::AnalyticsEvent;
use fechatter_protos::v1::analytics_event::EventType;
use prost::Message as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use uuid::Uuid;

const PASSWORD: &str = "correct horse battery";

/// POSTs `body` to `path` without an access token.
async fn post(app: &TestApp, path: &str, body: Value) -> (StatusCode, Value) {
    app.send(app.http.post(app.url(path)).json(&body)).await
}

async fn signup_as(app: &TestApp, fullname: &str, email: &str, workspace: &str) -> (StatusCode, Value) {
    post(
        app,
        "/api/signup",
        json!({ "fullname": fullname, "email": email, "password": PASSWORD, "workspace": workspace }),
    )
    .await
}

async fn signin(app: &TestApp, email: &str, password: &str) -> (StatusCode, Value) {
    post(app, "/api/signin", json!({ "email": email, "password": password })).await
}

async fn refresh(app: &TestApp, refresh_token: &str) -> (StatusCode, Value) {
    post(app, "/api/refresh", json!({ "refresh_token": refresh_token })).await
}

/// The outbox rows on `subject` as (event_id column, decoded payload), oldest first.
async fn outbox(app: &TestApp, subject: &str) -> Vec<(Uuid, AnalyticsEvent)> {
    let rows: Vec<(Uuid, Vec<u8>)> =
        sqlx::query_as("SELECT event_id, payload FROM analytics_outbox WHERE subject = $1 ORDER BY id")
            .bind(subject)
            .fetch_all(&app.pool)
            .await
            .expect("outbox rows");
    rows.into_iter()
        .map(|(id, payload)| (id, AnalyticsEvent::decode(payload.as_slice()).expect("payload decodes")))
        .collect()
}

/// Asserts the event's context: the acting user and workspace, the caller's IP, and the row's event id.
fn assert_context(event_id: Uuid, event: &AnalyticsEvent, user_id: i64, workspace_id: i64) {
    let context = event.context.as_ref().expect("context");
    assert_eq!(
        context.event_id,
        event_id.to_string(),
        "payload and row agree on the event id"
    );
    assert_eq!(context.user_id, user_id.to_string());
    assert_eq!(context.workspace_id, workspace_id.to_string());
    assert_eq!(context.ip, "127.0.0.1");
}

/// Statuses of refreshing with each token in turn.
async fn refresh_statuses(app: &TestApp, tokens: &[&str]) -> Vec<StatusCode> {
    let mut statuses = Vec::new();
    for token in tokens {
        statuses.push(refresh(app, token).await.0);
    }
    statuses
}

#[tokio::test]
async fn signing_up_stores_a_hashed_password_and_a_lower_cased_email_and_answers_tokens() {
    let app = TestApp::start(&[]).await;

    let (status, body) = signup_as(&app, "Ada Lovelace", "Ada.Lovelace@Example.COM", "Analytical Engines").await;

    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert_eq!(body["user"]["email"], "ada.lovelace@example.com");
    assert_eq!(body["user"]["workspace_name"], "Analytical Engines");
    let user_id = body["user"]["id"].as_i64().expect("id");
    let (email, hash): (String, String) = sqlx::query_as("SELECT email, password_hash FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_one(&app.pool)
        .await
        .expect("user row");
    assert_eq!(email, "ada.lovelace@example.com");
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let plain_text_copies: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM users u WHERE position($1 IN u::text) > 0) \
              + (SELECT count(*) FROM refresh_tokens r WHERE position($1 IN r::text) > 0)",
    )
    .bind(PASSWORD)
    .fetch_one(&app.pool)
    .await
    .expect("search");
    assert_eq!(plain_text_copies, 0, "the password is stored nowhere in plain text");
    let (owner, name): (Option<i64>, String) = sqlx::query_as(
        "SELECT w.owner_id, w.name FROM workspaces w JOIN users u ON u.workspace_id = w.id WHERE u.id = $1",
    )
    .bind(user_id)
    .fetch_one(&app.pool)
    .await
    .expect("workspace");
    assert_eq!((owner, name.as_str()), (Some(user_id), "Analytical Engines"));
    let refresh_token = body["refresh_token"].as_str().expect("refresh token");
    let stored: Vec<String> = sqlx::query_scalar("SELECT token_hash FROM refresh_tokens WHERE user_id = $1")
        .bind(user_id)
        .fetch_all(&app.pool)
        .await
        .expect("tokens");
    assert_eq!(
        stored,
        vec![fechatter_server::auth::tokens::hash_opaque_token(refresh_token)]
    );
    let access = body["access_token"].as_str().expect("access token");
    let (status, me) = app
        .send(app.http.get(app.url("/api/users/me")).bearer_auth(access))
        .await;
    assert_eq!((status, me["id"].as_i64()), (StatusCode::OK, Some(user_id)));
    // The scheme's name is case-insensitive (RFC 9110); some clients write it in lower case.
    let (status, me) = app
        .send(
            app.http
                .get(app.url("/api/users/me"))
                .header("authorization", format!("bearer {access}")),
        )
        .await;
    assert_eq!((status, me["id"].as_i64()), (StatusCode::OK, Some(user_id)));
}

#[tokio::test]
async fn signing_up_records_a_user_register_event_in_the_outbox() {
    let app = TestApp::start(&[]).await;

    let user = app.signup("Grace Hopper", "Compilers").await;

    let events = outbox(&app, "fechatter.analytics.user.register").await;
    assert_eq!(events.len(), 1);
    let (event_id, event) = &events[0];
    assert_context(*event_id, event, user.id, user.workspace_id);
    let Some(EventType::UserRegister(register)) = &event.event_type else {
        panic!("not a user_register event: {event:?}");
    };
    assert_eq!(register.email, user.email);
    assert_eq!(register.workspace_id, user.workspace_id.to_string());
    assert_eq!(register.registration_method, "password");
}

#[tokio::test]
async fn naming_an_existing_workspace_is_refused_and_an_invitation_joins_it_without_ownership() {
    let mut app = TestApp::start(&[]).await;
    let owner = app.signup("Owner", "Shared").await;
    let depth = app.outbox_depth().await;

    // The name alone no longer lets anyone in.
    let (status, body) = signup_as(&app, "Intruder", "intruder@example.com", "Shared").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], "workspace_taken");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("/api/workspace/invites")),
        "{body}"
    );
    let intruders: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE email = 'intruder@example.com'")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(intruders, 0);
    assert_eq!(app.outbox_depth().await, depth, "a refused sign-up records nothing");

    // An invitation from a member does, as a member, not an owner; it can be used again until it expires.
    let joiner = app.join("Joiner", &owner).await;
    let second = app.join("Second Joiner", &joiner).await;
    assert_eq!(second.workspace_id, owner.workspace_id);
    let (workspaces, owner_id): (i64, Option<i64>) =
        sqlx::query_as("SELECT count(*), max(owner_id) FROM workspaces WHERE name = 'Shared'")
            .fetch_one(&app.pool)
            .await
            .expect("workspaces");
    assert_eq!((workspaces, owner_id), (1, Some(owner.id)));
    let register = outbox(&app, "fechatter.analytics.user.register").await;
    let (_, last) = register.last().expect("a user_register event");
    let Some(EventType::UserRegister(event)) = &last.event_type else {
        panic!("not a user_register event: {last:?}");
    };
    assert_eq!(event.registration_method, "invite");

    // Unknown, expired and malformed invitations are refused by name.
    let (status, invite) = app.post("/api/workspace/invites", &owner, json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{invite}");
    let token = invite["invite"].as_str().expect("invite").to_owned();
    sqlx::query("UPDATE workspace_invites SET expires_at = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .expect("expire");
    for bad in [token.as_str(), "0123456789abcdef", ""] {
        let (status, body) = post(
            &app,
            "/api/signup",
            json!({"fullname": "Late", "email": format!("late{}@example.com", bad.len()), "password": "password1", "invite": bad}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}: {body}");
        assert_eq!(body["error"], "invalid_invite", "{bad:?}: {body}");
    }
    app.stop().await;
}

#[tokio::test]
async fn an_email_already_taken_in_any_case_is_refused_with_409_and_leaves_nothing_behind() {
    let app = TestApp::start(&[]).await;
    let first = app.signup("First", "Taken").await;
    let depth = app.outbox_depth().await;

    let (status, body) = signup_as(&app, "Second", &first.email.to_uppercase(), "Brand New Workspace").await;

    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], "email_taken");
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    let new_workspaces: i64 = sqlx::query_scalar("SELECT count(*) FROM workspaces WHERE name = 'Brand New Workspace'")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!((users, new_workspaces), (1, 0), "the whole sign-up rolled back");
    assert_eq!(app.outbox_depth().await, depth, "no event for a refused sign-up");
}

#[tokio::test]
async fn invalid_sign_up_fields_are_refused_with_400_codes_naming_the_field() {
    let app = TestApp::start(&[]).await;
    let ok = json!({ "fullname": "Ada", "email": "ada@example.com", "password": PASSWORD, "workspace": "W" });
    let with = |key: &str, value: Value| {
        let mut body = ok.clone();
        body[key] = value;
        body
    };
    let cases = [
        (with("fullname", json!("")), "invalid_fullname"),
        (with("fullname", json!("x".repeat(101))), "invalid_fullname"),
        (with("email", json!("ada.example.com")), "invalid_email"),
        (with("email", json!("ada@b@example.com")), "invalid_email"),
        (
            with("email", json!(format!("{}@example.com", "a".repeat(243)))),
            "invalid_email",
        ),
        (with("password", json!("1234567")), "invalid_password"),
        (with("password", json!("p".repeat(129))), "invalid_password"),
        (with("workspace", json!("")), "invalid_workspace"),
        (with("workspace", json!("w".repeat(101))), "invalid_workspace"),
        (
            json!({ "fullname": "Ada", "email": "ada@example.com", "password": PASSWORD }),
            "invalid_workspace",
        ),
        (with("invite", json!("0123456789abcdef")), "invalid_workspace"),
        (
            json!({ "fullname": "Ada", "email": "ada@example.com", "workspace": "W" }),
            "invalid_json",
        ),
    ];

    for (body, code) in cases {
        let (status, answer) = post(&app, "/api/signup", body.clone()).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some(code)),
            "{body}"
        );
    }
    let (status, answer) = app
        .send(
            app.http
                .post(app.url("/api/signup"))
                .header("content-type", "application/json")
                .body("{"),
        )
        .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_json"))
    );
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(users, 0);
    assert_eq!(app.outbox_depth().await, 0);
}

#[tokio::test]
async fn signing_in_in_any_case_answers_tokens_and_records_a_user_login_event() {
    let app = TestApp::start(&[]).await;
    let user = app.signup("Alan Turing", "Bletchley").await;

    let (status, body) = signin(&app, &format!("  {}  ", user.email.to_uppercase()), PASSWORD).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["token_type"].as_str(), body["expires_in"].as_u64()),
        (Some("Bearer"), Some(900))
    );
    let access = body["access_token"].as_str().expect("access token");
    let (status, me) = app
        .send(app.http.get(app.url("/api/users/me")).bearer_auth(access))
        .await;
    assert_eq!((status, me["id"].as_i64()), (StatusCode::OK, Some(user.id)));
    let families: i64 = sqlx::query_scalar("SELECT count(DISTINCT family_id) FROM refresh_tokens WHERE user_id = $1")
        .bind(user.id)
        .fetch_one(&app.pool)
        .await
        .expect("families");
    assert_eq!(families, 2, "sign-up and sign-in each start a session");
    let events = outbox(&app, "fechatter.analytics.user.login").await;
    assert_eq!(events.len(), 1);
    let (event_id, event) = &events[0];
    assert_context(*event_id, event, user.id, user.workspace_id);
    let Some(EventType::UserLogin(login)) = &event.event_type else {
        panic!("not a user_login event: {event:?}");
    };
    assert_eq!(
        (login.email.as_str(), login.login_method.as_str()),
        (user.email.as_str(), "password")
    );
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_email_get_identical_401s_after_the_same_work() {
    let app = TestApp::start(&[]).await;
    let user = app.signup("Known", "Secrets").await;

    let mut wrong_password = Vec::new();
    let mut unknown_email = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        wrong_password.push((signin(&app, &user.email, "not the password").await, started.elapsed()));
        let started = Instant::now();
        unknown_email.push((
            signin(&app, "nobody@example.com", "not the password").await,
            started.elapsed(),
        ));
    }

    let (wrong, _) = &wrong_password[0];
    let (unknown, _) = &unknown_email[0];
    assert_eq!(wrong.0, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.1["error"], "invalid_credentials");
    assert_eq!(wrong, unknown, "the answers tell nothing about the account");
    // Both verify an Argon2id hash; skipping it for unknown e-mails would make them ~1000× faster.
    let fastest = |runs: &[((StatusCode, Value), Duration)]| runs.iter().map(|(_, d)| *d).min().expect("runs");
    let (wrong_time, unknown_time) = (fastest(&wrong_password), fastest(&unknown_email));
    assert!(
        unknown_time * 3 > wrong_time && wrong_time * 3 > unknown_time,
        "wrong password {wrong_time:?}, unknown e-mail {unknown_time:?}"
    );
    assert!(outbox(&app, "fechatter.analytics.user.login").await.is_empty());
}

#[tokio::test]
async fn a_refresh_rotates_both_tokens_and_the_old_refresh_token_then_fails() {
    let app = TestApp::start(&[]).await;
    let user = app.signup("Rotating", "Rotation").await;

    let (status, body) = refresh(&app, &user.refresh_token).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    let next = body["refresh_token"].as_str().expect("refresh token").to_owned();
    assert_ne!(next, user.refresh_token);
    assert_eq!(body["token_type"], "Bearer");
    let access = body["access_token"].as_str().expect("access token");
    let (status, me) = app
        .send(app.http.get(app.url("/api/users/me")).bearer_auth(access))
        .await;
    assert_eq!((status, me["id"].as_i64()), (StatusCode::OK, Some(user.id)));
    let rows: Vec<(Uuid, bool, bool)> = sqlx::query_as(
        "SELECT family_id, used_at IS NOT NULL, revoked_at IS NOT NULL FROM refresh_tokens WHERE user_id = $1 \
         ORDER BY created_at, id",
    )
    .bind(user.id)
    .fetch_all(&app.pool)
    .await
    .expect("tokens");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].0, rows[1].0, "the successor stays in the session's family");
    assert_eq!((rows[0].1, rows[0].2), (true, false), "the presented token is used");
    assert_eq!((rows[1].1, rows[1].2), (false, false), "the successor is live");

    let (status, body) = refresh(&app, &user.refresh_token).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("refresh_token_reused"))
    );
}

#[tokio::test]
async fn reusing_a_used_refresh_token_revokes_its_whole_family_but_no_other_session() {
    let app = TestApp::start(&[]).await;
    let user = app.signup("Victim", "Stolen").await;
    let (_, other_session) = signin(&app, &user.email, PASSWORD).await;
    let other = other_session["refresh_token"]
        .as_str()
        .expect("refresh token")
        .to_owned();
    let (_, body) = refresh(&app, &user.refresh_token).await;
    let newest = body["refresh_token"].as_str().expect("refresh token").to_owned();

    let (status, body) = refresh(&app, &user.refresh_token).await;

    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("refresh_token_reused"))
    );
    let (status, body) = refresh(&app, &newest).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("refresh_token_revoked")),
        "the newest token of the family died too"
    );
    let live: Vec<String> = sqlx::query_scalar(
        "SELECT token_hash FROM refresh_tokens WHERE user_id = $1 AND revoked_at IS NULL AND used_at IS NULL",
    )
    .bind(user.id)
    .fetch_all(&app.pool)
    .await
    .expect("tokens");
    assert_eq!(live, vec![fechatter_server::auth::tokens::hash_opaque_token(&other)]);
    assert_eq!(
        refresh(&app, &other).await.0,
        StatusCode::OK,
        "the other session is untouched"
    );
}

#[tokio::test]
async fn concurrent_refreshes_with_one_token_let_at_most_one_through_and_revoke_the_family() {
    let app = TestApp::start(&[]).await;
    let user = app.signup("Racer", "Race").await;

    let (a, b) = tokio::join!(refresh(&app, &user.refresh_token), refresh(&app, &user.refresh_token));

    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::UNAUTHORIZED],
        "{} / {}",
        a.1,
        b.1
    );
    let issued = if a.0 == StatusCode::OK { &a.1 } else { &b.1 };
    let issued = issued["refresh_token"].as_str().expect("refresh token");
    assert_eq!(
        refresh(&app, issued).await.0,
        StatusCode::UNAUTHORIZED,
        "the winner's token was revoked too"
    );
}

#[tokio::test]
async fn a_logout_during_a_refresh_also_revokes_the_token_that_refresh_issues() {
    let app = TestApp::start(&[]).await;
    let user = app.signup("Midway", "Race").await;
    // Hold the refresh in the middle of its transaction: its new token's insert checks the user's row (foreign
    // key), which this transaction keeps locked until the logout is waiting too.
    let mut hold = app.pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
        .bind(user.id)
        .execute(&mut *hold)
        .await
        .expect("lock the user");
    let logging_out = async {
        wait_for_lock_waits(&app, 1).await;
        let logout = app.post("/api/logout", &user, json!({ "refresh_token": user.refresh_token }));
        let release = async {
            wait_for_lock_waits(&app, 2).await;
            hold.commit().await.expect("release");
        };
        tokio::join!(logout, release).0
    };

    let ((status, body), logged_out) = tokio::join!(refresh(&app, &user.refresh_token), logging_out);

    assert_eq!(status, StatusCode::OK, "{body}");
    let issued = body["refresh_token"].as_str().expect("refresh token");
    assert_eq!(logged_out.0, StatusCode::NO_CONTENT);
    let (status, body) = refresh(&app, issued).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("refresh_token_revoked")),
        "the token issued while the logout waited died with its session"
    );
}

/// Waits until `n` statements of the test's database wait for a lock.
async fn wait_for_lock_waits(app: &TestApp, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&app.pool)
        .await
        .expect("pg_stat_activity");
        if waiting >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{waiting} statements wait for a lock, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_expired_or_unknown_refresh_token_is_refused_with_401() {
    let app = TestApp::start(&[]).await;
    let user = app.signup("Late", "Expiry").await;
    sqlx::query("UPDATE refresh_tokens SET expires_at = now() - interval '1 second' WHERE user_id = $1")
        .bind(user.id)
        .execute(&app.pool)
        .await
        .expect("expire");
    let stored_hash = fechatter_server::auth::tokens::hash_opaque_token(&user.refresh_token);

    let expired = refresh(&app, &user.refresh_token).await;
    let unknown = refresh(&app, &fechatter_server::auth::tokens::new_opaque_token()).await;
    let hash_itself = refresh(&app, &stored_hash).await;
    let missing = post(&app, "/api/refresh", json!({})).await;

    assert_eq!(
        (expired.0, expired.1["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("refresh_token_expired"))
    );
    assert_eq!(
        (unknown.0, unknown.1["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_refresh_token"))
    );
    assert_eq!(hash_itself, unknown, "a leaked hash is not a token");
    assert_eq!(
        (missing.0, missing.1["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_json"))
    );
}

#[tokio::test]
async fn logging_out_revokes_the_session_and_records_a_user_logout_event() {
    let app = TestApp::start(&[]).await;
    let user = app.signup("Leaving", "Exit").await;
    let (_, body) = refresh(&app, &user.refresh_token).await;
    let newest = body["refresh_token"].as_str().expect("refresh token").to_owned();

    let (status, body) = app.post("/api/logout", &user, json!({ "refresh_token": newest })).await;

    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    assert_eq!(refresh_statuses(&app, &[&newest]).await, [StatusCode::UNAUTHORIZED]);
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM refresh_tokens WHERE user_id = $1 AND revoked_at IS NULL")
        .bind(user.id)
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(live, 0);
    let events = outbox(&app, "fechatter.analytics.user.logout").await;
    assert_eq!(events.len(), 1);
    let (event_id, event) = &events[0];
    assert_context(*event_id, event, user.id, user.workspace_id);
    let Some(EventType::UserLogout(logout)) = &event.event_type else {
        panic!("not a user_logout event: {event:?}");
    };
    assert_eq!(logout.email, user.email);

    let (status, _) = app.post("/api/logout", &user, json!({ "refresh_token": newest })).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "logging out twice is harmless");
    assert_eq!(
        outbox(&app, "fechatter.analytics.user.logout").await.len(),
        1,
        "and not a second logout"
    );
}

#[tokio::test]
async fn logging_out_needs_an_access_token_and_the_callers_own_refresh_token() {
    let app = TestApp::start(&[]).await;
    let alice = app.signup("Alice", "Logout").await;
    let mallory = app.join("Mallory", &alice).await;

    let anonymous = post(&app, "/api/logout", json!({ "refresh_token": alice.refresh_token })).await;
    let someone_elses = app
        .post("/api/logout", &mallory, json!({ "refresh_token": alice.refresh_token }))
        .await;

    assert_eq!(
        (anonymous.0, anonymous.1["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    assert_eq!(
        (someone_elses.0, someone_elses.1["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_refresh_token"))
    );
    assert_eq!(
        refresh(&app, &alice.refresh_token).await.0,
        StatusCode::OK,
        "alice's session is untouched"
    );
    assert!(outbox(&app, "fechatter.analytics.user.logout").await.is_empty());
}

#[tokio::test]
async fn sign_in_and_sign_up_answer_429_once_a_client_exceeds_the_limit() {
    let app = TestApp::start(&[("FECHATTER__SERVER__AUTH_RATE_LIMIT_PER_MINUTE", "3")]).await;
    let user = app.signup("Limited", "Limits").await;
    assert_eq!(
        signin(&app, &user.email, "wrong password").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        signin(&app, &user.email, "wrong password").await.0,
        StatusCode::UNAUTHORIZED
    );

    let (status, body) = signin(&app, &user.email, PASSWORD).await;
    let (signup_status, _) = signup_as(&app, "Another", "another@example.com", "Limits").await;

    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited"))
    );
    assert_eq!(signup_status, StatusCode::TOO_MANY_REQUESTS);
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(users, 1);
    assert_eq!(
        refresh(&app, &user.refresh_token).await.0,
        StatusCode::OK,
        "refreshing is not limited"
    );
}

/// Signs in as `email` through a reverse proxy that forwarded `x_forwarded_for`.
async fn signin_forwarded(app: &TestApp, email: &str, x_forwarded_for: &str) -> StatusCode {
    let request = app
        .http
        .post(app.url("/api/signin"))
        .header("x-forwarded-for", x_forwarded_for)
        .json(&json!({ "email": email, "password": PASSWORD }));
    app.send(request).await.0
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_allowance_and_its_address_in_events() {
    let app = TestApp::start(&[
        ("FECHATTER__SERVER__AUTH_RATE_LIMIT_PER_MINUTE", "2"),
        ("FECHATTER__SERVER__TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1"),
    ])
    .await;
    let user = app.signup("Proxied", "Proxies").await;

    let first_client = [
        signin_forwarded(&app, &user.email, "203.0.113.7").await,
        // A client that writes its own X-Forwarded-For gets the proxy's entry appended after it, which is read.
        signin_forwarded(&app, &user.email, "198.51.100.1, 203.0.113.7").await,
        signin_forwarded(&app, &user.email, "198.51.100.2, 203.0.113.7").await,
    ];
    let second_client = signin_forwarded(&app, &user.email, "203.0.113.8, 10.1.2.3").await;

    assert_eq!(
        first_client,
        [StatusCode::OK, StatusCode::OK, StatusCode::TOO_MANY_REQUESTS]
    );
    assert_eq!(second_client, StatusCode::OK, "another client behind the same proxy");
    let ips: Vec<String> = outbox(&app, "fechatter.analytics.user.login")
        .await
        .into_iter()
        .map(|(_, event)| event.context.expect("context").ip)
        .collect();
    assert_eq!(ips, ["203.0.113.7", "203.0.113.7", "203.0.113.8"]);
}

#[tokio::test]
async fn without_trusted_proxies_a_forwarded_for_header_changes_nothing() {
    let app = TestApp::start(&[("FECHATTER__SERVER__AUTH_RATE_LIMIT_PER_MINUTE", "2")]).await;
    let user = app.signup("Direct", "Directly").await;

    let statuses = [
        signin_forwarded(&app, &user.email, "203.0.113.7").await,
        signin_forwarded(&app, &user.email, "203.0.113.8").await,
    ];

    // The sign-up took one of the peer's two attempts: the headers bought no fresh allowance.
    assert_eq!(statuses, [StatusCode::OK, StatusCode::TOO_MANY_REQUESTS]);
    let logins = outbox(&app, "fechatter.analytics.user.login").await;
    assert_eq!(logins.len(), 1);
    assert_eq!(logins[0].1.context.as_ref().expect("context").ip, "127.0.0.1");
}

#[tokio::test]
async fn a_trusted_proxy_that_is_no_address_is_refused_naming_the_key() {
    let vars = [(
        "FECHATTER__SERVER__TRUSTED_PROXIES".to_owned(),
        "10.0.0.0/8,proxy.local".to_owned(),
    )];
    let err = fechatter_server::config::Settings::load(None, vars).expect_err("a host name is no proxy address");
    let message = err.to_string();
    assert!(message.contains("server.trusted_proxies"), "{message}");
    assert!(message.contains("\"proxy.local\""), "{message}");
    // An item the environment's YAML reads as a number gets the same answer, not serde's "invalid type".
    let vars = [("FECHATTER__SERVER__TRUSTED_PROXIES".to_owned(), "10".to_owned())];
    let message = fechatter_server::config::Settings::load(None, vars)
        .expect_err("a number is no proxy address")
        .to_string();
    assert!(message.contains("server.trusted_proxies"), "{message}");
    assert!(
        message.contains("\"10\" is neither an IP address nor a network"),
        "{message}"
    );
}

#[tokio::test]
async fn the_seeded_development_user_signs_in_and_is_recorded_as_the_login_user() {
    let app = TestApp::start(&[]).await;
    let seeded = fechatter_server::seed::run(&app.pool).await.expect("seed");

    let (status, body) = signin(&app, "super@none.org", "password123").await;

    assert_eq!(status, StatusCode::OK, "{body}");
    let events = outbox(&app, "fechatter.analytics.user.login").await;
    assert_eq!(events.len(), 1);
    let (_, event) = &events[0];
    assert_eq!(event.user_id(), seeded.to_string());
    let Some(EventType::UserLogin(login)) = &event.event_type else {
        panic!("not a user_login event: {event:?}");
    };
    assert_eq!(login.email, "super@none.org");
}

#[tokio::test]
async fn with_messaging_disabled_the_auth_routes_work_and_write_no_outbox_rows() {
    let app = TestApp::start(&[("FECHATTER__FEATURES__MESSAGING__ENABLED", "false")]).await;

    let user = app.signup("Quiet", "Silence").await;
    let (status, _) = signin(&app, &user.email, PASSWORD).await;
    let (logout, _) = app
        .post("/api/logout", &user, json!({ "refresh_token": user.refresh_token }))
        .await;

    assert_eq!((status, logout), (StatusCode::OK, StatusCode::NO_CONTENT));
    assert_eq!(app.outbox_depth().await, 0);
}

#[tokio::test]
async fn the_openapi_document_describes_the_auth_routes_and_protects_logout() {
    let app = TestApp::start(&[]).await;

    let (status, doc) = app.send(app.http.get(app.url("/api-docs/openapi.json"))).await;

    assert_eq!(status, StatusCode::OK);
    for path in ["/api/signup", "/api/signin", "/api/refresh", "/api/logout"] {
        assert!(doc["paths"][path]["post"].is_object(), "{path} is documented");
    }
    assert!(
        doc["paths"]["/api/signin"]["post"]["security"].is_null(),
        "signing in needs no token"
    );
    assert_eq!(
        doc["paths"]["/api/logout"]["post"]["security"],
        json!([{ "bearer": [] }])
    );
    assert!(doc["components"]["schemas"]["SignupRequest"].is_object());
}

#[tokio::test]
async fn wholly_expired_refresh_families_and_expired_invitations_are_deleted_and_nothing_live() {
    let app = TestApp::start(&[]).await;
    let user = app.signup("Ada Lovelace", "Engines").await;
    let family = |id: Uuid, expires_days_ago: &[i64]| {
        let pool = app.pool.clone();
        let days = expires_days_ago.to_vec();
        async move {
            for (i, days) in days.into_iter().enumerate() {
                sqlx::query(
                    "INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, expires_at, used_at) \
                     VALUES ($1, $2, $3, $4, now() - make_interval(days => $5), now())",
                )
                .bind(Uuid::new_v4())
                .bind(id)
                .bind(user.id)
                .bind(format!("{id}-{i}"))
                .bind(i32::try_from(days).expect("days"))
                .execute(&pool)
                .await
                .expect("token");
            }
        }
    };
    // Dead: every token expired days ago. Live: old used tokens, and one that is still valid (-30: expires in 30
    // days), which keeps them all for reuse detection. Recent: expired just now, within the day of grace.
    let (dead, live, recent) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    family(dead, &[10, 5, 3]).await;
    family(live, &[10, 5, -30]).await;
    family(recent, &[0]).await;
    for (hash, days) in [("expired-invite", 3), ("live-invite", -7)] {
        sqlx::query(
            "INSERT INTO workspace_invites (token_hash, workspace_id, created_by, expires_at) \
             VALUES ($1, $2, $3, now() - make_interval(days => $4))",
        )
        .bind(hash)
        .bind(user.workspace_id)
        .bind(user.id)
        .bind(days)
        .execute(&app.pool)
        .await
        .expect("invite");
    }

    let pruned = fechatter_server::auth::prune::prune(&app.pool).await.expect("prune");

    assert_eq!(
        pruned,
        fechatter_server::auth::prune::Pruned {
            refresh_tokens: 3,
            invites: 1
        }
    );
    let families: Vec<Uuid> =
        sqlx::query_scalar("SELECT DISTINCT family_id FROM refresh_tokens WHERE family_id = ANY($1)")
            .bind(vec![dead, live, recent])
            .fetch_all(&app.pool)
            .await
            .expect("families");
    assert_eq!(families.len(), 2, "{families:?}");
    assert!(families.contains(&live) && families.contains(&recent), "{families:?}");
    let invites: Vec<String> = sqlx::query_scalar("SELECT token_hash FROM workspace_invites")
        .fetch_all(&app.pool)
        .await
        .expect("invites");
    assert_eq!(invites, vec!["live-invite".to_owned()]);
    // The sign-up's own session is untouched and refreshes as before.
    let (status, _) = post(&app, "/api/refresh", json!({ "refresh_token": user.refresh_token })).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        fechatter_server::auth::prune::prune(&app.pool).await.expect("prune"),
        Default::default(),
        "a second run finds nothing"
    );
}
