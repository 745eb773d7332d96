//! The authenticated caller, taken from `Authorization: Bearer <access token>`. A route that takes an
//! [`AuthUser`] cannot be reached without a valid token: the extractor answers 401 first.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::HeaderValue;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

/// The token of an `Authorization: Bearer <token>` header value. The scheme's name is case-insensitive (RFC 9110,
/// section 11.1), so `bearer` and `BEARER` are read too; `None` for another scheme or no token.
pub fn bearer_token(value: &HeaderValue) -> Option<&str> {
    let (scheme, token) = value.to_str().ok()?.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

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
        let token = bearer_token(header)
            .ok_or_else(|| ApiError::Unauthorized("Authorization must be `Bearer <token>`".into()))?;
        let claims = state
            .keys
            .verify(token)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_read_in_any_case_and_other_schemes_are_not() {
        for value in ["Bearer abc", "bearer abc", "BEARER  abc ", " Bearer abc"] {
            assert_eq!(bearer_token(&HeaderValue::from_static(value)), Some("abc"), "{value:?}");
        }
        for value in ["Basic abc", "Bearer", "Bearer ", "Bearerabc", "abc"] {
            assert_eq!(bearer_token(&HeaderValue::from_static(value)), None, "{value:?}");
        }
    }
}
