//! A request whose COMMIT is under way when its deadline passes: it answers the commit's
//! real outcome, or, when that outcome cannot be known, 503 saying so.
//!
//! The COMMIT is held on the server, deterministically and in the test's database only:
//! a deferred constraint trigger on the import log takes an advisory lock the test holds,
//! so the partner import's COMMIT waits for the test to let go. (A synchronous standby
//! that never answers would do the same, but `synchronous_standby_names` is a server-wide
//! setting: it cannot be set for one database or session.)

use std::time::{Duration, Instant};

use cohort_ingest::error::COMMIT_OUTCOME_UNKNOWN;
use reqwest::{Response, header};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use tokio::task::JoinHandle;

use crate::helpers::{PartnerSetup, TestApp, expect_json, skipped_on_citus};

const COMMIT_GATE_LOCK: i64 = 42_424_242;

/// Makes every COMMIT of a partner import wait until [`CommitGate::open`]; returns the
/// connection holding the gate shut.
struct CommitGate(PgConnection);

impl CommitGate {
    async fn shut(pool: &PgPool) -> CommitGate {
        let trigger = format!(
            "CREATE FUNCTION test_commit_gate() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM pg_advisory_xact_lock({COMMIT_GATE_LOCK}); RETURN NULL; END $$;
             CREATE CONSTRAINT TRIGGER test_commit_gate AFTER INSERT ON cohort_imports
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_commit_gate();"
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(trigger)).execute(pool).await.unwrap();
        let mut holder = pool.acquire().await.unwrap().detach();
        sqlx::query("SELECT pg_advisory_lock($1)").bind(COMMIT_GATE_LOCK).execute(&mut holder).await.unwrap();
        CommitGate(holder)
    }

    async fn open(mut self) {
        sqlx::query("SELECT pg_advisory_unlock($1)").bind(COMMIT_GATE_LOCK).execute(&mut self.0).await.unwrap();
    }
}

/// The backend of the service held at the gate, once there is one.
async fn backend_at_the_gate(pool: &PgPool) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
        )
        .fetch_optional(pool)
        .await
        .unwrap();
        if let Some(pid) = pid {
            return pid;
        }
        assert!(Instant::now() < deadline, "no COMMIT reached the gate");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn setup_with_users(app: &TestApp, n: usize) -> PartnerSetup {
    let setup = app.partner_setup("kubit").await;
    let users: Vec<Value> = (0..n).map(|i| json!({ "external_id": format!("u{i}") })).collect();
    let path = format!("/admin/workspaces/{}/users/batch", setup.workspace);
    expect_json(app.admin_post(&path, &json!({ "users": users })).await, 200).await;
    setup
}

/// Posts an import adding `u0`..`u{n-1}`; the response with its duration.
fn spawn_import(app: &TestApp, setup: &PartnerSetup, n: usize) -> JoinHandle<(Response, Duration)> {
    let user_ids: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
    let body = json!({
        "partner_api_key": setup.partner_api_key, "client_secret": setup.client_secret,
        "cohort_id": "c1", "cohort_changes": [{ "user_ids": user_ids }],
    });
    let request = app.client.post(app.url(&format!("/partners/{}/cohorts/users", setup.partner))).json(&body);
    tokio::spawn(async move {
        let started = Instant::now();
        let response = request.send().await.unwrap();
        (response, started.elapsed())
    })
}

async fn member_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM cohort_memberships").fetch_one(pool).await.unwrap()
}

async fn outcome_unknown_total(app: &TestApp) -> f64 {
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("cohort_ingest_commits_outcome_unknown_total "))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

async fn expect_outcome_unknown(response: Response) {
    assert_eq!(response.headers().get(header::RETRY_AFTER).map(|v| v.to_str().unwrap()), Some("1"));
    let body = expect_json(response, 503).await;
    assert_eq!(body["message"], COMMIT_OUTCOME_UNKNOWN, "{body}");
}

#[tokio::test]
async fn a_commit_under_way_at_the_deadline_answers_its_real_outcome() {
    if skipped_on_citus("the commit gate is a trigger, which Citus's shards do not run") {
        return;
    }
    let app = TestApp::spawn_with(|config| {
        config.request_timeout_secs = 1;
        config.commit_timeout_secs = 30;
    })
    .await;
    let setup = setup_with_users(&app, 3).await;
    let gate = CommitGate::shut(&app.pool).await;
    let import = spawn_import(&app, &setup, 3);
    backend_at_the_gate(&app.pool).await;
    // Well past the request deadline, the COMMIT is let through.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!import.is_finished(), "the request answered while its COMMIT was under way");
    gate.open().await;
    let (response, took) = import.await.unwrap();
    let body = expect_json(response, 200).await;
    assert_eq!((body["added"].as_u64(), body["unmatched"].as_u64()), (Some(3), Some(0)), "{body}");
    assert!(took > Duration::from_secs(1), "{took:?}");
    assert_eq!(member_count(&app.pool).await, 3);
}

#[tokio::test]
async fn a_commit_unanswered_within_its_bound_answers_503_outcome_unknown_and_frees_its_connection() {
    if skipped_on_citus("the commit gate is a trigger, which Citus's shards do not run") {
        return;
    }
    let app = TestApp::spawn_with(|config| {
        config.request_timeout_secs = 1;
        config.commit_timeout_secs = 2;
        // One connection: the next request gets one only if the stuck one is let go.
        config.db_max_connections = 1;
    })
    .await;
    let setup = setup_with_users(&app, 2).await;
    let unknown_before = outcome_unknown_total(&app).await;
    let gate = CommitGate::shut(&app.pool).await;
    let (response, took) = spawn_import(&app, &setup, 2).await.unwrap();
    expect_outcome_unknown(response).await;
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(6), "{took:?}");
    assert!(outcome_unknown_total(&app).await > unknown_before);

    // The COMMIT is still held on the server, yet the service's only pool slot is free
    // again within the commit bound: the connection stuck in it was closed. (Until then
    // a request waits for it past its 1 s deadline, and answers 503.)
    let started = Instant::now();
    while app.admin_get("/admin/workspaces").await.status() != 200 {
        assert!(started.elapsed() < Duration::from_secs(6), "the stuck connection still holds the pool");
    }

    // Once the server lets it, the abandoned COMMIT completes; a retry is safe either way.
    gate.open().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while member_count(&app.pool).await != 2 {
        assert!(Instant::now() < deadline, "the abandoned commit never completed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (retry, _) = spawn_import(&app, &setup, 2).await.unwrap();
    let body = expect_json(retry, 200).await;
    assert_eq!((body["added"].as_u64(), body["unchanged"].as_u64()), (Some(0), Some(2)), "{body}");
    assert_eq!(member_count(&app.pool).await, 2);
}

#[tokio::test]
async fn a_connection_lost_during_commit_answers_503_outcome_unknown() {
    if skipped_on_citus("the commit gate is a trigger, which Citus's shards do not run") {
        return;
    }
    let app = TestApp::spawn_with(|config| {
        config.request_timeout_secs = 1;
        config.commit_timeout_secs = 30;
    })
    .await;
    let setup = setup_with_users(&app, 2).await;
    let gate = CommitGate::shut(&app.pool).await;
    let import = spawn_import(&app, &setup, 2);
    let pid = backend_at_the_gate(&app.pool).await;
    let terminated: bool =
        sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(pid).fetch_one(&app.pool).await.unwrap();
    assert!(terminated);
    let (response, took) = import.await.unwrap();
    expect_outcome_unknown(response).await;
    assert!(took < Duration::from_secs(10), "{took:?}");
    gate.open().await;
    // Here it was rolled back (terminated before its commit record); the retry applies it.
    assert_eq!(member_count(&app.pool).await, 0);
    let (retry, _) = spawn_import(&app, &setup, 2).await.unwrap();
    assert_eq!(expect_json(retry, 200).await["added"], 2);
}
