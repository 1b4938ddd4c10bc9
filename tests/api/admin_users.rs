//! The user store over HTTP: batch upsert, NDJSON import, lookup, identify, delete.

use reqwest::{Method, Response};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, assert_bitmaps_match_memberships, expect_error, expect_json};

fn users_path(ws: Uuid, rest: &str) -> String {
    format!("/admin/workspaces/{ws}/users{rest}")
}

async fn batch(app: &TestApp, ws: Uuid, users: Value) -> Value {
    expect_json(app.admin_post(&users_path(ws, "/batch"), &json!({ "users": users })).await, 200).await
}

async fn lookup(app: &TestApp, ws: Uuid, query: &str) -> Response {
    app.admin_get(&users_path(ws, &format!("?{query}"))).await
}

async fn profile(app: &TestApp, ws: Uuid, query: &str) -> Value {
    expect_json(lookup(app, ws, query).await, 200).await
}

async fn import(app: &TestApp, ws: Uuid, body: String) -> Response {
    app.admin(Method::POST, &users_path(ws, "/import"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn count(app: &TestApp, table: &str) -> i64 {
    let sql = match table {
        "users" => "SELECT count(*) FROM users",
        "user_aliases" => "SELECT count(*) FROM user_aliases",
        "user_device_ids" => "SELECT count(*) FROM user_device_ids",
        "cohort_memberships" => "SELECT count(*) FROM cohort_memberships",
        other => panic!("no count for {other}"),
    };
    sqlx::query_scalar(sql).fetch_one(&app.pool).await.unwrap()
}

fn statuses(response: &Value) -> Vec<&str> {
    response["results"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn batch_matches_by_external_id_then_alias_then_device_id_and_merges() {
    let app = TestApp::spawn().await;
    let ws = app.create_workspace("acme").await;
    let seeded = batch(
        &app,
        ws,
        json!([
            { "external_id": "e1" },
            { "aliases": [{ "alias_label": "amp", "alias_name": "a1" }] },
            { "device_ids": ["d1"] },
        ]),
    )
    .await;
    assert_eq!(statuses(&seeded), ["created", "created", "created"]);
    let [a, b, c] = [0, 1, 2].map(|i| seeded["results"][i]["braze_id"].as_str().unwrap().to_owned());

    let response = batch(
        &app,
        ws,
        json!([
            // By external id, although the device id is new.
            { "external_id": "e1", "device_ids": ["d9"] },
            // By alias: the anonymous user gains the external id and the device id.
            { "external_id": "e2", "aliases": [{ "alias_label": "amp", "alias_name": "a1" }], "device_ids": ["d8"] },
            // By device id, gaining an alias.
            { "aliases": [{ "alias_label": "amp", "alias_name": "a3" }], "device_ids": ["d1"] },
            // Nothing matches: a new anonymous user.
            { "device_ids": ["d7"] },
        ]),
    )
    .await;
    assert_eq!(statuses(&response), ["updated", "updated", "updated", "created"]);
    assert_eq!(response["results"][0]["braze_id"], a.as_str());
    assert_eq!(response["results"][1]["braze_id"], b.as_str());
    assert_eq!(response["results"][2]["braze_id"], c.as_str());
    assert_eq!(
        (response["created"].as_u64(), response["updated"].as_u64(), response["failed"].as_u64()),
        (Some(1), Some(3), Some(0))
    );
    assert!(response["results"][0].get("error").is_none());

    let merged = profile(&app, ws, "external_id=e2").await;
    assert_eq!(merged["braze_id"], b.as_str());
    assert_eq!(merged["aliases"], json!([{ "alias_label": "amp", "alias_name": "a1" }]));
    assert_eq!(merged["device_ids"], json!(["d8"]));
    assert_eq!(profile(&app, ws, "device_id=d9").await["external_id"], "e1");
    let anonymous = profile(&app, ws, "alias_label=amp&alias_name=a3").await;
    assert_eq!(anonymous["braze_id"], c.as_str());
    assert_eq!(anonymous["external_id"], Value::Null);
    assert_eq!(anonymous["device_ids"], json!(["d1"]));
    assert_eq!(count(&app, "users").await, 4);
}

#[tokio::test]
async fn conflicting_items_fail_alone_and_change_nothing() {
    let app = TestApp::spawn().await;
    let ws = app.create_workspace("acme").await;
    let seeded =
        batch(&app, ws, json!([{ "external_id": "e1", "device_ids": ["d1"] }, { "device_ids": ["d2"] }])).await;
    let first = seeded["results"][0]["braze_id"].as_str().unwrap().to_owned();
    let second = seeded["results"][1]["braze_id"].as_str().unwrap().to_owned();

    let response = batch(
        &app,
        ws,
        json!([
            // Matches the first user by external id; d2 is the second user's.
            { "external_id": "e1", "device_ids": ["d3", "d2"] },
            // Matches the first user by device id, which already has external id e1.
            { "external_id": "e9", "device_ids": ["d1"], "aliases": [{ "alias_label": "l", "alias_name": "n" }] },
            // Still applies.
            { "external_id": "e5" },
        ]),
    )
    .await;
    assert_eq!(statuses(&response), ["error", "error", "created"]);
    assert_eq!(response["results"][0]["braze_id"], Value::Null);
    assert_eq!(response["results"][0]["error"], format!("device_ids[1] belongs to another user ({second})"));
    assert_eq!(
        response["results"][1]["error"],
        format!("external_id conflicts: the matched user {first} already has a different external_id")
    );
    assert_eq!(response["failed"], 2);
    assert_eq!(response["created"], 1);

    // Nothing of the failed items was stored.
    expect_error(lookup(&app, ws, "device_id=d3").await, 404, "no user matches the lookup").await;
    expect_error(lookup(&app, ws, "external_id=e9").await, 404, "no user matches the lookup").await;
    expect_error(lookup(&app, ws, "alias_label=l&alias_name=n").await, 404, "no user matches the lookup").await;
    assert_eq!(profile(&app, ws, "device_id=d2").await["braze_id"], second.as_str());
    assert_eq!(count(&app, "users").await, 3);
}

#[tokio::test]
async fn later_items_see_earlier_items() {
    let app = TestApp::spawn().await;
    let ws = app.create_workspace("acme").await;
    let response = batch(
        &app,
        ws,
        json!([
            { "device_ids": ["d1"] },
            { "external_id": "e1", "device_ids": ["d1"] },
            { "external_id": "e1", "aliases": [{ "alias_label": "l", "alias_name": "n" }] },
            // The alias now belongs to e1's user.
            { "external_id": "e2", "aliases": [{ "alias_label": "l", "alias_name": "n" }] },
        ]),
    )
    .await;
    assert_eq!(statuses(&response), ["created", "updated", "updated", "error"]);
    let braze_id = &response["results"][0]["braze_id"];
    assert_eq!(&response["results"][1]["braze_id"], braze_id);
    assert_eq!(&response["results"][2]["braze_id"], braze_id);
    let stored = profile(&app, ws, "external_id=e1").await;
    assert_eq!(&stored["braze_id"], braze_id);
    assert_eq!(stored["device_ids"], json!(["d1"]));
    assert_eq!(stored["aliases"], json!([{ "alias_label": "l", "alias_name": "n" }]));
}

#[tokio::test]
async fn over_the_batch_limit_is_refused_whole() {
    let app = TestApp::spawn().await;
    let ws = app.create_workspace("acme").await;
    let users: Vec<Value> = (0..10_001).map(|i| json!({ "external_id": format!("u{i}") })).collect();
    let response = app.admin_post(&users_path(ws, "/batch"), &json!({ "users": users })).await;
    expect_error(response, 400, "users must hold at most 10000 items (got 10001)").await;
    assert_eq!(count(&app, "users").await, 0);
}

#[tokio::test]
async fn invalid_identifiers_are_400_naming_the_field_and_store_nothing() {
    let app = TestApp::spawn().await;
    let ws = app.create_workspace("acme").await;
    let long = "x".repeat(513);
    let cases = [
        (
            json!({ "aliases": [{ "alias_label": "l", "alias_name": long }] }),
            "users[3].aliases[0].alias_name must be at most 512 bytes",
        ),
        (json!({ "external_id": "a\u{0}b" }), "users[3].external_id must not contain NUL characters"),
        (json!({ "device_ids": ["ok", ""] }), "users[3].device_ids[1] must be a non-empty string"),
        (
            json!({ "aliases": [{ "alias_label": long, "alias_name": "n" }] }),
            "users[3].aliases[0].alias_label must be at most 512 bytes",
        ),
        (json!({}), "users[3] must have an external_id, an alias or a device_id"),
    ];
    for (bad, message) in cases {
        let users = json!([{ "external_id": "e0" }, { "device_ids": ["d1"] }, { "external_id": "e2" }, bad]);
        let response = app.admin_post(&users_path(ws, "/batch"), &json!({ "users": users })).await;
        expect_error(response, 400, message).await;
    }
    let response = app.admin_post(&users_path(ws, "/batch"), &json!({ "users": [{ "external_id": 5 }] })).await;
    assert_eq!(response.status(), 400);
    assert_eq!(count(&app, "users").await, 0);

    // The same limits on lookups and identify.
    expect_error(lookup(&app, ws, "external_id=a%00b").await, 400, "external_id must not contain NUL characters").await;
    let query = format!("device_id={long}");
    expect_error(lookup(&app, ws, &query).await, 400, "device_id must be at most 512 bytes").await;
    let path = users_path(ws, &format!("/{}/identify", Uuid::new_v4()));
    let response = app.admin_post(&path, &json!({ "external_id": long })).await;
    expect_error(response, 400, "external_id must be at most 512 bytes").await;
}

#[tokio::test]
async fn lookup_by_each_identifier_and_braze_id() {
    let app = TestApp::spawn().await;
    let ws = app.create_workspace("acme").await;
    let response = batch(
        &app,
        ws,
        json!([{
            "external_id": "e1",
            "aliases": [{ "alias_label": "z", "alias_name": "n" }, { "alias_label": "a", "alias_name": "n" }],
            "device_ids": ["d2", "d1"],
        }]),
    )
    .await;
    let braze_id = response["results"][0]["braze_id"].as_str().unwrap().to_owned();

    let by_braze_id = expect_json(app.admin_get(&users_path(ws, &format!("/{braze_id}"))).await, 200).await;
    assert_eq!(by_braze_id["braze_id"], braze_id.as_str());
    assert_eq!(by_braze_id["external_id"], "e1");
    assert_eq!(
        by_braze_id["aliases"],
        json!([{ "alias_label": "a", "alias_name": "n" }, { "alias_label": "z", "alias_name": "n" }])
    );
    assert_eq!(by_braze_id["device_ids"], json!(["d1", "d2"]));
    assert_eq!(by_braze_id["cohorts"], json!([]));
    assert!(by_braze_id["created_at"].is_string());
    for query in ["external_id=e1", "device_id=d2", "alias_label=z&alias_name=n"] {
        assert_eq!(profile(&app, ws, query).await, by_braze_id, "{query}");
    }

    for query in ["external_id=e2", "device_id=d3", "alias_label=z&alias_name=m"] {
        expect_error(lookup(&app, ws, query).await, 404, "no user matches the lookup").await;
    }
    let unknown = Uuid::new_v4();
    expect_error(app.admin_get(&users_path(ws, &format!("/{unknown}"))).await, 404, &format!("unknown user {unknown}"))
        .await;
    // Another workspace does not see the user.
    let other = app.create_workspace("other").await;
    expect_error(lookup(&app, other, "external_id=e1").await, 404, "no user matches the lookup").await;

    let none = "give one of the query parameters external_id, device_id, or alias_label with alias_name";
    expect_error(app.admin_get(&users_path(ws, "")).await, 400, none).await;
    let ambiguous = "give exactly one of the query parameters external_id, device_id, or alias_label with alias_name";
    for query in ["external_id=e1&device_id=d1", "alias_label=z", "alias_name=n&external_id=e1"] {
        expect_error(lookup(&app, ws, query).await, 400, ambiguous).await;
    }
}

#[tokio::test]
async fn ndjson_import_reports_bad_lines_by_number_and_loads_the_rest() {
    let app = TestApp::spawn().await;
    let ws = app.create_workspace("acme").await;
    batch(&app, ws, json!([{ "external_id": "taken", "device_ids": ["dt"] }])).await;
    let body = [
        r#"{"external_id":"u1","device_ids":["d1"]}"#,
        r#"{"aliases":[{"alias_label":"l","alias_name":"n2"}]}"#,
        r#"{"external_id": "u3", oops"#,
        "",
        r#"{"external_id":"u1","aliases":[{"alias_label":"l","alias_name":"n1"}]}"#,
        r#"{"external_id":"u1","device_ids":["dt"]}"#,
        r#"{"external_id":"u7","device_id":"typo"}"#,
        r#"{"device_ids":["d8"]}"#,
    ]
    .join("\n");
    let summary = expect_json(import(&app, ws, body).await, 200).await;
    assert_eq!(
        (summary["created"].as_u64(), summary["updated"].as_u64(), summary["failed"].as_u64()),
        (Some(3), Some(1), Some(3))
    );
    let errors = summary["errors"].as_array().unwrap();
    assert_eq!(errors.iter().map(|e| e["line"].as_u64().unwrap()).collect::<Vec<_>>(), [3, 6, 7]);
    assert!(errors[0]["message"].as_str().unwrap().starts_with("invalid JSON:"), "{summary}");
    assert!(errors[1]["message"].as_str().unwrap().starts_with("device_ids[0] belongs to another user"), "{summary}");
    assert!(errors[2]["message"].as_str().unwrap().contains("unknown field `device_id`"), "{summary}");

    let u1 = profile(&app, ws, "external_id=u1").await;
    assert_eq!(u1["device_ids"], json!(["d1"]));
    assert_eq!(u1["aliases"], json!([{ "alias_label": "l", "alias_name": "n1" }]));
    assert_eq!(profile(&app, ws, "device_id=d8").await["external_id"], Value::Null);
    profile(&app, ws, "alias_label=l&alias_name=n2").await;
    assert_eq!(count(&app, "users").await, 4);
}

/// A first load (the workspace has no users) looks up only what it wrote itself: later
/// chunks must still find the users, aliases and device ids of earlier ones.
#[tokio::test]
async fn first_load_finds_what_its_earlier_chunks_wrote() {
    let app = TestApp::spawn().await;
    let ws = app.create_workspace("acme").await;
    let mut lines = vec![
        r#"{"external_id":"a","aliases":[{"alias_label":"l","alias_name":"a-alias"}]}"#.to_string(),
        r#"{"device_ids":["d-anon"]}"#.into(),
        r#"{"external_id":"c"}"#.into(),
    ];
    // The import upserts 10,000 lines at a time: these push the rest into a second chunk.
    lines.extend((0..10_000).map(|i| format!(r#"{{"external_id":"filler-{i}"}}"#)));
    lines.extend([
        // By alias to user a, giving it a device id.
        r#"{"aliases":[{"alias_label":"l","alias_name":"a-alias"}],"device_ids":["d-a"]}"#.into(),
        // By device id to the anonymous user, which becomes b.
        r#"{"external_id":"b","device_ids":["d-anon"]}"#.into(),
        // c is user c, and a's alias is not its to take.
        r#"{"external_id":"c","aliases":[{"alias_label":"l","alias_name":"a-alias"}]}"#.to_string(),
        r#"{"external_id":"a"}"#.into(),
    ]);
    let summary = expect_json(import(&app, ws, lines.join("\n")).await, 200).await;
    assert_eq!(
        (summary["created"].as_u64(), summary["updated"].as_u64(), summary["failed"].as_u64()),
        (Some(10_003), Some(3), Some(1)),
        "{summary}"
    );
    assert_eq!(summary["errors"][0]["line"], 10_006);
    assert!(summary["errors"][0]["message"].as_str().unwrap().starts_with("aliases[0] belongs to another user"));
    let a = profile(&app, ws, "external_id=a").await;
    assert_eq!(a["aliases"], json!([{ "alias_label": "l", "alias_name": "a-alias" }]));
    assert_eq!(a["device_ids"], json!(["d-a"]));
    assert_eq!(profile(&app, ws, "device_id=d-anon").await["external_id"], "b");
    assert_eq!(profile(&app, ws, "external_id=c").await["aliases"], json!([]));
    assert_eq!(count(&app, "users").await, 10_003);
}

/// The import writes with COPY's text format, where a backslash, a tab, a newline or a
/// carriage return would otherwise end a field or a row, and `\\N` would be NULL.
#[tokio::test]
async fn ndjson_import_stores_identifiers_byte_for_byte() {
    let app = TestApp::spawn().await;
    let ws = app.create_workspace("acme").await;
    let awkward = "a\\b\tc\nd\re \\N é";
    let line = json!({
        "external_id": awkward,
        "aliases": [{ "alias_label": "\\N", "alias_name": awkward }],
        "device_ids": [format!("{awkward}-device")],
    });
    let summary = expect_json(import(&app, ws, format!("{line}\n")).await, 200).await;
    assert_eq!(summary["created"], 1, "{summary}");
    let stored: (String, String, String, String) = sqlx::query_as(
        "SELECT u.external_id, a.alias_label, a.alias_name, d.device_id
           FROM users u
             JOIN user_aliases a ON a.workspace_id = u.workspace_id AND a.user_id = u.id
             JOIN user_device_ids d ON d.workspace_id = u.workspace_id AND d.user_id = u.id",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(stored, (awkward.into(), "\\N".into(), awkward.into(), format!("{awkward}-device")));
}

#[tokio::test]
async fn ndjson_import_lists_at_most_100_errors() {
    let app = TestApp::spawn().await;
    let ws = app.create_workspace("acme").await;
    let mut lines: Vec<String> = (0..150).map(|i| format!("not json {i}")).collect();
    lines.extend((0..5).map(|i| format!(r#"{{"external_id":"u{i}"}}"#)));
    let summary = expect_json(import(&app, ws, lines.join("\n") + "\n").await, 200).await;
    assert_eq!(summary["failed"], 150);
    assert_eq!(summary["created"], 5);
    let errors = summary["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 100);
    assert_eq!(errors[0]["line"], 1);
    assert_eq!(errors[99]["line"], 100);
    assert_eq!(count(&app, "users").await, 5);
}

#[tokio::test]
async fn ndjson_import_enforces_its_content_type_and_body_limit() {
    let app = TestApp::spawn_with(|config| config.import_body_limit_bytes = 1000).await;
    let ws = app.create_workspace("acme").await;
    let response = app
        .admin(Method::POST, &users_path(ws, "/import"))
        .header("content-type", "application/json")
        .body(r#"{"external_id":"u1"}"#)
        .send()
        .await
        .unwrap();
    expect_error(response, 415, "expected a request body with Content-Type: application/x-ndjson").await;

    let line = |i: usize| format!("{{\"external_id\":\"user-{i:05}\"}}\n");
    let too_large = "request body is larger than the import limit of 1000 bytes";
    // Declared too large up front.
    let body: String = (0..100).map(line).collect();
    expect_error(import(&app, ws, body).await, 413, too_large).await;
    // Streamed without a length: refused when the limit is crossed, and the lines
    // already upserted are rolled back.
    let pieces: Vec<Result<String, std::io::Error>> = (0..100).map(|i| Ok(line(i))).collect();
    let response = app
        .admin(Method::POST, &users_path(ws, "/import"))
        .header("content-type", "application/x-ndjson")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(pieces)))
        .send()
        .await
        .unwrap();
    expect_error(response, 413, too_large).await;
    assert_eq!(count(&app, "users").await, 0);

    // Under the limit, fine.
    let summary = expect_json(import(&app, ws, (0..10).map(line).collect()).await, 200).await;
    assert_eq!(summary["created"], 10);
    // And the JSON body limit does not apply: a 3 MiB import is accepted.
    let app = TestApp::spawn().await;
    let ws = app.create_workspace("acme").await;
    let body: String = (0..120_000).map(line).collect();
    assert!(body.len() > 3 * 1024 * 1024);
    let summary = expect_json(import(&app, ws, body).await, 200).await;
    assert_eq!(summary["created"], 120_000);
}

#[tokio::test]
async fn identify_gives_an_anonymous_user_its_external_id() {
    let app = TestApp::spawn().await;
    let ws = app.create_workspace("acme").await;
    let seeded =
        batch(&app, ws, json!([{ "device_ids": ["d1"] }, { "device_ids": ["d2"] }, { "external_id": "e3" }])).await;
    let [first, second, third] = [0, 1, 2].map(|i| seeded["results"][i]["braze_id"].as_str().unwrap().to_owned());
    let app = &app;
    let identify = |braze_id: &str, external_id: &str| {
        let path = users_path(ws, &format!("/{braze_id}/identify"));
        let body = json!({ "external_id": external_id });
        async move { app.admin_post(&path, &body).await }
    };

    let identified = expect_json(identify(&first, "e1").await, 200).await;
    assert_eq!(identified["braze_id"], first.as_str());
    assert_eq!(identified["external_id"], "e1");
    assert_eq!(identified["device_ids"], json!(["d1"]));
    assert_eq!(profile(app, ws, "external_id=e1").await["braze_id"], first.as_str());
    // The same external id again: no change.
    assert_eq!(expect_json(identify(&first, "e1").await, 200).await, identified);

    expect_error(identify(&first, "e9").await, 409, &format!("user {first} already has a different external_id")).await;
    expect_error(identify(&second, "e3").await, 409, &format!("external_id already belongs to another user ({third})"))
        .await;
    assert_eq!(profile(app, ws, "device_id=d2").await["external_id"], Value::Null);
    let unknown = Uuid::new_v4();
    expect_error(identify(&unknown.to_string(), "e4").await, 404, &format!("unknown user {unknown}")).await;

    // An upsert now matches the identified user by its external id.
    let response = batch(app, ws, json!([{ "external_id": "e1", "device_ids": ["d5"] }])).await;
    assert_eq!(response["results"][0]["braze_id"], first.as_str());
}

#[tokio::test]
async fn delete_removes_identifiers_and_memberships_and_fixes_member_counts() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("kubit").await;
    let ws = setup.workspace;
    let seeded = batch(
        &app,
        ws,
        json!([
            { "external_id": "e1", "aliases": [{ "alias_label": "l", "alias_name": "n" }], "device_ids": ["d1"] },
            { "external_id": "e2" },
        ]),
    )
    .await;
    let gone = seeded["results"][0]["braze_id"].as_str().unwrap().to_owned();
    let kept = seeded["results"][1]["braze_id"].as_str().unwrap().to_owned();

    // Two cohorts: both users in the first, the deleted one alone in the second.
    for (cohort_id, members) in [("c1", json!(["e1", "e2"])), ("c2", json!(["e1"]))] {
        let body = json!({ "partner_api_key": setup.partner_api_key, "client_secret": setup.client_secret,
            "cohort_id": cohort_id, "cohort_changes": [{ "user_ids": members }] });
        let response = app.client.post(app.url("/partners/kubit/cohorts/users")).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let listed = profile(&app, ws, "external_id=e1").await["cohorts"].clone();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(listed[0]["partner"], "kubit");
    assert_eq!(listed[0]["cohort_id"], "c1");
    assert_eq!(listed[0]["name"], "c1");
    assert!(listed[0]["added_at"].is_string());

    let response = app.admin_delete(&users_path(ws, &format!("/{gone}"))).await;
    assert_eq!(response.status(), 204);

    expect_error(app.admin_get(&users_path(ws, &format!("/{gone}"))).await, 404, &format!("unknown user {gone}")).await;
    for query in ["external_id=e1", "device_id=d1", "alias_label=l&alias_name=n"] {
        expect_error(lookup(&app, ws, query).await, 404, "no user matches the lookup").await;
    }
    assert_eq!(count(&app, "user_aliases").await, 0);
    assert_eq!(count(&app, "user_device_ids").await, 0);
    assert_eq!(count(&app, "cohort_memberships").await, 1);
    let counts: Vec<i64> =
        sqlx::query_scalar("SELECT member_count FROM cohorts WHERE workspace_id = $1 ORDER BY cohort_id")
            .bind(ws)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(counts, [1, 0]);
    assert_bitmaps_match_memberships(&app.pool).await;
    assert_eq!(profile(&app, ws, "external_id=e2").await["braze_id"], kept.as_str());

    expect_error(app.admin_delete(&users_path(ws, &format!("/{gone}"))).await, 404, &format!("unknown user {gone}"))
        .await;
    // The freed identifiers can be used again.
    let response = batch(&app, ws, json!([{ "external_id": "e1", "device_ids": ["d1"] }])).await;
    assert_eq!(statuses(&response), ["created"]);
}

#[tokio::test]
async fn unknown_workspace_is_404_everywhere() {
    let app = TestApp::spawn().await;
    let ws = Uuid::new_v4();
    let user = Uuid::new_v4();
    let message = format!("unknown workspace {ws}");
    let batch = app.admin_post(&users_path(ws, "/batch"), &json!({ "users": [{ "external_id": "e" }] })).await;
    expect_error(batch, 404, &message).await;
    expect_error(import(&app, ws, "{\"external_id\":\"e\"}\n".into()).await, 404, &message).await;
    expect_error(lookup(&app, ws, "external_id=e").await, 404, &message).await;
    expect_error(app.admin_get(&users_path(ws, &format!("/{user}"))).await, 404, &message).await;
    let identify = app.admin_post(&users_path(ws, &format!("/{user}/identify")), &json!({ "external_id": "e" })).await;
    expect_error(identify, 404, &message).await;
    expect_error(app.admin_delete(&users_path(ws, &format!("/{user}"))).await, 404, &message).await;
    assert_eq!(count(&app, "users").await, 0);
}

#[tokio::test]
async fn the_schema_has_no_trigger_sequence_or_identity_that_citus_refuses() {
    let app = TestApp::spawn().await;
    let ws = app.create_workspace("acme").await;
    batch(&app, ws, json!([{ "external_id": "e1", "device_ids": ["d1"] }])).await;
    // Foreign keys make internal triggers; anything else would not run on Citus's shards.
    let triggers: Vec<String> = sqlx::query_scalar(
        "SELECT tgname::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
          WHERE NOT t.tgisinternal AND c.relnamespace = 'public'::regnamespace",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(triggers, Vec::<String>::new());
    let sequences: Vec<String> = sqlx::query_scalar(
        "SELECT relname::text FROM pg_class WHERE relkind = 'S' AND relnamespace = 'public'::regnamespace",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(sequences, Vec::<String>::new(), "a sequence (serial or identity column)");
    // Every workspace table leads its primary key with workspace_id.
    let not_led: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE k.contype = 'p' AND n.nspname = 'public' AND c.relkind = 'r' AND c.relname NOT IN ('workspaces', 'partners', 'partner_api_keys', '_sqlx_migrations')
            AND (SELECT attname FROM pg_attribute WHERE attrelid = c.oid AND attnum = k.conkey[1]) <> 'workspace_id'
          ORDER BY 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(not_led, Vec::<String>::new());
}
