//! Start-up: prepare the database, then serve until told to stop; and the container's
//! health check.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use anyhow::Context;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

use crate::{
    app,
    config::Config,
    serve,
    state::AppState,
    store::database::{self, Database},
};

/// How long closing the pool may wait for connections still checked out (by requests
/// that outlived the shutdown timeout) before the process exits anyway; their open
/// transactions are then rolled back by PostgreSQL when the connections drop.
const POOL_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long `cohort-ingest healthcheck` waits for `/healthz`.
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// `cohort-ingest migrate`: create the database if needed and apply migrations.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let db = prepare_database(config).await?;
    db.close().await;
    tracing::info!("migrations applied");
    Ok(())
}

/// `cohort-ingest serve`: prepare the database, bind, serve until SIGTERM or SIGINT.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let db = prepare_database(&config).await?;
    let listener = TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen_addr))?;
    let address = listener.local_addr().unwrap_or(config.listen_addr);
    tracing::info!(%address, admin_api = config.admin_token.is_some(), "listening");
    serve_until(listener, AppState::new(db, config), shutdown_signal()).await
}

/// Serves on `listener` until `shutdown` resolves; then stops accepting connections,
/// lets in-flight requests finish for at most the shutdown timeout, and closes the pool.
/// A request cut off by the timeout never commits: each request is one transaction,
/// rolled back when its connection goes away with the process.
pub async fn serve_until(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let db = state.db.clone();
    let drain_timeout = state.config.shutdown_timeout();
    let stopping = CancellationToken::new();
    let signal_seen = stopping.clone();
    let limits = state.config.connection_limits();
    let server = serve::serve(listener, app::router(state), limits, async move {
        shutdown.await;
        tracing::info!("shutdown requested: no new connections, draining in-flight requests");
        signal_seen.cancel();
    });
    let mut server = std::pin::pin!(server);
    tokio::select! {
        result = &mut server => result.context("server error")?,
        () = stopping.cancelled() => match tokio::time::timeout(drain_timeout, &mut server).await {
            Ok(result) => result.context("server error")?,
            Err(_) => tracing::warn!(
                timeout_secs = drain_timeout.as_secs(),
                "in-flight requests did not finish within the shutdown timeout; abandoning them"
            ),
        },
    }
    if tokio::time::timeout(POOL_CLOSE_TIMEOUT, db.close()).await.is_err() {
        tracing::warn!("database connections still in use at exit; PostgreSQL rolls their transactions back");
    }
    tracing::info!("stopped");
    Ok(())
}

/// `cohort-ingest healthcheck`: exits 0 when the local instance answers `GET /healthz`
/// with 200. For container health checks: the runtime image has no curl, and this needs
/// no HTTP client beyond a socket.
pub async fn healthcheck(config: &Config) -> anyhow::Result<()> {
    let address = local_address(config.listen_addr);
    let check = async {
        let mut stream = TcpStream::connect(address).await?;
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        std::io::Result::Ok(head)
    };
    let head = tokio::time::timeout(HEALTHCHECK_TIMEOUT, check)
        .await
        .with_context(|| format!("no answer from {address} within {HEALTHCHECK_TIMEOUT:?}"))?
        .with_context(|| format!("cannot reach {address}"))?;
    anyhow::ensure!(head.ends_with(b" 200"), "unhealthy: {}", String::from_utf8_lossy(&head));
    Ok(())
}

/// The address to reach a server listening on `listen`: a wildcard means this host.
fn local_address(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port()),
        _ => listen,
    }
}

/// Connects (creating the database first if it is missing) and applies migrations. The
/// connecting is bounded by `DB_CONNECT_TIMEOUT_SECS`: a server that accepts and never
/// answers must not hang start-up without a word. (Migrating itself is not: it may wait
/// for another instance's migration lock.)
async fn prepare_database(config: &Config) -> anyhow::Result<Database> {
    let options = database::connect_options(&config.database_url)?;
    database::service_database(&options)?;
    let target = database::describe(&options);
    tracing::info!(database = %target, "connecting to PostgreSQL");
    let timeout = config.db_connect_timeout();
    let bounded = |step: &str| {
        let message = format!("PostgreSQL at {target} did not answer within {} s ({step})", timeout.as_secs());
        move |_| anyhow::anyhow!(message)
    };
    tokio::time::timeout(timeout, database::ensure_database_exists(&options))
        .await
        .map_err(bounded("connecting"))??;
    let db = tokio::time::timeout(timeout, database::connect_pool(options, config.pool_settings()))
        .await
        .map_err(bounded("opening the pool"))??;
    database::migrate(&db).await?;
    Ok(db)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthcheck_reaches_a_wildcard_listener_on_loopback() {
        assert_eq!(local_address("0.0.0.0:8080".parse().unwrap()), "127.0.0.1:8080".parse().unwrap());
        assert_eq!(local_address("[::]:8080".parse().unwrap()), "[::1]:8080".parse().unwrap());
        assert_eq!(local_address("10.0.0.5:80".parse().unwrap()), "10.0.0.5:80".parse().unwrap());
    }
}
