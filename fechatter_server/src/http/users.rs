//! The `users` routes: the caller's own profile (`GET /api/users/me`) and the members of the caller's workspace
//! (`GET /api/users`). The workspace always comes from the access token, never from the request, so no caller
//! can list the users of another workspace.

use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(me)).routes(routes!(list))
}

/// A user's own view of their account.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct Profile {
    /// User id.
    pub id: i64,
    /// Display name.
    pub fullname: String,
    /// E-mail (stored lower-cased).
    pub email: String,
    /// The user's workspace.
    pub workspace_id: i64,
    /// The workspace's name.
    pub workspace_name: String,
    /// When the account was created.
    pub created_at: DateTime<Utc>,
}

/// A member of the caller's workspace, as listed.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct Member {
    /// User id.
    pub id: i64,
    /// Display name.
    pub fullname: String,
    /// E-mail.
    pub email: String,
}

/// The profile of `user_id`, read on `conn` (the sign-up reads it inside its own transaction).
pub async fn profile(conn: &mut PgConnection, user_id: i64) -> Result<Option<Profile>, sqlx::Error> {
    sqlx::query_as(
        "SELECT u.id, u.fullname, u.email, u.workspace_id, w.name AS workspace_name, u.created_at \
         FROM users u JOIN workspaces w ON w.id = u.workspace_id WHERE u.id = $1",
    )
    .bind(user_id)
    .fetch_optional(conn)
    .await
}

/// The caller's profile.
#[utoipa::path(get, path = "/api/users/me", tag = "users",
    responses((status = 200, body = Profile), (status = 401, description = "missing, invalid or expired token")),
    security(("bearer" = [])))]
async fn me(State(state): State<AppState>, user: AuthUser) -> Result<Json<Profile>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    // A valid token can outlive its account; the caller is then nobody.
    profile(&mut conn, user.user_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::Unauthorized("the token's user no longer exists".into()))
}

/// The members of the caller's workspace, by id.
#[utoipa::path(get, path = "/api/users", tag = "users",
    responses((status = 200, body = Vec<Member>), (status = 401, description = "missing, invalid or expired token")),
    security(("bearer" = [])))]
async fn list(State(state): State<AppState>, user: AuthUser) -> Result<Json<Vec<Member>>, ApiError> {
    let members = sqlx::query_as("SELECT id, fullname, email FROM users WHERE workspace_id = $1 ORDER BY id")
        .bind(user.workspace_id)
        .fetch_all(&state.pool)
        .await?;
    Ok(Json(members))
}
