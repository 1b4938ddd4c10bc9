//! Step 2: drive cohort changes through `POST /partners/{partner}/cohorts/users` with
//! concurrent clients.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};

use crate::{
    api::{Api, PARTNER, Setup, count_field, success_json},
    data::{ALIAS_LABEL, COHORTS, ChangeRequest, Identifier},
    stats::{Latencies, ms, per_second},
};

/// The cohort_id of service cohort `index`.
pub fn cohort_id(index: usize) -> String {
    format!("cohort-{index}")
}

/// What driving the changes took, and what the service said it did.
#[derive(Debug, Clone, Copy, Default)]
pub struct IngestReport {
    pub changes: u64,
    pub requests: usize,
    pub elapsed: Duration,
    pub latencies: Latencies,
    pub outcome: ImportCounts,
    /// CPU time the service process (not PostgreSQL) used meanwhile.
    pub service_cpu: Duration,
    /// CPU time PostgreSQL's processes used meanwhile.
    pub postgres_cpu: Duration,
}

impl IngestReport {
    /// Changes (identifiers sent) per second.
    pub fn per_second(&self) -> f64 {
        per_second(self.changes, self.elapsed)
    }
}

/// The counts the cohort users endpoint answers, summed over requests.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImportCounts {
    pub added: u64,
    pub removed: u64,
    pub unchanged: u64,
    pub unmatched: u64,
}

impl ImportCounts {
    fn add(&mut self, other: ImportCounts) {
        self.added += other.added;
        self.removed += other.removed;
        self.unchanged += other.unchanged;
        self.unmatched += other.unmatched;
    }
}

/// Names the benchmark's cohorts through `POST /partners/{partner}/cohorts`, as a partner
/// does before its first import.
pub async fn name_cohorts(api: &Api, setup: &Setup) -> anyhow::Result<()> {
    let path = format!("/partners/{PARTNER}/cohorts");
    for index in 0..COHORTS {
        let body = json!({
            "partner_api_key": setup.partner_api_key,
            "client_secret": setup.client_secret,
            "cohort_id": cohort_id(index),
            "name": format!("Bench cohort {index}"),
            "created_at": chrono::Utc::now().to_rfc3339(),
        });
        let response =
            api.client.post(api.url(&path)).json(&body).send().await.with_context(|| format!("POST {path}"))?;
        success_json(response, &path).await?;
    }
    Ok(())
}

/// Sends every request with `concurrency` clients taking the next request in order, and
/// measures each one (written to `latencies_csv` too, when given). The bodies are
/// serialized before the clock starts, so the clients' own work competes as little as
/// possible with the service for the 2 cores.
pub async fn drive_changes(
    api: &Api,
    setup: &Setup,
    requests: &[ChangeRequest],
    concurrency: usize,
    latencies_csv: Option<&Path>,
) -> anyhow::Result<IngestReport> {
    let bodies: Arc<Vec<Bytes>> = Arc::new(requests.iter().map(|request| request_body(setup, request)).collect());
    let changes = requests.iter().map(|request| request.identifiers.len() as u64).sum();
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));

    let started = Instant::now();
    let clients: Vec<_> = (0..concurrency.max(1))
        .map(|_| tokio::spawn(run_client(api.clone(), bodies.clone(), next.clone(), failed.clone(), started)))
        .collect();
    let mut timings = Vec::with_capacity(requests.len());
    let mut outcome = ImportCounts::default();
    let mut first_error = None;
    for client in clients {
        match client.await.context("a benchmark client panicked")? {
            Ok(done) => {
                timings.extend(done.timings);
                outcome.add(done.outcome);
            }
            Err(error) => first_error = first_error.or(Some(error)),
        }
    }
    let elapsed = started.elapsed();
    if let Some(error) = first_error {
        return Err(error);
    }
    if let Some(path) = latencies_csv {
        write_timings(path, requests, &mut timings).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(IngestReport {
        changes,
        requests: requests.len(),
        elapsed,
        latencies: Latencies::of(timings.iter().map(|timing| timing.latency).collect()),
        outcome,
        service_cpu: Duration::ZERO,
        postgres_cpu: Duration::ZERO,
    })
}

/// What one client measured.
struct ClientRun {
    timings: Vec<RequestTiming>,
    outcome: ImportCounts,
}

/// When one request was sent, and how long its answer took.
struct RequestTiming {
    /// Its index in the requests.
    request: usize,
    /// Since the first request was sent.
    start: Duration,
    latency: Duration,
}

/// Writes the timings as CSV, in the order the requests were sent.
fn write_timings(path: &Path, requests: &[ChangeRequest], timings: &mut [RequestTiming]) -> std::io::Result<()> {
    timings.sort_unstable_by_key(|timing| timing.request);
    let mut csv = String::from("request,cohort,remove,start_ms,latency_ms\n");
    for timing in timings.iter() {
        let request = &requests[timing.request];
        let (start, latency) = (ms(timing.start), ms(timing.latency));
        csv.push_str(&format!("{},{},{},{start:.1},{latency:.1}\n", timing.request, request.cohort, request.remove));
    }
    std::fs::write(path, csv)
}

/// One client: sends the next unsent body until none is left or another client failed.
async fn run_client(
    api: Api,
    bodies: Arc<Vec<Bytes>>,
    next: Arc<AtomicUsize>,
    failed: Arc<AtomicBool>,
    epoch: Instant,
) -> anyhow::Result<ClientRun> {
    let path = format!("/partners/{PARTNER}/cohorts/users");
    let url = api.url(&path);
    let mut run = ClientRun { timings: Vec::new(), outcome: ImportCounts::default() };
    while !failed.load(Ordering::Relaxed) {
        let index = next.fetch_add(1, Ordering::Relaxed);
        let Some(body) = bodies.get(index) else { break };
        let started = Instant::now();
        let result = async {
            let response =
                api.client.post(&url).header(CONTENT_TYPE, "application/json").body(body.clone()).send().await?;
            success_json(response, &format!("POST {path} (request {index})")).await
        }
        .await;
        run.timings.push(RequestTiming { request: index, start: started - epoch, latency: started.elapsed() });
        match result.and_then(|answer| import_counts(&answer)) {
            Ok(counts) => run.outcome.add(counts),
            Err(error) => {
                failed.store(true, Ordering::Relaxed);
                return Err(error);
            }
        }
    }
    Ok(run)
}

/// The counts of one response.
fn import_counts(answer: &Value) -> anyhow::Result<ImportCounts> {
    Ok(ImportCounts {
        added: count_field(answer, "added")?,
        removed: count_field(answer, "removed")?,
        unchanged: count_field(answer, "unchanged")?,
        unmatched: count_field(answer, "unmatched")?,
    })
}

/// The JSON body of one request: a single change object carrying all its identifiers.
pub fn request_body(setup: &Setup, request: &ChangeRequest) -> Bytes {
    let mut user_ids = Vec::new();
    let mut aliases = Vec::new();
    let mut device_ids = Vec::new();
    for identifier in &request.identifiers {
        match identifier {
            Identifier::UserId(id) => user_ids.push(id.as_str()),
            Identifier::Alias(name) => aliases.push(json!({ "alias_name": name, "alias_label": ALIAS_LABEL })),
            Identifier::DeviceId(id) => device_ids.push(id.as_str()),
        }
    }
    let body = json!({
        "partner_api_key": setup.partner_api_key,
        "client_secret": setup.client_secret,
        "cohort_id": cohort_id(request.cohort),
        "cohort_changes": [{
            "user_ids": user_ids,
            "aliases": aliases,
            "device_ids": device_ids,
            "should_remove": request.remove,
        }],
    });
    Bytes::from(serde_json::to_vec(&body).expect("a JSON value serializes"))
}
