//! Deletes the credentials nobody can use any more: refresh-token families whose every token has expired, and
//! expired workspace invitations. Without it both tables only grow: every refresh adds a row (about a hundred a day
//! per signed-in client at the default 15-minute access-token lifetime) and every sign-in a family.
//!
//! A family is deleted whole, and only once its newest token has expired too: the used tokens of a live family are
//! what reuse detection recognises (`refresh::rotate` revokes the family when one comes back), so they stay while
//! any token of the family could still be refreshed. Invitations past `expires_at` are refused already
//! (`http::invites`), so deleting them changes no answer.
//!
//! Every instance runs it; concurrent runs delete the same rows once. Each statement deletes a bounded number of
//! families or invitations, so a backlog (a first run on an old database) is worked off over several runs rather
//! than in one long transaction.

use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long after its last expiry a family or invitation is kept (a margin for clocks that disagree).
const GRACE: &str = "1 day";

/// Most families, and most invitations, one statement deletes.
const BATCH: i64 = 1_000;

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

/// Deletes up to [`BATCH`] wholly expired refresh-token families and up to [`BATCH`] expired invitations.
pub async fn prune(pool: &PgPool) -> Result<Pruned, sqlx::Error> {
    let refresh_tokens = sqlx::query(
        "DELETE FROM refresh_tokens WHERE family_id IN ( \
             SELECT family_id FROM refresh_tokens GROUP BY family_id \
             HAVING max(expires_at) < now() - $1::interval LIMIT $2)",
    )
    .bind(GRACE)
    .bind(BATCH)
    .execute(pool)
    .await?
    .rows_affected();
    let invites = sqlx::query(
        "DELETE FROM workspace_invites WHERE token_hash IN ( \
             SELECT token_hash FROM workspace_invites WHERE expires_at < now() - $1::interval LIMIT $2)",
    )
    .bind(GRACE)
    .bind(BATCH)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(Pruned {
        refresh_tokens,
        invites,
    })
}

/// Runs [`prune`] a minute after start-up and then every hour, until `shutdown` is cancelled. A failed run is
/// logged and tried again at the next.
pub async fn run(pool: PgPool, shutdown: CancellationToken) {
    let mut wait = Duration::from_secs(60);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = EVERY;
        match prune(&pool).await {
            Ok(Pruned {
                refresh_tokens: 0,
                invites: 0,
            }) => {}
            Ok(pruned) => tracing::info!(
                refresh_tokens = pruned.refresh_tokens,
                invites = pruned.invites,
                "expired credentials deleted"
            ),
            Err(err) => tracing::warn!(error = %crate::error_chain(&err), "expired credentials not deleted"),
        }
    }
}
