//! The OpenAPI document (`/api-docs/openapi.json`) and its interactive UI (`/swagger-ui`). Paths are collected
//! from the handlers' `#[utoipa::path]` annotations by each module's `OpenApiRouter`.

use crate::state::AppState;
use axum::Router;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

#[derive(OpenApi)]
#[openapi(
    info(title = "Fechatter chat API", description = "Workspaces, chats, messages, files, search and live updates."),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// Declares the `bearer` security scheme referenced by protected routes.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The document's fixed parts.
pub fn base() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// Serves the document and the UI.
pub fn router(openapi: utoipa::openapi::OpenApi) -> Router<AppState> {
    Router::new().merge(SwaggerUi::new("/swagger-ui").url("/api-docs/openapi.json", openapi))
}
