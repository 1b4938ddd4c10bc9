//! `TestApp`: the service on a random port, on a database of its own.

use std::sync::{Arc, OnceLock};

use axum::middleware;

use cohort_ingest::{
    app::{self, AppState},
    config::Config,
    serve,
    store::database::{self, Database, quote_identifier},
};
use reqwest::{Method, RequestBuilder, Response};
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool, postgres::PgConnectOptions};
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::contract::{ContractCheck, check_response};

/// The admin token every test app is started with (unless a test says otherwise).
pub const ADMIN_TOKEN: &str = "test-admin-token-for-cohort-ingest";

/// Server the test databases are created on: `TEST_DATABASE_URL`, else the local default.
fn server_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
    })
}

/// A database created for one test and dropped when the test ends, pass or fail.
pub struct TestDatabase {
    pub name: String,
    pub options: PgConnectOptions,
}

impl TestDatabase {
    /// Creates an empty database with a unique name and applies the migrations.
    pub async fn create() -> (TestDatabase, PgPool) {
        let server = database::connect_options(server_url()).expect("TEST_DATABASE_URL is valid");
        let name = format!("cohort_ingest_test_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect_with(&server).await.expect("PostgreSQL is reachable for tests");
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {}", quote_identifier(&name))))
            .execute(&mut admin)
            .await
            .expect("can create a test database");
        admin.close().await.ok();
        let options = server.database(&name);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect_with(options.clone())
            .await
            .expect("can connect to the test database");
        database::migrate(&Database::new(pool.clone())).await.expect("migrations apply");
        (TestDatabase { name, options }, pool)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs outside async context (and during a panic): use a thread with its own
        // runtime so the database goes away whatever the test did.
        let name = self.name.clone();
        let server = self.options.clone().database("postgres");
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                if let Ok(mut admin) = PgConnection::connect_with(&server).await {
                    let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_identifier(&name));
                    let _ = sqlx::query(AssertSqlSafe(drop)).execute(&mut admin).await;
                }
            });
        })
        .join();
    }
}

/// The service running for one test.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    pub client: reqwest::Client,
    /// A pool on the test's database, for checking what the service stored.
    pub pool: PgPool,
    /// The service's own pool (sized by its `Config`), for tests that hold its connections.
    pub db: Database,
    pub admin_token: Option<String>,
    /// What the app answered that `/openapi.json` does not describe.
    pub contract: Arc<ContractCheck>,
    // Last: dropped after the pool's users.
    _db: TestDatabase,
}

/// A test whose app answered what its OpenAPI document does not describe fails, at its
/// end (unless it failed already).
impl Drop for TestApp {
    fn drop(&mut self) {
        let violations = self.contract.violations();
        if !violations.is_empty() && !std::thread::panicking() {
            panic!("responses that do not match /openapi.json:\n{}", violations.join("\n"));
        }
    }
}

impl TestApp {
    /// The service with default settings and [`ADMIN_TOKEN`].
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    /// The service with settings adjusted by `configure` (starting from the defaults
    /// with [`ADMIN_TOKEN`], 8 connections and a 30 s acquire timeout, so a loaded test
    /// machine does not turn a slow acquire into a 503). The service gets a pool of its
    /// own, built from those settings as in production.
    pub async fn spawn_with(configure: impl FnOnce(&mut Config)) -> TestApp {
        let (test_db, pool) = TestDatabase::create().await;
        let mut config = Config::defaults();
        config.admin_token = Some(ADMIN_TOKEN.into());
        config.db_max_connections = 8;
        config.db_acquire_timeout_secs = 30;
        configure(&mut config);
        let admin_token = config.admin_token.as_ref().map(|t| t.expose().to_owned());
        let db = database::connect_pool(test_db.options.clone(), config.pool_settings())
            .await
            .expect("can connect the service to the test database");
        let limits = config.connection_limits();
        let state = AppState::new(db.clone(), config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let contract = ContractCheck::new();
        let router = app::router(state).layer(middleware::from_fn_with_state(contract.clone(), check_response));
        tokio::spawn(serve::serve(listener, router, limits, std::future::pending()));
        TestApp { address, client: reqwest::Client::new(), pool, db, admin_token, contract, _db: test_db }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// A request with the admin token.
    pub fn admin(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self.client.request(method, self.url(path));
        match &self.admin_token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub async fn admin_get(&self, path: &str) -> Response {
        self.admin(Method::GET, path).send().await.unwrap()
    }

    pub async fn admin_post(&self, path: &str, body: &Value) -> Response {
        self.admin(Method::POST, path).json(body).send().await.unwrap()
    }

    pub async fn admin_delete(&self, path: &str) -> Response {
        self.admin(Method::DELETE, path).send().await.unwrap()
    }

    /// Creates a partner; returns its partner API key.
    pub async fn create_partner(&self, name: &str) -> String {
        let body = expect_json(self.admin_post("/admin/partners", &json!({ "name": name })).await, 201).await;
        body["partner_api_key"].as_str().unwrap().to_owned()
    }

    /// Creates a workspace; returns its id.
    pub async fn create_workspace(&self, name: &str) -> Uuid {
        let body = expect_json(self.admin_post("/admin/workspaces", &json!({ "name": name })).await, 201).await;
        body["id"].as_str().unwrap().parse().unwrap()
    }

    /// Creates a data import key of `workspace` for `partner`; returns the secret.
    pub async fn create_data_import_key(&self, workspace: Uuid, partner: &str) -> String {
        let path = format!("/admin/workspaces/{workspace}/partners/{partner}/data-import-keys");
        let body = expect_json(self.admin_post(&path, &json!({})).await, 201).await;
        body["key"].as_str().unwrap().to_owned()
    }

    /// Creates a REST API key of `workspace` with `scopes`; returns the secret.
    pub async fn create_api_key(&self, workspace: Uuid, scopes: &[&str]) -> String {
        let path = format!("/admin/workspaces/{workspace}/api-keys");
        let body = expect_json(self.admin_post(&path, &json!({ "name": "test", "scopes": scopes })).await, 201).await;
        body["key"].as_str().unwrap().to_owned()
    }

    /// A partner, a workspace and a data import key linking them, ready to import.
    pub async fn partner_setup(&self, partner: &str) -> PartnerSetup {
        let partner_api_key = self.create_partner(partner).await;
        let workspace = self.create_workspace("test workspace").await;
        let client_secret = self.create_data_import_key(workspace, partner).await;
        PartnerSetup { partner: partner.to_owned(), partner_api_key, workspace, client_secret }
    }
}

/// What a partner needs to post imports into one workspace.
#[derive(Debug, Clone)]
pub struct PartnerSetup {
    pub partner: String,
    pub partner_api_key: String,
    pub workspace: Uuid,
    pub client_secret: String,
}

/// Asserts the status (showing the body when it differs) and returns the JSON body.
pub async fn expect_json(response: Response, status: u16) -> Value {
    let actual = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(actual, status, "unexpected status; body: {text}");
    if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) }
}

/// Asserts an error response: its status and its exact `message`.
pub async fn expect_error(response: Response, status: u16, message: &str) {
    let body = expect_json(response, status).await;
    assert_eq!(body["message"].as_str(), Some(message), "unexpected error body: {body}");
}

/// Asserts that `cohort_bitmaps` holds exactly the memberships: one bit per row, at bit
/// `user_id & 8191` of block `user_id >> 13` (blocks with no bit left are ignored).
pub async fn assert_bitmaps_match_memberships(pool: &PgPool) {
    let differing: Vec<(Uuid, i64, i64)> = sqlx::query_as(
        "WITH expected AS (
             SELECT workspace_id, cohort_ref, user_id >> 13 AS block,
                    bit_or(B'1'::bit(8192) >> (user_id & 8191)::int) AS bits
               FROM cohort_memberships GROUP BY 1, 2, 3),
         stored AS (SELECT workspace_id, cohort_ref, block, bits FROM cohort_bitmaps WHERE bit_count(bits) > 0)
         SELECT workspace_id, cohort_ref, block FROM (
             (SELECT * FROM expected EXCEPT SELECT * FROM stored)
             UNION ALL
             (SELECT * FROM stored EXCEPT SELECT * FROM expected)) AS d",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(differing.is_empty(), "bitmap blocks that differ from the memberships: {differing:?}");
}
