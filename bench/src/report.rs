//! The printed result: a table for people, then one `BENCH …` line for scripts.

use std::time::Duration;

use crate::{
    baseline::BaselineReport,
    filter::{Comparison, FilterReport},
    ingest::IngestReport,
    openloop::{self, StepReport},
    seed::SeedReport,
    stats::ms,
    webhooks::WebhookReport,
};

/// Everything one run measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub concurrency: usize,
    pub seed: SeedReport,
    pub ingest: IngestReport,
    pub baseline: BaselineReport,
    /// Memberships of the service's cohorts and of the baseline's after both runs.
    pub members: (i64, i64),
    pub filter: FilterReport,
    pub hooks: WebhookReport,
    /// The open-loop steps, if any ran.
    pub open_loop: Vec<StepReport>,
    /// WAL bytes PostgreSQL wrote per change during the closed-loop ingest.
    pub wal_bytes_per_change: f64,
    pub rss_mb: f64,
    /// Answers that contradict each other or SQL: the figures are printed, the run fails.
    pub problems: Vec<String>,
    pub total: Duration,
}

impl BenchReport {
    /// Service changes/s ÷ baseline changes/s.
    pub fn ingest_ratio(&self) -> f64 {
        // NaN ("NaN" on the BENCH line) when no baseline ran (on Citus).
        if self.baseline.changes == 0 { f64::NAN } else { self.ingest.per_second() / self.baseline.per_second() }
    }

    /// The table.
    pub fn table(&self) -> String {
        let mut rows: Vec<[String; 4]> = Vec::new();
        let mut row =
            |what: &str, service: String, sql: String, ratio: String| rows.push([what.to_owned(), service, sql, ratio]);
        // A cell of the baseline: "-" where none ran (on Citus).
        let ran_baseline = self.baseline.changes > 0;
        let baseline = |text: String| if ran_baseline { text } else { "-".to_owned() };
        let seed = &self.seed;
        row(
            &format!("seed {} users (NDJSON import)", seed.users),
            rate(seed.per_second(), "users/s"),
            "-".into(),
            "-".into(),
        );
        row(
            "  service / PostgreSQL CPU per 1,000 users",
            format!(
                "{:.1} / {:.1} ms",
                per_thousand(seed.service_cpu, seed.users),
                per_thousand(seed.postgres_cpu, seed.users)
            ),
            "-".into(),
            "-".into(),
        );
        let ingest = &self.ingest;
        row(
            &format!("ingest {} changes, {} requests, C={}", ingest.changes, ingest.requests, self.concurrency),
            rate(ingest.per_second(), "changes/s"),
            baseline(rate(self.baseline.per_second(), "changes/s")),
            baseline(format!("{:.2}", self.ingest_ratio())),
        );
        let latencies = &ingest.latencies;
        row(
            "  request latency p50 / p99 / max",
            format!("{:.1} / {:.1} / {:.1} ms", ms(latencies.p50), ms(latencies.p99), ms(latencies.max)),
            baseline(format!("{} statements", self.baseline.statements)),
            "-".into(),
        );
        let outcome = &ingest.outcome;
        row(
            "  added / removed / unchanged / unmatched",
            format!("{} / {} / {} / {}", outcome.added, outcome.removed, outcome.unchanged, outcome.unmatched),
            baseline(format!("{} / {} / - / -", self.baseline.added, self.baseline.removed)),
            "-".into(),
        );
        row(
            "  service process CPU / wall (SQL: wall)",
            format!("{:.1} s of {:.1} s", ingest.service_cpu.as_secs_f64(), ingest.elapsed.as_secs_f64()),
            baseline(format!("{:.1} s", self.baseline.elapsed.as_secs_f64())),
            "-".into(),
        );
        let (service_pg, raw_pg) = (
            per_thousand(ingest.postgres_cpu, ingest.changes),
            per_thousand(self.baseline.postgres_cpu, self.baseline.changes),
        );
        row(
            "  PostgreSQL CPU per 1,000 changes",
            format!("{service_pg:.1} ms"),
            baseline(format!("{raw_pg:.1} ms")),
            baseline(format!("{:.2}", service_pg / raw_pg.max(1e-9))),
        );
        row("  WAL bytes per change", format!("{:.0}", self.wal_bytes_per_change), "-".into(), "-".into());
        row("  members after", self.members.0.to_string(), baseline(self.members.1.to_string()), "-".into());
        let filter = &self.filter;
        comparison_row(&mut row, &format!("count A ({} members)", filter.members_a), filter.count);
        comparison_row(&mut row, &format!("count A and not B ({})", filter.members_a_not_b), filter.andnot);
        comparison_row(&mut row, "count not A", filter.not);
        comparison_row(&mut row, "count A or not B", filter.ornot);
        if let Some((figure, held_back)) = filter.held_back_not {
            comparison_row(&mut row, &format!("count not A, {held_back} ids of A held back"), Some(figure));
        }
        comparison_row(&mut row, &format!("page through A, limit {}", 10_000), filter.page);
        comparison_row(&mut row, "page through A or B", filter.page_or);
        comparison_row(&mut row, "export A (NDJSON)", filter.export);
        comparison_row(&mut row, "check 1,000 users against A", filter.check);
        if let Some(amplitude) = &self.hooks.amplitude {
            row(
                &format!(
                    "Amplitude webhook: {} users, {} messages, C={}",
                    amplitude.changes, amplitude.messages, self.concurrency
                ),
                rate(amplitude.per_second(), "users/s"),
                "-".into(),
                "-".into(),
            );
            let l = &amplitude.latencies;
            row(
                "  message latency p50 / p99 / max",
                format!("{:.1} / {:.1} / {:.1} ms", ms(l.p50), ms(l.p99), ms(l.max)),
                "-".into(),
                "-".into(),
            );
        }
        if let Some(session) = &self.hooks.session {
            let what = format!("Mixpanel members session, {} members", session.members);
            row(&what, rate(session.per_second(), "members/s"), "-".into(), "-".into());
        }
        if let Some(replace) = &self.hooks.replace {
            let what = format!("operator replace (NDJSON), {} members", replace.members);
            row(&what, rate(replace.per_second(), "members/s"), "-".into(), "-".into());
        }
        row("service peak RSS (VmHWM)", format!("{:.0} MiB", self.rss_mb), "-".into(), "-".into());
        row("whole run", format!("{:.1} s", self.total.as_secs_f64()), "-".into(), "-".into());
        let table = render(&["step", "service", "raw SQL", "ratio"], &rows);
        if self.open_loop.is_empty() { table } else { format!("{table}\n{}", openloop::table(&self.open_loop)) }
    }

    /// The final machine-readable line.
    pub fn bench_line(&self) -> String {
        let filter = &self.filter;
        let service = |figure: Option<Comparison>, decimals: usize| match figure {
            Some(figure) => format!("{:.*}", decimals, figure.service()),
            None => "na".to_owned(),
        };
        format!(
            "BENCH seed_per_s={:.0} ingest_per_s={:.0} ingest_ratio={:.2} p50_ms={:.1} p99_ms={:.1} \
             pg_cpu_per_1k_ms={:.1} count_ms={} andnot_ms={} not_ms={} ornot_ms={} heldback_not_ms={} \
             page_per_s={} pageor_per_s={} export_per_s={} check_ms={} amp_per_s={} amp_p99_ms={} \
             session_members_per_s={} replace_members_per_s={} wal_bytes_per_change={:.0} ol_rate={} ol_p99_ms={} \
             ol_max_ms={} rss_mb={:.0}",
            self.seed.per_second(),
            self.ingest.per_second(),
            self.ingest_ratio(),
            ms(self.ingest.latencies.p50),
            ms(self.ingest.latencies.p99),
            per_thousand(self.ingest.postgres_cpu, self.ingest.changes),
            service(filter.count, 2),
            service(filter.andnot, 1),
            service(filter.not, 1),
            service(filter.ornot, 1),
            service(filter.held_back_not.map(|(figure, _)| figure), 1),
            service(filter.page, 0),
            service(filter.page_or, 0),
            service(filter.export, 0),
            service(filter.check, 1),
            or_na(self.hooks.amplitude.map(|a| a.per_second()), 0),
            or_na(self.hooks.amplitude.map(|a| ms(a.latencies.p99)), 1),
            or_na(self.hooks.session.map(|s| s.per_second()), 0),
            or_na(self.hooks.replace.map(|r| r.per_second()), 0),
            self.wal_bytes_per_change,
            or_na(self.open_loop.first().map(|s| s.rate), 0),
            or_na(self.open_loop.first().map(|s| ms(s.p99)), 1),
            or_na(self.open_loop.first().map(|s| ms(s.max)), 1),
            self.rss_mb,
        )
    }
}

/// A filter figure's row: `na` when the endpoint does not exist yet. The ratio is the
/// service's speed as a fraction of hand-written SQL's.
fn comparison_row(row: &mut impl FnMut(&str, String, String, String), what: &str, figure: Option<Comparison>) {
    match figure {
        Some(figure @ Comparison::Millis { service, sql }) => {
            row(what, format!("{service:.2} ms"), format!("{sql:.2} ms"), format!("{:.2}", figure.ratio()))
        }
        Some(figure @ Comparison::PerSecond { service, sql }) => {
            row(what, rate(service, "users/s"), rate(sql, "users/s"), format!("{:.2}", figure.ratio()))
        }
        None => row(what, "na".into(), "na".into(), "na".into()),
    }
}

/// A figure with `decimals` decimals, `na` for a step skipped.
fn or_na(figure: Option<f64>, decimals: usize) -> String {
    figure.map_or_else(|| "na".to_owned(), |value| format!("{value:.decimals$}"))
}

/// A rate with a unit, without decimals.
fn rate(value: f64, unit: &str) -> String {
    format!("{value:.0} {unit}")
}

/// Left-aligned columns separated by two spaces.
fn render(header: &[&str; 4], rows: &[[String; 4]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 4]| {
        let padded: Vec<String> = cells.iter().zip(widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = vec![line(*header), widths.map(|width| "-".repeat(width)).join("  ")];
    out.extend(rows.iter().map(|row| line([&row[0], &row[1], &row[2], &row[3]])));
    out.join("\n")
}

/// Milliseconds of `cpu` per 1,000 `items`.
fn per_thousand(cpu: Duration, items: u64) -> f64 {
    ms(cpu) / (items.max(1) as f64 / 1_000.0)
}
