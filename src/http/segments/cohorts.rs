//! `GET /v1/cohorts`: the workspace's partner cohorts, for the segment builder's dropdown.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::{
    auth::SegmentsReader,
    domain::{Invalid, PartnerName},
    error::{ApiError, ApiResult, ErrorBody},
    extract::{Json, Query},
    http::{
        paging::{cursor, invalid_cursor, next_page, page_limit},
        views::{self, CohortSummary},
    },
    state::AppState,
    store::{self, segments::CohortPosition},
};

/// Cohorts per page of `GET /v1/cohorts` unless `limit` says otherwise, and the most.
const DEFAULT_COHORT_PAGE: i64 = 100;
const MAX_COHORT_PAGE: i64 = 1_000;
/// Longest cohort name search text, in bytes.
const MAX_NAME_SEARCH_BYTES: usize = 255;

/// Query of `GET /v1/cohorts`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CohortListParams {
    /// Only this partner's cohorts.
    #[param(pattern = "^[a-z0-9_-]{1,64}$")]
    pub partner: Option<String>,
    /// Only cohorts whose name contains this text (case-insensitive): at most 255 bytes.
    #[param(max_length = 255)]
    pub q: Option<String>,
    /// Cohorts per page: 1 to 1,000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(min_length = 1)]
    pub cursor: Option<String>,
}

/// A page of the cohort dropdown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CohortPage {
    /// Ordered by name, then partner and cohort id.
    pub cohorts: Vec<CohortSummary>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Lists the workspace's partner cohorts, for the segment builder's dropdown.
#[utoipa::path(get, path = "/v1/cohorts", tag = "segments", security(("api_key" = [])),
    params(CohortListParams),
    responses((status = 200, body = CohortPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub(super) async fn list_cohorts(
    auth: SegmentsReader,
    State(state): State<AppState>,
    Query(params): Query<CohortListParams>,
) -> ApiResult<Json<CohortPage>> {
    let partner = params
        .partner
        .as_deref()
        // The name's own message, after the parameter's: `partner: name must be …`.
        .map(|p| PartnerName::parse(p).map_err(|e| Invalid::new(e.to_string()).at("partner")))
        .transpose()?;
    let search = params.q.as_deref().filter(|q| !q.is_empty());
    if search.is_some_and(|q| q.len() > MAX_NAME_SEARCH_BYTES || q.contains('\0')) {
        return Err(ApiError::bad_request("q: must be at most 255 bytes without NUL"));
    }
    let limit = page_limit(params.limit, DEFAULT_COHORT_PAGE, MAX_COHORT_PAGE)?;
    // A cursor belongs to one workspace and one search.
    let context = [
        b"cohorts".as_slice(),
        auth.workspace_id.as_bytes(),
        partner.as_ref().map_or("", |p| p.as_str()).as_bytes(),
        b"\0",
        search.unwrap_or("").as_bytes(),
    ]
    .concat();
    let after = match &params.cursor {
        Some(text) => Some(
            cursor::open(&context, text)
                .and_then(|position| serde_json::from_slice::<CohortPosition>(&position).ok())
                .ok_or_else(invalid_cursor)?,
        ),
        None => None,
    };
    let mut cohorts = store::segments::list_cohorts(
        &state.db,
        auth.workspace_id,
        partner.as_ref().map(PartnerName::as_str),
        search,
        after.as_ref(),
        limit + 1,
    )
    .await?;
    let next_cursor = next_page(&mut cohorts, limit).map(|last| {
        let position = CohortPosition {
            name: last.name.clone(),
            partner: last.partner.clone(),
            cohort_id: last.cohort_id.clone(),
        };
        cursor::seal(&context, &serde_json::to_vec(&position).unwrap_or_default())
    });
    Ok(Json(CohortPage { cohorts: views::all(cohorts), next_cursor }))
}
