//! [`ClickHouseServer`]: a private clickhouse-server with its own config, users, data, tmp and log
//! directories in a temporary directory.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::process::ChildProcess;
use crate::util::{find_program, http_client, try_free_port, wait_ready};

/// How long a start may take before it is given up.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`ClickHouseServer::stop`] waits after SIGTERM before it uses SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How many times [`ClickHouseServer::start`] tries new ports when the chosen ones were taken.
const START_ATTEMPTS: usize = 3;

/// The users file: user `default`, no password, from anywhere, with the `default` profile and
/// quota. `allow_experimental_low_cardinality_type` is needed by ClickHouse 18.x for
/// `LowCardinality` columns; later versions accept it as an obsolete setting.
const USERS_XML: &str = r#"<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <allow_experimental_low_cardinality_type>1</allow_experimental_low_cardinality_type>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks>
                <ip>::/0</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
"#;

/// A clickhouse-server on 127.0.0.1 with its own HTTP and native (TCP) ports and all of its files
/// in a temporary directory; the system-wide `/etc/clickhouse-server` is never read. Killed when
/// dropped.
///
/// [`restart`](Self::restart) starts it again on the same ports with the same data directory,
/// so tables and rows survive.
pub struct ClickHouseServer {
    // Declared first so that it is dropped (killed) before `dir` is removed.
    process: Option<ChildProcess>,
    dir: TempDir,
    program: PathBuf,
    program_args: Vec<&'static str>,
    http_port: u16,
    tcp_port: u16,
    http: reqwest::Client,
}

impl ClickHouseServer {
    /// Starts a clickhouse-server and waits until `GET /ping` answers `Ok.`.
    pub async fn start() -> Result<Self> {
        let (program, program_args) = server_program()?;
        let dir = crate::util::temp_dir("test-support-clickhouse-")?;
        std::fs::write(dir.path().join("users.xml"), USERS_XML).context("writing clickhouse users.xml")?;
        let mut server = Self {
            process: None,
            dir,
            program,
            program_args,
            http_port: 0,
            tcp_port: 0,
            http: http_client()?,
        };
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            server.http_port = try_free_port()?;
            server.tcp_port = try_free_port()?;
            std::fs::write(server.config_path(), server.config_xml()).context("writing clickhouse config.xml")?;
            match server.launch().await {
                Ok(()) => return Ok(server),
                // Most likely another process took one of the ports; try others.
                Err(e) => last_error = Some(e),
            }
        }
        match last_error {
            Some(e) => Err(e.context(format!("clickhouse-server failed to start {START_ATTEMPTS} times"))),
            None => bail!("clickhouse-server was never started"),
        }
    }

    /// The server configuration: everything under the temporary directory, loopback only, no
    /// interserver port (it is only opened when `interserver_http_port` is set), UTC.
    fn config_xml(&self) -> String {
        let dir = self.dir.path().display();
        format!(
            r#"<?xml version="1.0"?>
<yandex>
    <logger>
        <level>information</level>
        <log>{dir}/log/clickhouse-server.log</log>
        <errorlog>{dir}/log/clickhouse-server.err.log</errorlog>
        <size>100M</size>
        <count>1</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>{http_port}</http_port>
    <tcp_port>{tcp_port}</tcp_port>
    <path>{dir}/data/</path>
    <tmp_path>{dir}/tmp/</tmp_path>
    <user_files_path>{dir}/user_files/</user_files_path>
    <format_schema_path>{dir}/format_schemas/</format_schema_path>
    <access_control_path>{dir}/access/</access_control_path>
    <user_scripts_path>{dir}/user_scripts/</user_scripts_path>
    <user_defined_path>{dir}/user_defined/</user_defined_path>
    <users_config>{dir}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <max_concurrent_queries>100</max_concurrent_queries>
    <mark_cache_size>268435456</mark_cache_size>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <mlock_executable>false</mlock_executable>
</yandex>
"#,
            http_port = self.http_port,
            tcp_port = self.tcp_port,
        )
    }

    /// Spawns clickhouse-server with the written config and waits until it is ready.
    async fn launch(&mut self) -> Result<()> {
        if let Some(process) = self.process.as_mut() {
            process.kill().await;
        }
        let mut command = Command::new(&self.program);
        command
            .args(&self.program_args)
            .arg(format!("--config-file={}", self.config_path().display()))
            .current_dir(self.dir.path());
        std::fs::create_dir_all(self.log_dir()).context("creating the clickhouse log directory")?;
        let log = self.log_dir().join("clickhouse-server.stdout.log");
        let http = self.http.clone();
        let ping = format!("{}/ping", self.http_url());
        let what = format!("clickhouse-server on HTTP port {}", self.http_port);
        let process = self.process.insert(ChildProcess::spawn_logged(command, &log)?);
        wait_ready(process, &what, START_TIMEOUT, || {
            let http = http.clone();
            let ping = ping.clone();
            async move {
                let Ok(response) = http.get(&ping).timeout(Duration::from_secs(2)).send().await else {
                    return false;
                };
                response.status().is_success() && response.text().await.is_ok_and(|body| body.trim() == "Ok.")
            }
        })
        .await
    }

    /// The HTTP interface URL, `http://127.0.0.1:HTTP_PORT`.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The HTTP interface port.
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// The native protocol port.
    pub fn tcp_port(&self) -> u16 {
        self.tcp_port
    }

    /// The data directory (`path` in the config); it outlives restarts.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The directory with the server's own log files (`clickhouse-server.log`,
    /// `clickhouse-server.err.log`) and its captured stdout/stderr.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// The generated `config.xml`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.xml")
    }

    /// True while the server process runs.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(ChildProcess::is_running)
    }

    /// Runs `sql` over the HTTP interface (POST body) and returns the response body; a non-200
    /// answer is an error carrying the body (ClickHouse's error message).
    pub async fn query(&self, sql: &str) -> Result<String> {
        let response = self
            .http
            .post(self.http_url())
            .body(sql.to_string())
            .send()
            .await
            .with_context(|| format!("sending query to ClickHouse at {}: {sql}", self.http_url()))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .with_context(|| format!("reading the ClickHouse answer to: {sql}"))?;
        if !status.is_success() {
            bail!("ClickHouse answered {status} to `{sql}`: {}", body.trim_end());
        }
        Ok(body)
    }

    /// Stops the server gracefully: SIGTERM, then SIGKILL if it has not exited after 5 s
    /// (ClickHouse 18.16 takes about 2 s to shut down).
    pub async fn stop(&mut self) {
        if let Some(process) = self.process.as_mut()
            && let Err(e) = process.terminate(STOP_GRACE).await
        {
            eprintln!("test_support: stopping clickhouse-server: {e:#}");
        }
    }

    /// Kills the server with SIGKILL, as a crash would.
    pub async fn kill(&mut self) {
        if let Some(process) = self.process.as_mut() {
            process.kill().await;
        }
    }

    /// Starts the server again on the same ports with the same data directory, stopping it
    /// gracefully first if it still runs. Waits until it is ready.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await;
        self.launch()
            .await
            .with_context(|| format!("restarting clickhouse-server on HTTP port {}", self.http_port))
    }
}

impl std::fmt::Debug for ClickHouseServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseServer")
            .field("http_url", &self.http_url())
            .field("tcp_port", &self.tcp_port)
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// The server program: `clickhouse-server` (Debian's package), else the single `clickhouse`
/// binary with the `server` subcommand (ClickHouse's own packages).
fn server_program() -> Result<(PathBuf, Vec<&'static str>)> {
    if let Some(path) = find_program("clickhouse-server") {
        return Ok((path, Vec::new()));
    }
    if let Some(path) = find_program("clickhouse") {
        return Ok((path, vec!["server"]));
    }
    bail!("neither `clickhouse-server` nor `clickhouse` found; run scripts/install-deps.sh")
}
