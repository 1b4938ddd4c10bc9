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
    /// Citus workers (`host`, `port`) the database is also created on.
    workers: Vec<(String, u16)>,
    name: String,
}

impl BenchDatabase {
    /// Creates an empty database with a unique name on the server `server_url` points to.
    /// With `citus_workers` (`host:port` each), the server is a Citus coordinator: the
    /// database is created on it and on every worker with the `citus` extension, and the
    /// workers are added, as an operator would; the service's migrations distribute it.
    pub async fn create(server_url: &str, citus_workers: &[String]) -> anyhow::Result<BenchDatabase> {
        let server = connect_options(server_url)?;
        let workers = citus_workers
            .iter()
            .map(|node| {
                let (host, port) = node.rsplit_once(':').context("a Citus worker is host:port")?;
                Ok((host.to_owned(), port.parse().context("a Citus worker's port is a number")?))
            })
            .collect::<anyhow::Result<Vec<(String, u16)>>>()?;
        let database = BenchDatabase { server, workers, name: format!("cohort_bench_{}", Uuid::new_v4().simple()) };
        for node in database.nodes() {
            let mut admin = PgConnection::connect_with(&node)
                .await
                .with_context(|| format!("cannot connect to PostgreSQL at {}:{}", node.get_host(), node.get_port()))?;
            sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {}", quote_identifier(&database.name))))
                .execute(&mut admin)
                .await
                .with_context(|| format!("cannot create database {}", database.name))?;
            admin.close().await.ok();
        }
        if !database.workers.is_empty() {
            for node in database.nodes() {
                let mut conn = PgConnection::connect_with(&node.database(&database.name)).await?;
                sqlx::query("CREATE EXTENSION citus").execute(&mut conn).await.context("cannot create citus")?;
                conn.close().await.ok();
            }
            let mut coordinator = PgConnection::connect_with(&database.server.clone().database(&database.name)).await?;
            sqlx::query("SELECT citus_set_coordinator_host($1, $2)")
                .bind(database.server.get_host())
                .bind(i32::from(database.server.get_port()))
                .execute(&mut coordinator)
                .await?;
            for (host, port) in &database.workers {
                sqlx::query("SELECT citus_add_node($1, $2)")
                    .bind(host)
                    .bind(i32::from(*port))
                    .execute(&mut coordinator)
                    .await
                    .with_context(|| format!("cannot add the Citus worker {host}:{port}"))?;
            }
            coordinator.close().await.ok();
        }
        Ok(database)
    }

    /// The maintenance databases of the server and its workers.
    fn nodes(&self) -> Vec<PgConnectOptions> {
        std::iter::once(self.server.clone())
            .chain(self.workers.iter().map(|(host, port)| self.server.clone().host(host).port(*port)))
            .collect()
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

    /// Drops the database (on every node), ending any connection still open on it.
    pub async fn drop_now(self) -> anyhow::Result<()> {
        for node in self.nodes() {
            let mut admin = PgConnection::connect_with(&node).await?;
            let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_identifier(&self.name));
            sqlx::query(AssertSqlSafe(drop))
                .execute(&mut admin)
                .await
                .with_context(|| format!("cannot drop database {}", self.name))?;
            admin.close().await.ok();
        }
        Ok(())
    }
}
