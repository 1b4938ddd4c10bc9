//! Connecting to PostgreSQL, creating the database, applying migrations, and the
//! [`Database`] every connection of the service is acquired through.

use std::{
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use sqlx::{
    AssertSqlSafe, Connection, PgConnection, PgPool, Postgres, Transaction,
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
    PgConnectOptions::from_str(database_url)
        .map_err(|e| anyhow::anyhow!("DATABASE_URL is not a valid PostgreSQL URL: {}", redact_url_error(&e)))
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
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(()); // No database named: the server's default is used, which exists.
    };
    let host = options.get_host().to_owned();
    let port = options.get_port();
    let mut maintenance = PgConnection::connect_with(&options.clone().database("postgres"))
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {host}:{port}"))?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&name)
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

/// Opens the service's connection pool.
pub async fn connect_pool(
    options: PgConnectOptions,
    max_connections: u32,
    acquire_timeout: Duration,
) -> anyhow::Result<Database> {
    let host = options.get_host().to_owned();
    let port = options.get_port();
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .after_connect(|conn, _| {
            Box::pin(async move {
                // A statement prepared once and run again may get a generic plan, which
                // Citus cannot prune to one shard: on Citus every plan is custom.
                if super::distribution::is_citus(&mut *conn).await? {
                    sqlx::query("SET plan_cache_mode = force_custom_plan").execute(&mut *conn).await?;
                }
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {host}:{port}"))?;
    Ok(Database::new(pool))
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
    sqlx::query("SELECT 1").execute(&mut *conn).await.map(|_| ())
}

/// The service's connection pool. Every connection is acquired through it, so that the
/// callers waiting for one can be counted: sqlx reports only the pool's size and idle
/// connections, and a saturated pool is told by its queue, not by its size.
#[derive(Debug, Clone)]
pub struct Database {
    pool: PgPool,
    /// Callers inside [`Database::acquire`] now.
    waiting: Arc<AtomicUsize>,
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
        Database { pool, waiting: Arc::default() }
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
