//! The `events` routes. (Being implemented.)

use crate::state::AppState;
use utoipa_axum::router::OpenApiRouter;

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
}
