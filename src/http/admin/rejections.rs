//! `/admin/workspaces/{ws}/partners/{partner}/rejections`: what the partner was last
//! refused, so an operator can see what a partner's UI is complaining about.

use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{require_partner, require_workspace};
use crate::{
    auth::AdminAuth,
    domain::PartnerName,
    error::{ApiResult, ErrorBody},
    extract::{Json, Path},
    http::views::{self, Rejection},
    state::AppState,
    store,
};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_rejections))
}

/// The partner's last rejected requests in the workspace.
#[derive(Debug, Serialize, ToSchema)]
pub struct RejectionList {
    /// Newest first, at most 100.
    pub rejections: Vec<Rejection>,
}

/// The last requests of the workspace's partner answered 4xx after its data import key
/// was accepted (a bad body, an unknown field, a rate limit), newest first: time, route,
/// status, message and request id.
#[utoipa::path(get, path = "/admin/workspaces/{ws}/partners/{partner}/rejections", tag = "admin",
    security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id"), ("partner" = String, Path, description = "Partner name", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = RejectionList), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_rejections(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((ws, partner)): Path<(Uuid, PartnerName)>,
) -> ApiResult<Json<RejectionList>> {
    require_workspace(&state, ws).await?;
    require_partner(&state, partner.as_str()).await?;
    let rejections = store::rejections::list(&state.db, ws, partner.as_str()).await?;
    Ok(Json(RejectionList { rejections: views::all(rejections) }))
}
