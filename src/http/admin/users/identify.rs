//! `POST …/users/{braze_id}/identify`: an anonymous user gets an external id.

use axum::extract::State;
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{super::require_workspace, require_profile};
use crate::{
    auth::AdminAuth,
    domain::{ExternalId, InvalidAt},
    error::{ApiError, ApiResult, ErrorBody},
    extract::{Json, Path},
    http::views::UserProfile,
    state::AppState,
    store::{self, users::IdentifyOutcome},
};

/// Body of `POST …/users/{braze_id}/identify`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentifyRequest {
    /// The external id the anonymous user gets.
    #[schema(min_length = 1, max_length = 512)]
    pub external_id: String,
}

/// Identifies an anonymous user: it gets the external id. Giving a user the external id
/// it already has changes nothing.
#[utoipa::path(post, path = "/admin/workspaces/{ws}/users/{braze_id}/identify", tag = "admin",
    security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id"), ("braze_id" = Uuid, Path, description = "The user's braze_id")),
    request_body = IdentifyRequest,
    responses((status = 200, body = UserProfile), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn identify_user(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((ws, braze_id)): Path<(Uuid, Uuid)>,
    Json(body): Json<IdentifyRequest>,
) -> ApiResult<Json<UserProfile>> {
    let external_id = ExternalId::parse(body.external_id).at("external_id")?;
    require_workspace(&state, ws).await?;
    match store::users::identify(&state.db, ws, braze_id, &external_id).await? {
        IdentifyOutcome::Identified => Ok(Json(require_profile(&state, ws, braze_id).await?)),
        IdentifyOutcome::NotFound => Err(ApiError::not_found(format!("unknown user {braze_id}"))),
        IdentifyOutcome::HasOtherExternalId => {
            Err(ApiError::conflict(format!("user {braze_id} already has a different external_id")))
        }
        IdentifyOutcome::TakenBy(owner) => {
            Err(ApiError::conflict(format!("external_id already belongs to another user ({owner})")))
        }
    }
}
