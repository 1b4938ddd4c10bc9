//! Changing a cohort's membership: an add/remove request ([`import`]), whichever protocol
//! asked, with the bitmaps, the count and the log; the statements it shares with a full
//! replace (`super::replace`).
//!
//! Each is one transaction of a fixed number of statements whatever its size, each on
//! one workspace's rows (on Citus, one node): it takes the workspace lock in shared mode
//! (see [`crate::store::locks`]: it keeps user deletions out), creates or locks the
//! cohort row (changes of one cohort run one after the other, so what they read of its
//! memberships stays true until they commit), reads who is a member, then writes exactly
//! the memberships that change, their bits, the count and the log.
//! (Resolving before taking the lock was measured too: it lets a request overtake one on
//! the same cohort sent just before it, and under load it made the tail latency worse.)

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

use super::{
    CohortKey, LockedCohort, create_or_lock,
    deliveries::{delivered_before, record_delivery},
    resolve::resolve,
    unmatched,
};
use crate::domain::{CohortName, ImportKind, ImportOutcome, MemberChange, MembershipChanges};
use crate::store::{
    bit_changes,
    copy::CopyRows,
    database::Database,
    locks::{WorkspaceLock, lock_workspace},
};

/// How many times a change is attempted when PostgreSQL reports a transient conflict.
const IMPORT_ATTEMPTS: u32 = 5;
/// Memberships added or removed per statement by a replace.
const ROWS_PER_STATEMENT: usize = 50_000;

/// What a change to a cohort's membership is, besides its members.
#[derive(Debug, Clone, Copy)]
pub struct Import<'a> {
    /// The protocol that asked.
    pub kind: ImportKind,
    /// The request id, logged.
    pub request_id: &'a str,
    /// The cohort's name as the message gives it (webhooks name the cohort in every
    /// message): a cohort this creates takes it, an existing one is renamed. `None`
    /// leaves the name (a new cohort is named by its id).
    pub name: Option<&'a CohortName>,
    /// Members the message named in no form a matching rule could read: counted among
    /// the unmatched, as unknown.
    pub unreadable: u64,
    /// The message's delivery id, where the protocol delivers a message more than once
    /// (Amplitude's `message_id`): a message already applied for this workspace and
    /// partner answers its first outcome and changes nothing.
    pub message_id: Option<&'a str>,
    /// How long an identifier that matched nobody stays listed if not sent again.
    pub unmatched_retention: Duration,
}

impl<'a> Import<'a> {
    /// A change of `kind` under `request_id` that names no cohort name, no unreadable
    /// member and no message id.
    pub fn new(kind: ImportKind, request_id: &'a str, unmatched_retention: Duration) -> Self {
        Import { kind, request_id, name: None, unreadable: 0, message_id: None, unmatched_retention }
    }
}

/// What an add/remove request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Its counts (a repeated message's are its first delivery's).
    pub outcome: ImportOutcome,
    /// Whether its message had been applied before, so this changed nothing.
    pub repeated: bool,
}

/// Applies an add/remove request to a cohort (created if unknown) in one transaction,
/// logs it, and returns its counts. A deadlock or a serialization failure is retried
/// here, so it never reaches the client.
pub async fn import(
    db: &Database,
    key: CohortKey<'_>,
    import: &Import<'_>,
    changes: &[MemberChange],
) -> sqlx::Result<Applied> {
    retrying(|| try_import(db, key, import, changes)).await
}

async fn try_import(
    db: &Database,
    key: CohortKey<'_>,
    import: &Import<'_>,
    changes: &[MemberChange],
) -> sqlx::Result<Applied> {
    let mut tx: Transaction<'_, Postgres> = db.begin().await?;
    let now = Utc::now();
    // Before the statement that resolves users: it must not start while a user deletion
    // of this workspace is uncommitted.
    lock_workspace(&mut tx, key.workspace_id, WorkspaceLock::OneCohort).await?;
    let mut cohort = lock_cohort(&mut tx, key, import, now).await?;
    if let Some(outcome) = delivered_before(&mut tx, key, import).await? {
        return Ok(Applied { outcome, repeated: true });
    }
    let resolved = resolve(&mut tx, key.workspace_id, Some(cohort.id), changes.iter().map(|c| &c.member)).await?;
    let mut decided = MembershipChanges::decide(changes, resolved);
    decided.unmatched.unknown += import.unreadable;
    write_memberships(&mut tx, key.workspace_id, &mut cohort, &decided.added, &decided.removed, now).await?;
    let unmatched: Vec<_> = decided.unmatched_members.iter().map(|&(i, reason)| (&changes[i].member, reason)).collect();
    let listed =
        unmatched::record(&mut tx, key.workspace_id, cohort.id, &unmatched, now, import.unmatched_retention).await?;
    let outcome = decided.outcome();
    log_import(&mut tx, key, &cohort, import, now, &outcome, listed).await?;
    if !record_delivery(&mut tx, key, import, now, &outcome).await? {
        // The same message, applied for another cohort meanwhile: its outcome stands.
        tx.rollback().await?;
        let mut conn = db.acquire().await?;
        let first = delivered_before(&mut conn, key, import).await?;
        return Ok(Applied { outcome: first.unwrap_or(outcome), repeated: true });
    }
    db.commit(tx).await?;
    Ok(Applied { outcome, repeated: false })
}

/// Runs `attempt` again on a transient conflict, up to [`IMPORT_ATTEMPTS`] times.
async fn retrying<T, F: Future<Output = sqlx::Result<T>>>(mut attempt: impl FnMut() -> F) -> sqlx::Result<T> {
    let mut attempts = 1;
    loop {
        match attempt().await {
            Err(error) if attempts < IMPORT_ATTEMPTS && is_transient_conflict(&error) => {
                tracing::debug!(%error, attempts, "cohort import conflicted; retrying");
                tokio::time::sleep(Duration::from_millis(5 * u64::from(attempts))).await;
                attempts += 1;
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

/// The cohort, created if unknown (named as the change says, else by its id), with its
/// row lock held until the transaction ends.
pub(super) async fn lock_cohort(
    tx: &mut PgConnection,
    key: CohortKey<'_>,
    import: &Import<'_>,
    now: DateTime<Utc>,
) -> sqlx::Result<LockedCohort> {
    let name = import.name.map_or(key.cohort_id, CohortName::as_str);
    create_or_lock(tx, key, name, now, Some(now)).await
}

/// A count as stored (`integer`): a replace of over 2^31 members saturates.
pub(super) fn count(n: u64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// An outcome's counts as both the import log and the delivered messages store them,
/// named as their columns are.
pub(super) struct StoredCounts {
    pub added: i32,
    pub removed: i32,
    pub unchanged: i32,
    pub unmatched_unknown: i32,
    pub unmatched_identified_device: i32,
}

impl StoredCounts {
    /// `outcome`'s counts, each saturated as [`count`] does.
    pub(super) fn of(outcome: &ImportOutcome) -> Self {
        StoredCounts {
            added: count(outcome.added),
            removed: count(outcome.removed),
            unchanged: count(outcome.unchanged),
            unmatched_unknown: count(outcome.unmatched.unknown),
            unmatched_identified_device: count(outcome.unmatched.device_id_of_identified_user),
        }
    }
}

/// Adds and removes memberships of one cohort, with their bits (held back or written
/// into the blocks: `cohort.bits_pending` says which now); the caller holds the cohort's
/// row lock and has read that `added` are not members and `removed` are.
pub(super) async fn write_memberships(
    tx: &mut PgConnection,
    workspace_id: Uuid,
    cohort: &mut LockedCohort,
    added: &[i64],
    removed: &[i64],
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    let cohort_ref = cohort.id;
    // In pieces, so a replace of millions holds one piece's encoding at a time.
    for added in added.chunks(ROWS_PER_STATEMENT) {
        let mut rows = CopyRows::with_capacity(added.len(), 50);
        for &user_id in added {
            rows.uuid(workspace_id).int(cohort_ref).int(user_id).timestamp(now).end_row();
        }
        let copy = "COPY cohort_memberships (workspace_id, cohort_ref, user_id, added_at) FROM STDIN (FORMAT binary)";
        rows.copy(tx, copy).await?;
    }
    for removed in removed.chunks(ROWS_PER_STATEMENT) {
        // One primary-key probe per removed user, whatever the statistics say. Written as
        // `user_id = ANY($3)` beside `cohort_ref = $2`, the statement was planned, on
        // statistics taken before the cohort grew, as a scan of the whole cohort filtered by
        // the array, in time proportional to both; here the cohort only joins the probes
        // (`OFFSET 0` keeps it out of the restrictions) and the array's length is hidden
        // from the planner, so a probe per user is always the cheapest plan.
        sqlx::query!(
            "
DELETE FROM cohort_memberships m
 USING (SELECT $2::int8 AS cohort_ref, user_id FROM unnest((SELECT $3::int8[])) AS r(user_id) OFFSET 0) AS r
 WHERE m.workspace_id = $1 AND m.cohort_ref = r.cohort_ref AND m.user_id = r.user_id",
            workspace_id,
            cohort_ref,
            removed,
        )
        .execute(&mut *tx)
        .await?;
    }
    let pending = bit_changes::write(tx, workspace_id, cohort.pending_bits(), added, removed).await?;
    cohort.bits_pending = i32::try_from(pending).unwrap_or(i32::MAX);
    Ok(())
}

/// Moves the cohort's count by the change's added and removed (and its count of listed
/// unmatched identifiers by `listed`), stores its held-back bit count, renames it if the
/// change names it otherwise, and appends the change to its log.
pub(super) async fn log_import(
    tx: &mut PgConnection,
    key: CohortKey<'_>,
    cohort: &LockedCohort,
    import: &Import<'_>,
    now: DateTime<Utc>,
    outcome: &ImportOutcome,
    listed: i64,
) -> sqlx::Result<()> {
    let changed = outcome.added + outcome.removed > 0;
    let logged = sqlx::query!(
        "UPDATE cohorts SET member_count = member_count + $3, log_entries = log_entries + 1,
                unmatched_listed = unmatched_listed + $7, bits_pending = $8, name = coalesce($6, name),
                updated_at = CASE WHEN $4 OR name <> coalesce($6, name) THEN $5 ELSE updated_at END,
                last_import_at = $5
          WHERE workspace_id = $1 AND id = $2
         RETURNING member_count, log_entries",
        key.workspace_id,
        cohort.id,
        outcome.added as i64 - outcome.removed as i64,
        changed,
        now,
        import.name.map(CohortName::as_str),
        listed,
        cohort.bits_pending,
    )
    .fetch_one(&mut *tx)
    .await?;
    let counts = StoredCounts::of(outcome);
    sqlx::query!(
        "INSERT INTO cohort_imports (workspace_id, cohort_ref, id, kind, request_id, received_at, added, removed,
                                     unchanged, unmatched_unknown, unmatched_identified_device, member_count_after)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        key.workspace_id,
        cohort.id,
        logged.log_entries,
        import.kind.as_str(),
        import.request_id,
        now,
        counts.added,
        counts.removed,
        counts.unchanged,
        counts.unmatched_unknown,
        counts.unmatched_identified_device,
        logged.member_count,
    )
    .execute(&mut *tx)
    .await
    .map(|_| ())
}

/// Takes user `user_id` out of every cohort it is in, with a change clearing its bit and
/// a `user_deletion` entry in each such cohort's log, in four statements however many
/// cohorts; the caller holds the workspace lock for a user deletion.
pub(crate) async fn remove_user_everywhere(
    tx: &mut PgConnection,
    workspace_id: Uuid,
    user_id: i64,
    request_id: &str,
) -> sqlx::Result<()> {
    // Through the workspace's cohorts: one primary-key probe per cohort.
    let cohorts = sqlx::query_scalar!(
        "DELETE FROM cohort_memberships m USING cohorts c
          WHERE c.workspace_id = $1 AND m.workspace_id = $1 AND m.cohort_ref = c.id AND m.user_id = $2
         RETURNING m.cohort_ref",
        workspace_id,
        user_id,
    )
    .fetch_all(&mut *tx)
    .await?;
    if cohorts.is_empty() {
        return Ok(());
    }
    let now = Utc::now();
    let logged = sqlx::query!(
        "UPDATE cohorts SET member_count = member_count - 1, log_entries = log_entries + 1,
                bits_pending = bits_pending + 1, updated_at = $3
          WHERE workspace_id = $1 AND id = ANY($2)
         RETURNING id, member_count, log_entries",
        workspace_id,
        &cohorts,
        now,
    )
    .fetch_all(&mut *tx)
    .await?;
    // The bit is cleared as a held-back change, after those the cohort holds already, so
    // that none of theirs can set it again when they are folded.
    let mut changes = CopyRows::with_capacity(logged.len(), 80);
    let mut entries = CopyRows::with_capacity(logged.len(), 160);
    for cohort in logged {
        changes.uuid(workspace_id).int(cohort.id).int(cohort.log_entries).ints(&[]).ints(&[user_id]).end_row();
        entries
            .uuid(workspace_id)
            .int(cohort.id)
            .int(cohort.log_entries)
            .text(Some("user_deletion"))
            .text(Some(request_id));
        entries.timestamp(now).int4(0).int4(1).int4(0).int4(0).int4(0).int(cohort.member_count).end_row();
    }
    changes
        .copy(
            tx,
            "COPY cohort_bit_changes (workspace_id, cohort_ref, import_id, set_ids, cleared_ids) FROM STDIN (FORMAT binary)",
        )
        .await?;
    entries
        .copy(
            tx,
            "COPY cohort_imports (workspace_id, cohort_ref, id, kind, request_id, received_at, added, removed,
                              unchanged, unmatched_unknown, unmatched_identified_device, member_count_after)
         FROM STDIN (FORMAT binary)",
        )
        .await
}
