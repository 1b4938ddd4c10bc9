//! `TestApp`: the service on a random port, on a database of its own.

use std::sync::{Arc, OnceLock};

use axum::middleware;

use cohort_ingest::{
    app,
    config::Config,
    serve,
    state::AppState,
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
/// In the Citus mode ([`citus_workers`]), the coordinator.
fn server_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        std::env::var("CITUS_TEST_COORDINATOR")
            .or_else(|_| std::env::var("TEST_DATABASE_URL"))
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
    })
}

/// The Citus mode: with `CITUS_TEST_COORDINATOR` (a URL of the coordinator's maintenance
/// database) and `CITUS_TEST_WORKERS` (`host:port,host:port`), every test database is
/// created on the coordinator and every worker with the `citus` extension, the workers are
/// added, and the migrations distribute the schema. The workers' `host:port`, if so.
pub fn citus_workers() -> Option<&'static [(String, u16)]> {
    static WORKERS: OnceLock<Option<Vec<(String, u16)>>> = OnceLock::new();
    WORKERS
        .get_or_init(|| {
            std::env::var("CITUS_TEST_COORDINATOR").ok()?;
            let workers =
                std::env::var("CITUS_TEST_WORKERS").expect("CITUS_TEST_WORKERS goes with CITUS_TEST_COORDINATOR");
            let parse = |node: &str| {
                let (host, port) = node.trim().rsplit_once(':').expect("CITUS_TEST_WORKERS holds host:port pairs");
                (host.to_owned(), port.parse().expect("a worker's port is a number"))
            };
            Some(workers.split(',').map(parse).collect())
        })
        .as_deref()
}

/// Whether a test that needs plain PostgreSQL's machinery (a trigger on a table) is to be
/// skipped because the suite runs in the Citus mode; says so.
pub fn skipped_on_citus(why: &str) -> bool {
    let skip = citus_workers().is_some();
    if skip {
        eprintln!("skipped in the Citus mode: {why}");
    }
    skip
}

/// A database created for one test and dropped when the test ends, pass or fail.
pub struct TestDatabase {
    pub name: String,
    pub options: PgConnectOptions,
}

impl TestDatabase {
    /// Creates a database with a unique name holding what the migrations make (in the
    /// Citus mode: on every node, with Citus, the workers added).
    pub async fn create() -> (TestDatabase, PgPool) {
        let server = database::connect_options(server_url()).expect("TEST_DATABASE_URL is valid");
        let name = format!("cohort_ingest_test_{}", Uuid::new_v4().simple());
        let database = match citus_workers() {
            Some(workers) => Self::create_on_citus(&server, &name, workers).await,
            None => {
                let template = template_database(&server).await;
                let mut admin = PgConnection::connect_with(&server).await.expect("PostgreSQL is reachable for tests");
                let create =
                    format!("CREATE DATABASE {} TEMPLATE {}", quote_identifier(&name), quote_identifier(template));
                sqlx::query(AssertSqlSafe(create)).execute(&mut admin).await.expect("can create a test database");
                admin.close().await.ok();
                TestDatabase { options: server.clone().database(&name), name }
            }
        };
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect_with(database.options.clone())
            .await
            .expect("can connect to the test database");
        // On a copy of the template this finds every migration applied (their checksums
        // checked) and changes nothing; on Citus it builds the schema.
        database::migrate(&Database::new(pool.clone())).await.expect("migrations apply");
        (database, pool)
    }

    /// An empty database on every node with the `citus` extension and the workers added:
    /// a template would not carry Citus's metadata, which spans the nodes.
    async fn create_on_citus(server: &PgConnectOptions, name: &str, workers: &[(String, u16)]) -> TestDatabase {
        let nodes = Self::nodes(server);
        for node in &nodes {
            let mut admin = PgConnection::connect_with(node).await.expect("PostgreSQL is reachable for tests");
            sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {}", quote_identifier(name))))
                .execute(&mut admin)
                .await
                .expect("can create a test database");
            admin.close().await.ok();
        }
        let options = server.clone().database(name);
        // From here on a failed step still drops the database (on every node).
        let database = TestDatabase { name: name.to_owned(), options: options.clone() };
        for node in &nodes {
            let mut conn = PgConnection::connect_with(&node.clone().database(name)).await.unwrap();
            sqlx::query("CREATE EXTENSION citus").execute(&mut conn).await.expect("the citus extension");
            conn.close().await.ok();
        }
        let mut coordinator = PgConnection::connect_with(&options).await.unwrap();
        sqlx::query("SELECT citus_set_coordinator_host($1, $2)")
            .bind(server.get_host())
            .bind(i32::from(server.get_port()))
            .execute(&mut coordinator)
            .await
            .unwrap();
        for (host, port) in workers {
            // Adding a node creates the role on it, which concurrent test databases
            // may do at the same moment ("tuple concurrently updated"): try again.
            let mut attempt = 0;
            while let Err(error) = sqlx::query("SELECT citus_add_node($1, $2)")
                .bind(host)
                .bind(i32::from(*port))
                .execute(&mut coordinator)
                .await
            {
                attempt += 1;
                assert!(attempt < 10, "cannot add the Citus worker {host}:{port}: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
            }
        }
        coordinator.close().await.ok();
        database
    }

    /// The database's URL, for a service started as a process of its own.
    pub fn url(&self) -> String {
        let server = server_url();
        let base = server.rsplit_once('/').map_or(server, |(base, _)| base);
        format!("{base}/{}", self.name)
    }

    /// The maintenance databases of every node: the server, and in the Citus mode its
    /// workers.
    fn nodes(server: &PgConnectOptions) -> Vec<PgConnectOptions> {
        let workers = citus_workers().unwrap_or_default();
        std::iter::once(server.clone())
            .chain(workers.iter().map(|(host, port)| server.clone().host(host).port(*port)))
            .collect()
    }

    /// Connection settings for the service's own pool: in the Citus mode, any statement
    /// that would run on more than one shard fails, so that the whole suite proves every
    /// statement of the service single-shard. With `log_plans`, PostgreSQL also sends the
    /// plan of every statement back as a NOTICE (auto_explain).
    pub fn service_options(&self, log_plans: bool) -> PgConnectOptions {
        let mut options = self.options.clone();
        if citus_workers().is_some() {
            options = options.options([("citus.multi_task_query_log_level", "error")]);
        }
        if log_plans {
            // After the service's own client_min_messages=warning, so the plans arrive.
            options = options.options([
                ("client_min_messages", "notice"),
                ("session_preload_libraries", "auto_explain"),
                ("auto_explain.log_min_duration", "0"),
                ("auto_explain.log_level", "notice"),
            ]);
        }
        options
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs outside async context (and during a panic): use a thread with its own
        // runtime so the database goes away whatever the test did.
        let name = self.name.clone();
        let nodes = Self::nodes(&self.options.clone().database("postgres"));
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                for node in nodes {
                    if let Ok(mut admin) = PgConnection::connect_with(&node).await {
                        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_identifier(&name));
                        let _ = sqlx::query(AssertSqlSafe(drop)).execute(&mut admin).await;
                    }
                }
            });
        })
        .join();
    }
}

/// Prefix of the template databases: one per set of migrations, named by their hash.
const TEMPLATE_PREFIX: &str = "cohort_ingest_template_";
/// Prefix of a template being built: renamed once complete, so that a template found
/// under its final name is whole (a process that dies while building leaves this name).
const BUILDING_PREFIX: &str = "cohort_ingest_template_building_";

/// The database every plain PostgreSQL test database is copied from: migrated once per
/// test process, so that a test costs a `CREATE DATABASE … TEMPLATE` instead of every
/// migration. Named by a hash of the migrations, so a changed migration gets a template
/// of its own and processes at different commits can share the server. Templates of
/// other migrations are left alone: another checkout's suite may be copying one.
async fn template_database(server: &PgConnectOptions) -> &'static str {
    static TEMPLATE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    TEMPLATE.get_or_init(|| build_template(server.clone())).await
}

/// `TEMPLATE_PREFIX` and the hash of the embedded migrations (versions, descriptions,
/// checksums of their SQL).
fn template_name() -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for migration in database::MIGRATOR.iter() {
        hash.update(migration.version.to_le_bytes());
        hash.update(migration.description.as_bytes());
        hash.update(migration.checksum.as_ref());
        hash.update([u8::from(migration.no_tx)]);
    }
    format!("{TEMPLATE_PREFIX}{}", &hex::encode(hash.finalize())[..16])
}

/// Creates the template unless it exists. Processes take turns through an advisory lock
/// on the maintenance database; the one that finds no template builds it under a
/// temporary name, migrates it as the service does, closes every connection to it
/// (`CREATE DATABASE … TEMPLATE` refuses a template anyone is connected to), forbids
/// connections to it, then renames it.
async fn build_template(server: PgConnectOptions) -> String {
    let name = template_name();
    let mut admin = PgConnection::connect_with(&server).await.expect("PostgreSQL is reachable for tests");
    sqlx::query("SELECT pg_advisory_lock(hashtextextended('cohort-ingest test template', 0))")
        .execute(&mut admin)
        .await
        .expect("can take the template lock");
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&name)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    if !exists {
        // Under the lock nobody is building: any such database is a dead process's.
        let abandoned: Vec<String> =
            sqlx::query_scalar("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
                .bind(BUILDING_PREFIX)
                .fetch_all(&mut admin)
                .await
                .unwrap();
        for abandoned in abandoned {
            let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_identifier(&abandoned));
            sqlx::query(AssertSqlSafe(drop)).execute(&mut admin).await.expect("can drop an abandoned template");
        }
        let building = format!("{BUILDING_PREFIX}{}", Uuid::new_v4().simple());
        let create = format!("CREATE DATABASE {}", quote_identifier(&building));
        sqlx::query(AssertSqlSafe(create)).execute(&mut admin).await.expect("can create the template database");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_with(server.clone().database(&building))
            .await
            .expect("can connect to the template database");
        database::migrate(&Database::new(pool.clone())).await.expect("migrations apply");
        pool.close().await;
        for statement in [
            format!("ALTER DATABASE {} ALLOW_CONNECTIONS false", quote_identifier(&building)),
            // Waits for the closed connections' backends to end.
            format!("ALTER DATABASE {} RENAME TO {}", quote_identifier(&building), quote_identifier(&name)),
        ] {
            sqlx::query(AssertSqlSafe(statement)).execute(&mut admin).await.expect("can finish the template");
        }
    }
    sqlx::query("SELECT pg_advisory_unlock(hashtextextended('cohort-ingest test template', 0))")
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.ok();
    name
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
        Self::start(configure, false).await
    }

    /// The service with default settings, its every statement's plan sent back by
    /// PostgreSQL as a NOTICE ([`TestDatabase::service_options`]), for plan checks.
    pub async fn spawn_logging_plans() -> TestApp {
        Self::start(|_| {}, true).await
    }

    async fn start(configure: impl FnOnce(&mut Config), log_plans: bool) -> TestApp {
        let (test_db, pool) = TestDatabase::create().await;
        let mut config = Config::defaults();
        config.admin_token = Some(ADMIN_TOKEN.into());
        config.db_max_connections = 8;
        config.db_acquire_timeout_secs = 30;
        configure(&mut config);
        let admin_token = config.admin_token.as_ref().map(|t| t.expose().to_owned());
        let db = database::connect_pool(test_db.service_options(log_plans), config.pool_settings())
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

/// Waits until a backend of `pool`'s database (other than the asking one) matches
/// `condition`, SQL over `pg_stat_activity` (e.g. `wait_event_type = 'Lock'`): how a
/// test knows a concurrent request has reached a point inside PostgreSQL, such as being
/// blocked on a lock the test holds. In the Citus mode it looks at every node's backends
/// (`citus_stat_activity`): a statement routed to a worker waits there, not on the
/// coordinator. Fails the test, saying `what` was awaited, if none does within 30 s.
pub async fn wait_for_backend(pool: &PgPool, condition: &str, what: &str) {
    let (activity, not_me) = match citus_workers() {
        Some(_) => ("citus_stat_activity", "global_pid <> citus_backend_gpid()"),
        None => ("pg_stat_activity", "pid <> pg_backend_pid()"),
    };
    let sql =
        format!("SELECT count(*) FROM {activity} WHERE datname = current_database() AND {not_me} AND ({condition})");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let matching: i64 = sqlx::query_scalar(AssertSqlSafe(sql.clone())).fetch_one(pool).await.unwrap();
        if matching > 0 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: no backend matched `{condition}` within 30 s");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Asserts that `actual` is the committed snapshot `tests/api/snapshots/<name>`; with
/// `UPDATE_SNAPSHOTS=1` in the environment, writes it there instead. The failure shows
/// the lines that differ and how to accept them.
pub fn assert_matches_snapshot(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/api/snapshots").join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    // The test's thread is named after it.
    let test = std::thread::current().name().unwrap_or_default().to_owned();
    let update = format!(
        "if the change is intended, run UPDATE_SNAPSHOTS=1 cargo test --test api -- --exact {test} and commit {}",
        path.display()
    );
    let expected =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("no snapshot {} ({e}); {update}", path.display()));
    if expected == actual {
        return;
    }
    // The block between the common first and last lines: enough to see a change.
    let (old, new): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let prefix = old.iter().zip(&new).take_while(|(a, b)| a == b).count();
    let suffix = old[prefix..].iter().rev().zip(new[prefix..].iter().rev()).take_while(|(a, b)| a == b).count();
    let shown = |lines: &[&str], sign: char| {
        let mut text: String = lines.iter().take(40).map(|line| format!("{sign}{line}\n")).collect();
        if lines.len() > 40 {
            text.push_str(&format!("{sign}… {} more lines\n", lines.len() - 40));
        }
        text
    };
    if prefix == old.len() && prefix == new.len() {
        panic!("{name} differs from the snapshot in its line endings; {update}");
    }
    panic!(
        "{} differs from the snapshot at line {}:\n{}{}{update}",
        name,
        prefix + 1,
        shown(&old[prefix..old.len() - suffix], '-'),
        shown(&new[prefix..new.len() - suffix], '+'),
    );
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

/// Asserts that `cohort_bitmaps`, with the changes `cohort_bit_changes` holds back
/// applied in order, holds exactly the memberships, and `user_bitmaps` exactly the users:
/// one bit per row, at bit `id & 8191` of block `id >> 13` (blocks with no bit left are
/// ignored); and that each cohort's `bits_pending` counts the ids held back.
pub async fn assert_bitmaps_match_memberships(pool: &PgPool) {
    let differing: Vec<(Uuid, i64, i64)> = sqlx::query_as(
        "WITH expected AS (
             SELECT workspace_id, cohort_ref, user_id >> 13 AS block,
                    bit_or(B'1'::bit(8192) >> (user_id & 8191)::int) AS bits
               FROM cohort_memberships GROUP BY 1, 2, 3),
         changes AS (
             SELECT workspace_id, cohort_ref, import_id, unnest(set_ids) AS id, true AS is_set FROM cohort_bit_changes
             UNION ALL
             SELECT workspace_id, cohort_ref, import_id, unnest(cleared_ids), false FROM cohort_bit_changes),
         last_changes AS (
             SELECT DISTINCT ON (workspace_id, cohort_ref, id) workspace_id, cohort_ref, id, is_set FROM changes
              ORDER BY workspace_id, cohort_ref, id, import_id DESC),
         masks AS (
             SELECT workspace_id, cohort_ref, id >> 13 AS block,
                    coalesce(bit_or(B'1'::bit(8192) >> (id & 8191)::int) FILTER (WHERE is_set), B'0'::bit(8192)) AS set_bits,
                    coalesce(bit_or(B'1'::bit(8192) >> (id & 8191)::int) FILTER (WHERE NOT is_set), B'0'::bit(8192)) AS clear_bits
               FROM last_changes GROUP BY 1, 2, 3),
         stored AS (
             SELECT workspace_id, cohort_ref, block,
                    (coalesce(b.bits, B'0'::bit(8192)) | coalesce(m.set_bits, B'0'::bit(8192)))
                    & ~coalesce(m.clear_bits, B'0'::bit(8192)) AS bits
               FROM cohort_bitmaps b FULL JOIN masks m USING (workspace_id, cohort_ref, block)),
         nonempty AS (SELECT * FROM stored WHERE bit_count(bits) > 0)
         SELECT workspace_id, cohort_ref, block FROM (
             (SELECT * FROM expected EXCEPT SELECT * FROM nonempty)
             UNION ALL
             (SELECT * FROM nonempty EXCEPT SELECT * FROM expected)) AS d",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(differing.is_empty(), "bitmap blocks that differ from the memberships: {differing:?}");
    let miscounted: Vec<(Uuid, i64, i32, i64)> = sqlx::query_as(
        "SELECT c.workspace_id, c.id, c.bits_pending, coalesce(h.ids, 0)
           FROM cohorts c
           LEFT JOIN (SELECT workspace_id, cohort_ref,
                             sum(cardinality(set_ids) + cardinality(cleared_ids))::int8 AS ids
                        FROM cohort_bit_changes GROUP BY 1, 2) AS h
             ON h.workspace_id = c.workspace_id AND h.cohort_ref = c.id
          WHERE c.bits_pending <> coalesce(h.ids, 0)",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(miscounted.is_empty(), "cohorts whose bits_pending is not the ids held back: {miscounted:?}");
    let differing: Vec<(Uuid, i64)> = sqlx::query_as(
        "WITH expected AS (
             SELECT workspace_id, id >> 13 AS block, bit_or(B'1'::bit(8192) >> (id & 8191)::int) AS bits
               FROM users GROUP BY 1, 2),
         stored AS (SELECT workspace_id, block, bits FROM user_bitmaps WHERE bit_count(bits) > 0)
         SELECT workspace_id, block FROM (
             (SELECT * FROM expected EXCEPT SELECT * FROM stored)
             UNION ALL
             (SELECT * FROM stored EXCEPT SELECT * FROM expected)) AS d",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(differing.is_empty(), "user bitmap blocks that differ from the users: {differing:?}");
}

/// Inserts users straight into the store as the user store writes them (ids from the
/// workspace's counter, bits in `user_bitmaps`), for tests that need many quickly; `None`
/// makes an anonymous user. Returns their internal ids and braze_ids, in order.
pub async fn insert_users(pool: &PgPool, workspace: Uuid, external_ids: &[Option<String>]) -> Vec<(i64, Uuid)> {
    let mut tx = pool.begin().await.unwrap();
    let first: i64 = sqlx::query_scalar(
        "UPDATE user_id_counters SET next_user_id = next_user_id + $2 WHERE workspace_id = $1
         RETURNING next_user_id - $2",
    )
    .bind(workspace)
    .bind(external_ids.len() as i64)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let users: Vec<(i64, Uuid)> = sqlx::query_as(
        "INSERT INTO users (workspace_id, id, braze_id, external_id)
         SELECT $1, $2 + t.ord - 1, gen_random_uuid(), t.e FROM unnest($3::text[]) WITH ORDINALITY AS t(e, ord)
         RETURNING id, braze_id",
    )
    .bind(workspace)
    .bind(first)
    .bind(external_ids)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let ids: Vec<i64> = users.iter().map(|(id, _)| *id).collect();
    set_bits(&mut tx, "user_bitmaps", workspace, None, &ids, true).await;
    tx.commit().await.unwrap();
    let mut users = users;
    users.sort();
    users
}

/// Creates a cohort straight in the store, as the service does (its id from the
/// workspace's counter); returns its internal id.
pub async fn insert_cohort(pool: &PgPool, workspace: Uuid, partner: &str, cohort_id: &str, name: &str) -> i64 {
    let id: i64 = sqlx::query_scalar(
        "UPDATE cohort_id_counters SET next_cohort_id = next_cohort_id + 1 WHERE workspace_id = $1
         RETURNING next_cohort_id - 1",
    )
    .bind(workspace)
    .fetch_one(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO cohorts (workspace_id, id, partner, cohort_id, name, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, now(), now())",
    )
    .bind(workspace)
    .bind(id)
    .bind(partner)
    .bind(cohort_id)
    .bind(name)
    .execute(pool)
    .await
    .unwrap();
    id
}

/// Adds and removes members of a cohort straight in the store, as an import does: the
/// rows, their bits and an exact `member_count`.
pub async fn change_members(pool: &PgPool, workspace: Uuid, cohort_ref: i64, add: &[i64], remove: &[i64]) {
    let mut tx = pool.begin().await.unwrap();
    let added: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO cohort_memberships (workspace_id, cohort_ref, user_id, added_at)
         SELECT $1, $2, u, now() FROM unnest($3::int8[]) AS u ON CONFLICT DO NOTHING RETURNING user_id",
    )
    .bind(workspace)
    .bind(cohort_ref)
    .bind(add)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let removed: Vec<i64> = sqlx::query_scalar(
        "DELETE FROM cohort_memberships WHERE workspace_id = $1 AND cohort_ref = $2 AND user_id = ANY($3)
         RETURNING user_id",
    )
    .bind(workspace)
    .bind(cohort_ref)
    .bind(remove)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    set_bits(&mut tx, "cohort_bitmaps", workspace, Some(cohort_ref), &added, true).await;
    set_bits(&mut tx, "cohort_bitmaps", workspace, Some(cohort_ref), &removed, false).await;
    sqlx::query("UPDATE cohorts SET member_count = member_count + $3 WHERE workspace_id = $1 AND id = $2")
        .bind(workspace)
        .bind(cohort_ref)
        .bind(added.len() as i64 - removed.len() as i64)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// Sets (or clears) the bits of `ids` in `table` (`user_bitmaps`, or `cohort_bitmaps` of
/// `cohort_ref`).
async fn set_bits(tx: &mut PgConnection, table: &str, workspace: Uuid, cohort_ref: Option<i64>, ids: &[i64], on: bool) {
    let (cohort_column, cohort_value) = match cohort_ref {
        Some(cohort_ref) => ("cohort_ref, ", format!("{cohort_ref}, ")),
        None => ("", String::new()),
    };
    let sql = if on {
        format!(
            "INSERT INTO {table} AS b (workspace_id, {cohort_column}block, bits)
             SELECT $1, {cohort_value}id >> 13, bit_or(B'1'::bit(8192) >> (id & 8191)::int)
               FROM unnest($2::int8[]) AS id GROUP BY id >> 13
             ON CONFLICT (workspace_id, {cohort_column}block) DO UPDATE SET bits = b.bits | excluded.bits"
        )
    } else {
        let cohort = cohort_ref.map(|c| format!(" AND b.cohort_ref = {c}")).unwrap_or_default();
        format!(
            "UPDATE {table} b SET bits = b.bits & ~g.bits
               FROM (SELECT id >> 13 AS block, bit_or(B'1'::bit(8192) >> (id & 8191)::int) AS bits
                       FROM unnest($2::int8[]) AS id GROUP BY 1) AS g
              WHERE b.workspace_id = $1{cohort} AND b.block = g.block"
        )
    };
    sqlx::query(AssertSqlSafe(sql)).bind(workspace).bind(ids).execute(tx).await.unwrap();
}
