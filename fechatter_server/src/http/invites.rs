//! `POST /api/workspace/invites`: an invitation into the caller's workspace.
//!
//! Joining an existing workspace takes one: a sign-up that names a workspace creates it, and gets 409 when the
//! name is taken (naming it used to be enough to join, which let anyone into any workspace whose name they could
//! guess). Any member may invite; the invitation is an opaque random token, stored only as its SHA-256, usable by
//! several people until it expires after [`INVITE_TTL_DAYS`] days.

use crate::auth::{AuthUser, tokens};
use crate::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Days an invitation stays valid.
pub const INVITE_TTL_DAYS: i32 = 7;

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_invite))
}

/// An invitation, to be passed as `invite` to `POST /api/signup`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Invite {
    /// The invitation token (shown once; only its hash is stored).
    pub invite: String,
    /// The workspace it admits to.
    pub workspace_id: i64,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
}

/// Invite people into the caller's workspace.
#[utoipa::path(post, path = "/api/workspace/invites", tag = "users",
    responses(
        (status = 201, body = Invite),
        (status = 401, description = "missing, invalid or expired token, or the account no longer exists"),
    ),
    security(("bearer" = [])))]
async fn create_invite(State(state): State<AppState>, user: AuthUser) -> Result<(StatusCode, Json<Invite>), ApiError> {
    let invite = tokens::new_opaque_token();
    // Through the users table, so that a token outliving its account (or its workspace membership) invites nobody.
    let expires_at: Option<DateTime<Utc>> = sqlx::query_scalar(
        "INSERT INTO workspace_invites (token_hash, workspace_id, created_by, expires_at) \
         SELECT $1, u.workspace_id, u.id, now() + make_interval(days => $4) \
         FROM users u WHERE u.id = $2 AND u.workspace_id = $3 \
         RETURNING expires_at",
    )
    .bind(tokens::hash_opaque_token(&invite))
    .bind(user.user_id)
    .bind(user.workspace_id)
    .bind(INVITE_TTL_DAYS)
    .fetch_optional(&state.pool)
    .await?;
    let expires_at = expires_at.ok_or_else(|| ApiError::Unauthorized("the account no longer exists".into()))?;
    tracing::info!(
        user_id = user.user_id,
        workspace_id = user.workspace_id,
        "workspace invitation created"
    );
    Ok((
        StatusCode::CREATED,
        Json(Invite {
            invite,
            workspace_id: user.workspace_id,
            expires_at,
        }),
    ))
}

/// The workspace `invite` admits to, when it is a known invitation that has not expired.
pub async fn workspace_of(conn: &mut PgConnection, invite: &str) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT workspace_id FROM workspace_invites WHERE token_hash = $1 AND expires_at > now()")
        .bind(tokens::hash_opaque_token(invite))
        .fetch_optional(conn)
        .await
}
