//! The benchmark's own database: created fresh, dropped at the end (also on failure).

use anyhow::Context;
use cohort_ingest::store::database::{connect_options, quote_identifier};
use sqlx::{
    AssertSqlSafe, ConnectOptions, Connection, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use uuid::Uuid;

/// A database created for one benchmark run.
pub struct BenchDatabase {
    server: PgConnectOptions,
    name: String,
}

impl BenchDatabase {
    /// Creates an empty database with a unique name on the server `server_url` points to.
    pub async fn create(server_url: &str) -> anyhow::Result<BenchDatabase> {
        let server = connect_options(server_url)?;
        let name = format!("cohort_bench_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect_with(&server)
            .await
            .with_context(|| format!("cannot connect to PostgreSQL at {}:{}", server.get_host(), server.get_port()))?;
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {}", quote_identifier(&name))))
            .execute(&mut admin)
            .await
            .with_context(|| format!("cannot create database {name}"))?;
        admin.close().await.ok();
        Ok(BenchDatabase { server, name })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its URL, for the service's `DATABASE_URL`.
    pub fn url(&self) -> String {
        self.server.clone().database(&self.name).to_url_lossy().to_string()
    }

    /// A small pool for the baseline and the filter queries written by hand.
    pub async fn pool(&self) -> anyhow::Result<PgPool> {
        PgPoolOptions::new()
            .max_connections(2)
            .connect_with(self.server.clone().database(&self.name))
            .await
            .context("cannot connect to the benchmark database")
    }

    /// Drops the database, ending any connection still open on it.
    pub async fn drop_now(self) -> anyhow::Result<()> {
        let mut admin = PgConnection::connect_with(&self.server).await?;
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_identifier(&self.name));
        sqlx::query(AssertSqlSafe(drop))
            .execute(&mut admin)
            .await
            .with_context(|| format!("cannot drop database {}", self.name))?;
        admin.close().await.ok();
        Ok(())
    }
}
