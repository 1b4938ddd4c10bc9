//! Counts: one cohort, `A and not B`, `not A` and `A or not B`, each against SQL's count.

use std::future::Future;

use anyhow::Context;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Comparison, FilterCohorts, Segments, time_repeated};
use crate::{api::count_field, stats::ms};

/// `POST /v1/segments/count` of `filter` against the SQL count `sql`.
pub(super) async fn measure_count<F, Fut>(
    segments: &Segments<'_>,
    filter: &Value,
    repetitions: usize,
    expected: i64,
    problems: &mut Vec<String>,
    sql: F,
) -> anyhow::Result<Option<Comparison>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<i64>>,
{
    let body = json!({ "filter": filter });
    if segments.post_json("count", &body).await?.is_none() {
        return Ok(None);
    }
    let (service_time, answer) = time_repeated(repetitions, || async {
        let (answer, _) = segments.post_json("count", &body).await?.context("count route vanished")?;
        count_field(&answer, "count")
    })
    .await?;
    if answer != expected as u64 {
        problems.push(format!("count of {filter}: service {answer}, SQL {expected}"));
    }
    let sql = if segments.sql_timings { ms(time_repeated(repetitions, sql).await?.0) } else { f64::NAN };
    Ok(Some(Comparison::Millis { service: ms(service_time), sql }))
}

pub(super) async fn sql_count(pool: &PgPool, workspace: Uuid, cohort_ref: i64) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM cohort_memberships WHERE workspace_id = $1 AND cohort_ref = $2")
        .bind(workspace)
        .bind(cohort_ref)
        .fetch_one(pool)
        .await?)
}

pub(super) async fn sql_count_a_not_b(pool: &PgPool, workspace: Uuid, cohorts: &FilterCohorts) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM cohort_memberships a
          WHERE a.workspace_id = $1 AND a.cohort_ref = $2
            AND NOT EXISTS (SELECT 1 FROM cohort_memberships b
                             WHERE b.workspace_id = $1 AND b.cohort_ref = $3 AND b.user_id = a.user_id)",
    )
    .bind(workspace)
    .bind(cohorts.a)
    .bind(cohorts.b)
    .fetch_one(pool)
    .await?)
}

/// `not A`, as a condition on the user `u` (A is `$2`, B is `$3`).
pub(super) const NOT_A: &str = "NOT EXISTS (SELECT 1 FROM cohort_memberships m WHERE m.workspace_id = $1 AND m.cohort_ref = $2 AND m.user_id = u.id)";
/// `A or not B`, likewise.
pub(super) const A_OR_NOT_B: &str =
    "(EXISTS (SELECT 1 FROM cohort_memberships m WHERE m.workspace_id = $1 AND m.cohort_ref = $2 AND m.user_id = u.id)
      OR NOT EXISTS (SELECT 1 FROM cohort_memberships m WHERE m.workspace_id = $1 AND m.cohort_ref = $3 AND m.user_id = u.id))";
/// `A or B`, likewise.
pub(super) const A_OR_B: &str = "EXISTS (SELECT 1 FROM cohort_memberships m WHERE m.workspace_id = $1 AND m.cohort_ref IN ($2, $3) AND m.user_id = u.id)";

/// The users of the workspace matching `condition` (one of the consts above), by hand.
pub(super) async fn sql_count_where(
    pool: &PgPool,
    workspace: Uuid,
    cohorts: &FilterCohorts,
    condition: &str,
) -> anyhow::Result<i64> {
    let sql = format!("SELECT count(*) FROM users u WHERE u.workspace_id = $1 AND {condition}");
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(workspace)
        .bind(cohorts.a)
        .bind(cohorts.b)
        .fetch_one(pool)
        .await?)
}
