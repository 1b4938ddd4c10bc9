//! `cohorts`, `cohort_memberships`, `cohort_imports`: partner cohorts, who is in them,
//! and the log of every change to their membership. The cohort rows and the operator's
//! views are here; resolving members is in [`resolve`], changing memberships in
//! [`import`].

mod deliveries;
mod import;
mod replace;
mod resolve;
pub mod unmatched;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

pub(crate) use import::remove_user_everywhere;
pub use import::{Applied, Import, import};
pub(crate) use replace::apply_replace;
pub use replace::{Wanted, replace};

use super::{
    bit_changes::PendingBits,
    locks::{WorkspaceLock, lock_workspace},
};
use crate::domain::{CohortId, CohortName};
use crate::store::database::Database;

/// A cohort row with its partner.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Cohort {
    pub partner: String,
    pub cohort_id: String,
    pub name: String,
    pub member_count: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_import_at: Option<DateTime<Utc>>,
}

/// One change to a cohort's membership, as logged.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ImportRecord {
    pub id: i64,
    pub kind: String,
    pub request_id: String,
    pub received_at: DateTime<Utc>,
    pub added: i32,
    pub removed: i32,
    pub unchanged: i32,
    pub unmatched: i32,
    pub unmatched_unknown: i32,
    pub unmatched_device_id_of_identified_user: i32,
    pub member_count_after: i64,
}

/// One change to a cohort's membership in a workspace's log, with its cohort.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WorkspaceImport {
    /// The cohort's partner.
    pub partner: String,
    /// The partner's id for the cohort.
    pub cohort_id: String,
    /// The cohort's internal id: part of the page position.
    pub cohort_ref: i64,
    /// The change, as its cohort's log shows it.
    #[sqlx(flatten)]
    pub record: ImportRecord,
}

impl WorkspaceImport {
    /// Its position in the workspace's log (newest first): time in microseconds,
    /// cohort, id within the cohort.
    pub fn position(&self) -> (i64, i64, i64) {
        (self.record.received_at.timestamp_micros(), self.cohort_ref, self.record.id)
    }
}

/// A member of a cohort.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Member {
    /// Internal user id: the pagination key.
    pub user_id: i64,
    pub braze_id: Uuid,
    pub external_id: Option<String>,
    pub added_at: DateTime<Utc>,
}

/// Where a cohort is: its workspace, partner and the partner's id for it.
#[derive(Debug, Clone, Copy)]
pub struct CohortKey<'a> {
    /// The workspace.
    pub workspace_id: Uuid,
    /// The partner's name.
    pub partner: &'a str,
    /// The partner's cohort id.
    pub cohort_id: &'a str,
}

/// Creates the cohort with `name`, or renames it. Never touches its members.
pub async fn upsert_name(db: &Database, key: CohortKey<'_>, name: &CohortName) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    let now = Utc::now();
    let renamed = sqlx::query!(
        "UPDATE cohorts SET name = $4, updated_at = $5
          WHERE workspace_id = $1 AND partner = $2 AND cohort_id = $3 AND name <> $4",
        key.workspace_id,
        key.partner,
        key.cohort_id,
        name.as_str(),
        now,
    )
    .execute(&mut *tx)
    .await?;
    if renamed.rows_affected() == 0 {
        // Unknown, or already so named (which this finds and leaves alone).
        create_or_lock(&mut tx, key, name.as_str(), now, None).await?;
    }
    db.commit(tx).await
}

/// A cohort whose row lock the transaction holds, as its row says.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LockedCohort {
    /// The internal id.
    pub id: i64,
    /// Entries in its import log: the change written now is entry `log_entries + 1`.
    pub log_entries: i64,
    /// Ids in its bitmap changes not yet in its blocks (`bit_changes`).
    pub bits_pending: i32,
}

impl LockedCohort {
    /// The cohort's held-back bitmap changes, for the change written now.
    pub(crate) fn pending_bits(&self) -> PendingBits {
        PendingBits {
            cohort_ref: self.id,
            import_id: self.log_entries + 1,
            pending: usize::try_from(self.bits_pending).unwrap_or(0),
        }
    }
}

/// The cohort, created if it does not exist (named `name`), with its row lock held until
/// the transaction ends. `last_import_at`, when given, is written to a cohort this
/// creates.
pub(crate) async fn create_or_lock(
    tx: &mut PgConnection,
    key: CohortKey<'_>,
    name: &str,
    now: DateTime<Utc>,
    last_import_at: Option<DateTime<Utc>>,
) -> sqlx::Result<LockedCohort> {
    let existing = sqlx::query_as!(
        LockedCohort,
        "SELECT id, log_entries, bits_pending FROM cohorts
          WHERE workspace_id = $1 AND partner = $2 AND cohort_id = $3 FOR UPDATE",
        key.workspace_id,
        key.partner,
        key.cohort_id,
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(cohort) = existing {
        return Ok(cohort);
    }
    // New cohorts of one workspace are created one at a time (this row lock), which is
    // rare enough; existing ones never touch the counter.
    let id = sqlx::query_scalar!(
        r#"UPDATE cohort_id_counters SET next_cohort_id = next_cohort_id + 1 WHERE workspace_id = $1
         RETURNING next_cohort_id - 1 AS "id!""#,
        key.workspace_id,
    )
    .fetch_one(&mut *tx)
    .await?;
    // A concurrent creator may have won the race since the read above: then this locks
    // its row instead.
    sqlx::query_as!(
        LockedCohort,
        "INSERT INTO cohorts AS c (workspace_id, id, partner, cohort_id, name, created_at, updated_at, last_import_at)
         VALUES ($1, $2, $3, $4, $5, $6, $6, $7)
         ON CONFLICT (workspace_id, partner, cohort_id) DO UPDATE SET updated_at = c.updated_at
         RETURNING id, log_entries, bits_pending",
        key.workspace_id,
        id,
        key.partner,
        key.cohort_id,
        name,
        now,
        last_import_at,
    )
    .fetch_one(&mut *tx)
    .await
}

// ---- operator views ---------------------------------------------------------------

/// A workspace's cohorts, of one partner or all, by partner then name.
pub async fn list(db: &Database, workspace_id: Uuid, partner: Option<&str>) -> sqlx::Result<Vec<Cohort>> {
    let mut conn = db.acquire().await?;
    sqlx::query_as!(
        Cohort,
        "SELECT partner, cohort_id, name, member_count, created_at, updated_at, last_import_at
           FROM cohorts WHERE workspace_id = $1 AND ($2::text IS NULL OR partner = $2)
          ORDER BY partner, name, cohort_id",
        workspace_id,
        partner,
    )
    .fetch_all(&mut *conn)
    .await
}

/// One cohort, if it exists.
pub async fn find(db: &Database, key: CohortKey<'_>) -> sqlx::Result<Option<Cohort>> {
    let mut conn = db.acquire().await?;
    sqlx::query_as!(
        Cohort,
        "SELECT partner, cohort_id, name, member_count, created_at, updated_at, last_import_at
           FROM cohorts WHERE workspace_id = $1 AND partner = $2 AND cohort_id = $3",
        key.workspace_id,
        key.partner,
        key.cohort_id,
    )
    .fetch_optional(&mut *conn)
    .await
}

/// A cohort's import log, newest first, at most `limit` entries older than `before`
/// (an import id). `None` if the cohort does not exist.
pub async fn imports(
    db: &Database,
    key: CohortKey<'_>,
    limit: i64,
    before: Option<i64>,
) -> sqlx::Result<Option<Vec<ImportRecord>>> {
    let mut conn = db.acquire().await?;
    let Some(cohort_ref) = find_ref(&mut conn, key).await? else { return Ok(None) };
    let records = sqlx::query_as!(
        ImportRecord,
        r#"SELECT id, kind, request_id, received_at, added, removed, unchanged,
                unmatched_unknown + unmatched_identified_device AS "unmatched!", unmatched_unknown,
                unmatched_identified_device AS unmatched_device_id_of_identified_user, member_count_after
           FROM cohort_imports
          WHERE workspace_id = $1 AND cohort_ref = $2 AND ($3::int8 IS NULL OR id < $3)
          ORDER BY id DESC LIMIT $4"#,
        key.workspace_id,
        cohort_ref,
        before,
        limit,
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(records))
}

/// A workspace's imports across its cohorts, newest first: at most `limit`, older than
/// `before` (a [`WorkspaceImport::position`]).
pub async fn workspace_imports(
    db: &Database,
    workspace_id: Uuid,
    limit: i64,
    before: Option<(i64, i64, i64)>,
) -> sqlx::Result<Vec<WorkspaceImport>> {
    let (before_time, before_cohort, before_id) = match before {
        Some((micros, cohort, id)) => (DateTime::<Utc>::from_timestamp_micros(micros), cohort, id),
        None => (None, 0, 0),
    };
    let mut conn = db.acquire().await?;
    sqlx::query!(
        r#"SELECT c.partner, c.cohort_id, i.cohort_ref, i.id, i.kind, i.request_id, i.received_at, i.added, i.removed,
                i.unchanged, i.unmatched_unknown + i.unmatched_identified_device AS "unmatched!", i.unmatched_unknown,
                i.unmatched_identified_device AS unmatched_device_id_of_identified_user, i.member_count_after
           FROM cohort_imports i
           JOIN cohorts c ON c.workspace_id = i.workspace_id AND c.id = i.cohort_ref
          WHERE i.workspace_id = $1 AND c.workspace_id = $1
            AND ($2::timestamptz IS NULL OR (i.received_at, i.cohort_ref, i.id) < ($2, $3, $4))
          ORDER BY i.received_at DESC, i.cohort_ref DESC, i.id DESC LIMIT $5"#,
        workspace_id,
        before_time,
        before_cohort,
        before_id,
        limit,
    )
    .map(|row| WorkspaceImport {
        partner: row.partner,
        cohort_id: row.cohort_id,
        cohort_ref: row.cohort_ref,
        record: ImportRecord {
            id: row.id,
            kind: row.kind,
            request_id: row.request_id,
            received_at: row.received_at,
            added: row.added,
            removed: row.removed,
            unchanged: row.unchanged,
            unmatched: row.unmatched,
            unmatched_unknown: row.unmatched_unknown,
            unmatched_device_id_of_identified_user: row.unmatched_device_id_of_identified_user,
            member_count_after: row.member_count_after,
        },
    })
    .fetch_all(&mut *conn)
    .await
}

/// A page of a cohort's members in internal-id order: at most `limit` members after
/// `after` (the last internal user id of the previous page). `None` if the cohort does
/// not exist.
pub async fn members(
    db: &Database,
    key: CohortKey<'_>,
    limit: i64,
    after: Option<i64>,
) -> sqlx::Result<Option<Vec<Member>>> {
    let mut conn = db.acquire().await?;
    let Some(cohort_ref) = find_ref(&mut conn, key).await? else { return Ok(None) };
    let members = sqlx::query_as!(
        Member,
        "SELECT m.user_id, u.braze_id, u.external_id, m.added_at
           FROM cohort_memberships m
           JOIN users u ON u.workspace_id = m.workspace_id AND u.id = m.user_id
          WHERE m.workspace_id = $1 AND m.cohort_ref = $2 AND m.user_id > $3
          ORDER BY m.user_id LIMIT $4",
        key.workspace_id,
        cohort_ref,
        after.unwrap_or(i64::MIN),
        limit,
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(members))
}

/// Deletes a cohort with its memberships, bitmaps, held-back bit changes and import log
/// (the last three by foreign key cascade). `false` if it did not exist.
pub async fn delete(db: &Database, key: CohortKey<'_>) -> sqlx::Result<bool> {
    let mut tx = db.begin().await?;
    // It writes memberships: a concurrent user deletion must not take one of them from
    // under it (nor it one from under the user deletion's member count).
    lock_workspace(&mut tx, key.workspace_id, WorkspaceLock::OneCohort).await?;
    let Some(cohort_ref) = find_ref(&mut tx, key).await? else { return Ok(false) };
    sqlx::query!(
        "DELETE FROM cohort_memberships WHERE workspace_id = $1 AND cohort_ref = $2",
        key.workspace_id,
        cohort_ref,
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!("DELETE FROM cohorts WHERE workspace_id = $1 AND id = $2", key.workspace_id, cohort_ref)
        .execute(&mut *tx)
        .await?;
    db.commit(tx).await?;
    Ok(true)
}

/// The internal id of a cohort, if it exists.
pub(crate) async fn find_ref(conn: &mut PgConnection, key: CohortKey<'_>) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar!(
        "SELECT id FROM cohorts WHERE workspace_id = $1 AND partner = $2 AND cohort_id = $3",
        key.workspace_id,
        key.partner,
        key.cohort_id,
    )
    .fetch_optional(conn)
    .await
}

impl<'a> CohortKey<'a> {
    /// The key of a cohort named by a partner request.
    pub fn new(workspace_id: Uuid, partner: &'a str, cohort_id: &'a CohortId) -> Self {
        CohortKey { workspace_id, partner, cohort_id: cohort_id.as_str() }
    }
}
