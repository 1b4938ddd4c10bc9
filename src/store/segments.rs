//! SQL for the segment filter API: the cohort dropdown, and filter expressions compiled
//! to SQL that PostgreSQL evaluates (memberships never come into the service's memory).
//!
//! A [`Filter`] becomes a predicate: a leaf is `EXISTS` (or `NOT EXISTS`) over
//! `cohort_memberships`, probing its primary key (workspace_id, cohort_ref, user_id);
//! `and`/`or` become the SQL operators, `not` is pushed onto the leaves. The rows tested
//! are the workspace's users, or — when a top-level conjunct includes a single cohort —
//! that cohort's memberships (the smallest such), read from the primary key in user order:
//! `A includes AND B does_not_include` reads A's members, not every user.
//!
//! Counts have a faster path: when every user a filter can match is in one of its
//! `includes` cohorts (`A and not B`, `A or B`, but not `not B` alone), the count is
//! `bit_count` over the cohorts' bitmaps (`cohort_bitmaps`, kept by triggers in step with
//! the memberships), a few KiB of bitwise operations per million user ids instead of
//! reading every membership row. Pages and exports of such a filter that no single cohort
//! can drive (`A or B`, a leaf of several cohorts) take their user ids from the bitmaps too.
//! A check, whatever its filter, reads the bitmaps of just the blocks its users fall in.
//!
//! The SQL text comes only from the expression's structure (leaf `k` is always `$n` for a
//! fixed `n`); every value — workspace, cohort refs, cursor, limits, identifiers — is a
//! bound parameter.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use serde::Serialize;
use sqlx::{AssertSqlSafe, PgConnection, postgres::PgArguments, query::QueryAs};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{
    Alias, DeviceId, ExternalId,
    filter::{CohortOp, Expr, Filter},
};
use crate::store::database::Database;

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
    db: &Database,
    workspace_id: Uuid,
    partner: Option<&str>,
    name_contains: Option<&str>,
    after: Option<&CohortPosition>,
    limit: i64,
) -> sqlx::Result<Vec<CohortSummary>> {
    let mut conn = db.acquire().await?;
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
    .fetch_all(&mut *conn)
    .await
}

// ---- compiling a filter -----------------------------------------------------------

/// An empty block of `cohort_bitmaps.bits` (casting to `bit(n)` pads with zeros).
const NO_BITS: &str = "B'0'::bit(8192)";

/// A filter resolved against one workspace's cohorts, ready to be run as SQL.
#[derive(Debug, Clone)]
pub struct SegmentQuery {
    workspace_id: Uuid,
    /// The expression with `not` pushed onto the leaves.
    root: Node,
    /// Each leaf's internal cohort ids, by leaf index (left to right in the filter).
    leaves: Vec<LeafCohorts>,
    /// Each leaf's summed member counts: how many membership rows driving from it reads.
    leaf_members: Vec<i64>,
}

/// A leaf's cohorts as bound: one cohort binds a scalar, so that PostgreSQL sees
/// `cohort_ref = $n` and can read the primary key in user order.
#[derive(Debug, Clone)]
enum LeafCohorts {
    One(i64),
    Many(Vec<i64>),
}

/// The filter in negation normal form: `not` is pushed down onto the leaves (De Morgan),
/// so every leaf says plainly whether it includes or excludes, and nested `and`s are
/// flattened. A conjunct that includes a single cohort can then drive the whole query from
/// that cohort's memberships instead of from every user of the workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Leaf { index: usize, includes: bool },
    And(Vec<Node>),
    Or(Vec<Node>),
}

impl Node {
    fn from_expr(expr: &Expr, negated: bool, next_leaf: &mut usize) -> Node {
        match expr {
            Expr::Cohort(leaf) => {
                let index = *next_leaf;
                *next_leaf += 1;
                Node::Leaf { index, includes: (leaf.op() == CohortOp::IncludesValue) != negated }
            }
            Expr::And(operands) | Expr::Or(operands) => {
                let conjunction = matches!(expr, Expr::And(_)) != negated;
                let mut children = Vec::with_capacity(operands.len());
                for operand in operands {
                    match (Node::from_expr(operand, negated, next_leaf), conjunction) {
                        (Node::And(grandchildren), true) | (Node::Or(grandchildren), false) => {
                            children.extend(grandchildren)
                        }
                        (child, _) => children.push(child),
                    }
                }
                if children.len() == 1
                    && let Some(only) = children.pop()
                {
                    return only;
                }
                if conjunction { Node::And(children) } else { Node::Or(children) }
            }
            Expr::Not(operand) => Node::from_expr(operand, !negated, next_leaf),
        }
    }
}

impl Node {
    /// Whether every user this node matches is in a cohort of one of its `includes`
    /// leaves: true for an includes leaf, for an `and` with such a child, for an `or` of
    /// such children. Such a node can be evaluated on those cohorts' members alone.
    fn is_bounded(&self) -> bool {
        match self {
            Node::Leaf { includes, .. } => *includes,
            Node::And(children) => children.iter().any(Node::is_bounded),
            Node::Or(children) => children.iter().all(Node::is_bounded),
        }
    }
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
    db: &Database,
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
    let mut conn = db.acquire().await?;
    let rows: Vec<ResolvedCohort> = sqlx::query_as(
        "SELECT r.partner, r.cohort_id, c.id, c.member_count
           FROM unnest($2::text[], $3::text[]) AS r(partner, cohort_id)
           LEFT JOIN cohorts c ON c.workspace_id = $1 AND c.partner = r.partner AND c.cohort_id = r.cohort_id",
    )
    .bind(workspace_id)
    .bind(&partners)
    .bind(&cohort_ids)
    .fetch_all(&mut *conn)
    .await?;
    let found: HashMap<(&str, &str), (i64, i64)> = rows
        .iter()
        .filter_map(|r| Some(((r.partner.as_str(), r.cohort_id.as_str()), (r.id?, r.member_count?))))
        .collect();

    let mut unknown: Vec<UnknownCohort> = Vec::new();
    let mut leaf_cohorts = Vec::with_capacity(leaves.len());
    let mut leaf_members = Vec::with_capacity(leaves.len());
    for leaf in &leaves {
        let mut refs = Vec::with_capacity(leaf.cohort_ids().len());
        let mut members = 0i64;
        for id in leaf.cohort_ids() {
            match found.get(&(leaf.partner().as_str(), id.as_str())) {
                Some(&(cohort_ref, member_count)) => {
                    refs.push(cohort_ref);
                    members = members.saturating_add(member_count);
                }
                None => {
                    let missing =
                        UnknownCohort { partner: leaf.partner().to_string(), cohort_id: id.as_str().to_owned() };
                    if !unknown.contains(&missing) {
                        unknown.push(missing);
                    }
                }
            }
        }
        leaf_cohorts.push(if let [one] = refs[..] { LeafCohorts::One(one) } else { LeafCohorts::Many(refs) });
        leaf_members.push(members);
    }
    if !unknown.is_empty() {
        return Ok(Err(unknown));
    }
    let root = Node::from_expr(filter.root(), false, &mut 0);
    Ok(Ok(SegmentQuery { workspace_id, root, leaves: leaf_cohorts, leaf_members }))
}

/// Where the matching users come from, as SQL text: tables, conditions, and the column
/// holding a matching user's internal id.
struct Source {
    /// The single-cohort leaf whose memberships drive the query, if any.
    driver: Option<usize>,
    /// Conditions on the source rows (the filter, or what is left of it besides the
    /// driver), joined with AND; never empty.
    conditions: String,
    /// `d.user_id` when driven by a leaf, else `u.id`.
    id_column: &'static str,
}

impl SegmentQuery {
    /// The single-cohort `includes_value` leaf with the fewest members among the top-level
    /// conjuncts (or the root itself), and the conjuncts left once it is taken out.
    fn driver(&self) -> Option<(usize, Vec<&Node>)> {
        let conjuncts: Vec<&Node> = match &self.root {
            Node::And(children) => children.iter().collect(),
            other => vec![other],
        };
        let (position, index) = conjuncts
            .iter()
            .enumerate()
            .filter_map(|(position, node)| match node {
                Node::Leaf { index, includes: true } if matches!(self.leaves[*index], LeafCohorts::One(_)) => {
                    Some((position, *index))
                }
                _ => None,
            })
            .min_by_key(|&(_, index)| self.leaf_members[index])?;
        let mut rest = conjuncts;
        rest.remove(position);
        Some((index, rest))
    }

    /// When the whole filter is `includes_value` of one cohort: that cohort's member count.
    fn single_cohort_members(&self) -> Option<i64> {
        match self.root {
            Node::Leaf { index, includes: true } if matches!(self.leaves[index], LeafCohorts::One(_)) => {
                Some(self.leaf_members[index])
            }
            _ => None,
        }
    }

    /// The source of matching users. Leaf `k`'s cohorts are `$(first_leaf_param + k)`;
    /// `after`, when given, is the parameter of a keyset lower bound on the user id.
    fn source(&self, first_leaf_param: usize, after: Option<usize>) -> Source {
        let mut conditions = Vec::new();
        let (driver, id_column, rest) = match self.driver() {
            Some((index, rest)) => {
                conditions.push(format!("d.workspace_id = $1 AND d.cohort_ref = ${}", first_leaf_param + index));
                (Some(index), "d.user_id", rest)
            }
            None => {
                conditions.push("u.workspace_id = $1".to_owned());
                (None, "u.id", vec![&self.root])
            }
        };
        if let Some(after) = after {
            conditions.push(format!("{id_column} > ${after}"));
        }
        for node in rest {
            conditions.push(self.predicate(node, id_column, first_leaf_param, after));
        }
        Source { driver, conditions: conditions.join(" AND "), id_column }
    }

    /// `node` as a SQL predicate on the user whose internal id is `id_column`.
    ///
    /// `after` repeats the keyset bound inside each membership probe: redundant for the
    /// result, but it lets PostgreSQL start a merge over memberships at the page instead
    /// of at the workspace's first user.
    fn predicate(&self, node: &Node, id_column: &str, first_leaf_param: usize, after: Option<usize>) -> String {
        match node {
            Node::Leaf { index, includes } => {
                let cohorts = self.leaf_cohorts("m.cohort_ref", *index, first_leaf_param);
                let bound = after.map(|after| format!(" AND m.user_id > ${after}")).unwrap_or_default();
                format!(
                    "{}EXISTS (SELECT 1 FROM cohort_memberships m WHERE m.workspace_id = $1 AND {cohorts} \
                     AND m.user_id = {id_column}{bound})",
                    if *includes { "" } else { "NOT " }
                )
            }
            Node::And(children) | Node::Or(children) => {
                let joiner = if matches!(node, Node::And(_)) { " AND " } else { " OR " };
                let parts: Vec<String> =
                    children.iter().map(|c| self.predicate(c, id_column, first_leaf_param, after)).collect();
                format!("({})", parts.join(joiner))
            }
        }
    }

    /// `column` is one of leaf `index`'s cohorts, bound as `$(first_leaf_param + index)`.
    fn leaf_cohorts(&self, column: &str, index: usize, first_leaf_param: usize) -> String {
        let param = first_leaf_param + index;
        match self.leaves[index] {
            LeafCohorts::One(_) => format!("{column} = ${param}"),
            LeafCohorts::Many(_) => format!("{column} = ANY(${param}::bigint[])"),
        }
    }

    /// Every cohort the filter names, once each.
    fn all_cohorts(&self) -> Vec<i64> {
        let mut all: Vec<i64> = self
            .leaves
            .iter()
            .flat_map(|leaf| match leaf {
                LeafCohorts::One(cohort_ref) => std::slice::from_ref(cohort_ref),
                LeafCohorts::Many(cohort_refs) => cohort_refs.as_slice(),
            })
            .copied()
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// The filter evaluated on the cohorts' bitmaps, one row per block with `block` and
    /// `bits`, when the filter is bounded (see [`Node::is_bounded`]). `$2` is every cohort
    /// of the filter, leaf `k`'s cohorts are `$(first_leaf_param + k)`, `blocks` an extra
    /// condition on `block`.
    ///
    /// A bounded filter is false wherever [`Self::filter_blocks_sql`] is not exact (bits
    /// with no user, blocks it does not read), so its blocks can be counted and listed
    /// whole; any other filter's cannot.
    fn bitmap_blocks_sql(&self, first_leaf_param: usize, blocks: &str) -> Option<String> {
        self.root.is_bounded().then(|| self.filter_blocks_sql(first_leaf_param, blocks))
    }

    /// The filter evaluated on the cohorts' bitmaps, for any filter: one row per block
    /// with `block` and `bits`, parameters as in [`Self::bitmap_blocks_sql`].
    ///
    /// Column `l<k>` is the union of leaf `k`'s cohorts in a block; an `includes` leaf is
    /// `l<k>`, a `does_not_include` leaf `~l<k>`. That is exact at every bit of a user; at
    /// a bit with no user (or one in none of the cohorts) every leaf reads as "not a
    /// member", where a bounded filter is false. Blocks where none of the cohorts has a
    /// member are not read at all: there, a user matches exactly when the filter matches a
    /// user in no cohort ([`Self::matches_outside_every_cohort`]).
    fn filter_blocks_sql(&self, first_leaf_param: usize, blocks: &str) -> String {
        let leaves: Vec<String> = (0..self.leaves.len())
            .map(|k| {
                let cohorts = self.leaf_cohorts("cohort_ref", k, first_leaf_param);
                format!("coalesce(bit_or(bits) FILTER (WHERE {cohorts}), {NO_BITS}) AS l{k}")
            })
            .collect();
        format!(
            "SELECT block, {} AS bits
               FROM (SELECT block, {} FROM cohort_bitmaps
                      WHERE workspace_id = $1 AND cohort_ref = ANY($2::bigint[]) AND {blocks}
                      GROUP BY block) AS leaves",
            Self::bitmap_expression(&self.root),
            leaves.join(", ")
        )
    }

    /// Whether the filter matches a user who is in none of its cohorts: every leaf then
    /// reads "not a member", which is the opposite of being bounded (a bounded filter
    /// needs one of its `includes` cohorts; any other is true with every leaf false).
    fn matches_outside_every_cohort(&self) -> bool {
        !self.root.is_bounded()
    }

    /// The count on the bitmaps (see [`Self::bitmap_blocks_sql`]), leaves from `$3`.
    fn bitmap_count_sql(&self) -> Option<String> {
        let blocks = self.bitmap_blocks_sql(3, "true")?;
        Some(format!("SELECT coalesce(sum(bit_count(bits)), 0)::int8 FROM ({blocks}) AS blocks"))
    }

    /// The blocks from `$3` on that hold a match, at most `$4` of them, in order, with
    /// their bits as text (`'0'`/`'1'`, bit `i` of block `b` being user id `b * 8192 + i`);
    /// leaves from `$5`.
    fn bitmap_page_blocks_sql(&self) -> Option<String> {
        let blocks = self.bitmap_blocks_sql(5, "block >= $3")?;
        Some(format!(
            "SELECT block, bits::text FROM ({blocks}) AS blocks WHERE bit_count(bits) > 0 ORDER BY block LIMIT $4"
        ))
    }

    /// `node` over one block's columns (see [`Self::filter_blocks_sql`]).
    fn bitmap_expression(node: &Node) -> String {
        match node {
            Node::Leaf { index, includes: true } => format!("l{index}"),
            Node::Leaf { index, includes: false } => format!("(~l{index})"),
            Node::And(children) | Node::Or(children) => {
                let joiner = if matches!(node, Node::And(_)) { " & " } else { " | " };
                let parts: Vec<String> = children.iter().map(Self::bitmap_expression).collect();
                format!("({})", parts.join(joiner))
            }
        }
    }

    /// Binds each leaf's cohorts, in leaf order, after the parameters already bound.
    fn bind_leaves<'q, O>(
        &'q self,
        mut query: QueryAs<'q, sqlx::Postgres, O, PgArguments>,
    ) -> QueryAs<'q, sqlx::Postgres, O, PgArguments> {
        for cohorts in &self.leaves {
            query = match cohorts {
                LeafCohorts::One(cohort_ref) => query.bind(*cohort_ref),
                LeafCohorts::Many(cohort_refs) => query.bind(cohort_refs),
            };
        }
        query
    }

    /// The SQL selecting matching users' `id, braze_id, external_id` in id order, with
    /// the leaves' parameters from `first_leaf_param` and an optional keyset bound.
    fn users_sql(&self, first_leaf_param: usize, after: Option<usize>, limit: Option<usize>) -> String {
        let source = self.source(first_leaf_param, after);
        let from = if source.driver.is_some() {
            "cohort_memberships d JOIN users u ON u.workspace_id = $1 AND u.id = d.user_id"
        } else {
            "users u"
        };
        let limit = limit.map(|param| format!(" LIMIT ${param}")).unwrap_or_default();
        format!(
            "SELECT u.id, u.braze_id, u.external_id FROM {from} WHERE {} ORDER BY {}{limit}",
            source.conditions, source.id_column
        )
    }
}

/// Number of users of the workspace matching the filter, exact.
pub async fn count(db: &Database, query: &SegmentQuery) -> sqlx::Result<i64> {
    if let Some(members) = query.single_cohort_members() {
        // Maintained in the same transaction as every membership change: exact.
        return Ok(members);
    }
    let mut conn = db.acquire().await?;
    if let Some(sql) = query.bitmap_count_sql() {
        let statement =
            sqlx::query_as::<_, (i64,)>(AssertSqlSafe(sql)).bind(query.workspace_id).bind(query.all_cohorts());
        let (n,) = query.bind_leaves(statement).persistent(false).fetch_one(&mut *conn).await?;
        return Ok(n);
    }
    let source = query.source(2, None);
    let from = if source.driver.is_some() { "cohort_memberships d" } else { "users u" };
    let sql = format!("SELECT count(*) FROM {from} WHERE {}", source.conditions);
    let statement = sqlx::query_as::<_, (i64,)>(AssertSqlSafe(sql)).bind(query.workspace_id);
    // Generated text varies per filter: an unnamed statement, planned for these values.
    let (n,) = query.bind_leaves(statement).persistent(false).fetch_one(&mut *conn).await?;
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
pub async fn page(db: &Database, query: &SegmentQuery, after: i64, limit: i64) -> sqlx::Result<Vec<SegmentUser>> {
    if query.driver().is_none()
        && let Some(blocks_sql) = query.bitmap_page_blocks_sql()
    {
        return page_from_bitmaps(db, query, &blocks_sql, after, limit).await;
    }
    let sql = query.users_sql(4, Some(2), Some(3));
    let statement = sqlx::query_as(AssertSqlSafe(sql)).bind(query.workspace_id).bind(after).bind(limit);
    let mut conn = db.acquire().await?;
    query.bind_leaves(statement).persistent(false).fetch_all(&mut *conn).await
}

/// Bitmap blocks read per round trip while a page is collected from them.
const PAGE_BLOCKS_PER_READ: i64 = 16;
/// Bitmap blocks per batch of an export: at most 4 × 8,192 users in memory at once.
const EXPORT_BLOCKS_PER_READ: i64 = 4;

/// [`page`] for a bounded filter that no single cohort drives (`A or B`, a leaf of several
/// cohorts): in SQL it would test the workspace's users one by one from `after` until the
/// page is full, however few of them match; the bitmaps give the matching ids block by
/// block instead, and the users are then read by id. Both reads see one snapshot.
async fn page_from_bitmaps(
    db: &Database,
    query: &SegmentQuery,
    blocks_sql: &str,
    after: i64,
    limit: i64,
) -> sqlx::Result<Vec<SegmentUser>> {
    let wanted = usize::try_from(limit).unwrap_or(0);
    let mut ids: Vec<i64> = Vec::with_capacity(wanted.min(10_000));
    let mut tx = db.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    let mut next_block = Some(after.max(0) >> 13);
    while let Some(from) = next_block
        && ids.len() < wanted
    {
        let read = BitmapRead { from, blocks: PAGE_BLOCKS_PER_READ, after, max_ids: wanted };
        next_block = read.matching_ids(&mut tx, query, blocks_sql, &mut ids).await?;
    }
    let users = users_by_id(&mut tx, query.workspace_id, &ids).await?;
    tx.commit().await?;
    Ok(users)
}

/// One read of bitmap blocks (see [`SegmentQuery::bitmap_page_blocks_sql`]).
struct BitmapRead {
    /// The first block to read.
    from: i64,
    /// How many blocks holding a match to read at most.
    blocks: i64,
    /// Only ids above this one count.
    after: i64,
    /// Stop once `ids` holds this many.
    max_ids: usize,
}

impl BitmapRead {
    /// Appends the matching user ids of the blocks read to `ids`, in order; returns the
    /// block to read next, `None` when there is none left.
    async fn matching_ids(
        &self,
        conn: &mut PgConnection,
        query: &SegmentQuery,
        blocks_sql: &str,
        ids: &mut Vec<i64>,
    ) -> sqlx::Result<Option<i64>> {
        let statement = sqlx::query_as::<_, (i64, String)>(AssertSqlSafe(blocks_sql.to_owned()))
            .bind(query.workspace_id)
            .bind(query.all_cohorts())
            .bind(self.from)
            .bind(self.blocks);
        let blocks = query.bind_leaves(statement).persistent(false).fetch_all(&mut *conn).await?;
        for (block, bits) in &blocks {
            // Bit `i` of the text is user id `block * 8192 + i`.
            let set = bits.bytes().enumerate().filter(|&(_, bit)| bit == b'1');
            for id in set.map(|(position, _)| block * 8192 + position as i64).filter(|&id| id > self.after) {
                ids.push(id);
                if ids.len() >= self.max_ids {
                    return Ok(Some(*block));
                }
            }
        }
        Ok(match blocks.last() {
            Some(&(last, _)) if blocks.len() as i64 == self.blocks => Some(last + 1),
            _ => None,
        })
    }
}

/// The users with these internal ids, in id order.
async fn users_by_id(conn: &mut PgConnection, workspace_id: Uuid, ids: &[i64]) -> sqlx::Result<Vec<SegmentUser>> {
    sqlx::query_as("SELECT id, braze_id, external_id FROM users WHERE workspace_id = $1 AND id = ANY($2) ORDER BY id")
        .bind(workspace_id)
        .bind(ids)
        .fetch_all(conn)
        .await
}

/// Every matching user, in id order, streamed so that memory stays flat however large the
/// segment: the rows of one query as PostgreSQL produces them or, for the filters [`page`]
/// reads from the bitmaps, a few bitmap blocks' users at a time.
pub fn export<'e>(
    connection: &'e mut PgConnection,
    query: &'e SegmentQuery,
) -> BoxStream<'e, sqlx::Result<SegmentUser>> {
    if query.driver().is_none()
        && let Some(blocks_sql) = query.bitmap_page_blocks_sql()
    {
        return export_from_bitmaps(connection, query, blocks_sql);
    }
    let sql = query.users_sql(2, None, None);
    let statement = sqlx::query_as(AssertSqlSafe(sql)).bind(query.workspace_id);
    query.bind_leaves(statement).persistent(false).fetch(connection).boxed()
}

/// [`export`] from the bitmaps, in one read-only repeatable-read transaction opened on
/// `connection` and committed after the last batch. (A stream dropped before its end
/// leaves it open: the caller closes such a connection rather than return it to the pool.)
fn export_from_bitmaps<'e>(
    connection: &'e mut PgConnection,
    query: &'e SegmentQuery,
    blocks_sql: String,
) -> BoxStream<'e, sqlx::Result<SegmentUser>> {
    let blocks_sql = std::sync::Arc::new(blocks_sql);
    let batches = futures::stream::try_unfold((connection, None::<i64>, false), move |(conn, next, begun)| {
        let blocks_sql = blocks_sql.clone();
        async move {
            let from = match (next, begun) {
                (_, false) => {
                    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *conn).await?;
                    0
                }
                (Some(from), true) => from,
                (None, true) => {
                    sqlx::query("COMMIT").execute(&mut *conn).await?;
                    return Ok::<_, sqlx::Error>(None);
                }
            };
            let mut ids = Vec::new();
            let read = BitmapRead { from, blocks: EXPORT_BLOCKS_PER_READ, after: 0, max_ids: usize::MAX };
            let next = read.matching_ids(conn, query, &blocks_sql, &mut ids).await?;
            let users = users_by_id(conn, query.workspace_id, &ids).await?;
            Ok(Some((users, (conn, next, true))))
        }
    });
    batches.map_ok(|users| futures::stream::iter(users.into_iter().map(Ok))).try_flatten().boxed()
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
pub async fn check(db: &Database, query: &SegmentQuery, refs: &[UserRef]) -> sqlx::Result<Vec<CheckResult>> {
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
    // lateral UNION ALL can find a user; every branch is a unique-index probe. The filter
    // is then evaluated on the bitmaps of just the blocks those users fall in (1 KiB per
    // cohort of the filter and such block), not probed per user in the memberships: on
    // 1M users that took the membership test from ~6 ms to ~2 ms (BENCHMARKS.md, 4).
    let sql = format!(
        "WITH resolved AS MATERIALIZED (
            SELECT r.ord, u.id, u.braze_id
              FROM unnest($3::text[], $4::uuid[], $5::text[], $6::text[], $7::text[])
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
         ),
         blocks AS ({})
         SELECT r.braze_id,
                r.id IS NOT NULL AND COALESCE(get_bit(b.bits, (r.id & 8191)::int) = 1, {}) AS matches
           FROM resolved r LEFT JOIN blocks b ON b.block = r.id >> 13
          ORDER BY r.ord",
        query.filter_blocks_sql(8, "block = ANY(ARRAY(SELECT DISTINCT id >> 13 FROM resolved WHERE id IS NOT NULL))"),
        query.matches_outside_every_cohort()
    );
    let statement = sqlx::query_as(AssertSqlSafe(sql))
        .bind(query.workspace_id)
        .bind(query.all_cohorts())
        .bind(external_ids)
        .bind(braze_ids)
        .bind(device_ids)
        .bind(labels)
        .bind(names);
    // Unlike the set-wide statements, this one's best plan does not depend on the values
    // (index probes per reference, whatever the cohorts' sizes): a prepared statement,
    // cached per connection, saves its planning (a few ms) on every check.
    let mut conn = db.acquire().await?;
    query.bind_leaves(statement).fetch_all(&mut *conn).await
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn query(filter: serde_json::Value, leaves: Vec<LeafCohorts>, leaf_members: Vec<i64>) -> SegmentQuery {
        let filter = Filter::parse(&filter).unwrap();
        SegmentQuery {
            workspace_id: Uuid::nil(),
            root: Node::from_expr(filter.root(), false, &mut 0),
            leaves,
            leaf_members,
        }
    }

    fn leaf(op: &str, id: &str) -> serde_json::Value {
        json!({"cohort": {"partner": "kubit", "op": op, "cohort_ids": [id]}})
    }

    #[test]
    fn not_is_pushed_onto_the_leaves_and_ands_are_flattened() {
        let q = query(
            json!({"not": {"or": [
                {"not": leaf("includes_value", "A")},
                {"and": [leaf("includes_value", "B"), {"not": leaf("does_not_include_value", "C")}]}
            ]}}),
            vec![LeafCohorts::One(1), LeafCohorts::One(2), LeafCohorts::One(3)],
            vec![10, 20, 30],
        );
        // not(not A or (B and not(not C))) = A and (not B or not C)
        assert_eq!(
            q.root,
            Node::And(vec![
                Node::Leaf { index: 0, includes: true },
                Node::Or(vec![Node::Leaf { index: 1, includes: false }, Node::Leaf { index: 2, includes: false }]),
            ])
        );
        let q = query(json!({"not": {"not": leaf("includes_value", "A")}}), vec![LeafCohorts::One(1)], vec![7]);
        assert_eq!(q.single_cohort_members(), Some(7));
    }

    #[test]
    fn the_smallest_single_cohort_includes_conjunct_drives() {
        let q = query(
            json!({"and": [leaf("includes_value", "A"), leaf("does_not_include_value", "B"), leaf("includes_value", "C")]}),
            vec![LeafCohorts::One(1), LeafCohorts::One(2), LeafCohorts::One(3)],
            vec![500, 10, 300],
        );
        assert_eq!(q.driver().map(|(index, rest)| (index, rest.len())), Some((2, 2)));
        assert_eq!(
            q.source(2, None).conditions,
            "d.workspace_id = $1 AND d.cohort_ref = $4 \
             AND EXISTS (SELECT 1 FROM cohort_memberships m WHERE m.workspace_id = $1 AND m.cohort_ref = $2 AND m.user_id = d.user_id) \
             AND NOT EXISTS (SELECT 1 FROM cohort_memberships m WHERE m.workspace_id = $1 AND m.cohort_ref = $3 AND m.user_id = d.user_id)"
        );
        // A leaf of several cohorts does not drive (its members are not one index range).
        let q = query(
            json!({"and": [json!({"cohort": {"partner": "kubit", "op": "includes_value", "cohort_ids": ["A", "B"]}}), leaf("does_not_include_value", "C")]}),
            vec![LeafCohorts::Many(vec![1, 2]), LeafCohorts::One(3)],
            vec![5, 5],
        );
        assert!(q.driver().is_none());
        assert_eq!(
            q.users_sql(4, Some(2), Some(3)),
            "SELECT u.id, u.braze_id, u.external_id FROM users u WHERE u.workspace_id = $1 AND u.id > $2 \
             AND (EXISTS (SELECT 1 FROM cohort_memberships m WHERE m.workspace_id = $1 AND m.cohort_ref = ANY($4::bigint[]) AND m.user_id = u.id AND m.user_id > $2) \
             AND NOT EXISTS (SELECT 1 FROM cohort_memberships m WHERE m.workspace_id = $1 AND m.cohort_ref = $5 AND m.user_id = u.id AND m.user_id > $2)) \
             ORDER BY u.id LIMIT $3"
        );
    }

    #[test]
    fn bounded_filters_count_on_bitmaps_and_the_rest_on_rows() {
        let cohorts = || vec![LeafCohorts::One(1), LeafCohorts::Many(vec![2, 1]), LeafCohorts::One(3)];
        // A and not (B or C): every match is in A.
        let q = query(
            json!({"and": [leaf("includes_value", "A"), {"not": {"or": [leaf("includes_value", "B"), leaf("includes_value", "C")]}}]}),
            cohorts(),
            vec![1, 1, 1],
        );
        assert!(q.root.is_bounded());
        assert_eq!(q.all_cohorts(), vec![1, 2, 3]);
        let sql = q.bitmap_count_sql().unwrap();
        assert!(sql.starts_with("SELECT coalesce(sum(bit_count(bits)), 0)::int8"), "{sql}");
        assert!(sql.contains("SELECT block, (l0 & (~l1) & (~l2)) AS bits"), "{sql}");
        assert!(
            sql.contains("bit_or(bits) FILTER (WHERE cohort_ref = ANY($4::bigint[])), B'0'::bit(8192)) AS l1"),
            "{sql}"
        );
        assert!(sql.contains("bit_or(bits) FILTER (WHERE cohort_ref = $5), B'0'::bit(8192)) AS l2"), "{sql}");

        // A or not B: matches users in no cohort at all, which no bitmap holds.
        let q = query(
            json!({"or": [leaf("includes_value", "A"), leaf("does_not_include_value", "B")]}),
            vec![LeafCohorts::One(1), LeafCohorts::One(2)],
            vec![1, 1],
        );
        assert!(!q.root.is_bounded());
        assert!(q.bitmap_count_sql().is_none());

        // (A and not B) or C: bounded.
        let q = query(
            json!({"or": [{"and": [leaf("includes_value", "A"), leaf("does_not_include_value", "B")]}, leaf("includes_value", "C")]}),
            cohorts(),
            vec![1, 1, 1],
        );
        let sql = q.bitmap_count_sql().unwrap();
        assert!(sql.contains("SELECT block, ((l0 & (~l1)) | l2) AS bits"), "{sql}");
        let page = q.bitmap_page_blocks_sql().unwrap();
        assert!(page.contains("AND block >= $3") && page.contains("FILTER (WHERE cohort_ref = $5)"), "{page}");
        assert!(page.ends_with("WHERE bit_count(bits) > 0 ORDER BY block LIMIT $4"), "{page}");
        assert!(
            query(json!({"not": leaf("includes_value", "A")}), vec![LeafCohorts::One(1)], vec![1])
                .bitmap_count_sql()
                .is_none()
        );
    }

    /// Evaluates `node` for a user whose memberships `member(leaf)` tells, the way the
    /// filter language defines it.
    fn evaluate(node: &Node, member: &dyn Fn(usize) -> bool) -> bool {
        match node {
            Node::Leaf { index, includes } => member(*index) == *includes,
            Node::And(children) => children.iter().all(|child| evaluate(child, member)),
            Node::Or(children) => children.iter().any(|child| evaluate(child, member)),
        }
    }

    #[test]
    fn a_user_in_no_cohort_matches_exactly_the_unbounded_filters() {
        let a = || leaf("includes_value", "A");
        let not_b = || leaf("does_not_include_value", "B");
        let filters = [
            a(),
            not_b(),
            json!({"not": a()}),
            json!({"and": [a(), not_b()]}),
            json!({"or": [a(), not_b()]}),
            json!({"and": [not_b(), {"not": a()}]}),
            json!({"or": [{"and": [a(), not_b()]}, {"not": {"or": [a(), not_b()]}}]}),
            json!({"not": {"and": [{"not": a()}, not_b()]}}),
        ];
        for filter in filters {
            let leaves = filter.to_string().matches("\"cohort\"").count();
            let q = query(filter.clone(), vec![LeafCohorts::One(1); leaves], vec![1; leaves]);
            assert_eq!(q.matches_outside_every_cohort(), evaluate(&q.root, &|_| false), "for {filter}");
        }
    }
}
