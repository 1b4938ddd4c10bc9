//! `POST /v1/segments/users`: a filter's users, a page at a time.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::prepare;
use crate::{
    auth::SegmentsReader,
    domain::filter::Filter,
    error::{ApiResult, ErrorBody},
    extract::Json,
    http::paging::{cursor, invalid_cursor, next_page, page_limit},
    state::AppState,
    store::{self, segments::SegmentUser},
};

/// Users per page of `POST /v1/segments/users` unless `limit` says otherwise, and the most.
const DEFAULT_USER_PAGE: i64 = 1_000;
const MAX_USER_PAGE: i64 = 10_000;

/// Body of `POST /v1/segments/users`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentPageRequest {
    /// The filter expression.
    #[schema(value_type = Object)]
    pub filter: Value,
    /// Users per page: 1 to 10,000, default 1,000.
    #[schema(minimum = 1, maximum = 10000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page, with the same filter.
    #[schema(min_length = 1)]
    pub cursor: Option<String>,
}

/// A user of a segment.
#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentMember {
    /// The user's public id.
    pub braze_id: Uuid,
    /// The user's external id; null for an anonymous user.
    pub external_id: Option<String>,
}

impl From<SegmentUser> for SegmentMember {
    fn from(user: SegmentUser) -> Self {
        SegmentMember { braze_id: user.braze_id, external_id: user.external_id }
    }
}

/// A page of a segment's users.
#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentPage {
    /// In a stable order (the users' creation order).
    pub users: Vec<SegmentMember>,
    /// Pass as `cursor`, with the same filter, for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Pages through the users matching a filter (keyset pagination: each matching user
/// appears once, however the pages are spaced).
#[utoipa::path(post, path = "/v1/segments/users", tag = "segments", security(("api_key" = [])),
    request_body = SegmentPageRequest,
    responses((status = 200, body = SegmentPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub(super) async fn list_segment_users(
    auth: SegmentsReader,
    State(state): State<AppState>,
    Json(body): Json<SegmentPageRequest>,
) -> ApiResult<Json<SegmentPage>> {
    let filter = Filter::parse(&body.filter)?;
    let limit = page_limit(body.limit, DEFAULT_USER_PAGE, MAX_USER_PAGE)?;
    // A cursor belongs to one workspace and one filter (in canonical form).
    let context = [b"users".as_slice(), auth.workspace_id.as_bytes(), &filter.fingerprint()].concat();
    let after = match &body.cursor {
        Some(text) => cursor::open(&context, text)
            .and_then(|position| Some(i64::from_be_bytes(position.try_into().ok()?)))
            .ok_or_else(invalid_cursor)?,
        None => 0,
    };
    let query = prepare(&state, &auth, &filter).await?;
    let mut users = store::segments::page(&state.db, &query, after, limit + 1).await?;
    let next_cursor = next_page(&mut users, limit).map(|last| cursor::seal(&context, &last.id.to_be_bytes()));
    Ok(Json(SegmentPage { users: users.into_iter().map(SegmentMember::from).collect(), next_cursor }))
}
