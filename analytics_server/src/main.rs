//! The `analytics_server` binary: load configuration, start, run until SIGTERM or ctrl-c.

use analytics_server::config::Settings;
use analytics_server::startup::Application;
use anyhow::Context;
use fechatter_service::{shutdown, telemetry};
use std::process::ExitCode;

// jemalloc instead of the system allocator: the ingest path allocates many short-lived strings per event, and
// glibc malloc's per-thread arenas cost a measured 25-30 % more CPU there (see the README's benchmarks).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The cause chain on one line, without a backtrace: these are operator errors, not bugs.
            tracing::error!(error = format!("{err:#}"), "analytics_server failed");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env().context("Failed to load configuration")?;
    let app = Application::build(settings)
        .await
        .context("Failed to start analytics_server")?;
    app.run_until_stopped(shutdown::on_signals())
        .await
        .context("HTTP server failed")
}
