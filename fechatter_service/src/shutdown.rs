//! Turns SIGTERM and ctrl-c into the cancellation of one token, which every task watches; and the services'
//! last step before exiting, a bounded NATS flush.

use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Longest wait for NATS to take the last buffered bytes before a service exits.
pub const NATS_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Pushes out what `client` still buffers; false when NATS did not take it within [`NATS_FLUSH_TIMEOUT`].
/// Bounded because with NATS down a flush waits for a reconnection that may never come, and the process would
/// never exit.
pub async fn flush_nats(client: &async_nats::Client) -> bool {
    matches!(
        tokio::time::timeout(NATS_FLUSH_TIMEOUT, client.flush()).await,
        Ok(Ok(()))
    )
}

/// Returns a token cancelled on the first SIGTERM or ctrl-c.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        cancel.cancel();
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for SIGTERM; ctrl-c only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
