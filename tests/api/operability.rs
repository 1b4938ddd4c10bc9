//! Operability: the OpenAPI document against the router, metrics, logs without secrets,
//! limits, malformed input on every route, database outages, graceful shutdown.
//!
//! Most tests here are generic: they enumerate the operations of `/openapi.json` and
//! exercise every one, so routes added later are covered without editing this file.

use std::{
    collections::{BTreeSet, HashSet},
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use cohort_ingest::{
    app,
    config::{Cli, Config, LogFormat},
    middleware::limits,
    state::AppState,
    store::database::Database,
    telemetry,
};
use futures::StreamExt as _;
use proptest::{prelude::*, test_runner::TestRunner};
use reqwest::{Method, RequestBuilder, Response};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::{
    ADMIN_TOKEN, PartnerSetup, TestApp, TestDatabase, assert_matches_snapshot, expect_error, expect_json,
    insert_cohort, insert_users,
};

#[tokio::test]
async fn healthz_and_readyz_answer_200_without_auth() {
    let app = TestApp::spawn().await;
    for path in ["/healthz", "/readyz"] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn unknown_route_is_a_json_404() {
    let app = TestApp::spawn().await;
    let body = expect_json(app.client.get(app.url("/nope")).send().await.unwrap(), 404).await;
    assert_eq!(body["message"], "no route for GET /nope");
}

#[tokio::test]
async fn a_method_a_route_lacks_is_a_json_405_with_allow() {
    let app = TestApp::spawn().await;
    let response = app.client.delete(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.headers()["allow"], "GET,HEAD");
    expect_error(response, 405, "method DELETE is not allowed on this path").await;
}

// ---------------------------------------------------------------------------------------
// The OpenAPI document and the router
// ---------------------------------------------------------------------------------------

/// One operation of the served OpenAPI document.
#[derive(Debug, Clone)]
struct Operation {
    method: Method,
    /// The path template, e.g. `/admin/workspaces/{ws}`.
    path: String,
    /// Names of the security schemes it accepts (empty: none, or credentials in the body).
    security: Vec<String>,
    /// Content types of its request body (empty: no body).
    body_types: Vec<String>,
    /// Its JSON request body schema, `$ref`s resolved at the top level.
    body_schema: Option<Value>,
}

impl Operation {
    fn takes_json(&self) -> bool {
        self.body_types.iter().any(|t| t == "application/json")
    }

    /// Top-level properties of the JSON body, with their (resolved) schemas.
    fn body_properties(&self, document: &Value) -> Vec<(String, Value)> {
        let Some(schema) = &self.body_schema else { return Vec::new() };
        let properties = schema["properties"].as_object().cloned().unwrap_or_default();
        properties.into_iter().map(|(name, schema)| (name, resolve(document, &schema))).collect()
    }
}

async fn fetch_document(app: &TestApp) -> Value {
    expect_json(app.client.get(app.url("/openapi.json")).send().await.unwrap(), 200).await
}

fn resolve(document: &Value, schema: &Value) -> Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let pointer = reference.trim_start_matches('#');
            resolve(document, document.pointer(pointer).unwrap_or(&Value::Null))
        }
        None => schema.clone(),
    }
}

fn operations(document: &Value) -> Vec<Operation> {
    let mut found = Vec::new();
    for (path, item) in document["paths"].as_object().expect("the document has paths") {
        for (name, operation) in item.as_object().unwrap() {
            let Ok(method) = Method::from_bytes(name.to_uppercase().as_bytes()) else { continue };
            if !operation.is_object() || ["PARAMETERS", "SERVERS", "SUMMARY", "DESCRIPTION"].contains(&method.as_str())
            {
                continue;
            }
            let security = operation["security"]
                .as_array()
                .map(|requirements| {
                    requirements.iter().filter_map(Value::as_object).flat_map(|r| r.keys().cloned()).collect()
                })
                .unwrap_or_default();
            let content = operation["requestBody"]["content"].as_object();
            let body_types = content.map(|c| c.keys().cloned().collect()).unwrap_or_default();
            let body_schema = content
                .and_then(|c| c.get("application/json"))
                .map(|json| resolve(document, &json["schema"]))
                .filter(|schema| !schema.is_null());
            found.push(Operation { method, path: path.clone(), security, body_types, body_schema });
        }
    }
    found
}

/// Every property name of every schema of the document: the key vocabulary that lets
/// generated JSON reach the fields parsers look at.
fn property_names(document: &Value) -> Vec<String> {
    fn walk(value: &Value, names: &mut BTreeSet<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::Object(properties)) = map.get("properties") {
                    names.extend(properties.keys().cloned());
                }
                map.values().for_each(|v| walk(v, names));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, names)),
            _ => {}
        }
    }
    let mut names = BTreeSet::new();
    walk(&document["components"], &mut names);
    names.into_iter().collect()
}

/// A partner, workspace and keys of every kind, so every route's auth can be satisfied
/// and its parsers reached.
struct Fixture {
    setup: PartnerSetup,
    api_key: String,
}

impl Fixture {
    async fn create(app: &TestApp) -> Fixture {
        let setup = app.partner_setup("fixture_partner").await;
        let api_key = app.create_api_key(setup.workspace, &["segments.read"]).await;
        Fixture { setup, api_key }
    }

    /// The concrete path of a template: `{ws}` is the fixture's workspace, `{partner}`
    /// its partner, any other parameter a fresh UUID (valid wherever an id goes).
    fn path(&self, template: &str) -> String {
        let mut path = String::new();
        for segment in template.split('/').skip(1) {
            path.push('/');
            match segment {
                "{ws}" | "{workspace}" | "{workspace_id}" => path.push_str(&self.setup.workspace.to_string()),
                "{partner}" => path.push_str(&self.setup.partner),
                s if s.starts_with('{') => path.push_str(&Uuid::new_v4().to_string()),
                s => path.push_str(s),
            }
        }
        path
    }

    /// A request for the operation with valid credentials for its security schemes.
    fn request(&self, app: &TestApp, operation: &Operation) -> RequestBuilder {
        let request = app.client.request(operation.method.clone(), app.url(&self.path(&operation.path)));
        if operation.security.iter().any(|s| s == app::ADMIN_TOKEN_SCHEME) {
            request.bearer_auth(ADMIN_TOKEN)
        } else if operation.security.iter().any(|s| s == app::API_KEY_SCHEME) {
            request.bearer_auth(&self.api_key)
        } else if operation.security.iter().any(|s| s == app::IMPORT_KEY_BEARER_SCHEME) {
            request.bearer_auth(&self.setup.client_secret)
        } else if operation.security.iter().any(|s| s == app::IMPORT_KEY_BASIC_SCHEME) {
            request.basic_auth("any", Some(&self.setup.client_secret))
        } else {
            request
        }
    }

    /// Adds valid partner credentials to an object body (partner endpoints read them
    /// from the body before anything else).
    fn with_body_credentials(&self, mut body: Value) -> Value {
        if let Value::Object(map) = &mut body {
            map.insert("partner_api_key".into(), json!(self.setup.partner_api_key));
            map.insert("client_secret".into(), json!(self.setup.client_secret));
        }
        body
    }
}

/// Whether a response is the router's own "no such route" (rather than a handler's 404).
async fn is_unrouted(response: Response) -> bool {
    match response.status().as_u16() {
        405 => true,
        404 => response
            .json::<Value>()
            .await
            .ok()
            .and_then(|b| b["message"].as_str().map(str::to_owned))
            .is_some_and(|message| message.starts_with("no route for")),
        _ => false,
    }
}

#[tokio::test]
async fn openapi_document_has_security_schemes_and_error_responses() {
    let app = TestApp::spawn().await;
    let document = fetch_document(&app).await;
    assert!(document["openapi"].as_str().unwrap().starts_with('3'), "OpenAPI 3");
    let schemes = &document["components"]["securitySchemes"];
    for scheme in [app::ADMIN_TOKEN_SCHEME, app::API_KEY_SCHEME] {
        assert_eq!(schemes[scheme]["type"], "http", "{scheme}");
        assert_eq!(schemes[scheme]["scheme"], "bearer", "{scheme}");
    }
    let operations = operations(&document);
    assert!(operations.len() >= 15, "only {} operations documented", operations.len());
    for operation in &operations {
        let described = &document["paths"][&operation.path][operation.method.as_str().to_lowercase()];
        for scheme in &operation.security {
            assert!(schemes.get(scheme).is_some(), "{operation:?} names an undefined security scheme {scheme}");
        }
        let responses = described["responses"].as_object().unwrap();
        let mut expected = vec!["500", "503"];
        if operation.takes_json() {
            expected.extend(["400", "413"]);
        }
        if !operation.security.is_empty() {
            expected.push("401");
        }
        for status in expected {
            assert!(
                responses.contains_key(status),
                "{} {} does not document {status}",
                operation.method,
                operation.path
            );
        }
        // Every error response is the JSON error body (Mixpanel's webhook: Mixpanel's
        // answer, whose `error` holds the message).
        for (status, response) in responses.iter().filter(|(s, _)| s.as_str() >= "400") {
            let response = resolve(&document, response);
            let schema = resolve(&document, &response["content"]["application/json"]["schema"]);
            assert!(
                schema["properties"].get("message").is_some() || schema["properties"].get("error").is_some(),
                "{} {} {status} is not an ErrorBody: {response}",
                operation.method,
                operation.path
            );
        }
    }
    // The routes the limits treat specially exist (a renamed route would silently lose
    // its exemption).
    for (method, path) in limits::UNBOUNDED_ROUTES.iter().chain(limits::UNSHED_ROUTES) {
        assert!(
            operations.iter().any(|o| o.method.as_str() == method.as_str() && o.path == *path),
            "{method} {path} is listed in http::limits but not a documented route"
        );
    }
    let unavailable = &document["components"]["responses"]["Unavailable"];
    assert!(unavailable["headers"].get("Retry-After").is_some(), "{unavailable}");
}

/// The served document is `tests/api/snapshots/openapi.json`, pretty-printed: any change
/// to a route, parameter, schema or response shows in that file's diff, for review.
#[tokio::test]
async fn openapi_document_matches_its_snapshot() {
    let app = TestApp::spawn().await;
    let document = fetch_document(&app).await;
    let pretty = serde_json::to_string_pretty(&document).unwrap() + "\n";
    assert_matches_snapshot("openapi.json", &pretty);
}

/// The router against its document: every documented operation is routed (called
/// without credentials, it answers neither 405 nor the fallback's 404), and on every
/// documented path no undocumented method is (a handler mounted with `.route(…)`
/// instead of `routes!(…)` and `#[utoipa::path]`). Probes carry no credentials, so they
/// change nothing.
#[tokio::test]
async fn openapi_document_and_router_agree_on_every_documented_path() {
    let app = TestApp::spawn().await;
    let fixture = Fixture::create(&app).await;
    let document = fetch_document(&app).await;
    let documented: HashSet<(Method, String)> = operations(&document).into_iter().map(|o| (o.method, o.path)).collect();
    assert!(!documented.is_empty(), "no operation documented");

    for (method, template) in &documented {
        let response = app.client.request(method.clone(), app.url(&fixture.path(template))).send().await.unwrap();
        assert!(!is_unrouted(response).await, "{method} {template} is documented but not routed");
    }

    let documented_templates: BTreeSet<&String> = documented.iter().map(|(_, path)| path).collect();
    for template in documented_templates {
        for method in [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE, Method::OPTIONS] {
            let response = app.client.request(method.clone(), app.url(&fixture.path(template))).send().await.unwrap();
            if !is_unrouted(response).await {
                assert!(
                    documented.contains(&(method.clone(), template.clone())),
                    "{method} {template} is routed but not in /openapi.json: mount it with routes!(…) and #[utoipa::path]"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_report_the_pool() {
    let app = TestApp::spawn().await;
    let unknown_workspace = Uuid::new_v4();
    let response = app.admin_get(&format!("/admin/workspaces/{unknown_workspace}")).await;
    assert_eq!(response.status(), 404);
    let scanned = Uuid::new_v4();
    app.client.get(app.url(&format!("/scanner/{scanned}"))).send().await.unwrap();
    // A partner import of two unknown users: the import records its outcome.
    let setup = app.partner_setup("metrics_partner").await;
    let import = json!({"partner_api_key": setup.partner_api_key, "client_secret": setup.client_secret,
                        "cohort_id": "c1", "cohort_changes": [{"user_ids": ["nobody", "no one"]}]});
    let response = app.client.post(app.url("/partners/metrics_partner/cohorts/users")).json(&import).send().await;
    assert_eq!(expect_json(response.unwrap(), 200).await["unmatched"], 2);

    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = response.text().await.unwrap();
    let line = |prefix: &str, parts: &[&str]| {
        text.lines().find(|l| l.starts_with(prefix) && parts.iter().all(|p| l.contains(p))).map(str::to_owned)
    };
    let route = r#"route="/admin/workspaces/{ws}""#;
    let counted = line("cohort_ingest_http_requests_total{", &[route, r#"status="404""#, r#"method="GET""#]);
    assert!(counted.is_some(), "no request counter for the route template:\n{text}");
    assert!(line("cohort_ingest_http_request_duration_seconds_bucket{", &[route, r#"le="0.005""#]).is_some());
    assert!(line("cohort_ingest_http_requests_total{", &[r#"route="unmatched""#]).is_some());
    // Raw paths never become labels.
    assert!(!text.contains(&unknown_workspace.to_string()) && !text.contains(&scanned.to_string()));
    for (outcome, count) in [("added", 0), ("removed", 0), ("unchanged", 0), ("unmatched_unknown", 2)] {
        let found = line(
            "cohort_ingest_identifiers_total{",
            &[r#"partner="metrics_partner""#, r#"kind="braze""#, &format!(r#"outcome="{outcome}""#)],
        )
        .unwrap_or_else(|| panic!("no {outcome} counter:\n{text}"));
        assert!(found.ends_with(&format!(" {count}")), "{found}");
    }
    for gauge in [
        "cohort_ingest_db_pool_connections",
        "cohort_ingest_db_pool_idle_connections",
        "cohort_ingest_db_pool_in_use_connections",
        "cohort_ingest_db_pool_max_connections",
        "cohort_ingest_db_pool_waiting",
        "cohort_ingest_http_requests_in_flight",
    ] {
        assert!(text.lines().any(|l| l.starts_with(&format!("{gauge} "))), "no {gauge}:\n{text}");
    }
}

/// Scrapes `/metrics` until `holds` accepts the text, for at most ten seconds: what is
/// measured may land an instant after the response the test saw, and gauges are shared
/// with the other tests' apps in this process, so a single scrape may show theirs.
async fn scrape_until(app: &TestApp, what: &str, holds: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
        if holds(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what}: not seen within 10 s; last scrape:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of an unlabelled metric in a scrape.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_count_the_requests_waiting_for_a_database_connection() {
    const WAITING: &str = "cohort_ingest_db_pool_waiting";
    let app = TestApp::spawn_with(|config| config.db_max_connections = 1).await;
    scrape_until(&app, "nobody waiting", |text| sample(text, WAITING) == Some(0.0)).await;

    // The test holds the pool's only connection: a readiness probe has to wait for it.
    let held = app.db.acquire().await.unwrap();
    let probe = tokio::spawn(app.client.get(app.url("/readyz")).send());
    scrape_until(&app, "the probe waiting", |text| {
        sample(text, WAITING) >= Some(1.0) && sample(text, "cohort_ingest_db_pool_in_use_connections") == Some(1.0)
    })
    .await;

    // Given the connection, the probe answers and nobody waits any more.
    drop(held);
    assert_eq!(probe.await.unwrap().unwrap().status(), 200);
    scrape_until(&app, "nobody waiting after the probe", |text| sample(text, WAITING) == Some(0.0)).await;
}

/// The sum of the latency histogram of successful exports, in seconds (0 before any).
fn export_latency_sum(text: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with("cohort_ingest_http_request_duration_seconds_sum{"))
        .filter(|line| line.contains(r#"route="/v1/segments/export""#) && line.contains(r#"status="200""#))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn the_latency_of_a_streamed_export_runs_to_the_end_of_its_body() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    const CLIENT_PAUSE: Duration = Duration::from_millis(400);
    const LINE_BYTES: usize = 500; // at least, with an external id of 500 characters
    let app = TestApp::spawn().await;
    app.create_partner("kubit").await;
    let workspace = app.create_workspace("slow reader").await;
    let key = app.create_api_key(workspace, &["segments.read"]).await;
    insert_cohort(&app.pool, workspace, "kubit", "empty", "empty").await;
    // The export must not fit in the sockets, or the server would finish it while the
    // client pauses: the client's receive buffer is pinned small below, and the server's
    // send buffer grows to net.ipv4.tcp_wmem's maximum at most. Twice that, then.
    let send_buffer_max = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|text| text.split_whitespace().last()?.parse::<usize>().ok())
        .unwrap_or(4 << 20);
    let users = 2 * send_buffer_max / LINE_BYTES;
    let external_ids: Vec<Option<String>> = (0..users).map(|n| Some(format!("{n:x>500}"))).collect();
    insert_users(&app.pool, workspace, &external_ids).await;
    let before = export_latency_sum(&scrape_until(&app, "a scrape", |_| true).await);

    // Everyone but the members of an empty cohort: every user.
    let filter =
        json!({"filter": {"cohort": {"partner": "kubit", "op": "does_not_include_value", "cohort_ids": ["empty"]}}});
    let body = filter.to_string();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut stream = socket.connect(app.address.strip_prefix("http://").unwrap().parse().unwrap()).await.unwrap();
    let request = format!(
        "POST /v1/segments/export HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // The head and the first chunk; then the client pauses, and the server with it.
    let mut received = Vec::new();
    while !received.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut buffer = [0; 4096];
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(n > 0, "connection closed before the head: {}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&buffer[..n]);
    }
    assert!(
        received.starts_with(b"HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&received[..received.len().min(200)])
    );
    tokio::time::sleep(CLIENT_PAUSE).await;
    stream.read_to_end(&mut received).await.unwrap();
    // All of it, properly ended (the last chunk of a chunked body).
    assert!(received.len() > users * LINE_BYTES, "{} bytes for {users} users", received.len());
    assert!(received.ends_with(b"\r\n0\r\n\r\n"), "the export did not end cleanly");

    scrape_until(&app, "the export's latency, pause included", |text| {
        export_latency_sum(text) - before >= CLIENT_PAUSE.as_secs_f64()
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Request ids and logs
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_request_id_is_echoed_or_generated_and_reaches_the_import_log() {
    let app = TestApp::spawn().await;
    let given = app.client.get(app.url("/healthz")).header("x-request-id", "trace-me-1").send().await.unwrap();
    assert_eq!(given.headers()["x-request-id"], "trace-me-1");
    let generated = app.client.get(app.url("/nope")).send().await.unwrap();
    let id = generated.headers()["x-request-id"].to_str().unwrap();
    assert!(Uuid::parse_str(id).is_ok(), "{id}");

    // Handlers see the same id: the import log stores the one the response echoes.
    let setup = app.partner_setup("traced").await;
    let import = json!({"partner_api_key": setup.partner_api_key, "client_secret": setup.client_secret,
                        "cohort_id": "c1", "cohort_changes": [{"user_ids": ["u1"]}]});
    let url = app.url("/partners/traced/cohorts/users");
    let mut echoed = Vec::new();
    for given in [Some("import-42"), None] {
        let mut request = app.client.post(&url).json(&import);
        if let Some(id) = given {
            request = request.header("x-request-id", id);
        }
        let response = request.send().await.unwrap();
        echoed.push(response.headers()["x-request-id"].to_str().unwrap().to_owned());
        expect_json(response, 200).await;
    }
    assert_eq!(echoed[0], "import-42");
    let logged: Vec<String> = sqlx::query_scalar("SELECT request_id FROM cohort_imports ORDER BY received_at")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(logged, echoed);
}

thread_local! {
    /// Where the log lines of this thread go while a test captures them.
    static CAPTURED_LOGS: std::cell::RefCell<Option<Arc<Mutex<Vec<u8>>>>> = const { std::cell::RefCell::new(None) };
}

/// Writes to the current thread's capture buffer, if any; else nowhere.
struct ThreadLogWriter;

impl std::io::Write for ThreadLogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        CAPTURED_LOGS.with(|buffer| {
            if let Some(buffer) = &*buffer.borrow() {
                buffer.lock().unwrap().extend_from_slice(bytes);
            }
        });
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures, until dropped, every log line the current thread writes, at TRACE, in the
/// service's JSON format. The subscriber is the process's global one (installed once):
/// a thread-local subscriber would miss events whose call sites other tests, running in
/// parallel, registered first.
fn capture_logs() -> (Arc<Mutex<Vec<u8>>>, impl Drop) {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let subscriber = telemetry::subscriber(LogFormat::Json, "trace".parse().unwrap(), || ThreadLogWriter);
        tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber in the tests");
    });
    struct StopCapture;
    impl Drop for StopCapture {
        fn drop(&mut self) {
            CAPTURED_LOGS.with(|buffer| buffer.borrow_mut().take());
        }
    }
    let buffer = Arc::new(Mutex::new(Vec::new()));
    CAPTURED_LOGS.with(|slot| *slot.borrow_mut() = Some(buffer.clone()));
    (buffer, StopCapture)
}

/// Requests carrying every kind of key (good and bad; in headers and in JSON bodies,
/// well-formed, of the wrong type, or malformed) to every documented operation, with
/// every log line at TRACE captured: no key appears in them. The test runs on a
/// current-thread runtime, so the service it spawns logs on the test's thread. It also
/// checks `LOG_FORMAT=json`: one object a line, with the request span's fields.
#[tokio::test]
async fn no_secret_reaches_the_logs_at_any_level() {
    let (buffer, _capturing) = capture_logs();

    let app = TestApp::spawn().await;
    let fixture = Fixture::create(&app).await;
    let document = fetch_document(&app).await;
    let bad = |prefix: &str| format!("{prefix}{}", Uuid::new_v4().simple());
    let secrets = [
        ADMIN_TOKEN.to_owned(),
        fixture.setup.partner_api_key.clone(),
        fixture.setup.client_secret.clone(),
        fixture.api_key.clone(),
        bad("pak_"),
        bad("dik_"),
        bad("rak_"),
        bad("wrong-admin-token-"),
    ];
    let credential_bodies = |a: &str, b: &str| {
        vec![
            json!({"partner_api_key": a, "client_secret": b}).to_string(),
            json!({"partner_api_key": a, "client_secret": b, "cohort_id": "c1", "name": "n",
                   "created_at": "2026-01-01T00:00:00Z", "cohort_changes": [{"user_ids": ["u1"]}]})
            .to_string(),
            json!({"partner_api_key": [a], "client_secret": {"nested": b}, "cohort_id": 7}).to_string(),
            format!(r#"{{"partner_api_key":"{a}","client_secret":"{b}","cohort_changes":[{{"user_ids":"#),
            format!(r#"{{"partner_api_key":"{a}" "client_secret":"{b}"}}"#),
            format!(r#"{{"partner_api_key":"{a}\u0000","client_secret":"{b}\ud800"}}"#),
        ]
    };

    // Every key as the bearer token (and in another header), with itself as body
    // credentials; then, with the token that opens the route, every body shape with
    // good, bad and crossed credentials.
    let mut requests = 0;
    for operation in operations(&document) {
        let url = app.url(&fixture.path(&operation.path));
        let mut cases: Vec<(&str, String)> = Vec::new();
        for token in &secrets {
            cases.push((token, credential_bodies(token, token).swap_remove(0)));
        }
        if !operation.body_types.is_empty() {
            let opener =
                if operation.security.iter().any(|s| s == app::API_KEY_SCHEME) { &secrets[3] } else { &secrets[0] };
            for (a, b) in [(&secrets[1], &secrets[2]), (&secrets[4], &secrets[5]), (&secrets[0], &secrets[3])] {
                cases.extend(credential_bodies(a, b).into_iter().map(|body| (opener.as_str(), body)));
            }
        }
        for (token, body) in cases {
            let body = if operation.body_types.is_empty() { String::new() } else { body };
            let response = app
                .client
                .request(operation.method.clone(), &url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .header("x-api-key", token)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status();
            assert!(status.as_u16() < 500, "{} {}: {status}", operation.method, operation.path);
            requests += 1;
        }
    }
    // Let background work (key usage bookkeeping) log what it logs.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let logs = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
    assert!(requests > 100, "{requests}");
    assert!(
        logs.lines().count() >= requests,
        "too few log lines ({} for {requests} requests): is the capture working?",
        logs.lines().count()
    );
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "a secret appears in the logs");
        // Nor a recognisable part of it.
        let tail = &secret[secret.len() - 16..];
        assert!(!logs.contains(tail), "part of a secret appears in the logs");
    }
    for line in logs.lines() {
        let object: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(object["level"].is_string(), "{line}");
    }
    let completed: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["message"] == "request completed")
        .collect();
    assert!(completed.len() >= requests);
    let sample = &completed[0];
    for field in ["request_id", "method", "route"] {
        assert!(sample["span"][field].is_string(), "span lacks {field}: {sample}");
    }
    assert!(sample["status"].is_u64(), "{sample}");
}

// ---------------------------------------------------------------------------------------
// Limits and malformed input, on every route
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn every_json_route_answers_413_over_the_body_limit_and_415_when_documented() {
    let app = TestApp::spawn_with(|config| config.body_limit_bytes = 64 * 1024).await;
    let fixture = Fixture::create(&app).await;
    let document = fetch_document(&app).await;
    let json_operations: Vec<Operation> = operations(&document).into_iter().filter(Operation::takes_json).collect();
    assert!(!json_operations.is_empty());
    let oversized =
        fixture.with_body_credentials(json!({"name": "x".repeat(80 * 1024), "users": [], "filter": {}})).to_string();
    for operation in &json_operations {
        let response = fixture
            .request(&app, operation)
            .header("content-type", "application/json")
            .body(oversized.clone())
            .send()
            .await
            .unwrap();
        let context = format!("{} {}", operation.method, operation.path);
        let body = expect_json(response, 413).await;
        assert!(has_error_message(&body), "{context}: {body}");

        // A 415 documented is a 415 given (the partner contract takes any content type).
        let documents_415 = document["paths"][&operation.path][operation.method.as_str().to_lowercase()]["responses"]
            .get("415")
            .is_some();
        if documents_415 {
            let request = fixture.request(&app, operation).header("content-type", "text/plain");
            let response = request.body(fixture.with_body_credentials(json!({})).to_string()).send().await.unwrap();
            let body = expect_json(response, 415).await;
            assert!(has_error_message(&body), "{context}: {body}");
        }
    }
}

/// Whether an error body says what went wrong: `{"message"}`, or Mixpanel's
/// `{"error": {"message"}}` on its webhook.
fn has_error_message(body: &Value) -> bool {
    body["message"].is_string() || body["error"]["message"].is_string()
}

/// Asserts a client error: a 4xx with a JSON `message`.
async fn expect_client_error(response: Response, context: &str) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert!((400..500).contains(&status), "{context}: {status} {text}");
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{context}: not JSON: {text}"));
    assert!(has_error_message(&body), "{context}: {text}");
}

/// Asserts a response that is not a server error, and JSON whenever it is an error.
async fn expect_no_server_error(response: Response, context: &str) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert!(status < 500, "{context}: {status} {text}");
    if status >= 400 {
        let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{context}: not JSON: {text}"));
        assert!(has_error_message(&body), "{context}: {text}");
    }
}

#[tokio::test]
async fn every_json_route_answers_malformed_bodies_with_a_json_4xx() {
    let app = TestApp::spawn().await;
    let fixture = Fixture::create(&app).await;
    let document = fetch_document(&app).await;
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let huge_array = format!("[{}0]", "0,".repeat(400_000));
    let malformed: Vec<(&str, Vec<u8>)> = vec![
        ("empty body", Vec::new()),
        ("truncated", b"{\"name\":".to_vec()),
        ("not JSON", b"hello".to_vec()),
        ("a bare string", b"\"text\"".to_vec()),
        ("a number", b"42".to_vec()),
        ("null", b"null".to_vec()),
        ("deep nesting", deep.into_bytes()),
        ("a huge array", huge_array.into_bytes()),
        ("a raw NUL", b"{\"name\":\"a\0b\"}".to_vec()),
        ("invalid UTF-8", b"{\"name\":\"\xff\xfe\"}".to_vec()),
        ("trailing garbage", b"{} {}".to_vec()),
    ];
    for operation in operations(&document).iter().filter(|o| o.takes_json()) {
        let context = |what: &str| format!("{} {} with {what}", operation.method, operation.path);
        for (what, body) in &malformed {
            let response = fixture
                .request(&app, operation)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            expect_client_error(response, &context(what)).await;
        }
        // Field by field: wrong types, bad strings, duplicates, huge arrays, with valid
        // credentials so the field parsers are reached.
        for (name, schema) in operation.body_properties(&document) {
            let mut cases: Vec<(String, String, bool)> = vec![
                (format!("{name}: a number"), fixture.with_body_credentials(json!({ &name: 12345 })).to_string(), true),
                (
                    format!("{name}: an object"),
                    fixture.with_body_credentials(json!({ &name: {"a": 1} })).to_string(),
                    true,
                ),
                (
                    format!("{name}: a lone surrogate"),
                    format!(
                        r#"{{"{name}": "\ud800", "partner_api_key": "{}", "client_secret": "{}"}}"#,
                        fixture.setup.partner_api_key, fixture.setup.client_secret
                    ),
                    true,
                ),
                (
                    format!("{name}: an escaped NUL"),
                    fixture.with_body_credentials(json!({ &name: "a\u{0}b" })).to_string(),
                    false,
                ),
                (
                    format!("{name}: twice"),
                    format!(
                        r#"{{"{name}": "a", "{name}": "b", "partner_api_key": "{}", "client_secret": "{}"}}"#,
                        fixture.setup.partner_api_key, fixture.setup.client_secret
                    ),
                    false,
                ),
            ];
            if schema["type"] == "array" {
                let many: Vec<&str> = vec!["x"; 150_000];
                cases.push((
                    format!("{name}: a huge array"),
                    fixture.with_body_credentials(json!({ &name: many })).to_string(),
                    false,
                ));
            }
            if schema["type"] == "string" {
                cases[0].2 = true;
            }
            for (what, body, must_be_client_error) in cases {
                let response = fixture
                    .request(&app, operation)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                if must_be_client_error {
                    expect_client_error(response, &context(&what)).await;
                } else {
                    expect_no_server_error(response, &context(&what)).await;
                }
            }
        }
    }
}

/// Arbitrary JSON whose object keys are mostly the document's property names.
fn arbitrary_json(keys: Vec<String>) -> impl Strategy<Value = Value> {
    let key = prop_oneof![4 => proptest::sample::select(keys), 1 => "[a-z_]{1,8}"];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        "[a-z0-9_-]{1,10}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

/// A request body the property test sends.
#[derive(Debug, Clone)]
enum FuzzBody {
    Bytes(Vec<u8>),
    Json { value: Value, with_credentials: bool },
}

/// Arbitrary bytes and arbitrary JSON values to every body-taking route, with valid
/// credentials, on a real database: never a 5xx, always JSON errors.
#[test]
fn property_no_body_makes_any_route_fail_on_the_server() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (app, fixture, document) = runtime.block_on(async {
        let app = TestApp::spawn().await;
        let fixture = Fixture::create(&app).await;
        let document = fetch_document(&app).await;
        (app, fixture, document)
    });
    let targets: Vec<Operation> = operations(&document).into_iter().filter(|o| !o.body_types.is_empty()).collect();
    assert!(!targets.is_empty());
    let body = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256).prop_map(FuzzBody::Bytes),
        (arbitrary_json(property_names(&document)), any::<bool>())
            .prop_map(|(value, with_credentials)| FuzzBody::Json { value, with_credentials }),
    ];
    let strategy = (0..targets.len(), body);
    let config = proptest::test_runner::Config { cases: 160, failure_persistence: None, ..Default::default() };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&strategy, |(index, body)| {
        let operation = &targets[index];
        let bytes = match &body {
            FuzzBody::Bytes(bytes) => bytes.clone(),
            FuzzBody::Json { value, with_credentials: true } => {
                fixture.with_body_credentials(value.clone()).to_string().into_bytes()
            }
            FuzzBody::Json { value, .. } => value.to_string().into_bytes(),
        };
        let content_type = operation.body_types.first().cloned().unwrap_or_else(|| "application/json".into());
        let (status, text) = runtime.block_on(async {
            let response =
                fixture.request(&app, operation).header("content-type", content_type).body(bytes).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        });
        prop_assert!(status < 500, "{} {}: {status} {text}", operation.method, operation.path);
        if status >= 400 {
            let parsed: Result<Value, _> = serde_json::from_str(&text);
            prop_assert!(parsed.is_ok_and(|b| has_error_message(&b)), "{status} not a JSON error: {text}");
        }
        Ok(())
    });
    drop(app);
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

// ---------------------------------------------------------------------------------------
// Database outage
// ---------------------------------------------------------------------------------------

/// A TCP proxy in front of PostgreSQL that a test can break: `cut` closes every proxied
/// connection and refuses new ones (PostgreSQL stopped or unreachable), `stall` stops
/// passing bytes without closing anything (a network black hole), `restore` heals it.
struct DatabaseProxy {
    port: u16,
    state: Arc<Mutex<ProxyState>>,
}

struct ProxyState {
    accepting: bool,
    /// Cancelled to close every connection of the current epoch.
    close: CancellationToken,
    /// Cancelled to stop passing bytes on every connection of the current epoch.
    stall: CancellationToken,
}

impl DatabaseProxy {
    async fn start(upstream: (String, u16)) -> DatabaseProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(ProxyState {
            accepting: true,
            close: CancellationToken::new(),
            stall: CancellationToken::new(),
        }));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (accepting, close, stall) = {
                    let state = shared.lock().unwrap();
                    (state.accepting, state.close.clone(), state.stall.clone())
                };
                if !accepting {
                    continue; // dropped: closed at once
                }
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let forward = async {
                        let mut server = TcpStream::connect(upstream).await?;
                        tokio::io::copy_bidirectional(&mut client, &mut server).await
                    };
                    tokio::select! {
                        biased;
                        () = close.cancelled() => {}
                        // Hold the sockets, pass nothing, until closed.
                        () = stall.cancelled() => close.cancelled().await,
                        _ = forward => {}
                    }
                });
            }
        });
        DatabaseProxy { port, state }
    }

    /// Closes every connection and refuses new ones.
    async fn cut(&self) {
        {
            let mut state = self.state.lock().unwrap();
            state.accepting = false;
            state.close.cancel();
        }
        // Let the forwarding tasks see it before the test sends anything.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    /// Holds every connection, old and new, open without passing a byte: queries hang.
    async fn stall(&self) {
        self.state.lock().unwrap().stall.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    /// Back to normal: connections cut or stalled meanwhile are closed (as after a
    /// network outage), new ones pass.
    fn restore(&self) {
        let mut state = self.state.lock().unwrap();
        state.close.cancel();
        state.close = CancellationToken::new();
        state.stall = CancellationToken::new();
        state.accepting = true;
    }
}

/// The service on a database reached through a [`DatabaseProxy`].
struct ProxiedApp {
    address: String,
    client: reqwest::Client,
    proxy: DatabaseProxy,
    _db: TestDatabase,
}

impl ProxiedApp {
    async fn spawn(request_timeout_secs: u64) -> ProxiedApp {
        let (db, direct) = TestDatabase::create().await;
        direct.close().await;
        let proxy = DatabaseProxy::start((db.options.get_host().to_owned(), db.options.get_port())).await;
        let mut config = Config::defaults();
        config.admin_token = Some(ADMIN_TOKEN.into());
        config.request_timeout_secs = request_timeout_secs;
        config.db_acquire_timeout_secs = 1;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(config.db_acquire_timeout())
            .connect_with(db.options.clone().port(proxy.port))
            .await
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let state = AppState::new(Database::new(pool), config);
        tokio::spawn(async move { axum::serve(listener, app::router(state)).await });
        ProxiedApp { address, client: reqwest::Client::new(), proxy, _db: db }
    }

    async fn get(&self, path: &str) -> Response {
        self.client.get(format!("{}{path}", self.address)).bearer_auth(ADMIN_TOKEN).send().await.unwrap()
    }

    async fn create_workspace(&self) -> Response {
        let url = format!("{}/admin/workspaces", self.address);
        self.client.post(url).bearer_auth(ADMIN_TOKEN).json(&json!({"name": "outage"})).send().await.unwrap()
    }

    /// Asserts the outage answers: 503 JSON with Retry-After, within `within`.
    async fn expect_unavailable(&self, within: Duration) {
        for path in ["/readyz", "/admin/workspaces"] {
            let started = Instant::now();
            let response = self.get(path).await;
            let elapsed = started.elapsed();
            let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(retry_after.as_deref(), Some("1"), "{path}: {}", response.status());
            let body = expect_json(response, 503).await;
            assert!(has_error_message(&body), "{path}: {body}");
            assert!(elapsed <= within, "{path} took {elapsed:?}");
        }
        let response = self.create_workspace().await;
        assert_eq!(response.status(), 503);
    }

    /// Waits for the service to recover by itself, then checks it works.
    async fn expect_recovery(&self) {
        let started = Instant::now();
        while self.get("/readyz").await.status() != 200 {
            assert!(started.elapsed() < Duration::from_secs(10), "no recovery within 10 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        expect_json(self.create_workspace().await, 201).await;
        expect_json(self.get("/admin/workspaces").await, 200).await;
    }
}

#[tokio::test]
async fn a_database_outage_answers_503_quickly_and_the_service_recovers_alone() {
    let app = ProxiedApp::spawn(3).await;
    expect_json(app.create_workspace().await, 201).await;
    assert_eq!(app.get("/readyz").await.status(), 200);

    // PostgreSQL goes away: connections close, new ones are refused. The pool notices
    // at once or within its acquire timeout (1 s), well inside the request timeout.
    app.proxy.cut().await;
    app.expect_unavailable(Duration::from_secs(2)).await;
    app.proxy.restore();
    app.expect_recovery().await;

    // A black hole: nothing answers, nothing closes. The request timeout (3 s) bounds it.
    app.proxy.stall().await;
    app.expect_unavailable(Duration::from_millis(3500)).await;
    app.proxy.restore();
    app.expect_recovery().await;
}

// ---------------------------------------------------------------------------------------
// Graceful shutdown of the real binary
// ---------------------------------------------------------------------------------------

/// The binary, started on a test database; returns it with the address it listens on.
fn start_binary(db: &TestDatabase, shutdown_timeout_secs: u64) -> (std::process::Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cohort-ingest"))
        .env("DATABASE_URL", db.url())
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env("SHUTDOWN_TIMEOUT_SECS", shutdown_timeout_secs.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut lines = stderr.lines();
    let address = loop {
        let line = lines.next().expect("the binary logs before exiting").unwrap();
        let event: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        if event["message"] == "listening" {
            break event["address"].as_str().unwrap().to_owned();
        }
    };
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, format!("http://{address}"))
}

/// A POST whose body arrives in two parts: the request is in flight until `finish`.
fn slow_workspace_post(
    client: &reqwest::Client,
    address: &str,
    name: &str,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<reqwest::Result<Response>>) {
    let (finish, finished) = tokio::sync::oneshot::channel::<()>();
    let body = json!({ "name": name }).to_string();
    let (head, tail) = body.split_at(5);
    let (head, tail) = (head.to_owned(), tail.to_owned());
    let parts = futures::stream::iter([Ok::<_, std::io::Error>(head)]).chain(futures::stream::once(async move {
        let _ = finished.await;
        Ok(tail)
    }));
    let request = client
        .post(format!("{address}/admin/workspaces"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(parts));
    (finish, tokio::spawn(request.send()))
}

/// Waits until the instance at `address` (a process of its own: no other test's
/// requests) counts a request in flight besides the scrape asking, e.g. one whose body
/// is still coming; fails the test if none is within 10 s. Such a request has not
/// reached its handler, so nothing of it shows in PostgreSQL. A scrape counts until its
/// last frame is taken, before its response is sent: never in the next one's count.
async fn wait_until_in_flight(address: &str) {
    // No kept-alive connection: it would be one more for the drain to close.
    let scraper = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scraper.get(format!("{address}/metrics")).send().await.unwrap().text().await.unwrap();
        if sample(&text, cohort_ingest::metrics::HTTP_IN_FLIGHT).is_some_and(|in_flight| in_flight >= 2.0) {
            return;
        }
        assert!(Instant::now() < deadline, "no request in flight within 10 s; last scrape:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn send_sigterm(child: &std::process::Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

async fn wait_for_exit(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(started.elapsed() < within, "the process did not exit within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn workspace_names(pool: &sqlx::PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT name FROM workspaces ORDER BY name").fetch_all(pool).await.unwrap()
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_0() {
    let (db, pool) = TestDatabase::create().await;
    let (mut child, address) = start_binary(&db, 10);
    let client = reqwest::Client::new();
    assert_eq!(client.get(format!("{address}/healthz")).send().await.unwrap().status(), 200);
    let healthcheck = || {
        Command::new(env!("CARGO_BIN_EXE_cohort-ingest"))
            .arg("healthcheck")
            .env("LISTEN_ADDR", address.trim_start_matches("http://"))
            .stderr(Stdio::null())
            .status()
            .unwrap()
    };
    assert!(healthcheck().success(), "the container health check fails on a healthy instance");

    let (finish, in_flight) = slow_workspace_post(&client, &address, "in flight at SIGTERM");
    wait_until_in_flight(&address).await;
    send_sigterm(&child);
    // No new connections once draining…
    let host = address.trim_start_matches("http://");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(host).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting 10 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // …but the request in flight completes.
    finish.send(()).unwrap();
    let response = in_flight.await.unwrap().unwrap();
    expect_json(response, 201).await;
    let status = wait_for_exit(&mut child, Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0));
    assert_eq!(workspace_names(&pool).await, ["in flight at SIGTERM"]);
    assert!(!healthcheck().success(), "the health check passes with no instance");
    pool.close().await;
}

#[tokio::test]
async fn the_drain_is_bounded_by_the_shutdown_timeout_and_applies_nothing_half_done() {
    let (db, pool) = TestDatabase::create().await;
    let (mut child, address) = start_binary(&db, 1);
    let client = reqwest::Client::new();
    let (_never_finished, stuck) = slow_workspace_post(&client, &address, "never completed");
    wait_until_in_flight(&address).await;
    let started = Instant::now();
    send_sigterm(&child);
    let status = wait_for_exit(&mut child, Duration::from_secs(8)).await;
    assert_eq!(status.code(), Some(0));
    assert!(started.elapsed() >= Duration::from_millis(900), "exited before the shutdown timeout");
    assert!(stuck.await.unwrap().is_err(), "the stuck request got an answer");
    assert!(workspace_names(&pool).await.is_empty());
    pool.close().await;
}

// ---------------------------------------------------------------------------------------
// Partner rate limit
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_partner_rate_limit_answers_429_per_data_import_key() {
    let app = TestApp::spawn_with(|config| config.partner_rate_limit = 2).await;
    let setup = app.partner_setup("limited").await;
    let second_key = app.create_data_import_key(setup.workspace, "limited").await;
    let post = |client_secret: &str| {
        let body = json!({"partner_api_key": setup.partner_api_key, "client_secret": client_secret,
                          "cohort_id": "c1", "cohort_changes": []});
        app.client.post(app.url("/partners/limited/cohorts/users")).json(&body).send()
    };
    // A burst of `rate` requests passes…
    for _ in 0..2 {
        assert_eq!(post(&setup.client_secret).await.unwrap().status(), 200);
    }
    // …the next one in the same second is refused, with a hint when to retry…
    let refused = post(&setup.client_secret).await.unwrap();
    assert_eq!(refused.headers()["retry-after"], "1");
    expect_error(refused, 429, "rate limit exceeded for this client_secret, retry later").await;
    // …while another data import key has its own allowance…
    assert_eq!(post(&second_key).await.unwrap().status(), 200);
    // …and bad credentials are still told so (the limit counts authenticated requests).
    expect_error(post("dik_wrong").await.unwrap(), 401, "Invalid client secret").await;
    // The allowance comes back.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(post(&setup.client_secret).await.unwrap().status(), 200);
}

#[tokio::test]
async fn without_a_partner_rate_limit_bursts_pass() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("unlimited").await;
    let body = json!({"partner_api_key": setup.partner_api_key, "client_secret": setup.client_secret,
                      "cohort_id": "c1", "cohort_changes": []});
    for _ in 0..20 {
        let response = app.client.post(app.url("/partners/unlimited/cohorts/users")).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
}

// ---------------------------------------------------------------------------------------
// README
// ---------------------------------------------------------------------------------------

/// The README's configuration table has a row per flag, with its environment variable
/// and default, and no row for a flag that does not exist.
#[test]
fn readme_configuration_table_matches_the_flags() {
    use clap::CommandFactory;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let rows: Vec<&str> = readme.lines().filter(|line| line.starts_with("| `--")).collect();
    let mut flags = 0;
    for arg in Cli::command().get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        flags += 1;
        let row = rows
            .iter()
            .find(|row| row.starts_with(&format!("| `--{long}` |")))
            .unwrap_or_else(|| panic!("README's configuration table lacks --{long}"));
        if let Some(env) = arg.get_env() {
            assert!(row.contains(&format!("`{}`", env.to_string_lossy())), "--{long}: wrong variable in {row}");
        }
        for default in arg.get_default_values() {
            assert!(row.contains(&*default.to_string_lossy()), "--{long}: default {default:?} not in {row}");
        }
    }
    assert_eq!(rows.len(), flags, "README lists a flag that does not exist");
}
