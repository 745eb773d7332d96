//! The whole pipeline on real servers: fechatter_server → outbox → NATS JetStream → analytics_server →
//! ClickHouse. The seed document's sign-in lands as a `user_login` row; events written while NATS was down land
//! exactly once.

mod common;

use common::{Ingester, TestApp};
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::json;
use std::time::Duration;
use test_support::wait_until;

#[tokio::test]
async fn the_seed_sign_in_lands_in_clickhouse_as_user_login_with_that_user() {
    let app = TestApp::start(&[]).await;
    let ingester = Ingester::start(&app).await;
    let user_id = fechatter_server::seed::run(&app.pool).await.expect("seed");

    // curl -X POST http://localhost:6688/api/signin -H "Content-Type: application/json" \
    //   -d '{"email": "super@none.org", "password": "password123"}'
    let (status, body) = app
        .send(
            app.http
                .post(app.url("/api/signin"))
                .json(&json!({"email": "super@none.org", "password": "password123"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let sql = "SELECT user_id FROM {db}.analytics_events FINAL WHERE event_type = 'user_login'";
    let landed = wait_until("user_login in ClickHouse", Duration::from_secs(30), || async {
        let got = ingester.scalar(sql).await;
        (!got.is_empty()).then_some(got)
    })
    .await
    .expect("the sign-in reaches ClickHouse");
    assert_eq!(landed, user_id.to_string());
    let payload = ingester
        .scalar("SELECT payload FROM {db}.analytics_events FINAL WHERE event_type = 'user_login'")
        .await;
    assert!(
        payload.contains("super@none.org") && payload.contains("password"),
        "{payload}"
    );
}

#[tokio::test]
async fn events_written_while_nats_was_down_land_in_clickhouse_exactly_once() {
    let mut app = TestApp::start(&[]).await;
    let ingester = Ingester::start(&app).await;
    let alice = app.direct_user("Alice", None).await;
    for n in 0..10 {
        assert_eq!(app.send(upload(&app, &alice, n)).await.0, StatusCode::CREATED);
    }
    app.nats.stop().await;
    for n in 10..40 {
        let status = app.send(upload(&app, &alice, n)).await.0;
        assert_eq!(status, StatusCode::CREATED, "the API serves while NATS is down");
    }
    app.nats.restart().await.expect("nats back");
    let count_sql = "SELECT count() FROM {db}.analytics_events FINAL WHERE event_type = 'file_uploaded'";
    wait_until("40 events in ClickHouse", Duration::from_secs(90), || async {
        (ingester.scalar(count_sql).await == "40").then_some(())
    })
    .await
    .expect("every event lands");
    assert_eq!(
        ingester
            .scalar("SELECT uniqExact(event_id) FROM {db}.analytics_events WHERE event_type = 'file_uploaded'")
            .await,
        "40"
    );
    assert_eq!(app.outbox_depth().await, 0);
}

fn upload(app: &TestApp, user: &common::User, n: usize) -> reqwest::RequestBuilder {
    let form = Form::new().part(
        "file",
        Part::bytes(format!("payload {n}").into_bytes()).file_name("f.txt"),
    );
    app.request(reqwest::Method::POST, "/api/upload", user).multipart(form)
}
