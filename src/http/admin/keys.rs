//! A workspace's keys: data import keys (one set per partner) and REST API keys.

use axum::{extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{require_partner, require_workspace};
use crate::{
    auth::AdminAuth,
    domain::{DisplayName, InvalidAt, PartnerName, Scope},
    error::{ApiError, ApiResult, ErrorBody},
    extract::{Json, Path},
    http::views::{self, ApiKeyInfo, KeyInfo},
    keys::{KeyKind, NewKey},
    state::AppState,
    store,
};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_data_import_key, list_data_import_keys))
        .routes(routes!(revoke_data_import_key))
        .routes(routes!(create_api_key, list_api_keys))
        .routes(routes!(revoke_api_key))
}

/// A key just created: the only response that ever holds its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    /// The key's id, used to revoke it.
    pub id: Uuid,
    /// The full key. Store it now: only its hash is kept.
    pub key: String,
    /// Its first characters, as shown in listings.
    pub prefix: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

impl CreatedKey {
    /// The response for a stored key and its secret.
    pub fn new(info: store::keys::KeyInfo, key: NewKey) -> Self {
        CreatedKey { id: info.id, key: key.secret, prefix: info.prefix, created_at: info.created_at }
    }
}

/// `GET …/data-import-keys`.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    /// The keys, oldest first, without secrets.
    pub keys: Vec<KeyInfo>,
}

/// Generates a data import key of the workspace for the partner. The partner is enabled
/// for the workspace while at least one such key is valid.
#[utoipa::path(post, path = "/admin/workspaces/{ws}/partners/{partner}/data-import-keys", tag = "admin",
    security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id"), ("partner" = String, Path, description = "Partner name", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 201, body = CreatedKey), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn create_data_import_key(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((ws, partner)): Path<(Uuid, PartnerName)>,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    require_workspace(&state, ws).await?;
    require_partner(&state, partner.as_str()).await?;
    let key = NewKey::generate(KeyKind::DataImport);
    let mut tx = state.db.begin().await?;
    let info = store::keys::insert_data_import_key(&mut *tx, ws, partner.as_str(), &key).await?;
    state.db.commit(tx).await?;
    Ok((StatusCode::CREATED, Json(CreatedKey::new(info, key))))
}

/// Lists the workspace's data import keys for the partner, without secrets.
#[utoipa::path(get, path = "/admin/workspaces/{ws}/partners/{partner}/data-import-keys", tag = "admin",
    security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id"), ("partner" = String, Path, description = "Partner name", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = KeyList), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_data_import_keys(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((ws, partner)): Path<(Uuid, PartnerName)>,
) -> ApiResult<Json<KeyList>> {
    require_workspace(&state, ws).await?;
    require_partner(&state, partner.as_str()).await?;
    let keys = store::keys::list_data_import_keys(&state.db, ws, partner.as_str()).await?;
    Ok(Json(KeyList { keys: views::all(keys) }))
}

/// Invalidates a data import key at once.
#[utoipa::path(delete, path = "/admin/workspaces/{ws}/partners/{partner}/data-import-keys/{id}", tag = "admin",
    security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id"), ("partner" = String, Path, description = "Partner name", pattern = "^[a-z0-9_-]{1,64}$"),
        ("id" = Uuid, Path, description = "Key id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn revoke_data_import_key(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((ws, partner, id)): Path<(Uuid, PartnerName, Uuid)>,
) -> ApiResult<StatusCode> {
    require_workspace(&state, ws).await?;
    if store::keys::revoke_data_import_key(&state.db, ws, partner.as_str(), id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no data import key {id} for partner {partner} in this workspace")))
    }
}

/// Body of `POST /admin/workspaces/{ws}/api-keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    /// The operator's name for the key: 1 to 255 bytes.
    #[schema(min_length = 1, max_length = 255)]
    pub name: String,
    /// What it may do: `segments.read`.
    #[schema(min_items = 1, value_type = Vec<Scope>)]
    pub scopes: Vec<String>,
}

/// A REST API key just created, with its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApiKey {
    /// The key's id.
    pub id: Uuid,
    /// The operator's name for it.
    pub name: String,
    /// What it may do.
    pub scopes: Vec<String>,
    /// The full key (`rak_…`). Store it now: only its hash is kept.
    pub key: String,
    /// Its first characters.
    pub prefix: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// `GET /admin/workspaces/{ws}/api-keys`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyList {
    /// The keys, oldest first, without secrets.
    pub keys: Vec<ApiKeyInfo>,
}

/// Creates a REST API key for the segment filter API.
#[utoipa::path(post, path = "/admin/workspaces/{ws}/api-keys", tag = "admin", security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id")),
    request_body = NewApiKey,
    responses((status = 201, body = CreatedApiKey), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn create_api_key(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(ws): Path<Uuid>,
    Json(body): Json<NewApiKey>,
) -> ApiResult<(StatusCode, Json<CreatedApiKey>)> {
    let name = DisplayName::parse(&body.name)?;
    if body.scopes.is_empty() {
        return Err(ApiError::bad_request("scopes must name at least one scope, e.g. [\"segments.read\"]"));
    }
    let mut scopes = Vec::with_capacity(body.scopes.len());
    for (i, raw) in body.scopes.iter().enumerate() {
        let scope = Scope::parse(raw).at(format_args!("scopes[{i}]"))?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    require_workspace(&state, ws).await?;
    let key = NewKey::generate(KeyKind::RestApi);
    let mut tx = state.db.begin().await?;
    let info = store::keys::insert_api_key(&mut *tx, ws, name.as_str(), &scopes, &key).await?;
    state.db.commit(tx).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKey {
            id: info.id,
            name: info.name,
            scopes: info.scopes,
            key: key.secret,
            prefix: info.prefix,
            created_at: info.created_at,
        }),
    ))
}

/// Lists the workspace's REST API keys, without secrets.
#[utoipa::path(get, path = "/admin/workspaces/{ws}/api-keys", tag = "admin", security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id")),
    responses((status = 200, body = ApiKeyList), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_api_keys(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(ws): Path<Uuid>,
) -> ApiResult<Json<ApiKeyList>> {
    require_workspace(&state, ws).await?;
    Ok(Json(ApiKeyList { keys: views::all(store::keys::list_api_keys(&state.db, ws).await?) }))
}

/// Revokes a REST API key at once.
#[utoipa::path(delete, path = "/admin/workspaces/{ws}/api-keys/{id}", tag = "admin", security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id"), ("id" = Uuid, Path, description = "Key id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn revoke_api_key(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((ws, id)): Path<(Uuid, Uuid)>,
) -> ApiResult<StatusCode> {
    require_workspace(&state, ws).await?;
    if store::keys::revoke_api_key(&state.db, ws, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no API key {id} in this workspace")))
    }
}
