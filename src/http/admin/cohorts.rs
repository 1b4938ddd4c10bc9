//! `/admin/workspaces/{ws}/cohorts`: the operator's view of partner cohorts: the
//! cohorts, each one's import log (what partners show their customers: every import's
//! time, result and the cohort's size after it), its members, and deletion.

use axum::{extract::State, http::StatusCode};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::require_workspace;
use crate::{
    app::AppState,
    auth::AdminAuth,
    error::{ApiError, ApiResult, ErrorBody},
    http::extract::{Json, Path, Query},
    store::{
        self,
        cohorts::{Cohort, CohortKey, ImportRecord, Member},
    },
};

/// Page size when `limit` is not given.
const DEFAULT_PAGE: i64 = 100;
/// Largest page size accepted.
const MAX_PAGE: i64 = 1000;
/// Marks a members cursor, so a cursor of another kind or version is refused.
const MEMBERS_CURSOR_TAG: &str = "m1:";

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_cohorts))
        .routes(routes!(get_cohort, delete_cohort))
        .routes(routes!(list_imports))
        .routes(routes!(list_members))
}

/// `?partner=`: only that partner's cohorts.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CohortFilter {
    /// A partner name; all partners when absent.
    pub partner: Option<String>,
}

/// `GET /admin/workspaces/{ws}/cohorts`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CohortList {
    /// The cohorts, by partner then name.
    pub cohorts: Vec<Cohort>,
}

/// `?limit=&before=` of the import log.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImportsPage {
    /// Entries per page, 1 to 1000 (default 100).
    pub limit: Option<i64>,
    /// Only entries older than this import id (the previous page's `next_before`).
    pub before: Option<i64>,
}

/// A page of the import log, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportList {
    /// The imports, newest first.
    pub imports: Vec<ImportRecord>,
    /// Pass as `before` for the next (older) page; null on the last page.
    pub next_before: Option<i64>,
}

/// `?limit=&cursor=` of the members.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MembersPage {
    /// Members per page, 1 to 1000 (default 100).
    pub limit: Option<i64>,
    /// The previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// A page of a cohort's members.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberList {
    /// The members.
    pub members: Vec<Member>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// A workspace's partner cohorts.
#[utoipa::path(get, path = "/admin/workspaces/{ws}/cohorts", tag = "admin", security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id"), CohortFilter),
    responses((status = 200, body = CohortList), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_cohorts(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(ws): Path<Uuid>,
    Query(filter): Query<CohortFilter>,
) -> ApiResult<Json<CohortList>> {
    require_workspace(&state, ws).await?;
    let cohorts = store::cohorts::list(&state.pool, ws, filter.partner.as_deref()).await?;
    Ok(Json(CohortList { cohorts }))
}

/// One cohort.
#[utoipa::path(get, path = "/admin/workspaces/{ws}/cohorts/{partner}/{cohort_id}", tag = "admin",
    security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id"), ("partner" = String, Path, description = "Partner name"),
        ("cohort_id" = String, Path, description = "The partner's cohort id (percent-encoded)")),
    responses((status = 200, body = Cohort), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_cohort(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((ws, partner, cohort_id)): Path<(Uuid, String, String)>,
) -> ApiResult<Json<Cohort>> {
    require_workspace(&state, ws).await?;
    let key = CohortKey { workspace_id: ws, partner: &partner, cohort_id: &cohort_id };
    store::cohorts::find(&state.pool, key).await?.map(Json).ok_or_else(|| unknown_cohort(key))
}

/// A cohort's import log, newest first, with the member count after each import.
#[utoipa::path(get, path = "/admin/workspaces/{ws}/cohorts/{partner}/{cohort_id}/imports", tag = "admin",
    security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id"), ("partner" = String, Path, description = "Partner name"),
        ("cohort_id" = String, Path, description = "The partner's cohort id (percent-encoded)"), ImportsPage),
    responses((status = 200, body = ImportList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn list_imports(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((ws, partner, cohort_id)): Path<(Uuid, String, String)>,
    Query(page): Query<ImportsPage>,
) -> ApiResult<Json<ImportList>> {
    let limit = page_limit(page.limit)?;
    require_workspace(&state, ws).await?;
    let key = CohortKey { workspace_id: ws, partner: &partner, cohort_id: &cohort_id };
    // One more than asked tells whether there is a next page.
    let mut imports =
        store::cohorts::imports(&state.pool, key, limit + 1, page.before).await?.ok_or_else(|| unknown_cohort(key))?;
    let next_before = next_page(&mut imports, limit).map(|last| last.id);
    Ok(Json(ImportList { imports, next_before }))
}

/// A page of a cohort's members (keyset pagination: stable while members change).
#[utoipa::path(get, path = "/admin/workspaces/{ws}/cohorts/{partner}/{cohort_id}/members", tag = "admin",
    security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id"), ("partner" = String, Path, description = "Partner name"),
        ("cohort_id" = String, Path, description = "The partner's cohort id (percent-encoded)"), MembersPage),
    responses((status = 200, body = MemberList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn list_members(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((ws, partner, cohort_id)): Path<(Uuid, String, String)>,
    Query(page): Query<MembersPage>,
) -> ApiResult<Json<MemberList>> {
    let limit = page_limit(page.limit)?;
    let after = page.cursor.as_deref().map(decode_members_cursor).transpose()?;
    require_workspace(&state, ws).await?;
    let key = CohortKey { workspace_id: ws, partner: &partner, cohort_id: &cohort_id };
    let mut members =
        store::cohorts::members(&state.pool, key, limit + 1, after).await?.ok_or_else(|| unknown_cohort(key))?;
    let next_cursor = next_page(&mut members, limit).map(|last| encode_members_cursor(last.user_id));
    Ok(Json(MemberList { members, next_cursor }))
}

/// Deletes a cohort, its memberships and its import log.
#[utoipa::path(delete, path = "/admin/workspaces/{ws}/cohorts/{partner}/{cohort_id}", tag = "admin",
    security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id"), ("partner" = String, Path, description = "Partner name"),
        ("cohort_id" = String, Path, description = "The partner's cohort id (percent-encoded)")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_cohort(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((ws, partner, cohort_id)): Path<(Uuid, String, String)>,
) -> ApiResult<StatusCode> {
    require_workspace(&state, ws).await?;
    let key = CohortKey { workspace_id: ws, partner: &partner, cohort_id: &cohort_id };
    if store::cohorts::delete(&state.pool, key).await? { Ok(StatusCode::NO_CONTENT) } else { Err(unknown_cohort(key)) }
}

fn unknown_cohort(key: CohortKey<'_>) -> ApiError {
    ApiError::not_found(format!("unknown cohort {} of partner {}", key.cohort_id, key.partner))
}

/// The page size asked for, within bounds.
fn page_limit(limit: Option<i64>) -> ApiResult<i64> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request(format!("limit must be between 1 and {MAX_PAGE}"))),
    }
}

/// Trims a page fetched with one extra row; returns the last kept row when there is more.
fn next_page<T>(rows: &mut Vec<T>, limit: i64) -> Option<&T> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if rows.len() > limit {
        rows.truncate(limit);
        rows.last()
    } else {
        None
    }
}

/// An opaque members cursor: the last internal user id of the page, tagged and encoded
/// so clients do not build cursors of their own.
fn encode_members_cursor(user_id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{MEMBERS_CURSOR_TAG}{user_id}"))
}

fn decode_members_cursor(cursor: &str) -> ApiResult<i64> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix(MEMBERS_CURSOR_TAG)?.parse().ok())
        .ok_or_else(|| ApiError::bad_request("cursor is not valid: pass the next_cursor of the previous page"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_cursor_round_trips_and_refuses_forgeries() {
        for id in [1, 42, i64::MAX] {
            assert_eq!(decode_members_cursor(&encode_members_cursor(id)).unwrap(), id);
        }
        for bad in ["", "42", "!!", &URL_SAFE_NO_PAD.encode("x1:5"), &URL_SAFE_NO_PAD.encode("m1:abc")] {
            assert!(decode_members_cursor(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn page_limits() {
        assert_eq!(page_limit(None).unwrap(), DEFAULT_PAGE);
        assert_eq!(page_limit(Some(1000)).unwrap(), 1000);
        assert!(page_limit(Some(0)).is_err());
        assert!(page_limit(Some(1001)).is_err());
        let mut rows = vec![1, 2, 3];
        assert_eq!(next_page(&mut rows, 2), Some(&2));
        assert_eq!(rows, vec![1, 2]);
        assert_eq!(next_page(&mut rows, 2), None);
    }
}
