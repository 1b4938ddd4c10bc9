//! The operator admin API under `/admin`: every handler takes an [`AdminAuth`].
//!
//! [`AdminAuth`]: crate::auth::AdminAuth

mod cohorts;
mod keys;
mod matching;
mod partners;
mod rejections;
mod replace;
mod users;
mod workspaces;

use utoipa_axum::router::OpenApiRouter;
use uuid::Uuid;

use crate::{
    error::{ApiError, ApiResult},
    state::AppState,
    store::{self, workspaces::Workspace},
};

/// Every `/admin` route.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(partners::router())
        .merge(workspaces::router())
        .merge(keys::router())
        .merge(users::router())
        .merge(cohorts::router())
        .merge(matching::router())
        .merge(rejections::router())
}

/// The workspace of a path, or 404.
pub(crate) async fn require_workspace(state: &AppState, workspace_id: Uuid) -> ApiResult<Workspace> {
    let mut conn = state.db.acquire().await?;
    store::workspaces::find(&mut *conn, workspace_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("unknown workspace {workspace_id}")))
}

/// 404 unless the partner exists.
pub(crate) async fn require_partner(state: &AppState, partner: &str) -> ApiResult<()> {
    let mut conn = state.db.acquire().await?;
    if store::partners::exists(&mut *conn, partner).await? {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("unknown partner {partner}")))
    }
}
