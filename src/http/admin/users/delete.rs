//! `DELETE …/users/{braze_id}`.

use axum::{extract::State, http::StatusCode};
use uuid::Uuid;

use super::super::require_workspace;
use crate::{
    auth::AdminAuth,
    error::{ApiError, ApiResult, ErrorBody},
    extract::{Path, RequestId},
    state::AppState,
    store,
};

/// Deletes a user: its profile, identifiers and cohort memberships; the cohorts' member
/// counts drop with it.
#[utoipa::path(delete, path = "/admin/workspaces/{ws}/users/{braze_id}", tag = "admin", security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id"), ("braze_id" = Uuid, Path, description = "The user's braze_id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn delete_user(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((ws, braze_id)): Path<(Uuid, Uuid)>,
    request_id: RequestId,
) -> ApiResult<StatusCode> {
    require_workspace(&state, ws).await?;
    if store::users::delete(&state.db, ws, braze_id, request_id.as_str()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("unknown user {braze_id}")))
    }
}
