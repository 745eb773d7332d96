//! The `analytics_server` binary: without a subcommand (or with `serve`), load configuration, start, and run
//! until SIGTERM or ctrl-c; with one, run an operator command ([`analytics_server::cli`]).

use analytics_server::cli::{self, Cli, Command};
use analytics_server::config::Settings;
use analytics_server::startup::Application;
use anyhow::Context;
use clap::Parser as _;
use fechatter_service::{shutdown, telemetry};
use std::process::ExitCode;

// jemalloc instead of the system allocator: the ingest path allocates many short-lived strings per event, and
// glibc malloc's per-thread arenas cost a measured 25-30 % more CPU there (see the README's benchmarks).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Cli::parse();
    telemetry::init();
    let outcome = match args.command {
        None | Some(Command::Serve) => serve().await.map(|()| true),
        Some(command) => cli::run(command).await,
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            // The cause chain on one line, without a backtrace: these are operator errors, not bugs.
            tracing::error!(error = format!("{err:#}"), "analytics_server failed");
            ExitCode::FAILURE
        }
    }
}

async fn serve() -> anyhow::Result<()> {
    let settings = Settings::from_env().context("Failed to load configuration")?;
    let app = Application::build(settings)
        .await
        .context("Failed to start analytics_server")?;
    app.run_until_stopped(shutdown::on_signals())
        .await
        .context("HTTP server failed")
}
