//! `POST …/users/import`: the HTTP side of a streamed NDJSON load ([`super::load`]).

use axum::{body::Body, extract::State, http::HeaderMap};
use uuid::Uuid;

use super::{
    super::require_workspace,
    fields::ProfileFields,
    load::{self, UserLoadSummary},
};
use crate::{
    auth::AdminAuth,
    error::{ApiResult, ErrorBody},
    extract::{Json, Path},
    http::ndjson::NdjsonBody,
    state::AppState,
};

/// Loads users from an NDJSON body (`application/x-ndjson`, one batch item a line),
/// streamed: memory holds at most four chunks of lines, one per stage (being read, queued,
/// being decided, being written), plus, on a first load into an empty workspace, 4 MiB of
/// Bloom filters per 3 million identifiers. A line that is malformed
/// or conflicts fails alone and is reported by number; the rest load. The import is one
/// transaction: a request that fails as a whole (413, broken body, a body that brings no
/// byte for `IMPORT_STALL_TIMEOUT_SECS`: 408, database failure) stores nothing.
#[utoipa::path(post, path = "/admin/workspaces/{ws}/users/import", tag = "admin", security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id")),
    request_body(content = ProfileFields, content_type = "application/x-ndjson",
        description = "One profile object a line"),
    responses((status = 200, body = UserLoadSummary), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 408, body = ErrorBody, description = "The body brought no byte for `IMPORT_STALL_TIMEOUT_SECS`; nothing was imported"),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub(super) async fn import_users(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(ws): Path<Uuid>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<UserLoadSummary>> {
    let body =
        NdjsonBody::new(&headers, body, state.config.import_body_limit_bytes, state.config.import_stall_timeout())?;
    require_workspace(&state, ws).await?;
    Ok(Json(load::load_ndjson(&state.db, ws, body).await?))
}
