//! Liveness and readiness probes (no authentication).

use std::time::Duration;

use axum::{extract::State, http::StatusCode};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    error::{ApiError, ErrorBody},
    state::AppState,
    store::database,
};

/// `/healthz` and `/readyz`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz))
}

/// Liveness: 200 while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "The process is up")))]
async fn healthz() -> StatusCode {
    StatusCode::OK
}

/// How long readiness waits for the database: probes time out after a second or so, and
/// a probe that times out tells the orchestrator less than a 503.
const READINESS_TIMEOUT: Duration = Duration::from_millis(900);

/// Readiness: 200 when the database answers within 0.9 s, else 503.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "The database answers"),
    (status = 503, description = "The database does not answer within 0.9 s", body = ErrorBody),
))]
async fn readyz(State(state): State<AppState>) -> Result<StatusCode, ApiError> {
    match tokio::time::timeout(READINESS_TIMEOUT, database::ping(&state.db)).await {
        Ok(Ok(())) => Ok(StatusCode::OK),
        Ok(Err(error)) => Err(ApiError::Unavailable(Some(error))),
        Err(_) => Err(ApiError::Unavailable(None)),
    }
}
