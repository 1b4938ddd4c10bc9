//! Giving an anonymous user an external id.

use uuid::Uuid;

use super::begin_writes;
use crate::{domain::ExternalId, store::database::Database};

/// What [`identify`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentifyOutcome {
    /// The anonymous user now has the external id (or already had this one).
    Identified,
    /// No such user.
    NotFound,
    /// The user already has another external id.
    HasOtherExternalId,
    /// The external id belongs to another user (its braze_id).
    TakenBy(Uuid),
}

/// Gives the anonymous user `braze_id` the external id `external_id`.
pub async fn identify(
    db: &Database,
    workspace_id: Uuid,
    braze_id: Uuid,
    external_id: &ExternalId,
) -> sqlx::Result<IdentifyOutcome> {
    let mut tx = begin_writes(db, workspace_id).await?;
    let user = sqlx::query!(
        "SELECT id, external_id FROM users WHERE workspace_id = $1 AND braze_id = $2",
        workspace_id,
        braze_id
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(user) = user else { return Ok(IdentifyOutcome::NotFound) };
    match user.external_id {
        Some(current) if current == external_id.as_str() => return Ok(IdentifyOutcome::Identified),
        Some(_) => return Ok(IdentifyOutcome::HasOtherExternalId),
        None => {}
    }
    let owner = sqlx::query_scalar!(
        "SELECT braze_id FROM users WHERE workspace_id = $1 AND external_id = $2",
        workspace_id,
        external_id.as_str(),
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(owner) = owner {
        return Ok(IdentifyOutcome::TakenBy(owner));
    }
    sqlx::query!(
        "UPDATE users SET external_id = $3, updated_at = $4 WHERE workspace_id = $1 AND id = $2",
        workspace_id,
        user.id,
        external_id.as_str(),
        chrono::Utc::now(),
    )
    .execute(&mut *tx)
    .await?;
    db.commit(tx).await?;
    Ok(IdentifyOutcome::Identified)
}
