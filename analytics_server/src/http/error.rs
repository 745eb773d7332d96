//! The API's error type: a status and a JSON body `{"error": code, "message": text}` naming the problem.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error answered to a client.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code (`invalid_protobuf`, `payload_too_large`, …).
    pub code: &'static str,
    /// What was wrong, for humans.
    pub message: String,
    /// The ids of the request's events, when the client must retry with them (see [`ApiError::retry_with`]).
    pub event_ids: Vec<String>,
}

impl ApiError {
    /// 400 with `code` and `message`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// Any status.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            event_ids: Vec::new(),
        }
    }

    /// This error, answered with `ids`, the event ids the server gave the request's events: for a failure after
    /// which the events may still be stored (a publish that timed out may yet reach JetStream), a retry must
    /// carry the same ids, so that the copies are deduplicated instead of stored twice.
    pub fn retry_with(mut self, ids: &[String]) -> Self {
        self.event_ids = ids.to_vec();
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.code, "message": self.message });
        if !self.event_ids.is_empty() {
            body["event_ids"] = serde_json::json!(self.event_ids);
        }
        (self.status, Json(body)).into_response()
    }
}
