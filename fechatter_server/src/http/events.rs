//! `GET /api/events`: the caller's live updates as server-sent events. [`crate::live`] explains how changes
//! reach every instance and how each stream is filtered to the caller's chats.
//!
//! Events: `ready` once the stream is live (changes committed from then on will all arrive), then
//! `message_created`, `message_updated`, `message_deleted`, `member_joined`, `member_left`, `chat_updated` and
//! `chat_deleted`, each with JSON data holding `kind`, `chat_id` and `message_id` + `message` or `user_id`; and
//! `resync` when changes may have been missed, after which the client should refetch what it shows. A comment
//! every 15 s keeps proxies from closing an idle stream. The stream ends when the access token expires (the
//! client reconnects with a fresh one) and when the server shuts down.

use crate::auth::{AuthUser, bearer_token};
use crate::error::ApiError;
use crate::live::{Delivery, Subscription};
use crate::state::AppState;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::{Stream, StreamExt as _};
use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Interval of keep-alive comments.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(events))
}

/// Live updates of the caller's chats (server-sent events).
#[utoipa::path(
    get,
    path = "/api/events",
    tag = "events",
    responses(
        (status = 200, description = "A stream of server-sent events: `ready`, then changes in the caller's chats \
            (`message_created`, `message_updated`, `message_deleted`, `member_joined`, `member_left`, \
            `chat_updated`, `chat_deleted`) and `resync` when some may have been missed",
            content_type = "text/event-stream", body = String),
        (status = 401, description = "Missing or invalid access token"),
        (status = 429, description = "Too many open streams on this server, or of this user (16)"),
    ),
    security(("bearer" = []))
)]
async fn events(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let subscription = state
        .live
        .subscribe(state.pool.clone(), user.user_id)
        .map_err(|refused| ApiError::TooManyRequests(refused.to_string()))?;
    let token_left = token_lifetime_left(&state, &headers);
    let stream = futures::stream::unfold(subscription, |mut s: Subscription| async move {
        let delivery = s.next().await?;
        Some((Ok(sse_event(delivery)), s))
    })
    .take_until(state.live.stopped())
    .take_until(tokio::time::sleep(token_left));
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// How long the caller's access token stays valid (`AuthUser` has verified it already).
fn token_lifetime_left(state: &AppState, headers: &HeaderMap) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    headers
        .get(AUTHORIZATION)
        .and_then(bearer_token)
        .and_then(|token| state.keys.verify(token).ok())
        .map(|claims| Duration::from_secs(claims.exp.saturating_sub(now)))
        .unwrap_or(Duration::ZERO)
}

fn sse_event(delivery: Delivery) -> Event {
    match delivery {
        Delivery::Ready { chats } => Event::default()
            .event("ready")
            .data(serde_json::json!({ "kind": "ready", "chats": chats }).to_string()),
        Delivery::Event(event) => Event::default().event(event.kind.as_str()).data(&event.data),
        Delivery::Resync { missed } => Event::default()
            .event("resync")
            .data(serde_json::json!({ "kind": "resync", "missed": missed }).to_string()),
    }
}
