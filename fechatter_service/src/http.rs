//! HTTP behaviour both services share, found by the hostile-input tests:
//!
//! * [`not_found`] and [`method_not_allowed`]: routers' fallbacks, so that an unknown path or a wrong method also
//!   answers the API's JSON error body (`{"error": code, "message": text}`) instead of an empty one.
//! * [`close_after_refused_body`]: a request refused before its body was read (415, 429, 401, a bad path…) leaves
//!   the unread body on the connection, and hyper then closes it without saying so; a client reusing the
//!   keep-alive connection failed its next request. Such answers now carry `Connection: close`, so clients open
//!   a new connection instead.

use axum::Json;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Fallback for paths no route matches: 404 with a JSON body.
pub async fn not_found(uri: Uri) -> Response {
    let body = json!({ "error": "not_found", "message": format!("no route for {}", uri.path()) });
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

/// Fallback for a known path with a method it does not take: 405 with a JSON body.
pub async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let body = json!({
        "error": "method_not_allowed",
        "message": format!("{} does not take {method}", uri.path()),
    });
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

/// Middleware: `Connection: close` on error answers to requests that carried a body (see the module header).
pub async fn close_after_refused_body(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > 0);
    let mut response = next.run(request).await;
    let status = response.status();
    if has_body && (status.is_client_error() || status.is_server_error()) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
