//! The workspace lock: a row lock on the workspace's `user_id_counters` row, the one
//! exclusion row locks on the data itself cannot express.
//!
//! A row lock, not an advisory lock: it is taken on the node that holds the workspace's
//! rows, so on Citus it holds whichever coordinator a request came through (an advisory
//! lock would hold only on the node that took it). Its modes follow PostgreSQL's row-lock
//! conflicts:
//!
//! | writer | mode | waits for |
//! | --- | --- | --- |
//! | a cohort's imports and deletion ([`WorkspaceLock::OneCohort`]) | `FOR KEY SHARE` | user deletions |
//! | user-store writes ([`WorkspaceLock::UserStore`]) | `FOR NO KEY UPDATE` | each other, user deletions |
//! | user deletions ([`WorkspaceLock::UserDeletion`]) | `FOR UPDATE` | everyone |
//!
//! Imports run side by side (each also holds its cohort's row lock) and beside user
//! loads; a user deletion waits for the imports in flight and holds new ones back until
//! it commits, so an import, which resolves its identifiers after it holds the lock,
//! never writes a membership of a user being deleted (`cohort_memberships` has no foreign
//! keys). Every writer takes this lock first, before any other row lock: no deadlock.

use sqlx::PgConnection;
use uuid::Uuid;

/// How a transaction holds its workspace's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkspaceLock {
    /// Writes the memberships of one cohort, whose row lock it holds: an import, a cohort deletion.
    OneCohort,
    /// Writes users and their identifiers: upserts, identify. One at a time per workspace,
    /// since the upsert rules decide in memory from what they read.
    UserStore,
    /// Deletes a user, its identifiers and its memberships across cohorts.
    UserDeletion,
}

/// Takes `workspace_id`'s lock in `mode` until the transaction ends; `false` if the
/// workspace does not exist.
pub async fn lock_workspace(
    transaction: &mut PgConnection,
    workspace_id: Uuid,
    mode: WorkspaceLock,
) -> sqlx::Result<bool> {
    let sql = match mode {
        WorkspaceLock::OneCohort => "SELECT 1 FROM user_id_counters WHERE workspace_id = $1 FOR KEY SHARE",
        WorkspaceLock::UserStore => "SELECT 1 FROM user_id_counters WHERE workspace_id = $1 FOR NO KEY UPDATE",
        WorkspaceLock::UserDeletion => "SELECT 1 FROM user_id_counters WHERE workspace_id = $1 FOR UPDATE",
    };
    let found: Option<i32> = sqlx::query_scalar(sql).bind(workspace_id).fetch_optional(transaction).await?;
    Ok(found.is_some())
}
