//! The fechatter_server test stack: private PostgreSQL and NATS (JetStream) servers, the service in process on a
//! free port with fresh signing keys, and typed request helpers; and [`Ingester`], analytics_server in process
//! against that NATS and a private ClickHouse, for tests that follow events all the way down.

#![allow(dead_code)]

use fechatter_server::config::Settings;
use fechatter_server::startup::Application;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;
use test_support::{ClickHouseServer, NatsServer, PostgresServer};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Real servers and one running service.
pub struct TestApp {
    pub postgres: PostgresServer,
    pub nats: NatsServer,
    pub database_url: String,
    pub keys_dir: tempfile::TempDir,
    pub files_dir: tempfile::TempDir,
    pub port: u16,
    pub pool: sqlx::PgPool,
    pub http: reqwest::Client,
    pub token: CancellationToken,
    pub handle: Option<JoinHandle<std::io::Result<()>>>,
    extra: Vec<(String, String)>,
}

/// A signed-up user.
#[derive(Debug, Clone)]
pub struct User {
    pub id: i64,
    pub workspace_id: i64,
    pub email: String,
    pub password: String,
    pub access_token: String,
    pub refresh_token: String,
}

/// The ANALYTICS stream the analytics_server would create; tests that read JetStream create it themselves.
pub async fn create_analytics_stream(nats_url: &str) -> async_nats::jetstream::stream::Stream {
    let client = async_nats::connect(nats_url).await.expect("connect");
    async_nats::jetstream::new(client)
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "ANALYTICS".into(),
            subjects: vec!["fechatter.analytics.>".into()],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .expect("stream")
}

/// A Prometheus sample of `metrics` (0 when absent).
pub fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

impl TestApp {
    /// Starts PostgreSQL, NATS and the service with `extra` environment overrides.
    pub async fn start(extra: &[(&str, &str)]) -> TestApp {
        if std::env::var_os("RUST_LOG").is_some() {
            fechatter_service::telemetry::init();
        }
        let (postgres, nats) = tokio::join!(PostgresServer::start(), NatsServer::start());
        let postgres = postgres.expect("postgres starts");
        let nats = nats.expect("nats starts");
        let database_url = postgres
            .create_database(&format!("fechatter_{}", Uuid::new_v4().simple()))
            .await
            .expect("database");
        let keys_dir = tempfile::tempdir().expect("tempdir");
        let (private, public) = fechatter_server::auth::tokens::generate_key_pair().expect("keys");
        std::fs::write(keys_dir.path().join("private.pem"), private).expect("write key");
        std::fs::write(keys_dir.path().join("public.pem"), public).expect("write key");
        let files_dir = tempfile::tempdir().expect("tempdir");
        let pool = sqlx::PgPool::connect(&database_url).await.expect("pool");
        let mut app = TestApp {
            postgres,
            nats,
            database_url,
            keys_dir,
            files_dir,
            port: 0,
            pool,
            http: reqwest::Client::new(),
            token: CancellationToken::new(),
            handle: None,
            extra: extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        };
        app.launch().await;
        app
    }

    /// The environment the service runs with.
    pub fn env(&self) -> Vec<(String, String)> {
        let keys = self.keys_dir.path();
        let mut vars = vec![
            ("FECHATTER__SERVER__HOST".to_owned(), "127.0.0.1".to_owned()),
            ("FECHATTER__SERVER__PORT".to_owned(), "0".to_owned()),
            ("FECHATTER__DATABASE__URL".to_owned(), self.database_url.clone()),
            ("FECHATTER__MESSAGING__NATS_URL".to_owned(), self.nats.url()),
            (
                "FECHATTER__AUTH__PRIVATE_KEY_PATH".to_owned(),
                keys.join("private.pem").display().to_string(),
            ),
            (
                "FECHATTER__AUTH__PUBLIC_KEY_PATH".to_owned(),
                keys.join("public.pem").display().to_string(),
            ),
            (
                "FECHATTER__FILES__DIR".to_owned(),
                self.files_dir.path().display().to_string(),
            ),
            ("FECHATTER__ANALYTICS__FLUSH_INTERVAL_MS".to_owned(), "200".to_owned()),
            (
                "FECHATTER__SERVER__AUTH_RATE_LIMIT_PER_MINUTE".to_owned(),
                "1000".to_owned(),
            ),
        ];
        for (k, v) in &self.extra {
            vars.retain(|(name, _)| name != k);
            vars.push((k.clone(), v.clone()));
        }
        vars
    }

    async fn launch(&mut self) {
        let settings = Settings::load(None, self.env()).expect("valid settings");
        let app = Application::build(settings).await.expect("service starts");
        self.port = app.port();
        self.token = CancellationToken::new();
        self.handle = Some(tokio::spawn(app.run_until_stopped(self.token.clone())));
    }

    /// Stops the service (graceful) and starts it again on a new port, same database.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.launch().await;
    }

    pub async fn stop(&mut self) {
        self.token.cancel();
        if let Some(handle) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), handle).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// A request with the user's access token.
    pub fn request(&self, method: Method, path: &str, user: &User) -> RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&user.access_token)
    }

    /// Sends and returns status and JSON body (`Value::Null` for an empty body).
    pub async fn send(&self, request: RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("request");
        let status = response.status();
        let bytes = response.bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, body)
    }

    /// `method path` as `user`, with `body` as JSON when given.
    pub async fn call(&self, user: &User, method: Method, path: &str, body: Option<&Value>) -> (StatusCode, Value) {
        let mut request = self.request(method, path, user);
        if let Some(body) = body {
            request = request.json(body);
        }
        self.send(request).await
    }

    pub async fn get(&self, path: &str, user: &User) -> (StatusCode, Value) {
        self.send(self.request(Method::GET, path, user)).await
    }

    pub async fn post(&self, path: &str, user: &User, body: Value) -> (StatusCode, Value) {
        self.send(self.request(Method::POST, path, user).json(&body)).await
    }

    pub async fn patch(&self, path: &str, user: &User, body: Value) -> (StatusCode, Value) {
        self.send(self.request(Method::PATCH, path, user).json(&body)).await
    }

    pub async fn delete(&self, path: &str, user: &User) -> (StatusCode, Value) {
        self.send(self.request(Method::DELETE, path, user)).await
    }

    /// Creates a chat of `chat_type` owned by `owner` with `members` (user ids); returns its id.
    pub async fn create_chat(&self, owner: &User, name: &str, chat_type: &str, members: &[i64]) -> i64 {
        let body = json!({ "name": name, "chat_type": chat_type, "members": members });
        let (status, chat) = self.post("/api/chats", owner, body).await;
        assert_eq!(status, StatusCode::CREATED, "create chat: {chat}");
        chat["id"].as_i64().expect("chat id")
    }

    /// Sends `content` to `chat` as `sender`; returns the new message's id.
    pub async fn send_message(&self, sender: &User, chat: i64, content: &str) -> i64 {
        let path = format!("/api/chats/{chat}/messages");
        let (status, message) = self.post(&path, sender, json!({ "content": content })).await;
        assert_eq!(status, StatusCode::CREATED, "send: {message}");
        message["id"].as_i64().expect("message id")
    }

    /// Uploads `bytes` as `user`; returns the url to attach to messages.
    pub async fn upload_file(&self, user: &User, bytes: &[u8]) -> String {
        let part = reqwest::multipart::Part::bytes(bytes.to_vec()).file_name("notes.txt");
        let form = reqwest::multipart::Form::new().part("file", part);
        let (status, body) = self
            .send(self.request(Method::POST, "/api/upload", user).multipart(form))
            .await;
        assert_eq!(status, StatusCode::CREATED, "upload: {body}");
        body["files"][0]["url"].as_str().expect("url").to_owned()
    }

    /// Signs up a new user in a new workspace named `workspace`.
    pub async fn signup(&self, fullname: &str, workspace: &str) -> User {
        self.signup_into(fullname, "workspace", json!(workspace)).await
    }

    /// Signs up a new user into `inviter`'s workspace, with an invitation `inviter` creates.
    pub async fn join(&self, fullname: &str, inviter: &User) -> User {
        let (status, invite) = self.post("/api/workspace/invites", inviter, json!({})).await;
        assert_eq!(status, StatusCode::CREATED, "invite: {invite}");
        let user = self.signup_into(fullname, "invite", invite["invite"].clone()).await;
        assert_eq!(user.workspace_id, inviter.workspace_id);
        user
    }

    /// Signs up with `field` (`workspace` or `invite`) set to `value`, then reads the new user's ids.
    async fn signup_into(&self, fullname: &str, field: &str, value: Value) -> User {
        let email = format!(
            "{}-{}@example.com",
            fullname.to_lowercase().replace(' ', "."),
            Uuid::new_v4().simple()
        );
        let password = "correct horse battery".to_owned();
        let mut body = json!({ "fullname": fullname, "email": email, "password": password });
        body[field] = value;
        let (status, body) = self.send(self.http.post(self.url("/api/signup")).json(&body)).await;
        assert_eq!(status, StatusCode::CREATED, "signup: {body}");
        let mut user = User {
            id: 0,
            workspace_id: 0,
            email,
            password,
            access_token: body["access_token"].as_str().expect("access_token").to_owned(),
            refresh_token: body["refresh_token"].as_str().expect("refresh_token").to_owned(),
        };
        let (status, me) = self.get("/api/users/me", &user).await;
        assert_eq!(status, StatusCode::OK, "me: {me}");
        user.id = me["id"].as_i64().expect("id");
        user.workspace_id = me["workspace_id"].as_i64().expect("workspace_id");
        user
    }

    /// A user created straight in the database with a minted access token (no sign-up route involved).
    /// `workspace_id` None creates a new workspace.
    pub async fn direct_user(&self, fullname: &str, workspace_id: Option<i64>) -> User {
        let workspace_id = match workspace_id {
            Some(id) => id,
            None => sqlx::query_scalar("INSERT INTO workspaces (name) VALUES ($1) RETURNING id")
                .bind(format!("ws-{}", Uuid::new_v4().simple()))
                .fetch_one(&self.pool)
                .await
                .expect("workspace"),
        };
        let email = format!(
            "{}-{}@example.com",
            fullname.to_lowercase().replace(' ', "."),
            Uuid::new_v4().simple()
        );
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO users (workspace_id, fullname, email, password_hash) VALUES ($1, $2, $3, 'x') RETURNING id",
        )
        .bind(workspace_id)
        .bind(fullname)
        .bind(&email)
        .fetch_one(&self.pool)
        .await
        .expect("user");
        let keys = fechatter_server::auth::JwtKeys::from_pem(
            &std::fs::read(self.keys_dir.path().join("private.pem")).expect("key"),
            &std::fs::read(self.keys_dir.path().join("public.pem")).expect("key"),
            "fechatter",
            900,
        )
        .expect("keys");
        User {
            id,
            workspace_id,
            email,
            password: String::new(),
            access_token: keys.issue(id, workspace_id).expect("token"),
            refresh_token: String::new(),
        }
    }

    /// Runs `request` while the deletion of chat `chat` is under way, and commits the deletion once a statement
    /// whose text holds `statement` waits for a lock (the chat's row): the request races the deletion at its
    /// worst moment, past its access check and before its write.
    pub async fn racing_chat_deletion(
        &self,
        chat: i64,
        statement: &str,
        request: impl std::future::Future<Output = (StatusCode, Value)>,
    ) -> (StatusCode, Value) {
        let deleting = self.begin_chat_deletion(chat).await;
        let commit_once_the_request_waits = async {
            self.wait_for_lock_waits(&format!("%{statement}%"), 1).await;
            deleting.commit().await.expect("commit");
        };
        let (answer, ()) = tokio::join!(request, commit_once_the_request_waits);
        answer
    }

    /// A transaction that has deleted chat `chat` (its row locked, its messages and members deleted) and not
    /// ended: a deletion under way, for as long as the caller holds it.
    pub async fn begin_chat_deletion(&self, chat: i64) -> sqlx::Transaction<'static, sqlx::Postgres> {
        let mut deleting = self.pool.begin().await.expect("begin");
        sqlx::query("DELETE FROM chats WHERE id = $1")
            .bind(chat)
            .execute(&mut *deleting)
            .await
            .expect("delete");
        deleting
    }

    /// Waits until `n` statements of the test database whose text is `LIKE pattern` wait for a lock.
    pub async fn wait_for_lock_waits(&self, pattern: &str, n: i64) {
        test_support::wait_until("statements waiting for a lock", Duration::from_secs(10), || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event_type = 'Lock' AND query LIKE $1",
            )
            .bind(pattern)
            .fetch_one(&self.pool)
            .await
            .expect("activity");
            (waiting >= n).then_some(())
        })
        .await
        .expect("the requests reached their locks");
    }

    /// The events of `subject` waiting to be published, decoded, oldest first: the outbox's rows, then the
    /// events of the live-update journal that the relay has not passed (message sends carry theirs there).
    pub async fn outbox_events(&self, subject: &str) -> Vec<fechatter_protos::v1::AnalyticsEvent> {
        use prost::Message as _;
        let mut rows: Vec<Vec<u8>> =
            sqlx::query_scalar("SELECT payload FROM analytics_outbox WHERE subject = $1 ORDER BY id")
                .bind(subject)
                .fetch_all(&self.pool)
                .await
                .expect("outbox");
        let journal: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT event FROM live_events, analytics_journal_cursor c \
             WHERE event_subject = $1 AND NOT pg_visible_in_snapshot(xid, c.relayed) ORDER BY xid, id",
        )
        .bind(subject)
        .fetch_all(&self.pool)
        .await
        .expect("journal");
        rows.extend(journal);
        rows.iter()
            .map(|p| fechatter_protos::v1::AnalyticsEvent::decode(p.as_slice()).expect("decodes"))
            .collect()
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let response = self.http.get(self.url("/metrics")).send().await.expect("metrics");
        response.text().await.expect("metrics body")
    }

    /// Events waiting to be published (the outbox depth metric's figure).
    pub async fn outbox_depth(&self) -> i64 {
        fechatter_server::analytics::outbox::depth(&self.pool)
            .await
            .expect("depth")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// analytics_server running in this process against a NATS server and a private ClickHouse (database
/// `e2e_<uuid>`), flushing partial batches every second.
pub struct Ingester {
    pub clickhouse: ClickHouseServer,
    pub database: String,
    token: CancellationToken,
}

impl Ingester {
    /// An ingester on `app`'s NATS.
    pub async fn start(app: &TestApp) -> Ingester {
        Ingester::start_on(&app.nats.url()).await
    }

    /// An ingester on the NATS server at `nats_url`.
    pub async fn start_on(nats_url: &str) -> Ingester {
        let clickhouse = ClickHouseServer::start().await.expect("clickhouse");
        let database = format!("e2e_{}", Uuid::new_v4().simple());
        let vars: Vec<(String, String)> = [
            ("ANALYTICS__SERVER__HOST", "127.0.0.1".to_owned()),
            ("ANALYTICS__SERVER__PORT", "0".to_owned()),
            ("ANALYTICS__INTEGRATIONS__MESSAGING__NATS_URL", nats_url.to_owned()),
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

    /// The answer to `sql` (`{db}` stands for the ingester's database), trimmed; empty when the query fails.
    pub async fn scalar(&self, sql: &str) -> String {
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
