//! A full replace of a cohort's membership (the operator's NDJSON, Mixpanel's `members`
//! session): the wanted users gathered chunk by chunk, then one transaction that writes
//! only what differs from the current members, as an import does.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{
    CohortKey, LockedCohort,
    import::{Import, lock_cohort, log_import, write_memberships},
    resolve::resolve,
    unmatched,
};
use crate::domain::{
    ImportOutcome, MemberRefs, MembershipChanges, Unmatched, UnmatchedReason, membership::users_of_members,
};
use crate::store::{
    bit_changes,
    bitmaps::{self, Bitmap},
    database::Database,
    locks::{WorkspaceLock, lock_workspace},
};

/// The users a full replace wants, gathered while its members are resolved, chunk by
/// chunk: at most 8 bytes per distinct user, however many members name them.
#[derive(Debug, Default)]
pub struct Wanted {
    users: Vec<i64>,
    /// How many `users` were distinct when last made so.
    distinct: usize,
    unmatched: Unmatched,
    /// The first of the members that matched nobody, as many as a cohort lists.
    unmatched_members: Vec<(MemberRefs, UnmatchedReason)>,
}

impl Wanted {
    /// Resolves a chunk of members (a request's worth) and keeps their users.
    pub async fn resolve(
        &mut self,
        conn: &mut PgConnection,
        workspace_id: Uuid,
        members: &[MemberRefs],
    ) -> sqlx::Result<()> {
        let resolved = resolve(conn, workspace_id, None, members).await?;
        for (member, user) in members.iter().zip(users_of_members(members.len(), resolved)) {
            match user {
                Ok(user) => self.users.push(user.id),
                Err(reason) => {
                    self.unmatched.count(reason);
                    if (self.unmatched_members.len() as i64) < unmatched::MAX_PER_COHORT {
                        self.unmatched_members.push((member.clone(), reason));
                    }
                }
            }
        }
        // Made distinct whenever it doubles, so memory follows the distinct users and
        // the sorting stays linear in the members overall.
        if self.users.len() > (2 * self.distinct).max(1 << 16) {
            self.users.sort_unstable();
            self.users.dedup();
            self.distinct = self.users.len();
        }
        Ok(())
    }

    /// Members that no rule could read, counted as unknown.
    pub fn count_unreadable(&mut self, n: u64) {
        self.unmatched.unknown += n;
    }
}

/// Replaces a cohort's membership (the cohort is created if unknown) with the users of
/// `wanted`, in one transaction, and logs it.
pub async fn replace(
    db: &Database,
    key: CohortKey<'_>,
    import: &Import<'_>,
    wanted: Wanted,
) -> sqlx::Result<ImportOutcome> {
    let mut tx = db.begin().await?;
    let now = Utc::now();
    lock_workspace(&mut tx, key.workspace_id, WorkspaceLock::OneCohort).await?;
    let cohort = lock_cohort(&mut tx, key, import, now).await?;
    let outcome = apply_replace(&mut tx, key, cohort, import, wanted, now).await?;
    db.commit(tx).await?;
    Ok(outcome)
}

/// [`replace`] within a transaction that holds the workspace lock (shared) and the row
/// lock of `cohort`.
pub(crate) async fn apply_replace(
    tx: &mut PgConnection,
    key: CohortKey<'_>,
    mut cohort: LockedCohort,
    import: &Import<'_>,
    wanted: Wanted,
    now: DateTime<Utc>,
) -> sqlx::Result<ImportOutcome> {
    let Wanted { mut users, mut unmatched, unmatched_members, .. } = wanted;
    users.sort_unstable();
    users.dedup();
    unmatched.unknown += import.unreadable;
    // Resolved before this transaction's lock, perhaps: keep only users that still exist.
    let blocks: Vec<i64> = {
        let mut blocks: Vec<i64> = users.iter().map(|&id| bitmaps::position(id).0).collect();
        blocks.dedup();
        blocks
    };
    let existing = bitmaps::read_ids(tx, key.workspace_id, Bitmap::Users, Some(&blocks)).await?;
    let users = intersect(&users, &existing);
    // The members are read from the blocks: first write the changes held back into them.
    bit_changes::fold(tx, key.workspace_id, cohort.pending_bits(), &[], &[]).await?;
    cohort.bits_pending = 0;
    let current = bitmaps::read_ids(tx, key.workspace_id, Bitmap::Cohort(cohort.id), None).await?;
    let decided = MembershipChanges::replace(&users, &current, unmatched);
    write_memberships(tx, key.workspace_id, &mut cohort, &decided.added, &decided.removed, now).await?;
    let listed: Vec<_> = unmatched_members.iter().map(|(member, reason)| (member, *reason)).collect();
    let listed = unmatched::record(tx, key.workspace_id, cohort.id, &listed, now, import.unmatched_retention).await?;
    let outcome = decided.outcome();
    log_import(tx, key, &cohort, import, now, &outcome, listed).await?;
    Ok(outcome)
}

/// The ids in both ascending lists.
fn intersect(a: &[i64], b: &[i64]) -> Vec<i64> {
    let mut both = Vec::with_capacity(a.len().min(b.len()));
    let (mut i, mut j) = (0, 0);
    while let (Some(&x), Some(&y)) = (a.get(i), b.get(j)) {
        if x == y {
            both.push(x);
        }
        i += usize::from(x <= y);
        j += usize::from(y <= x);
    }
    both
}
