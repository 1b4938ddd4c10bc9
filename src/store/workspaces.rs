//! `workspaces`: one customer's space.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::store::database::Database;

/// A workspace.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Workspace {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// Creates a workspace with a fresh id, with the counter rows its users and cohorts draw
/// their internal ids from (the user counter's row is also the workspace lock).
pub async fn create(db: &Database, name: &str) -> sqlx::Result<Workspace> {
    let mut tx = db.begin().await?;
    let workspace = sqlx::query_as!(
        Workspace,
        "INSERT INTO workspaces (id, name) VALUES ($1, $2) RETURNING id, name, created_at",
        Uuid::new_v4(),
        name,
    )
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query!("INSERT INTO user_id_counters (workspace_id) VALUES ($1)", workspace.id).execute(&mut *tx).await?;
    sqlx::query!("INSERT INTO cohort_id_counters (workspace_id) VALUES ($1)", workspace.id).execute(&mut *tx).await?;
    db.commit(tx).await?;
    Ok(workspace)
}

/// Every workspace, oldest first.
pub async fn list(db: &Database) -> sqlx::Result<Vec<Workspace>> {
    let mut conn = db.acquire().await?;
    sqlx::query_as!(Workspace, "SELECT id, name, created_at FROM workspaces ORDER BY created_at, id")
        .fetch_all(&mut *conn)
        .await
}

/// One workspace, if it exists.
pub async fn find(executor: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<Workspace>> {
    sqlx::query_as!(Workspace, "SELECT id, name, created_at FROM workspaces WHERE id = $1", id)
        .fetch_optional(executor)
        .await
}
