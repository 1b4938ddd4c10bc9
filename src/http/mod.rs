//! HTTP handlers, one file per resource. Each file has a `router()`; this module joins
//! them into one [`OpenApiRouter`], so every route is documented where it is defined.

pub mod admin;
pub mod health;
pub mod ndjson;
pub mod paging;
pub mod partners;
pub mod segments;
pub mod views;
pub mod webhooks;

use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

/// Every route of the service, with its OpenAPI description.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(health::router())
        .merge(admin::router())
        .merge(partners::router())
        .merge(segments::router())
        .merge(webhooks::router())
}
