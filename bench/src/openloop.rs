//! Step 2b: the ingest open-loop. Requests are sent at a fixed rate, each at its due
//! time whether or not the earlier ones were answered, and each latency counts from the
//! due time (no coordinated omission: a stall delays every request due during it). Per
//! step: latency percentiles, the WAL PostgreSQL wrote and the buffers it wrote out per
//! change, and what the active backends were waiting on, sampled every 100 ms.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use reqwest::header::CONTENT_TYPE;
use sqlx::PgPool;
use tokio::{sync::watch, time::Instant as TokioInstant};

use crate::{
    api::{Api, PARTNER, Setup},
    data::{self, IDENTIFIERS_PER_REQUEST},
    ingest::request_body,
    stats::ms,
};

/// One step's figures.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// Requests per second offered.
    pub rate: f64,
    pub requests: usize,
    /// Requests answered other than 2xx (a 503 when the service's queue is full): a
    /// partner would retry them; their latencies count like the others'.
    pub refused: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
    /// WAL bytes PostgreSQL wrote per membership change sent.
    pub wal_bytes_per_change: f64,
    /// Buffers written out (checkpointer, background writer, backends) per 1,000 changes.
    pub buffers_per_1k: f64,
    /// Of the samples of active backends: wait event (`CPU` for none) → share.
    pub waits: Vec<(String, f64)>,
}

/// PostgreSQL's cumulative write counters.
#[derive(Debug, Clone)]
pub struct Writes {
    pub wal_bytes: f64,
    pub buffers: f64,
    /// Where the WAL ends: two of them bound a step for `pg_waldump --stats`.
    pub wal_lsn: String,
}

/// The counters now.
pub async fn writes(pool: &PgPool) -> anyhow::Result<Writes> {
    let (wal_bytes, buffers, wal_lsn): (f64, f64, String) = sqlx::query_as(
        "SELECT (SELECT wal_bytes::float8 FROM pg_stat_wal),
                (SELECT (buffers_checkpoint + buffers_clean + buffers_backend)::float8 FROM pg_stat_bgwriter),
                pg_current_wal_lsn()::text",
    )
    .fetch_one(pool)
    .await
    .context("reading pg_stat_wal and pg_stat_bgwriter")?;
    Ok(Writes { wal_bytes, buffers, wal_lsn })
}

/// Runs one step per rate (requests/s), `step` long each, with fresh changes (a random
/// stream per step, so adds add).
pub async fn run_steps(
    api: &Api,
    setup: &Setup,
    pool: &PgPool,
    users: u64,
    rates: &[f64],
    step: Duration,
) -> anyhow::Result<Vec<StepReport>> {
    let mut reports = Vec::new();
    for (index, &rate) in rates.iter().enumerate() {
        let count = (rate * step.as_secs_f64()).ceil() as usize;
        let requests = data::change_requests(users, count as u64 * IDENTIFIERS_PER_REQUEST, 100 + index as u64);
        let bodies: Vec<Bytes> = requests.iter().map(|request| request_body(setup, request)).collect();
        drop(requests);
        reports.push(run_step(api, pool, rate, bodies).await?);
    }
    Ok(reports)
}

async fn run_step(api: &Api, pool: &PgPool, rate: f64, bodies: Vec<Bytes>) -> anyhow::Result<StepReport> {
    let url = Arc::new(api.url(&format!("/partners/{PARTNER}/cohorts/users")));
    let requests = bodies.len();
    let (stop_sampling, stopped) = watch::channel(false);
    let sampler = tokio::spawn(sample_waits(pool.clone(), stopped));
    let before = writes(pool).await?;
    let start = TokioInstant::now() + Duration::from_millis(50);
    let started = chrono::Utc::now() + Duration::from_millis(50);
    let mut sent = Vec::with_capacity(requests);
    for (k, body) in bodies.into_iter().enumerate() {
        let due = start + Duration::from_secs_f64(k as f64 / rate);
        tokio::time::sleep_until(due).await;
        let (client, url) = (api.client.clone(), url.clone());
        sent.push(tokio::spawn(async move {
            let response = client.post(url.as_str()).header(CONTENT_TYPE, "application/json").body(body).send().await?;
            let refused = !response.status().is_success();
            // The whole answer, as a partner reads it.
            response.bytes().await?;
            anyhow::Ok((Instant::now() - due.into_std(), refused))
        }));
    }
    let mut latencies = Vec::with_capacity(requests);
    let mut refused = 0;
    for request in sent {
        let (latency, was_refused) = request.await.context("an open-loop request panicked")??;
        latencies.push(latency);
        refused += usize::from(was_refused);
    }
    let after = writes(pool).await?;
    crate::progress(&format!("{rate} requests/s: WAL {}..{}", before.wal_lsn, after.wal_lsn));
    crate::progress(&format!("{rate} requests/s: slowest, by due time: {}", slowest(&latencies, started, rate)));
    let _ = stop_sampling.send(true);
    let samples = sampler.await.context("the wait sampler panicked")??;
    latencies.sort_unstable();
    let at = |percent: f64| {
        let rank = ((percent / 100.0) * latencies.len() as f64).ceil() as usize;
        latencies[rank.clamp(1, latencies.len()) - 1]
    };
    let changes = (requests as f64 * IDENTIFIERS_PER_REQUEST as f64).max(1.0);
    let total: usize = samples.values().sum();
    let mut waits: Vec<(String, f64)> =
        samples.into_iter().map(|(event, n)| (event, n as f64 / total.max(1) as f64)).collect();
    waits.sort_by(|a, b| b.1.total_cmp(&a.1));
    waits.truncate(6);
    Ok(StepReport {
        rate,
        requests,
        refused,
        p50: at(50.0),
        p99: at(99.0),
        p999: at(99.9),
        max: at(100.0),
        wal_bytes_per_change: (after.wal_bytes - before.wal_bytes) / changes,
        buffers_per_1k: (after.buffers - before.buffers) / changes * 1_000.0,
        waits,
    })
}

/// The ten slowest requests as `due time (UTC) latency`, to be found in PostgreSQL's log.
fn slowest(latencies: &[Duration], started: chrono::DateTime<chrono::Utc>, rate: f64) -> String {
    let mut by_latency: Vec<(usize, Duration)> = latencies.iter().copied().enumerate().collect();
    by_latency.sort_unstable_by_key(|&(_, latency)| std::cmp::Reverse(latency));
    by_latency.truncate(10);
    by_latency.sort_unstable();
    let due = |k: usize| started + Duration::from_secs_f64(k as f64 / rate);
    let each: Vec<String> = by_latency
        .iter()
        .map(|&(k, latency)| format!("{} {} ms", due(k).format("%H:%M:%S%.3f"), latency.as_millis()))
        .collect();
    each.join(", ")
}

/// Counts the wait events of the database's active client backends every 100 ms until
/// told to stop.
async fn sample_waits(pool: PgPool, mut stop: watch::Receiver<bool>) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut counts = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return Ok(counts),
        }
        let events: Vec<Option<String>> = sqlx::query_scalar(
            "SELECT wait_event_type || ':' || wait_event FROM pg_stat_activity
              WHERE state = 'active' AND backend_type = 'client backend' AND datname = current_database()
                AND pid <> pg_backend_pid()",
        )
        .fetch_all(&pool)
        .await?;
        for event in events {
            *counts.entry(event.unwrap_or_else(|| "CPU".to_owned())).or_insert(0) += 1;
        }
    }
}

/// The steps as table lines.
pub fn table(steps: &[StepReport]) -> String {
    let mut out = String::from(
        "open loop: rate req/s  requests  refused  p50 / p99 / p99.9 / max ms  WAL bytes per change  buffers written per 1,000 changes  waits\n",
    );
    for s in steps {
        let waits: Vec<String> =
            s.waits.iter().map(|(event, share)| format!("{event} {:.0}%", share * 100.0)).collect();
        out.push_str(&format!(
            "  {:.0}  {}  {}  {:.0} / {:.0} / {:.0} / {:.0}  {:.0}  {:.1}  {}\n",
            s.rate,
            s.requests,
            s.refused,
            ms(s.p50),
            ms(s.p99),
            ms(s.p999),
            ms(s.max),
            s.wal_bytes_per_change,
            s.buffers_per_1k,
            waits.join(", ")
        ));
    }
    out
}
