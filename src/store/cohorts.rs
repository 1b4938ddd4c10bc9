//! `cohorts`, `cohort_memberships`, `cohort_imports`: partner cohorts, who is in them,
//! and the log of every change to their membership.
//!
//! An import is one transaction of a fixed number of statements whatever its size, each
//! on one workspace's rows (on Citus, one node): it takes the workspace lock in shared
//! mode (see [`super::locks`]: it keeps user deletions out), creates or locks the cohort
//! row (imports of one cohort run one after the other, so what they read of its
//! memberships stays true until they commit), resolves every identifier and reads
//! whether each user is a member, then writes exactly the memberships that change, their
//! bits, the count and the log.
//! (Resolving before taking the lock was measured too: it lets a request overtake one on
//! the same cohort sent just before it, and under load it made the tail latency worse.)

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, Postgres, Transaction};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    bitmaps::{self, Bitmap},
    copy::CopyRows,
    locks::{WorkspaceLock, lock_workspace},
};
use crate::domain::{
    CohortChanges, CohortId, CohortName, ImportOutcome, MembershipChanges,
    membership::{MatchedUser, Resolved, SentIdentifier},
};
use crate::store::database::Database;

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

/// One change to a cohort's membership, as logged.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct ImportRecord {
    /// The log entry's id within the cohort; pass it as `before` to page further back.
    pub id: i64,
    /// `import` (a partner's users request) or `user_deletion` (an operator deleted a
    /// member).
    pub kind: String,
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
    /// The cohort's member count right after this change.
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
    let mut tx = db.begin().await?;
    let now = Utc::now();
    let renamed = sqlx::query(
        "UPDATE cohorts SET name = $4, updated_at = $5
          WHERE workspace_id = $1 AND partner = $2 AND cohort_id = $3 AND name <> $4",
    )
    .bind(key.workspace_id)
    .bind(key.partner)
    .bind(key.cohort_id)
    .bind(name.as_str())
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if renamed.rows_affected() == 0 {
        // Unknown, or already so named (which this finds and leaves alone).
        create_or_lock(&mut tx, key, name.as_str(), now, None).await?;
    }
    db.commit(tx).await
}

/// The cohort's internal id, creating the cohort (named `name`) if it does not exist, and
/// holding its row lock until the transaction ends. `last_import_at`, when given, is
/// written to a cohort this creates.
async fn create_or_lock(
    tx: &mut PgConnection,
    key: CohortKey<'_>,
    name: &str,
    now: DateTime<Utc>,
    last_import_at: Option<DateTime<Utc>>,
) -> sqlx::Result<i64> {
    let existing: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM cohorts WHERE workspace_id = $1 AND partner = $2 AND cohort_id = $3 FOR UPDATE",
    )
    .bind(key.workspace_id)
    .bind(key.partner)
    .bind(key.cohort_id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(id) = existing {
        return Ok(id);
    }
    // New cohorts of one workspace are created one at a time (this row lock), which is
    // rare enough; existing ones never touch the counter.
    let id: i64 = sqlx::query_scalar(
        "UPDATE cohort_id_counters SET next_cohort_id = next_cohort_id + 1 WHERE workspace_id = $1
         RETURNING next_cohort_id - 1",
    )
    .bind(key.workspace_id)
    .fetch_one(&mut *tx)
    .await?;
    // A concurrent creator may have won the race since the read above: then this locks
    // its row instead.
    sqlx::query_scalar(
        "INSERT INTO cohorts AS c (workspace_id, id, partner, cohort_id, name, created_at, updated_at, last_import_at)
         VALUES ($1, $2, $3, $4, $5, $6, $6, $7)
         ON CONFLICT (workspace_id, partner, cohort_id) DO UPDATE SET updated_at = c.updated_at
         RETURNING id",
    )
    .bind(key.workspace_id)
    .bind(id)
    .bind(key.partner)
    .bind(key.cohort_id)
    .bind(name)
    .bind(now)
    .bind(last_import_at)
    .fetch_one(&mut *tx)
    .await
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
        match try_import(db, key, changes, &columns, request_id).await {
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
    external_id: Vec<&'a str>,
    alias_label: Vec<&'a str>,
    alias_name: Vec<&'a str>,
    device_id: Vec<&'a str>,
}

impl<'a> ChangeColumns<'a> {
    fn of(changes: &'a CohortChanges) -> Self {
        ChangeColumns {
            external_id: changes.external_ids.iter().map(|t| t.id.as_str()).collect(),
            alias_label: changes.aliases.iter().map(|t| t.id.alias_label.as_str()).collect(),
            alias_name: changes.aliases.iter().map(|t| t.id.alias_name.as_str()).collect(),
            device_id: changes.device_ids.iter().map(|t| t.id.as_str()).collect(),
        }
    }
}

/// One row per identifier: its kind (0 external id, 1 alias, 2 device id) and 1-based
/// position in its array, the user it matches (null: no eligible user) and whether that
/// user is in cohort `$2` now. Every branch is a unique-index probe, and so is the
/// membership test: a lateral subquery kept apart by `OFFSET 0`, so the planner cannot
/// turn it into a join over every member of the cohort (which it did, from a growing
/// cohort's stale row estimate, at 1.5-3 s a request).
const RESOLVE: &str = "
SELECT r.kind, r.position, r.user_id, coalesce(m.member, false) AS member
  FROM (SELECT 0::int2 AS kind, c.position, u.id AS user_id
          FROM unnest($3::text[]) WITH ORDINALITY AS c(value, position)
          LEFT JOIN users u ON u.workspace_id = $1 AND u.external_id = c.value
        UNION ALL
        SELECT 1::int2, c.position, a.user_id
          FROM unnest($4::text[], $5::text[]) WITH ORDINALITY AS c(label, value, position)
          LEFT JOIN user_aliases a ON a.workspace_id = $1 AND a.alias_label = c.label AND a.alias_name = c.value
        UNION ALL
        SELECT 2::int2, c.position, eligible.user_id
          FROM unnest($6::text[]) WITH ORDINALITY AS c(value, position)
          LEFT JOIN LATERAL (
              SELECT d.user_id FROM user_device_ids d
                JOIN users u ON u.workspace_id = d.workspace_id AND u.id = d.user_id AND u.external_id IS NULL
               WHERE d.workspace_id = $1 AND d.device_id = c.value
          ) AS eligible ON true
       ) AS r
  LEFT JOIN LATERAL (
      SELECT true AS member FROM cohort_memberships
       WHERE workspace_id = $1 AND cohort_ref = $2 AND user_id = r.user_id
      OFFSET 0
  ) AS m ON true";

async fn try_import(
    db: &Database,
    key: CohortKey<'_>,
    changes: &CohortChanges,
    columns: &ChangeColumns<'_>,
    request_id: &str,
) -> sqlx::Result<ImportOutcome> {
    let mut tx: Transaction<'_, Postgres> = db.begin().await?;
    let now = Utc::now();
    // Before the statement that resolves users: it must not start while a user deletion
    // of this workspace is uncommitted.
    lock_workspace(&mut tx, key.workspace_id, WorkspaceLock::OneCohort).await?;
    let cohort_ref = create_or_lock(&mut tx, key, key.cohort_id, now, Some(now)).await?;
    let rows: Vec<(i16, i64, Option<i64>, bool)> = sqlx::query_as(RESOLVE)
        .bind(key.workspace_id)
        .bind(cohort_ref)
        .bind(&columns.external_id)
        .bind(&columns.alias_label)
        .bind(&columns.alias_name)
        .bind(&columns.device_id)
        .fetch_all(&mut *tx)
        .await?;
    let resolved = rows
        .into_iter()
        .map(|(kind, position, user, member)| {
            let sent = sent_identifier(changes, kind, position)
                .ok_or_else(|| sqlx::Error::Protocol("resolved an identifier that was not sent".into()))?;
            let (identifier, change, remove) = sent;
            Ok(Resolved { identifier, change, remove, user: user.map(|id| MatchedUser { id, member }) })
        })
        .collect::<sqlx::Result<Vec<_>>>()?;
    let decided = MembershipChanges::decide(resolved);

    write_memberships(&mut tx, key.workspace_id, cohort_ref, &decided.added, &decided.removed, now).await?;
    let outcome = decided.outcome();
    log_import(&mut tx, key.workspace_id, cohort_ref, request_id, now, &outcome).await?;
    db.commit(tx).await?;
    Ok(outcome)
}

/// The identifier at 1-based `position` of the array of `kind` (as [`RESOLVE`] numbers
/// them), with its change's position and direction.
fn sent_identifier(changes: &CohortChanges, kind: i16, position: i64) -> Option<(SentIdentifier<'_>, i32, bool)> {
    let index = usize::try_from(position.checked_sub(1)?).ok()?;
    match kind {
        0 => changes.external_ids.get(index).map(|t| (SentIdentifier::ExternalId(&t.id), t.change, t.remove)),
        1 => changes.aliases.get(index).map(|t| (SentIdentifier::Alias(&t.id), t.change, t.remove)),
        2 => changes.device_ids.get(index).map(|t| (SentIdentifier::DeviceId(&t.id), t.change, t.remove)),
        _ => None,
    }
}

/// Adds and removes memberships of one cohort, with their bits; the caller holds the
/// cohort's row lock and has read that `added` are not members and `removed` are.
async fn write_memberships(
    tx: &mut PgConnection,
    workspace_id: Uuid,
    cohort_ref: i64,
    added: &[i64],
    removed: &[i64],
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    let mut rows = CopyRows::with_capacity(added.len(), 50);
    for &user_id in added {
        rows.uuid(workspace_id).int(cohort_ref).int(user_id).timestamp(now).end_row();
    }
    rows.copy(tx, "COPY cohort_memberships (workspace_id, cohort_ref, user_id, added_at) FROM STDIN (FORMAT binary)")
        .await?;
    if !removed.is_empty() {
        sqlx::query("DELETE FROM cohort_memberships WHERE workspace_id = $1 AND cohort_ref = $2 AND user_id = ANY($3)")
            .bind(workspace_id)
            .bind(cohort_ref)
            .bind(removed)
            .execute(&mut *tx)
            .await?;
    }
    bitmaps::apply(tx, workspace_id, Bitmap::Cohort(cohort_ref), added, removed).await
}

/// Moves the cohort's count by the import's added and removed and appends the import to
/// its log.
async fn log_import(
    tx: &mut PgConnection,
    workspace_id: Uuid,
    cohort_ref: i64,
    request_id: &str,
    now: DateTime<Utc>,
    outcome: &ImportOutcome,
) -> sqlx::Result<()> {
    // At most 1,000 identifiers a request.
    let count = |n: u64| i32::try_from(n).unwrap_or(i32::MAX);
    let changed = outcome.added + outcome.removed > 0;
    let (member_count, id): (i64, i64) = sqlx::query_as(
        "UPDATE cohorts SET member_count = member_count + $3, log_entries = log_entries + 1,
                updated_at = coalesce($4, updated_at), last_import_at = $5
          WHERE workspace_id = $1 AND id = $2
         RETURNING member_count, log_entries",
    )
    .bind(workspace_id)
    .bind(cohort_ref)
    .bind(outcome.added as i64 - outcome.removed as i64)
    .bind(changed.then_some(now))
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO cohort_imports (workspace_id, cohort_ref, id, kind, request_id, received_at,
                                     added, removed, unchanged, unmatched, member_count_after)
         VALUES ($1, $2, $3, 'import', $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(workspace_id)
    .bind(cohort_ref)
    .bind(id)
    .bind(request_id)
    .bind(now)
    .bind(count(outcome.added))
    .bind(count(outcome.removed))
    .bind(count(outcome.unchanged))
    .bind(count(outcome.unmatched))
    .bind(member_count)
    .execute(&mut *tx)
    .await
    .map(|_| ())
}

/// Takes user `user_id` out of every cohort it is in, with its bits and a `user_deletion`
/// entry in each such cohort's log, in four statements however many cohorts; the caller
/// holds the workspace lock for a user deletion.
pub(super) async fn remove_user_everywhere(
    tx: &mut PgConnection,
    workspace_id: Uuid,
    user_id: i64,
    request_id: &str,
) -> sqlx::Result<()> {
    // Through the workspace's cohorts: one primary-key probe per cohort.
    let cohorts: Vec<i64> = sqlx::query_scalar(
        "DELETE FROM cohort_memberships m USING cohorts c
          WHERE c.workspace_id = $1 AND m.workspace_id = $1 AND m.cohort_ref = c.id AND m.user_id = $2
         RETURNING m.cohort_ref",
    )
    .bind(workspace_id)
    .bind(user_id)
    .fetch_all(&mut *tx)
    .await?;
    if cohorts.is_empty() {
        return Ok(());
    }
    bitmaps::clear_in_cohorts(tx, workspace_id, &cohorts, user_id).await?;
    let now = Utc::now();
    let logged: Vec<(i64, i64, i64)> = sqlx::query_as(
        "UPDATE cohorts SET member_count = member_count - 1, log_entries = log_entries + 1, updated_at = $3
          WHERE workspace_id = $1 AND id = ANY($2)
         RETURNING id, member_count, log_entries",
    )
    .bind(workspace_id)
    .bind(&cohorts)
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    let mut rows = CopyRows::with_capacity(logged.len(), 160);
    for (cohort_ref, member_count, id) in logged {
        rows.uuid(workspace_id).int(cohort_ref).int(id).text(Some("user_deletion")).text(Some(request_id));
        rows.timestamp(now).int4(0).int4(1).int4(0).int4(0).int(member_count).end_row();
    }
    rows.copy(
        tx,
        "COPY cohort_imports (workspace_id, cohort_ref, id, kind, request_id, received_at,
                              added, removed, unchanged, unmatched, member_count_after) FROM STDIN (FORMAT binary)",
    )
    .await
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
        "SELECT id, kind, request_id, received_at, added, removed, unchanged, unmatched, member_count_after
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

/// Deletes a cohort with its memberships, bitmaps and import log (those two by foreign
/// key cascade). `false` if it did not exist.
pub async fn delete(db: &Database, key: CohortKey<'_>) -> sqlx::Result<bool> {
    let mut tx = db.begin().await?;
    // It writes memberships: a concurrent user deletion must not take one of them from
    // under it (nor it one from under the user deletion's member count).
    lock_workspace(&mut tx, key.workspace_id, WorkspaceLock::OneCohort).await?;
    let Some(cohort_ref) = find_ref(&mut tx, key).await? else { return Ok(false) };
    sqlx::query("DELETE FROM cohort_memberships WHERE workspace_id = $1 AND cohort_ref = $2")
        .bind(key.workspace_id)
        .bind(cohort_ref)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM cohorts WHERE workspace_id = $1 AND id = $2")
        .bind(key.workspace_id)
        .bind(cohort_ref)
        .execute(&mut *tx)
        .await?;
    db.commit(tx).await?;
    Ok(true)
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
