//! The operator tooling, run as users run it: `scripts/test-analytics-connection.sh` and
//! `scripts/fix-analytics-connection.sh` end to end against both service binaries on private NATS, PostgreSQL
//! and ClickHouse servers (the fix script must repair a deleted stream and a stopped NATS); `docker-compose.yml`
//! checked by the real Docker Compose v2; and the send-statement benchmark script.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;
use test_support::{ChildProcess, ClickHouseServer, NatsServer, PostgresServer, cargo_bin, free_port, wait_until};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate is inside the workspace")
        .to_path_buf()
}

/// The debug binary `name`, built if this test runs without the rest of the workspace.
fn binary(name: &str) -> PathBuf {
    let path = cargo_bin(name);
    if !path.is_file() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", name, "--bin", name])
            .current_dir(workspace_root())
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building {name}");
    }
    path
}

/// Both services as processes, on private servers.
struct Stack {
    nats: NatsServer,
    clickhouse: ClickHouseServer,
    _postgres: PostgresServer,
    analytics: Option<ChildProcess>,
    analytics_env: Vec<(&'static str, String)>,
    _chat: ChildProcess,
    analytics_port: u16,
    chat_port: u16,
    keys: TempDir,
    state: TempDir,
}

impl Stack {
    async fn start() -> Stack {
        let nats = NatsServer::start().await.expect("nats");
        let clickhouse = ClickHouseServer::start().await.expect("clickhouse");
        let postgres = PostgresServer::start().await.expect("postgres");
        let database_url = postgres.create_database("fechatter").await.expect("database");
        let (analytics_port, chat_port) = (free_port(), free_port());

        let analytics_env = vec![
            ("ANALYTICS__SERVER__PORT", analytics_port.to_string()),
            ("ANALYTICS__INTEGRATIONS__MESSAGING__NATS_URL", nats.url()),
            ("ANALYTICS__CLICKHOUSE__URL", clickhouse.http_url()),
            ("ANALYTICS__FLUSH_INTERVAL_SECONDS", "1".into()),
            ("RUST_LOG", "info".into()),
        ];
        let analytics = start_analytics(&analytics_env, analytics_port).await;

        let keys = TempDir::new().expect("tempdir");
        let chat_binary = binary("fechatter_server");
        let out = std::process::Command::new(&chat_binary)
            .arg("gen-keys")
            .arg(keys.path())
            .output()
            .expect("gen-keys");
        assert!(out.status.success(), "{out:?}");
        let private = std::fs::metadata(keys.path().join("private.pem")).expect("private key");
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&private.permissions()) & 0o777,
            0o600,
            "the private key is its owner's alone"
        );
        let state = TempDir::new().expect("tempdir");
        let chat_env = [
            ("FECHATTER__SERVER__PORT", chat_port.to_string()),
            ("FECHATTER__DATABASE__URL", database_url),
            ("FECHATTER__MESSAGING__NATS_URL", nats.url()),
            ("FECHATTER__AUTH__PRIVATE_KEY_PATH", path_of(&keys, "private.pem")),
            ("FECHATTER__AUTH__PUBLIC_KEY_PATH", path_of(&keys, "public.pem")),
            ("FECHATTER__FILES__DIR", path_of(&state, "files")),
            ("RUST_LOG", "info".into()),
        ];
        let seeded = std::process::Command::new(&chat_binary)
            .arg("seed")
            .envs(chat_env.clone())
            .output()
            .expect("seed runs");
        assert!(seeded.status.success(), "seed: {seeded:?}");
        let chat = ChildProcess::spawn(&chat_binary, Vec::<String>::new(), chat_env).expect("spawn");
        wait_for_http(&format!("http://127.0.0.1:{chat_port}/ready")).await;
        Stack {
            nats,
            clickhouse,
            _postgres: postgres,
            analytics: Some(analytics),
            analytics_env,
            _chat: chat,
            analytics_port,
            chat_port,
            keys,
            state,
        }
    }

    /// Runs `scripts/<name>` with this stack's addresses; returns (succeeded, stdout + stderr).
    async fn script(&self, name: &str) -> (bool, String) {
        self.script_with(name, &[]).await
    }

    /// [`Stack::script`] with extra environment variables.
    async fn script_with(&self, name: &str, extra: &[(&str, &str)]) -> (bool, String) {
        let bin_dir = cargo_bin("analytics_server")
            .parent()
            .expect("binary directory")
            .to_path_buf();
        let out = tokio::process::Command::new("bash")
            .arg(workspace_root().join("scripts").join(name))
            .current_dir(workspace_root())
            .env("CHAT_URL", format!("http://127.0.0.1:{}", self.chat_port))
            .env("ANALYTICS_URL", format!("http://127.0.0.1:{}", self.analytics_port))
            .env("NATS_URL", self.nats.url())
            .env("NATS_MONITOR_URL", self.nats.monitor_url())
            .env("NATS_MONITOR_PORT", self.nats.monitor_port().to_string())
            .env("CLICKHOUSE_URL", self.clickhouse.http_url())
            .env("WAIT_SECONDS", "60")
            .env("PROBE_TIMEOUT_SECONDS", "60")
            .env("FECHATTER_STATE_DIR", self.state.path())
            .env("FECHATTER_BIN_DIR", bin_dir)
            .env("ANALYTICS__FLUSH_INTERVAL_SECONDS", "1")
            .env("FECHATTER__AUTH__PRIVATE_KEY_PATH", path_of(&self.keys, "private.pem"))
            .env("FECHATTER__AUTH__PUBLIC_KEY_PATH", path_of(&self.keys, "public.pem"))
            .envs(extra.iter().copied())
            .output()
            .await
            .expect("bash runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("---- scripts/{name} (exit {:?})\n{text}", out.status.code());
        (out.status.success(), text)
    }

    async fn start_analytics(&mut self) {
        self.analytics = Some(start_analytics(&self.analytics_env, self.analytics_port).await);
    }

    async fn delete_stream(&self) {
        let client = async_nats::connect(self.nats.url()).await.expect("connect");
        async_nats::jetstream::new(client)
            .delete_stream("ANALYTICS")
            .await
            .expect("stream deleted");
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // A NATS server the fix script started belongs to this test: stop it.
        if let Ok(pid) = std::fs::read_to_string(self.state.path().join("pids/nats.pid")) {
            let _ = std::process::Command::new("kill").arg(pid.trim()).status();
        }
    }
}

async fn start_analytics(env: &[(&'static str, String)], port: u16) -> ChildProcess {
    let process = ChildProcess::spawn(binary("analytics_server"), Vec::<String>::new(), env.to_vec()).expect("spawn");
    wait_for_http(&format!("http://127.0.0.1:{port}/ready")).await;
    process
}

fn path_of(dir: &TempDir, name: &str) -> String {
    dir.path().join(name).display().to_string()
}

async fn wait_for_http(url: &str) {
    let client = reqwest::Client::new();
    wait_until(url, Duration::from_secs(60), || async {
        client
            .get(url)
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .map(|_| ())
    })
    .await
    .expect("answers 200");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scripts_test_and_repair_the_analytics_connection() {
    let mut stack = Stack::start().await;

    // A healthy stack: the seed's sign-in lands in ClickHouse.
    let (ok, out) = stack.script("test-analytics-connection.sh").await;
    assert!(ok, "{out}");
    assert!(out.contains("stored in ClickHouse"), "{out}");

    // The stream deleted while the ingester is down: the test script fails, the fix script re-creates the
    // stream and says the ingester is missing; once it runs again, the fix script passes and so does the test
    // (the sign-in made while the stream was missing waited in the outbox).
    stack.analytics = None;
    stack.delete_stream().await;
    let (ok, out) = stack.script("test-analytics-connection.sh").await;
    assert!(!ok, "a stopped ingester must fail the test script:\n{out}");
    assert!(out.contains("❌ analytics_server does not answer"), "{out}");
    let (ok, out) = stack
        .script_with("fix-analytics-connection.sh", &[("PROBE_TIMEOUT_SECONDS", "3")])
        .await;
    assert!(!ok, "the probe cannot land without the ingester:\n{out}");
    assert!(
        out.contains("✅ stream ANALYTICS (fechatter.analytics.>, file storage, 30 days): created"),
        "{out}"
    );
    assert!(
        out.contains("✅ all 16 subjects fechatter_server publishes are covered"),
        "{out}"
    );
    assert!(
        out.contains("❌ the test event did not reach ClickHouse: start analytics_server"),
        "{out}"
    );
    stack.start_analytics().await;
    let (ok, out) = stack.script("fix-analytics-connection.sh").await;
    assert!(ok, "{out}");
    assert!(out.contains("already covers the configuration"), "{out}");
    assert!(out.contains("✅ test event stored in ClickHouse"), "{out}");
    let (ok, out) = stack.script("test-analytics-connection.sh").await;
    assert!(ok, "{out}");

    // The stream deleted under a running ingester: it re-creates stream and consumer itself and keeps going.
    stack.delete_stream().await;
    wait_for_http(&format!("http://127.0.0.1:{}/ready", stack.analytics_port)).await;
    let (ok, out) = stack.script("test-analytics-connection.sh").await;
    assert!(ok, "{out}");

    // NATS stopped: the fix script starts one with JetStream, sets the stream up, and both services recover.
    stack.nats.stop().await;
    let (ok, out) = stack.script("fix-analytics-connection.sh").await;
    assert!(ok, "{out}");
    assert!(out.contains("NATS was down: started nats-server"), "{out}");
    assert!(out.contains("✅ test event stored in ClickHouse"), "{out}");
    let (ok, out) = stack.script("test-analytics-connection.sh").await;
    assert!(ok, "{out}");
}

#[tokio::test]
async fn the_fix_script_names_a_configuration_mismatch() {
    // Only the configuration step matters here; the stack is not needed for it to fail, but NATS must answer.
    let nats = NatsServer::start().await.expect("nats");
    let state = TempDir::new().expect("tempdir");
    let bin_dir = cargo_bin("analytics_server").parent().expect("dir").to_path_buf();
    binary("analytics_server");
    binary("fechatter_server");
    let out = tokio::process::Command::new("bash")
        .arg(workspace_root().join("scripts/fix-analytics-connection.sh"))
        .current_dir(workspace_root())
        .env("NATS_URL", nats.url())
        .env("CLICKHOUSE_URL", "http://127.0.0.1:1")
        .env("PROBE_TIMEOUT_SECONDS", "1")
        .env("FECHATTER_STATE_DIR", state.path())
        .env("FECHATTER_BIN_DIR", bin_dir)
        .env("FECHATTER__FEATURES__MESSAGING__ENABLED", "false")
        .output()
        .await
        .expect("bash runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("❌ fechatter_server publishes nothing"), "{text}");
    assert!(text.contains("FECHATTER__FEATURES__MESSAGING__ENABLED=true"), "{text}");
}

/// `docker compose …`: the Compose v2 binary that scripts/install-deps.sh links as the Docker CLI plugin, run
/// through the `docker` CLI when there is one, else directly (the plugin binary also works standalone).
fn compose(args: &[&str]) -> std::process::Output {
    let file = workspace_root().join("docker-compose.yml");
    let has_docker_cli = std::process::Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    let mut command = if has_docker_cli {
        let mut c = std::process::Command::new("docker");
        c.arg("compose");
        c
    } else {
        let home = std::env::var_os("HOME").expect("HOME is set");
        std::process::Command::new(Path::new(&home).join(".docker/cli-plugins/docker-compose"))
    };
    command
        .arg("-f")
        .arg(file)
        .args(args)
        .output()
        .expect("docker compose runs (scripts/install-deps.sh installs it)")
}

#[test]
fn the_compose_file_is_valid_and_wires_health_checks() {
    let out = compose(&["config", "-q"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = compose(&["config", "--format", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config: Value = serde_json::from_slice(&out.stdout).expect("json");
    let services = &config["services"];
    for name in [
        "nats",
        "postgres",
        "clickhouse",
        "analytics_server",
        "fechatter_server",
        "nats-box",
    ] {
        assert!(services[name].is_object(), "service {name} missing");
    }
    for name in ["nats", "postgres", "clickhouse", "analytics_server", "fechatter_server"] {
        assert!(
            services[name]["healthcheck"]["test"].is_array(),
            "{name} has no health check"
        );
    }
    let published: Vec<u64> = services
        .as_object()
        .expect("map")
        .values()
        .flat_map(|s| s["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["published"].as_str().and_then(|p| p.parse().ok()))
        .collect();
    for port in [6688, 6690, 4222, 8222, 8123] {
        assert!(published.contains(&port), "port {port} not published: {published:?}");
    }
    let chat_deps = &services["fechatter_server"]["depends_on"];
    for dependency in ["postgres", "nats", "analytics_server"] {
        assert_eq!(chat_deps[dependency]["condition"], "service_healthy", "{chat_deps}");
    }
    let ingest_deps = &services["analytics_server"]["depends_on"];
    for dependency in ["nats", "clickhouse"] {
        assert_eq!(ingest_deps[dependency]["condition"], "service_healthy", "{ingest_deps}");
    }
    assert_eq!(services["analytics_server"]["build"]["target"], "analytics_server");
    assert_eq!(services["fechatter_server"]["build"]["target"], "fechatter_server");
    assert!(
        config["volumes"].as_object().is_some_and(|v| v.len() >= 3),
        "named volumes: {}",
        config["volumes"]
    );
    // Every environment variable the compose file gives a service is a key its configuration accepts.
    for (service, prefix) in [("analytics_server", "ANALYTICS__"), ("fechatter_server", "FECHATTER__")] {
        let env = services[service]["environment"].as_object().expect("environment");
        let vars: Vec<(String, String)> = env
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        assert!(!vars.is_empty(), "{service} gets no configuration");
        match service {
            "analytics_server" => {
                analytics_server::config::Settings::load(None, vars).expect("analytics_server accepts its compose env");
            }
            _ => {
                let mut vars = vars;
                vars.push(("FECHATTER__AUTH__PRIVATE_KEY_PATH".into(), "/k/private.pem".into()));
                vars.push(("FECHATTER__AUTH__PUBLIC_KEY_PATH".into(), "/k/public.pem".into()));
                fechatter_server::config::Settings::load(None, vars).expect("fechatter_server accepts its compose env");
            }
        }
    }
}

/// `scripts/run-local.sh stop` for a state directory, whatever happens to the test.
struct RunLocal {
    env: Vec<(String, String)>,
}

impl RunLocal {
    fn command(&self, arg: &str) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("bash");
        command
            .arg(workspace_root().join("scripts/run-local.sh"))
            .arg(arg)
            .current_dir(workspace_root())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command
    }
}

impl Drop for RunLocal {
    fn drop(&mut self) {
        let mut command = std::process::Command::new("bash");
        command
            .arg(workspace_root().join("scripts/run-local.sh"))
            .arg("stop")
            .current_dir(workspace_root())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let _ = command.output();
    }
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn run_local_starts_the_system_reusing_a_healthy_nats_and_stops_only_what_it_started() {
    // A NATS already running and healthy: run-local must reuse it, and leave it running on stop.
    let mut nats = NatsServer::start().await.expect("nats");
    let state = TempDir::new().expect("tempdir");
    // PostgreSQL runs as the postgres user, which must be able to reach its data directory inside this one.
    std::process::Command::new("chmod")
        .arg("755")
        .arg(state.path())
        .status()
        .expect("chmod");
    let bin_dir = cargo_bin("analytics_server").parent().expect("dir").to_path_buf();
    binary("analytics_server");
    binary("fechatter_server");
    let (pg, ch_http, ch_tcp, analytics, chat) = (free_port(), free_port(), free_port(), free_port(), free_port());
    let env: Vec<(String, String)> = [
        ("NATS_PORT", nats.port().to_string()),
        ("NATS_MONITOR_PORT", nats.monitor_port().to_string()),
        ("PG_PORT", pg.to_string()),
        ("CLICKHOUSE_HTTP_PORT", ch_http.to_string()),
        ("CLICKHOUSE_TCP_PORT", ch_tcp.to_string()),
        ("ANALYTICS_PORT", analytics.to_string()),
        ("CHAT_PORT", chat.to_string()),
        ("FECHATTER_STATE_DIR", state.path().display().to_string()),
        ("FECHATTER_BIN_DIR", bin_dir.display().to_string()),
        ("ANALYTICS__FLUSH_INTERVAL_SECONDS", "1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let run_local = RunLocal { env };

    let out = run_local.command("--detach").output().await.expect("run-local runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("---- scripts/run-local.sh --detach\n{text}");
    assert!(out.status.success(), "{text}");
    for line in [
        format!("NATS with JetStream already running on {} (reused)", nats.port()),
        format!("ClickHouse started on {ch_http}"),
        format!("PostgreSQL started on {pg}"),
        format!("analytics_server started on {analytics}"),
        format!("fechatter_server started on {chat}"),
        "super@none.org".to_owned(),
    ] {
        assert!(text.contains(&line), "missing {line:?} in:\n{text}");
    }

    // The system it started works end to end: the seed's sign-in lands in ClickHouse.
    let out = tokio::process::Command::new("bash")
        .arg(workspace_root().join("scripts/test-analytics-connection.sh"))
        .env("CHAT_URL", format!("http://127.0.0.1:{chat}"))
        .env("ANALYTICS_URL", format!("http://127.0.0.1:{analytics}"))
        .env("NATS_MONITOR_URL", nats.monitor_url())
        .env("CLICKHOUSE_URL", format!("http://127.0.0.1:{ch_http}"))
        .output()
        .await
        .expect("bash runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");

    let out = run_local.command("stop").output().await.expect("stop runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("---- scripts/run-local.sh stop\n{text}");
    assert!(out.status.success(), "{text}");
    for port in [pg, ch_http, analytics, chat] {
        assert!(!port_open(port), "port {port} still open after stop:\n{text}");
    }
    assert!(
        nats.is_running() && port_open(nats.port()),
        "the reused NATS must keep running"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn run_local_refuses_to_reuse_a_nats_without_jetstream() {
    // analytics_server could not create its stream there; the script must say so before starting anything.
    let nats = NatsServer::start_without_jetstream().await.expect("nats");
    let state = TempDir::new().expect("tempdir");
    let (pg, ch_http) = (free_port(), free_port());
    let run_local = RunLocal {
        env: vec![
            ("NATS_PORT".to_owned(), nats.port().to_string()),
            ("NATS_MONITOR_PORT".to_owned(), nats.monitor_port().to_string()),
            ("PG_PORT".to_owned(), pg.to_string()),
            ("CLICKHOUSE_HTTP_PORT".to_owned(), ch_http.to_string()),
            ("FECHATTER_STATE_DIR".to_owned(), state.path().display().to_string()),
        ],
    };
    let out = run_local.command("--detach").output().await.expect("run-local runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&format!("the NATS server on {} runs without JetStream", nats.port())),
        "{text}"
    );
    for port in [pg, ch_http] {
        assert!(!port_open(port), "port {port} was started anyway:\n{text}");
    }
}

/// The send statement's pgbench breakdown (`benches/send_statement/run.sh`, quoted in README.md) still runs
/// against the current schema: every variant is measured and compared with the raw insert.
#[test]
fn the_send_statement_benchmark_runs_on_the_current_schema() {
    let script = workspace_root().join("fechatter_server/benches/send_statement/run.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .args(["1", "1"])
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for variant in [
        "raw",
        "message_insert",
        "send_off_without_live",
        "send_off",
        "send_on",
        "send_on_outbox_row",
    ] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {variant}.sql ")))
            .unwrap_or_else(|| panic!("no row for {variant}: {stdout}"));
        let rate: f64 = row
            .split('|')
            .nth(2)
            .and_then(|c| c.trim().parse().ok())
            .expect("a rate");
        assert!(rate > 0.0, "{row}");
    }
}
