//! `PUT /admin/workspaces/{ws}/cohorts/{partner}/{cohort_id}/members`: the operator's
//! full replace, which repairs any drift whatever protocol fed the cohort. The body is
//! NDJSON, one user reference a line, streamed: each chunk of lines is resolved as it
//! arrives (a pooled connection per chunk, no transaction), so memory holds the distinct
//! users found, 8 bytes each, and the write is one short transaction at the end.

use axum::{body::Body, extract::State, http::HeaderMap};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::require_workspace;
use crate::{
    auth::AdminAuth,
    domain::{CohortId, ImportKind, ImportOutcome, Invalid, InvalidAt, MemberRefs, PartnerName, UserRef},
    error::{ApiResult, ErrorBody},
    extract::{Json, Path, RequestId},
    http::ndjson::{Line, LineSplitter, MAX_LINE_BYTES, NdjsonBody},
    metrics,
    state::AppState,
    store::{
        self,
        cohorts::{CohortKey, Import, Wanted},
    },
};

/// Lines resolved per statement.
const LINES_PER_RESOLVE: usize = 1000;

/// What a replace did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplaceSummary {
    /// Memberships that newly exist.
    pub added: u64,
    /// Memberships that ended.
    pub removed: u64,
    /// Members that stay.
    pub unchanged: u64,
    /// Lines that matched no eligible user.
    pub unmatched: u64,
    /// Of those, references no user has.
    pub unmatched_unknown: u64,
    /// Of those, device ids of identified users (device ids match anonymous users only).
    pub unmatched_device_id_of_identified_user: u64,
}

impl From<ImportOutcome> for ReplaceSummary {
    fn from(outcome: ImportOutcome) -> Self {
        ReplaceSummary {
            added: outcome.added,
            removed: outcome.removed,
            unchanged: outcome.unchanged,
            unmatched: outcome.unmatched.total(),
            unmatched_unknown: outcome.unmatched.unknown,
            unmatched_device_id_of_identified_user: outcome.unmatched.device_id_of_identified_user,
        }
    }
}

/// Replaces the cohort's membership (the cohort is created if unknown) with the users
/// the body names, one reference a line (`{"external_id"}`, `{"braze_id"}`,
/// `{"device_id"}`, `{"alias": {"alias_label", "alias_name"}}`), in one transaction,
/// and logs it as `replace`. All or nothing: a bad line is a 400 naming it, and nothing
/// changes.
#[utoipa::path(put, path = "/admin/workspaces/{ws}/cohorts/{partner}/{cohort_id}/members", tag = "admin",
    security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id"), ("partner" = String, Path, description = "Partner name", pattern = "^[a-z0-9_-]{1,64}$"),
        ("cohort_id" = String, Path, description = "The partner's cohort id (percent-encoded): 1 to 255 bytes without NUL", min_length = 1, max_length = 255)),
    request_body(content = String, content_type = "application/x-ndjson", description = "One user reference a line"),
    responses((status = 200, body = ReplaceSummary), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 408, body = ErrorBody, description = "The body brought no byte for `IMPORT_STALL_TIMEOUT_SECS`; nothing changed"),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub(super) async fn replace_members(
    _: AdminAuth,
    State(state): State<AppState>,
    request_id: RequestId,
    Path((ws, partner, cohort_id)): Path<(Uuid, PartnerName, CohortId)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<ReplaceSummary>> {
    let mut body =
        NdjsonBody::new(&headers, body, state.config.import_body_limit_bytes, state.config.import_stall_timeout())?;
    require_workspace(&state, ws).await?;
    super::require_partner(&state, partner.as_str()).await?;

    let mut wanted = Wanted::default();
    let mut chunk: Vec<MemberRefs> = Vec::with_capacity(LINES_PER_RESOLVE);
    let mut lines = LineSplitter::default();
    let mut bad_line: Option<Invalid> = None;
    let mut read_line = |line: Line<'_>, chunk: &mut Vec<MemberRefs>| {
        if bad_line.is_some() {
            return;
        }
        match parse_line(line) {
            Ok(Some(user_ref)) => chunk.push(MemberRefs::one(user_ref)),
            Ok(None) => {}
            Err(invalid) => bad_line = Some(invalid),
        }
    };
    while let Some(piece) = body.next_piece().await? {
        lines.push(&piece, |line| read_line(line, &mut chunk));
        if chunk.len() >= LINES_PER_RESOLVE {
            resolve_chunk(&state, ws, &mut chunk, &mut wanted).await?;
        }
    }
    lines.finish(|line| read_line(line, &mut chunk));
    if let Some(invalid) = bad_line {
        return Err(invalid.into());
    }
    resolve_chunk(&state, ws, &mut chunk, &mut wanted).await?;

    let key = CohortKey::new(ws, partner.as_str(), &cohort_id);
    let import = Import::new(ImportKind::Replace, request_id.as_str(), state.config.unmatched_retention());
    let _turn = state.cohort_imports.enter(key).await?;
    let outcome = store::cohorts::replace(&state.db, key, &import, wanted).await?;
    metrics::record_import(partner.as_str(), ImportKind::Replace, outcome);
    Ok(Json(ReplaceSummary::from(outcome)))
}

/// The reference of a line; `None` for a blank one.
fn parse_line(line: Line<'_>) -> Result<Option<UserRef>, Invalid> {
    let number = line.number;
    let read = || {
        let bytes = line.bytes.map_err(|()| Invalid::new(format!("longer than {MAX_LINE_BYTES} bytes")))?.trim_ascii();
        if bytes.is_empty() {
            return Ok(None);
        }
        let text = std::str::from_utf8(bytes).map_err(|_| Invalid::new("not UTF-8"))?;
        UserRef::parse_json(text).map(Some)
    };
    read().at(format_args!("line {number}"))
}

async fn resolve_chunk(state: &AppState, ws: Uuid, chunk: &mut Vec<MemberRefs>, wanted: &mut Wanted) -> ApiResult<()> {
    if chunk.is_empty() {
        return Ok(());
    }
    let mut conn = state.db.acquire().await?;
    wanted.resolve(&mut conn, ws, chunk).await?;
    chunk.clear();
    Ok(())
}
