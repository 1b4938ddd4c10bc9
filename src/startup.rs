//! Start-up: prepare the database, then serve until told to stop.

use anyhow::Context;
use tokio::net::TcpListener;

use crate::{
    app::{self, AppState},
    config::Config,
    store::database,
};

/// `cohort-ingest migrate`: create the database if needed and apply migrations.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let pool = prepare_database(config).await?;
    pool.close().await;
    tracing::info!("migrations applied");
    Ok(())
}

/// `cohort-ingest serve`: prepare the database, bind, serve until SIGTERM or SIGINT,
/// then let in-flight requests finish (bounded by the shutdown timeout).
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let pool = prepare_database(&config).await?;
    let listener = TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen_addr))?;
    tracing::info!(address = %config.listen_addr, admin_api = config.admin_token.is_some(), "listening");

    let shutdown_timeout = config.shutdown_timeout();
    let state = AppState::new(pool.clone(), config);
    let server = axum::serve(listener, app::router(state)).with_graceful_shutdown(shutdown_signal());
    // The graceful drain starts with the signal; bound it so a stuck client cannot hold
    // the process forever.
    let drained = async { server.await.context("server error") };
    tokio::select! {
        result = drained => result?,
        () = async { shutdown_signal().await; tokio::time::sleep(shutdown_timeout).await } => {
            tracing::warn!("in-flight requests did not finish within the shutdown timeout");
        }
    }
    pool.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Connects (creating the database first if it is missing) and applies migrations.
async fn prepare_database(config: &Config) -> anyhow::Result<sqlx::PgPool> {
    let options = database::connect_options(&config.database_url)?;
    database::ensure_database_exists(&options).await?;
    let pool = database::connect_pool(options, config.db_max_connections, config.db_acquire_timeout()).await?;
    database::migrate(&pool).await?;
    Ok(pool)
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received, draining in-flight requests");
}
