//! Layers every route shares: request metrics by matched route, the JSON body limit, CORS limited to the
//! configured origins, request tracing, an `error_occurred` analytics event for every 5xx answer (written beside
//! the answer, never holding it up; best effort), JSON 404/405 fallbacks, and `Connection: close` after refusing a
//! request whose body was not read. A handler that panics answers an opaque JSON 500, like any other
//! internal error, instead of dropping the connection.

use crate::analytics::{CLIENT_HEADERS, ClientInfo};
use crate::auth::bearer_token;
use crate::error::{ApiError, InternalErrorReport};
use crate::metrics::{RouteLabel, RouteLabels};
use crate::state::AppState;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse as _, Response};
use fechatter_protos::v1::ErrorOccurredEvent;
use fechatter_protos::v1::analytics_event::EventType;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

/// Wraps `router` in the shared layers.
pub fn apply(router: Router<AppState>, state: &AppState) -> Router<AppState> {
    let origins: Vec<HeaderValue> = state
        .settings
        .server
        .cors_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
        .allow_headers(allowed_headers());
    router
        .fallback(fechatter_service::http::not_found)
        .method_not_allowed_fallback(fechatter_service::http::method_not_allowed)
        // Inside `observe`, so that a panicking handler is counted and recorded as the 500 it becomes.
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(middleware::from_fn(fechatter_service::http::close_after_refused_body))
        .layer(DefaultBodyLimit::max(state.settings.server.max_body_bytes))
        .layer(cors)
        .layer(TraceLayer::new_for_http())
}

/// The answer of a handler that panicked: the opaque 500 of every internal error, its cause logged.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    ApiError::Internal(anyhow::anyhow!("request handler panicked: {message}")).into_response()
}

/// The request headers browsers may send cross-origin: the credentials, the body's type, and the client
/// headers every analytics event's context is read from (a preflight refusing those would drop them).
fn allowed_headers() -> Vec<HeaderName> {
    let client = CLIENT_HEADERS.into_iter().map(HeaderName::from_static);
    [header::AUTHORIZATION, header::CONTENT_TYPE]
        .into_iter()
        .chain(client)
        .collect()
}

/// The method as a metric label: the standard methods by name, any other as `OTHER`. The server accepts any
/// token as a method, of any length, and a label per distinct one would let anyone, unauthenticated, grow the
/// metrics (and the server's memory) without bound.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// Counts and times the request; records `error_occurred` when the answer is a 5xx.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = method_label(request.method()).to_owned();
    let (mut parts, body) = request.into_parts();
    let client = <ClientInfo as axum::extract::FromRequestParts<AppState>>::from_request_parts(&mut parts, &state)
        .await
        .ok();
    // Verified only when a 5xx needs the caller: the route's `AuthUser` has verified it already, and a second
    // signature check on every request is a noticeable share of a message send.
    let authorization = parts.headers.get(header::AUTHORIZATION).cloned();
    let started = std::time::Instant::now();
    let response = next.run(Request::from_parts(parts, body)).await;
    let status = response.status().as_u16();
    state
        .metrics
        .requests
        .get_or_create(&RouteLabels {
            route: route.clone(),
            method,
            status,
        })
        .inc();
    state
        .metrics
        .latency
        .get_or_create(&RouteLabel { route: route.clone() })
        .observe(started.elapsed().as_secs_f64());
    if let (Some(report), Some(client)) = (response.extensions().get::<InternalErrorReport>(), client) {
        let caller = authorization
            .as_ref()
            .and_then(bearer_token)
            .and_then(|t| state.keys.verify(t).ok());
        let context = match caller.and_then(|c| Some((c.sub.parse::<i64>().ok()?, c.ws))) {
            Some((user_id, workspace_id)) => client.context(user_id, workspace_id),
            None => client.anonymous_context(),
        };
        let kind = EventType::ErrorOccurred(ErrorOccurredEvent {
            error_type: "http_5xx".into(),
            error_code: status.to_string(),
            error_message: "internal error".into(),
            stack_trace: String::new(),
            context: format!("{route}: {}", report.0.chars().take(512).collect::<String>()),
        });
        // Best effort, in its own transaction and its own task: the request already failed, and the database may
        // be why; waiting for a connection here delayed the 500 by the pool's acquire timeout.
        state.analytics.record_detached(&state.pool, kind, context);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_answers_the_opaque_500_that_records_error_occurred() {
        let response = panic_response(Box::new("index out of bounds"));
        assert_eq!(response.status(), axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        let report = response.extensions().get::<InternalErrorReport>().expect("reported");
        assert!(report.0.contains("index out of bounds"), "{}", report.0);
        let response = panic_response(Box::new(String::from("owned message")));
        assert!(
            response
                .extensions()
                .get::<InternalErrorReport>()
                .expect("reported")
                .0
                .contains("owned message")
        );
    }

    #[test]
    fn only_standard_methods_get_a_metric_label_of_their_own() {
        assert_eq!(method_label(&Method::POST), "POST");
        let custom = Method::from_bytes(&[b'M'; 300]).expect("a valid token");
        assert_eq!(method_label(&custom), "OTHER");
        assert_eq!(method_label(&Method::from_bytes(b"PURGE").expect("token")), "OTHER");
    }
}
