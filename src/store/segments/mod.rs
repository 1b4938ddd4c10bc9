//! SQL for the segment filter API: the cohort dropdown, and filters evaluated on the
//! bitmaps of `user_bitmaps` and `cohort_bitmaps`, with the changes `cohort_bit_changes`
//! holds back (memberships never come into the service's memory, and no plan depends on
//! the planner's statistics).
//!
//! [`query`] compiles a filter to bitmap algebra per block of 8,192 user ids; [`read`]
//! counts, pages and exports its users; [`check`] tests given users against it.

pub mod check;
pub mod query;
pub mod read;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::store::database::Database;

pub use check::{CheckResult, check};
pub use query::{SegmentQuery, UnknownCohort, prepare};
pub use read::{SegmentUser, begin_snapshot, count, export, page};

/// A partner cohort as the segment builder's dropdown lists it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CohortSummary {
    pub partner: String,
    pub cohort_id: String,
    pub name: String,
    pub member_count: i64,
    pub last_import_at: Option<DateTime<Utc>>,
}

/// Where a page of the cohort listing starts: after this cohort in the listing's order
/// (name, partner, cohort_id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CohortPosition {
    /// The last listed cohort's name.
    pub name: String,
    /// Its partner.
    pub partner: String,
    /// Its cohort id.
    pub cohort_id: String,
}

/// One page of a workspace's cohorts, ordered by name, then partner and cohort id,
/// optionally only one partner's and only those whose name contains `name_contains`
/// (case-insensitive).
pub async fn list_cohorts(
    db: &Database,
    workspace_id: Uuid,
    partner: Option<&str>,
    name_contains: Option<&str>,
    after: Option<&CohortPosition>,
    limit: i64,
) -> sqlx::Result<Vec<CohortSummary>> {
    let mut conn = db.acquire().await?;
    // strpos instead of ILIKE: the search text needs no escaping of % and _.
    sqlx::query_as!(
        CohortSummary,
        "SELECT partner, cohort_id, name, member_count, last_import_at FROM cohorts
          WHERE workspace_id = $1
            AND ($2::text IS NULL OR partner = $2)
            AND ($3::text IS NULL OR strpos(lower(name), lower($3)) > 0)
            AND ($4::text IS NULL OR (name, partner, cohort_id) > ($4, $5, $6))
          ORDER BY name, partner, cohort_id
          LIMIT $7",
        workspace_id,
        partner,
        name_contains,
        after.map(|p| p.name.as_str()),
        after.map(|p| p.partner.as_str()),
        after.map(|p| p.cohort_id.as_str()),
        limit,
    )
    .fetch_all(&mut *conn)
    .await
}
