//! The `fechatter_server` binary.
//!
//! - `fechatter_server` serves the chat API until SIGTERM or ctrl-c.
//! - `fechatter_server seed` creates the development user `super@none.org` / `password123` and exits.
//! - `fechatter_server gen-keys DIR` writes a fresh Ed25519 key pair (`private.pem`, `public.pem`) to DIR.
//! - `fechatter_server analytics-config` prints, as JSON, whether analytics are published, to which NATS server
//!   and on which subjects (read by `analytics_server check-publisher`).

use anyhow::Context as _;
use fechatter_server::config::Settings;
use fechatter_server::startup::{self, Application};
use fechatter_service::{shutdown, telemetry};
use std::process::ExitCode;

// jemalloc instead of the system allocator, as in analytics_server: many short-lived allocations per request,
// which glibc malloc serves with more CPU and more fragmentation under a multi-threaded runtime.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "fechatter_server failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &[String]) -> anyhow::Result<()> {
    match args.first().map(String::as_str) {
        Some("gen-keys") => {
            let dir = std::path::PathBuf::from(args.get(1).context("usage: fechatter_server gen-keys DIR")?);
            std::fs::create_dir_all(&dir).with_context(|| format!("Failed to create {}", dir.display()))?;
            let (private, public) = fechatter_server::auth::tokens::generate_key_pair()?;
            write_private(&dir.join("private.pem"), private.as_bytes()).context("Failed to write private.pem")?;
            std::fs::write(dir.join("public.pem"), public).context("Failed to write public.pem")?;
            println!("wrote {0}/private.pem and {0}/public.pem", dir.display());
            Ok(())
        }
        Some("seed") => {
            let settings = Settings::from_env().context("Failed to load configuration")?;
            let pool = startup::connect_database(&settings).await?;
            let id = fechatter_server::seed::run(&pool).await.context("Failed to seed")?;
            println!(
                "development user {} (id {id}) ready",
                fechatter_server::seed::SUPER_EMAIL
            );
            Ok(())
        }
        Some("analytics-config") => {
            // What this instance publishes, for `analytics_server check-publisher` (the fix script pipes one into
            // the other). Every event type has its own subject.
            let settings = Settings::from_env().context("Failed to load configuration")?;
            let out = serde_json::json!({
                "messaging_enabled": settings.features.messaging.enabled,
                "nats_url": settings.messaging.nats_url,
                "subjects": fechatter_protos::all_subjects(),
            });
            println!("{out}");
            Ok(())
        }
        Some(other) => {
            anyhow::bail!("unknown command {other:?} (expected none, `seed`, `gen-keys DIR` or `analytics-config`)")
        }
        None => {
            let settings = Settings::from_env().context("Failed to load configuration")?;
            let app = Application::build(settings)
                .await
                .context("Failed to start fechatter_server")?;
            app.run_until_stopped(shutdown::on_signals())
                .await
                .context("HTTP server failed")
        }
    }
}

/// Writes a private key readable by its owner only (0600), from its creation on.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}
