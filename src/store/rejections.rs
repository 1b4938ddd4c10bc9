//! `partner_rejections`: the last requests of a workspace's partner answered 4xx after
//! its key was accepted, for operators.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::store::database::Database;

/// Rejections kept per workspace and partner.
pub const KEPT: i64 = 100;

/// A request answered 4xx.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Rejection {
    /// When it was received.
    pub received_at: DateTime<Utc>,
    /// Its request id (`x-request-id`), to find it in the logs.
    pub request_id: String,
    /// The route template it came to.
    pub route: String,
    /// The status it was answered.
    pub status: i32,
    /// The message it was answered (never a secret: client messages only).
    pub message: String,
}

/// Records a rejection and drops the partner's oldest beyond [`KEPT`].
pub async fn record(db: &Database, workspace_id: Uuid, partner: &str, rejection: &Rejection) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query!(
        "INSERT INTO partner_rejections (workspace_id, partner, received_at, request_id, route, status, message)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        workspace_id,
        partner,
        rejection.received_at,
        rejection.request_id,
        rejection.route,
        rejection.status,
        rejection.message,
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "DELETE FROM partner_rejections
          WHERE workspace_id = $1 AND partner = $2
            AND received_at < (SELECT received_at FROM partner_rejections
                                WHERE workspace_id = $1 AND partner = $2
                                ORDER BY received_at DESC OFFSET $3 LIMIT 1)",
        workspace_id,
        partner,
        KEPT - 1,
    )
    .execute(&mut *tx)
    .await?;
    db.commit(tx).await
}

/// The partner's rejections in the workspace, newest first.
pub async fn list(db: &Database, workspace_id: Uuid, partner: &str) -> sqlx::Result<Vec<Rejection>> {
    let mut conn = db.acquire().await?;
    sqlx::query_as!(
        Rejection,
        "SELECT received_at, request_id, route, status, message FROM partner_rejections
          WHERE workspace_id = $1 AND partner = $2 ORDER BY received_at DESC, request_id DESC LIMIT $3",
        workspace_id,
        partner,
        KEPT,
    )
    .fetch_all(&mut *conn)
    .await
}
