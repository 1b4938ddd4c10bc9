//! `cohort-bench`: measures the service against a raw-PostgreSQL baseline in the same run
//! (issue 5). See BENCHMARKS.md for how to run it and what it reports.
//!
//! It creates a fresh database, starts `cohort-ingest` on it as a child process, then:
//! seeds users through the NDJSON import, drives cohort changes over HTTP with concurrent
//! clients, applies the same changes with hand-written SQL, measures the segment filter
//! API against hand-written SQL, and reads the service's peak memory. The database is
//! dropped at the end, also on failure or Ctrl-C.

mod api;
mod baseline;
mod cpu;
mod data;
mod database;
mod filter;
mod ingest;
mod openloop;
mod report;
mod seed;
mod service;
mod stats;
mod webhooks;

use std::{process::ExitCode, time::Instant};

use anyhow::Context;
use clap::Parser;

use crate::{api::Api, cpu::CpuReading, database::BenchDatabase, report::BenchReport, service::Service};

/// The admin token the child service is started with (it only listens on localhost and
/// lives as long as the run).
const ADMIN_TOKEN: &str = "cohort-bench-admin-token";

/// Command line.
#[derive(Debug, Parser)]
#[command(name = "cohort-bench", about = "Benchmarks cohort-ingest against a raw-PostgreSQL baseline.")]
struct Args {
    /// Users seeded through the NDJSON import.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(10..))]
    users: u64,
    /// Cohort changes (identifiers) sent, 1,000 a request.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    changes: u64,
    /// Concurrent HTTP clients sending the changes.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    concurrency: u64,
    /// PostgreSQL server to create the benchmark's database on.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres", hide_default_value = false)]
    database_url: String,
    /// Also write each ingest request's timing to this CSV file (`request,cohort,remove,
    /// start_ms,latency_ms`), to see when the slow ones happened.
    #[arg(long)]
    latencies_csv: Option<std::path::PathBuf>,
    /// The server of `--database-url` is a Citus coordinator with these workers
    /// (`host:port,host:port`): the benchmark's database is created on every node with
    /// Citus and distributed by the service's migrations.
    #[arg(long, value_delimiter = ',')]
    citus_workers: Vec<String>,
    /// Time only the service in the filter step (the answers are still checked against
    /// SQL): at 10M users the hand-written counts and paging take minutes.
    #[arg(long)]
    skip_sql_timings: bool,
    /// Leave the benchmark's database in place at the end (its name is printed), to
    /// profile statements against the seeded data afterwards. Drop it by hand.
    #[arg(long)]
    keep_database: bool,
    /// Seconds per open-loop step (0: no open loop): requests sent at a fixed rate, each
    /// latency counted from its due time.
    #[arg(long, default_value_t = 0)]
    open_loop_secs: u64,
    /// The open-loop steps' rates, requests/s (default: one step at half the closed
    /// loop's requests/s).
    #[arg(long, value_delimiter = ',')]
    rates: Vec<f64>,
    /// Users sent through Amplitude's webhook, 1,000 a message (0: skip the step).
    #[arg(long, default_value_t = 200_000)]
    amplitude_changes: u64,
    /// Members of the Mixpanel `members` session and of the operator's replace (at most
    /// the identified users; 0: skip both).
    #[arg(long, default_value_t = 1_000_000)]
    replace_members: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(report) => {
            println!("{}", report.table());
            for problem in &report.problems {
                println!("PROBLEM {problem}");
            }
            println!("{}", report.bench_line());
            if report.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(error) => {
            eprintln!("cohort-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Creates the database, runs the steps, and drops the database whatever happened.
async fn run(args: &Args) -> anyhow::Result<BenchReport> {
    let database = BenchDatabase::create(&args.database_url, &args.citus_workers).await?;
    eprintln!("cohort-bench: database {}", database.name());
    let outcome = tokio::select! {
        outcome = run_steps(args, &database) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if args.keep_database {
        eprintln!("cohort-bench: kept database {}", database.name());
        return outcome;
    }
    // The service (killed on drop) is gone by now; FORCE ends any connection left over.
    let dropped = database.drop_now().await;
    let report = outcome?;
    dropped?;
    Ok(report)
}

/// The steps of the issue, in order.
async fn run_steps(args: &Args, database: &BenchDatabase) -> anyhow::Result<BenchReport> {
    let started = Instant::now();
    let client = reqwest::Client::builder().build().context("cannot build the HTTP client")?;
    let service = Service::start(&database.url(), ADMIN_TOKEN, &client).await?;
    let api = Api::new(client, &service.base_url, ADMIN_TOKEN);
    let pool = database.pool().await?;
    let setup = api.set_up().await?;

    progress(&format!("seeding {} users", args.users));
    let before = CpuReading::take(&service)?;
    let mut seed = seed::seed_users(&api, setup.workspace, args.users).await?;
    let spent = before.spent_since(&service)?;
    (seed.service_cpu, seed.postgres_cpu) = (spent.service, spent.postgres);
    // A production database has planner statistics, and its long-lived users are
    // all-visible (index-only scans need that); a bulk load gets both only when autovacuum
    // comes by, which would then run in the middle of the ingest. Not timed.
    sqlx::query("VACUUM ANALYZE").execute(&pool).await?;
    // Nor has it a million users' freshly written gigabyte in the OS page cache: left
    // there, the kernel writes it back ~30 s later (vm.dirty_expire_centisecs), in the
    // middle of the ingest, and every commit's WAL fsync waits behind it for a second or
    // so. A checkpoint writes and syncs it now. Not timed.
    if let Err(error) = sqlx::query("CHECKPOINT").execute(&pool).await {
        progress(&format!("no CHECKPOINT ({error}): the seeding's writes may land in the ingest"));
    }

    let requests = data::change_requests(args.users, args.changes, 1);
    progress(&format!("sending {} changes in {} requests, {} clients", args.changes, requests.len(), args.concurrency));
    ingest::name_cohorts(&api, &setup).await?;
    let before = CpuReading::take(&service)?;
    let written = openloop::writes(&pool).await?;
    let mut ingest =
        ingest::drive_changes(&api, &setup, &requests, args.concurrency as usize, args.latencies_csv.as_deref())
            .await?;
    let spent = before.spent_since(&service)?;
    let wrote = openloop::writes(&pool).await?;
    progress(&format!("the ingest's WAL: {}..{}", written.wal_lsn, wrote.wal_lsn));
    let wal_bytes_per_change = (wrote.wal_bytes - written.wal_bytes) / ingest.changes.max(1) as f64;
    (ingest.service_cpu, ingest.postgres_cpu) = (spent.service, spent.postgres);

    // The baseline's one statement (data-modifying CTEs) is plain PostgreSQL's: on Citus
    // the service's figures stand alone.
    let mut baseline = baseline::BaselineReport::default();
    if args.citus_workers.is_empty() {
        progress("applying the same changes with raw SQL");
        let before = CpuReading::take(&service)?;
        baseline = baseline::apply_changes(&pool, setup.workspace, &requests).await?;
        baseline.postgres_cpu = before.spent_since(&service)?.postgres;
    }
    drop(requests);
    let members = (
        baseline::members_of(&pool, setup.workspace, "cohort-").await?,
        baseline::members_of(&pool, setup.workspace, "baseline-").await?,
    );
    let mut problems = Vec::new();
    let counted = ingest.outcome.added as i64 - ingest.outcome.removed as i64;
    if members.0 != counted {
        problems.push(format!("the service reported {counted} memberships added net, its cohorts hold {}", members.0));
    }

    let mut open_loop = Vec::new();
    if args.open_loop_secs > 0 {
        let capacity = ingest.requests as f64 / ingest.elapsed.as_secs_f64().max(1e-9);
        let rates = if args.rates.is_empty() { vec![(capacity / 2.0).max(1.0).round()] } else { args.rates.clone() };
        progress(&format!("open loop: {rates:?} requests/s, {} s each", args.open_loop_secs));
        let step = std::time::Duration::from_secs(args.open_loop_secs);
        open_loop = openloop::run_steps(&api, &setup, &pool, args.users, &rates, step).await?;
    }

    let mut hooks = webhooks::WebhookReport::default();
    if args.amplitude_changes > 0 {
        progress(&format!("sending {} users to the Amplitude webhook", args.amplitude_changes));
        hooks.amplitude = Some(
            webhooks::drive_amplitude(&api, &setup, args.users, args.amplitude_changes, args.concurrency as usize)
                .await?,
        );
    }
    let replace_members = args.replace_members.min(args.users * 4 / 5);
    if replace_members > 0 {
        progress(&format!("a Mixpanel members session and an operator replace of {replace_members} members"));
        hooks.session = Some(webhooks::members_session(&api, &setup, &pool, replace_members).await?);
        hooks.replace = Some(webhooks::operator_replace(&api, &setup, &pool, replace_members).await?);
    }

    progress("measuring the segment filter API");
    let mut filter = filter::measure_filters(&api, &setup, &pool, args.users, !args.skip_sql_timings).await?;
    problems.append(&mut filter.problems);

    let rss_mb = service.peak_rss_mb()?;
    service.stop().await;
    pool.close().await;
    Ok(BenchReport {
        concurrency: args.concurrency as usize,
        seed,
        ingest,
        baseline,
        members,
        filter,
        hooks,
        open_loop,
        wal_bytes_per_change,
        rss_mb,
        problems,
        total: started.elapsed(),
    })
}

/// A progress line on stderr (stdout is kept for the results).
fn progress(step: &str) {
    eprintln!("cohort-bench: {step}");
}
