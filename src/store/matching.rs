//! `matching_rules`: how each partner's webhook members are matched to users, per
//! workspace.

use chrono::Utc;
use sqlx::types::Json;
use uuid::Uuid;

use crate::domain::{MatchingRules, matching::RuleSpec};
use crate::store::database::Database;

/// The partner's rules in the workspace; `None` when none are set (the protocol's
/// default applies).
pub async fn find(db: &Database, workspace_id: Uuid, partner: &str) -> sqlx::Result<Option<MatchingRules>> {
    let mut conn = db.acquire().await?;
    let stored = sqlx::query_scalar!(
        r#"SELECT rules AS "rules: Json<Vec<RuleSpec>>" FROM matching_rules WHERE workspace_id = $1 AND partner = $2"#,
        workspace_id,
        partner,
    )
    .fetch_optional(&mut *conn)
    .await?;
    // Written only by `put`, from valid rules.
    stored.map(|Json(specs)| MatchingRules::parse(specs).map_err(|e| sqlx::Error::Decode(e.into()))).transpose()
}

/// Sets the partner's rules in the workspace.
pub async fn put(db: &Database, workspace_id: Uuid, partner: &str, rules: &MatchingRules) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query!(
        "INSERT INTO matching_rules (workspace_id, partner, rules, updated_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (workspace_id, partner) DO UPDATE SET rules = EXCLUDED.rules, updated_at = EXCLUDED.updated_at",
        workspace_id,
        partner,
        Json(rules.specs()) as _,
        Utc::now(),
    )
    .execute(&mut *tx)
    .await?;
    db.commit(tx).await
}

/// Removes the partner's rules in the workspace (back to the protocol's default);
/// `false` if none were set.
pub async fn delete(db: &Database, workspace_id: Uuid, partner: &str) -> sqlx::Result<bool> {
    let mut tx = db.begin().await?;
    let deleted =
        sqlx::query!("DELETE FROM matching_rules WHERE workspace_id = $1 AND partner = $2", workspace_id, partner)
            .execute(&mut *tx)
            .await?;
    db.commit(tx).await?;
    Ok(deleted.rows_affected() == 1)
}
