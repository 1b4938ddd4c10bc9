//! `cohort-ingest`: parse the command line, set up logging, run.

use std::process::ExitCode;

use clap::Parser;
use cohort_ingest::{
    config::{Cli, Command},
    startup, telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print as clap formats them; a bad flag is one line.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let rendered = e.to_string();
            let first_line = rendered.lines().next().unwrap_or("invalid arguments");
            eprintln!("cohort-ingest: {first_line} (see --help)");
            return ExitCode::from(2);
        }
    };
    telemetry::init(cli.config.log_format, &cli.config.log_filter);

    let outcome = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => startup::serve(cli.config).await,
        Command::Migrate => startup::migrate(&cli.config).await,
        Command::Healthcheck => startup::healthcheck(&cli.config).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        // Logged, so `LOG_FORMAT=json` keeps it one JSON object like every other line.
        Err(e) => {
            tracing::error!(error = %telemetry::error_chain(&e), "cohort-ingest stopped");
            ExitCode::FAILURE
        }
    }
}
