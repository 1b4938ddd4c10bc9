//! The user store: `users`, `user_aliases`, `user_device_ids`.
//!
//! Every write to a workspace's users runs in a transaction that holds the workspace
//! lock for user-store writes ([`begin_writes`]): the upsert rules decide in memory from
//! what they read, so nothing may change those identifiers between the read and the
//! write. Reads (lookups, cohort imports) take no lock. New users get the next internal
//! ids of their workspace's counter row, and their bits in `user_bitmaps`.

mod delete;
mod identify;
mod profile;
mod upsert;

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

pub use delete::delete;
pub use identify::{IdentifyOutcome, identify};
pub use profile::{ProfileAlias, ProfileCohort, UserLookup, UserProfile, find_profile};
pub use upsert::{StoreLookups, UpsertPlan, plan_upserts, upsert_profiles, write_upserts};

use super::{
    database::Database,
    locks::{WorkspaceLock, lock_workspace},
};

/// Begins a transaction that holds the workspace lock for user-store writes until it
/// ends, so user-store writes of one workspace happen one at a time.
pub async fn begin_writes(db: &Database, workspace_id: Uuid) -> sqlx::Result<Transaction<'static, Postgres>> {
    let mut tx = db.begin().await?;
    lock_workspace(&mut tx, workspace_id, WorkspaceLock::UserStore).await?;
    Ok(tx)
}
