//! `POST …/users/batch`: up to 10,000 profiles upserted in one request.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{super::require_workspace, fields::ProfileFields};
use crate::{
    auth::AdminAuth,
    domain::{
        InvalidAt,
        profile::{Profile, UpsertOutcome},
    },
    error::{ApiError, ApiResult, ErrorBody},
    extract::{Json, Path},
    state::AppState,
    store::{self, users::StoreLookups},
};

/// Most items in one `POST …/users/batch`.
pub const MAX_BATCH_USERS: usize = 10_000;

/// Body of `POST …/users/batch`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// The profiles, upserted in order; at most 10,000.
    #[schema(max_items = 10000)]
    pub users: Vec<ProfileFields>,
}

/// What happened to one batch item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ItemStatus {
    /// A new user was created.
    Created,
    /// An existing user matched and got the item's identifiers.
    Updated,
    /// The item conflicts with the store; nothing of it was applied.
    Error,
}

/// The outcome of one batch item.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchItemResult {
    /// The item's position in `users`, from 0.
    pub index: usize,
    /// The user created or matched; null on error.
    pub braze_id: Option<Uuid>,
    /// What happened.
    pub status: ItemStatus,
    /// Why the item failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Response of `POST …/users/batch`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    /// One result per item, in order.
    pub results: Vec<BatchItemResult>,
    /// Items that created a user.
    pub created: usize,
    /// Items that matched a user.
    pub updated: usize,
    /// Items that failed.
    pub failed: usize,
}

/// Upserts up to 10,000 profiles in order; each later item sees the earlier ones. An item
/// that conflicts fails alone; an invalid one fails the whole request (400, nothing stored).
#[utoipa::path(post, path = "/admin/workspaces/{ws}/users/batch", tag = "admin", security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id")),
    request_body = BatchRequest,
    responses((status = 200, body = BatchResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(super) async fn batch_upsert_users(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(ws): Path<Uuid>,
    Json(body): Json<BatchRequest>,
) -> ApiResult<Json<BatchResponse>> {
    require_workspace(&state, ws).await?;
    if body.users.len() > MAX_BATCH_USERS {
        return Err(ApiError::bad_request(format!(
            "users must hold at most {MAX_BATCH_USERS} items (got {})",
            body.users.len()
        )));
    }
    let profiles = body
        .users
        .into_iter()
        .enumerate()
        .map(|(index, fields)| Profile::try_from(fields).at(format_args!("users[{index}]")))
        .collect::<Result<Vec<_>, _>>()?;

    let mut tx = store::users::begin_writes(&state.db, ws).await?;
    let mut lookups = StoreLookups::for_workspace(&mut tx, ws).await?;
    let outcomes = store::users::upsert_profiles(&mut tx, ws, &profiles, &mut lookups).await?;
    state.db.commit(tx).await?;

    let mut response = BatchResponse { results: Vec::with_capacity(outcomes.len()), created: 0, updated: 0, failed: 0 };
    for (index, outcome) in outcomes.into_iter().enumerate() {
        let (braze_id, status, error) = match outcome {
            UpsertOutcome::Created(braze_id) => (Some(braze_id), ItemStatus::Created, None),
            UpsertOutcome::Updated(braze_id) => (Some(braze_id), ItemStatus::Updated, None),
            UpsertOutcome::Failed(reason) => (None, ItemStatus::Error, Some(reason)),
        };
        match status {
            ItemStatus::Created => response.created += 1,
            ItemStatus::Updated => response.updated += 1,
            ItemStatus::Error => response.failed += 1,
        }
        response.results.push(BatchItemResult { index, braze_id, status, error });
    }
    Ok(Json(response))
}
