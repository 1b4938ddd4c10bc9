//! Connecting to PostgreSQL, creating the database, applying migrations, and the
//! [`Database`] every connection of the service is acquired through and every write
//! transaction is committed through ([`Database::commit`]).

use std::{
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use sqlx::{
    AssertSqlSafe, Connection, PgConnection, PgPool, Postgres, SqlSafeStr, Transaction,
    migrate::Migrator,
    pool::PoolConnection,
    postgres::{PgConnectOptions, PgPoolOptions},
};

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// Parses a connection URL; the error never repeats the URL (it may hold a password).
pub fn connect_options(database_url: &str) -> anyhow::Result<PgConnectOptions> {
    // sqlx accepts any scheme; a `mysql://` or typo'd URL would otherwise fail later with
    // a confusing authentication error.
    if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
        anyhow::bail!("DATABASE_URL must start with postgres:// or postgresql://");
    }
    let options = PgConnectOptions::from_str(database_url)
        .map_err(|e| anyhow::anyhow!("DATABASE_URL is not a valid PostgreSQL URL: {}", redact_url_error(&e)))?;
    // PostgreSQL's NOTICEs (`relation "_sqlx_migrations" already exists, skipping` on
    // every start) are not the service's to report; warnings and errors still come.
    Ok(options.options([("client_min_messages", "warning")]))
}

/// The database the service is to use, from its URL: refused when the URL names none
/// (PostgreSQL would then use the one named like the user, typically the shared
/// `postgres`) or names `postgres` or a template, which other software shares.
pub fn service_database(options: &PgConnectOptions) -> anyhow::Result<&str> {
    match options.get_database() {
        None | Some("") => anyhow::bail!(
            "DATABASE_URL names no database: add one (e.g. postgres://host:5432/cohort_ingest); \
             the service will not use the server's default database"
        ),
        Some(name) if name == "postgres" || name.starts_with("template") => anyhow::bail!(
            "DATABASE_URL names the shared database {name:?}: name a database of the service's own \
             (e.g. cohort_ingest; it is created if missing)"
        ),
        Some(name) => Ok(name),
    }
}

/// `host:port/database` of `options`, for log lines and errors (never the password).
pub fn describe(options: &PgConnectOptions) -> String {
    format!("{}:{}/{}", options.get_host(), options.get_port(), options.get_database().unwrap_or(""))
}

/// sqlx's parse errors may quote the URL; keep only the kind of error.
fn redact_url_error(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Configuration(inner) => {
            let text = inner.to_string();
            if text.contains("://") { "malformed URL".to_owned() } else { text }
        }
        _ => "malformed URL".to_owned(),
    }
}

/// Creates the database named by `options` if it does not exist yet, by connecting to
/// the server's `postgres` maintenance database.
pub async fn ensure_database_exists(options: &PgConnectOptions) -> anyhow::Result<()> {
    let name = service_database(options)?.to_owned();
    let host = options.get_host().to_owned();
    let port = options.get_port();
    let mut maintenance = PgConnection::connect_with(&options.clone().database("postgres"))
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {host}:{port}"))?;
    let exists =
        sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS "exists!""#, name,)
            .fetch_one(&mut maintenance)
            .await?;
    if !exists {
        let create = format!("CREATE DATABASE {}", quote_identifier(&name));
        match sqlx::query(AssertSqlSafe(create)).execute(&mut maintenance).await {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another instance created it between our check and our CREATE: fine.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e).with_context(|| format!("cannot create database {name}")),
        }
    }
    maintenance.close().await.ok();
    Ok(())
}

/// Quotes a PostgreSQL identifier: the one place dynamic SQL names a database.
pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// How the service's pool is sized and bounded.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Most connections open at once.
    pub max_connections: u32,
    /// How long a caller waits for a connection.
    pub acquire_timeout: Duration,
    /// How long a COMMIT's outcome is awaited ([`Database::commit`]); also how long a
    /// connection given back with work still pending on it (a cancelled statement or
    /// COMMIT) may take to become ready before it is closed instead of reused.
    pub commit_timeout: Duration,
}

/// Opens the service's connection pool.
pub async fn connect_pool(options: PgConnectOptions, settings: PoolSettings) -> anyhow::Result<Database> {
    let host = options.get_host().to_owned();
    let port = options.get_port();
    let release_timeout = settings.commit_timeout;
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .after_connect(|conn, _| {
            Box::pin(async move {
                // A statement prepared once and run again may get a generic plan, which
                // Citus cannot prune to one shard: on Citus every plan is custom.
                if super::distribution::is_citus(&mut *conn).await? {
                    sqlx::query!("SET plan_cache_mode = force_custom_plan").execute(&mut *conn).await?;
                }
                Ok(())
            })
        })
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        // A connection comes back with work pending when its caller was cancelled
        // mid-statement (a request past its deadline, a COMMIT past its bound). sqlx
        // then waits, unbounded, for the server to finish before reusing it: a COMMIT
        // stuck on a frozen server or a synchronous standby would hold a pool slot for
        // as long. Bounded here; past the bound the connection is closed (an error from
        // this hook makes sqlx close it hard) and the pool opens a fresh one.
        // `flush` returns at once when nothing is pending: no round trip on the
        // ordinary path (sqlx's own ping after this hook is unchanged).
        .after_release(move |conn, _| {
            Box::pin(async move {
                match tokio::time::timeout(release_timeout, conn.flush()).await {
                    Ok(Ok(())) => Ok(true),
                    Ok(Err(error)) => Err(error),
                    Err(_) => {
                        tracing::warn!(
                            timeout_secs = release_timeout.as_secs_f64(),
                            "a returned connection stayed busy past the commit timeout; closing it"
                        );
                        Err(sqlx::Error::PoolTimedOut)
                    }
                }
            })
        })
        .connect_with(options)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {host}:{port}"))?;
    Ok(Database::new(pool).with_commit_timeout(settings.commit_timeout))
}

/// Applies pending migrations and, on Citus, distributes the tables
/// ([`super::distribution`]).
pub async fn migrate(db: &Database) -> anyhow::Result<()> {
    let mut conn = db.acquire().await.context("cannot connect to apply migrations")?;
    MIGRATOR.run(&mut *conn).await.context("cannot apply migrations")?;
    super::distribution::distribute(&mut conn).await.context("cannot distribute the tables on Citus")?;
    Ok(())
}

/// Whether the database answers a trivial query (readiness).
pub async fn ping(db: &Database) -> Result<(), sqlx::Error> {
    let mut conn = db.acquire().await?;
    sqlx::query_scalar!("SELECT 1").fetch_one(&mut *conn).await.map(|_| ())
}

/// The service's connection pool. Every connection is acquired through it, so that the
/// callers waiting for one can be counted: sqlx reports only the pool's size and idle
/// connections, and a saturated pool is told by its queue, not by its size. Every write
/// transaction is committed through it too ([`Database::commit`]), so that a request's
/// deadline never answers for a COMMIT already sent.
#[derive(Debug, Clone)]
pub struct Database {
    pool: PgPool,
    /// Callers inside [`Database::acquire`] now.
    waiting: Arc<AtomicUsize>,
    /// How long [`Database::commit`] awaits a COMMIT's outcome.
    commit_timeout: Duration,
}

/// How long a COMMIT's outcome is awaited unless configured otherwise
/// (`COMMIT_TIMEOUT_SECS`).
pub const DEFAULT_COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

tokio::task_local! {
    /// The commit watch of the request running on this task, if any (set by the request
    /// deadline around the handler, see [`CommitWatch::watch`]).
    static COMMIT_WATCH: CommitWatch;
}

/// Tells a request's deadline whether its handler has sent a COMMIT. Once it has, the
/// deadline must not cut the handler off: cancelling it would answer "timed out" for a
/// change that may be, or may become, committed. The handler then runs on to the
/// commit's outcome, which [`Database::commit`] bounds by its own timeout.
#[derive(Debug, Clone, Default)]
pub struct CommitWatch(Arc<AtomicBool>);

impl CommitWatch {
    /// Runs `future` with this watch: any [`Database::commit`] it calls marks it.
    pub async fn watch<F: Future>(&self, future: F) -> F::Output {
        COMMIT_WATCH.scope(self.clone(), future).await
    }

    /// Whether a COMMIT has been (or is about to be) sent under this watch.
    pub fn commit_sent(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A COMMIT whose outcome cannot be known: the connection failed while it was under way,
/// or the server gave no answer within the commit timeout. The change may or may not be
/// applied; every write of the service is safe to retry.
#[derive(Debug, thiserror::Error)]
#[error("the outcome of COMMIT is unknown: {0}")]
pub struct CommitOutcomeUnknown(String);

impl CommitOutcomeUnknown {
    /// Whether `error` (from a store function) is a commit of unknown outcome.
    pub fn is(error: &sqlx::Error) -> bool {
        matches!(error, sqlx::Error::Io(io) if io.get_ref().is_some_and(|inner| inner.is::<CommitOutcomeUnknown>()))
    }

    /// As the `sqlx::Error` the store's functions return: an I/O error (what it is: the
    /// exchange with the server broke off), so anything that does not look for it still
    /// treats it as "database unavailable".
    fn into_sqlx(self) -> sqlx::Error {
        sqlx::Error::Io(std::io::Error::other(self))
    }
}

/// Whether a failed COMMIT leaves its outcome unknown: the exchange broke (I/O, TLS,
/// protocol) or the server ended the session while committing (08: connection
/// exceptions; 57P01-03: terminated, crash or startup shutdown; a synchronous-commit
/// wait that is cut short this way has already committed locally). Any other answer from
/// the server (a deferred constraint, a serialization failure) means it rolled back.
fn leaves_outcome_unknown(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            db.code().is_some_and(|code| code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03"))
        }
        _ => false,
    }
}

/// The pool's numbers at one instant, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections open (in use plus idle).
    pub size: u32,
    /// Connections open and not checked out.
    pub idle: u32,
    /// The configured maximum.
    pub max: u32,
    /// Callers waiting for a connection.
    pub waiting: u32,
}

impl Database {
    /// Wraps a pool; acquire through the result only, or the waiting count misses callers.
    pub fn new(pool: PgPool) -> Self {
        Database { pool, waiting: Arc::default(), commit_timeout: DEFAULT_COMMIT_TIMEOUT }
    }

    /// The same pool, awaiting a COMMIT's outcome for at most `timeout`.
    pub fn with_commit_timeout(self, timeout: Duration) -> Self {
        Database { commit_timeout: timeout, ..self }
    }

    /// Commits a write transaction: what every writer calls instead of `tx.commit()`.
    /// It marks the request's [`CommitWatch`] first, so the request deadline lets the
    /// outcome arrive; then awaits it for at most the commit timeout. A COMMIT that
    /// fails with the connection, or gets no answer in time, is a
    /// [`CommitOutcomeUnknown`] (counted in `cohort_ingest_commits_outcome_unknown_total`);
    /// an error the server answered with means the transaction was rolled back, and is
    /// returned as it is.
    pub async fn commit(&self, tx: Transaction<'_, Postgres>) -> sqlx::Result<()> {
        let _ = COMMIT_WATCH.try_with(|watch| watch.0.store(true, Ordering::Release));
        let unknown = |reason: String| {
            metrics::counter!(crate::metrics::COMMITS_OUTCOME_UNKNOWN).increment(1);
            tracing::error!(%reason, "commit outcome unknown");
            CommitOutcomeUnknown(reason).into_sqlx()
        };
        // On timeout the COMMIT future is dropped with its transaction; the connection
        // goes back with the COMMIT pending, and the pool's release bound closes it.
        match tokio::time::timeout(self.commit_timeout, tx.commit()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) if leaves_outcome_unknown(&error) => Err(unknown(error.to_string())),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(unknown(format!("no answer within {} s", self.commit_timeout.as_secs_f64()))),
        }
    }

    /// Checks a connection out of the pool, counted as waiting until it has one (or gives
    /// up: the pool's acquire timeout, or the caller's future dropped).
    pub async fn acquire(&self) -> sqlx::Result<PoolConnection<Postgres>> {
        let _waiting = Waiting::start(&self.waiting);
        self.pool.acquire().await
    }

    /// Checks a connection out (counted as [`Database::acquire`] does) and begins a
    /// transaction on it; the transaction owns the connection and gives it back when it
    /// ends.
    pub async fn begin(&self) -> sqlx::Result<Transaction<'static, Postgres>> {
        let conn = self.acquire().await?;
        // What `Pool::begin` does after its own (uncounted) acquire. `Transaction::begin`
        // is public but hidden from sqlx's docs; sqlx's own `Acquire` impls call it.
        Transaction::begin(conn, None).await
    }

    /// [`Database::begin`] with `begin` as the statement that begins the transaction (an
    /// isolation level, read only), in the same round trip.
    pub async fn begin_with(&self, begin: &'static str) -> sqlx::Result<Transaction<'static, Postgres>> {
        let conn = self.acquire().await?;
        Transaction::begin(conn, Some(begin.into_sql_str())).await
    }

    /// The pool's size, idle connections, maximum and waiting callers, now.
    pub fn stats(&self) -> PoolStats {
        let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        PoolStats {
            size: self.pool.size(),
            idle: clamp(self.pool.num_idle()),
            max: self.pool.options().get_max_connections(),
            waiting: clamp(self.waiting.load(Ordering::Relaxed)),
        }
    }

    /// Closes every connection, waiting for those checked out to come back; callers
    /// waiting for one get `PoolClosed`.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// One caller counted in [`Database`]'s waiting count until dropped, so an acquire that
/// fails or is cancelled (its request timed out, its client left) is uncounted too.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn start(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_identifier("cohort_ingest"), "\"cohort_ingest\"");
        assert_eq!(quote_identifier("we\"ird"), "\"we\"\"ird\"");
    }

    #[test]
    fn bad_url_error_does_not_repeat_the_url() {
        let err = connect_options("postgres://user:s3cret@host:notaport/db").unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[tokio::test]
    async fn callers_are_counted_as_waiting_until_they_give_up() {
        // Nothing listens on port 1: the pool keeps retrying the connection until its
        // acquire timeout, so its callers wait as long as the test wants.
        let options = connect_options("postgres://nobody@127.0.0.1:1/none").unwrap();
        let pool =
            PgPoolOptions::new().max_connections(1).acquire_timeout(Duration::from_secs(60)).connect_lazy_with(options);
        let db = Database::new(pool);
        let acquiring = tokio::spawn({
            let db = db.clone();
            async move { db.acquire().await.map(drop) }
        });
        let beginning = tokio::spawn({
            let db = db.clone();
            async move { db.begin().await.map(drop) }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while db.stats().waiting < 2 {
            assert!(tokio::time::Instant::now() < deadline, "waiting: {}", db.stats().waiting);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Cancelled (as when a request times out or its client leaves): no longer waiting.
        acquiring.abort();
        beginning.abort();
        assert!(acquiring.await.unwrap_err().is_cancelled());
        assert!(beginning.await.unwrap_err().is_cancelled());
        assert_eq!(db.stats().waiting, 0);
        // Timed out: no longer waiting either.
        let gave_up = tokio::time::timeout(Duration::from_millis(20), db.acquire()).await;
        assert!(gave_up.is_err());
        assert_eq!(db.stats(), PoolStats { size: 0, idle: 0, max: 1, waiting: 0 });
    }

    #[test]
    fn only_postgres_urls_are_accepted() {
        assert!(connect_options("mysql://root@localhost/db").is_err());
        assert!(connect_options("postgresql://postgres@localhost/db").is_ok());
        assert!(connect_options("postgres://postgres@localhost/db").is_ok());
    }
}
