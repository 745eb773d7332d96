//! The operator commands of the `analytics_server` binary besides serving: watching events live, showing the
//! stream and consumer state, repairing the JetStream set-up, re-publishing dead letters, checking a publisher's
//! settings and probing the whole path with a test event. There is no `nats` CLI in the distributions, so the
//! project's scripts (`scripts/fix-analytics-connection.sh`) use these instead.
//!
//! Every command reads the same configuration as the server (`analytics.yml`, `ANALYTICS_CONFIG`,
//! `ANALYTICS__…` overrides), so it talks to the NATS and ClickHouse the server uses.

mod check;
mod monitor;
mod probe;
mod redrive;
mod status;

pub use check::{PublisherSettings, check_publisher};
pub use monitor::{EventFilter, MonitorArgs};
pub use redrive::{RedriveArgs, Report as RedriveReport, redrive, republication_headers};

use crate::config::Settings;
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Command line of the `analytics_server` binary.
#[derive(Debug, Parser)]
#[command(
    name = "analytics_server",
    version,
    about = "Fechatter analytics ingester: JetStream -> ClickHouse"
)]
pub struct Cli {
    /// What to do; without one, run the ingester.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the ingester and its HTTP API (the default).
    Serve,
    /// Print analytics events as they are published, decoded: subject, type, user, time and fields as JSON.
    Monitor(MonitorArgs),
    /// Show the stream, the consumer (pending, redelivered) and the dead-letter stream.
    Status {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Create or widen the ANALYTICS stream, the dead-letter stream and the durable consumer (never narrows).
    EnsureStream,
    /// Re-publish dead letters on their original subjects (poison no longer: a limit raised, a newer build) and
    /// remove each from the dead-letter stream once acknowledged; what is still poison comes back.
    Redrive(RedriveArgs),
    /// Check that a publisher's analytics settings agree with this service's (the JSON printed by
    /// `fechatter_server analytics-config`; `-` reads standard input).
    CheckPublisher {
        /// File with the publisher's settings, or `-`.
        file: PathBuf,
    },
    /// Publish a test event through JetStream and wait until it is stored in ClickHouse.
    SendTestEvent {
        /// Seconds to wait for the row (default: the flush interval plus 30).
        #[arg(long)]
        timeout_seconds: Option<u64>,
    },
}

/// Runs an operator command; `Ok(false)` means a check failed (the binary exits 1).
pub async fn run(command: Command) -> anyhow::Result<bool> {
    let settings = Settings::from_env().context("Failed to load configuration")?;
    match command {
        // `main` runs the server itself; it never hands `serve` over.
        Command::Serve => anyhow::bail!("`serve` runs the server; it is not an operator command"),
        Command::Monitor(args) => monitor::run(&settings, args).await.map(|()| true),
        Command::Status { json } => status::run(&settings, json).await,
        Command::EnsureStream => status::ensure(&settings).await,
        Command::Redrive(args) => redrive::run(&settings, &args).await,
        Command::CheckPublisher { file } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading the publisher settings from stdin")?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?
            };
            let publisher: PublisherSettings = serde_json::from_str(&text)
                .context("the publisher settings are not the JSON of `fechatter_server analytics-config`")?;
            let report = check_publisher(&settings, &publisher);
            for line in &report.lines {
                println!("{line}");
            }
            Ok(report.ok)
        }
        Command::SendTestEvent { timeout_seconds } => {
            let timeout = timeout_seconds.map_or(
                settings.flush_interval() + std::time::Duration::from_secs(30),
                std::time::Duration::from_secs,
            );
            probe::run(&settings, timeout).await
        }
    }
}

/// Connects to the configured NATS server, naming the URL in the error.
pub(crate) async fn connect_nats(settings: &Settings, name: &str) -> anyhow::Result<async_nats::Client> {
    let url = &settings.integrations.messaging.nats_url;
    async_nats::ConnectOptions::new()
        .name(name)
        .connect(url.as_str())
        .await
        .with_context(|| format!("cannot connect to NATS at {url} (integrations.messaging.nats_url)"))
}
