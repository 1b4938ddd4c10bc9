//! Step 4: the segment filter API against the same queries written by hand in SQL.
//!
//! Two cohorts of N/2 members each (issue 4's setting: A = users with an even internal
//! id, B = users whose id / 2 is even, so a quarter of the users are in A and not in B)
//! are written straight into the tables: the figures are about reading, and loading a
//! million memberships through the import would double the run time.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    api::{Api, PARTNER, Setup, count_field, string_field, success_json},
    baseline::insert_cohort,
    data::{ALIAS_LABEL, Profile, Rng, alias_name, device_id, external_id, pick_user},
    stats::{median, ms, per_second},
};

/// Timed repetitions of the quick queries (their median is reported).
const QUICK_REPETITIONS: usize = 30;
/// Timed repetitions of the `A and not B` count, which reads two large cohorts.
const ANDNOT_REPETITIONS: usize = 7;
/// Page size when paging the whole of A.
const PAGE_LIMIT: usize = 10_000;
/// References per check request.
const CHECK_REFERENCES: usize = 1_000;

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
    let references = check_references(pool, workspace, users).await?;
    report.check = measure_check(&segments, &a, &references, pool, workspace, cohorts.a, &mut report.problems).await?;
    Ok(report)
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

/// `POST /v1/segments/count` of `filter` against the SQL count `sql`.
async fn measure_count<F, Fut>(
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

async fn sql_count(pool: &PgPool, workspace: Uuid, cohort_ref: i64) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM cohort_memberships WHERE workspace_id = $1 AND cohort_ref = $2")
        .bind(workspace)
        .bind(cohort_ref)
        .fetch_one(pool)
        .await?)
}

async fn sql_count_a_not_b(pool: &PgPool, workspace: Uuid, cohorts: &FilterCohorts) -> anyhow::Result<i64> {
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
const NOT_A: &str = "NOT EXISTS (SELECT 1 FROM cohort_memberships m WHERE m.workspace_id = $1 AND m.cohort_ref = $2 AND m.user_id = u.id)";
/// `A or not B`, likewise.
const A_OR_NOT_B: &str =
    "(EXISTS (SELECT 1 FROM cohort_memberships m WHERE m.workspace_id = $1 AND m.cohort_ref = $2 AND m.user_id = u.id)
      OR NOT EXISTS (SELECT 1 FROM cohort_memberships m WHERE m.workspace_id = $1 AND m.cohort_ref = $3 AND m.user_id = u.id))";
/// `A or B`, likewise.
const A_OR_B: &str = "EXISTS (SELECT 1 FROM cohort_memberships m WHERE m.workspace_id = $1 AND m.cohort_ref IN ($2, $3) AND m.user_id = u.id)";

/// The users of the workspace matching `condition` (one of the consts above), by hand.
async fn sql_count_where(
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

/// How the hand-written SQL pages: through a cohort's memberships, or through the users
/// in either of two cohorts.
#[derive(Debug, Clone, Copy)]
enum SqlPaging {
    Cohort(i64),
    Either(i64, i64),
}

/// Pages through the whole of `filter` with limit 10,000, against keyset paging by hand.
async fn measure_paging(
    segments: &Segments<'_>,
    filter: &Value,
    pool: &PgPool,
    workspace: Uuid,
    sql_paging: SqlPaging,
    expected: i64,
    problems: &mut Vec<String>,
) -> anyhow::Result<Option<Comparison>> {
    let started = Instant::now();
    let mut seen: HashSet<String> = HashSet::with_capacity(expected.max(0) as usize);
    let mut duplicates = 0u64;
    let mut cursor = Value::Null;
    loop {
        let body = json!({ "filter": filter, "limit": PAGE_LIMIT, "cursor": cursor });
        let Some((answer, _)) = segments.post_json("users", &body).await? else { return Ok(None) };
        let page = answer["users"].as_array().context("segment users response has no users array")?;
        for user in page {
            if !seen.insert(string_field(user, "braze_id")?) {
                duplicates += 1;
            }
        }
        cursor = answer["next_cursor"].clone();
        if cursor.is_null() {
            break;
        }
    }
    let service_elapsed = started.elapsed();
    if seen.len() as i64 != expected || duplicates > 0 {
        problems
            .push(format!("paging: {} distinct users and {duplicates} duplicates, SQL count {expected}", seen.len()));
    }

    let sql = if segments.sql_timings {
        let started = Instant::now();
        let sql_users = sql_page_through(pool, workspace, sql_paging).await?;
        per_second(sql_users, started.elapsed())
    } else {
        f64::NAN
    };
    Ok(Some(Comparison::PerSecond { service: per_second(seen.len() as u64, service_elapsed), sql }))
}

/// Keyset paging by hand, 10,000 a page; how many users there were.
async fn sql_page_through(pool: &PgPool, workspace: Uuid, paging: SqlPaging) -> anyhow::Result<u64> {
    let mut after = 0i64;
    let mut total = 0u64;
    loop {
        let query = match paging {
            SqlPaging::Cohort(a) => sqlx::query_as(
                "SELECT m.user_id, u.braze_id, u.external_id
                   FROM cohort_memberships m JOIN users u ON u.workspace_id = m.workspace_id AND u.id = m.user_id
                  WHERE m.workspace_id = $1 AND m.cohort_ref = $2 AND m.user_id > $3
                  ORDER BY m.user_id LIMIT $4",
            )
            .bind(workspace)
            .bind(a),
            SqlPaging::Either(a, _) => sqlx::query_as(
                "SELECT u.id, u.braze_id, u.external_id FROM users u
                  WHERE u.workspace_id = $1 AND u.id > $3
                    AND EXISTS (SELECT 1 FROM cohort_memberships m
                                 WHERE m.workspace_id = $1 AND m.cohort_ref IN ($2, $5) AND m.user_id = u.id)
                  ORDER BY u.id LIMIT $4",
            )
            .bind(workspace)
            .bind(a),
        };
        let query = query.bind(after).bind(PAGE_LIMIT as i64);
        let query = match paging {
            SqlPaging::Cohort(_) => query,
            SqlPaging::Either(_, b) => query.bind(b),
        };
        let page: Vec<(i64, Uuid, Option<String>)> = query.fetch_all(pool).await?;
        total += page.len() as u64;
        match page.last() {
            Some((last, _, _)) if page.len() == PAGE_LIMIT => after = *last,
            _ => return Ok(total),
        }
    }
}

/// Streams the export of `filter`, against streaming the same rows by hand.
async fn measure_export(
    segments: &Segments<'_>,
    filter: &Value,
    pool: &PgPool,
    workspace: Uuid,
    cohort_ref: i64,
    expected: i64,
    problems: &mut Vec<String>,
) -> anyhow::Result<Option<Comparison>> {
    let started = Instant::now();
    let Some(response) = segments.post("export", &json!({ "filter": filter })).await? else { return Ok(None) };
    let mut lines = 0u64;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        lines += chunk.context("reading the export")?.iter().filter(|&&byte| byte == b'\n').count() as u64;
    }
    let service_elapsed = started.elapsed();
    if lines as i64 != expected {
        problems.push(format!("export: {lines} lines, SQL count {expected}"));
    }

    if !segments.sql_timings {
        return Ok(Some(Comparison::PerSecond { service: per_second(lines, service_elapsed), sql: f64::NAN }));
    }
    let started = Instant::now();
    let sql_rows = sqlx::query_as::<_, (Uuid, Option<String>)>(
        "SELECT u.braze_id, u.external_id
           FROM cohort_memberships m JOIN users u ON u.workspace_id = m.workspace_id AND u.id = m.user_id
          WHERE m.workspace_id = $1 AND m.cohort_ref = $2",
    )
    .bind(workspace)
    .bind(cohort_ref)
    .fetch(pool)
    .try_fold(0u64, |rows, _| async move { Ok(rows + 1) })
    .await?;
    let sql_elapsed = started.elapsed();
    Ok(Some(Comparison::PerSecond {
        service: per_second(lines, service_elapsed),
        sql: per_second(sql_rows, sql_elapsed),
    }))
}

/// One user reference of a check request.
#[derive(Debug, Clone)]
enum Reference {
    ExternalId(String),
    BrazeId(Uuid),
    DeviceId(String),
    Alias(String),
}

impl Reference {
    fn to_json(&self) -> Value {
        match self {
            Reference::ExternalId(id) => json!({ "external_id": id }),
            Reference::BrazeId(id) => json!({ "braze_id": id }),
            Reference::DeviceId(id) => json!({ "device_id": id }),
            Reference::Alias(name) => json!({ "alias": { "alias_name": name, "alias_label": ALIAS_LABEL } }),
        }
    }
}

/// 1,000 references: 55% external_id, 20% alias, 10% device_id, 10% braze_id (looked up
/// in the database), 5% unknown.
async fn check_references(pool: &PgPool, workspace: Uuid, users: u64) -> anyhow::Result<Vec<Reference>> {
    let mut rng = Rng::new(2);
    let mut references = Vec::with_capacity(CHECK_REFERENCES);
    let mut by_braze_id = Vec::new();
    for _ in 0..CHECK_REFERENCES {
        let reference = match rng.below(100) {
            0..55 => Reference::ExternalId(external_id(pick_user(&mut rng, users, |p| p != Profile::Anonymous))),
            55..75 => Reference::Alias(alias_name(pick_user(&mut rng, users, |p| {
                p == Profile::Identified { with_alias: true }
            }))),
            75..85 => Reference::DeviceId(device_id(pick_user(&mut rng, users, |p| p == Profile::Anonymous))),
            85..95 => {
                by_braze_id.push(external_id(pick_user(&mut rng, users, |p| p != Profile::Anonymous)));
                Reference::BrazeId(Uuid::nil()) // Filled in below.
            }
            _ => Reference::ExternalId(format!("unknown-{}", rng.next_u64())),
        };
        references.push(reference);
    }
    let braze_ids: HashMap<String, Uuid> =
        sqlx::query_as("SELECT external_id, braze_id FROM users WHERE workspace_id = $1 AND external_id = ANY($2)")
            .bind(workspace)
            .bind(&by_braze_id)
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
    let mut wanted = by_braze_id.iter();
    for reference in &mut references {
        if let Reference::BrazeId(id) = reference {
            let external_id = wanted.next().context("one external_id per braze_id reference")?;
            *id = *braze_ids.get(external_id).with_context(|| format!("seeded user {external_id} not found"))?;
        }
    }
    Ok(references)
}

/// `POST /v1/segments/check` of 1,000 references against resolving and testing them by hand.
async fn measure_check(
    segments: &Segments<'_>,
    filter: &Value,
    references: &[Reference],
    pool: &PgPool,
    workspace: Uuid,
    cohort_ref: i64,
    problems: &mut Vec<String>,
) -> anyhow::Result<Option<Comparison>> {
    let body = json!({ "filter": filter, "users": references.iter().map(Reference::to_json).collect::<Vec<_>>() });
    if segments.post_json("check", &body).await?.is_none() {
        return Ok(None);
    }
    let (service_time, answer) = time_repeated(QUICK_REPETITIONS, || async {
        let (answer, _) = segments.post_json("check", &body).await?.context("check route vanished")?;
        Ok(answer)
    })
    .await?;
    let service_matches: Vec<Option<bool>> = answer["results"]
        .as_array()
        .context("check response has no results array")?
        .iter()
        .map(|result| result["matches"].as_bool())
        .collect();

    let (sql_time, sql_matches) =
        time_repeated(QUICK_REPETITIONS, || sql_check(pool, workspace, cohort_ref, references)).await?;
    let differing = service_matches.iter().zip(&sql_matches).filter(|(service, sql)| **service != Some(**sql)).count();
    if service_matches.len() != sql_matches.len() || differing > 0 {
        problems.push(format!(
            "check: {} results, {differing} differ from SQL's {} answers",
            service_matches.len(),
            sql_matches.len()
        ));
    }
    Ok(Some(Comparison::Millis { service: ms(service_time), sql: ms(sql_time) }))
}

/// Resolves each reference and tests membership by hand, in the order given.
async fn sql_check(
    pool: &PgPool,
    workspace: Uuid,
    cohort_ref: i64,
    references: &[Reference],
) -> anyhow::Result<Vec<bool>> {
    let mut external_ids = Vec::new();
    let mut braze_ids = Vec::new();
    let mut device_ids = Vec::new();
    let mut alias_names = Vec::new();
    for reference in references {
        let (mut external_id, mut braze_id, mut device_id, mut alias) = (None, None, None, None);
        match reference {
            Reference::ExternalId(id) => external_id = Some(id.as_str()),
            Reference::BrazeId(id) => braze_id = Some(*id),
            Reference::DeviceId(id) => device_id = Some(id.as_str()),
            Reference::Alias(name) => alias = Some(name.as_str()),
        }
        external_ids.push(external_id);
        braze_ids.push(braze_id);
        device_ids.push(device_id);
        alias_names.push(alias);
    }
    // Like the API, it answers each reference's braze_id along with the verdict.
    let rows: Vec<(Option<Uuid>, bool)> = sqlx::query_as(
        "SELECT u.braze_id,
                EXISTS (SELECT 1 FROM cohort_memberships m
                         WHERE m.workspace_id = $1 AND m.cohort_ref = $2 AND m.user_id = u.id)
           FROM unnest($3::text[], $4::uuid[], $5::text[], $6::text[]) WITH ORDINALITY
                AS r (external_id, braze_id, device_id, alias_name, ord)
           LEFT JOIN LATERAL (
                SELECT id, braze_id FROM users WHERE workspace_id = $1 AND external_id = r.external_id
                UNION ALL
                SELECT id, braze_id FROM users WHERE workspace_id = $1 AND braze_id = r.braze_id
                UNION ALL
                SELECT x.id, x.braze_id FROM user_device_ids d JOIN users x ON x.workspace_id = $1 AND x.id = d.user_id
                 WHERE d.workspace_id = $1 AND d.device_id = r.device_id
                UNION ALL
                SELECT x.id, x.braze_id FROM user_aliases a JOIN users x ON x.workspace_id = $1 AND x.id = a.user_id
                 WHERE a.workspace_id = $1 AND a.alias_label = $7 AND a.alias_name = r.alias_name
                LIMIT 1) u ON true
          ORDER BY r.ord",
    )
    .bind(workspace)
    .bind(cohort_ref)
    .bind(&external_ids)
    .bind(&braze_ids)
    .bind(&device_ids)
    .bind(&alias_names)
    .bind(ALIAS_LABEL)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(_, matches)| matches).collect())
}
