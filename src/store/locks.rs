//! The workspace locks: transaction-level advisory locks, for the exclusions row locks on
//! the data cannot express, taken through the workspace's `user_id_counters` row.
//!
//! Two per workspace. **The membership lock** is held by every transaction that writes
//! `cohort_memberships`: a cohort's imports and its deletion in shared mode (they run side
//! by side; each also holds its cohort's row lock), user deletions in exclusive mode.
//! **The user-store lock** is held exclusively by every write of users and identifiers
//! (the upsert rules decide in memory from what they read) and by user deletions. So a
//! user deletion waits for the imports in flight and holds new ones back until it
//! commits: an import, which resolves its identifiers after it holds the lock, never
//! writes a membership of a user being deleted (`cohort_memberships` has no foreign keys).
//! Every writer takes its workspace lock first, before any row lock: no deadlock.
//!
//! Why advisory locks hold on Citus too: the statement that takes one reads the
//! workspace's counter row and computes the lock's key from its column, so it runs on the
//! worker that holds the workspace's shards, inside the transaction the coordinator opened
//! there, whichever coordinator the request came through; every transaction that needs
//! the lock meets it on that one node. (A row lock on the counter row would do the same,
//! but `FOR KEY SHARE` from concurrent imports rewrites the row's lockers as a multixact
//! on every import: a WAL record and a page write each, and a queue on the row's page.)

use sqlx::PgConnection;
use uuid::Uuid;

/// How a transaction holds its workspace's locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkspaceLock {
    /// Writes the memberships of one cohort, whose row lock it holds: an import, a cohort
    /// deletion. The membership lock, shared.
    OneCohort,
    /// Writes users and their identifiers: upserts, identify. The user-store lock.
    UserStore,
    /// Deletes a user, its identifiers and its memberships across cohorts. Both locks,
    /// exclusive.
    UserDeletion,
}

/// Takes `workspace_id`'s locks for `mode` until the transaction ends; `false` (and no
/// lock) if the workspace does not exist.
pub async fn lock_workspace(
    transaction: &mut PgConnection,
    workspace_id: Uuid,
    mode: WorkspaceLock,
) -> sqlx::Result<bool> {
    // One statement per mode, so each is checked; the lock comes back as text, and the
    // row (or none) is what tells whether the workspace exists.
    let found = match mode {
        WorkspaceLock::OneCohort => {
            sqlx::query_scalar!(
                "SELECT pg_advisory_xact_lock_shared(hashtextextended('cohort-ingest memberships ' || workspace_id::text, 0))::text
               FROM user_id_counters WHERE workspace_id = $1",
                workspace_id,
            )
            .fetch_optional(transaction)
            .await?
        }
        WorkspaceLock::UserStore => {
            sqlx::query_scalar!(
                "SELECT pg_advisory_xact_lock(hashtextextended('cohort-ingest user store ' || workspace_id::text, 0))::text
               FROM user_id_counters WHERE workspace_id = $1",
                workspace_id,
            )
            .fetch_optional(transaction)
            .await?
        }
        WorkspaceLock::UserDeletion => {
            sqlx::query_scalar!(
                "SELECT pg_advisory_xact_lock(hashtextextended('cohort-ingest user store ' || workspace_id::text, 0))::text
                    || pg_advisory_xact_lock(hashtextextended('cohort-ingest memberships ' || workspace_id::text, 0))::text
               FROM user_id_counters WHERE workspace_id = $1",
                workspace_id,
            )
            .fetch_optional(transaction)
            .await?
        }
    };
    Ok(found.is_some())
}
