//! Test support for the workspace: private, throw-away servers and process helpers.
//!
//! * [`NatsServer`] — a nats-server with JetStream, its store in a temporary directory.
//! * [`ClickHouseServer`] — a clickhouse-server with its own config, data, tmp and log dirs.
//! * [`PostgresServer`] — a PostgreSQL cluster made by `initdb` in a temporary directory.
//! * [`ChildProcess`] / [`cargo_bin`] — run a binary (e.g. the service under test) with its
//!   output captured to a log file, and stop it with SIGTERM or SIGKILL.
//! * [`free_port`], [`wait_until`], [`wait_until_ok`] — small utilities.
//! * [`bench_args`] — value parsers of the benchmarks' command lines.
//! * [`cpu`] — CPU seconds used by this process, its descendants and the rest of the machine, per step.
//! * [`config_keys`] — configuration keys as README.md, a service's YAML file and its code know them.
//! * [`raw_http`] — hostile HTTP requests over a raw socket, and the checks the hostile-input tests share.
//!
//! Every server listens on 127.0.0.1 only, on ports picked by [`free_port`], and keeps all of its
//! files in its own [`tempfile::TempDir`], so any number of instances can run side by side and next
//! to system-wide installations (whose configuration is never read). Servers are killed when their
//! handle is dropped; the temporary directory goes with it.
//!
//! The binaries come from Debian's packages; `scripts/install-deps.sh` installs whatever is
//! missing.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use test_support::{ChildProcess, ClickHouseServer, NatsServer, cargo_bin, wait_until};
//!
//! let nats = NatsServer::start().await?;
//! let clickhouse = ClickHouseServer::start().await?;
//! let mut service = ChildProcess::spawn(
//!     cargo_bin("analytics_server"),
//!     ["--config", "/path/to/config.yml"],
//!     [("NATS_URL", nats.url()), ("CLICKHOUSE_URL", clickhouse.http_url())],
//! )?;
//! service.wait_for_log("listening", Duration::from_secs(10)).await?;
//! wait_until("one stored row", Duration::from_secs(10), || async {
//!     let count = clickhouse.query("SELECT count() FROM events").await.ok()?;
//!     (count.trim() == "1").then_some(())
//! })
//! .await?;
//! let status = service.terminate(Duration::from_secs(10)).await?;
//! assert!(status.success());
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod bench_args;
mod clickhouse;
pub mod config_keys;
pub mod cpu;
mod nats;
mod postgres;
mod process;
pub mod raw_http;
mod util;

pub use clickhouse::ClickHouseServer;
pub use nats::NatsServer;
pub use postgres::{Durability, PostgresServer};
pub use process::{ChildProcess, cargo_bin};
pub use util::{KEEP_DATA_VAR, free_port, require_program, try_free_port, wait_until, wait_until_ok};
