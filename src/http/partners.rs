//! Routes for partners; filled in by its issue.

use utoipa_axum::router::OpenApiRouter;

use crate::app::AppState;

/// The partners routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
}
