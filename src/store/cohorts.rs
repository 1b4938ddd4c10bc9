//! `cohorts`, `cohort_memberships`, `cohort_imports`: partner cohorts, who is in them,
//! and the log of every accepted import.
//!
//! An import is one transaction of three statements whatever its size: the first takes
//! the workspace's membership lock in shared mode (see [`super::locks`]: it keeps user
//! deletions out), the second creates or locks the cohort row (imports of one cohort run
//! one after the other, so member counts are exact and no two imports wait on each
//! other's membership rows), the third resolves every identifier, applies the changes,
//! updates the count and writes the log. Triggers keep the cohort's bitmaps (migration
//! `…013`) in step within that statement.
//! (Resolving before taking the lock was measured too: it lets a request overtake one on
//! the same cohort sent just before it, and under load it made the tail latency worse.)

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, Postgres, Transaction};
use utoipa::ToSchema;
use uuid::Uuid;

use super::locks::{self, MembershipWriter};
use crate::store::database::Database;
use crate::{
    domain::{CohortChanges, CohortId, CohortName},
    metrics::ImportOutcome,
};

/// How many times an import is attempted when PostgreSQL reports a transient conflict.
const IMPORT_ATTEMPTS: u32 = 5;

/// A cohort as the operator API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct Cohort {
    /// The partner that posts it.
    pub partner: String,
    /// The partner's id for it.
    pub cohort_id: String,
    /// Its name (its id until the partner names it).
    pub name: String,
    /// How many users are in it now.
    pub member_count: i64,
    /// When it was first posted.
    pub created_at: DateTime<Utc>,
    /// When its name or its members last changed.
    pub updated_at: DateTime<Utc>,
    /// When the last users request was accepted; null before the first.
    pub last_import_at: Option<DateTime<Utc>>,
}

/// One accepted users request, as logged.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct ImportRecord {
    /// The log entry's id; pass it as `before` to page further back.
    pub id: i64,
    /// The request id (`x-request-id`), to find the request in the logs.
    pub request_id: String,
    /// When the request was received.
    pub received_at: DateTime<Utc>,
    /// Memberships that newly exist.
    pub added: i32,
    /// Memberships that newly ended.
    pub removed: i32,
    /// Users already in the requested state.
    pub unchanged: i32,
    /// Identifiers that matched no eligible user.
    pub unmatched: i32,
    /// The cohort's member count right after this import.
    pub member_count_after: i64,
}

/// A member of a cohort.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct Member {
    /// Internal user id: the pagination key, not shown.
    #[serde(skip)]
    pub user_id: i64,
    /// The user's public id.
    pub braze_id: Uuid,
    /// The user's external id; null for an anonymous user.
    pub external_id: Option<String>,
    /// When the user joined the cohort.
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
    let mut conn = db.acquire().await?;
    sqlx::query(
        "INSERT INTO cohorts (workspace_id, partner, cohort_id, name) VALUES ($1, $2, $3, $4)
         ON CONFLICT (workspace_id, partner, cohort_id)
         DO UPDATE SET name = excluded.name, updated_at = now() WHERE cohorts.name <> excluded.name",
    )
    .bind(key.workspace_id)
    .bind(key.partner)
    .bind(key.cohort_id)
    .bind(name.as_str())
    .execute(&mut *conn)
    .await
    .map(|_| ())
}

/// Applies a users request to a cohort (created, named by its id, if unknown) in one
/// transaction, logs it under `request_id`, and returns its counts. A deadlock or a
/// serialization failure is retried here, so it never reaches the client.
pub async fn import(
    db: &Database,
    key: CohortKey<'_>,
    changes: &CohortChanges,
    request_id: &str,
) -> sqlx::Result<ImportOutcome> {
    let columns = ChangeColumns::of(changes);
    let mut attempt = 1;
    loop {
        match try_import(db, key, &columns, request_id).await {
            Err(error) if attempt < IMPORT_ATTEMPTS && is_transient_conflict(&error) => {
                tracing::debug!(%error, attempt, "cohort import conflicted; retrying");
                tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt))).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// 40001 serialization failure, 40P01 deadlock: not expected from the service's own
/// writers (their locks are taken in one order), but possible against SQL run by hand,
/// and worth a second attempt.
fn is_transient_conflict(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40001" | "40P01")))
}

/// The identifiers of a request as parallel arrays, bound to `unnest(...)`.
struct ChangeColumns<'a> {
    external_change: Vec<i32>,
    external_id: Vec<&'a str>,
    external_remove: Vec<bool>,
    alias_change: Vec<i32>,
    alias_label: Vec<&'a str>,
    alias_name: Vec<&'a str>,
    alias_remove: Vec<bool>,
    device_change: Vec<i32>,
    device_id: Vec<&'a str>,
    device_remove: Vec<bool>,
}

impl<'a> ChangeColumns<'a> {
    fn of(changes: &'a CohortChanges) -> Self {
        ChangeColumns {
            external_change: changes.external_ids.iter().map(|t| t.change).collect(),
            external_id: changes.external_ids.iter().map(|t| t.id.as_str()).collect(),
            external_remove: changes.external_ids.iter().map(|t| t.remove).collect(),
            alias_change: changes.aliases.iter().map(|t| t.change).collect(),
            alias_label: changes.aliases.iter().map(|t| t.id.alias_label.as_str()).collect(),
            alias_name: changes.aliases.iter().map(|t| t.id.alias_name.as_str()).collect(),
            alias_remove: changes.aliases.iter().map(|t| t.remove).collect(),
            device_change: changes.device_ids.iter().map(|t| t.change).collect(),
            device_id: changes.device_ids.iter().map(|t| t.id.as_str()).collect(),
            device_remove: changes.device_ids.iter().map(|t| t.remove).collect(),
        }
    }
}

/// Creates the cohort if needed and locks its row until the transaction ends.
const LOCK_COHORT: &str = "
INSERT INTO cohorts (workspace_id, partner, cohort_id, name) VALUES ($1, $2, $3, $3)
ON CONFLICT (workspace_id, partner, cohort_id) DO UPDATE SET last_import_at = now()
RETURNING id";

/// Resolves, applies, counts and logs, in one statement. `resolved` holds one row per
/// identifier with the user it reaches (null: no eligible user); `requested` keeps, per
/// user, the last change that reaches it; the data-modifying CTEs apply those, and their
/// RETURNING rows are the exact counts (the cohort row is locked, so nothing else changes
/// these memberships meanwhile).
const APPLY_CHANGES: &str = "
WITH resolved AS MATERIALIZED (
    SELECT 0 AS kind, c.change, c.remove, c.value, NULL::text AS label, u.id AS user_id
      FROM unnest($3::int4[], $4::text[], $5::bool[]) AS c(change, value, remove)
      LEFT JOIN users u ON u.workspace_id = $1 AND u.external_id = c.value
    UNION ALL
    SELECT 1, c.change, c.remove, c.value, c.label, a.user_id
      FROM unnest($6::int4[], $7::text[], $8::text[], $9::bool[]) AS c(change, label, value, remove)
      LEFT JOIN user_aliases a ON a.workspace_id = $1 AND a.alias_label = c.label AND a.alias_name = c.value
    UNION ALL
    SELECT 2, c.change, c.remove, c.value, NULL, eligible.user_id
      FROM unnest($10::int4[], $11::text[], $12::bool[]) AS c(change, value, remove)
      LEFT JOIN LATERAL (
          SELECT d.user_id FROM user_device_ids d
            JOIN users u ON u.workspace_id = d.workspace_id AND u.id = d.user_id AND u.external_id IS NULL
           WHERE d.workspace_id = $1 AND d.device_id = c.value
      ) AS eligible ON true
),
requested AS MATERIALIZED (
    SELECT DISTINCT ON (user_id) user_id, remove
      FROM resolved WHERE user_id IS NOT NULL
     ORDER BY user_id, change DESC
),
added AS (
    INSERT INTO cohort_memberships (workspace_id, cohort_ref, user_id)
    SELECT $1, $2, user_id FROM requested WHERE NOT remove
    ON CONFLICT DO NOTHING
    RETURNING 1
),
removed AS (
    -- One primary-key probe per user, then a delete by row address, whatever the
    -- statistics say. Written as a join, it was planned from a growing cohort's stale
    -- row estimate (a few rows) as a hash join over every member of the cohort: in
    -- the benchmark a removal read ~11k members at 400k changes, and removals were 1.6x
    -- slower than additions. The OFFSET 0 keeps the lateral subquery a nested loop.
    DELETE FROM cohort_memberships m
     USING (SELECT member.row_address
              FROM requested r
             CROSS JOIN LATERAL (SELECT ctid AS row_address FROM cohort_memberships
                                  WHERE workspace_id = $1 AND cohort_ref = $2 AND user_id = r.user_id
                                 OFFSET 0) AS member
             WHERE r.remove) AS doomed
     WHERE m.ctid = doomed.row_address
    RETURNING 1
),
counts AS (
    SELECT (SELECT count(*) FROM added) AS added,
           (SELECT count(*) FROM removed) AS removed,
           (SELECT count(*) FROM requested) AS matched,
           (SELECT count(DISTINCT (kind, label, value)) FROM resolved WHERE user_id IS NULL) AS unmatched
),
cohort AS (
    UPDATE cohorts c
       SET member_count = c.member_count + counts.added - counts.removed,
           last_import_at = now(),
           updated_at = CASE WHEN counts.added + counts.removed > 0 THEN now() ELSE c.updated_at END
      FROM counts
     WHERE c.workspace_id = $1 AND c.id = $2
    RETURNING c.member_count
)
INSERT INTO cohort_imports
       (workspace_id, cohort_ref, request_id, received_at, added, removed, unchanged, unmatched, member_count_after)
SELECT $1, $2, $13, now(), counts.added, counts.removed, counts.matched - counts.added - counts.removed,
       counts.unmatched, cohort.member_count
  FROM counts, cohort
RETURNING added::int8, removed::int8, unchanged::int8, unmatched::int8";

async fn try_import(
    db: &Database,
    key: CohortKey<'_>,
    columns: &ChangeColumns<'_>,
    request_id: &str,
) -> sqlx::Result<ImportOutcome> {
    let mut tx: Transaction<'_, Postgres> = db.begin().await?;
    // Before the statement that resolves users: it must not start while a user deletion
    // of this workspace is uncommitted.
    locks::memberships(&mut tx, key.workspace_id, MembershipWriter::OneCohort).await?;
    let cohort_ref: i64 = sqlx::query_scalar(LOCK_COHORT)
        .bind(key.workspace_id)
        .bind(key.partner)
        .bind(key.cohort_id)
        .fetch_one(&mut *tx)
        .await?;
    let (added, removed, unchanged, unmatched): (i64, i64, i64, i64) = sqlx::query_as(APPLY_CHANGES)
        .bind(key.workspace_id)
        .bind(cohort_ref)
        .bind(&columns.external_change)
        .bind(&columns.external_id)
        .bind(&columns.external_remove)
        .bind(&columns.alias_change)
        .bind(&columns.alias_label)
        .bind(&columns.alias_name)
        .bind(&columns.alias_remove)
        .bind(&columns.device_change)
        .bind(&columns.device_id)
        .bind(&columns.device_remove)
        .bind(request_id)
        .fetch_one(&mut *tx)
        .await?;
    db.commit(tx).await?;
    // Counts are non-negative by construction.
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    Ok(ImportOutcome {
        added: count(added),
        removed: count(removed),
        unchanged: count(unchanged),
        unmatched: count(unmatched),
    })
}

// ---- operator views ---------------------------------------------------------------

/// A workspace's cohorts, of one partner or all, by partner then name.
pub async fn list(db: &Database, workspace_id: Uuid, partner: Option<&str>) -> sqlx::Result<Vec<Cohort>> {
    let mut conn = db.acquire().await?;
    sqlx::query_as(
        "SELECT partner, cohort_id, name, member_count, created_at, updated_at, last_import_at
           FROM cohorts WHERE workspace_id = $1 AND ($2::text IS NULL OR partner = $2)
          ORDER BY partner, name, cohort_id",
    )
    .bind(workspace_id)
    .bind(partner)
    .fetch_all(&mut *conn)
    .await
}

/// One cohort, if it exists.
pub async fn find(db: &Database, key: CohortKey<'_>) -> sqlx::Result<Option<Cohort>> {
    let mut conn = db.acquire().await?;
    sqlx::query_as(
        "SELECT partner, cohort_id, name, member_count, created_at, updated_at, last_import_at
           FROM cohorts WHERE workspace_id = $1 AND partner = $2 AND cohort_id = $3",
    )
    .bind(key.workspace_id)
    .bind(key.partner)
    .bind(key.cohort_id)
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
    let records = sqlx::query_as(
        "SELECT id, request_id, received_at, added, removed, unchanged, unmatched, member_count_after
           FROM cohort_imports
          WHERE workspace_id = $1 AND cohort_ref = $2 AND ($3::int8 IS NULL OR id < $3)
          ORDER BY id DESC LIMIT $4",
    )
    .bind(key.workspace_id)
    .bind(cohort_ref)
    .bind(before)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(records))
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
    let members = sqlx::query_as(
        "SELECT m.user_id, u.braze_id, u.external_id, m.added_at
           FROM cohort_memberships m
           JOIN users u ON u.workspace_id = m.workspace_id AND u.id = m.user_id
          WHERE m.workspace_id = $1 AND m.cohort_ref = $2 AND m.user_id > $3
          ORDER BY m.user_id LIMIT $4",
    )
    .bind(key.workspace_id)
    .bind(cohort_ref)
    .bind(after.unwrap_or(i64::MIN))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(members))
}

/// Deletes a cohort with its memberships, bitmaps (by trigger) and import log (by
/// cascade). `false` if it did not exist.
pub async fn delete(db: &Database, key: CohortKey<'_>) -> sqlx::Result<bool> {
    let mut tx = db.begin().await?;
    // It writes memberships: a concurrent user deletion must not take one of them from
    // under it (nor it one from under the user deletion's member count).
    locks::memberships(&mut tx, key.workspace_id, MembershipWriter::OneCohort).await?;
    let result = sqlx::query("DELETE FROM cohorts WHERE workspace_id = $1 AND partner = $2 AND cohort_id = $3")
        .bind(key.workspace_id)
        .bind(key.partner)
        .bind(key.cohort_id)
        .execute(&mut *tx)
        .await?;
    db.commit(tx).await?;
    Ok(result.rows_affected() == 1)
}

/// The internal id of a cohort, if it exists.
async fn find_ref(conn: &mut PgConnection, key: CohortKey<'_>) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar("SELECT id FROM cohorts WHERE workspace_id = $1 AND partner = $2 AND cohort_id = $3")
        .bind(key.workspace_id)
        .bind(key.partner)
        .bind(key.cohort_id)
        .fetch_optional(conn)
        .await
}

impl<'a> CohortKey<'a> {
    /// The key of a cohort named by a partner request.
    pub fn new(workspace_id: Uuid, partner: &'a str, cohort_id: &'a CohortId) -> Self {
        CohortKey { workspace_id, partner, cohort_id: cohort_id.as_str() }
    }
}
