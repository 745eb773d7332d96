//! The API's error type: every refusal is `{"error": code, "message": text}` with the right 4xx; a 5xx is
//! opaque to the client and its cause is logged (with the whole chain).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed; the message says how.
    #[error("{1}")]
    BadRequest(&'static str, String),
    /// 401: missing, invalid or expired credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: authenticated, but not allowed (e.g. not the owner).
    #[error("{0}")]
    Forbidden(String),
    /// 404: absent, or not visible to the caller (outsiders never learn that a chat exists).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 409: conflicts with existing data (e.g. e-mail taken).
    #[error("{1}")]
    Conflict(&'static str, String),
    /// 413: body too large.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 413: storing the upload would take the workspace past its storage quota.
    #[error("{0}")]
    QuotaExceeded(String),
    /// 415: the body is not of the type the route takes; the message names the type expected.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 429: slow down; the message says what limit was reached.
    #[error("{0}")]
    TooManyRequests(String),
    /// 500: logged, never shown.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// 400 with a code and a message.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest(code, message.into())
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(..) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(..) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) | Self::QuotaExceeded(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(code, _) | Self::Conflict(code, _) => code,
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::QuotaExceeded(_) => "quota_exceeded",
            Self::UnsupportedMediaType(_) => "unsupported_content_type",
            Self::TooManyRequests(_) => "rate_limited",
            Self::Internal(_) => "internal",
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        Self::Internal(err.into())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> Self {
        Self::Internal(err)
    }
}

/// Marker put in a 5xx response's extensions so the middleware can emit `error_occurred` for it.
#[derive(Debug, Clone)]
pub struct InternalErrorReport(pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (
            status,
            Json(serde_json::json!({ "error": self.code(), "message": self.to_string() })),
        )
            .into_response();
        if let Self::Internal(err) = &self {
            tracing::error!(error = format!("{err:#}"), "request failed");
            response
                .extensions_mut()
                .insert(InternalErrorReport(format!("{err:#}")));
        }
        response
    }
}

/// `true` when `err` is a violation of the unique constraint `name`.
pub fn is_unique_violation(err: &sqlx::Error, name: &str) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.constraint() == Some(name))
}

/// `true` when `err` is a foreign-key violation: the row referenced (a chat, a user) was deleted meanwhile.
pub fn is_foreign_key_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_foreign_key_violation())
}
