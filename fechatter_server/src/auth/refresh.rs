//! Refresh-token families in PostgreSQL (`refresh_tokens`). A sign-in starts a family; each refresh marks the
//! presented token used and issues its successor in the same family, under a row lock, so one token is redeemed
//! at most once. Presenting a token that was already used means two parties hold it (it was stolen and
//! replayed, or the client raced itself): the whole family is revoked, so the newest token dies too and the user
//! has to sign in again.
//!
//! Only SHA-256 hashes of tokens are stored ([`tokens::hash_opaque_token`]); every timestamp is the database's
//! `now()`, so expiry does not depend on the clocks of the API instances.

use super::tokens;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// Why a presented refresh token was refused (or the store failed).
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// No such token (never issued, or its user is gone).
    #[error("unknown refresh token")]
    Unknown,
    /// Past its `expires_at`.
    #[error("refresh token expired")]
    Expired,
    /// Its family was revoked (logout, or an earlier reuse).
    #[error("refresh token revoked")]
    Revoked,
    /// Already used once: the family has now been revoked.
    #[error("refresh token already used; its family {family_id} was revoked")]
    Reused {
        /// The revoked family.
        family_id: Uuid,
        /// Its user.
        user_id: i64,
    },
    /// Reading or writing `refresh_tokens` failed.
    #[error("refresh token store failed")]
    Database(#[from] sqlx::Error),
}

/// The outcome of a successful rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The token's user.
    pub user_id: i64,
    /// The user's workspace, for the new access token.
    pub workspace_id: i64,
    /// The successor refresh token (plain text; only its hash is stored).
    pub refresh_token: String,
}

/// What a logout revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// The family.
    pub family_id: Uuid,
    /// Tokens of the family that were live until now (0 when it was already revoked).
    pub tokens: u64,
}

/// Stores a new token for `user_id` in `family_id`, valid for `ttl_seconds`, and returns its plain text.
async fn insert(
    conn: &mut PgConnection,
    family_id: Uuid,
    user_id: i64,
    ttl_seconds: u64,
) -> Result<String, sqlx::Error> {
    let token = tokens::new_opaque_token();
    sqlx::query(
        "INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, expires_at) \
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))",
    )
    .bind(Uuid::now_v7())
    .bind(family_id)
    .bind(user_id)
    .bind(tokens::hash_opaque_token(&token))
    .bind(ttl_seconds as f64)
    .execute(conn)
    .await?;
    Ok(token)
}

/// Starts a new family for `user_id` (a sign-in or sign-up) on `conn` — pass the transaction of the sign-in —
/// and returns its first token.
pub async fn start_family(conn: &mut PgConnection, user_id: i64, ttl_seconds: u64) -> Result<String, sqlx::Error> {
    insert(conn, Uuid::new_v4(), user_id, ttl_seconds).await
}

/// A presented token's row, read under its family's lock.
#[derive(sqlx::FromRow)]
struct Presented {
    id: Uuid,
    family_id: Uuid,
    user_id: i64,
    workspace_id: i64,
    expired: bool,
    used: bool,
    revoked: bool,
}

/// Redeems `presented`: marks it used and issues its successor in the same family, valid for `ttl_seconds`.
///
/// Runs its own transaction, because a reuse must commit the family's revocation even though the caller is
/// refused. The family's lock ([`lock_family`]) serialises it with every other rotation and revocation of the
/// family: a second redemption of one token waits, then sees the token used and revokes the family.
pub async fn rotate(pool: &PgPool, presented: &str, ttl_seconds: u64) -> Result<Rotated, RefreshError> {
    let token_hash = tokens::hash_opaque_token(presented);
    let mut tx = pool.begin().await?;
    // A token's family never changes, so it can be read before the lock that guards the family is taken.
    let family_id: Option<Uuid> = sqlx::query_scalar("SELECT family_id FROM refresh_tokens WHERE token_hash = $1")
        .bind(&token_hash)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(family_id) = family_id else {
        return Err(RefreshError::Unknown);
    };
    lock_family(&mut tx, family_id).await?;
    let row: Option<Presented> = sqlx::query_as(
        "SELECT rt.id, rt.family_id, rt.user_id, u.workspace_id, rt.expires_at <= now() AS expired, \
                rt.used_at IS NOT NULL AS used, rt.revoked_at IS NOT NULL AS revoked \
         FROM refresh_tokens rt JOIN users u ON u.id = rt.user_id \
         WHERE rt.token_hash = $1",
    )
    .bind(&token_hash)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(RefreshError::Unknown);
    };
    if row.revoked {
        return Err(RefreshError::Revoked);
    }
    if row.used {
        revoke(&mut tx, row.family_id).await?;
        tx.commit().await?;
        return Err(RefreshError::Reused {
            family_id: row.family_id,
            user_id: row.user_id,
        });
    }
    if row.expired {
        return Err(RefreshError::Expired);
    }
    sqlx::query("UPDATE refresh_tokens SET used_at = now() WHERE id = $1")
        .bind(row.id)
        .execute(&mut *tx)
        .await?;
    let refresh_token = insert(&mut tx, row.family_id, row.user_id, ttl_seconds).await?;
    tx.commit().await?;
    Ok(Rotated {
        user_id: row.user_id,
        workspace_id: row.workspace_id,
        refresh_token,
    })
}

/// Takes the lock of `family_id` until the end of the transaction on `conn`.
///
/// Why a lock of the family and not of its rows: a revocation's `UPDATE` sees only the tokens committed when it
/// started. Waiting on the row of the token being rotated, it would then revoke that row but miss the successor
/// the rotation was inserting, which would stay valid after a logout or a detected reuse. Every rotation and
/// revocation of a family takes this lock first, so a revocation starts only after a rotation committed.
async fn lock_family(conn: &mut PgConnection, family_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2::text))")
        .bind(FAMILY_LOCK_CLASS)
        .bind(family_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The first key of the families' advisory locks: keeps them apart from any other advisory lock.
const FAMILY_LOCK_CLASS: i32 = 0x5246_5448; // "RFTH"

/// Revokes every live token of `family_id`; returns how many were live.
async fn revoke(conn: &mut PgConnection, family_id: Uuid) -> Result<u64, sqlx::Error> {
    lock_family(&mut *conn, family_id).await?;
    let done = sqlx::query("UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL")
        .bind(family_id)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected())
}

/// Revokes the family of `presented` when it belongs to `user_id` (a logout), on `conn` — pass the transaction
/// that also records the logout. `None` when the token is unknown or another user's. Used, expired or already
/// revoked tokens still name their family, so logging out with an older token of a session ends it all the same,
/// until the family is deleted a day after its last token expired (`auth::prune`): the token is unknown then.
pub async fn revoke_family_of(
    conn: &mut PgConnection,
    presented: &str,
    user_id: i64,
) -> Result<Option<Revoked>, sqlx::Error> {
    let family_id: Option<Uuid> =
        sqlx::query_scalar("SELECT family_id FROM refresh_tokens WHERE token_hash = $1 AND user_id = $2")
            .bind(tokens::hash_opaque_token(presented))
            .bind(user_id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(family_id) = family_id else {
        return Ok(None);
    };
    let tokens = revoke(conn, family_id).await?;
    Ok(Some(Revoked { family_id, tokens }))
}
