//! Routes for segments; filled in by its issue.

use utoipa_axum::router::OpenApiRouter;

use crate::app::AppState;

/// The segments routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
}
