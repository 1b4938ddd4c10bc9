//! Deleting a user with everything that names it.

use uuid::Uuid;

use crate::store::{
    bitmaps::{self, Bitmap},
    cohorts,
    database::Database,
    locks::{WorkspaceLock, lock_workspace},
};

/// Deletes the user `braze_id` with its identifiers, memberships and bits, takes it off
/// the `member_count` of every cohort it was in and logs that in each cohort's import
/// log under `request_id`, in one transaction. False if no such user.
pub async fn delete(db: &Database, workspace_id: Uuid, braze_id: Uuid, request_id: &str) -> sqlx::Result<bool> {
    let mut tx = db.begin().await?;
    // Exclusive: waits for the imports and user-store writes in flight and keeps new ones
    // from starting until this user is gone, so no membership or identifier of it is
    // written meanwhile, and the memberships deleted here are exactly the counts to fix.
    lock_workspace(&mut tx, workspace_id, WorkspaceLock::UserDeletion).await?;
    let id =
        sqlx::query_scalar!("SELECT id FROM users WHERE workspace_id = $1 AND braze_id = $2", workspace_id, braze_id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(id) = id else { return Ok(false) };
    cohorts::remove_user_everywhere(&mut tx, workspace_id, id, request_id).await?;
    sqlx::query!("DELETE FROM user_aliases WHERE workspace_id = $1 AND user_id = $2", workspace_id, id)
        .execute(&mut *tx)
        .await?;
    sqlx::query!("DELETE FROM user_device_ids WHERE workspace_id = $1 AND user_id = $2", workspace_id, id)
        .execute(&mut *tx)
        .await?;
    sqlx::query!("DELETE FROM users WHERE workspace_id = $1 AND id = $2", workspace_id, id).execute(&mut *tx).await?;
    bitmaps::apply(&mut tx, workspace_id, Bitmap::Users, &[], &[id]).await?;
    db.commit(tx).await?;
    Ok(true)
}
