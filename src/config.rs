//! Settings: every one a command-line flag that can also come from the environment.

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::{
    serve::ConnectionLimits,
    store::database::{DEFAULT_COMMIT_TIMEOUT, PoolSettings},
};

/// Where the service finds PostgreSQL when nothing else is said.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/cohort_ingest";

/// The command line: `cohort-ingest [serve|migrate|healthcheck] [flags]`.
#[derive(Debug, Parser)]
#[command(name = "cohort-ingest", version, about = "Receives partner cohort imports and serves segment filters.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

/// What to do; `serve` when no subcommand is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Create the database if needed, apply migrations, serve HTTP (the default).
    Serve,
    /// Create the database if needed, apply migrations, exit.
    Migrate,
    /// Exit 0 if the instance at LISTEN_ADDR answers `GET /healthz` (container health check).
    Healthcheck,
}

/// Every setting of the service, with its default.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// PostgreSQL connection URL; the database is created if it does not exist.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, global = true, hide_env_values = true)]
    pub database_url: String,

    /// Address the HTTP server listens on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080", global = true)]
    pub listen_addr: SocketAddr,

    /// Bearer token of the operator admin API; unset disables `/admin`.
    #[arg(long, env = "ADMIN_TOKEN", global = true, hide_env_values = true)]
    pub admin_token: Option<Secret>,

    /// Size of the PostgreSQL connection pool.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 16, global = true)]
    pub db_max_connections: u32,

    /// How long a request may wait for a database connection, or a partner import for
    /// its turn, before it answers 503.
    #[arg(long, env = "DB_ACQUIRE_TIMEOUT_SECS", default_value_t = 5, global = true)]
    pub db_acquire_timeout_secs: u64,

    /// Partner cohort imports that run in PostgreSQL at once; the others wait their turn
    /// in arrival order. PostgreSQL's cores plus one, so that one import can wait for
    /// its commit's WAL flush while the others use the cores; more only share the cores
    /// and spread the latencies (BENCHMARKS.md).
    #[arg(long, env = "IMPORT_CONCURRENCY", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub import_concurrency: u32,

    /// Log output: human-readable `pretty`, or `json` (one object a line).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty, global = true)]
    pub log_format: LogFormat,

    /// Log filter, in `tracing` EnvFilter syntax (e.g. `info,cohort_ingest=debug`).
    #[arg(long = "log", env = "RUST_LOG", default_value = "info", global = true)]
    pub log_filter: String,

    /// Largest request body accepted, in bytes (larger: 413).
    #[arg(long, env = "BODY_LIMIT_BYTES", default_value_t = 2 * 1024 * 1024, global = true)]
    pub body_limit_bytes: usize,

    /// Largest NDJSON body accepted by the bulk user import, in bytes.
    #[arg(long, env = "IMPORT_BODY_LIMIT_BYTES", default_value_t = 4 * 1024 * 1024 * 1024, global = true)]
    pub import_body_limit_bytes: usize,

    /// Time a request may take before it answers 503 (the streamed bulk user import and
    /// segment export are exempt).
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value_t = 30, global = true)]
    pub request_timeout_secs: u64,

    /// Requests handled at once; more are shed with 503 and `Retry-After`.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 512, global = true)]
    pub max_in_flight: usize,

    /// Segment exports streaming at once; each holds a pooled connection until its body
    /// ends, so more are refused with 503 and `Retry-After` rather than starve the pool.
    #[arg(long, env = "MAX_CONCURRENT_EXPORTS", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub max_concurrent_exports: u32,

    /// Requests per second allowed per data import key on the partner endpoints; 0 is off.
    #[arg(long, env = "PARTNER_RATE_LIMIT", default_value_t = 0, global = true)]
    pub partner_rate_limit: u32,

    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value_t = 30, global = true)]
    pub shutdown_timeout_secs: u64,

    /// How long a write's COMMIT may take to be confirmed. The request timeout does not
    /// cut off a request whose COMMIT is under way; past this bound the request answers
    /// 503 saying its outcome is unknown (and a retry safe).
    #[arg(long, env = "COMMIT_TIMEOUT_SECS", default_value_t = DEFAULT_COMMIT_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub commit_timeout_secs: u64,

    /// At start-up, how long connecting to PostgreSQL (and its first answer) may take
    /// before the process gives up.
    #[arg(long, env = "DB_CONNECT_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub db_connect_timeout_secs: u64,

    /// How long a client may take to send a request's headers: from the accept of its
    /// connection (for the first request), from the request's first byte (for the next
    /// ones on a kept-alive connection). The connection is closed after that.
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub header_read_timeout_secs: u64,

    /// How long a kept-alive connection may stay open between requests (no request in
    /// flight, no byte of a next one).
    #[arg(long, env = "IDLE_TIMEOUT_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub idle_timeout_secs: u64,

    /// Open client connections at most; further ones wait in the listen backlog until
    /// one closes.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub max_connections: u32,

    /// The NDJSON user import ends (rolled back, its lock released) when its body brings
    /// no byte for this long.
    #[arg(long, env = "IMPORT_STALL_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub import_stall_timeout_secs: u64,

    /// A paged full replace (a Mixpanel `members` session) not completed within this
    /// long is dropped, its pages with it.
    #[arg(long, env = "MEMBER_SESSION_TTL_SECS", default_value_t = 86_400,
          value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub member_session_ttl_secs: u64,

    /// An unmatched identifier not sent again for this many days leaves its cohort's
    /// unmatched list.
    #[arg(long, env = "UNMATCHED_RETENTION_DAYS", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..=3650), global = true)]
    pub unmatched_retention_days: u32,
}

impl Config {
    /// The configuration with every default, as a fresh `cohort-ingest` would run
    /// with no flag and no setting in its environment. The environment is not read: a
    /// `LOG_FORMAT` or `DATABASE_URL` of the caller's would otherwise leak in, or end the
    /// process when invalid.
    pub fn defaults() -> Self {
        let matches = defaults_command().try_get_matches_from(["cohort-ingest"]).expect("the defaults parse");
        Cli::from_arg_matches(&matches).expect("the defaults make a Cli").config
    }

    /// `request_timeout_secs` as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    /// `db_acquire_timeout_secs` as a duration.
    pub fn db_acquire_timeout(&self) -> Duration {
        Duration::from_secs(self.db_acquire_timeout_secs)
    }

    /// `shutdown_timeout_secs` as a duration.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }

    /// `commit_timeout_secs` as a duration.
    pub fn commit_timeout(&self) -> Duration {
        Duration::from_secs(self.commit_timeout_secs)
    }

    /// `unmatched_retention_days` as a duration.
    pub fn unmatched_retention(&self) -> Duration {
        Duration::from_secs(u64::from(self.unmatched_retention_days) * 86_400)
    }

    /// `member_session_ttl_secs` as a duration.
    pub fn member_session_ttl(&self) -> Duration {
        Duration::from_secs(self.member_session_ttl_secs)
    }

    /// `import_stall_timeout_secs` as a duration.
    pub fn import_stall_timeout(&self) -> Duration {
        Duration::from_secs(self.import_stall_timeout_secs)
    }

    /// `idle_timeout_secs` as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// `header_read_timeout_secs` as a duration.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs)
    }

    /// The limits on client connections.
    pub fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: self.max_connections,
            header_read_timeout: self.header_read_timeout(),
            idle_timeout: self.idle_timeout(),
        }
    }

    /// `db_connect_timeout_secs` as a duration.
    pub fn db_connect_timeout(&self) -> Duration {
        Duration::from_secs(self.db_connect_timeout_secs)
    }

    /// The pool's settings.
    pub fn pool_settings(&self) -> PoolSettings {
        PoolSettings {
            max_connections: self.db_max_connections,
            acquire_timeout: self.db_acquire_timeout(),
            commit_timeout: self.commit_timeout(),
        }
    }
}

/// The command line without its environment variables, for [`Config::defaults`].
fn defaults_command() -> clap::Command {
    Cli::command().mut_args(|arg| arg.env(None::<&str>))
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable, for a terminal.
    Pretty,
    /// One JSON object a line, for log collectors.
    Json,
}

/// A secret setting: its `Debug` and `Display` never show the value.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// The secret's text, for the one place that must compare it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for Secret {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        Ok(Secret(s.to_owned()))
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_never_printed() {
        let secret: Secret = "hunter2".parse().unwrap();
        assert!(!format!("{secret:?}").contains("hunter2"));
    }

    #[test]
    fn no_subcommand_means_serve_with_defaults() {
        let cli = Cli::try_parse_from(["cohort-ingest"]).unwrap();
        assert_eq!(cli.command, None);
        assert_eq!(cli.config.listen_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(cli.config.db_max_connections, 16);
    }

    #[test]
    fn the_defaults_read_no_environment_variable() {
        let command = defaults_command();
        let with_env: Vec<_> = command.get_arguments().filter(|arg| arg.get_env().is_some()).collect();
        assert!(with_env.is_empty(), "{with_env:?}");
        // The command line itself still reads them.
        assert!(Cli::command().get_arguments().any(|arg| arg.get_env().is_some()));
    }

    /// Run by [`defaults_ignore_an_invalid_environment`] in a process of its own, whose
    /// environment holds invalid settings.
    #[test]
    #[ignore = "run by defaults_ignore_an_invalid_environment, with invalid settings in its environment"]
    fn defaults_in_an_invalid_environment() {
        let config = Config::defaults();
        assert_eq!(config.log_format, LogFormat::Pretty);
        assert_eq!(config.listen_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(config.db_max_connections, 16);
        assert_eq!(config.database_url, DEFAULT_DATABASE_URL);
        assert!(config.admin_token.is_none());
    }

    #[test]
    fn defaults_ignore_an_invalid_environment() {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "config::tests::defaults_in_an_invalid_environment", "--ignored", "--nocapture"])
            .env("LOG_FORMAT", "text")
            .env("LISTEN_ADDR", "nowhere")
            .env("DB_MAX_CONNECTIONS", "many")
            .env("DATABASE_URL", "postgres://elsewhere/other")
            .env("ADMIN_TOKEN", "from-the-environment")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stdout}\n{stderr}");
        // The filter matched the test: a typo'd name would run nothing and pass.
        assert!(stdout.contains("1 passed"), "{stdout}");
    }

    #[test]
    fn flags_work_after_the_subcommand() {
        let cli = Cli::try_parse_from(["cohort-ingest", "migrate", "--db-max-connections", "3"]).unwrap();
        assert_eq!(cli.command, Some(Command::Migrate));
        assert_eq!(cli.config.db_max_connections, 3);
    }
}
