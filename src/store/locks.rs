//! Transaction-level advisory locks, for the exclusions row locks cannot express.
//!
//! **The membership lock** of a workspace is held by every transaction that writes
//! `cohort_memberships`: imports and cohort deletions in shared mode (they run side by
//! side; each also holds its cohort's row lock), user deletions in exclusive mode. It is
//! what keeps a membership from outliving its user now that `cohort_memberships` has no
//! foreign keys (migration `…012`): a user deletion waits for the imports in flight, and
//! an import that starts meanwhile waits before it resolves a single identifier, so it
//! never sees the user being deleted.

use sqlx::PgConnection;
use uuid::Uuid;

/// How a membership writer holds the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipWriter {
    /// Writes the memberships of one cohort, whose row lock it holds: an import, a cohort deletion.
    OneCohort,
    /// Writes the memberships of users across every cohort: a user deletion.
    AcrossCohorts,
}

/// Takes the membership lock of `workspace_id` until the transaction ends.
pub async fn memberships(
    transaction: &mut PgConnection,
    workspace_id: Uuid,
    writer: MembershipWriter,
) -> sqlx::Result<()> {
    let sql = match writer {
        MembershipWriter::OneCohort => {
            "SELECT pg_advisory_xact_lock_shared(hashtextextended('cohort-ingest memberships ' || $1::text, 0))"
        }
        MembershipWriter::AcrossCohorts => {
            "SELECT pg_advisory_xact_lock(hashtextextended('cohort-ingest memberships ' || $1::text, 0))"
        }
    };
    sqlx::query(sql).bind(workspace_id).execute(transaction).await.map(|_| ())
}
