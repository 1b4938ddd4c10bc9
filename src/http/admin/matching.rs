//! `/admin/workspaces/{ws}/partners/{partner}/matching`: how the members a partner's
//! webhooks send are matched to users.

use axum::{extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{require_partner, require_workspace};
use crate::{
    auth::AdminAuth,
    domain::{MatchingRules, PartnerName, matching::RuleSpec},
    error::{ApiError, ApiResult, ErrorBody},
    extract::{Json, Path},
    state::AppState,
    store,
};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_matching, put_matching, delete_matching))
}

/// One rule: read member field `field` as `as`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchingRule {
    /// A key of the member object (`email`, `mixpanel_distinct_id`, `user_id`);
    /// `a.b` reads key `b` of object `a` (`user_properties.email`).
    #[schema(min_length = 1, max_length = 255)]
    pub field: String,
    /// `external_id`, `device_id` (anonymous users only) or `alias`.
    #[serde(rename = "as")]
    #[schema(pattern = "^(external_id|device_id|alias)$")]
    pub target: String,
    /// The alias label, with `"as": "alias"` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias_label: Option<String>,
}

/// A partner's matching rules: a member is the user the first rule that finds one finds.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Matching {
    /// 1 to 8 rules, tried in order. On `GET`, null when none are set: each webhook's
    /// default then applies (Mixpanel: `mixpanel_distinct_id` as `external_id`;
    /// Amplitude: `user_id` as `external_id`).
    #[schema(max_items = 8)]
    pub rules: Option<Vec<MatchingRule>>,
}

fn from_domain(rules: Option<MatchingRules>) -> Matching {
    let rules = rules.map(|rules| {
        rules
            .specs()
            .into_iter()
            .map(|RuleSpec { field, target, alias_label }| MatchingRule { field, target, alias_label })
            .collect()
    });
    Matching { rules }
}

async fn require_both(state: &AppState, ws: Uuid, partner: &PartnerName) -> ApiResult<()> {
    require_workspace(state, ws).await?;
    require_partner(state, partner.as_str()).await
}

/// The partner's matching rules in the workspace.
#[utoipa::path(get, path = "/admin/workspaces/{ws}/partners/{partner}/matching", tag = "admin",
    security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id"), ("partner" = String, Path, description = "Partner name", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = Matching), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_matching(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((ws, partner)): Path<(Uuid, PartnerName)>,
) -> ApiResult<Json<Matching>> {
    require_both(&state, ws, &partner).await?;
    Ok(Json(from_domain(store::matching::find(&state.db, ws, partner.as_str()).await?)))
}

/// Sets the partner's matching rules in the workspace; they apply to the next message.
#[utoipa::path(put, path = "/admin/workspaces/{ws}/partners/{partner}/matching", tag = "admin",
    security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id"), ("partner" = String, Path, description = "Partner name", pattern = "^[a-z0-9_-]{1,64}$")),
    request_body = Matching,
    responses((status = 200, body = Matching), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn put_matching(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((ws, partner)): Path<(Uuid, PartnerName)>,
    Json(body): Json<Matching>,
) -> ApiResult<Json<Matching>> {
    // No rules at all are as wrong as an empty list.
    let specs = body
        .rules
        .unwrap_or_default()
        .into_iter()
        .map(|MatchingRule { field, target, alias_label }| RuleSpec { field, target, alias_label })
        .collect();
    let rules = MatchingRules::parse(specs)?;
    require_both(&state, ws, &partner).await?;
    store::matching::put(&state.db, ws, partner.as_str(), &rules).await?;
    Ok(Json(from_domain(Some(rules))))
}

/// Removes the partner's matching rules: each webhook's default applies again.
#[utoipa::path(delete, path = "/admin/workspaces/{ws}/partners/{partner}/matching", tag = "admin",
    security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id"), ("partner" = String, Path, description = "Partner name", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_matching(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((ws, partner)): Path<(Uuid, PartnerName)>,
) -> ApiResult<StatusCode> {
    require_both(&state, ws, &partner).await?;
    if store::matching::delete(&state.db, ws, partner.as_str()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no matching rules set for partner {}", partner.as_str())))
    }
}
