//! A filter compiled to SQL over the bitmaps: for each block of 8,192 user ids, leaf `k`
//! is the union of its cohorts' bits in that block, `and`/`or`/`not` are `&`/`|`/`~`, and
//! a filter that can match users in none of its cohorts (`not A`, `A or not B`) is taken
//! within the block's users (`user_bitmaps`).
//!
//! The SQL text comes only from the expression's structure (leaf `k` is always `$n` for a
//! fixed `n`); every value (workspace, cohort refs, blocks, limits) is a bound parameter.

use std::collections::HashMap;

use sqlx::{postgres::PgArguments, query::QueryAs};
use uuid::Uuid;

use crate::domain::filter::{CohortOp, Expr, Filter};
use crate::store::{bit_changes::HeldColumns, database::Database};

/// An empty block of `cohort_bitmaps.bits` (casting to `bit(n)` pads with zeros).
const NO_BITS: &str = "B'0'::bit(8192)";

/// A filter resolved against one workspace's cohorts, ready to be run as SQL.
#[derive(Debug, Clone)]
pub struct SegmentQuery {
    pub(super) workspace_id: Uuid,
    /// The expression with `not` pushed onto the leaves.
    root: Node,
    /// Each leaf's internal cohort ids, by leaf index (left to right in the filter).
    leaves: Vec<LeafCohorts>,
    /// Each leaf's summed member counts.
    leaf_members: Vec<i64>,
}

/// A leaf's cohorts as bound: one cohort binds a scalar (`cohort_ref = $n`).
#[derive(Debug, Clone)]
enum LeafCohorts {
    One(i64),
    Many(Vec<i64>),
}

/// The filter in negation normal form: `not` is pushed down onto the leaves (De Morgan),
/// so every leaf says plainly whether it includes or excludes, and nested `and`s are
/// flattened.
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
    let rows = sqlx::query_as!(
        ResolvedCohort,
        r#"SELECT r.partner AS "partner!", r.cohort_id AS "cohort_id!", c.id AS "id?", c.member_count AS "member_count?"
           FROM unnest($2::text[], $3::text[]) AS r(partner, cohort_id)
           LEFT JOIN cohorts c ON c.workspace_id = $1 AND c.partner = r.partner AND c.cohort_id = r.cohort_id"#,
        workspace_id,
        &partners[..] as &[&str],
        &cohort_ids[..] as &[&str],
    )
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

impl SegmentQuery {
    /// When the whole filter is `includes_value` of one cohort: that cohort's member count.
    pub(super) fn single_cohort_members(&self) -> Option<i64> {
        match self.root {
            Node::Leaf { index, includes: true } if matches!(self.leaves[index], LeafCohorts::One(_)) => {
                Some(self.leaf_members[index])
            }
            _ => None,
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

    /// Every cohort the filter names, once each: bind it as `$2`.
    pub(super) fn all_cohorts(&self) -> Vec<i64> {
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

    /// The filter evaluated per block: one row per block with `block` and `bits`, exact at
    /// every bit (a bit is set exactly for a user who matches). `$1` is the workspace, `$2`
    /// every cohort of the filter ([`Self::all_cohorts`]), leaf `k`'s cohorts are
    /// `$(first_leaf_param + k)`, the changes held back, when `held`, follow the leaves
    /// (both bound by [`Self::bind_leaves`]), and `blocks` is an extra condition on
    /// `block`.
    ///
    /// Column `l<k>` is the union of leaf `k`'s cohorts in a block. A bounded filter
    /// ([`Node::is_bounded`]) is false wherever none of its cohorts has a member, so it
    /// reads only their blocks; any other filter is also true for users in none of its
    /// cohorts, so it reads every block of the workspace's users and is taken within them
    /// (`everyone`).
    pub(super) fn filter_blocks_sql(&self, first_leaf_param: usize, blocks: &str, held: bool) -> String {
        let mut columns: Vec<String> = (0..self.leaves.len())
            .map(|k| {
                let cohorts = self.leaf_cohorts("cohort_ref", k, first_leaf_param);
                format!("coalesce(bit_or(bits) FILTER (WHERE {cohorts}), {NO_BITS}) AS l{k}")
            })
            .collect();
        let cohort_bits = Self::cohort_bits_sql(blocks, held.then_some(first_leaf_param + self.leaves.len()));
        let expression = Self::bitmap_expression(&self.root);
        let (source, expression) = if self.root.is_bounded() {
            (cohort_bits, expression)
        } else {
            columns.push(format!("coalesce(bit_or(bits) FILTER (WHERE cohort_ref IS NULL), {NO_BITS}) AS everyone"));
            let source = format!(
                "{cohort_bits}
                 UNION ALL
                 SELECT block, NULL, bits FROM user_bitmaps WHERE workspace_id = $1 AND {blocks}"
            );
            (source, format!("({expression} & everyone)"))
        };
        format!(
            "SELECT block, {expression} AS bits
               FROM (SELECT block, {} FROM ({source}) AS b GROUP BY block) AS leaves",
            columns.join(", ")
        )
    }

    /// The blocks of every cohort of the filter (`$2`) that pass `blocks`, with the
    /// changes the cohorts hold back applied (`store::bit_changes`): one row per (block,
    /// cohort_ref) with its `bits` (a block only held-back changes have set yet comes from
    /// them alone). The changes come as masks per (cohort, block), bound as four arrays
    /// from `$held` on; with none (`None`), the statement is the blocks alone, as it is
    /// prepared and planned when nothing is held back.
    fn cohort_bits_sql(blocks: &str, held: Option<usize>) -> String {
        let Some(held) = held else {
            return format!(
                "SELECT block, cohort_ref, bits FROM cohort_bitmaps
                  WHERE workspace_id = $1 AND cohort_ref = ANY($2::bigint[]) AND {blocks}"
            );
        };
        let (blocks_param, set, clear) = (held + 1, held + 2, held + 3);
        format!(
            "SELECT coalesce(b.block, h.block) AS block, coalesce(b.cohort_ref, h.cohort_ref) AS cohort_ref,
                    CASE WHEN h.block IS NULL THEN b.bits
                         ELSE (coalesce(b.bits, {NO_BITS}) | coalesce(h.set_bits, {NO_BITS}))
                              & ~coalesce(h.clear_bits, {NO_BITS}) END AS bits
               FROM (SELECT block, cohort_ref, bits FROM cohort_bitmaps
                      WHERE workspace_id = $1 AND cohort_ref = ANY($2::bigint[]) AND {blocks}) AS b
               FULL JOIN (SELECT * FROM unnest(${held}::int8[], ${blocks_param}::int8[], ${set}::varbit[], ${clear}::varbit[])
                                     AS h(cohort_ref, block, set_bits, clear_bits)
                           WHERE {blocks}) AS h
                 ON h.cohort_ref = b.cohort_ref AND h.block = b.block"
        )
    }

    /// The count: leaves from `$3`.
    pub(super) fn count_sql(&self, held: bool) -> String {
        let blocks = self.filter_blocks_sql(3, "true", held);
        format!("SELECT coalesce(sum(bit_count(bits)), 0)::int8 FROM ({blocks}) AS blocks")
    }

    /// The blocks from `$3` up to `$4` (excluded) that hold a match, at most `$5` of them,
    /// in order; leaves from `$6`.
    pub(super) fn page_blocks_sql(&self, held: bool) -> String {
        let blocks = self.filter_blocks_sql(6, "block >= $3 AND block < $4", held);
        // varbit_send: the bits as bytes, not 8,192 characters of text.
        format!(
            "SELECT block, varbit_send(bits) FROM ({blocks}) AS blocks WHERE bit_count(bits) > 0 ORDER BY block LIMIT $5"
        )
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

    /// Binds each leaf's cohorts, in leaf order, then the changes held back if there are
    /// any (the statement was built for them), after the parameters already bound.
    pub(super) fn bind_leaves<'q, O>(
        &'q self,
        mut query: QueryAs<'q, sqlx::Postgres, O, PgArguments>,
        held: HeldColumns<'q>,
    ) -> QueryAs<'q, sqlx::Postgres, O, PgArguments> {
        for cohorts in &self.leaves {
            query = match cohorts {
                LeafCohorts::One(cohort_ref) => query.bind(*cohort_ref),
                LeafCohorts::Many(cohort_refs) => query.bind(cohort_refs),
            };
        }
        if held.is_empty() {
            return query;
        }
        query.bind(held.cohort_refs).bind(held.blocks).bind(held.set).bind(held.clear)
    }
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
    fn bounded_filters_read_their_cohorts_and_the_rest_every_user() {
        let cohorts = || vec![LeafCohorts::One(1), LeafCohorts::Many(vec![2, 1]), LeafCohorts::One(3)];
        // A and not (B or C): every match is in A, so only the cohorts' blocks are read.
        let q = query(
            json!({"and": [leaf("includes_value", "A"), {"not": {"or": [leaf("includes_value", "B"), leaf("includes_value", "C")]}}]}),
            cohorts(),
            vec![1, 1, 1],
        );
        assert!(q.root.is_bounded());
        assert_eq!(q.all_cohorts(), vec![1, 2, 3]);
        let sql = q.count_sql(false);
        assert!(sql.starts_with("SELECT coalesce(sum(bit_count(bits)), 0)::int8"), "{sql}");
        assert!(sql.contains("SELECT block, (l0 & (~l1) & (~l2)) AS bits"), "{sql}");
        assert!(
            sql.contains("bit_or(bits) FILTER (WHERE cohort_ref = ANY($4::bigint[])), B'0'::bit(8192)) AS l1"),
            "{sql}"
        );
        assert!(sql.contains("bit_or(bits) FILTER (WHERE cohort_ref = $5), B'0'::bit(8192)) AS l2"), "{sql}");
        assert!(!sql.contains("user_bitmaps"), "{sql}");

        // A or not B: matches users in no cohort at all, taken within every user.
        let q = query(
            json!({"or": [leaf("includes_value", "A"), leaf("does_not_include_value", "B")]}),
            vec![LeafCohorts::One(1), LeafCohorts::One(2)],
            vec![1, 1],
        );
        assert!(!q.root.is_bounded());
        let sql = q.count_sql(false);
        assert!(sql.contains("SELECT block, ((l0 | (~l1)) & everyone) AS bits"), "{sql}");
        assert!(sql.contains("SELECT block, NULL, bits FROM user_bitmaps WHERE workspace_id = $1 AND true"), "{sql}");
        assert!(sql.contains("FILTER (WHERE cohort_ref IS NULL), B'0'::bit(8192)) AS everyone"), "{sql}");

        // (A and not B) or C: bounded; a page reads from `$3`, at most `$4` blocks.
        let q = query(
            json!({"or": [{"and": [leaf("includes_value", "A"), leaf("does_not_include_value", "B")]}, leaf("includes_value", "C")]}),
            cohorts(),
            vec![1, 1, 1],
        );
        let page = q.page_blocks_sql(false);
        assert!(page.contains("SELECT block, ((l0 & (~l1)) | l2) AS bits"), "{page}");
        assert!(
            page.contains("AND block >= $3 AND block < $4") && page.contains("FILTER (WHERE cohort_ref = $6)"),
            "{page}"
        );
        assert!(page.ends_with("WHERE bit_count(bits) > 0 ORDER BY block LIMIT $5"), "{page}");
        // not A: every user's block, A's bits taken away.
        let q = query(json!({"not": leaf("includes_value", "A")}), vec![LeafCohorts::One(1)], vec![1]);
        assert!(q.count_sql(false).contains("SELECT block, ((~l0) & everyone) AS bits"));
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
            // Unbounded filters, and only they, read every user's block.
            assert_eq!(!q.root.is_bounded(), evaluate(&q.root, &|_| false), "for {filter}");
        }
    }
}
