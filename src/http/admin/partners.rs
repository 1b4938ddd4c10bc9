//! `/admin/partners`: partners and their partner API keys.

use axum::{extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::require_partner;
use crate::{
    auth::AdminAuth,
    domain::PartnerName,
    error::{ApiError, ApiResult, ErrorBody},
    extract::{Json, Path},
    http::{
        admin::keys::CreatedKey,
        views::{self, PartnerWithKeys},
    },
    keys::{KeyKind, NewKey},
    state::AppState,
    store,
};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_partner, list_partners))
        .routes(routes!(create_partner_api_key))
        .routes(routes!(revoke_partner_api_key))
}

/// Body of `POST /admin/partners`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPartner {
    /// Lowercase `[a-z0-9_-]{1,64}`, e.g. `kubit`.
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    pub name: String,
}

/// A created partner with its first partner API key, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedPartner {
    /// The partner's name.
    pub name: String,
    /// The partner's first API key (`pak_…`); only its hash is kept.
    pub partner_api_key: String,
}

/// `GET /admin/partners`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PartnerList {
    /// Every partner, by name.
    pub partners: Vec<PartnerWithKeys>,
}

/// Creates a partner and its first partner API key.
#[utoipa::path(post, path = "/admin/partners", tag = "admin", security(("admin_token" = [])),
    request_body = NewPartner,
    responses(
        (status = 201, body = CreatedPartner),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody),
    ))]
async fn create_partner(
    _: AdminAuth,
    State(state): State<AppState>,
    Json(body): Json<NewPartner>,
) -> ApiResult<(StatusCode, Json<CreatedPartner>)> {
    let name = PartnerName::parse(&body.name)?;
    let key = NewKey::generate(KeyKind::PartnerApi);
    let mut tx = state.db.begin().await?;
    if !store::partners::insert(&mut *tx, &name).await? {
        return Err(ApiError::conflict(format!("partner {name} already exists")));
    }
    store::keys::insert_partner_api_key(&mut *tx, &name, &key).await?;
    state.db.commit(tx).await?;
    Ok((StatusCode::CREATED, Json(CreatedPartner { name: name.to_string(), partner_api_key: key.secret })))
}

/// Lists partners with their keys (never the secrets).
#[utoipa::path(get, path = "/admin/partners", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, body = PartnerList), (status = 401, body = ErrorBody)))]
async fn list_partners(_: AdminAuth, State(state): State<AppState>) -> ApiResult<Json<PartnerList>> {
    Ok(Json(PartnerList { partners: views::all(store::partners::list_with_keys(&state.db).await?) }))
}

/// Issues another partner API key; existing keys stay valid, for rotation.
#[utoipa::path(post, path = "/admin/partners/{partner}/api-keys", tag = "admin", security(("admin_token" = [])),
    params(("partner" = String, Path, description = "Partner name", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 201, body = CreatedKey), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn create_partner_api_key(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(name): Path<PartnerName>,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    require_partner(&state, name.as_str()).await?;
    let key = NewKey::generate(KeyKind::PartnerApi);
    let mut tx = state.db.begin().await?;
    let info = store::keys::insert_partner_api_key(&mut *tx, &name, &key).await?;
    state.db.commit(tx).await?;
    Ok((StatusCode::CREATED, Json(CreatedKey::new(info, key))))
}

/// Revokes a partner API key: it stops working with the next request.
#[utoipa::path(delete, path = "/admin/partners/{partner}/api-keys/{id}", tag = "admin", security(("admin_token" = [])),
    params(("partner" = String, Path, description = "Partner name", pattern = "^[a-z0-9_-]{1,64}$"), ("id" = Uuid, Path, description = "Key id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn revoke_partner_api_key(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((partner, id)): Path<(PartnerName, Uuid)>,
) -> ApiResult<StatusCode> {
    if store::keys::revoke_partner_api_key(&state.db, partner.as_str(), id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("partner {partner} has no API key {id}")))
    }
}
