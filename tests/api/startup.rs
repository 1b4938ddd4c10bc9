//! Start-up against a PostgreSQL that is not what it should be: silent, refusing, or a
//! URL that names no database of the service's own. And readiness when it is gone.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use cohort_ingest::{
    app,
    config::Config,
    serve,
    state::AppState,
    store::database::{self, Database},
};
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use tokio::net::TcpListener;

use crate::helpers::TestDatabase;

/// A TCP server that accepts connections and never says a word (holding them open).
async fn silent_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    address
}

/// Runs `cohort-ingest migrate` with `database_url` and JSON logs; its exit status, its
/// stderr lines, and how long it took.
async fn migrate(database_url: &str) -> (std::process::ExitStatus, Vec<String>, Duration) {
    let database_url = database_url.to_owned();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let output = Command::new(env!("CARGO_BIN_EXE_cohort-ingest"))
            .arg("migrate")
            .env("DATABASE_URL", database_url)
            .env("DB_CONNECT_TIMEOUT_SECS", "1")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let lines = String::from_utf8_lossy(&output.stderr).lines().map(str::to_owned).collect();
        (output.status, lines, started.elapsed())
    })
    .await
    .unwrap()
}

fn json_lines(lines: &[String]) -> Vec<Value> {
    lines.iter().map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"))).collect()
}

#[tokio::test]
async fn start_up_against_a_silent_server_says_where_it_connects_and_gives_up_in_one_line() {
    let silent = silent_server().await;
    let (status, lines, took) = migrate(&format!("postgres://postgres@{silent}/cohort_ingest_x")).await;
    assert!(!status.success());
    assert!(took < Duration::from_secs(5), "{took:?}");
    let events = json_lines(&lines);
    assert_eq!(events[0]["message"], "connecting to PostgreSQL", "{lines:?}");
    assert_eq!(events[0]["database"], format!("{silent}/cohort_ingest_x"));
    let last = events.last().unwrap();
    assert_eq!(last["level"], "ERROR");
    assert_eq!(
        last["error"],
        format!("PostgreSQL at {silent}/cohort_ingest_x did not answer within 1 s (connecting)"),
        "{last}"
    );
}

#[tokio::test]
async fn a_refused_connection_is_reported_once_with_its_cause_not_twice() {
    let (status, lines, _) = migrate("postgres://postgres@127.0.0.1:1/cohort_ingest_x").await;
    assert!(!status.success());
    let error = json_lines(&lines).last().unwrap()["error"].as_str().unwrap().to_owned();
    assert!(error.starts_with("cannot connect to PostgreSQL at 127.0.0.1:1"), "{error}");
    assert_eq!(error.matches("Connection refused").count(), 1, "{error}");
}

#[tokio::test]
async fn a_url_naming_no_database_of_its_own_is_refused_before_connecting() {
    let server =
        std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let base = server.rsplit_once('/').map_or(server.as_str(), |(base, _)| base).to_owned();
    for (url, expected) in [
        (format!("{base}/"), "DATABASE_URL names no database"),
        (base.clone(), "DATABASE_URL names no database"),
        (format!("{base}/postgres"), "DATABASE_URL names the shared database \"postgres\""),
        (format!("{base}/template1"), "DATABASE_URL names the shared database \"template1\""),
    ] {
        let (status, lines, _) = migrate(&url).await;
        assert!(!status.success(), "{url}");
        let events = json_lines(&lines);
        assert_eq!(events.len(), 1, "{url}: {lines:?}");
        assert!(events[0]["error"].as_str().unwrap().starts_with(expected), "{url}: {lines:?}");
    }
}

#[tokio::test]
async fn a_second_start_logs_no_postgresql_notice() {
    let (db, _pool) = TestDatabase::create().await;
    let server =
        std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let base = server.rsplit_once('/').map_or(server.as_str(), |(base, _)| base);
    let (status, lines, _) = migrate(&format!("{base}/{}", db.name)).await;
    assert!(status.success(), "{lines:?}");
    assert!(lines.iter().all(|line| !line.contains("already exists")), "{lines:?}");
}

#[tokio::test]
async fn readyz_answers_503_within_a_second_when_postgresql_does_not_answer() {
    let silent = silent_server().await;
    let options = database::connect_options(&format!("postgres://postgres@{silent}/x")).unwrap();
    let pool = PgPoolOptions::new().acquire_timeout(Duration::from_secs(5)).connect_lazy_with(options);
    let config = Config::defaults();
    let limits = config.connection_limits();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let state = AppState::new(Database::new(pool), config);
    tokio::spawn(serve::serve(listener, app::router(state), limits, std::future::pending()));
    let started = Instant::now();
    let response = reqwest::get(format!("http://{address}/readyz")).await.unwrap();
    assert_eq!(response.status(), 503);
    assert!(started.elapsed() < Duration::from_millis(1200), "{:?}", started.elapsed());
}
