//! `cohort_unmatched`: the identifiers sent for a cohort that matched nobody, with why,
//! for operators to see what a partner sends that this workspace does not know.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Postgres, QueryBuilder};
use uuid::Uuid;

use super::{CohortKey, find_ref, resolve::resolve};
use crate::domain::{Alias, DeviceId, ExternalId, MemberRefs, UnmatchedReason, UserRef};
use crate::store::database::Database;

/// Most identifiers kept per cohort: past it, new ones are counted, not listed.
pub const MAX_PER_COHORT: i64 = 10_000;
/// Rows per INSERT: 9 parameters each, within PostgreSQL's 65,535.
const ROWS_PER_STATEMENT: usize = 1000;

/// An identifier that matched nobody, as listed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UnmatchedIdentifier {
    pub kind: String,
    /// The alias label, for an alias.
    #[sqlx(try_from = "String")]
    pub alias_label: AliasLabelColumn,
    pub value: String,
    pub reason: String,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub times_seen: i64,
}

/// The alias label column, `''` for identifiers that are no alias: `None` here.
#[derive(Debug, Clone)]
pub struct AliasLabelColumn(Option<String>);

impl From<String> for AliasLabelColumn {
    fn from(label: String) -> Self {
        AliasLabelColumn((!label.is_empty()).then_some(label))
    }
}

impl AliasLabelColumn {
    /// The label, for an alias.
    pub fn into_label(self) -> Option<String> {
        self.0
    }
}

/// The stored form of a reference: kind, alias label (`''` if none), value.
fn columns(user_ref: &UserRef) -> (&'static str, &str, String) {
    match user_ref {
        UserRef::ExternalId(id) => ("external_id", "", id.as_str().to_owned()),
        UserRef::DeviceId(id) => ("device_id", "", id.as_str().to_owned()),
        UserRef::BrazeId(id) => ("braze_id", "", id.to_string()),
        UserRef::Alias(alias) => ("alias", alias.alias_label.as_str(), alias.alias_name.as_str().to_owned()),
    }
}

/// Records the members that matched nobody in a change of cohort `cohort_ref` (each by
/// its first reference, the one its first rule read); returns by how much the cohort's
/// listed count changes. A cohort with no room left first drops its entries not seen
/// for `retention`; past that, new ones are counted only (their existing entries are
/// still updated).
pub(super) async fn record(
    tx: &mut PgConnection,
    workspace_id: Uuid,
    cohort_ref: i64,
    members: &[(&MemberRefs, UnmatchedReason)],
    now: DateTime<Utc>,
    retention: Duration,
) -> sqlx::Result<i64> {
    if members.is_empty() {
        return Ok(0);
    }
    let mut rows: Vec<(&'static str, &str, String, &'static str)> = members
        .iter()
        .filter_map(|(member, reason)| member.refs().first().map(|r| (r, reason)))
        .map(|(user_ref, reason)| {
            let (kind, label, value) = columns(user_ref);
            (kind, label, value, reason.as_str())
        })
        .collect();
    // One row per identifier: ON CONFLICT may not touch a row twice in one statement.
    rows.sort_unstable_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
    rows.dedup_by(|a, b| (a.0, a.1, &a.2) == (b.0, b.1, &b.2));
    // The cohort's row is locked by this transaction: its count is exact.
    let mut listed = sqlx::query_scalar!(
        "SELECT unmatched_listed FROM cohorts WHERE workspace_id = $1 AND id = $2",
        workspace_id,
        cohort_ref,
    )
    .fetch_one(&mut *tx)
    .await?;
    let before = listed;
    if listed + rows.len() as i64 > MAX_PER_COHORT {
        let expired_before = now - chrono::TimeDelta::from_std(retention).unwrap_or(chrono::TimeDelta::MAX);
        let dropped = sqlx::query!(
            "DELETE FROM cohort_unmatched WHERE workspace_id = $1 AND cohort_ref = $2 AND last_seen < $3",
            workspace_id,
            cohort_ref,
            expired_before,
        )
        .execute(&mut *tx)
        .await?;
        listed -= dropped.rows_affected() as i64;
    }
    if listed >= MAX_PER_COHORT {
        // No room: only the identifiers already listed are brought up to date.
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut update = QueryBuilder::<Postgres>::new("UPDATE cohort_unmatched AS u SET last_seen = ");
            update.push_bind(now).push(", reason = v.reason, times_seen = u.times_seen + 1 FROM (");
            update.push_values(chunk, |mut row, (kind, label, value, reason)| {
                row.push_bind(*kind).push_bind(*label).push_bind(value.as_str()).push_bind(*reason);
            });
            update.push(") AS v (kind, alias_label, value, reason) WHERE u.workspace_id = ").push_bind(workspace_id);
            update.push(" AND u.cohort_ref = ").push_bind(cohort_ref);
            update.push(" AND u.kind = v.kind AND u.alias_label = v.alias_label AND u.value = v.value");
            update.build().persistent(false).execute(&mut *tx).await?;
        }
        return Ok(listed - before);
    }
    // Rows as VALUES, not `INSERT … SELECT FROM unnest`, which Citus would evaluate on
    // the coordinator; the text varies with the row count, so it is not prepared.
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut insert = QueryBuilder::<Postgres>::new(
            "INSERT INTO cohort_unmatched AS u
                    (workspace_id, cohort_ref, kind, alias_label, value, reason, first_seen, last_seen, times_seen) ",
        );
        insert.push_values(chunk, |mut row, (kind, label, value, reason)| {
            row.push_bind(workspace_id).push_bind(cohort_ref).push_bind(*kind).push_bind(*label);
            row.push_bind(value.as_str()).push_bind(*reason).push_bind(now).push_bind(now).push_bind(1_i64);
        });
        insert.push(
            " ON CONFLICT (workspace_id, cohort_ref, kind, alias_label, value)
              DO UPDATE SET last_seen = EXCLUDED.last_seen, reason = EXCLUDED.reason, times_seen = u.times_seen + 1
              RETURNING xmax = 0",
        );
        let inserted: Vec<bool> = insert.build_query_scalar().persistent(false).fetch_all(&mut *tx).await?;
        listed += inserted.iter().filter(|&&new| new).count() as i64;
    }
    if listed > MAX_PER_COHORT {
        // The change that reaches the cap keeps only as many new entries as fit.
        listed = trim_new(tx, workspace_id, cohort_ref, now, listed).await?;
    }
    Ok(listed - before)
}

/// Removes entries first seen at `now` (this change's) while the cohort is over its
/// cap; the count left.
async fn trim_new(
    tx: &mut PgConnection,
    workspace_id: Uuid,
    cohort_ref: i64,
    now: DateTime<Utc>,
    listed: i64,
) -> sqlx::Result<i64> {
    let trimmed = sqlx::query!(
        "DELETE FROM cohort_unmatched WHERE workspace_id = $1 AND cohort_ref = $2 AND (kind, alias_label, value) IN (
             SELECT kind, alias_label, value FROM cohort_unmatched
              WHERE workspace_id = $1 AND cohort_ref = $2 AND first_seen = $3 LIMIT $4)",
        workspace_id,
        cohort_ref,
        now,
        listed - MAX_PER_COHORT,
    )
    .execute(&mut *tx)
    .await?;
    Ok(listed - trimmed.rows_affected() as i64)
}

/// Where a page of the list starts: after this (kind, alias label, value).
pub type UnmatchedPosition = (String, String, String);

/// A page of a cohort's unmatched identifiers in (kind, alias label, value) order: at
/// most `limit` read after `after`, less those that match a user by now and those not
/// seen for `retention`; with the
/// position of the last one read (the next page starts after it; `None` at the end).
/// `None` if the cohort does not exist.
pub async fn list(
    db: &Database,
    key: CohortKey<'_>,
    limit: i64,
    after: Option<UnmatchedPosition>,
    retention: Duration,
) -> sqlx::Result<Option<(Vec<UnmatchedIdentifier>, Option<UnmatchedPosition>)>> {
    let mut conn = db.acquire().await?;
    let Some(cohort_ref) = find_ref(&mut conn, key).await? else { return Ok(None) };
    let (kind, label, value) = after.unwrap_or_default();
    let mut rows = sqlx::query_as!(
        UnmatchedIdentifier,
        "SELECT kind, alias_label, value, reason, first_seen, last_seen, times_seen FROM cohort_unmatched
          WHERE workspace_id = $1 AND cohort_ref = $2 AND (kind, alias_label, value) > ($3, $4, $5)
            AND last_seen >= $7
          ORDER BY kind, alias_label, value LIMIT $6",
        key.workspace_id,
        cohort_ref,
        kind,
        label,
        value,
        limit,
        Utc::now() - chrono::TimeDelta::from_std(retention).unwrap_or(chrono::TimeDelta::MAX),
    )
    .fetch_all(&mut *conn)
    .await?;
    let next = (rows.len() as i64 == limit).then(|| rows.last().map(position)).flatten();
    // Drop what matches now: the identifier leaves the list once it would match.
    let refs: Vec<Option<MemberRefs>> = rows.iter().map(|row| as_ref(row).map(MemberRefs::one)).collect();
    let readable: Vec<&MemberRefs> = refs.iter().flatten().collect();
    let resolved = resolve(&mut conn, key.workspace_id, None, readable.iter().copied()).await?;
    let mut matched = vec![false; readable.len()];
    for r in resolved {
        if r.user.is_some()
            && let Some(m) = matched.get_mut(r.member)
        {
            *m = true;
        }
    }
    let mut matched = matched.into_iter();
    rows.retain(|row| as_ref(row).is_none() || !matched.next().unwrap_or(false));
    Ok(Some((rows, next)))
}

fn position(row: &UnmatchedIdentifier) -> UnmatchedPosition {
    (row.kind.clone(), row.alias_label.0.clone().unwrap_or_default(), row.value.clone())
}

/// The reference a stored row names (rows are written from valid references).
fn as_ref(row: &UnmatchedIdentifier) -> Option<UserRef> {
    let value = row.value.clone();
    match row.kind.as_str() {
        "external_id" => ExternalId::parse(value).ok().map(UserRef::ExternalId),
        "device_id" => DeviceId::parse(value).ok().map(UserRef::DeviceId),
        "braze_id" => value.parse().ok().map(UserRef::BrazeId),
        "alias" => Alias::parse(row.alias_label.0.clone()?, value).ok().map(UserRef::Alias),
        _ => None,
    }
}
