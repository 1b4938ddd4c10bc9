//! Amplitude's cohort webhook (default payload): `in_cohort: true` adds the users,
//! `false` removes them. The data import key travels as a bearer token (a custom
//! header the customer sets in Amplitude), and `message_id` makes delivery exactly-once:
//! Amplitude retries anything not answered within a second or two.

use axum::{
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::HeaderMap,
};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{as_changes, body_bytes, cohort_id_of, matching_rules, read_members};
use crate::{
    auth::{
        partner::PartnerCaller,
        rejections,
        webhook::{KeyIn, authenticate},
    },
    domain::{CohortName, ImportKind, ImportOutcome},
    error::{ApiError, ApiResult, ErrorBody},
    extract::{Json, Path, RequestId},
    http::partners::ImportResult,
    metrics,
    state::AppState,
    store::{
        self,
        cohorts::{CohortKey, Import},
    },
};

/// Longest `message_id` kept, in bytes.
const MAX_MESSAGE_ID_BYTES: usize = 255;

/// An Amplitude cohort webhook message; other fields (`computed_time`, …) are ignored.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AmplitudeMessage {
    /// The cohort's name in Amplitude: the cohort is renamed to it.
    pub cohort_name: String,
    /// Amplitude's id for the cohort (a string or a number).
    #[schema(value_type = String)]
    pub cohort_id: Value,
    /// `true`: these users entered the cohort; `false`: they left it.
    pub in_cohort: bool,
    /// The message's id: the same message delivered again changes nothing.
    pub message_id: Option<String>,
    /// The users, matched by the partner's matching rules (default: `user_id` as the
    /// external id; `user_properties.<name>` reads a property).
    #[schema(value_type = Vec<Object>, max_items = 10000)]
    pub users: Vec<Value>,
}

/// Applies an Amplitude cohort webhook message: all or nothing, once per `message_id`.
#[utoipa::path(post, path = "/webhooks/amplitude/{partner}", tag = "webhooks",
    params(("partner" = String, Path, description = "The partner created for Amplitude, e.g. amplitude", pattern = "^[a-z0-9_-]{1,64}$")),
    request_body = AmplitudeMessage,
    security(("import_key_bearer" = [])),
    responses((status = 200, body = ImportResult, description = "Applied, or applied before under the same message_id (the same counts)"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 429, body = ErrorBody)))]
pub(super) async fn receive(
    State(state): State<AppState>,
    request_id: RequestId,
    Path(partner): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<ImportResult>> {
    let (caller, key_id) = authenticate(&state, &partner, &headers, KeyIn::Bearer).await?;
    let applied = apply(&state, &caller, key_id, &request_id, body).await;
    rejections::noting(&state, &caller, ROUTE, &request_id, applied).map(Json)
}

/// The route, as its rejections name it.
const ROUTE: &str = "/webhooks/amplitude/{partner}";

async fn apply(
    state: &AppState,
    caller: &PartnerCaller,
    key_id: Uuid,
    request_id: &RequestId,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<ImportResult> {
    state.partner_rate_limit.check(key_id)?;
    let body = body_bytes(body)?;
    let message: AmplitudeMessage =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let cohort_id = cohort_id_of(Some(&message.cohort_id), "cohort_id")?;
    let name = CohortName::parse(message.cohort_name)
        .map_err(|_| ApiError::bad_request("cohort_name: must be 1 to 255 bytes without NUL"))?;
    let message_id = message.message_id.filter(|id| !id.is_empty());
    if message_id.as_ref().is_some_and(|id| id.len() > MAX_MESSAGE_ID_BYTES || id.contains('\0')) {
        return Err(ApiError::bad_request("message_id: must be at most 255 bytes without NUL"));
    }
    let rules = matching_rules(state, caller, "user_id").await?;
    let (members, unreadable) = read_members(&rules, "users", &message.users)?;
    if members.is_empty() && unreadable == 0 {
        return Ok(ImportResult::from(ImportOutcome::default()));
    }
    let key = CohortKey::new(caller.workspace_id, &caller.partner, &cohort_id);
    let import = Import {
        name: Some(&name),
        unreadable,
        message_id: message_id.as_deref(),
        ..Import::new(ImportKind::Amplitude, request_id.as_str(), state.config.unmatched_retention())
    };
    let _turn = state.cohort_imports.enter(key).await?;
    let applied = store::cohorts::import(&state.db, key, &import, &as_changes(members, !message.in_cohort)).await?;
    if !applied.repeated {
        metrics::record_import(&caller.partner, ImportKind::Amplitude, applied.outcome);
    }
    Ok(ImportResult::from(applied.outcome))
}
