//! Deletes the credentials nobody can use any more: refresh-token families whose every token has expired, and
//! expired workspace invitations. Without it both tables only grow: every refresh adds a row (about a hundred a day
//! per signed-in client at the default 15-minute access-token lifetime) and every sign-in a family.
//!
//! A family is deleted whole, and only once its newest token has expired too: the used tokens of a live family are
//! what reuse detection recognises (`refresh::rotate` revokes the family when one comes back), so they stay while
//! any token of the family could still be refreshed. Invitations past `expires_at` are refused already
//! (`http::invites`), so deleting them changes no answer.
//!
//! A token that was deleted is unknown: refreshing or logging out with it answers 401 `invalid_refresh_token`
//! rather than `refresh_token_expired` (or, for a logout, 204), a day after its session could no longer be used.
//!
//! Every instance runs it; concurrent runs delete the same rows once. Each statement deletes a bounded number of
//! families (a family holds a token per refresh: some 1,300 after two weeks of 15-minute refreshes) or
//! invitations, in a transaction of its own, and a run repeats them until one comes back short, so a backlog (a
//! first run on an old database) is worked off without one long transaction.

use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long after its last expiry a family or invitation is kept (a margin for clocks that disagree).
const GRACE: &str = "1 day";

/// Most families, and most invitations, one statement deletes.
const BATCH: u64 = 200;

/// Time between two runs; the first comes a minute after start-up.
const EVERY: Duration = Duration::from_secs(3600);

/// What one [`prune`] deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Refresh tokens, of families wholly expired.
    pub refresh_tokens: u64,
    /// Expired invitations.
    pub invites: u64,
}

/// Deletes up to [`BATCH`] wholly expired refresh-token families and up to [`BATCH`] expired invitations, in a
/// statement each.
pub async fn prune(pool: &PgPool) -> Result<Pruned, sqlx::Error> {
    let refresh_tokens = sqlx::query(
        "DELETE FROM refresh_tokens WHERE family_id IN ( \
             SELECT family_id FROM refresh_tokens GROUP BY family_id \
             HAVING max(expires_at) < now() - $1::interval LIMIT $2)",
    )
    .bind(GRACE)
    .bind(BATCH as i64)
    .execute(pool)
    .await?
    .rows_affected();
    let invites = sqlx::query(
        "DELETE FROM workspace_invites WHERE token_hash IN ( \
             SELECT token_hash FROM workspace_invites WHERE expires_at < now() - $1::interval LIMIT $2)",
    )
    .bind(GRACE)
    .bind(BATCH as i64)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(Pruned {
        refresh_tokens,
        invites,
    })
}

/// Runs [`prune`] a minute after start-up and then every hour, until `shutdown` is cancelled; each run repeats
/// it while it finds a full batch of either kind. A failed run is logged and tried again at the next.
pub async fn run(pool: PgPool, shutdown: CancellationToken) {
    let mut wait = Duration::from_secs(60);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = EVERY;
        let mut total = Pruned::default();
        let outcome = loop {
            match prune(&pool).await {
                Ok(pruned) => {
                    total.refresh_tokens += pruned.refresh_tokens;
                    total.invites += pruned.invites;
                    // A full batch of invitations, or any family deleted (their rows count tokens, not
                    // families): look again, unless the server is stopping.
                    let more = pruned.invites >= BATCH || pruned.refresh_tokens > 0;
                    if !more || shutdown.is_cancelled() {
                        break Ok(());
                    }
                }
                Err(err) => break Err(err),
            }
        };
        if total != Pruned::default() {
            tracing::info!(
                refresh_tokens = total.refresh_tokens,
                invites = total.invites,
                "expired credentials deleted"
            );
        }
        if let Err(err) = outcome {
            tracing::warn!(error = %crate::error_chain(&err), "expired credentials not deleted");
        }
    }
}
