//! Application metrics, recorded through the `metrics` facade and rendered in the
//! Prometheus text format at `GET /metrics` (no separate listener: the service's own
//! router serves them, so they share its port, limits and logs).
//!
//! The recorder is process-wide: [`prometheus`] installs it on first use. Label values
//! are bounded by construction (route templates, not raw paths; a fixed set of methods),
//! so a scanner requesting random URLs cannot blow up the series count.

use std::{sync::OnceLock, time::Duration};

use axum::http::{Method, StatusCode};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::domain::{ImportKind, ImportOutcome};

/// Requests served, by method, route template and status.
pub const HTTP_REQUESTS: &str = "cohort_ingest_http_requests_total";
/// Request latency in seconds, from the request's arrival to the end of its response body
/// (its last byte handed to the connection, or the body failing or being dropped when the
/// client leaves), by method, route template and status: a streamed export counts for as
/// long as it streams.
pub const HTTP_DURATION: &str = "cohort_ingest_http_request_duration_seconds";
/// Requests being handled right now (a streamed response until its body ends).
pub const HTTP_IN_FLIGHT: &str = "cohort_ingest_http_requests_in_flight";
/// Partner cohort imports waiting for their turn to run (`IMPORT_CONCURRENCY`).
pub const COHORT_IMPORTS_WAITING: &str = "cohort_ingest_cohort_imports_waiting";
/// Partner cohort imports running in PostgreSQL now.
pub const COHORT_IMPORTS_RUNNING: &str = "cohort_ingest_cohort_imports_running";
/// Identifiers processed by partner imports, by partner and outcome.
pub const IDENTIFIERS: &str = "cohort_ingest_identifiers_total";
/// Write transactions whose COMMIT's outcome could not be known (the connection failed
/// while committing, or no answer came within `COMMIT_TIMEOUT_SECS`); each answered 503.
pub const COMMITS_OUTCOME_UNKNOWN: &str = "cohort_ingest_commits_outcome_unknown_total";
/// Connections the pool holds (in use plus idle).
pub const POOL_SIZE: &str = "cohort_ingest_db_pool_connections";
/// Idle connections in the pool.
pub const POOL_IDLE: &str = "cohort_ingest_db_pool_idle_connections";
/// Connections checked out by requests (size minus idle).
pub const POOL_IN_USE: &str = "cohort_ingest_db_pool_in_use_connections";
/// The pool's configured maximum.
pub const POOL_MAX: &str = "cohort_ingest_db_pool_max_connections";
/// Callers waiting for a connection (above 0 when every connection is in use).
pub const POOL_WAITING: &str = "cohort_ingest_db_pool_waiting";

/// Latency buckets, in seconds: from a cached lookup to a bulk import.
const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// How often histogram samples are folded into buckets when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Counts the members a change to a cohort processed, by partner, protocol and outcome.
pub fn record_import(partner: &str, kind: ImportKind, outcome: ImportOutcome) {
    for (label, count) in [
        ("added", outcome.added),
        ("removed", outcome.removed),
        ("unchanged", outcome.unchanged),
        ("unmatched_unknown", outcome.unmatched.unknown),
        ("unmatched_device_id_of_identified_user", outcome.unmatched.device_id_of_identified_user),
    ] {
        metrics::counter!("cohort_ingest_identifiers_total",
            "partner" => partner.to_owned(), "kind" => kind.as_str(), "outcome" => label)
        .increment(count);
    }
}

/// The process-wide Prometheus recorder, installed on first call. If another recorder
/// was installed first (an embedding program's), ours still renders, just empty.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.to_owned()), LATENCY_BUCKETS)
            .expect("the latency buckets are a non-empty constant")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will not show this service's metrics");
        }
        // Without the exporter's HTTP listener nothing drains histogram samples between
        // scrapes; do it on a plain thread so memory stays flat when nobody scrapes.
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            }
        });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start the metrics upkeep thread");
        }
        handle
    })
}

/// The database pool as sampled at a scrape. Plain numbers, so that this module needs
/// nothing of the store (which records its own metrics here).
#[derive(Debug, Clone, Copy)]
pub struct PoolSample {
    /// Connections open (in use plus idle).
    pub size: u32,
    /// Connections open and not checked out.
    pub idle: u32,
    /// The configured maximum.
    pub max: u32,
    /// Callers waiting for a connection.
    pub waiting: u32,
}

/// Renders every metric in the Prometheus text format, the pool's gauges set from `pool`
/// first (sampled by the caller just before) so they are as of the scrape.
pub fn render(pool: PoolSample) -> String {
    let handle = prometheus();
    metrics::gauge!(POOL_SIZE).set(pool.size);
    metrics::gauge!(POOL_IDLE).set(pool.idle);
    metrics::gauge!(POOL_IN_USE).set(pool.size.saturating_sub(pool.idle));
    metrics::gauge!(POOL_MAX).set(pool.max);
    metrics::gauge!(POOL_WAITING).set(pool.waiting);
    handle.render()
}

/// Records one served request when its response body has ended; `latency` runs from its
/// arrival to that end. `route` is the matched route template (or `unmatched`).
pub fn record_request(method: &Method, route: &str, status: StatusCode, latency: Duration) {
    let labels =
        [("method", method_label(method)), ("route", route.to_owned()), ("status", status.as_str().to_owned())];
    metrics::counter!(HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(HTTP_DURATION, &labels).record(latency.as_secs_f64());
}

/// Something counted in a gauge until dropped, however its work ends (also when a
/// request's future is dropped unfinished because its client went away).
#[derive(Debug)]
pub struct GaugeGuard(&'static str);

impl GaugeGuard {
    /// Counts one more in the gauge `name`.
    pub fn start(name: &'static str) -> Self {
        metrics::gauge!(name).increment(1.0);
        GaugeGuard(name)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        metrics::gauge!(self.0).decrement(1.0);
    }
}

/// The method as a label: the standard ones by name, anything else (HTTP allows any
/// token) as `other`, to keep the label set bounded.
fn method_label(method: &Method) -> String {
    const KNOWN: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    if KNOWN.contains(method) { method.as_str().to_owned() } else { "other".to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(method_label(&Method::from_bytes(b"FROBNICATE").unwrap()), "other");
    }
}
