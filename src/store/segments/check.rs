//! Per-user checks: given users, which of them a filter matches.

use sqlx::AssertSqlSafe;
use uuid::Uuid;

use super::{query::SegmentQuery, read::begin_snapshot};
use crate::domain::UserRef;
use crate::store::{bit_changes::HeldBack, database::Database};

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
    // The changes its cohorts hold back, read in the snapshot the statement reads in, and
    // those of every block bound: the blocks the users fall in are known only once they
    // are resolved, in the statement.
    let mut tx = begin_snapshot(db).await?;
    let held = HeldBack::read(&mut tx, query.workspace_id, &query.all_cohorts()).await?;
    let held = held.all();
    // Each row has exactly one kind of identifier set, so exactly one branch of the
    // lateral UNION ALL can find a user; every branch is a unique-index probe. The filter
    // is then evaluated on the bitmaps of just the blocks those users fall in (1 KiB per
    // cohort of the filter and such block) instead of probing memberships per user.
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
                r.id IS NOT NULL AND COALESCE(get_bit(b.bits, (r.id & 8191)::int) = 1, false) AS matches
           FROM resolved r LEFT JOIN blocks b ON b.block = r.id >> 13
          ORDER BY r.ord",
        query.filter_blocks_sql(
            8,
            "block = ANY(ARRAY(SELECT DISTINCT id >> 13 FROM resolved WHERE id IS NOT NULL))",
            !held.is_empty()
        )
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
    // cached per connection, saves its planning (a few ms) on every check. Joined to the
    // held-back masks even when there were none, it took 19-21 ms instead of 15 in the
    // benchmark, so with none held back the statement leaves them out.
    let results = query.bind_leaves(statement, held).fetch_all(&mut *tx).await?;
    tx.commit().await?;
    Ok(results)
}
