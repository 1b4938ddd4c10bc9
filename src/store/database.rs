//! Connecting to PostgreSQL, creating the database, applying migrations.

use std::{str::FromStr, time::Duration};

use anyhow::Context;
use sqlx::{
    AssertSqlSafe, Connection, PgConnection, PgPool,
    migrate::Migrator,
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
) -> anyhow::Result<PgPool> {
    let host = options.get_host().to_owned();
    let port = options.get_port();
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .connect_with(options)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {host}:{port}"))
}

/// Applies pending migrations.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("cannot apply migrations")?;
    Ok(())
}

/// Whether the database answers a trivial query (readiness).
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
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

    #[test]
    fn only_postgres_urls_are_accepted() {
        assert!(connect_options("mysql://root@localhost/db").is_err());
        assert!(connect_options("postgresql://postgres@localhost/db").is_ok());
        assert!(connect_options("postgres://postgres@localhost/db").is_ok());
    }
}
