//! The `users` routes: the caller's own profile (`GET /api/users/me`) and the members of the caller's workspace
//! (`GET /api/users`, a page at a time). The workspace always comes from the access token, never from the request,
//! so no caller can list the users of another workspace.

use super::extract::{ApiQuery, empty_as_none};
use crate::auth::AuthUser;
use crate::chat::validate;
use crate::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::{IntoParams, ToSchema};
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

/// A page of the workspace's members.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MembersQuery {
    /// Only users with a greater id (the last id of the previous page); empty means absent.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub after: Option<i64>,
    /// Users per page, 1 to 100 (default 50, also when empty).
    #[serde(default, deserialize_with = "empty_as_none")]
    pub limit: Option<i64>,
}

/// The members of the caller's workspace, by id, a page at a time: a workspace may hold any number of users, and
/// an answer holds at most 100.
#[utoipa::path(get, path = "/api/users", tag = "users", params(MembersQuery),
    responses((status = 200, body = Vec<Member>,
            description = "Members by id; pass the last id as `after` for the next page (a short page is the last)"),
        (status = 400, description = "Invalid limit or after"),
        (status = 401, description = "missing, invalid or expired token")),
    security(("bearer" = [])))]
async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(query): ApiQuery<MembersQuery>,
) -> Result<Json<Vec<Member>>, ApiError> {
    let limit = validate::page_limit(query.limit)?;
    let members = sqlx::query_as(
        "SELECT id, fullname, email FROM users WHERE workspace_id = $1 AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(user.workspace_id)
    .bind(query.after.unwrap_or(i64::MIN))
    .bind(limit)
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(members))
}
