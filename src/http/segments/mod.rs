//! The segment filter API (`/v1/...`), for the segment builder: the workspace's partner
//! cohorts, and segment counts, pages, exports and per-user checks.
//!
//! Every route takes a REST API key (`Authorization: Bearer rak_…`) with the
//! `segments.read` scope; the key decides the workspace, the only one the caller sees.

mod check;
mod cohorts;
mod count;
mod export;
mod users;

use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

pub use check::{SegmentCheck, SegmentCheckRequest, SegmentCheckResult};
pub use cohorts::{CohortListParams, CohortPage};
pub use count::SegmentCount;
pub use users::{SegmentMember, SegmentPage, SegmentPageRequest};

use crate::{
    auth::SegmentsReader,
    domain::filter::Filter,
    error::{ApiError, ApiResult},
    state::AppState,
    store::{self, segments::SegmentQuery},
};

/// The segment filter routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(cohorts::list_cohorts))
        .routes(routes!(count::count_segment))
        .routes(routes!(users::list_segment_users))
        .routes(routes!(export::export_segment))
        .routes(routes!(check::check_segment))
}

/// Body of `POST /v1/segments/count` and `POST /v1/segments/export`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentRequest {
    /// The filter expression: a cohort leaf, `and`, `or` or `not`.
    #[schema(value_type = Object)]
    pub filter: Value,
}

/// Resolves the filter's cohorts in the key's workspace; 400 listing unknown ones.
pub(super) async fn prepare(state: &AppState, auth: &SegmentsReader, filter: &Filter) -> ApiResult<SegmentQuery> {
    store::segments::prepare(&state.db, auth.workspace_id, filter).await?.map_err(|unknown| {
        let listed: Vec<String> =
            unknown.iter().map(|c| format!("{} {}", c.partner, Value::String(c.cohort_id.clone()))).collect();
        ApiError::bad_request(format!("filter: cohorts unknown in this workspace: {}", listed.join(", ")))
    })
}
