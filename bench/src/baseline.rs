//! Step 3: the raw-PostgreSQL baseline. The same changes, in the same order, applied
//! straight to the same tables with hand-written set-based SQL: what a skilled engineer
//! would write with no service in between. They go to a separate set of cohorts
//! (`baseline-0` …), so the two runs never touch each other's memberships.

use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    api::PARTNER,
    data::{ALIAS_LABEL, COHORTS, ChangeRequest, Identifier},
    stats::per_second,
};

/// Changes applied by one statement.
const CHANGES_PER_STATEMENT: usize = 100_000;

/// Resolves each identifier by a join (user_ids by external_id, aliases by label and name,
/// device_ids only to anonymous users), keeps the last change of each (cohort, user) in
/// the batch, inserts or deletes the memberships and flips their bits in the cohorts'
/// bitmaps (the memberships that changed are exactly the bits to flip): one statement, no
/// locks beyond the rows it writes.
const APPLY_CHANGES: &str = r"
WITH input AS (
    SELECT *
      FROM unnest($2::bigint[], $3::bigint[], $4::bool[], $5::text[], $6::text[], $7::text[], $8::text[])
        AS t (seq, cohort_ref, remove, external_id, alias_label, alias_name, device_id)
), resolved AS (
    SELECT i.seq, i.cohort_ref, i.remove, u.id AS user_id
      FROM input i
      JOIN users u ON u.workspace_id = $1 AND u.external_id = i.external_id
    UNION ALL
    SELECT i.seq, i.cohort_ref, i.remove, a.user_id
      FROM input i
      JOIN user_aliases a
        ON a.workspace_id = $1 AND a.alias_label = i.alias_label AND a.alias_name = i.alias_name
    UNION ALL
    SELECT i.seq, i.cohort_ref, i.remove, d.user_id
      FROM input i
      JOIN user_device_ids d ON d.workspace_id = $1 AND d.device_id = i.device_id
      JOIN users u ON u.workspace_id = $1 AND u.id = d.user_id AND u.external_id IS NULL
), last_change AS (
    SELECT DISTINCT ON (cohort_ref, user_id) cohort_ref, user_id, remove
      FROM resolved
     ORDER BY cohort_ref, user_id, seq DESC
), added AS (
    INSERT INTO cohort_memberships (workspace_id, cohort_ref, user_id, added_at)
    SELECT $1, cohort_ref, user_id, now() FROM last_change WHERE NOT remove
    ON CONFLICT DO NOTHING
    RETURNING cohort_ref, user_id
), removed AS (
    DELETE FROM cohort_memberships m
     USING last_change c
     WHERE c.remove AND m.workspace_id = $1 AND m.cohort_ref = c.cohort_ref AND m.user_id = c.user_id
    RETURNING m.cohort_ref, m.user_id
), flipped AS (
    INSERT INTO cohort_bitmaps AS b (workspace_id, cohort_ref, block, bits)
    SELECT $1, cohort_ref, user_id >> 13, bit_or(B'1'::bit(8192) >> (user_id & 8191)::int)
      FROM (SELECT * FROM added UNION ALL SELECT * FROM removed) AS changed
     GROUP BY cohort_ref, user_id >> 13
    ON CONFLICT (workspace_id, cohort_ref, block) DO UPDATE SET bits = b.bits # excluded.bits
)
SELECT (SELECT count(*) FROM added), (SELECT count(*) FROM removed)";

/// What the baseline took and did.
#[derive(Debug, Clone, Copy, Default)]
pub struct BaselineReport {
    pub changes: u64,
    pub statements: usize,
    pub elapsed: Duration,
    pub added: u64,
    pub removed: u64,
    /// CPU time PostgreSQL's processes used meanwhile (set by the caller).
    pub postgres_cpu: Duration,
}

impl BaselineReport {
    /// Changes per second.
    pub fn per_second(&self) -> f64 {
        per_second(self.changes, self.elapsed)
    }
}

/// The column arrays of one statement's changes.
#[derive(Default)]
struct Batch {
    seq: Vec<i64>,
    cohort_ref: Vec<i64>,
    remove: Vec<bool>,
    external_id: Vec<Option<String>>,
    alias_label: Vec<Option<String>>,
    alias_name: Vec<Option<String>>,
    device_id: Vec<Option<String>>,
}

impl Batch {
    fn push(&mut self, seq: i64, cohort_ref: i64, remove: bool, identifier: &Identifier) {
        self.seq.push(seq);
        self.cohort_ref.push(cohort_ref);
        self.remove.push(remove);
        let (mut external_id, mut alias, mut device_id) = (None, None, None);
        match identifier {
            Identifier::UserId(id) => external_id = Some(id.clone()),
            Identifier::Alias(name) => alias = Some(name.clone()),
            Identifier::DeviceId(id) => device_id = Some(id.clone()),
        }
        self.alias_label.push(alias.as_ref().map(|_| ALIAS_LABEL.to_owned()));
        self.external_id.push(external_id);
        self.alias_name.push(alias);
        self.device_id.push(device_id);
    }

    fn len(&self) -> usize {
        self.seq.len()
    }
}

/// Creates the baseline's cohorts and applies `requests` to them, 100,000 changes per
/// statement, each statement in its own transaction. Only the statements are timed.
pub async fn apply_changes(
    pool: &PgPool,
    workspace: Uuid,
    requests: &[ChangeRequest],
) -> anyhow::Result<BaselineReport> {
    let cohort_refs = create_baseline_cohorts(pool, workspace).await?;
    let batches = batches(requests, &cohort_refs);
    let mut report = BaselineReport { statements: batches.len(), ..BaselineReport::default() };
    for batch in batches {
        report.changes += batch.len() as u64;
        let started = Instant::now();
        let (added, removed): (i64, i64) = sqlx::query_as(APPLY_CHANGES)
            .bind(workspace)
            .bind(batch.seq)
            .bind(batch.cohort_ref)
            .bind(batch.remove)
            .bind(batch.external_id)
            .bind(batch.alias_label)
            .bind(batch.alias_name)
            .bind(batch.device_id)
            .fetch_one(pool)
            .await
            .context("baseline statement")?;
        report.elapsed += started.elapsed();
        report.added += added as u64;
        report.removed += removed as u64;
    }
    Ok(report)
}

/// The changes of `requests` in order, cut into statements of 100,000.
fn batches(requests: &[ChangeRequest], cohort_refs: &[i64]) -> Vec<Batch> {
    let mut batches = vec![Batch::default()];
    let mut seq = 0;
    for request in requests {
        for identifier in &request.identifiers {
            if batches.last().is_some_and(|batch| batch.len() >= CHANGES_PER_STATEMENT) {
                batches.push(Batch::default());
            }
            if let Some(batch) = batches.last_mut() {
                batch.push(seq, cohort_refs[request.cohort], request.remove, identifier);
            }
            seq += 1;
        }
    }
    batches.retain(|batch| batch.len() > 0);
    batches
}

/// The baseline's cohorts (`baseline-0` …), created directly; their internal ids.
async fn create_baseline_cohorts(pool: &PgPool, workspace: Uuid) -> anyhow::Result<Vec<i64>> {
    let mut refs = Vec::with_capacity(COHORTS);
    for index in 0..COHORTS {
        refs.push(insert_cohort(pool, workspace, &format!("baseline-{index}")).await?);
    }
    Ok(refs)
}

/// Inserts a cohort of the benchmark's partner named by its id (its internal id drawn from
/// the workspace's counter, as the service does); its internal id.
pub async fn insert_cohort(pool: &PgPool, workspace: Uuid, cohort_id: &str) -> anyhow::Result<i64> {
    let id: i64 = sqlx::query_scalar(
        "UPDATE cohort_id_counters SET next_cohort_id = next_cohort_id + 1 WHERE workspace_id = $1
         RETURNING next_cohort_id - 1",
    )
    .bind(workspace)
    .fetch_one(pool)
    .await?;
    sqlx::query(
        "INSERT INTO cohorts (workspace_id, id, partner, cohort_id, name, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $4, now(), now())",
    )
    .bind(workspace)
    .bind(id)
    .bind(PARTNER)
    .bind(cohort_id)
    .execute(pool)
    .await
    .with_context(|| format!("cannot create cohort {cohort_id}"))?;
    Ok(id)
}

/// Members of the cohorts whose cohort_id starts with `prefix`, counted from the
/// memberships themselves.
pub async fn members_of(pool: &PgPool, workspace: Uuid, prefix: &str) -> anyhow::Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM cohort_memberships m JOIN cohorts c ON c.workspace_id = m.workspace_id AND c.id = m.cohort_ref
          WHERE m.workspace_id = $1 AND c.partner = $2 AND starts_with(c.cohort_id, $3)",
    )
    .bind(workspace)
    .bind(PARTNER)
    .bind(prefix)
    .fetch_one(pool)
    .await
    .context("cannot count memberships")
}
