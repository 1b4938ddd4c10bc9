//! Liveness and readiness probes (no authentication).

use axum::{extract::State, http::StatusCode};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{app::AppState, error::ErrorBody, store::database};

/// `/healthz` and `/readyz`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz))
}

/// Liveness: 200 while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "The process is up")))]
async fn healthz() -> StatusCode {
    StatusCode::OK
}

/// Readiness: 200 when the database answers, else 503.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "The database answers"),
    (status = 503, description = "The database does not answer", body = ErrorBody),
))]
async fn readyz(State(state): State<AppState>) -> Result<StatusCode, crate::error::ApiError> {
    database::ping(&state.db).await.map_err(|e| crate::error::ApiError::Unavailable(Some(e)))?;
    Ok(StatusCode::OK)
}
