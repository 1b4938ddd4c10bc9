//! The partner cohort-import endpoints (Braze partner contract): Kubit's "Import to
//! Braze", Segment's Braze Cohorts destination and the like post here unchanged.
//! Credentials come from the body ([`PartnerRequest`]); statuses and messages are the
//! contract's, word for word.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::partner::{BodyFields, FromPartnerBody, PartnerRequest},
    domain::{CohortChanges, CohortId, CohortName, ImportKind, ImportOutcome, cohort::parse_created_at},
    error::{ApiResult, ErrorBody},
    extract::{Json, RequestId},
    metrics,
    state::AppState,
    store::{
        self,
        cohorts::{CohortKey, Import},
    },
};

/// The partners routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(name_cohort)).routes(routes!(import_cohort_users))
}

/// Body of `POST /partners/{partner}/cohorts` (documentation only: the body is parsed
/// field by field, credentials first).
#[derive(Debug, Deserialize, ToSchema)]
pub struct CohortNameRequest {
    /// The partner's API key (`pak_…`).
    pub partner_api_key: String,
    /// The workspace's data import key for this partner (`dik_…`).
    pub client_secret: String,
    /// The partner's id for the cohort: 1 to 255 bytes.
    #[schema(min_length = 1, max_length = 255)]
    pub cohort_id: String,
    /// The cohort's display name: 1 to 255 bytes.
    #[schema(min_length = 1, max_length = 255)]
    pub name: String,
    /// When the partner created the cohort, ISO-8601 with `Z` or an offset.
    pub created_at: String,
}

/// One entry of `cohort_changes` (documentation only).
#[derive(Debug, Deserialize, ToSchema)]
pub struct CohortChange {
    /// External ids (1 to 512 bytes each): match identified users.
    #[schema(max_items = 1000)]
    pub user_ids: Option<Vec<String>>,
    /// Device ids (1 to 512 bytes each): match anonymous users only.
    #[schema(max_items = 1000)]
    pub device_ids: Option<Vec<String>>,
    /// Aliases: match any user.
    #[schema(max_items = 1000)]
    pub aliases: Option<Vec<AliasDoc>>,
    /// `true` removes these users from the cohort; default `false` adds them.
    pub should_remove: Option<bool>,
}

/// A user alias in `cohort_changes` (documentation only).
#[derive(Debug, Deserialize, ToSchema)]
pub struct AliasDoc {
    /// The value within the label.
    #[schema(min_length = 1, max_length = 512)]
    pub alias_name: String,
    /// The alias namespace.
    #[schema(min_length = 1, max_length = 512)]
    pub alias_label: String,
}

/// Body of `POST /partners/{partner}/cohorts/users` (documentation only).
#[derive(Debug, Deserialize, ToSchema)]
pub struct CohortUsersRequest {
    /// The partner's API key (`pak_…`).
    pub partner_api_key: String,
    /// The workspace's data import key for this partner (`dik_…`).
    pub client_secret: String,
    /// The partner's id for the cohort (1 to 255 bytes); an unknown one creates the cohort.
    #[schema(min_length = 1, max_length = 255)]
    pub cohort_id: String,
    /// Changes applied in order; at most 1,000 identifiers in all.
    pub cohort_changes: Vec<CohortChange>,
}

/// `{"message":"success"}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Success {
    /// Always `success`.
    pub message: &'static str,
}

/// The users endpoint's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportResult {
    /// Always `success`.
    pub message: &'static str,
    /// Memberships that newly exist.
    pub added: u64,
    /// Memberships that newly ended.
    pub removed: u64,
    /// Users already in the requested state.
    pub unchanged: u64,
    /// Identifiers that matched no eligible user.
    pub unmatched: u64,
}

impl From<ImportOutcome> for ImportResult {
    fn from(ImportOutcome { added, removed, unchanged, unmatched }: ImportOutcome) -> Self {
        ImportResult { message: "success", added, removed, unchanged, unmatched: unmatched.total() }
    }
}

/// The name endpoint's body once parsed.
pub struct NameCohort {
    cohort_id: CohortId,
    name: CohortName,
}

impl FromPartnerBody for NameCohort {
    fn from_fields(fields: &BodyFields<'_>) -> ApiResult<Self> {
        let cohort_id = CohortId::parse(fields.text("cohort_id").into_owned())?;
        let name = CohortName::parse(fields.text("name").into_owned())?;
        // Validated as the contract requires; the cohort's own created_at records when
        // this service first heard of it.
        parse_created_at(&fields.text("created_at"))?;
        Ok(NameCohort { cohort_id, name })
    }
}

/// The users endpoint's body once parsed.
pub struct ImportCohortUsers {
    cohort_id: CohortId,
    changes: CohortChanges,
}

impl FromPartnerBody for ImportCohortUsers {
    fn from_fields(fields: &BodyFields<'_>) -> ApiResult<Self> {
        let cohort_id = CohortId::parse(fields.text("cohort_id").into_owned())?;
        // Absent or null: the contract's shape message, as for the empty text read instead.
        let changes = CohortChanges::parse_json(fields.raw("cohort_changes").unwrap_or_default())?;
        Ok(ImportCohortUsers { cohort_id, changes })
    }
}

/// Creates the cohort with this name, or renames it.
#[utoipa::path(post, path = "/partners/{partner}/cohorts", tag = "partners",
    params(("partner" = String, Path, description = "Partner name, e.g. kubit", pattern = "^[a-z0-9_-]{1,64}$")),
    request_body = CohortNameRequest,
    responses((status = 200, body = Success), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody)))]
async fn name_cohort(
    State(state): State<AppState>,
    PartnerRequest { caller, body }: PartnerRequest<NameCohort>,
) -> ApiResult<Json<Success>> {
    let key = CohortKey::new(caller.workspace_id, &caller.partner, &body.cohort_id);
    store::cohorts::upsert_name(&state.db, key, &body.name).await?;
    Ok(Json(Success { message: "success" }))
}

/// Adds users to the cohort or removes them, all or nothing, and logs the import.
#[utoipa::path(post, path = "/partners/{partner}/cohorts/users", tag = "partners",
    params(("partner" = String, Path, description = "Partner name, e.g. kubit", pattern = "^[a-z0-9_-]{1,64}$")),
    request_body = CohortUsersRequest,
    responses((status = 200, body = ImportResult), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "`IMPORT_CONCURRENCY` imports ran and others waited longer than `DB_ACQUIRE_TIMEOUT_SECS`; retry after `Retry-After`")))]
async fn import_cohort_users(
    State(state): State<AppState>,
    request_id: RequestId,
    PartnerRequest { caller, body }: PartnerRequest<ImportCohortUsers>,
) -> ApiResult<Json<ImportResult>> {
    // No identifier at all: a credentials check, which changes nothing.
    let outcome = if body.changes.is_empty() {
        ImportOutcome::default()
    } else {
        let key = CohortKey::new(caller.workspace_id, &caller.partner, &body.cohort_id);
        let import = Import::new(ImportKind::Braze, request_id.as_str(), state.config.unmatched_retention());
        let _turn = state.cohort_imports.enter(key).await?;
        let outcome = store::cohorts::import(&state.db, key, &import, &body.changes.members).await?.outcome;
        metrics::record_import(&caller.partner, ImportKind::Braze, outcome);
        outcome
    };
    Ok(Json(ImportResult::from(outcome)))
}
