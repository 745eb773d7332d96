//! Small utilities shared by the server helpers: free ports, polling with backoff, locating
//! programs, and an HTTP client that never goes through a proxy.

use std::collections::HashSet;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::time::Instant;

use crate::process::ChildProcess;

/// Set to `1` to keep each server's temporary directory (its data and log) instead of deleting it
/// when the server is dropped: to look at a failed run, or to keep one benchmark run's clean-up from
/// slowing the next (see docs/benchmarks.md, the file-system note).
pub const KEEP_DATA_VAR: &str = "TEST_SUPPORT_KEEP_DATA";

/// Creates a temporary directory named `prefix…`, deleted when dropped unless [`KEEP_DATA_VAR`] is
/// `1` (then its path is printed to stderr).
pub(crate) fn temp_dir(prefix: &str) -> Result<tempfile::TempDir> {
    let keep = std::env::var(KEEP_DATA_VAR).is_ok_and(|v| v == "1");
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .disable_cleanup(keep)
        .tempdir()
        .with_context(|| format!("creating a temporary directory {prefix}…"))?;
    if keep {
        eprintln!("test_support: {KEEP_DATA_VAR}=1, keeping {}", dir.path().display());
    }
    Ok(dir)
}

/// First delay between two polls of [`wait_until`] and [`wait_until_ok`].
const FIRST_DELAY: Duration = Duration::from_millis(10);
/// Largest delay between two polls of [`wait_until`] and [`wait_until_ok`].
const MAX_DELAY: Duration = Duration::from_millis(200);

/// Ports already handed out by this process, so that two servers started at the same time never
/// get the same one even if the kernel offers it twice in a row.
fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
///
/// A port is never returned twice by the same process. Another process may still take it before
/// the caller binds it; the server helpers retry with new ports when that happens.
pub fn try_free_port() -> Result<u16> {
    for _ in 0..64 {
        let listener = TcpListener::bind(("127.0.0.1", 0)).context("binding 127.0.0.1:0 to find a free port")?;
        let port = listener
            .local_addr()
            .context("reading the address of a listener on 127.0.0.1:0")?
            .port();
        let mut ports = handed_out().lock().unwrap_or_else(|e| e.into_inner());
        if ports.insert(port) {
            return Ok(port);
        }
    }
    bail!("the kernel kept offering ports this process had already handed out")
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago; see [`try_free_port`].
///
/// # Panics
/// If no socket can be bound on 127.0.0.1 at all.
pub fn free_port() -> u16 {
    match try_free_port() {
        Ok(port) => port,
        Err(e) => panic!("no free port on 127.0.0.1: {e:#}"),
    }
}

/// Polls `f` until it returns `Some(value)` and returns that value, or fails after `timeout` with
/// an error naming `what`.
///
/// Polls at once, then after 10 ms, doubling the delay up to 200 ms between polls; the last poll
/// happens at the deadline. A single call of `f` is also cut off at the deadline.
pub async fn wait_until<F, Fut, T>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut delay = FIRST_DELAY;
    loop {
        // `timeout_at` polls the future once before looking at the clock, so the last attempt
        // at the deadline still runs.
        match tokio::time::timeout_at(deadline, f()).await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(_) => bail!("timed out after {timeout:?} waiting for {what}"),
        }
        let now = Instant::now();
        if now >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(delay.min(deadline - now)).await;
        delay = (delay * 2).min(MAX_DELAY);
    }
}

/// Like [`wait_until`], for a check that fails with an error until it succeeds: polls `f` until it
/// returns `Ok(value)`. On timeout the error names `what` and carries the last error of `f`.
pub async fn wait_until_ok<F, Fut, T>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut delay = FIRST_DELAY;
    loop {
        let last_error = match tokio::time::timeout_at(deadline, f()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => e,
            Err(_) => anyhow!("the last check was still running at the deadline"),
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(last_error.context(format!("timed out after {timeout:?} waiting for {what}")));
        }
        tokio::time::sleep(delay.min(deadline - now)).await;
        delay = (delay * 2).min(MAX_DELAY);
    }
}

/// Waits until `probe` answers true, failing early (with the end of its log) if `process` exits.
pub(crate) async fn wait_ready<F, Fut>(
    process: &mut ChildProcess,
    what: &str,
    timeout: Duration,
    mut probe: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    let mut delay = FIRST_DELAY;
    loop {
        if let Some(status) = process.try_wait()? {
            bail!(
                "{what} exited ({status}) before it was ready; end of its log {}:\n{}",
                process.log_path().display(),
                process.log_tail(4096)
            );
        }
        if matches!(tokio::time::timeout_at(deadline, probe()).await, Ok(true)) {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            bail!(
                "timed out after {timeout:?} waiting for {what} to be ready; end of its log {}:\n{}",
                process.log_path().display(),
                process.log_tail(4096)
            );
        }
        tokio::time::sleep(delay.min(deadline - now)).await;
        delay = (delay * 2).min(MAX_DELAY);
    }
}

/// An HTTP client for talking to the local servers: no proxy (whatever `HTTP_PROXY` says), short
/// connect timeout, and no idle keep-alive connections (a server that is asked to shut down
/// waits for open connections, ClickHouse for up to its 3 s keep-alive timeout).
pub(crate) fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .context("building an HTTP client")
}

/// Finds `name` in `PATH` or in the usual system directories (root's `PATH` has the `sbin`
/// directories, other users' often does not).
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let fixed = [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ];
    path_dirs
        .into_iter()
        .chain(fixed.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Like [`find_program`], with an error that says how to install it.
pub fn require_program(name: &str) -> Result<PathBuf> {
    find_program(name).ok_or_else(|| anyhow!("`{name}` not found in PATH or /usr/sbin; run scripts/install-deps.sh"))
}

/// True when `path` is a regular file with an execute bit set.
pub(crate) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// True when this process runs with effective user id 0 (read from `/proc/self/status`).
pub(crate) fn is_root() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .is_some_and(|euid| euid == "0")
}

/// Keeps the last `max_bytes` of `text`, cut at a character boundary.
pub(crate) fn tail(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut start = text.len() - max_bytes;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct() {
        let ports: HashSet<u16> = (0..50).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 50);
    }

    #[tokio::test]
    async fn wait_until_returns_value_and_times_out() {
        let mut calls = 0;
        let value = wait_until("the third call", Duration::from_secs(5), || {
            calls += 1;
            let now = calls;
            async move { (now >= 3).then_some(now) }
        })
        .await
        .unwrap();
        assert_eq!(value, 3);

        let started = std::time::Instant::now();
        let err = wait_until("never", Duration::from_millis(100), || async { None::<()> })
            .await
            .unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(format!("{err:#}").contains("never"), "{err:#}");
    }

    #[tokio::test]
    async fn wait_until_cuts_off_a_hanging_check() {
        let err = wait_until("a hanging check", Duration::from_millis(50), || async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Some(())
        })
        .await
        .unwrap_err();
        assert!(format!("{err:#}").contains("a hanging check"));
    }

    #[tokio::test]
    async fn wait_until_ok_keeps_last_error() {
        let err = wait_until_ok("the impossible", Duration::from_millis(50), || async {
            Err::<(), _>(anyhow!("boom"))
        })
        .await
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("the impossible") && text.contains("boom"), "{text}");
    }

    #[test]
    fn tail_respects_char_boundaries() {
        assert_eq!(tail("abc", 10), "abc");
        assert_eq!(tail("abcdef", 2), "ef");
        assert_eq!(tail("aé", 1), "");
    }
}
