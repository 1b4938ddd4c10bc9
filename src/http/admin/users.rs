//! Admin routes for users; filled in by its issue.

use utoipa_axum::router::OpenApiRouter;

use crate::app::AppState;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
}
