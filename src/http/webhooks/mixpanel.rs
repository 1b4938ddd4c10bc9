//! Mixpanel's cohort webhook ("Syncing cohorts to a custom webhook"): `add_members` and
//! `remove_members` apply at once; `members` is a full replace sent in pages under one
//! `mixpanel_session_id`, applied when its last page arrives (see
//! [`store::sessions`]). The data import key is HTTP Basic's password. Every answer the
//! handler gives has Mixpanel's shape, with `code` equal to the HTTP status: Mixpanel
//! pauses the sync on 400/401/403/404 and retries 429 and 5xx.

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, value::RawValue};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{as_changes, cohort_id_of, matching_rules, read_members};
use crate::{
    auth::{
        partner::PartnerCaller,
        rejections,
        webhook::{KeyIn, authenticate},
    },
    domain::{CohortName, ImportKind, MatchingRules},
    error::{ApiError, ApiResult},
    extract::{Json, Path, RequestId},
    metrics,
    state::AppState,
    store::{
        self,
        cohorts::{CohortKey, Import},
        sessions::{Page, PageMembers, PageOutcome},
    },
};

/// Most pages one `members` session may have.
const MAX_PAGES: i64 = 100_000;
/// Longest `mixpanel_session_id`, in bytes.
const MAX_SESSION_ID_BYTES: usize = 255;

/// A Mixpanel cohort webhook message.
#[derive(Debug, Deserialize, ToSchema)]
pub struct MixpanelMessage {
    /// `members` (the whole cohort, in pages: replace), `add_members` or `remove_members`.
    pub action: String,
    /// The cohort and its members.
    pub parameters: MixpanelParameters,
}

/// `parameters` of a Mixpanel message; other fields (`mixpanel_project_id`,
/// `mixpanel_cohort_description`, …) are ignored.
#[derive(Debug, Deserialize, ToSchema)]
pub struct MixpanelParameters {
    /// Mixpanel's id for the cohort: with the partner, it names the cohort.
    #[schema(value_type = String)]
    pub mixpanel_cohort_id: Option<Value>,
    /// The cohort's name: the cohort is renamed to it.
    pub mixpanel_cohort_name: Option<String>,
    /// The export a `members` page belongs to.
    pub mixpanel_session_id: Option<String>,
    /// Which page of the session this is (`members` only).
    pub page_info: Option<PageInfo>,
    /// The members, matched by the partner's matching rules (default:
    /// `mixpanel_distinct_id` as the external id).
    #[schema(value_type = Vec<Object>, max_items = 10000)]
    pub members: Box<RawValue>,
}

/// `page_info` of a `members` page.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PageInfo {
    /// Pages in the session.
    pub total_pages: i64,
    /// This page's number, 1 to `total_pages`.
    pub page_count: i64,
}

/// Every answer: `{"action", "status": "success"}`, or `"failure"` with the error.
#[derive(Debug, Serialize, ToSchema)]
pub struct MixpanelAnswer {
    /// The action sent (empty if none could be read).
    pub action: String,
    /// `success` or `failure`.
    pub status: &'static str,
    /// What went wrong, on failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<MixpanelError>,
}

/// The error of a failed Mixpanel message.
#[derive(Debug, Serialize, ToSchema)]
pub struct MixpanelError {
    /// What went wrong.
    pub message: String,
    /// The HTTP status.
    pub code: u16,
}

/// Applies a Mixpanel cohort webhook message; a `members` page is kept until its session
/// is complete.
#[utoipa::path(post, path = "/webhooks/mixpanel/{partner}", tag = "webhooks",
    params(("partner" = String, Path, description = "The partner created for Mixpanel, e.g. mixpanel", pattern = "^[a-z0-9_-]{1,64}$")),
    request_body = MixpanelMessage,
    security(("import_key_basic" = [])),
    responses((status = 200, body = MixpanelAnswer), (status = 400, body = MixpanelAnswer),
        (status = 401, body = MixpanelAnswer), (status = 413, body = MixpanelAnswer),
        (status = 429, body = MixpanelAnswer), (status = 500, body = MixpanelAnswer),
        (status = 503, body = MixpanelAnswer, description = "Retry after Retry-After seconds (the instance's own load shedding and deadline answer `{\"message\"}`, as on every route)")))]
pub(super) async fn receive(
    State(state): State<AppState>,
    request_id: RequestId,
    Path(partner): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = read_body(&headers, body, state.config.body_limit_bytes).await;
    // Read first, best effort, so that even a 401 names the action.
    let action = body.as_ref().ok().and_then(|b| action_of(b)).unwrap_or_default();
    let (caller, key_id) = match authenticate(&state, &partner, &headers, KeyIn::BasicPassword).await {
        Ok(authenticated) => authenticated,
        Err(error) => return failure(action, error),
    };
    let applied = apply(&state, &caller, key_id, &request_id, body).await;
    match rejections::noting(&state, &caller, ROUTE, &request_id, applied) {
        Ok(()) => Json(MixpanelAnswer { action, status: "success", error: None }).into_response(),
        Err(error) => failure(action, error),
    }
}

/// The route, as its rejections name it.
const ROUTE: &str = "/webhooks/mixpanel/{partner}";

async fn apply(
    state: &AppState,
    caller: &PartnerCaller,
    key_id: Uuid,
    request_id: &RequestId,
    body: ApiResult<Bytes>,
) -> ApiResult<()> {
    state.partner_rate_limit.check(key_id)?;
    let body = body?;
    let message: MixpanelMessage =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let kind = match message.action.as_str() {
        "members" => ImportKind::MixpanelMembers,
        "add_members" => ImportKind::MixpanelAddMembers,
        "remove_members" => ImportKind::MixpanelRemoveMembers,
        _ => {
            return Err(ApiError::bad_request("action: expected \"members\", \"add_members\" or \"remove_members\""));
        }
    };
    let parameters = message.parameters;
    let cohort_id = cohort_id_of(parameters.mixpanel_cohort_id.as_ref(), "parameters.mixpanel_cohort_id")?;
    let name =
        parameters.mixpanel_cohort_name.ok_or(()).and_then(|name| CohortName::parse(name).map_err(|_| ())).map_err(
            |()| ApiError::bad_request("parameters.mixpanel_cohort_name: must be 1 to 255 bytes without NUL"),
        )?;
    let members: Vec<Value> = serde_json::from_str(parameters.members.get())
        .map_err(|_| ApiError::bad_request("parameters.members: expected an array of objects"))?;
    let rules = matching_rules(state, caller, "mixpanel_distinct_id").await?;
    let (refs, unreadable) = read_members(&rules, "parameters.members", &members)?;
    let key = CohortKey::new(caller.workspace_id, &caller.partner, &cohort_id);
    let import = Import {
        name: Some(&name),
        unreadable,
        ..Import::new(kind, request_id.as_str(), state.config.unmatched_retention())
    };

    if kind != ImportKind::MixpanelMembers {
        if refs.is_empty() && unreadable == 0 {
            return Ok(());
        }
        let _turn = state.cohort_imports.enter(key).await?;
        let changes = as_changes(refs, kind == ImportKind::MixpanelRemoveMembers);
        let applied = store::cohorts::import(&state.db, key, &import, &changes).await?;
        metrics::record_import(&caller.partner, kind, applied.outcome);
        return Ok(());
    }

    let session_id = parameters
        .mixpanel_session_id
        .filter(|id| !id.is_empty() && id.len() <= MAX_SESSION_ID_BYTES && !id.contains('\0'))
        .ok_or_else(|| ApiError::bad_request("parameters.mixpanel_session_id: must be 1 to 255 bytes without NUL"))?;
    let (number, total_pages) = match parameters.page_info {
        Some(PageInfo { total_pages, page_count })
            if (1..=MAX_PAGES).contains(&total_pages) && (1..=total_pages).contains(&page_count) =>
        {
            (page_count as i32, total_pages as i32)
        }
        _ => {
            return Err(ApiError::bad_request(format!(
                "parameters.page_info: expected total_pages from 1 to {MAX_PAGES} and page_count from 1 to total_pages"
            )));
        }
    };
    let page = Page { session_id: &session_id, number, total_pages, members: parameters.members.get() };
    let _turn = state.cohort_imports.enter(key).await?;
    let outcome =
        store::sessions::receive_page(&state.db, key, &import, page, state.config.member_session_ttl(), |text| {
            page_members(&rules, text)
        })
        .await?;
    if let PageOutcome::Completed(outcome) = outcome {
        metrics::record_import(&caller.partner, kind, outcome);
    }
    Ok(())
}

/// The members of a stored page (validated when it was received), by `rules`.
fn page_members(rules: &MatchingRules, text: &str) -> PageMembers {
    let members: Vec<Value> = serde_json::from_str(text).unwrap_or_default();
    read_members(rules, "members", &members).unwrap_or_default()
}

/// The body, within `limit` bytes (413 at once when `Content-Length` says more), so that
/// its 413 too has Mixpanel's shape.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> ApiResult<Bytes> {
    let too_large = || ApiError::PayloadTooLarge("request body is too large".into());
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|error| {
        if std::error::Error::source(&error).is_some_and(|e| e.is::<http_body_util::LengthLimitError>()) {
            too_large()
        } else {
            ApiError::bad_request("could not read the request body")
        }
    })
}

/// The `action` of a body, if it has a readable one.
fn action_of(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Action {
        action: String,
    }
    serde_json::from_slice::<Action>(body).ok().map(|a| a.action)
}

/// The error as Mixpanel reads it: its shape, with `code` the HTTP status.
fn failure(action: String, error: ApiError) -> Response {
    error.respond_with(|status, message| MixpanelAnswer {
        action,
        status: "failure",
        error: Some(MixpanelError { message, code: status.as_u16() }),
    })
}
