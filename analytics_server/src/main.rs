//! The `analytics_server` binary: load configuration, start, run until SIGTERM or ctrl-c.

use analytics_server::config::Settings;
use analytics_server::startup::Application;
use analytics_server::{shutdown, telemetry};
use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    let settings = Settings::from_env().context("Failed to load configuration")?;
    let app = Application::build(settings)
        .await
        .context("Failed to start analytics_server")?;
    app.run_until_stopped(shutdown::on_signals())
        .await
        .context("HTTP server failed")
}
