//! [`PostgresServer`]: a private PostgreSQL cluster made by `initdb` in a temporary directory and
//! run with `pg_ctl` (as the `postgres` OS user when the caller is root).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::util::{find_program, is_executable, is_root, try_free_port};

/// The PostgreSQL major version preferred when several are installed.
const PREFERRED_VERSION: &str = "15";
/// How many times [`PostgresServer::start`] tries new ports when the chosen one was taken.
const START_ATTEMPTS: usize = 3;
/// Seconds `pg_ctl` waits for a start or a stop.
const PG_CTL_TIMEOUT_SECS: &str = "60";

/// Whether commits reach the disk before they return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `fsync`, `synchronous_commit` and `full_page_writes` off: fast, for tests, whose data nobody keeps.
    Off,
    /// PostgreSQL's defaults, as in production: a commit returns once flushed. For benchmarks.
    On,
}

/// A PostgreSQL server on 127.0.0.1 with its own port, cluster and Unix socket directory in a
/// temporary directory; authentication is `trust`, the superuser is `postgres`. Stopped with
/// `pg_ctl stop -m immediate` when dropped.
///
/// [`restart`](Self::restart) starts it again on the same port with the same cluster.
pub struct PostgresServer {
    dir: TempDir,
    bin_dir: PathBuf,
    psql: PathBuf,
    port: u16,
    as_postgres_user: bool,
    running: bool,
}

impl PostgresServer {
    /// Creates a cluster with `initdb` (trust authentication, superuser `postgres`, UTF8, locale
    /// C, durability off for speed) and starts it with `pg_ctl start -w`.
    pub async fn start() -> Result<Self> {
        Self::start_with(Durability::Off).await
    }

    /// As [`start`](Self::start), with the given durability.
    pub async fn start_with(durability: Durability) -> Result<Self> {
        let bin_dir = find_bin_dir()?;
        let psql = [bin_dir.join("psql")]
            .into_iter()
            .find(|p| is_executable(p))
            .or_else(|| find_program("psql"))
            .context("`psql` not found; run scripts/install-deps.sh")?;
        let dir = crate::util::temp_dir("test-support-postgres-")?;
        let as_postgres_user = is_root();
        let mut server = Self {
            dir,
            bin_dir,
            psql,
            port: 0,
            as_postgres_user,
            running: false,
        };
        if as_postgres_user {
            // PostgreSQL refuses to run as root; the cluster must belong to `postgres`.
            let mut chown = Command::new("chown");
            chown.arg("postgres:postgres").arg(server.dir.path());
            run(chown, "chown of the PostgreSQL directory to the `postgres` user").await?;
        }
        server.init_cluster(durability).await?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            server.port = try_free_port()?;
            match server.pg_ctl_start().await {
                Ok(()) => return Ok(server),
                // Most likely another process took the port; try another.
                Err(e) => last_error = Some(e),
            }
        }
        match last_error {
            Some(e) => Err(e.context(format!("PostgreSQL failed to start {START_ATTEMPTS} times"))),
            None => bail!("PostgreSQL was never started"),
        }
    }

    /// Runs `initdb` and appends the settings that keep the server private (and fast, without durability).
    async fn init_cluster(&self, durability: Durability) -> Result<()> {
        let mut initdb = self.pg_command("initdb");
        initdb
            .arg("-D")
            .arg(self.data_dir())
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "-N"]);
        run(initdb, "initdb").await?;
        let socket_dir = self.dir.path().display().to_string().replace('\'', "''");
        let mut settings = format!(
            "\n# test_support\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{socket_dir}'\n"
        );
        if durability == Durability::Off {
            settings.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        }
        let conf = self.data_dir().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).with_context(|| format!("reading {}", conf.display()))?;
        text.push_str(&settings);
        std::fs::write(&conf, text).with_context(|| format!("writing {}", conf.display()))
    }

    /// `pg_ctl start -w` on the current port.
    async fn pg_ctl_start(&mut self) -> Result<()> {
        let mut pg_ctl = self.pg_command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", PG_CTL_TIMEOUT_SECS, "-o"])
            .arg(format!("-p {}", self.port))
            .arg("start");
        let result = run(pg_ctl, &format!("pg_ctl start on port {}", self.port)).await;
        match result {
            Ok(_) => {
                self.running = true;
                Ok(())
            }
            Err(e) => {
                // pg_ctl may give up waiting while the postmaster lives on.
                self.pg_ctl_stop("immediate").await;
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                Err(e.context(format!("end of the PostgreSQL log:\n{}", crate::util::tail(&log, 4096))))
            }
        }
    }

    /// `pg_ctl stop -m MODE -w`; errors (typically: not running) are ignored.
    async fn pg_ctl_stop(&mut self, mode: &str) {
        let mut pg_ctl = self.pg_command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", mode, "-w", "-t", PG_CTL_TIMEOUT_SECS, "stop"]);
        // Fails when the server is not running, which is what is wanted anyway.
        let _ = run(pg_ctl, "pg_ctl stop").await;
        self.running = false;
    }

    /// A PostgreSQL program from the chosen bin directory, run as `postgres` when we are root,
    /// in the temporary directory (which `postgres` can enter).
    fn pg_command(&self, program: &str) -> Command {
        let path = self.bin_dir.join(program);
        let mut command = if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        command.current_dir(self.dir.path());
        command
    }

    /// The URL of database `db`: `postgres://postgres@127.0.0.1:PORT/DB`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster directory (`-D`); it outlives restarts.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The postmaster's process id (from `postmaster.pid`), while it runs. `pg_ctl` detaches it from this
    /// process, so CPU accounting names it explicitly (see [`crate::cpu::CpuSnapshot::take_with`]).
    pub fn pid(&self) -> Option<u32> {
        let pid_file = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        pid_file.lines().next()?.trim().parse().ok()
    }

    /// The server log (`pg_ctl -l`), appended to across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Creates database `name` and returns its URL. `name` may contain ASCII letters, digits,
    /// `_` and `-` (at most 63 characters), so that it needs no escaping in SQL or in the URL.
    pub async fn create_database(&self, name: &str) -> Result<String> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            bail!("invalid database name {name:?}: use 1-63 of [A-Za-z0-9_-]");
        }
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))
            .await
            .with_context(|| format!("creating database {name}"))?;
        Ok(self.url(name))
    }

    /// Runs `sql` with `psql` in database `db` (unaligned, tuples only, stopping at the first
    /// error) and returns its output without the trailing newline.
    pub async fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let mut psql = Command::new(&self.psql);
        psql.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U"])
            .arg("postgres")
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-d")
            .arg(db)
            .arg("-c")
            .arg(sql)
            .env("PGCONNECT_TIMEOUT", "10")
            .current_dir(self.dir.path());
        let output = run(psql, &format!("psql -d {db} -c {sql:?}")).await?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        Ok(stdout.trim_end_matches('\n').to_string())
    }

    /// Stops the server with `pg_ctl stop -m fast` (waits for it).
    pub async fn stop(&mut self) {
        self.pg_ctl_stop("fast").await;
    }

    /// Stops the server with `pg_ctl stop -m immediate`, as a crash would (the next start
    /// recovers from the WAL).
    pub async fn kill(&mut self) {
        self.pg_ctl_stop("immediate").await;
    }

    /// Starts the server again on the same port with the same cluster, stopping it first if it
    /// still runs. Waits until it accepts connections.
    pub async fn restart(&mut self) -> Result<()> {
        if self.running {
            self.stop().await;
        }
        self.pg_ctl_start()
            .await
            .with_context(|| format!("restarting PostgreSQL on port {}", self.port))
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        let mut pg_ctl = self.pg_command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "-t", "10", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Best effort: nothing can be done about a failure while dropping.
        let _ = pg_ctl.status();
    }
}

impl std::fmt::Debug for PostgresServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresServer")
            .field("url", &self.url("postgres"))
            .field("dir", &self.dir.path())
            .field("running", &self.running)
            .finish()
    }
}

/// Runs `command` to completion; a non-zero exit is an error carrying its output.
async fn run(command: Command, what: &str) -> Result<Output> {
    let mut command = tokio::process::Command::from(command);
    command.stdin(Stdio::null());
    let output = command
        .output()
        .await
        .with_context(|| format!("running {what} (is PostgreSQL installed? see scripts/install-deps.sh)"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

/// The directory with `initdb`, `pg_ctl` and `postgres`: `/usr/lib/postgresql/15/bin` if present,
/// else the newest `/usr/lib/postgresql/N/bin`, else the directory of `initdb` on `PATH`.
fn find_bin_dir() -> Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let has_tools = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|p| is_executable(&dir.join(p)))
    };
    let preferred = root.join(PREFERRED_VERSION).join("bin");
    if has_tools(&preferred) {
        return Ok(preferred);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                    Some((version, e.path().join("bin")))
                })
                .filter(|(_, bin)| has_tools(bin))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Some(dir) = find_program("initdb").and_then(|p| p.parent().map(Path::to_path_buf))
        && has_tools(&dir)
    {
        return Ok(dir);
    }
    bail!("PostgreSQL server programs (initdb, pg_ctl, postgres) not found; run scripts/install-deps.sh")
}
