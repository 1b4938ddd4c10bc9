//! `POST /v1/segments/check`: whether given users are in a filter's segment.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::{Value, value::RawValue};
use utoipa::ToSchema;
use uuid::Uuid;

use super::prepare;
use crate::{
    auth::SegmentsReader,
    domain::{InvalidAt, UserRef, filter::Filter},
    error::{ApiError, ApiResult, ErrorBody},
    extract::Json,
    state::AppState,
    store::{self, segments::CheckResult},
};

/// Most references one check may hold.
const MAX_CHECK_REFERENCES: usize = 1_000;

/// Body of `POST /v1/segments/check`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentCheckRequest {
    /// The filter expression.
    #[schema(value_type = Object)]
    pub filter: Value,
    /// Up to 1,000 references, each `{"external_id"}`, `{"braze_id"}`, `{"device_id"}`
    /// or `{"alias": {"alias_name", "alias_label"}}`. Kept as their JSON text: each is
    /// echoed back as given.
    #[schema(value_type = Vec<Object>, max_items = 1000)]
    pub users: Vec<Box<RawValue>>,
}

/// The outcome for one reference.
#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentCheckResult {
    /// The reference, as given.
    #[schema(value_type = Object)]
    pub user: Box<RawValue>,
    /// The user it resolved to; null when it matches no user.
    pub braze_id: Option<Uuid>,
    /// Whether that user is in the segment; false for an unknown reference.
    pub matches: bool,
}

/// `{"results": [...]}`, in the order of the request's `users`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentCheck {
    /// One result per reference, in the order given.
    pub results: Vec<SegmentCheckResult>,
}

/// Tells, for each given user, whether the user is in the segment.
#[utoipa::path(post, path = "/v1/segments/check", tag = "segments", security(("api_key" = [])),
    request_body = SegmentCheckRequest,
    responses((status = 200, body = SegmentCheck), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub(super) async fn check_segment(
    auth: SegmentsReader,
    State(state): State<AppState>,
    Json(body): Json<SegmentCheckRequest>,
) -> ApiResult<Json<SegmentCheck>> {
    let filter = Filter::parse(&body.filter)?;
    if body.users.len() > MAX_CHECK_REFERENCES {
        return Err(ApiError::bad_request(format!("users: at most {MAX_CHECK_REFERENCES} references per check")));
    }
    let refs = body
        .users
        .iter()
        .enumerate()
        .map(|(i, user)| UserRef::parse_json(user.get()).at(format_args!("users[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let query = prepare(&state, &auth, &filter).await?;
    let outcomes = if refs.is_empty() { Vec::new() } else { store::segments::check(&state.db, &query, &refs).await? };
    let results = body
        .users
        .into_iter()
        .zip(outcomes)
        .map(|(user, CheckResult { braze_id, matches })| SegmentCheckResult { user, braze_id, matches })
        .collect();
    Ok(Json(SegmentCheck { results }))
}
