//! `/admin/workspaces/{ws}/users`: the user store. Batch upsert, streamed NDJSON import,
//! lookup by any identifier, identify, delete.

mod batch;
mod delete;
mod fields;
mod identify;
mod import;
mod load;
mod lookup;

use axum::extract::DefaultBodyLimit;
use utoipa_axum::{
    router::{OpenApiRouter, UtoipaMethodRouterExt},
    routes,
};
use uuid::Uuid;

use crate::{
    error::{ApiError, ApiResult},
    http::views::UserProfile,
    state::AppState,
    store::{self, users::UserLookup},
};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(batch::batch_upsert_users))
        // The import streams a body far larger than the JSON limit and enforces its own.
        .routes(routes!(import::import_users).layer(DefaultBodyLimit::disable()))
        .routes(routes!(lookup::find_user))
        .routes(routes!(lookup::get_user, delete::delete_user))
        .routes(routes!(identify::identify_user))
}

/// The profile of `braze_id` as answered, or 404.
async fn require_profile(state: &AppState, ws: Uuid, braze_id: Uuid) -> ApiResult<UserProfile> {
    let mut conn = state.db.acquire().await?;
    store::users::find_profile(&mut *conn, ws, &UserLookup::BrazeId(braze_id))
        .await?
        .map(UserProfile::from)
        .ok_or_else(|| ApiError::not_found(format!("unknown user {braze_id}")))
}
