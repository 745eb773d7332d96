//! [`NatsServer`]: a private nats-server with JetStream, its store in a temporary directory.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::process::ChildProcess;
use crate::util::{http_client, require_program, try_free_port, wait_ready};

/// How long a start may take before it is given up.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`NatsServer::stop`] waits after SIGTERM before it uses SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How many times [`NatsServer::start`] tries new ports when the chosen ones were taken.
const START_ATTEMPTS: usize = 3;

/// A nats-server with JetStream on 127.0.0.1, on its own free client and monitoring ports, with
/// its JetStream store in a temporary directory. Killed when dropped.
///
/// [`restart`](Self::restart) starts it again on the same ports with the same store, so streams,
/// consumers and messages survive.
pub struct NatsServer {
    // Declared first so that it is dropped (killed) before `dir` is removed.
    process: Option<ChildProcess>,
    dir: TempDir,
    program: PathBuf,
    port: u16,
    monitor_port: u16,
    /// Whether the server runs with `-js`; kept across restarts.
    jetstream: bool,
    http: reqwest::Client,
}

impl NatsServer {
    /// Starts a nats-server with JetStream and waits until it accepts TCP connections and its
    /// `/healthz` answers 200.
    pub async fn start() -> Result<Self> {
        Self::start_with(true).await
    }

    /// Starts a bare nats-server, JetStream off (no `-js`), as [`start`](Self::start) does
    /// otherwise: for tests of what a client says about a server that cannot hold streams.
    pub async fn start_without_jetstream() -> Result<Self> {
        Self::start_with(false).await
    }

    /// Starts a server with or without JetStream, trying new ports when the chosen ones were taken.
    async fn start_with(jetstream: bool) -> Result<Self> {
        let program = require_program("nats-server")?;
        let dir = crate::util::temp_dir("test-support-nats-")?;
        let mut server = Self {
            process: None,
            dir,
            program,
            port: 0,
            monitor_port: 0,
            jetstream,
            http: http_client()?,
        };
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            server.port = try_free_port()?;
            server.monitor_port = try_free_port()?;
            match server.launch().await {
                Ok(()) => return Ok(server),
                // Most likely another process took one of the ports; try others.
                Err(e) => last_error = Some(e),
            }
        }
        match last_error {
            Some(e) => Err(e.context(format!("nats-server failed to start {START_ATTEMPTS} times"))),
            None => bail!("nats-server was never started"),
        }
    }

    /// Spawns nats-server on the current ports and store, and waits until it is ready.
    async fn launch(&mut self) -> Result<()> {
        if let Some(process) = self.process.as_mut() {
            process.kill().await;
        }
        let mut command = Command::new(&self.program);
        command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string()])
            .current_dir(self.dir.path());
        if self.jetstream {
            command.arg("-js").arg("-sd").arg(self.store_dir());
        }
        let http = self.http.clone();
        let addr = ("127.0.0.1", self.port);
        let healthz = format!("{}/healthz", self.monitor_url());
        let what = format!("nats-server on port {}", self.port);
        let log_path = self.log_path();
        let process = self.process.insert(ChildProcess::spawn_logged(command, &log_path)?);
        wait_ready(process, &what, START_TIMEOUT, || {
            let http = http.clone();
            let healthz = healthz.clone();
            async move {
                if tokio::net::TcpStream::connect(addr).await.is_err() {
                    return false;
                }
                matches!(
                    http.get(&healthz).timeout(Duration::from_secs(2)).send().await,
                    Ok(response) if response.status().is_success()
                )
            }
        })
        .await
    }

    /// The client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The monitoring port.
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// The monitoring base URL, `http://127.0.0.1:MONITOR_PORT`.
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// The JetStream store directory (`-sd`); it outlives restarts.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("jetstream-store")
    }

    /// The file that receives nats-server's output (appended to across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    /// True while the server process runs.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(ChildProcess::is_running)
    }

    /// Stops the server gracefully: SIGTERM, then SIGKILL if it has not exited after 5 s.
    pub async fn stop(&mut self) {
        if let Some(process) = self.process.as_mut()
            && let Err(e) = process.terminate(STOP_GRACE).await
        {
            eprintln!("test_support: stopping nats-server: {e:#}");
        }
    }

    /// Kills the server with SIGKILL, as a crash would.
    pub async fn kill(&mut self) {
        if let Some(process) = self.process.as_mut() {
            process.kill().await;
        }
    }

    /// Starts the server again on the same ports with the same JetStream store, stopping it
    /// gracefully first if it still runs. Waits until it is ready.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await;
        self.launch()
            .await
            .with_context(|| format!("restarting nats-server on port {}", self.port))
    }

    /// JetStream state from the monitoring endpoint `/jsz?streams=true&consumers=true`.
    pub async fn jsz(&self) -> Result<serde_json::Value> {
        let url = format!("{}/jsz?streams=true&consumers=true", self.monitor_url());
        let response = self
            .http
            .get(&url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let body = response.text().await.with_context(|| format!("reading GET {url}"))?;
        if !status.is_success() {
            bail!("GET {url} answered {status}: {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("parsing GET {url}: {body}"))
    }
}

impl std::fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsServer")
            .field("url", &self.url())
            .field("monitor_url", &self.monitor_url())
            .field("dir", &self.dir.path())
            .finish()
    }
}
