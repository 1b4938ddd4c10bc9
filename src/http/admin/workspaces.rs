//! `/admin/workspaces`: customer workspaces.

use axum::{extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::require_workspace;
use crate::{
    auth::AdminAuth,
    domain::DisplayName,
    error::{ApiResult, ErrorBody},
    extract::{Json, Path},
    http::views::{self, Workspace},
    state::AppState,
    store,
};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_workspace, list_workspaces)).routes(routes!(get_workspace))
}

/// Body of `POST /admin/workspaces`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWorkspace {
    /// Display name: 1 to 255 bytes, no NUL.
    #[schema(min_length = 1, max_length = 255)]
    pub name: String,
}

/// `GET /admin/workspaces`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkspaceList {
    /// Every workspace, oldest first.
    pub workspaces: Vec<Workspace>,
}

/// Creates a workspace.
#[utoipa::path(post, path = "/admin/workspaces", tag = "admin", security(("admin_token" = [])),
    request_body = NewWorkspace,
    responses((status = 201, body = Workspace), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn create_workspace(
    _: AdminAuth,
    State(state): State<AppState>,
    Json(body): Json<NewWorkspace>,
) -> ApiResult<(StatusCode, Json<Workspace>)> {
    let name = DisplayName::parse(&body.name)?;
    let workspace = store::workspaces::create(&state.db, name.as_str()).await?;
    Ok((StatusCode::CREATED, Json(workspace.into())))
}

/// Lists workspaces.
#[utoipa::path(get, path = "/admin/workspaces", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, body = WorkspaceList), (status = 401, body = ErrorBody)))]
async fn list_workspaces(_: AdminAuth, State(state): State<AppState>) -> ApiResult<Json<WorkspaceList>> {
    Ok(Json(WorkspaceList { workspaces: views::all(store::workspaces::list(&state.db).await?) }))
}

/// One workspace.
#[utoipa::path(get, path = "/admin/workspaces/{ws}", tag = "admin", security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id")),
    responses((status = 200, body = Workspace), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_workspace(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(ws): Path<Uuid>,
) -> ApiResult<Json<Workspace>> {
    Ok(Json(require_workspace(&state, ws).await?.into()))
}
