//! `delivered_messages`: the message ids a protocol that delivers more than once
//! (Amplitude's `message_id`) has had applied, with their outcome, so a repeat answers
//! the first outcome and changes nothing.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::{
    CohortKey,
    import::{Import, StoredCounts},
};
use crate::domain::{ImportOutcome, Unmatched};

/// The outcome of the change's message if it was applied before.
pub(super) async fn delivered_before(
    conn: &mut PgConnection,
    key: CohortKey<'_>,
    import: &Import<'_>,
) -> sqlx::Result<Option<ImportOutcome>> {
    let Some(message_id) = import.message_id else { return Ok(None) };
    let row = sqlx::query_as!(
        StoredCounts,
        "SELECT added, removed, unchanged, unmatched_unknown, unmatched_identified_device FROM delivered_messages
          WHERE workspace_id = $1 AND partner = $2 AND message_id = $3",
        key.workspace_id,
        key.partner,
        message_id,
    )
    .fetch_optional(conn)
    .await?;
    let count = |n: i32| u64::try_from(n).unwrap_or(0);
    Ok(row.map(|stored| ImportOutcome {
        added: count(stored.added),
        removed: count(stored.removed),
        unchanged: count(stored.unchanged),
        unmatched: Unmatched {
            unknown: count(stored.unmatched_unknown),
            device_id_of_identified_user: count(stored.unmatched_identified_device),
        },
    }))
}

/// How long delivered message ids are kept: Amplitude retries for far less.
const DELIVERY_RETENTION: chrono::TimeDelta = chrono::TimeDelta::days(7);

/// Records the change's message as applied, with its outcome, and forgets those of the
/// workspace and partner older than [`DELIVERY_RETENTION`]; `false` if a concurrent
/// transaction recorded the same message first.
pub(super) async fn record_delivery(
    tx: &mut PgConnection,
    key: CohortKey<'_>,
    import: &Import<'_>,
    now: DateTime<Utc>,
    outcome: &ImportOutcome,
) -> sqlx::Result<bool> {
    let Some(message_id) = import.message_id else { return Ok(true) };
    sqlx::query!(
        "DELETE FROM delivered_messages WHERE workspace_id = $1 AND partner = $2 AND received_at < $3",
        key.workspace_id,
        key.partner,
        now - DELIVERY_RETENTION,
    )
    .execute(&mut *tx)
    .await?;
    let counts = StoredCounts::of(outcome);
    let inserted = sqlx::query!(
        "INSERT INTO delivered_messages (workspace_id, partner, message_id, received_at,
                                         added, removed, unchanged, unmatched_unknown, unmatched_identified_device)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT DO NOTHING",
        key.workspace_id,
        key.partner,
        message_id,
        now,
        counts.added,
        counts.removed,
        counts.unchanged,
        counts.unmatched_unknown,
        counts.unmatched_identified_device,
    )
    .execute(&mut *tx)
    .await?;
    Ok(inserted.rows_affected() == 1)
}
