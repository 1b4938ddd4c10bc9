//! `member_sessions`, `member_session_pages`: full replaces that arrive in pages (a
//! Mixpanel `members` session). Pages are kept aside until every page has arrived; the
//! page that completes the session replaces the cohort's membership with the union of
//! the pages, in its own transaction. Until then the cohort is unchanged.

use std::time::Duration;

use chrono::Utc;

use crate::domain::{ImportOutcome, MemberRefs};
use crate::store::{
    cohorts::{CohortKey, Import, Wanted, apply_replace, create_or_lock},
    database::Database,
    locks::{WorkspaceLock, lock_workspace},
};

/// Members resolved per statement when a session completes.
const MEMBERS_PER_RESOLVE: usize = 1000;

/// One page of a session.
#[derive(Debug, Clone, Copy)]
pub struct Page<'a> {
    /// The session's id.
    pub session_id: &'a str,
    /// This page's number, `1..=total_pages`.
    pub number: i32,
    /// How many pages the session has.
    pub total_pages: i32,
    /// The page's members as received, read back by the caller's parser on completion.
    pub members: &'a str,
}

/// What receiving a page did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageOutcome {
    /// Kept; the session still misses pages.
    Staged {
        /// Distinct pages of the session received so far.
        received: i64,
    },
    /// It completed the session: the cohort's membership was replaced.
    Completed(ImportOutcome),
    /// The session completed before: nothing changed.
    AlreadyCompleted,
}

/// The members of a stored page and how many it named in no readable form.
pub type PageMembers = (Vec<MemberRefs>, u64);

/// Receives a page of a session for the cohort at `key` (created, named by `import`, if
/// unknown); if it is the last missing page, replaces the membership with the union of
/// the pages, read by `read_page`. Sessions of the workspace and partner started more
/// than `ttl` ago are dropped first.
pub async fn receive_page(
    db: &Database,
    key: CohortKey<'_>,
    import: &Import<'_>,
    page: Page<'_>,
    ttl: Duration,
    read_page: impl Fn(&str) -> PageMembers,
) -> sqlx::Result<PageOutcome> {
    let mut tx = db.begin().await?;
    let now = Utc::now();
    lock_workspace(&mut tx, key.workspace_id, WorkspaceLock::OneCohort).await?;
    // Pages of one cohort are received one at a time: the one that counts the last page
    // sees every other.
    let name = import.name.map_or(key.cohort_id, |n| n.as_str());
    let cohort = create_or_lock(&mut tx, key, name, now, None).await?;
    let expired_before = now - chrono::TimeDelta::from_std(ttl).unwrap_or(chrono::TimeDelta::MAX);
    sqlx::query!(
        "DELETE FROM member_sessions WHERE workspace_id = $1 AND partner = $2 AND started_at < $3",
        key.workspace_id,
        key.partner,
        expired_before,
    )
    .execute(&mut *tx)
    .await?;
    let session = sqlx::query!(
        r#"INSERT INTO member_sessions AS s (workspace_id, partner, cohort_id, session_id, total_pages, started_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (workspace_id, partner, cohort_id, session_id) DO UPDATE SET total_pages = s.total_pages
         RETURNING total_pages, completed_at IS NOT NULL AS "completed!""#,
        key.workspace_id,
        key.partner,
        key.cohort_id,
        page.session_id,
        page.total_pages,
        now,
    )
    .fetch_one(&mut *tx)
    .await?;
    let total_pages = session.total_pages;
    if session.completed {
        return Ok(PageOutcome::AlreadyCompleted);
    }
    sqlx::query!(
        "INSERT INTO member_session_pages (workspace_id, partner, cohort_id, session_id, page, members, received_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (workspace_id, partner, cohort_id, session_id, page)
         DO UPDATE SET members = EXCLUDED.members, received_at = EXCLUDED.received_at",
        key.workspace_id,
        key.partner,
        key.cohort_id,
        page.session_id,
        page.number,
        page.members,
        now,
    )
    .execute(&mut *tx)
    .await?;
    let pages = sqlx::query_scalar!(
        "SELECT page FROM member_session_pages
          WHERE workspace_id = $1 AND partner = $2 AND cohort_id = $3 AND session_id = $4
            AND page BETWEEN 1 AND $5
          ORDER BY page",
        key.workspace_id,
        key.partner,
        key.cohort_id,
        page.session_id,
        total_pages,
    )
    .fetch_all(&mut *tx)
    .await?;
    if pages.len() < usize::try_from(total_pages).unwrap_or(usize::MAX) {
        db.commit(tx).await?;
        return Ok(PageOutcome::Staged { received: pages.len() as i64 });
    }

    // The last page: the union of all, page by page, so memory holds one page at a time.
    let mut wanted = Wanted::default();
    for number in pages {
        let text = sqlx::query_scalar!(
            "SELECT members FROM member_session_pages
              WHERE workspace_id = $1 AND partner = $2 AND cohort_id = $3 AND session_id = $4 AND page = $5",
            key.workspace_id,
            key.partner,
            key.cohort_id,
            page.session_id,
            number,
        )
        .fetch_one(&mut *tx)
        .await?;
        let (members, unreadable) = read_page(&text);
        wanted.count_unreadable(unreadable);
        for chunk in members.chunks(MEMBERS_PER_RESOLVE) {
            wanted.resolve(&mut tx, key.workspace_id, chunk).await?;
        }
    }
    let outcome = apply_replace(&mut tx, key, cohort, import, wanted, now).await?;
    sqlx::query!(
        "UPDATE member_sessions SET completed_at = $5
          WHERE workspace_id = $1 AND partner = $2 AND cohort_id = $3 AND session_id = $4",
        key.workspace_id,
        key.partner,
        key.cohort_id,
        page.session_id,
        now,
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "DELETE FROM member_session_pages
          WHERE workspace_id = $1 AND partner = $2 AND cohort_id = $3 AND session_id = $4",
        key.workspace_id,
        key.partner,
        key.cohort_id,
        page.session_id,
    )
    .execute(&mut *tx)
    .await?;
    db.commit(tx).await?;
    Ok(PageOutcome::Completed(outcome))
}
