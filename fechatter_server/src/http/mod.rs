//! The HTTP API: one `router()` per resource module, merged here with the OpenAPI document they describe,
//! plus the layers every route shares (metrics, body limit, CORS, tracing, `error_occurred` events).

mod auth;
mod chats;
mod docs;
mod events;
pub mod extract;
mod files;
mod health;
mod invites;
mod members;
mod messages;
mod middleware;
mod staging;
mod users;

pub use files::{MAX_FILES_PER_UPLOAD, storage_path};
pub use staging::remove_stale as remove_stale_uploads;

use crate::state::AppState;
use axum::Router;
use utoipa_axum::router::OpenApiRouter;

/// The whole API with its state and layers.
pub fn router(state: AppState) -> Router {
    let (api, openapi) = OpenApiRouter::with_openapi(docs::base())
        .merge(auth::router())
        .merge(users::router())
        .merge(invites::router())
        .merge(chats::router())
        .merge(members::router())
        .merge(messages::router())
        .merge(files::router(state.settings.files.max_upload_bytes))
        .merge(events::router())
        .split_for_parts();
    let api = api.merge(health::router()).merge(docs::router(openapi));
    middleware::apply(api, &state).with_state(state)
}
