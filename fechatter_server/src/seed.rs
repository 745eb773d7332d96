//! The development seed (`fechatter_server seed`): a workspace and the `super@none.org` / `password123` user
//! the seed document signs in with. Idempotent. Never part of the migrations, so production databases never
//! get a known password.

use crate::auth::password;
use sqlx::PgPool;

/// E-mail of the development user.
pub const SUPER_EMAIL: &str = "super@none.org";
/// Password of the development user.
pub const SUPER_PASSWORD: &str = "password123";

/// Creates the development workspace and user when missing; returns the user's id.
pub async fn run(pool: &PgPool) -> anyhow::Result<i64> {
    if let Some(id) = sqlx::query_scalar::<_, i64>("SELECT id FROM users WHERE email = $1")
        .bind(SUPER_EMAIL)
        .fetch_optional(pool)
        .await?
    {
        return Ok(id);
    }
    let hash = password::hash(SUPER_PASSWORD.to_owned()).await?;
    let mut tx = pool.begin().await?;
    let workspace_id: i64 = sqlx::query_scalar(
        "INSERT INTO workspaces (name) VALUES ('Fechatter') \
         ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id",
    )
    .fetch_one(&mut *tx)
    .await?;
    let user_id: i64 = sqlx::query_scalar(
        "INSERT INTO users (workspace_id, fullname, email, password_hash) VALUES ($1, 'Super User', $2, $3) \
         ON CONFLICT (email) DO UPDATE SET email = EXCLUDED.email RETURNING id",
    )
    .bind(workspace_id)
    .bind(SUPER_EMAIL)
    .bind(hash)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("UPDATE workspaces SET owner_id = $1 WHERE id = $2 AND owner_id IS NULL")
        .bind(user_id)
        .bind(workspace_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(user_id)
}
