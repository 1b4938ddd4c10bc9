//! `/admin/workspaces/{ws}/cohorts`: the operator's view of partner cohorts: the
//! cohorts, each one's import log (what partners show their customers: every import's
//! time, result and the cohort's size after it), its members, and deletion.

use axum::{
    extract::{DefaultBodyLimit, State},
    http::StatusCode,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{
    router::{OpenApiRouter, UtoipaMethodRouterExt},
    routes,
};
use uuid::Uuid;

use super::require_workspace;
use crate::{
    auth::AdminAuth,
    domain::{CohortId, PartnerName},
    error::{ApiError, ApiResult, ErrorBody},
    extract::{Json, Path, Query},
    http::{
        paging::{cursor, invalid_cursor, next_page, page_limit},
        views::{self, Cohort, ImportRecord, Member, UnmatchedIdentifier, WorkspaceImport},
    },
    state::AppState,
    store::{
        self,
        cohorts::{CohortKey, unmatched::UnmatchedPosition},
    },
};

/// Page size when `limit` is not given.
const DEFAULT_PAGE: i64 = 100;
/// Largest page size accepted.
const MAX_PAGE: i64 = 1000;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_cohorts))
        .routes(routes!(get_cohort, delete_cohort))
        .routes(routes!(list_imports))
        // The replace streams its NDJSON body under its own limit.
        .routes(routes!(list_members, super::replace::replace_members).layer(DefaultBodyLimit::disable()))
        .routes(routes!(list_unmatched))
        .routes(routes!(list_workspace_imports))
}

/// `?partner=`: only that partner's cohorts.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CohortFilter {
    /// A partner name; all partners when absent.
    #[param(value_type = Option<String>, pattern = "^[a-z0-9_-]{1,64}$")]
    pub partner: Option<PartnerName>,
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
    #[param(minimum = 1, maximum = 1000)]
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
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// The previous page's `next_cursor`.
    #[param(min_length = 1)]
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
    let cohorts = store::cohorts::list(&state.db, ws, filter.partner.as_ref().map(PartnerName::as_str)).await?;
    Ok(Json(CohortList { cohorts: views::all(cohorts) }))
}

/// One cohort.
#[utoipa::path(get, path = "/admin/workspaces/{ws}/cohorts/{partner}/{cohort_id}", tag = "admin",
    security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id"), ("partner" = String, Path, description = "Partner name", pattern = "^[a-z0-9_-]{1,64}$"),
        ("cohort_id" = String, Path, description = "The partner's cohort id (percent-encoded): 1 to 255 bytes without NUL", min_length = 1, max_length = 255)),
    responses((status = 200, body = Cohort), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_cohort(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((ws, partner, cohort_id)): Path<(Uuid, PartnerName, CohortId)>,
) -> ApiResult<Json<Cohort>> {
    require_workspace(&state, ws).await?;
    let key = CohortKey::new(ws, partner.as_str(), &cohort_id);
    store::cohorts::find(&state.db, key).await?.map(|cohort| Json(cohort.into())).ok_or_else(|| unknown_cohort(key))
}

/// A cohort's import log, newest first, with the member count after each import.
#[utoipa::path(get, path = "/admin/workspaces/{ws}/cohorts/{partner}/{cohort_id}/imports", tag = "admin",
    security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id"), ("partner" = String, Path, description = "Partner name", pattern = "^[a-z0-9_-]{1,64}$"),
        ("cohort_id" = String, Path, description = "The partner's cohort id (percent-encoded): 1 to 255 bytes without NUL", min_length = 1, max_length = 255), ImportsPage),
    responses((status = 200, body = ImportList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn list_imports(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((ws, partner, cohort_id)): Path<(Uuid, PartnerName, CohortId)>,
    Query(page): Query<ImportsPage>,
) -> ApiResult<Json<ImportList>> {
    let limit = page_limit(page.limit, DEFAULT_PAGE, MAX_PAGE)?;
    require_workspace(&state, ws).await?;
    let key = CohortKey::new(ws, partner.as_str(), &cohort_id);
    // One more than asked tells whether there is a next page.
    let mut imports =
        store::cohorts::imports(&state.db, key, limit + 1, page.before).await?.ok_or_else(|| unknown_cohort(key))?;
    let next_before = next_page(&mut imports, limit).map(|last| last.id);
    Ok(Json(ImportList { imports: views::all(imports), next_before }))
}

/// A page of a cohort's members (keyset pagination: stable while members change).
#[utoipa::path(get, path = "/admin/workspaces/{ws}/cohorts/{partner}/{cohort_id}/members", tag = "admin",
    security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id"), ("partner" = String, Path, description = "Partner name", pattern = "^[a-z0-9_-]{1,64}$"),
        ("cohort_id" = String, Path, description = "The partner's cohort id (percent-encoded): 1 to 255 bytes without NUL", min_length = 1, max_length = 255), MembersPage),
    responses((status = 200, body = MemberList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn list_members(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((ws, partner, cohort_id)): Path<(Uuid, PartnerName, CohortId)>,
    Query(page): Query<MembersPage>,
) -> ApiResult<Json<MemberList>> {
    let limit = page_limit(page.limit, DEFAULT_PAGE, MAX_PAGE)?;
    let key = CohortKey::new(ws, partner.as_str(), &cohort_id);
    // A cursor belongs to one cohort.
    let context =
        [b"members".as_slice(), ws.as_bytes(), partner.as_str().as_bytes(), b"\0", cohort_id.as_str().as_bytes()]
            .concat();
    let after = match &page.cursor {
        Some(text) => Some(
            cursor::open(&context, text)
                .and_then(|position| Some(i64::from_be_bytes(position.try_into().ok()?)))
                .ok_or_else(invalid_cursor)?,
        ),
        None => None,
    };
    require_workspace(&state, ws).await?;
    let mut members =
        store::cohorts::members(&state.db, key, limit + 1, after).await?.ok_or_else(|| unknown_cohort(key))?;
    let next_cursor = next_page(&mut members, limit).map(|last| cursor::seal(&context, &last.user_id.to_be_bytes()));
    Ok(Json(MemberList { members: views::all(members), next_cursor }))
}

/// Deletes a cohort, its memberships and its import log.
#[utoipa::path(delete, path = "/admin/workspaces/{ws}/cohorts/{partner}/{cohort_id}", tag = "admin",
    security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id"), ("partner" = String, Path, description = "Partner name", pattern = "^[a-z0-9_-]{1,64}$"),
        ("cohort_id" = String, Path, description = "The partner's cohort id (percent-encoded): 1 to 255 bytes without NUL", min_length = 1, max_length = 255)),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_cohort(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((ws, partner, cohort_id)): Path<(Uuid, PartnerName, CohortId)>,
) -> ApiResult<StatusCode> {
    require_workspace(&state, ws).await?;
    let key = CohortKey::new(ws, partner.as_str(), &cohort_id);
    if store::cohorts::delete(&state.db, key).await? { Ok(StatusCode::NO_CONTENT) } else { Err(unknown_cohort(key)) }
}

/// A page of a cohort's unmatched identifiers.
#[derive(Debug, Serialize, ToSchema)]
pub struct UnmatchedList {
    /// By kind, alias label and value; at most `limit`, fewer when some match a user by now.
    pub unmatched: Vec<UnmatchedIdentifier>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// The identifiers sent for a cohort that matched nobody, with why, when first and last
/// seen, and how often (at most 10,000 kept per cohort; one not sent again for
/// `UNMATCHED_RETENTION_DAYS` leaves, and so does one that matches a user by now).
#[utoipa::path(get, path = "/admin/workspaces/{ws}/cohorts/{partner}/{cohort_id}/unmatched", tag = "admin",
    security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id"), ("partner" = String, Path, description = "Partner name", pattern = "^[a-z0-9_-]{1,64}$"),
        ("cohort_id" = String, Path, description = "The partner's cohort id (percent-encoded): 1 to 255 bytes without NUL", min_length = 1, max_length = 255), MembersPage),
    responses((status = 200, body = UnmatchedList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn list_unmatched(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((ws, partner, cohort_id)): Path<(Uuid, PartnerName, CohortId)>,
    Query(page): Query<MembersPage>,
) -> ApiResult<Json<UnmatchedList>> {
    let limit = page_limit(page.limit, DEFAULT_PAGE, MAX_PAGE)?;
    let key = CohortKey::new(ws, partner.as_str(), &cohort_id);
    let context =
        [b"unmatched".as_slice(), ws.as_bytes(), partner.as_str().as_bytes(), b"\0", cohort_id.as_str().as_bytes()]
            .concat();
    let after = match &page.cursor {
        Some(text) => Some(
            cursor::open(&context, text)
                .and_then(|position| serde_json::from_slice::<UnmatchedPosition>(&position).ok())
                .ok_or_else(invalid_cursor)?,
        ),
        None => None,
    };
    require_workspace(&state, ws).await?;
    let (unmatched, next) =
        store::cohorts::unmatched::list(&state.db, key, limit, after, state.config.unmatched_retention())
            .await?
            .ok_or_else(|| unknown_cohort(key))?;
    let next_cursor = next.map(|position| {
        let bytes = serde_json::to_vec(&position).unwrap_or_default();
        cursor::seal(&context, &bytes)
    });
    Ok(Json(UnmatchedList { unmatched: views::all(unmatched), next_cursor }))
}

/// `?limit=&cursor=` of the workspace's imports.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WorkspaceImportsPage {
    /// Entries per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// The previous page's `next_cursor`: only older entries.
    #[param(min_length = 1)]
    pub cursor: Option<String>,
}

/// A page of a workspace's imports, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkspaceImportList {
    /// Newest first.
    pub imports: Vec<WorkspaceImport>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next_cursor: Option<String>,
}

/// The workspace's recent imports across all cohorts and partners, newest first.
#[utoipa::path(get, path = "/admin/workspaces/{ws}/imports", tag = "admin", security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id"), WorkspaceImportsPage),
    responses((status = 200, body = WorkspaceImportList), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_workspace_imports(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(ws): Path<Uuid>,
    Query(page): Query<WorkspaceImportsPage>,
) -> ApiResult<Json<WorkspaceImportList>> {
    let limit = page_limit(page.limit, DEFAULT_PAGE, MAX_PAGE)?;
    let context = [b"workspace imports".as_slice(), ws.as_bytes()].concat();
    let before = match &page.cursor {
        Some(text) => Some(cursor::open(&context, text).and_then(|p| decode_position(&p)).ok_or_else(invalid_cursor)?),
        None => None,
    };
    require_workspace(&state, ws).await?;
    let mut imports = store::cohorts::workspace_imports(&state.db, ws, limit + 1, before).await?;
    let next_cursor =
        next_page(&mut imports, limit).map(|last| cursor::seal(&context, &encode_position(last.position())));
    Ok(Json(WorkspaceImportList { imports: views::all(imports), next_cursor }))
}

fn encode_position((micros, cohort_ref, id): (i64, i64, i64)) -> Vec<u8> {
    [micros.to_be_bytes(), cohort_ref.to_be_bytes(), id.to_be_bytes()].concat()
}

fn decode_position(bytes: &[u8]) -> Option<(i64, i64, i64)> {
    let part = |i: usize| Some(i64::from_be_bytes(bytes.get(i * 8..i * 8 + 8)?.try_into().ok()?));
    (bytes.len() == 24).then_some(())?;
    Some((part(0)?, part(1)?, part(2)?))
}

fn unknown_cohort(key: CohortKey<'_>) -> ApiError {
    ApiError::not_found(format!("unknown cohort {} of partner {}", key.cohort_id, key.partner))
}
