//! `GET …/users` (by any identifier) and `GET …/users/{braze_id}`.

use axum::extract::State;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::{super::require_workspace, require_profile};
use crate::{
    auth::AdminAuth,
    domain::{Alias, DeviceId, ExternalId, Invalid, InvalidAt},
    error::{ApiError, ApiResult, ErrorBody},
    extract::{Json, Path, Query},
    http::views::UserProfile,
    state::AppState,
    store::{self, users::UserLookup},
};

/// Query of `GET …/users`: exactly one identifier.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UserQuery {
    /// Find the user with this external id.
    pub external_id: Option<String>,
    /// Find the user with this device id.
    pub device_id: Option<String>,
    /// Find the user with this alias (with `alias_name`).
    pub alias_label: Option<String>,
    /// Find the user with this alias (with `alias_label`).
    pub alias_name: Option<String>,
}

impl UserQuery {
    /// The lookup the query asks for; refused unless it names exactly one valid identifier.
    fn into_lookup(self) -> Result<UserLookup, Invalid> {
        match (self.external_id, self.device_id, self.alias_label, self.alias_name) {
            (Some(external_id), None, None, None) => {
                Ok(UserLookup::ExternalId(ExternalId::parse(external_id).at("external_id")?))
            }
            (None, Some(device_id), None, None) => {
                Ok(UserLookup::DeviceId(DeviceId::parse(device_id).at("device_id")?))
            }
            // The half at fault is the query parameter.
            (None, None, Some(label), Some(name)) => Ok(UserLookup::Alias(Alias::parse(label, name)?)),
            (None, None, None, None) => Err(Invalid::new(
                "give one of the query parameters external_id, device_id, or alias_label with alias_name",
            )),
            _ => Err(Invalid::new(
                "give exactly one of the query parameters external_id, device_id, or alias_label with alias_name",
            )),
        }
    }
}

/// Finds a user by external id, device id, or alias.
#[utoipa::path(get, path = "/admin/workspaces/{ws}/users", tag = "admin", security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id"), UserQuery),
    responses((status = 200, body = UserProfile), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(super) async fn find_user(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(ws): Path<Uuid>,
    Query(query): Query<UserQuery>,
) -> ApiResult<Json<UserProfile>> {
    let lookup = query.into_lookup()?;
    require_workspace(&state, ws).await?;
    let mut conn = state.db.acquire().await?;
    store::users::find_profile(&mut *conn, ws, &lookup)
        .await?
        .map(|profile| Json(profile.into()))
        .ok_or_else(|| ApiError::not_found("no user matches the lookup"))
}

/// One user, by braze_id.
#[utoipa::path(get, path = "/admin/workspaces/{ws}/users/{braze_id}", tag = "admin", security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id"), ("braze_id" = Uuid, Path, description = "The user's braze_id")),
    responses((status = 200, body = UserProfile), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_user(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((ws, braze_id)): Path<(Uuid, Uuid)>,
) -> ApiResult<Json<UserProfile>> {
    require_workspace(&state, ws).await?;
    Ok(Json(require_profile(&state, ws, braze_id).await?))
}
