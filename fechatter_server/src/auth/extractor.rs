//! The authenticated caller, taken from `Authorization: Bearer <access token>`. A route that takes an
//! [`AuthUser`] cannot be reached without a valid token: the extractor answers 401 first.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

/// The caller of an authenticated request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthUser {
    /// User id.
    pub user_id: i64,
    /// The user's workspace.
    pub workspace_id: i64,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| ApiError::Unauthorized("missing Authorization: Bearer token".into()))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::Unauthorized("Authorization must be `Bearer <token>`".into()))?;
        let claims = state
            .keys
            .verify(token.trim())
            .map_err(|e| ApiError::Unauthorized(format!("invalid access token: {e}")))?;
        let user_id = claims
            .sub
            .parse()
            .map_err(|_| ApiError::Unauthorized("invalid access token subject".into()))?;
        Ok(Self {
            user_id,
            workspace_id: claims.ws,
        })
    }
}
