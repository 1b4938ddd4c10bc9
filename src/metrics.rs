//! Application metrics, recorded through the `metrics` facade. The Prometheus exporter
//! (installed by the app) renders them at `GET /metrics`; without it these are no-ops.

/// Outcome counts of one cohort import request, by partner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportOutcome {
    /// Memberships that newly exist.
    pub added: u64,
    /// Memberships that newly ended.
    pub removed: u64,
    /// Users already in the requested state.
    pub unchanged: u64,
    /// Identifiers that matched no eligible user.
    pub unmatched: u64,
}

/// Counts the identifiers a partner import processed, by partner and outcome.
pub fn record_import(partner: &str, outcome: ImportOutcome) {
    for (label, count) in [
        ("added", outcome.added),
        ("removed", outcome.removed),
        ("unchanged", outcome.unchanged),
        ("unmatched", outcome.unmatched),
    ] {
        metrics::counter!("cohort_ingest_identifiers_total", "partner" => partner.to_owned(), "outcome" => label)
            .increment(count);
    }
}
