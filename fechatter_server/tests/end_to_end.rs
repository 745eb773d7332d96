//! The whole pipeline on real servers: fechatter_server → outbox → NATS JetStream → analytics_server →
//! ClickHouse. The seed document's sign-in lands as a `user_login` row; events written while NATS was down land
//! exactly once.

mod common;

use common::TestApp;
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::json;
use std::time::Duration;
use test_support::{ClickHouseServer, wait_until};
use tokio_util::sync::CancellationToken;

/// analytics_server running in this process against `app`'s NATS and a private ClickHouse.
struct Ingester {
    clickhouse: ClickHouseServer,
    database: String,
    token: CancellationToken,
}

impl Ingester {
    async fn start(app: &TestApp) -> Ingester {
        let clickhouse = ClickHouseServer::start().await.expect("clickhouse");
        let database = format!("e2e_{}", uuid::Uuid::new_v4().simple());
        let vars: Vec<(String, String)> = [
            ("ANALYTICS__SERVER__HOST", "127.0.0.1".to_owned()),
            ("ANALYTICS__SERVER__PORT", "0".to_owned()),
            ("ANALYTICS__INTEGRATIONS__MESSAGING__NATS_URL", app.nats.url()),
            ("ANALYTICS__CLICKHOUSE__URL", clickhouse.http_url()),
            ("ANALYTICS__CLICKHOUSE__DATABASE", database.clone()),
            ("ANALYTICS__FLUSH_INTERVAL_SECONDS", "1".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let settings = analytics_server::config::Settings::load(None, vars).expect("settings");
        let ingester = analytics_server::startup::Application::build(settings)
            .await
            .expect("ingester starts");
        let token = CancellationToken::new();
        tokio::spawn(ingester.run_until_stopped(token.clone()));
        Ingester {
            clickhouse,
            database,
            token,
        }
    }

    async fn scalar(&self, sql: &str) -> String {
        self.clickhouse
            .query(&sql.replace("{db}", &self.database))
            .await
            .unwrap_or_default()
            .trim()
            .to_owned()
    }
}

impl Drop for Ingester {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

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
