//! The partner cohort-import endpoints (Braze partner contract) and the operator's view
//! of cohorts: authentication, validation, identity resolution, memberships, the log.

use cohort_ingest::store::locks::{WorkspaceLock, lock_workspace};
use reqwest::Response;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    ADMIN_TOKEN, PartnerSetup, TestApp, assert_bitmaps_match_memberships, expect_error, expect_json, wait_for_backend,
};

/// A backend blocked on an advisory lock: where a user deletion holds the workspace lock,
/// an import waiting for it (the service's only advisory locks are the workspace locks).
const ADVISORY_LOCK_WAIT: &str = "wait_event_type = 'Lock' AND wait_event = 'advisory'";

const SHAPE_MESSAGE: &str = "cohort_changes must be an array of objects each with key user_ids and/or device_ids mapping to an array of strings, or an aliases object";

// ---- fixtures ---------------------------------------------------------------------

/// Creates a user through the user store's batch endpoint (the import never creates
/// users); returns its internal id, which memberships reference.
async fn add_user(
    app: &TestApp,
    ws: Uuid,
    external_id: Option<&str>,
    aliases: &[(&str, &str)],
    devices: &[&str],
) -> i64 {
    let braze_id = add_user_profile(app, ws, external_id, aliases, devices).await;
    sqlx::query_scalar("SELECT id FROM users WHERE workspace_id = $1 AND braze_id = $2")
        .bind(ws)
        .bind(braze_id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// Creates a user through `POST /admin/workspaces/{ws}/users/batch`; returns its braze_id.
async fn add_user_profile(
    app: &TestApp,
    ws: Uuid,
    external_id: Option<&str>,
    aliases: &[(&str, &str)],
    devices: &[&str],
) -> Uuid {
    let aliases: Vec<Value> =
        aliases.iter().map(|(label, name)| json!({ "alias_label": label, "alias_name": name })).collect();
    let mut profile = json!({ "aliases": aliases, "device_ids": devices });
    if let Some(external_id) = external_id {
        profile["external_id"] = json!(external_id);
    }
    let path = format!("/admin/workspaces/{ws}/users/batch");
    let body = expect_json(app.admin_post(&path, &json!({ "users": [profile] })).await, 200).await;
    assert_eq!(body["results"][0]["status"], "created", "{body}");
    body["results"][0]["braze_id"].as_str().unwrap().parse().unwrap()
}

/// Identified users with external ids `{prefix}0..{prefix}{n-1}`, in one batch; their
/// internal ids in that order.
async fn add_identified(app: &TestApp, ws: Uuid, prefix: &str, n: usize) -> Vec<i64> {
    let users: Vec<Value> = (0..n).map(|i| json!({ "external_id": format!("{prefix}{i}") })).collect();
    let path = format!("/admin/workspaces/{ws}/users/batch");
    let body = expect_json(app.admin_post(&path, &json!({ "users": users })).await, 200).await;
    assert_eq!(body["created"], n, "{body}");
    let external_ids: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let ids: Vec<(String, i64)> =
        sqlx::query_as("SELECT external_id, id FROM users WHERE workspace_id = $1 AND external_id = ANY($2)")
            .bind(ws)
            .bind(&external_ids)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let by_external_id: std::collections::HashMap<String, i64> = ids.into_iter().collect();
    external_ids.iter().map(|e| by_external_id[e]).collect()
}

async fn post_users(app: &TestApp, setup: &PartnerSetup, cohort_id: &str, changes: Value) -> Response {
    let body = json!({
        "partner_api_key": setup.partner_api_key,
        "client_secret": setup.client_secret,
        "cohort_id": cohort_id,
        "cohort_changes": changes,
    });
    post_raw(app, &setup.partner, "cohorts/users", &body).await
}

async fn post_name(app: &TestApp, setup: &PartnerSetup, cohort_id: &str, name: &str) -> Response {
    let body = json!({
        "partner_api_key": setup.partner_api_key,
        "client_secret": setup.client_secret,
        "cohort_id": cohort_id,
        "name": name,
        "created_at": "2024-03-01T12:00:00.000Z",
    });
    post_raw(app, &setup.partner, "cohorts", &body).await
}

async fn post_raw(app: &TestApp, partner: &str, route: &str, body: &Value) -> Response {
    app.client.post(app.url(&format!("/partners/{partner}/{route}"))).json(body).send().await.unwrap()
}

/// Asserts a users response's counts.
async fn expect_counts(response: Response, added: u64, removed: u64, unchanged: u64, unmatched: u64) {
    let body = expect_json(response, 200).await;
    assert_eq!(
        body,
        json!({ "message": "success", "added": added, "removed": removed, "unchanged": unchanged, "unmatched": unmatched })
    );
}

/// The internal ids of a cohort's members, sorted.
async fn members(app: &TestApp, ws: Uuid, cohort_id: &str) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT m.user_id FROM cohort_memberships m JOIN cohorts c ON c.workspace_id = m.workspace_id AND c.id = m.cohort_ref
          WHERE c.workspace_id = $1 AND c.cohort_id = $2 ORDER BY m.user_id",
    )
    .bind(ws)
    .bind(cohort_id)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

/// Rows of a table, to check that a rejected request wrote nothing.
async fn count(app: &TestApp, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}"))).fetch_one(&app.pool).await.unwrap()
}

/// Asserts every cohort's member_count equals its real number of members.
async fn assert_member_counts_exact(app: &TestApp) {
    let wrong: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT c.cohort_id, c.member_count,
                (SELECT count(*) FROM cohort_memberships m WHERE m.workspace_id = c.workspace_id AND m.cohort_ref = c.id)
           FROM cohorts c",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    for (cohort, stored, real) in wrong {
        assert_eq!(stored, real, "member_count of {cohort}");
    }
    assert_bitmaps_match_memberships(&app.pool).await;
}

// ---- authentication ---------------------------------------------------------------

#[tokio::test]
async fn credentials_are_checked_with_the_contract_messages() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("kubit").await;
    let segment_key = app.create_partner("segment").await;
    let changes = json!([]);
    let with = |partner_api_key: &str, client_secret: &str| json!({ "partner_api_key": partner_api_key, "client_secret": client_secret, "cohort_id": "c1", "cohort_changes": changes });

    for bad_partner_key in [
        "pak_wrong".to_owned(),
        format!("{}x", setup.partner_api_key),
        setup.partner_api_key[..setup.partner_api_key.len() - 1].to_owned(),
        segment_key.clone(), // a valid key, of another partner
    ] {
        let response = post_raw(&app, "kubit", "cohorts/users", &with(&bad_partner_key, &setup.client_secret)).await;
        expect_error(response, 401, "Invalid Partner API key").await;
    }
    let no_keys = json!({ "cohort_id": "c1", "cohort_changes": [] });
    expect_error(post_raw(&app, "kubit", "cohorts/users", &no_keys).await, 401, "Invalid Partner API key").await;
    let number_key =
        json!({ "partner_api_key": 7, "client_secret": setup.client_secret, "cohort_id": "c1", "cohort_changes": [] });
    expect_error(post_raw(&app, "kubit", "cohorts/users", &number_key).await, 401, "Invalid Partner API key").await;
    // The key is right but the path names another partner.
    let response =
        post_raw(&app, "segment", "cohorts/users", &with(&setup.partner_api_key, &setup.client_secret)).await;
    expect_error(response, 401, "Invalid Partner API key").await;

    for bad_secret in ["dik_wrong".to_owned(), format!("{}0", setup.client_secret), String::new()] {
        let response = post_raw(&app, "kubit", "cohorts/users", &with(&setup.partner_api_key, &bad_secret)).await;
        expect_error(response, 401, "Invalid client secret").await;
    }

    // A data import key the workspace issued for another partner.
    app.create_data_import_key(setup.workspace, "segment").await;
    let segment_secret = app.create_data_import_key(setup.workspace, "segment").await;
    let response = post_raw(&app, "kubit", "cohorts/users", &with(&setup.partner_api_key, &segment_secret)).await;
    let masked = format!("{}…{}", &segment_secret[..12], &segment_secret[segment_secret.len() - 4..]);
    let text = {
        assert_eq!(response.status(), 401);
        response.text().await.unwrap()
    };
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["message"], format!("Partner not enabled for client with client secret: {masked}"));
    assert!(!text.contains(&segment_secret), "the full secret is never echoed");

    // The same request on the name endpoint gets the same answers.
    let name_body = json!({ "partner_api_key": "pak_wrong", "client_secret": setup.client_secret,
        "cohort_id": "c1", "name": "n", "created_at": "2024-03-01T12:00:00Z" });
    expect_error(post_raw(&app, "kubit", "cohorts", &name_body).await, 401, "Invalid Partner API key").await;

    assert_eq!(count(&app, "cohorts").await, 0, "failed authentication writes nothing");
    assert_eq!(count(&app, "cohort_imports").await, 0);
}

#[tokio::test]
async fn authentication_is_decided_before_the_body() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("kubit").await;
    // Bad keys and a bad body: the keys answer.
    let bad_everything =
        json!({ "partner_api_key": "nope", "client_secret": "nope", "cohort_id": "", "cohort_changes": 5 });
    expect_error(post_raw(&app, "kubit", "cohorts/users", &bad_everything).await, 401, "Invalid Partner API key").await;
    let bad_secret = json!({ "partner_api_key": setup.partner_api_key, "client_secret": "nope", "cohort_changes": [{"user_ids": 1}] });
    expect_error(post_raw(&app, "kubit", "cohorts/users", &bad_secret).await, 401, "Invalid client secret").await;
    let bad_name = json!({ "partner_api_key": "nope", "client_secret": setup.client_secret, "name": "" });
    expect_error(post_raw(&app, "kubit", "cohorts", &bad_name).await, 401, "Invalid Partner API key").await;
    // A body that is not even JSON carries no credentials.
    let garbage = app
        .client
        .post(app.url("/partners/kubit/cohorts/users"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    expect_error(garbage, 401, "Invalid Partner API key").await;
}

#[tokio::test]
async fn revoked_partner_api_key_and_invalidated_data_import_key_no_longer_authenticate() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("kubit").await;
    expect_counts(post_users(&app, &setup, "c1", json!([])).await, 0, 0, 0, 0).await;

    // Rotate the partner key, revoke the first: the old one stops, the new one works.
    let rotated = expect_json(app.admin_post("/admin/partners/kubit/api-keys", &json!({})).await, 201).await;
    let first_id: Uuid = sqlx::query_scalar("SELECT id FROM partner_api_keys ORDER BY created_at LIMIT 1")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(app.admin_delete(&format!("/admin/partners/kubit/api-keys/{first_id}")).await.status(), 204);
    expect_error(post_users(&app, &setup, "c1", json!([])).await, 401, "Invalid Partner API key").await;
    let rotated = PartnerSetup { partner_api_key: rotated["key"].as_str().unwrap().to_owned(), ..setup.clone() };
    expect_counts(post_users(&app, &rotated, "c1", json!([])).await, 0, 0, 0, 0).await;

    // Invalidate the data import key.
    let keys_path = format!("/admin/workspaces/{}/partners/kubit/data-import-keys", setup.workspace);
    let keys = expect_json(app.admin_get(&keys_path).await, 200).await;
    let key_id = keys["keys"][0]["id"].as_str().unwrap();
    assert_eq!(app.admin_delete(&format!("{keys_path}/{key_id}")).await.status(), 204);
    expect_error(post_users(&app, &rotated, "c1", json!([])).await, 401, "Invalid client secret").await;
    expect_error(post_name(&app, &rotated, "c1", "n").await, 401, "Invalid client secret").await;
}

#[tokio::test]
async fn key_use_is_recorded_in_the_background() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("kubit").await;
    expect_counts(post_users(&app, &setup, "c1", json!([])).await, 0, 0, 0, 0).await;
    let mut recorded = (false, false);
    for _ in 0..50 {
        let partner: bool = sqlx::query_scalar("SELECT bool_and(last_used_at IS NOT NULL) FROM partner_api_keys")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        let import: bool = sqlx::query_scalar("SELECT bool_and(last_used_at IS NOT NULL) FROM data_import_keys")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        recorded = (partner, import);
        if partner && import {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(recorded, (true, true));
}

// ---- cohort name endpoint ---------------------------------------------------------

#[tokio::test]
async fn name_endpoint_creates_and_renames() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("kubit").await;
    let ok = expect_json(post_name(&app, &setup, "c1", "Power users").await, 200).await;
    assert_eq!(ok, json!({ "message": "success" }));
    expect_json(post_name(&app, &setup, "c1", "Power users (renamed)").await, 200).await;
    let names: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT cohort_id, name, member_count FROM cohorts").fetch_all(&app.pool).await.unwrap();
    assert_eq!(names, vec![("c1".to_owned(), "Power users (renamed)".to_owned(), 0)]);

    for created_at in ["2024-03-01T12:00:00Z", "2024-03-01T12:00:00.123456+02:00", "2024-03-01T12:00:00-0500"] {
        let body = json!({ "partner_api_key": setup.partner_api_key, "client_secret": setup.client_secret,
            "cohort_id": "c2", "name": "n", "created_at": created_at });
        expect_json(post_raw(&app, "kubit", "cohorts", &body).await, 200).await;
    }
}

#[tokio::test]
async fn name_endpoint_validates_with_the_contract_messages() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("kubit").await;
    let valid = json!({ "partner_api_key": setup.partner_api_key, "client_secret": setup.client_secret,
        "cohort_id": "c1", "name": "n", "created_at": "2024-03-01T12:00:00Z" });
    let with = |field: &str, value: Value| {
        let mut body = valid.clone();
        if value.is_null() {
            body.as_object_mut().unwrap().remove(field);
        } else {
            body[field] = value;
        }
        body
    };
    let cases = [
        ("cohort_id", Value::Null, "cohort_id must be a valid string"),
        ("cohort_id", json!(""), "cohort_id must be a valid string"),
        ("cohort_id", json!(42), "cohort_id must be a valid string"),
        ("cohort_id", json!("x".repeat(256)), "cohort_id must be a valid string"),
        ("name", Value::Null, "name must be a non-empty string"),
        ("name", json!(""), "name must be a non-empty string"),
        ("name", json!(["n"]), "name must be a non-empty string"),
        ("name", json!("n\u{0}"), "name must be a non-empty string"),
        ("created_at", Value::Null, "created_at must be a valid time as an ISO-8601 string"),
        ("created_at", json!("yesterday"), "created_at must be a valid time as an ISO-8601 string"),
        ("created_at", json!("2024-03-01"), "created_at must be a valid time as an ISO-8601 string"),
        ("created_at", json!(1709294400), "created_at must be a valid time as an ISO-8601 string"),
    ];
    for (field, value, message) in cases {
        expect_error(post_raw(&app, "kubit", "cohorts", &with(field, value)).await, 400, message).await;
    }
    assert_eq!(count(&app, "cohorts").await, 0, "a rejected request creates nothing");
}

// ---- cohort users endpoint: validation --------------------------------------------

#[tokio::test]
async fn users_endpoint_validates_with_the_contract_messages() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("kubit").await;
    add_identified(&app, setup.workspace, "u", 2).await;

    for bad_id in [json!(""), json!(7), Value::Null, json!("x".repeat(256))] {
        let body = json!({ "partner_api_key": setup.partner_api_key, "client_secret": setup.client_secret,
            "cohort_id": bad_id, "cohort_changes": [{"user_ids": ["u0"]}] });
        expect_error(post_raw(&app, "kubit", "cohorts/users", &body).await, 400, "cohort_id must be a valid string")
            .await;
    }
    for bad_shape in [
        json!({ "user_ids": ["u0"] }),
        json!([["u0"]]),
        json!([{ "user_ids": "u0" }]),
        json!([{ "user_ids": [1] }]),
        json!([{ "device_ids": [null] }]),
        json!([{ "aliases": ["a"] }]),
        json!([{ "aliases": [{ "alias_name": 1, "alias_label": "l" }] }]),
        json!([{ "user_ids": ["u0"], "should_remove": "true" }]),
        json!("[]"),
    ] {
        expect_error(post_users(&app, &setup, "c1", bad_shape).await, 400, SHAPE_MESSAGE).await;
    }
    let missing =
        json!({ "partner_api_key": setup.partner_api_key, "client_secret": setup.client_secret, "cohort_id": "c1" });
    expect_error(post_raw(&app, "kubit", "cohorts/users", &missing).await, 400, SHAPE_MESSAGE).await;

    // 1,001 identifiers of all kinds together; the valid ones are not applied either.
    let users: Vec<String> = (0..400).map(|i| format!("u{i}")).collect();
    let devices: Vec<String> = (0..400).map(|i| format!("d{i}")).collect();
    let aliases: Vec<Value> = (0..201).map(|i| json!({ "alias_name": format!("a{i}"), "alias_label": "l" })).collect();
    let over = json!([{ "user_ids": users }, { "device_ids": devices, "should_remove": true }, { "aliases": aliases }]);
    let message = "Only 1,000 user_ids, device_ids, and aliases are allowed per request";
    expect_error(post_users(&app, &setup, "c1", over).await, 400, message).await;

    let long = "x".repeat(513);
    let cases = [
        (json!([{ "user_ids": ["u0", ""] }]), "cohort_changes[0].user_ids[1] must be a non-empty string"),
        (
            json!([{ "user_ids": ["u0"] }, { "device_ids": [long] }]),
            "cohort_changes[1].device_ids[0] must be at most 512 bytes",
        ),
        (json!([{ "user_ids": ["u\u{0}1"] }]), "cohort_changes[0].user_ids[0] must not contain NUL characters"),
        (
            json!([{ "aliases": [{ "alias_name": "", "alias_label": "l" }] }]),
            "cohort_changes[0].aliases[0].alias_name must be a non-empty string",
        ),
    ];
    for (changes, message) in cases {
        expect_error(post_users(&app, &setup, "c1", changes).await, 400, message).await;
    }
    // Nothing above created a cohort, a membership or a log entry.
    assert_eq!(count(&app, "cohorts").await, 0);
    assert_eq!(count(&app, "cohort_memberships").await, 0);
    assert_eq!(count(&app, "cohort_imports").await, 0);

    // Exactly 1,000 is accepted.
    let users: Vec<String> = (0..1000).map(|i| format!("u{i}")).collect();
    expect_counts(post_users(&app, &setup, "c1", json!([{ "user_ids": users }])).await, 2, 0, 0, 998).await;
}

#[tokio::test]
async fn empty_changes_test_credentials_and_change_nothing() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("kubit").await;
    for empty in [json!([]), json!([{}]), json!([{ "user_ids": [], "device_ids": null, "aliases": [] }])] {
        expect_counts(post_users(&app, &setup, "new-cohort", empty).await, 0, 0, 0, 0).await;
    }
    assert_eq!(count(&app, "cohorts").await, 0);
    assert_eq!(count(&app, "cohort_imports").await, 0);
}

// ---- cohort users endpoint: resolution and memberships ----------------------------

#[tokio::test]
async fn unknown_cohort_is_created_named_by_its_id_until_named() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("kubit").await;
    let user = add_user(&app, setup.workspace, Some("u1"), &[], &[]).await;
    expect_counts(post_users(&app, &setup, "c-42", json!([{ "user_ids": ["u1"] }])).await, 1, 0, 0, 0).await;
    let name: String =
        sqlx::query_scalar("SELECT name FROM cohorts WHERE cohort_id = 'c-42'").fetch_one(&app.pool).await.unwrap();
    assert_eq!(name, "c-42");
    // The name call came second: nothing is lost, the cohort is renamed.
    expect_json(post_name(&app, &setup, "c-42", "Churn risk").await, 200).await;
    let (name, member_count): (String, i64) =
        sqlx::query_as("SELECT name, member_count FROM cohorts WHERE cohort_id = 'c-42'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((name.as_str(), member_count), ("Churn risk", 1));
    assert_eq!(members(&app, setup.workspace, "c-42").await, vec![user]);
    // Later imports keep the name.
    expect_counts(post_users(&app, &setup, "c-42", json!([{ "user_ids": ["u1"] }])).await, 0, 0, 1, 0).await;
    let name: String = sqlx::query_scalar("SELECT name FROM cohorts").fetch_one(&app.pool).await.unwrap();
    assert_eq!(name, "Churn risk");
}

#[tokio::test]
async fn identifiers_match_as_the_partner_documentation_says() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("kubit").await;
    let ws = setup.workspace;
    let identified = add_user(&app, ws, Some("ext-1"), &[("amplitude_id", "a-1")], &["dev-identified"]).await;
    let anonymous = add_user(&app, ws, None, &[("amplitude_id", "a-2")], &["dev-anon"]).await;
    let by_alias_only = add_user(&app, ws, Some("ext-3"), &[("mixpanel_id", "m-3")], &[]).await;

    let changes = json!([{
        "user_ids": ["ext-1", "nobody"],
        "device_ids": ["dev-anon", "dev-identified", "dev-unknown"],
        "aliases": [{ "alias_label": "mixpanel_id", "alias_name": "m-3" }, { "alias_label": "amplitude_id", "alias_name": "a-9" },
                    { "alias_label": "wrong_label", "alias_name": "m-3" }],
    }]);
    // dev-identified belongs to a user who has since been identified: not matched.
    expect_counts(post_users(&app, &setup, "c1", changes).await, 3, 0, 0, 5).await;
    let mut expected = vec![identified, anonymous, by_alias_only];
    expected.sort();
    assert_eq!(members(&app, ws, "c1").await, expected);

    // An external_id matches identified users only, even if an anonymous user has an
    // alias of that text; an alias matches an anonymous user.
    let changes = json!([{ "user_ids": ["a-2"], "aliases": [{ "alias_label": "amplitude_id", "alias_name": "a-2" }], "should_remove": true }]);
    expect_counts(post_users(&app, &setup, "c1", changes).await, 0, 1, 0, 1).await;

    // A user created after an import is not added retroactively.
    add_user(&app, ws, Some("nobody"), &[], &[]).await;
    let mut expected = vec![identified, by_alias_only];
    expected.sort();
    assert_eq!(members(&app, ws, "c1").await, expected);
    assert_member_counts_exact(&app).await;
}

#[tokio::test]
async fn a_device_id_stops_matching_once_its_user_is_identified() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("kubit").await;
    let ws = setup.workspace;
    let braze_id = add_user_profile(&app, ws, None, &[("amplitude_id", "a-1")], &["phone-1"]).await;
    expect_counts(post_users(&app, &setup, "c1", json!([{ "device_ids": ["phone-1"] }])).await, 1, 0, 0, 0).await;

    let identify = format!("/admin/workspaces/{ws}/users/{braze_id}/identify");
    expect_json(app.admin_post(&identify, &json!({ "external_id": "ext-1" })).await, 200).await;
    // The device id no longer reaches the user, neither to add nor to remove it...
    let remove_by_device = json!([{ "device_ids": ["phone-1"], "should_remove": true }]);
    expect_counts(post_users(&app, &setup, "c1", remove_by_device).await, 0, 0, 0, 1).await;
    expect_counts(post_users(&app, &setup, "c2", json!([{ "device_ids": ["phone-1"] }])).await, 0, 0, 0, 1).await;
    assert_eq!(members(&app, ws, "c1").await.len(), 1);
    assert!(members(&app, ws, "c2").await.is_empty());
    // ...its external_id and its alias do.
    let by_external_id = json!([{ "user_ids": ["ext-1"], "should_remove": true }]);
    expect_counts(post_users(&app, &setup, "c1", by_external_id).await, 0, 1, 0, 0).await;
    let by_alias = json!([{ "aliases": [{ "alias_label": "amplitude_id", "alias_name": "a-1" }] }]);
    expect_counts(post_users(&app, &setup, "c2", by_alias).await, 1, 0, 0, 0).await;
    assert_member_counts_exact(&app).await;
}

#[tokio::test]
async fn the_last_change_reaching_a_user_wins_and_duplicates_count_once() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("kubit").await;
    let ws = setup.workspace;
    let alice = add_user(&app, ws, Some("alice"), &[("crm", "A")], &[]).await;
    let bob = add_user(&app, ws, Some("bob"), &[], &[]).await;
    let carol = add_user(&app, ws, None, &[], &["carol-phone"]).await;
    expect_counts(post_users(&app, &setup, "c1", json!([{ "user_ids": ["bob"] }])).await, 1, 0, 0, 0).await;

    let changes = json!([
        { "user_ids": ["alice", "alice", "bob", "ghost", "ghost"] },
        // Alice removed through her alias: she ends outside, although added above.
        { "aliases": [{ "alias_label": "crm", "alias_name": "A" }], "device_ids": ["carol-phone"], "should_remove": true },
        // Carol added back through the same device id.
        { "device_ids": ["carol-phone"] },
    ]);
    // alice: not a member, stays out (unchanged); bob: already in (unchanged); carol: added;
    // "ghost" twice counts once.
    expect_counts(post_users(&app, &setup, "c1", changes).await, 1, 0, 2, 1).await;
    let mut expected = vec![bob, carol];
    expected.sort();
    assert_eq!(members(&app, ws, "c1").await, expected);
    let _ = alice;

    // Remove first, add later in the same request: the user ends in.
    let changes =
        json!([{ "user_ids": ["bob"], "should_remove": true }, { "user_ids": ["bob"], "should_remove": false }]);
    expect_counts(post_users(&app, &setup, "c1", changes).await, 0, 0, 1, 0).await;
    assert_member_counts_exact(&app).await;
}

/// A removal deletes the user's membership of that cohort only: its other cohorts, and
/// the other members, are untouched.
#[tokio::test]
async fn a_removal_leaves_the_users_other_cohorts_alone() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("kubit").await;
    let ws = setup.workspace;
    let ids = add_identified(&app, ws, "u", 3).await;
    let everyone = json!([{ "user_ids": ["u0", "u1", "u2"] }]);
    for cohort in ["c1", "c2"] {
        expect_counts(post_users(&app, &setup, cohort, everyone.clone()).await, 3, 0, 0, 0).await;
    }
    let remove = json!([{ "user_ids": ["u0", "u2"], "should_remove": true }]);
    expect_counts(post_users(&app, &setup, "c1", remove.clone()).await, 0, 2, 0, 0).await;
    assert_eq!(members(&app, ws, "c1").await, [ids[1]]);
    assert_eq!(members(&app, ws, "c2").await, ids);
    // Again: nothing left to remove.
    expect_counts(post_users(&app, &setup, "c1", remove).await, 0, 0, 2, 0).await;
    assert_member_counts_exact(&app).await;
    assert_bitmaps_match_memberships(&app.pool).await;
}

#[tokio::test]
async fn retrying_a_request_is_harmless_and_every_import_is_logged() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("kubit").await;
    add_identified(&app, setup.workspace, "u", 3).await;
    let add = json!([{ "user_ids": ["u0", "u1", "u2", "x"] }]);
    let send = |request_id: Option<&'static str>, changes: Value| {
        let body = json!({ "partner_api_key": setup.partner_api_key, "client_secret": setup.client_secret,
            "cohort_id": "c1", "cohort_changes": changes });
        let mut request = app.client.post(app.url("/partners/kubit/cohorts/users")).json(&body);
        if let Some(id) = request_id {
            request = request.header("x-request-id", id);
        }
        request.send()
    };
    expect_counts(send(Some("req-1"), add.clone()).await.unwrap(), 3, 0, 0, 1).await;
    expect_counts(send(Some("req-2"), add).await.unwrap(), 0, 0, 3, 1).await;
    let remove = json!([{ "user_ids": ["u1"], "should_remove": true }]);
    expect_counts(send(None, remove.clone()).await.unwrap(), 0, 1, 0, 0).await;
    expect_counts(send(None, remove).await.unwrap(), 0, 0, 1, 0).await;

    let log: Vec<(String, i32, i32, i32, i32, i64)> = sqlx::query_as(
        "SELECT request_id, added, removed, unchanged, unmatched_unknown + unmatched_identified_device, member_count_after
           FROM cohort_imports ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(log.len(), 4);
    assert_eq!(log[0], ("req-1".to_owned(), 3, 0, 0, 1, 3));
    assert_eq!(log[1], ("req-2".to_owned(), 0, 0, 3, 1, 3));
    assert_eq!((log[2].1, log[2].2, log[2].3, log[2].4, log[2].5), (0, 1, 0, 0, 2));
    assert_eq!((log[3].1, log[3].2, log[3].3, log[3].4, log[3].5), (0, 0, 1, 0, 2));
    assert!(Uuid::parse_str(&log[2].0).is_ok(), "a request id is generated when none is sent: {}", log[2].0);
    let (member_count, last_import_at): (i64, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT member_count, last_import_at FROM cohorts").fetch_one(&app.pool).await.unwrap();
    assert_eq!(member_count, 2);
    assert!(last_import_at.is_some());
}

#[tokio::test]
async fn a_request_that_fails_partway_leaves_nothing_changed() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("kubit").await;
    let users = add_identified(&app, setup.workspace, "u", 4).await;
    expect_counts(post_users(&app, &setup, "c1", json!([{ "user_ids": ["u0", "u1"] }])).await, 2, 0, 0, 0).await;

    // Make the last write of an import (its log entry) fail, after the memberships, their
    // bits and the count have been written in the same transaction.
    sqlx::raw_sql("ALTER TABLE cohort_imports ADD CONSTRAINT injected_failure CHECK (false) NOT VALID")
        .execute(&app.pool)
        .await
        .unwrap();
    let changes = json!([{ "user_ids": ["u2", "u3"] }, { "user_ids": ["u0"], "should_remove": true }]);
    expect_error(post_users(&app, &setup, "c1", changes.clone()).await, 500, "internal error").await;
    expect_error(post_users(&app, &setup, "c2", changes.clone()).await, 500, "internal error").await;

    let mut before = users[..2].to_vec();
    before.sort();
    assert_eq!(members(&app, setup.workspace, "c1").await, before);
    let cohorts: Vec<(String, i64)> =
        sqlx::query_as("SELECT cohort_id, member_count FROM cohorts").fetch_all(&app.pool).await.unwrap();
    assert_eq!(cohorts, vec![("c1".to_owned(), 2)], "c2 was not created");
    assert_eq!(count(&app, "cohort_imports").await, 1);

    assert_bitmaps_match_memberships(&app.pool).await;
    sqlx::raw_sql("ALTER TABLE cohort_imports DROP CONSTRAINT injected_failure").execute(&app.pool).await.unwrap();
    expect_counts(post_users(&app, &setup, "c1", changes).await, 2, 1, 0, 0).await;
    assert_member_counts_exact(&app).await;
}

#[tokio::test]
async fn concurrent_imports_on_one_cohort_end_exactly_right() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("kubit").await;
    let ws = setup.workspace;
    // 0..60: added by several requests each; 60..100: members first, then removed by
    // several requests while no request adds them.
    let users = add_identified(&app, ws, "u", 100).await;
    let initial: Vec<String> = (60..100).map(|i| format!("u{i}")).collect();
    expect_counts(post_users(&app, &setup, "c1", json!([{ "user_ids": initial }])).await, 40, 0, 0, 0).await;

    let requests = (0..16).map(|r| {
        // Request r adds a window of 30 users among 0..60 (overlapping its neighbours')
        // and removes a window of 15 among 60..100, in both orders within the request.
        let adds: Vec<String> = (0..30).map(|i| format!("u{}", (r * 7 + i) % 60)).collect();
        let removes: Vec<String> = (0..15).map(|i| format!("u{}", 60 + (r * 5 + i) % 40)).collect();
        let changes = if r % 2 == 0 {
            json!([{ "user_ids": adds }, { "user_ids": removes, "should_remove": true }])
        } else {
            json!([{ "user_ids": removes, "should_remove": true }, { "user_ids": adds }])
        };
        post_users(&app, &setup, "c1", changes)
    });
    let responses = futures::future::join_all(requests).await;
    let (mut added, mut removed) = (0, 0);
    for response in responses {
        let body = expect_json(response, 200).await;
        added += body["added"].as_u64().unwrap();
        removed += body["removed"].as_u64().unwrap();
    }
    let removed_set: std::collections::BTreeSet<usize> =
        (0..16).flat_map(|r| (0..15).map(move |i| 60 + (r * 5 + i) % 40)).collect();
    let added_set: std::collections::BTreeSet<usize> =
        (0..16).flat_map(|r| (0..30).map(move |i| (r * 7 + i) % 60)).collect();
    // Each membership was added exactly once and removed exactly once across the requests.
    assert_eq!(added as usize, added_set.len());
    assert_eq!(removed as usize, removed_set.len());

    let mut expected: Vec<i64> = (0..100)
        .filter(|i| added_set.contains(i) || (*i >= 60 && !removed_set.contains(i)))
        .map(|i| users[i])
        .collect();
    expected.sort();
    assert_eq!(members(&app, ws, "c1").await, expected);
    assert_member_counts_exact(&app).await;
    assert_eq!(count(&app, "cohort_imports").await, 17);
    // The log's counts chain: each member_count_after is the previous plus its changes.
    let log: Vec<(i32, i32, i64)> =
        sqlx::query_as("SELECT added, removed, member_count_after FROM cohort_imports ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let mut running = 0i64;
    for (added, removed, after) in log {
        running += i64::from(added) - i64::from(removed);
        assert_eq!(running, after);
    }
}

#[tokio::test]
async fn a_workspace_key_never_touches_another_workspace() {
    let app = TestApp::spawn().await;
    let a = app.partner_setup("kubit").await;
    let ws_b = app.create_workspace("B").await;
    let b =
        PartnerSetup { workspace: ws_b, client_secret: app.create_data_import_key(ws_b, "kubit").await, ..a.clone() };
    // The same identifiers exist in both workspaces.
    let in_a = add_user(&app, a.workspace, Some("shared"), &[("crm", "1")], &[]).await;
    let in_b = add_user(&app, ws_b, Some("shared"), &[("crm", "1")], &[]).await;
    add_user(&app, ws_b, None, &[], &["device-only-in-b"]).await;
    let changes = json!([{ "user_ids": ["shared"], "aliases": [{ "alias_label": "crm", "alias_name": "1" }], "device_ids": ["device-only-in-b"] }]);
    expect_counts(post_users(&app, &a, "same-id", changes.clone()).await, 1, 0, 0, 1).await;
    expect_counts(post_users(&app, &b, "same-id", changes).await, 2, 0, 0, 0).await;
    assert_eq!(members(&app, a.workspace, "same-id").await, vec![in_a]);
    assert_eq!(members(&app, ws_b, "same-id").await.len(), 2);
    assert!(members(&app, ws_b, "same-id").await.contains(&in_b));
    // Removing through A leaves B's cohort alone; renaming through A leaves B's name.
    expect_counts(
        post_users(&app, &a, "same-id", json!([{ "user_ids": ["shared"], "should_remove": true }])).await,
        0,
        1,
        0,
        0,
    )
    .await;
    expect_json(post_name(&app, &a, "same-id", "A's name").await, 200).await;
    assert_eq!(members(&app, ws_b, "same-id").await.len(), 2);
    let name_b: String = sqlx::query_scalar("SELECT name FROM cohorts WHERE workspace_id = $1")
        .bind(ws_b)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(name_b, "same-id");
    assert_member_counts_exact(&app).await;
}

// ---- operator endpoints -----------------------------------------------------------

#[tokio::test]
async fn operators_list_and_fetch_cohorts() {
    let app = TestApp::spawn().await;
    let kubit = app.partner_setup("kubit").await;
    let segment_key = app.create_partner("segment").await;
    let segment = PartnerSetup {
        partner: "segment".into(),
        partner_api_key: segment_key,
        workspace: kubit.workspace,
        client_secret: app.create_data_import_key(kubit.workspace, "segment").await,
    };
    add_identified(&app, kubit.workspace, "u", 3).await;
    expect_json(post_name(&app, &kubit, "k/1", "Beta").await, 200).await;
    expect_counts(post_users(&app, &kubit, "k/1", json!([{ "user_ids": ["u0", "u1"] }])).await, 2, 0, 0, 0).await;
    expect_json(post_name(&app, &kubit, "k2", "Alpha").await, 200).await;
    expect_counts(post_users(&app, &segment, "s1", json!([{ "user_ids": ["u2"] }])).await, 1, 0, 0, 0).await;
    let ws = kubit.workspace;

    let all = expect_json(app.admin_get(&format!("/admin/workspaces/{ws}/cohorts")).await, 200).await;
    let listed: Vec<(&str, &str, &str, i64)> = all["cohorts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["partner"].as_str().unwrap(),
                c["cohort_id"].as_str().unwrap(),
                c["name"].as_str().unwrap(),
                c["member_count"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed, vec![("kubit", "k2", "Alpha", 0), ("kubit", "k/1", "Beta", 2), ("segment", "s1", "s1", 1)]);
    let first = &all["cohorts"][0];
    for field in ["created_at", "updated_at"] {
        assert!(first[field].is_string(), "{field}: {first}");
    }
    assert_eq!(first["last_import_at"], Value::Null, "never imported");
    assert!(all["cohorts"][1]["last_import_at"].is_string());

    let only_segment =
        expect_json(app.admin_get(&format!("/admin/workspaces/{ws}/cohorts?partner=segment")).await, 200).await;
    assert_eq!(only_segment["cohorts"].as_array().unwrap().len(), 1);
    assert_eq!(only_segment["cohorts"][0]["cohort_id"], "s1");

    // A cohort id with a slash travels percent-encoded.
    let one = expect_json(app.admin_get(&format!("/admin/workspaces/{ws}/cohorts/kubit/k%2F1")).await, 200).await;
    assert_eq!(one, all["cohorts"][1]);
    let missing = app.admin_get(&format!("/admin/workspaces/{ws}/cohorts/kubit/nope")).await;
    expect_error(missing, 404, "unknown cohort nope of partner kubit").await;
    let other_ws = Uuid::new_v4();
    let missing_ws = app.admin_get(&format!("/admin/workspaces/{other_ws}/cohorts")).await;
    expect_error(missing_ws, 404, &format!("unknown workspace {other_ws}")).await;
    let no_token = app.client.get(app.url(&format!("/admin/workspaces/{ws}/cohorts"))).send().await.unwrap();
    assert_eq!(no_token.status(), 401);
}

#[tokio::test]
async fn the_import_log_pages_newest_first_with_the_member_count_after_each() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("kubit").await;
    add_identified(&app, setup.workspace, "u", 5).await;
    for i in 0..5 {
        let changes = json!([{ "user_ids": [format!("u{i}"), "ghost"] }]);
        expect_counts(post_users(&app, &setup, "c1", changes).await, 1, 0, 0, 1).await;
    }
    expect_counts(
        post_users(&app, &setup, "c1", json!([{ "user_ids": ["u0"], "should_remove": true }])).await,
        0,
        1,
        0,
        0,
    )
    .await;
    let path = format!("/admin/workspaces/{}/cohorts/kubit/c1/imports", setup.workspace);

    let page = expect_json(app.admin_get(&format!("{path}?limit=4")).await, 200).await;
    let imports = page["imports"].as_array().unwrap();
    let after: Vec<i64> = imports.iter().map(|i| i["member_count_after"].as_i64().unwrap()).collect();
    assert_eq!(after, vec![4, 5, 4, 3]);
    assert_eq!((imports[0]["removed"].as_i64(), imports[0]["added"].as_i64()), (Some(1), Some(0)));
    assert_eq!((imports[1]["added"].as_i64(), imports[1]["unmatched"].as_i64()), (Some(1), Some(1)));
    for field in ["id", "request_id", "received_at", "unchanged"] {
        assert!(!imports[0][field].is_null(), "{field}");
    }
    let next = page["next_before"].as_i64().unwrap();
    let rest = expect_json(app.admin_get(&format!("{path}?limit=4&before={next}")).await, 200).await;
    let after: Vec<i64> =
        rest["imports"].as_array().unwrap().iter().map(|i| i["member_count_after"].as_i64().unwrap()).collect();
    assert_eq!(after, vec![2, 1]);
    assert_eq!(rest["next_before"], Value::Null);

    let all = expect_json(app.admin_get(&path).await, 200).await;
    assert_eq!(all["imports"].as_array().unwrap().len(), 6);
    for bad in ["limit=0", "limit=1001", "limit=x", "before=x"] {
        assert_eq!(app.admin_get(&format!("{path}?{bad}")).await.status(), 400, "{bad}");
    }
}

#[tokio::test]
async fn members_page_with_an_opaque_cursor() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("kubit").await;
    add_identified(&app, setup.workspace, "u", 5).await;
    add_user(&app, setup.workspace, None, &[], &["phone"]).await;
    let changes = json!([{ "user_ids": ["u0", "u1", "u2", "u3", "u4"], "device_ids": ["phone"] }]);
    expect_counts(post_users(&app, &setup, "c1", changes).await, 6, 0, 0, 0).await;
    let path = format!("/admin/workspaces/{}/cohorts/kubit/c1/members", setup.workspace);

    let mut seen: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}?limit=4&cursor={c}"),
            None => format!("{path}?limit=4"),
        };
        let page = expect_json(app.admin_get(&url).await, 200).await;
        pages += 1;
        seen.extend(page["members"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 2);
    let external: Vec<Value> = seen.iter().map(|m| m["external_id"].clone()).collect();
    assert_eq!(external, vec![json!("u0"), json!("u1"), json!("u2"), json!("u3"), json!("u4"), Value::Null]);
    for member in &seen {
        assert!(Uuid::parse_str(member["braze_id"].as_str().unwrap()).is_ok());
        assert!(member["added_at"].is_string());
        assert_eq!(member.as_object().unwrap().len(), 3, "no internal id: {member}");
    }
    let bad = app.admin_get(&format!("{path}?cursor=42")).await;
    expect_error(
        bad,
        400,
        "cursor: invalid, or from another query; pass the previous page's next_cursor or start again",
    )
    .await;
    let unknown = app.admin_get(&format!("/admin/workspaces/{}/cohorts/kubit/nope/members", setup.workspace)).await;
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn deleting_a_cohort_removes_its_members_and_log() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("kubit").await;
    add_identified(&app, setup.workspace, "u", 2).await;
    expect_counts(post_users(&app, &setup, "gone", json!([{ "user_ids": ["u0", "u1"] }])).await, 2, 0, 0, 0).await;
    expect_counts(post_users(&app, &setup, "kept", json!([{ "user_ids": ["u0"] }])).await, 1, 0, 0, 0).await;
    let path = format!("/admin/workspaces/{}/cohorts/kubit/gone", setup.workspace);
    assert_eq!(app.admin_delete(&path).await.status(), 204);
    expect_error(app.admin_get(&path).await, 404, "unknown cohort gone of partner kubit").await;
    expect_error(app.admin_delete(&path).await, 404, "unknown cohort gone of partner kubit").await;
    assert_eq!(count(&app, "cohorts").await, 1);
    assert_eq!(count(&app, "cohort_memberships").await, 1);
    assert_eq!(count(&app, "cohort_imports").await, 1);
    assert_eq!(count(&app, "users").await, 2, "users stay");
    // The partner may post the cohort again: it starts afresh.
    expect_counts(post_users(&app, &setup, "gone", json!([{ "user_ids": ["u1"] }])).await, 1, 0, 0, 0).await;
    assert_member_counts_exact(&app).await;
}

#[tokio::test]
async fn an_import_waits_for_a_user_deletion_and_then_finds_the_user_gone() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("kubit").await;
    let users = add_identified(&app, setup.workspace, "u", 2).await;
    // A user deletion in progress, as the admin endpoint runs it: it holds the
    // workspace lock exclusively until it commits...
    let mut deletion = app.pool.begin().await.unwrap();
    lock_workspace(&mut deletion, setup.workspace, WorkspaceLock::UserDeletion).await.unwrap();
    let import = tokio::spawn({
        let (client, url) = (app.client.clone(), app.url("/partners/kubit/cohorts/users"));
        let body = json!({ "partner_api_key": setup.partner_api_key, "client_secret": setup.client_secret,
            "cohort_id": "c1", "cohort_changes": [{ "user_ids": ["u0", "u1"] }] });
        async move { client.post(url).json(&body).send().await.unwrap() }
    });
    // ...so the import waits before it resolves anyone...
    wait_for_backend(&app.pool, ADVISORY_LOCK_WAIT, "the import never waited for the user deletion's lock").await;
    assert!(!import.is_finished(), "the import went ahead of an uncommitted user deletion");
    sqlx::query("DELETE FROM users WHERE id = $1").bind(users[1]).execute(&mut *deletion).await.unwrap();
    sqlx::query("UPDATE user_bitmaps SET bits = set_bit(bits, ($1 & 8191)::int, 0) WHERE block = $1 >> 13")
        .bind(users[1])
        .execute(&mut *deletion)
        .await
        .unwrap();
    deletion.commit().await.unwrap();
    // ...and then resolves u1 to nobody: no membership outlives its user.
    expect_counts(import.await.unwrap(), 1, 0, 0, 1).await;
    assert_eq!(members(&app, setup.workspace, "c1").await, vec![users[0]]);
    assert_member_counts_exact(&app).await;
}

#[tokio::test]
async fn imports_beyond_import_concurrency_wait_their_turn_then_get_503() {
    let app = TestApp::spawn_with(|config| {
        config.import_concurrency = 1;
        config.db_acquire_timeout_secs = 1;
    })
    .await;
    let setup = app.partner_setup("kubit").await;
    add_identified(&app, setup.workspace, "u", 2).await;
    // The one running import is held up inside PostgreSQL by a user deletion...
    let mut deletion = app.pool.begin().await.unwrap();
    lock_workspace(&mut deletion, setup.workspace, WorkspaceLock::UserDeletion).await.unwrap();
    let import = |cohort_id: &'static str| {
        let (client, url) = (app.client.clone(), app.url("/partners/kubit/cohorts/users"));
        let body = json!({ "partner_api_key": setup.partner_api_key, "client_secret": setup.client_secret,
            "cohort_id": cohort_id, "cohort_changes": [{ "user_ids": ["u0", "u1"] }] });
        async move { client.post(url).json(&body).send().await.unwrap() }
    };
    let running = tokio::spawn(import("c1"));
    wait_for_backend(&app.pool, ADVISORY_LOCK_WAIT, "the first import never waited for the user deletion's lock").await;
    // ...so an import of another cohort waits for the slot, not in PostgreSQL (the pool
    // has connections to spare), and gives up after DB_ACQUIRE_TIMEOUT_SECS, having
    // written nothing.
    let started = std::time::Instant::now();
    let waited = import("c2").await;
    assert!(started.elapsed() >= std::time::Duration::from_millis(900), "{:?}", started.elapsed());
    assert_eq!(waited.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    expect_error(waited, 503, "too many cohort imports are waiting; retry later").await;
    assert!(!running.is_finished());
    deletion.commit().await.unwrap();
    expect_counts(running.await.unwrap(), 2, 0, 0, 0).await;
    let cohorts: Vec<String> =
        sqlx::query_scalar("SELECT cohort_id FROM cohorts ORDER BY cohort_id").fetch_all(&app.pool).await.unwrap();
    assert_eq!(cohorts, ["c1"], "the refused import must not have created its cohort");
    assert_eq!(count(&app, "cohort_imports").await, 1);
    // With the slot free again, the same request goes through.
    expect_counts(import("c2").await, 2, 0, 0, 0).await;
    assert_member_counts_exact(&app).await;
}

#[tokio::test]
async fn user_deletions_racing_imports_leave_exact_counts_and_no_orphans() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("kubit").await;
    let ws = setup.workspace;
    add_identified(&app, ws, "u", 40).await;
    let braze_ids: Vec<(String, Uuid)> =
        sqlx::query_as("SELECT external_id, braze_id FROM users WHERE workspace_id = $1 ORDER BY id")
            .bind(ws)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    // Three cohorts take adds and removes of every user while every third user is deleted.
    let (app, setup) = (&app, &setup);
    let imports = (0..18).map(|r| {
        let user_ids: Vec<String> = (0..40).filter(|i| (i + r) % 3 != 0).map(|i| format!("u{i}")).collect();
        let changes = json!([{ "user_ids": user_ids, "should_remove": r % 4 == 3 }]);
        let cohort = format!("c{}", r % 3);
        async move { expect_json(post_users(app, setup, &cohort, changes).await, 200).await }
    });
    let deletions = braze_ids.iter().step_by(3).map(|(_, braze_id)| {
        let path = format!("/admin/workspaces/{ws}/users/{braze_id}");
        async move { assert_eq!(app.admin_delete(&path).await.status(), 204) }
    });
    futures::future::join(futures::future::join_all(imports), futures::future::join_all(deletions)).await;

    assert_eq!(count(app, "users").await, 40 - 14);
    let orphans: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM cohort_memberships m
          WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.workspace_id = m.workspace_id AND u.id = m.user_id)",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(orphans, 0, "memberships of deleted users");
    assert_member_counts_exact(app).await;
}

#[tokio::test]
async fn deleting_users_and_cohorts_takes_their_memberships_bits_and_log_along() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("kubit").await;
    let ws = setup.workspace;
    let users = add_identified(&app, ws, "u", 3).await;
    for cohort in ["c1", "c2"] {
        let changes = json!([{ "user_ids": ["u0", "u1", "u2"] }]);
        expect_counts(post_users(&app, &setup, cohort, changes).await, 3, 0, 0, 0).await;
    }
    let braze_id: Uuid = sqlx::query_scalar("SELECT braze_id FROM users WHERE workspace_id = $1 AND id = $2")
        .bind(ws)
        .bind(users[0])
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let response = app.client.delete(app.url(&format!("/admin/workspaces/{ws}/users/{braze_id}")));
    let response = response.bearer_auth(ADMIN_TOKEN).header("x-request-id", "delete-u0").send().await.unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(members(&app, ws, "c1").await, vec![users[1], users[2]]);
    assert_eq!(members(&app, ws, "c2").await, vec![users[1], users[2]]);
    assert_bitmaps_match_memberships(&app.pool).await;
    assert_member_counts_exact(&app).await;
    // The deletion is in each cohort's history, so the log adds up to the count.
    let history: Vec<(String, String, i32, i64)> = sqlx::query_as(
        "SELECT kind, request_id, removed, member_count_after FROM cohort_imports WHERE id = 2 ORDER BY cohort_ref",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let entry = ("user_deletion".to_owned(), "delete-u0".to_owned(), 1, 2);
    assert_eq!(history, vec![entry.clone(), entry]);
    let unbalanced: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM cohorts c
          WHERE c.member_count <> (SELECT sum(added - removed) FROM cohort_imports i
                                    WHERE i.workspace_id = c.workspace_id AND i.cohort_ref = c.id)",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(unbalanced, 0, "a cohort whose import log does not add up to its count");

    let path = format!("/admin/workspaces/{ws}/cohorts/kubit/c1");
    assert_eq!(app.admin_delete(&path).await.status(), 204);
    assert_eq!(count(&app, "cohort_memberships").await, 2);
    // Its bits, in blocks or in changes held back, went with it.
    let bitmaps: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT cohort_ref) FROM (SELECT cohort_ref FROM cohort_bitmaps
                                                 UNION ALL SELECT cohort_ref FROM cohort_bit_changes) AS bits",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(bitmaps, 1, "the deleted cohort's bits went with it");
    assert_eq!(count(&app, "cohort_imports").await, 2, "and so did its log");
    assert_bitmaps_match_memberships(&app.pool).await;
}
