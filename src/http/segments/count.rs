//! `POST /v1/segments/count`: how many users a filter matches.

use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::{SegmentRequest, prepare};
use crate::{
    auth::SegmentsReader,
    domain::filter::Filter,
    error::{ApiResult, ErrorBody},
    extract::Json,
    state::AppState,
    store,
};

/// `{"count": n}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentCount {
    /// Users of the workspace matching the filter, exact.
    pub count: i64,
}

/// Counts the workspace's users matching a filter.
#[utoipa::path(post, path = "/v1/segments/count", tag = "segments", security(("api_key" = [])),
    request_body = SegmentRequest,
    responses((status = 200, body = SegmentCount), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub(super) async fn count_segment(
    auth: SegmentsReader,
    State(state): State<AppState>,
    Json(body): Json<SegmentRequest>,
) -> ApiResult<Json<SegmentCount>> {
    let filter = Filter::parse(&body.filter)?;
    let query = prepare(&state, &auth, &filter).await?;
    Ok(Json(SegmentCount { count: store::segments::count(&state.db, &query).await? }))
}
