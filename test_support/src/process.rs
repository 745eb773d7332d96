//! [`ChildProcess`]: a spawned program whose stdout and stderr go to a log file, stopped with
//! SIGTERM or SIGKILL and killed on drop; and [`cargo_bin`], which finds a binary built by cargo.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;
use tokio::time::Instant;

use crate::util::tail;

/// Returns the path of the binary `name` built by cargo for the current profile.
///
/// Uses `CARGO_BIN_EXE_<name>` from the environment when set; otherwise `target/<profile>/<name>`
/// next to the running test executable (`target/<profile>/deps/<test>-<hash>`). The path is
/// returned even when no such file exists, so that spawning it fails with a clear message.
///
/// Cargo builds a package's binaries before running that package's integration tests; a binary
/// of another package must be built first (`cargo build -p <package>`).
pub fn cargo_bin(name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(format!("CARGO_BIN_EXE_{name}")) {
        return PathBuf::from(path);
    }
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let Ok(exe) = std::env::current_exe() else {
        return PathBuf::from(file);
    };
    let Some(mut dir) = exe.parent() else {
        return PathBuf::from(file);
    };
    let in_subdir = dir.file_name().is_some_and(|n| n == "deps" || n == "examples");
    if in_subdir
        && !dir.join(&file).is_file()
        && let Some(parent) = dir.parent()
    {
        dir = parent;
    }
    dir.join(file)
}

/// Sends the signal named `signal` (`"TERM"`, `"KILL"`, `"HUP"`, `"INT"`, …) to `pid`, through the
/// shell's `kill` builtin (no libc needed).
pub(crate) fn send_signal(pid: u32, signal: &str) -> Result<()> {
    let status = Command::new("/bin/sh")
        .args(["-c", "kill -s \"$0\" \"$1\"", signal, &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running /bin/sh to send a signal")?;
    if !status.success() {
        bail!("`kill -s {signal} {pid}` failed ({status})");
    }
    Ok(())
}

/// A running program with stdout and stderr appended to one log file.
///
/// Killed with SIGKILL (and reaped) when dropped. If the drop happens while the thread panics
/// (a failing test), the end of the log is printed to stderr, so CI output shows why a service
/// under test misbehaved.
pub struct ChildProcess {
    name: String,
    child: std::process::Child,
    status: Option<ExitStatus>,
    log_path: PathBuf,
    print_log_on_panic: bool,
    _log_dir: Option<TempDir>,
}

impl ChildProcess {
    /// Spawns `program` with `args` and the extra environment variables `envs` (added to this
    /// process's environment), logging to a file in a new temporary directory.
    pub fn spawn<P, A, S, E, K, V>(program: P, args: A, envs: E) -> Result<Self>
    where
        P: AsRef<Path>,
        A: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
        E: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let mut command = Command::new(program.as_ref());
        command.args(args).envs(envs);
        Self::spawn_command(command)
    }

    /// Spawns a prepared `command` (arguments, environment, working directory as the caller set
    /// them), logging to a file in a new temporary directory. Its stdin, stdout and stderr are
    /// replaced.
    pub fn spawn_command(command: Command) -> Result<Self> {
        let name = program_name(&command);
        let dir = crate::util::temp_dir(&format!("test-support-{name}-"))?;
        let log_path = dir.path().join(format!("{name}.log"));
        let mut process = Self::spawn_logged(command, &log_path)?;
        process.print_log_on_panic = true;
        process._log_dir = Some(dir);
        Ok(process)
    }

    /// Spawns `command` with stdout and stderr appended to `log_path` (created if needed).
    pub(crate) fn spawn_logged(mut command: Command, log_path: &Path) -> Result<Self> {
        let name = program_name(&command);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("opening log file {}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .with_context(|| format!("duplicating log file {}", log_path.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let child = command.spawn().with_context(|| {
            format!(
                "spawning {:?} (is it installed / built? see scripts/install-deps.sh)",
                command.get_program()
            )
        })?;
        Ok(Self {
            name,
            child,
            status: None,
            log_path: log_path.to_path_buf(),
            print_log_on_panic: false,
            _log_dir: None,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The file that receives stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything written to stdout and stderr so far (lossily decoded as UTF-8).
    pub fn log_contents(&self) -> String {
        match std::fs::read(&self.log_path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("<cannot read {}: {e}>", self.log_path.display()),
        }
    }

    /// The last `max_bytes` of the log.
    pub(crate) fn log_tail(&self, max_bytes: usize) -> String {
        tail(&self.log_contents(), max_bytes).to_string()
    }

    /// The exit status if the process has exited (reaping it), `None` while it runs.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("checking whether {} exited", self.name))?;
        }
        Ok(self.status)
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the process to exit by itself and returns its exit status.
    pub async fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        match self.wait_exit(timeout).await? {
            Some(status) => Ok(status),
            None => bail!("{} (pid {}) still running after {timeout:?}", self.name, self.pid()),
        }
    }

    /// Polls for the exit for up to `timeout`.
    async fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the log contains `needle`; fails on timeout or if the process exits first.
    pub async fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(10);
        loop {
            if self.log_contents().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.try_wait()? {
                // It may have logged the line just before exiting.
                if self.log_contents().contains(needle) {
                    return Ok(());
                }
                bail!(
                    "{} exited ({status}) without logging {needle:?}; end of its log:\n{}",
                    self.name,
                    self.log_tail(4096)
                );
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {} to log {needle:?}; end of its log:\n{}",
                    self.name,
                    self.log_tail(4096)
                );
            }
            tokio::time::sleep(delay.min(deadline - now)).await;
            delay = (delay * 2).min(Duration::from_millis(200));
        }
    }

    /// Sends the signal named `signal` (`"TERM"`, `"HUP"`, `"INT"`, `"USR1"`, …) unless the
    /// process has already exited.
    pub fn signal(&mut self, signal: &str) -> Result<()> {
        // A process not yet reaped keeps its pid, so the signal cannot hit a stranger.
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        send_signal(self.pid(), signal)
    }

    /// Kills the process with SIGKILL and reaps it; nothing happens if it has already exited.
    pub async fn kill(&mut self) {
        if !matches!(self.try_wait(), Ok(None)) {
            return;
        }
        // Fails only if the process is already gone.
        let _ = self.child.kill();
        if let Ok(None) = self.wait_exit(Duration::from_secs(10)).await {
            eprintln!(
                "test_support: {} (pid {}) survived SIGKILL for 10 s",
                self.name,
                self.pid()
            );
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit, returning its exit
    /// status. If it is still running then, it is killed with SIGKILL and an error is returned.
    /// Returns the earlier exit status if it had already exited.
    pub async fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        self.signal("TERM")?;
        if let Some(status) = self.wait_exit(timeout).await? {
            return Ok(status);
        }
        self.kill().await;
        bail!(
            "{} (pid {}) did not exit within {timeout:?} after SIGTERM; killed it with SIGKILL",
            self.name,
            self.pid()
        )
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if matches!(self.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if self.print_log_on_panic && std::thread::panicking() {
            eprintln!(
                "---- end of the log of {} ({}) ----\n{}\n---- end ----",
                self.name,
                self.log_path.display(),
                self.log_tail(16 * 1024)
            );
        }
    }
}

impl std::fmt::Debug for ChildProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildProcess")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .field("status", &self.status)
            .field("log_path", &self.log_path)
            .finish()
    }
}

/// The file name of the program `command` runs, for messages and log names.
fn program_name(command: &Command) -> String {
    Path::new(command.get_program())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "process".to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn captures_output_and_terminates() {
        let mut p = ChildProcess::spawn(
            "/bin/sh",
            [
                "-c",
                "echo \"hello $GREETING\"; echo oops >&2; trap 'echo bye; exit 3' TERM; while :; do sleep 0.05; done",
            ],
            [("GREETING", "world")],
        )
        .unwrap();
        p.wait_for_log("oops", Duration::from_secs(5)).await.unwrap();
        assert!(p.log_contents().contains("hello world"));
        assert!(p.is_running());
        let status = p.terminate(Duration::from_secs(5)).await.unwrap();
        assert_eq!(status.code(), Some(3));
        assert!(p.log_contents().contains("bye"));
        assert!(!p.is_running());
    }

    #[tokio::test]
    async fn terminate_kills_a_process_ignoring_sigterm() {
        let mut p = ChildProcess::spawn(
            "/bin/sh",
            ["-c", "trap '' TERM; while :; do sleep 0.05; done"],
            [("A", "B")],
        )
        .unwrap();
        p.wait_for_log("never", Duration::from_millis(100)).await.unwrap_err();
        let err = p.terminate(Duration::from_millis(200)).await.unwrap_err();
        assert!(format!("{err:#}").contains("SIGKILL"), "{err:#}");
        assert!(!p.is_running());
    }

    #[tokio::test]
    async fn kill_and_wait() {
        let no_env: [(&str, &str); 0] = [];
        let mut p = ChildProcess::spawn("/bin/sleep", ["60"], no_env).unwrap();
        p.wait(Duration::from_millis(50)).await.unwrap_err();
        p.kill().await;
        assert!(!p.is_running());
        let status = p.wait(Duration::from_secs(1)).await.unwrap();
        assert!(!status.success());
    }

    #[tokio::test]
    async fn wait_for_log_fails_fast_when_process_exits() {
        let no_env: [(&str, &str); 0] = [];
        let mut p = ChildProcess::spawn("/bin/sh", ["-c", "echo done"], no_env).unwrap();
        let started = std::time::Instant::now();
        let err = p.wait_for_log("ready", Duration::from_secs(30)).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(format!("{err:#}").contains("exited"), "{err:#}");
    }

    #[test]
    fn spawn_of_missing_binary_names_it() {
        let no_env: [(&str, &str); 0] = [];
        let no_args: [&str; 0] = [];
        let err = ChildProcess::spawn(cargo_bin("no_such_binary_xyz"), no_args, no_env).unwrap_err();
        assert!(format!("{err:#}").contains("no_such_binary_xyz"), "{err:#}");
    }

    #[test]
    fn cargo_bin_points_into_the_target_profile_dir() {
        let path = cargo_bin("some_service");
        assert_eq!(path.file_name().unwrap(), "some_service");
        let profile_dir = path.parent().unwrap();
        assert_ne!(profile_dir.file_name().unwrap(), "deps");
    }
}
