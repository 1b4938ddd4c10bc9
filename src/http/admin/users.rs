//! `/admin/workspaces/{ws}/users`: the user store. Batch upsert, streamed NDJSON import,
//! lookup by any identifier, identify, delete.

use axum::{
    body::Body,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, StatusCode},
};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use tokio::sync::mpsc;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{
    router::{OpenApiRouter, UtoipaMethodRouterExt},
    routes,
};
use uuid::Uuid;

use super::require_workspace;
use crate::{
    auth::AdminAuth,
    domain::{
        Alias, DeviceId, ExternalId, IdentifierError,
        profile::{Profile, ProfileFields, UpsertOutcome},
    },
    error::{ApiError, ApiResult, ErrorBody},
    extract::{Json, Path, Query, RequestId},
    http::ndjson::{Line, LineSplitter, MAX_LINE_BYTES, NdjsonBody},
    state::AppState,
    store::{
        self,
        users::{IdentifyOutcome, StoreLookups, UpsertPlan, UserLookup, UserProfile},
    },
};

/// Most items in one `POST …/users/batch`.
pub const MAX_BATCH_USERS: usize = 10_000;
/// Most errors listed in an import's response (all are counted in `failed`).
pub const MAX_IMPORT_ERRORS: usize = 100;
/// Lines upserted together by the import: large enough that a chunk's few statements
/// cost little per user, small enough that memory stays flat.
const IMPORT_CHUNK_LINES: usize = 10_000;
/// Bytes of lines upserted together at most, whatever their number.
const IMPORT_CHUNK_BYTES: usize = 16 * 1024 * 1024;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(batch_upsert_users))
        // The import streams a body far larger than the JSON limit and enforces its own.
        .routes(routes!(import_users).layer(DefaultBodyLimit::disable()))
        .routes(routes!(find_user))
        .routes(routes!(get_user, delete_user))
        .routes(routes!(identify_user))
}

/// Body of `POST …/users/batch`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// The profiles, upserted in order; at most 10,000.
    #[schema(max_items = 10000)]
    pub users: Vec<ProfileFields>,
}

/// What happened to one batch item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ItemStatus {
    /// A new user was created.
    Created,
    /// An existing user matched and got the item's identifiers.
    Updated,
    /// The item conflicts with the store; nothing of it was applied.
    Error,
}

/// The outcome of one batch item.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchItemResult {
    /// The item's position in `users`, from 0.
    pub index: usize,
    /// The user created or matched; null on error.
    pub braze_id: Option<Uuid>,
    /// What happened.
    pub status: ItemStatus,
    /// Why the item failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Response of `POST …/users/batch`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    /// One result per item, in order.
    pub results: Vec<BatchItemResult>,
    /// Items that created a user.
    pub created: usize,
    /// Items that matched a user.
    pub updated: usize,
    /// Items that failed.
    pub failed: usize,
}

/// Upserts up to 10,000 profiles in order; each later item sees the earlier ones. An item
/// that conflicts fails alone; an invalid one fails the whole request (400, nothing stored).
#[utoipa::path(post, path = "/admin/workspaces/{ws}/users/batch", tag = "admin", security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id")),
    request_body = BatchRequest,
    responses((status = 200, body = BatchResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)))]
async fn batch_upsert_users(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(ws): Path<Uuid>,
    Json(body): Json<BatchRequest>,
) -> ApiResult<Json<BatchResponse>> {
    require_workspace(&state, ws).await?;
    if body.users.len() > MAX_BATCH_USERS {
        return Err(ApiError::bad_request(format!(
            "users must hold at most {MAX_BATCH_USERS} items (got {})",
            body.users.len()
        )));
    }
    let profiles = body
        .users
        .into_iter()
        .enumerate()
        .map(|(index, fields)| {
            Profile::parse(fields).map_err(|e| ApiError::bad_request(e.message(&format!("users[{index}]"))))
        })
        .collect::<ApiResult<Vec<_>>>()?;

    let mut tx = store::users::begin_writes(&state.db, ws).await?;
    let mut lookups = StoreLookups::for_workspace(&mut tx, ws).await?;
    let outcomes = store::users::upsert_profiles(&mut tx, ws, &profiles, &mut lookups).await?;
    state.db.commit(tx).await?;

    let mut response = BatchResponse { results: Vec::with_capacity(outcomes.len()), created: 0, updated: 0, failed: 0 };
    for (index, outcome) in outcomes.into_iter().enumerate() {
        let (braze_id, status, error) = match outcome {
            UpsertOutcome::Created(braze_id) => (Some(braze_id), ItemStatus::Created, None),
            UpsertOutcome::Updated(braze_id) => (Some(braze_id), ItemStatus::Updated, None),
            UpsertOutcome::Failed(reason) => (None, ItemStatus::Error, Some(reason)),
        };
        match status {
            ItemStatus::Created => response.created += 1,
            ItemStatus::Updated => response.updated += 1,
            ItemStatus::Error => response.failed += 1,
        }
        response.results.push(BatchItemResult { index, braze_id, status, error });
    }
    Ok(Json(response))
}

/// One failed line of an import.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportError {
    /// The line's number, from 1.
    pub line: u64,
    /// What is wrong with it.
    pub message: String,
}

/// Response of `POST …/users/import`.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct ImportSummary {
    /// Lines that created a user.
    pub created: u64,
    /// Lines that matched a user.
    pub updated: u64,
    /// Lines that failed: malformed, invalid, or in conflict.
    pub failed: u64,
    /// The first 100 failures, by line.
    pub errors: Vec<ImportError>,
}

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
    responses((status = 200, body = ImportSummary), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 408, body = ErrorBody, description = "The body brought no byte for `IMPORT_STALL_TIMEOUT_SECS`; nothing was imported"),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
async fn import_users(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(ws): Path<Uuid>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<ImportSummary>> {
    let mut body =
        NdjsonBody::new(&headers, body, state.config.import_body_limit_bytes, state.config.import_stall_timeout())?;
    require_workspace(&state, ws).await?;

    // Three stages overlap: reading and parsing (here), deciding the upserts of a chunk
    // (a blocking thread, when that needs no read of the store), and writing the chunk
    // before it (the writer task, which owns the transaction). So PostgreSQL does not
    // wait for the service between chunks. The channel holds one chunk, so the lines
    // held in memory stay bounded.
    let mut tx = store::users::begin_writes(&state.db, ws).await?;
    let mut lookups = StoreLookups::for_workspace(&mut tx, ws).await?;
    let (chunks, mut pending) = mpsc::channel::<ImportChunk>(1);
    let writer = tokio::spawn(async move {
        let mut summary = ImportSummary::default();
        let mut decided: Option<(ImportChunk, UpsertPlan)> = None;
        while let Some(chunk) = pending.recv().await {
            let deciding = tokio::task::spawn_blocking(move || {
                let plan = lookups.plan_unread(&chunk.profiles);
                (chunk, lookups, plan)
            });
            if let Some((previous, plan)) = decided.take() {
                previous.write(&mut tx, ws, plan, &mut summary).await?;
            }
            let (chunk, returned, plan) = deciding
                .await
                .map_err(|e| ApiError::Internal(anyhow::anyhow!("deciding an import chunk failed: {e}")))?;
            lookups = returned;
            let plan = match plan {
                Some(plan) => plan,
                None => store::users::plan_upserts(&mut tx, ws, &chunk.profiles, &mut lookups).await?,
            };
            decided = Some((chunk, plan));
        }
        if let Some((last, plan)) = decided {
            last.write(&mut tx, ws, plan, &mut summary).await?;
        }
        Ok::<_, ApiError>((tx, summary))
    });

    let read = async {
        let mut chunk = ImportChunk::default();
        let mut lines = LineSplitter::default();
        // The transaction holds the workspace's user-store lock and a pooled connection
        // while the body arrives: a client that goes silent must not keep them.
        while let Some(bytes) = body.next_piece().await? {
            lines.push(&bytes, |line| chunk.add_line(line));
            if chunk.is_full() && chunks.send(std::mem::take(&mut chunk)).await.is_err() {
                return Ok(()); // The writer failed: its error is the answer.
            }
        }
        lines.finish(|line| chunk.add_line(line));
        let _ = chunks.send(chunk).await;
        Ok(())
    };
    let read: ApiResult<()> = read.await;
    // Closing the channel lets the writer finish what it holds and hand back the
    // transaction; on any error it is dropped, which rolls the whole import back.
    drop(chunks);
    let written = writer.await.map_err(|e| ApiError::Internal(anyhow::anyhow!("import writer failed: {e}")))?;
    read?;
    let (tx, summary) = written?;
    state.db.commit(tx).await?;
    Ok(Json(summary))
}

/// Lines of an import parsed and waiting to be upserted together.
#[derive(Default)]
struct ImportChunk {
    /// Line numbers of `profiles`.
    lines: Vec<u64>,
    /// The valid profiles, in line order.
    profiles: Vec<Profile>,
    /// Their size in the body.
    bytes: usize,
    /// Lines that failed to parse, by number.
    errors: Vec<(u64, String)>,
}

impl ImportChunk {
    /// Parses one line into the chunk; a bad line is kept as an error.
    fn add_line(&mut self, line: Line<'_>) {
        let bytes = match line.bytes {
            Ok(bytes) => bytes.trim_ascii(),
            Err(()) => {
                let message = format!("line is longer than {MAX_LINE_BYTES} bytes");
                return self.errors.push((line.number, message));
            }
        };
        if bytes.is_empty() {
            return; // Blank lines (a trailing newline, a separator) are not profiles.
        }
        match serde_json::from_slice::<ProfileFields>(bytes) {
            Err(error) => self.errors.push((line.number, format!("invalid JSON: {error}"))),
            Ok(fields) => match Profile::parse(fields) {
                Err(error) => self.errors.push((line.number, error.message(""))),
                Ok(profile) => {
                    self.bytes += bytes.len();
                    self.lines.push(line.number);
                    self.profiles.push(profile);
                }
            },
        }
    }

    fn is_full(&self) -> bool {
        self.profiles.len() >= IMPORT_CHUNK_LINES || self.bytes >= IMPORT_CHUNK_BYTES
    }

    /// Writes the chunk's upserts, decided in `plan`, and adds their outcomes to
    /// `summary`, failures in line order.
    async fn write(
        mut self,
        conn: &mut PgConnection,
        workspace_id: Uuid,
        plan: UpsertPlan,
        summary: &mut ImportSummary,
    ) -> ApiResult<()> {
        let outcomes = store::users::write_upserts(conn, workspace_id, plan).await?;
        for (line, outcome) in self.lines.into_iter().zip(outcomes) {
            match outcome {
                UpsertOutcome::Created(_) => summary.created += 1,
                UpsertOutcome::Updated(_) => summary.updated += 1,
                UpsertOutcome::Failed(reason) => self.errors.push((line, reason)),
            }
        }
        summary.failed += self.errors.len() as u64;
        self.errors.sort_by_key(|(line, _)| *line);
        let room = MAX_IMPORT_ERRORS.saturating_sub(summary.errors.len());
        let reported = self.errors.into_iter().take(room).map(|(line, message)| ImportError { line, message });
        summary.errors.extend(reported);
        Ok(())
    }
}

/// Query of `GET …/users`: exactly one identifier.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UserQuery {
    /// Find the user with this external id.
    pub external_id: Option<String>,
    /// Find the user with this device id.
    pub device_id: Option<String>,
    /// Find the user with this alias (with `alias_name`).
    pub alias_label: Option<String>,
    /// Find the user with this alias (with `alias_label`).
    pub alias_name: Option<String>,
}

impl UserQuery {
    /// The lookup the query asks for; 400 unless it names exactly one valid identifier.
    fn into_lookup(self) -> ApiResult<UserLookup> {
        let invalid = |field: &'static str| move |error: IdentifierError| ApiError::bad_request(error.for_field(field));
        match (self.external_id, self.device_id, self.alias_label, self.alias_name) {
            (Some(external_id), None, None, None) => {
                Ok(UserLookup::ExternalId(ExternalId::parse(external_id).map_err(invalid("external_id"))?))
            }
            (None, Some(device_id), None, None) => {
                Ok(UserLookup::DeviceId(DeviceId::parse(device_id).map_err(invalid("device_id"))?))
            }
            (None, None, Some(label), Some(name)) => Ok(UserLookup::Alias(
                Alias::parse(label, name).map_err(|(field, error)| ApiError::bad_request(error.for_field(field)))?,
            )),
            (None, None, None, None) => Err(ApiError::bad_request(
                "give one of the query parameters external_id, device_id, or alias_label with alias_name",
            )),
            _ => Err(ApiError::bad_request(
                "give exactly one of the query parameters external_id, device_id, or alias_label with alias_name",
            )),
        }
    }
}

/// Finds a user by external id, device id, or alias.
#[utoipa::path(get, path = "/admin/workspaces/{ws}/users", tag = "admin", security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id"), UserQuery),
    responses((status = 200, body = UserProfile), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn find_user(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(ws): Path<Uuid>,
    Query(query): Query<UserQuery>,
) -> ApiResult<Json<UserProfile>> {
    let lookup = query.into_lookup()?;
    require_workspace(&state, ws).await?;
    let mut conn = state.db.acquire().await?;
    store::users::find_profile(&mut *conn, ws, &lookup)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("no user matches the lookup"))
}

/// One user, by braze_id.
#[utoipa::path(get, path = "/admin/workspaces/{ws}/users/{braze_id}", tag = "admin", security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id"), ("braze_id" = Uuid, Path, description = "The user's braze_id")),
    responses((status = 200, body = UserProfile), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_user(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((ws, braze_id)): Path<(Uuid, Uuid)>,
) -> ApiResult<Json<UserProfile>> {
    require_workspace(&state, ws).await?;
    Ok(Json(require_profile(&state, ws, braze_id).await?))
}

/// The profile of `braze_id`, or 404.
async fn require_profile(state: &AppState, ws: Uuid, braze_id: Uuid) -> ApiResult<UserProfile> {
    let mut conn = state.db.acquire().await?;
    store::users::find_profile(&mut *conn, ws, &UserLookup::BrazeId(braze_id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("unknown user {braze_id}")))
}

/// Body of `POST …/users/{braze_id}/identify`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentifyRequest {
    /// The external id the anonymous user gets.
    #[schema(min_length = 1, max_length = 512)]
    pub external_id: String,
}

/// Identifies an anonymous user: it gets the external id. Giving a user the external id
/// it already has changes nothing.
#[utoipa::path(post, path = "/admin/workspaces/{ws}/users/{braze_id}/identify", tag = "admin",
    security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id"), ("braze_id" = Uuid, Path, description = "The user's braze_id")),
    request_body = IdentifyRequest,
    responses((status = 200, body = UserProfile), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn identify_user(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((ws, braze_id)): Path<(Uuid, Uuid)>,
    Json(body): Json<IdentifyRequest>,
) -> ApiResult<Json<UserProfile>> {
    let external_id =
        ExternalId::parse(body.external_id).map_err(|error| ApiError::bad_request(error.for_field("external_id")))?;
    require_workspace(&state, ws).await?;
    match store::users::identify(&state.db, ws, braze_id, &external_id).await? {
        IdentifyOutcome::Identified => Ok(Json(require_profile(&state, ws, braze_id).await?)),
        IdentifyOutcome::NotFound => Err(ApiError::not_found(format!("unknown user {braze_id}"))),
        IdentifyOutcome::HasOtherExternalId => {
            Err(ApiError::conflict(format!("user {braze_id} already has a different external_id")))
        }
        IdentifyOutcome::TakenBy(owner) => {
            Err(ApiError::conflict(format!("external_id already belongs to another user ({owner})")))
        }
    }
}

/// Deletes a user: its profile, identifiers and cohort memberships; the cohorts' member
/// counts drop with it.
#[utoipa::path(delete, path = "/admin/workspaces/{ws}/users/{braze_id}", tag = "admin", security(("admin_token" = [])),
    params(("ws" = Uuid, Path, description = "Workspace id"), ("braze_id" = Uuid, Path, description = "The user's braze_id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_user(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((ws, braze_id)): Path<(Uuid, Uuid)>,
    request_id: RequestId,
) -> ApiResult<StatusCode> {
    require_workspace(&state, ws).await?;
    if store::users::delete(&state.db, ws, braze_id, request_id.as_str()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("unknown user {braze_id}")))
    }
}
