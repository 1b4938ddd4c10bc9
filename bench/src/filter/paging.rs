//! Paging through a whole filter, and its export, against the same rows read by hand.

use std::{collections::HashSet, time::Instant};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Comparison, Segments};
use crate::{api::string_field, stats::per_second};

/// Page size when paging the whole of a filter.
const PAGE_LIMIT: usize = 10_000;

/// How the hand-written SQL pages: through a cohort's memberships, or through the users
/// in either of two cohorts.
#[derive(Debug, Clone, Copy)]
pub(super) enum SqlPaging {
    Cohort(i64),
    Either(i64, i64),
}

/// Pages through the whole of `filter` with limit 10,000, against keyset paging by hand.
pub(super) async fn measure_paging(
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
pub(super) async fn measure_export(
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
