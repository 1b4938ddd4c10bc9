//! Step 4: the segment filter API against the same queries written by hand in SQL.
//!
//! Two cohorts of N/2 members each (A = users with an even internal id, B = users whose
//! id / 2 is even, so a quarter of the users are in A and not in B) are written straight
//! into the tables: the figures are about reading, and loading a million memberships
//! through the import would double the run time. One file a figure family: counts,
//! paging and export, the check.

mod check;
mod counts;
mod paging;

use std::{
    future::Future,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use self::{
    check::{check_references, measure_check},
    counts::{A_OR_B, A_OR_NOT_B, NOT_A, measure_count, sql_count, sql_count_a_not_b, sql_count_where},
    paging::{SqlPaging, measure_export, measure_paging},
};
use crate::{
    api::{Api, PARTNER, Setup, success_json},
    baseline::insert_cohort,
    stats::median,
};

/// Timed repetitions of the quick queries (their median is reported).
const QUICK_REPETITIONS: usize = 30;
/// Timed repetitions of the `A and not B` count, which reads two large cohorts.
const ANDNOT_REPETITIONS: usize = 7;

/// One figure, measured through the service and by hand in SQL.
#[derive(Debug, Clone, Copy)]
pub enum Comparison {
    /// Median latency in milliseconds (lower is better).
    Millis { service: f64, sql: f64 },
    /// Users per second (higher is better).
    PerSecond { service: f64, sql: f64 },
}

impl Comparison {
    /// The service's speed as a fraction of hand-written SQL's (above 1: faster).
    pub fn ratio(&self) -> f64 {
        match *self {
            Comparison::Millis { service, sql } => sql / service.max(1e-9),
            // NaN when the SQL was not timed (`--skip-sql-timings`).
            Comparison::PerSecond { service, sql } => {
                if sql.is_nan() {
                    f64::NAN
                } else {
                    service / sql.max(1e-9)
                }
            }
        }
    }

    /// The service's figure.
    pub fn service(&self) -> f64 {
        match *self {
            Comparison::Millis { service, .. } | Comparison::PerSecond { service, .. } => service,
        }
    }
}

/// The filter figures; `None` where the endpoint does not exist yet.
#[derive(Debug, Clone, Default)]
pub struct FilterReport {
    pub members_a: i64,
    pub members_a_not_b: i64,
    pub count: Option<Comparison>,
    pub andnot: Option<Comparison>,
    /// `not A`: every user but A's members.
    pub not: Option<Comparison>,
    /// `A or not B`.
    pub ornot: Option<Comparison>,
    pub page: Option<Comparison>,
    /// Paging `A or B`.
    pub page_or: Option<Comparison>,
    /// `not A` where A is the ingest's cohort with the most bit changes held back (the
    /// service folds them into each read), and how many ids it holds back.
    pub held_back_not: Option<(Comparison, i64)>,
    pub export: Option<Comparison>,
    pub check: Option<Comparison>,
    /// Answers that differ from SQL's.
    pub problems: Vec<String>,
}

/// The two filter cohorts.
struct FilterCohorts {
    a: i64,
    b: i64,
}

/// Creates the filter cohorts and measures every filter figure.
pub async fn measure_filters(
    api: &Api,
    setup: &Setup,
    pool: &PgPool,
    users: u64,
    sql_timings: bool,
) -> anyhow::Result<FilterReport> {
    let workspace = setup.workspace;
    let cohorts = create_filter_cohorts(pool, workspace).await?;
    let segments = Segments { api, key: &setup.rest_api_key, sql_timings };
    let a = leaf("includes_value", "filter-a");
    let a_not_b = json!({ "and": [a.clone(), leaf("does_not_include_value", "filter-b")] });

    let mut report = FilterReport::default();
    report.members_a = sql_count(pool, workspace, cohorts.a).await?;
    report.members_a_not_b = sql_count_a_not_b(pool, workspace, &cohorts).await?;

    report.count = measure_count(&segments, &a, QUICK_REPETITIONS, report.members_a, &mut report.problems, || {
        sql_count(pool, workspace, cohorts.a)
    })
    .await?;
    report.andnot =
        measure_count(&segments, &a_not_b, ANDNOT_REPETITIONS, report.members_a_not_b, &mut report.problems, || {
            sql_count_a_not_b(pool, workspace, &cohorts)
        })
        .await?;
    let not_a = json!({ "not": a.clone() });
    let expected = sql_count_where(pool, workspace, &cohorts, NOT_A).await?;
    report.not = measure_count(&segments, &not_a, ANDNOT_REPETITIONS, expected, &mut report.problems, || {
        sql_count_where(pool, workspace, &cohorts, NOT_A)
    })
    .await?;
    let a_or_not_b = json!({ "or": [a.clone(), leaf("does_not_include_value", "filter-b")] });
    let expected = sql_count_where(pool, workspace, &cohorts, A_OR_NOT_B).await?;
    report.ornot = measure_count(&segments, &a_or_not_b, ANDNOT_REPETITIONS, expected, &mut report.problems, || {
        sql_count_where(pool, workspace, &cohorts, A_OR_NOT_B)
    })
    .await?;
    report.page = measure_paging(
        &segments,
        &a,
        pool,
        workspace,
        SqlPaging::Cohort(cohorts.a),
        report.members_a,
        &mut report.problems,
    )
    .await?;
    let a_or_b = json!({ "or": [a.clone(), leaf("includes_value", "filter-b")] });
    let expected = sql_count_where(pool, workspace, &cohorts, A_OR_B).await?;
    report.page_or = measure_paging(
        &segments,
        &a_or_b,
        pool,
        workspace,
        SqlPaging::Either(cohorts.a, cohorts.b),
        expected,
        &mut report.problems,
    )
    .await?;
    report.export =
        measure_export(&segments, &a, pool, workspace, cohorts.a, report.members_a, &mut report.problems).await?;
    report.held_back_not = measure_held_back_not(&segments, pool, workspace, &mut report.problems).await?;
    let references = check_references(pool, workspace, users).await?;
    report.check = measure_check(&segments, &a, &references, pool, workspace, cohorts.a, &mut report.problems).await?;
    Ok(report)
}

/// `not A` on the ingest's cohort holding the most bit changes back, against SQL's count.
async fn measure_held_back_not(
    segments: &Segments<'_>,
    pool: &PgPool,
    workspace: Uuid,
    problems: &mut Vec<String>,
) -> anyhow::Result<Option<(Comparison, i64)>> {
    let held: Option<(i64, String, i32)> = sqlx::query_as(
        "SELECT id, cohort_id, bits_pending FROM cohorts WHERE workspace_id = $1 AND cohort_id LIKE 'cohort-%'
          ORDER BY bits_pending DESC LIMIT 1",
    )
    .bind(workspace)
    .fetch_optional(pool)
    .await?;
    let Some((cohort_ref, cohort_id, held_back)) = held else { return Ok(None) };
    let cohorts = FilterCohorts { a: cohort_ref, b: cohort_ref };
    let not_a = json!({ "not": leaf("includes_value", &cohort_id) });
    let expected = sql_count_where(pool, workspace, &cohorts, NOT_A).await?;
    let figure = measure_count(segments, &not_a, ANDNOT_REPETITIONS, expected, problems, || {
        sql_count_where(pool, workspace, &cohorts, NOT_A)
    })
    .await?;
    Ok(figure.map(|figure| (figure, i64::from(held_back))))
}

/// `{"cohort": {...}}` on one of the benchmark's cohorts.
fn leaf(op: &str, cohort_id: &str) -> Value {
    json!({ "cohort": { "partner": PARTNER, "op": op, "cohort_ids": [cohort_id] } })
}

/// Writes cohorts `filter-a` (even user ids) and `filter-b` (ids whose half is even) with
/// their bitmaps and exact member counts, as imports would have, then refreshes the
/// planner's statistics.
async fn create_filter_cohorts(pool: &PgPool, workspace: Uuid) -> anyhow::Result<FilterCohorts> {
    let a = insert_cohort(pool, workspace, "filter-a").await?;
    let b = insert_cohort(pool, workspace, "filter-b").await?;
    for (cohort_ref, condition) in [(a, "id % 2 = 0"), (b, "(id / 2) % 2 = 0")] {
        // Statement by statement, each within the workspace: on Citus too.
        let statements = [
            format!(
                "INSERT INTO cohort_memberships (workspace_id, cohort_ref, user_id, added_at)
                 SELECT $1, $2, id, now() FROM users WHERE workspace_id = $1 AND {condition}"
            ),
            "INSERT INTO cohort_bitmaps (workspace_id, cohort_ref, block, bits)
             SELECT $1, $2, user_id >> 13, bit_or(B'1'::bit(8192) >> (user_id & 8191)::int)
               FROM cohort_memberships WHERE workspace_id = $1 AND cohort_ref = $2 GROUP BY user_id >> 13"
                .to_owned(),
            "UPDATE cohorts SET member_count =
                 (SELECT count(*) FROM cohort_memberships WHERE workspace_id = $1 AND cohort_ref = $2)
              WHERE workspace_id = $1 AND id = $2"
                .to_owned(),
        ];
        for statement in statements {
            sqlx::query(sqlx::AssertSqlSafe(statement)).bind(workspace).bind(cohort_ref).execute(pool).await?;
        }
    }
    sqlx::query("ANALYZE").execute(pool).await?;
    Ok(FilterCohorts { a, b })
}

/// The segment endpoints, called with the benchmark's REST API key.
struct Segments<'a> {
    api: &'a Api,
    key: &'a str,
    /// Whether the hand-written SQL of counts, paging and export is timed too (NaN
    /// otherwise); their answers are checked against SQL either way.
    sql_timings: bool,
}

impl Segments<'_> {
    /// POSTs `body` to `/v1/segments/{endpoint}`; `None` when the route does not exist
    /// yet (the service's fallback 404), an error on any other failure.
    async fn post(&self, endpoint: &str, body: &Value) -> anyhow::Result<Option<reqwest::Response>> {
        let path = format!("/v1/segments/{endpoint}");
        let response = self
            .api
            .client
            .post(self.api.url(&path))
            .bearer_auth(self.key)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = response.status();
        if status.is_success() {
            return Ok(Some(response));
        }
        let text = response.text().await.unwrap_or_default();
        if status == StatusCode::NOT_FOUND && text.contains("no route for") {
            return Ok(None);
        }
        bail!("POST {path}: {status}: {}", text.chars().take(300).collect::<String>());
    }

    /// POSTs and reads the JSON answer, timing the whole exchange.
    async fn post_json(&self, endpoint: &str, body: &Value) -> anyhow::Result<Option<(Value, Duration)>> {
        let started = Instant::now();
        let Some(response) = self.post(endpoint, body).await? else { return Ok(None) };
        let answer = success_json(response, &format!("POST /v1/segments/{endpoint}")).await?;
        Ok(Some((answer, started.elapsed())))
    }
}

/// Runs `query` once untimed, then `repetitions` times; its median time and last answer.
async fn time_repeated<T, F, Fut>(repetitions: usize, mut query: F) -> anyhow::Result<(Duration, T)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut answer = query().await?;
    let mut samples = Vec::with_capacity(repetitions);
    for _ in 0..repetitions {
        let started = Instant::now();
        answer = query().await?;
        samples.push(started.elapsed());
    }
    Ok((median(samples), answer))
}
