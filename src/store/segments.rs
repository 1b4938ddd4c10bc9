//! SQL for the segment filter API: the cohort dropdown, and filter expressions compiled
//! to SQL that PostgreSQL evaluates (memberships never come into the service's memory).
//!
//! A [`Filter`] becomes a predicate over `users u`: a leaf is `EXISTS` (or `NOT EXISTS`)
//! over `cohort_memberships`, probing its primary key (workspace_id, cohort_ref, user_id);
//! `and`/`or`/`not` become the SQL operators. The SQL text comes only from the
//! expression's structure (leaf `k` is always `$n` for a fixed `n`); every value —
//! workspace, cohort refs, cursor, limits, identifiers — is a bound parameter.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use futures::{StreamExt, stream::BoxStream};
use serde::Serialize;
use sqlx::{AssertSqlSafe, PgConnection, PgPool, postgres::PgArguments, query::QueryAs};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{
    Alias, CohortId, DeviceId, ExternalId,
    filter::{CohortOp, Expr, Filter},
};

// ---- the cohort dropdown ----------------------------------------------------------

/// A partner cohort as the segment builder's dropdown shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct CohortSummary {
    /// The partner that imports it.
    pub partner: String,
    /// The partner's id for it.
    pub cohort_id: String,
    /// Its display name.
    pub name: String,
    /// Its current number of members (exact).
    pub member_count: i64,
    /// When an import last changed it; null before the first.
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
    pool: &PgPool,
    workspace_id: Uuid,
    partner: Option<&str>,
    name_contains: Option<&str>,
    after: Option<&CohortPosition>,
    limit: i64,
) -> sqlx::Result<Vec<CohortSummary>> {
    // strpos instead of ILIKE: the search text needs no escaping of % and _.
    sqlx::query_as(
        "SELECT partner, cohort_id, name, member_count, last_import_at FROM cohorts
          WHERE workspace_id = $1
            AND ($2::text IS NULL OR partner = $2)
            AND ($3::text IS NULL OR strpos(lower(name), lower($3)) > 0)
            AND ($4::text IS NULL OR (name, partner, cohort_id) > ($4, $5, $6))
          ORDER BY name, partner, cohort_id
          LIMIT $7",
    )
    .bind(workspace_id)
    .bind(partner)
    .bind(name_contains)
    .bind(after.map(|p| p.name.as_str()))
    .bind(after.map(|p| p.partner.as_str()))
    .bind(after.map(|p| p.cohort_id.as_str()))
    .bind(limit)
    .fetch_all(pool)
    .await
}

// ---- compiling a filter -----------------------------------------------------------

/// A filter resolved against one workspace's cohorts, ready to be run as SQL.
#[derive(Debug, Clone)]
pub struct SegmentQuery {
    workspace_id: Uuid,
    root: Expr,
    /// The internal cohort ids of each leaf, in leaf order (left to right).
    leaf_refs: Vec<Vec<i64>>,
    /// When the whole filter is `includes_value` of one cohort: its member count.
    single_cohort_members: Option<i64>,
}

/// A filter leaf names a cohort the workspace does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownCohort {
    /// The leaf's partner.
    pub partner: String,
    /// The unknown cohort id.
    pub cohort_id: String,
}

#[derive(sqlx::FromRow)]
struct ResolvedCohort {
    partner: String,
    cohort_id: String,
    id: Option<i64>,
    member_count: Option<i64>,
}

/// Resolves every (partner, cohort_id) of `filter` to the workspace's internal cohort ids
/// in one statement. `Err` lists the unknown ones, each once, in the filter's order.
pub async fn prepare(
    pool: &PgPool,
    workspace_id: Uuid,
    filter: &Filter,
) -> sqlx::Result<Result<SegmentQuery, Vec<UnknownCohort>>> {
    let leaves = filter.leaves();
    let mut partners = Vec::new();
    let mut cohort_ids = Vec::new();
    for leaf in &leaves {
        for id in leaf.cohort_ids() {
            partners.push(leaf.partner().as_str());
            cohort_ids.push(id.as_str());
        }
    }
    let rows: Vec<ResolvedCohort> = sqlx::query_as(
        "SELECT r.partner, r.cohort_id, c.id, c.member_count
           FROM unnest($2::text[], $3::text[]) AS r(partner, cohort_id)
           LEFT JOIN cohorts c ON c.workspace_id = $1 AND c.partner = r.partner AND c.cohort_id = r.cohort_id",
    )
    .bind(workspace_id)
    .bind(&partners)
    .bind(&cohort_ids)
    .fetch_all(pool)
    .await?;
    let found: HashMap<(&str, &str), &ResolvedCohort> =
        rows.iter().map(|r| ((r.partner.as_str(), r.cohort_id.as_str()), r)).collect();
    let lookup = |partner: &str, id: &CohortId| {
        found.get(&(partner, id.as_str())).map_or((None, None), |r| (r.id, r.member_count))
    };

    let mut unknown: Vec<UnknownCohort> = Vec::new();
    let mut leaf_refs = Vec::with_capacity(leaves.len());
    for leaf in &leaves {
        let mut refs = Vec::with_capacity(leaf.cohort_ids().len());
        for id in leaf.cohort_ids() {
            match lookup(leaf.partner().as_str(), id) {
                (Some(cohort_ref), _) => refs.push(cohort_ref),
                (None, _) => {
                    let missing =
                        UnknownCohort { partner: leaf.partner().to_string(), cohort_id: id.as_str().to_owned() };
                    if !unknown.contains(&missing) {
                        unknown.push(missing);
                    }
                }
            }
        }
        leaf_refs.push(refs);
    }
    if !unknown.is_empty() {
        return Ok(Err(unknown));
    }
    let single_cohort_members = match filter.root() {
        Expr::Cohort(leaf) if leaf.op() == CohortOp::IncludesValue && leaf.cohort_ids().len() == 1 => {
            lookup(leaf.partner().as_str(), &leaf.cohort_ids()[0]).1
        }
        _ => None,
    };
    Ok(Ok(SegmentQuery { workspace_id, root: filter.root().clone(), leaf_refs, single_cohort_members }))
}

impl SegmentQuery {
    /// The filter as a SQL predicate over `u.id` (a user of the workspace bound as `$1`),
    /// with leaf `k`'s cohort refs at `$(first_param + k)`.
    fn predicate(&self, first_param: usize) -> String {
        fn write(expr: &Expr, next_leaf: &mut usize, first_param: usize, out: &mut String) {
            match expr {
                Expr::Cohort(leaf) => {
                    let param = first_param + *next_leaf;
                    *next_leaf += 1;
                    if leaf.op() == CohortOp::DoesNotIncludeValue {
                        out.push_str("NOT ");
                    }
                    out.push_str(&format!(
                        "EXISTS (SELECT 1 FROM cohort_memberships m WHERE m.workspace_id = $1 \
                         AND m.cohort_ref = ANY(${param}::bigint[]) AND m.user_id = u.id)"
                    ));
                }
                Expr::And(operands) | Expr::Or(operands) => {
                    let joiner = if matches!(expr, Expr::And(_)) { " AND " } else { " OR " };
                    out.push('(');
                    for (i, operand) in operands.iter().enumerate() {
                        if i > 0 {
                            out.push_str(joiner);
                        }
                        write(operand, next_leaf, first_param, out);
                    }
                    out.push(')');
                }
                Expr::Not(operand) => {
                    out.push_str("NOT (");
                    write(operand, next_leaf, first_param, out);
                    out.push(')');
                }
            }
        }
        let mut out = String::new();
        write(&self.root, &mut 0, first_param, &mut out);
        out
    }

    /// Binds the workspace (`$1`) and, after `extra` parameters the caller binds, each
    /// leaf's cohort refs; see [`SegmentQuery::predicate`].
    fn bind_leaves<'q, O>(
        &'q self,
        mut query: QueryAs<'q, sqlx::Postgres, O, PgArguments>,
    ) -> QueryAs<'q, sqlx::Postgres, O, PgArguments> {
        for refs in &self.leaf_refs {
            query = query.bind(refs);
        }
        query
    }
}

/// Number of users of the workspace matching the filter, exact.
pub async fn count(pool: &PgPool, query: &SegmentQuery) -> sqlx::Result<i64> {
    if let Some(members) = query.single_cohort_members {
        // Maintained in the same transaction as every membership change: exact.
        return Ok(members);
    }
    let sql = format!("SELECT count(*) FROM users u WHERE u.workspace_id = $1 AND {}", query.predicate(2));
    let statement = sqlx::query_as::<_, (i64,)>(AssertSqlSafe(sql)).bind(query.workspace_id);
    // Generated text varies per filter: an unnamed statement, planned for these values.
    let (n,) = query.bind_leaves(statement).persistent(false).fetch_one(pool).await?;
    Ok(n)
}

/// A user of a segment.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SegmentUser {
    /// Internal id: the keyset pagination's position.
    pub id: i64,
    /// Public id.
    pub braze_id: Uuid,
    /// External id, when the user is identified.
    pub external_id: Option<String>,
}

/// Up to `limit` matching users with an internal id above `after`, in id order.
pub async fn page(pool: &PgPool, query: &SegmentQuery, after: i64, limit: i64) -> sqlx::Result<Vec<SegmentUser>> {
    let sql = format!(
        "SELECT u.id, u.braze_id, u.external_id FROM users u
          WHERE u.workspace_id = $1 AND u.id > $2 AND {}
          ORDER BY u.id LIMIT $3",
        query.predicate(4)
    );
    let statement = sqlx::query_as(AssertSqlSafe(sql)).bind(query.workspace_id).bind(after).bind(limit);
    query.bind_leaves(statement).persistent(false).fetch_all(pool).await
}

/// Every matching user, in id order, as one streamed query: rows arrive as PostgreSQL
/// produces them, so memory stays flat however large the segment.
pub fn export<'e>(
    connection: &'e mut PgConnection,
    query: &'e SegmentQuery,
) -> BoxStream<'e, sqlx::Result<SegmentUser>> {
    let sql = format!(
        "SELECT u.id, u.braze_id, u.external_id FROM users u WHERE u.workspace_id = $1 AND {} ORDER BY u.id",
        query.predicate(2)
    );
    let statement = sqlx::query_as(AssertSqlSafe(sql)).bind(query.workspace_id);
    query.bind_leaves(statement).persistent(false).fetch(connection).boxed()
}

// ---- per-user checks --------------------------------------------------------------

/// One user reference of a check, parsed.
#[derive(Debug, Clone)]
pub enum UserRef {
    /// By external id.
    ExternalId(ExternalId),
    /// By public id.
    BrazeId(Uuid),
    /// By device id.
    DeviceId(DeviceId),
    /// By alias.
    Alias(Alias),
}

/// The outcome of checking one reference.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CheckResult {
    /// The user the reference resolved to; `None` when it matches no user.
    pub braze_id: Option<Uuid>,
    /// Whether that user is in the segment (false for an unknown reference).
    pub matches: bool,
}

/// Resolves every reference to a user of the workspace and tests it against the filter,
/// in one statement; the results come in the order of `refs`.
pub async fn check(pool: &PgPool, query: &SegmentQuery, refs: &[UserRef]) -> sqlx::Result<Vec<CheckResult>> {
    let n = refs.len();
    let (mut external_ids, mut braze_ids, mut device_ids, mut labels, mut names) = (
        Vec::<Option<&str>>::with_capacity(n),
        Vec::<Option<Uuid>>::with_capacity(n),
        Vec::<Option<&str>>::with_capacity(n),
        Vec::<Option<&str>>::with_capacity(n),
        Vec::<Option<&str>>::with_capacity(n),
    );
    for r in refs {
        external_ids.push(if let UserRef::ExternalId(id) = r { Some(id.as_str()) } else { None });
        braze_ids.push(if let UserRef::BrazeId(id) = r { Some(*id) } else { None });
        device_ids.push(if let UserRef::DeviceId(id) = r { Some(id.as_str()) } else { None });
        labels.push(if let UserRef::Alias(a) = r { Some(a.alias_label.as_str()) } else { None });
        names.push(if let UserRef::Alias(a) = r { Some(a.alias_name.as_str()) } else { None });
    }
    // Each row has exactly one kind of identifier set, so exactly one branch of the
    // lateral UNION ALL can find a user; every branch is a unique-index probe.
    let sql = format!(
        "SELECT u.braze_id, COALESCE(u.id IS NOT NULL AND {}, false) AS matches
           FROM unnest($2::text[], $3::uuid[], $4::text[], $5::text[], $6::text[])
                WITH ORDINALITY AS r(external_id, braze_id, device_id, alias_label, alias_name, ord)
           LEFT JOIN LATERAL (
                SELECT x.id, x.braze_id FROM users x
                 WHERE r.external_id IS NOT NULL AND x.workspace_id = $1 AND x.external_id = r.external_id
                UNION ALL
                SELECT x.id, x.braze_id FROM users x
                 WHERE r.braze_id IS NOT NULL AND x.workspace_id = $1 AND x.braze_id = r.braze_id
                UNION ALL
                SELECT x.id, x.braze_id FROM user_device_ids d
                  JOIN users x ON x.workspace_id = $1 AND x.id = d.user_id
                 WHERE r.device_id IS NOT NULL AND d.workspace_id = $1 AND d.device_id = r.device_id
                UNION ALL
                SELECT x.id, x.braze_id FROM user_aliases a
                  JOIN users x ON x.workspace_id = $1 AND x.id = a.user_id
                 WHERE r.alias_label IS NOT NULL AND a.workspace_id = $1
                   AND a.alias_label = r.alias_label AND a.alias_name = r.alias_name
                LIMIT 1
           ) u ON true
          ORDER BY r.ord",
        query.predicate(7)
    );
    let statement = sqlx::query_as(AssertSqlSafe(sql))
        .bind(query.workspace_id)
        .bind(external_ids)
        .bind(braze_ids)
        .bind(device_ids)
        .bind(labels)
        .bind(names);
    query.bind_leaves(statement).persistent(false).fetch_all(pool).await
}
