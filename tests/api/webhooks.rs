//! The cohort webhooks (Mixpanel's, Amplitude's), the matching rules they use, the
//! operator's full replace, unmatched reasons and the workspace's import log: each with
//! the documented payloads, through the real HTTP stack.

use std::time::Duration;

use reqwest::Response;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{PartnerSetup, TestApp, assert_bitmaps_match_memberships, expect_error, expect_json};

/// Users through the batch endpoint: `(external_id, email alias, device ids)`.
async fn add_users(app: &TestApp, ws: Uuid, users: &[(Option<&str>, Option<&str>, &[&str])]) {
    let users: Vec<Value> = users
        .iter()
        .map(|(external_id, email, devices)| {
            let mut profile = json!({ "device_ids": devices });
            if let Some(external_id) = external_id {
                profile["external_id"] = json!(external_id);
            }
            if let Some(email) = email {
                profile["aliases"] = json!([{ "alias_label": "email", "alias_name": email }]);
            }
            profile
        })
        .collect();
    let path = format!("/admin/workspaces/{ws}/users/batch");
    let body = expect_json(app.admin_post(&path, &json!({ "users": users })).await, 200).await;
    assert_eq!(body["created"], users.len(), "{body}");
}

/// Identified users `{prefix}0..{prefix}{n-1}`.
async fn add_identified(app: &TestApp, ws: Uuid, prefix: &str, n: usize) {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let users: Vec<(Option<&str>, Option<&str>, &[&str])> =
        ids.iter().map(|id| (Some(id.as_str()), None, &[][..])).collect();
    add_users(app, ws, &users).await;
}

/// The external ids of a cohort's members (`(anonymous)` for an anonymous one), sorted.
async fn members(app: &TestApp, ws: Uuid, cohort_id: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT coalesce(u.external_id, '(anonymous)') AS e FROM cohort_memberships m
           JOIN cohorts c ON c.workspace_id = m.workspace_id AND c.id = m.cohort_ref
           JOIN users u ON u.workspace_id = m.workspace_id AND u.id = m.user_id
          WHERE c.workspace_id = $1 AND c.cohort_id = $2 ORDER BY e",
    )
    .bind(ws)
    .bind(cohort_id)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

/// The cohort's import log, oldest first: kind and counts.
async fn log(app: &TestApp, ws: Uuid, cohort_id: &str) -> Vec<(String, i32, i32, i32, i32, i32)> {
    sqlx::query_as(
        "SELECT i.kind, i.added, i.removed, i.unchanged, i.unmatched_unknown, i.unmatched_identified_device
           FROM cohort_imports i JOIN cohorts c ON c.workspace_id = i.workspace_id AND c.id = i.cohort_ref
          WHERE c.workspace_id = $1 AND c.cohort_id = $2 ORDER BY i.id",
    )
    .bind(ws)
    .bind(cohort_id)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

async fn mixpanel(app: &TestApp, setup: &PartnerSetup, password: &str, body: &Value) -> Response {
    app.client
        .post(app.url(&format!("/webhooks/mixpanel/{}", setup.partner)))
        .basic_auth("mixpanel", Some(password))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// A Mixpanel message as its docs show it.
fn mixpanel_message(action: &str, cohort_id: &str, members: &[&str], page: Option<(i64, i64, &str)>) -> Value {
    let members: Vec<Value> = members
        .iter()
        .map(|id| {
            json!({ "email": format!("{id}@example.com"), "mixpanel_distinct_id": id,
                    "first_name": "Ada", "last_name": "Lovelace", "phone_number": null })
        })
        .collect();
    let mut parameters = json!({
        "mixpanel_project_id": "2195193",
        "mixpanel_cohort_id": cohort_id,
        "mixpanel_cohort_name": "Power users",
        "mixpanel_cohort_description": "Active 5 of the last 7 days",
        "members": members,
    });
    if let Some((page_count, total_pages, session)) = page {
        parameters["mixpanel_session_id"] = json!(session);
        parameters["page_info"] = json!({ "total_pages": total_pages, "page_count": page_count });
    }
    json!({ "action": action, "parameters": parameters })
}

async fn amplitude(app: &TestApp, setup: &PartnerSetup, body: &Value) -> Response {
    app.client
        .post(app.url(&format!("/webhooks/amplitude/{}", setup.partner)))
        .bearer_auth(&setup.client_secret)
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_mixpanel_members_session_replaces_the_cohort_when_its_last_page_arrives() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("mixpanel").await;
    let ws = setup.workspace;
    add_identified(&app, ws, "u", 25).await;
    // Before the session: u20..u24 are members, and stay only if a page names them.
    let add = mixpanel_message("add_members", "1001", &["u20", "u21", "u22", "u23", "u24"], None);
    let answer = expect_json(mixpanel(&app, &setup, &setup.client_secret, &add).await, 200).await;
    assert_eq!(answer, json!({ "action": "add_members", "status": "success" }));

    // Ten pages of two members each (u0..u19, plus one unknown on page 3), out of order,
    // page 6 twice: its second copy names u10 and u11 instead of u10 and nobody.
    let page_members = |page: usize| -> Vec<String> {
        match page {
            3 => vec!["u4".into(), "nobody".into(), "u5".into()],
            6 => vec!["u10".into()],
            _ => vec![format!("u{}", 2 * (page - 1)), format!("u{}", 2 * (page - 1) + 1)],
        }
    };
    let send = |page: usize, names: Vec<String>| {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        mixpanel_message("members", "1001", &names, Some((page as i64, 10, "session-a")))
    };
    for page in [2, 1, 6, 3, 10, 5, 4, 8] {
        let answer =
            expect_json(mixpanel(&app, &setup, &setup.client_secret, &send(page, page_members(page))).await, 200).await;
        assert_eq!(answer, json!({ "action": "members", "status": "success" }));
        assert_eq!(members(&app, ws, "1001").await.len(), 5, "unchanged until the session completes");
    }
    let resent = send(6, vec!["u10".into(), "u11".into()]);
    expect_json(mixpanel(&app, &setup, &setup.client_secret, &resent).await, 200).await;
    expect_json(mixpanel(&app, &setup, &setup.client_secret, &send(9, page_members(9))).await, 200).await;
    assert_eq!(members(&app, ws, "1001").await.len(), 5, "page 7 is still missing");
    expect_json(mixpanel(&app, &setup, &setup.client_secret, &send(7, page_members(7))).await, 200).await;

    let mut expected: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
    expected.sort();
    assert_eq!(members(&app, ws, "1001").await, expected);
    let entries = log(&app, ws, "1001").await;
    assert_eq!(entries.len(), 2, "the staged pages logged nothing: {entries:?}");
    assert_eq!(entries[1], ("mixpanel_members".into(), 20, 5, 0, 1, 0));
    let staged: i64 =
        sqlx::query_scalar("SELECT count(*) FROM member_session_pages").fetch_one(&app.pool).await.unwrap();
    assert_eq!(staged, 0, "a completed session's pages are gone");
    // A page delivered again after completion changes nothing.
    expect_json(mixpanel(&app, &setup, &setup.client_secret, &send(3, vec!["u24".into()])).await, 200).await;
    assert_eq!(members(&app, ws, "1001").await, expected);
    assert_eq!(log(&app, ws, "1001").await.len(), 2);
    assert_bitmaps_match_memberships(&app.pool).await;
}

#[tokio::test]
async fn a_mixpanel_session_that_never_completes_changes_nothing_and_expires() {
    let app = TestApp::spawn_with(|config| config.member_session_ttl_secs = 1).await;
    let setup = app.partner_setup("mixpanel").await;
    let ws = setup.workspace;
    add_identified(&app, ws, "u", 4).await;
    for page in 1..=3 {
        let message = mixpanel_message("members", "7", &[&format!("u{page}")], Some((page, 4, "s1")));
        expect_json(mixpanel(&app, &setup, &setup.client_secret, &message).await, 200).await;
    }
    assert!(members(&app, ws, "7").await.is_empty());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The last page comes too late: pages 1-3 were dropped, so this one starts over.
    let last = mixpanel_message("members", "7", &["u0"], Some((4, 4, "s1")));
    expect_json(mixpanel(&app, &setup, &setup.client_secret, &last).await, 200).await;
    assert!(members(&app, ws, "7").await.is_empty());
    let pages: Vec<i32> =
        sqlx::query_scalar("SELECT page FROM member_session_pages ORDER BY page").fetch_all(&app.pool).await.unwrap();
    assert_eq!(pages, [4]);
    assert!(log(&app, ws, "7").await.is_empty());
}

#[tokio::test]
async fn mixpanel_add_remove_and_failures_answer_in_mixpanels_shape() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("mixpanel").await;
    let ws = setup.workspace;
    add_identified(&app, ws, "u", 3).await;
    let add = mixpanel_message("add_members", "42", &["u0", "u1", "u2", "ghost"], None);
    expect_json(mixpanel(&app, &setup, &setup.client_secret, &add).await, 200).await;
    let remove = mixpanel_message("remove_members", "42", &["u1"], None);
    expect_json(mixpanel(&app, &setup, &setup.client_secret, &remove).await, 200).await;
    assert_eq!(members(&app, ws, "42").await, ["u0", "u2"]);
    let name: String =
        sqlx::query_scalar("SELECT name FROM cohorts WHERE cohort_id = '42'").fetch_one(&app.pool).await.unwrap();
    assert_eq!(name, "Power users");
    let entries = log(&app, ws, "42").await;
    assert_eq!(
        entries,
        [("mixpanel_add_members".into(), 3, 0, 0, 1, 0), ("mixpanel_remove_members".into(), 0, 1, 0, 0, 0)]
    );

    // Wrong key, no key: 401, in Mixpanel's shape; nothing changes.
    let response = mixpanel(&app, &setup, "dik_wrong", &remove).await;
    let answer = expect_json(response, 401).await;
    assert_eq!(answer["action"], "remove_members");
    assert_eq!(answer["status"], "failure");
    assert_eq!(answer["error"]["code"], 401);
    let response = app.client.post(app.url("/webhooks/mixpanel/mixpanel")).json(&remove).send().await.unwrap();
    assert_eq!(expect_json(response, 401).await["error"]["code"], 401);
    // Another partner's key does not open this partner's webhook.
    app.create_partner("amplitude").await;
    let amplitude_key = app.create_data_import_key(ws, "amplitude").await;
    assert_eq!(mixpanel(&app, &setup, &amplitude_key, &remove).await.status(), 401);
    // Bad input: 400, naming the field, in Mixpanel's shape.
    let mut bad = add.clone();
    bad["action"] = json!("delete_everything");
    let answer = expect_json(mixpanel(&app, &setup, &setup.client_secret, &bad).await, 400).await;
    assert_eq!(answer["action"], "delete_everything");
    assert_eq!(answer["error"]["code"], 400);
    let no_session = mixpanel_message("members", "42", &["u1"], None);
    let answer = expect_json(mixpanel(&app, &setup, &setup.client_secret, &no_session).await, 400).await;
    assert!(answer["error"]["message"].as_str().unwrap().contains("mixpanel_session_id"), "{answer}");
    let beyond = mixpanel_message("members", "42", &["u1"], Some((3, 2, "s")));
    expect_json(mixpanel(&app, &setup, &setup.client_secret, &beyond).await, 400).await;
    assert_eq!(members(&app, ws, "42").await, ["u0", "u2"]);
    assert_eq!(log(&app, ws, "42").await.len(), 2);
}

#[tokio::test]
async fn an_amplitude_message_delivered_three_times_applies_once() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("amplitude").await;
    let ws = setup.workspace;
    add_identified(&app, ws, "u", 3).await;
    let message = json!({
        "cohort_name": "Churn risk",
        "cohort_id": "5ae2rfe",
        "in_cohort": true,
        "computed_time": "1695672000",
        "message_id": "d9c8f2a0-5a3b-4b1e-8f7c-0e2d1c3b4a59",
        "users": [
            { "user_id": "u0", "user_properties": { "plan": "pro" } },
            { "user_id": "u1" },
            { "user_id": "stranger" },
        ],
    });
    let first = expect_json(amplitude(&app, &setup, &message).await, 200).await;
    assert_eq!(first, json!({ "message": "success", "added": 2, "removed": 0, "unchanged": 0, "unmatched": 1 }));
    // A concurrent pair of redeliveries, then one more.
    let (a, b) = tokio::join!(amplitude(&app, &setup, &message), amplitude(&app, &setup, &message));
    assert_eq!(expect_json(a, 200).await, first);
    assert_eq!(expect_json(b, 200).await, first);
    assert_eq!(expect_json(amplitude(&app, &setup, &message).await, 200).await, first);
    assert_eq!(members(&app, ws, "5ae2rfe").await, ["u0", "u1"]);
    assert_eq!(log(&app, ws, "5ae2rfe").await, [("amplitude".into(), 2, 0, 0, 1, 0)]);

    let mut leave = message.clone();
    leave["in_cohort"] = json!(false);
    leave["message_id"] = json!("second");
    leave["users"] = json!([{ "user_id": "u0" }]);
    let answer = expect_json(amplitude(&app, &setup, &leave).await, 200).await;
    assert_eq!(answer["removed"], 1);
    assert_eq!(members(&app, ws, "5ae2rfe").await, ["u1"]);

    // Wrong or missing key: 401, nothing changes.
    let wrong = app
        .client
        .post(app.url("/webhooks/amplitude/amplitude"))
        .bearer_auth("dik_not_a_key")
        .json(&leave)
        .send()
        .await
        .unwrap();
    expect_error(wrong, 401, "invalid credentials: send Authorization: Bearer <data import key>").await;
    let missing = app.client.post(app.url("/webhooks/amplitude/amplitude")).json(&leave).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    let mut bad = leave.clone();
    bad["in_cohort"] = json!("yes");
    bad["message_id"] = json!("third");
    assert_eq!(amplitude(&app, &setup, &bad).await.status(), 400);
    assert_eq!(log(&app, ws, "5ae2rfe").await.len(), 2);
    assert_bitmaps_match_memberships(&app.pool).await;
}

#[tokio::test]
async fn members_match_by_the_partners_rules_in_order() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("mixpanel").await;
    let ws = setup.workspace;
    add_users(&app, ws, &[(Some("known"), None, &[]), (Some("by-email"), Some("ada@example.com"), &[])]).await;
    let path = format!("/admin/workspaces/{ws}/partners/mixpanel/matching");
    assert_eq!(expect_json(app.admin_get(&path).await, 200).await, json!({ "rules": null }));
    let rules = json!({ "rules": [
        { "field": "mixpanel_distinct_id", "as": "external_id" },
        { "field": "email", "as": "alias", "alias_label": "email" },
    ]});
    let put = |body: Value| app.admin(reqwest::Method::PUT, &path).json(&body).send();
    assert_eq!(expect_json(put(rules.clone()).await.unwrap(), 200).await, rules);
    assert_eq!(expect_json(app.admin_get(&path).await, 200).await, rules);
    let bad = json!({ "rules": [{ "field": "email", "as": "alias" }] });
    expect_error(put(bad).await.unwrap(), 400, "rules[0].alias_label is required with \"as\": \"alias\"").await;

    // "ada" is no external id, but her email is an alias of "by-email".
    let message = json!({ "action": "add_members", "parameters": {
        "mixpanel_cohort_id": 9, "mixpanel_cohort_name": "Readers",
        "members": [
            { "mixpanel_distinct_id": "known", "email": "someone@else.com" },
            { "mixpanel_distinct_id": "ada", "email": "ada@example.com" },
            { "mixpanel_distinct_id": "nobody", "email": "nobody@example.com" },
            { "first_name": "no identifier at all" },
        ],
    }});
    expect_json(mixpanel(&app, &setup, &setup.client_secret, &message).await, 200).await;
    assert_eq!(members(&app, ws, "9").await, ["by-email", "known"]);
    assert_eq!(log(&app, ws, "9").await, [("mixpanel_add_members".into(), 2, 0, 0, 2, 0)]);
    assert_eq!(app.admin_delete(&path).await.status(), 204);
    assert_eq!(expect_json(app.admin_get(&path).await, 200).await, json!({ "rules": null }));
}

#[tokio::test]
async fn unmatched_members_are_logged_by_reason() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("kubit").await;
    let ws = setup.workspace;
    add_users(&app, ws, &[(Some("u0"), None, &["phone-of-u0"]), (None, None, &["anonymous-phone"])]).await;
    let body = json!({
        "partner_api_key": setup.partner_api_key, "client_secret": setup.client_secret, "cohort_id": "c",
        "cohort_changes": [{ "user_ids": ["u0", "nobody"], "device_ids": ["phone-of-u0", "anonymous-phone", "unknown-phone"] }],
    });
    let response = app.client.post(app.url("/partners/kubit/cohorts/users")).json(&body).send().await.unwrap();
    let answer = expect_json(response, 200).await;
    assert_eq!(answer["unmatched"], 3, "{answer}");
    assert_eq!(log(&app, ws, "c").await, [("braze".into(), 2, 0, 0, 2, 1)]);
    let path = format!("/admin/workspaces/{ws}/cohorts/kubit/c/imports");
    let entry = &expect_json(app.admin_get(&path).await, 200).await["imports"][0];
    assert_eq!((&entry["kind"], &entry["unmatched"]), (&json!("braze"), &json!(3)));
    assert_eq!(entry["unmatched_unknown"], 2);
    assert_eq!(entry["unmatched_device_id_of_identified_user"], 1);

    // The operator's list of what matched nobody: sent again, counted again.
    let response = app.client.post(app.url("/partners/kubit/cohorts/users")).json(&body).send().await.unwrap();
    expect_json(response, 200).await;
    let path = format!("/admin/workspaces/{ws}/cohorts/kubit/c/unmatched");
    let listed = expect_json(app.admin_get(&path).await, 200).await;
    let entries: Vec<(String, String, String, i64)> = listed["unmatched"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let text = |k: &str| e[k].as_str().unwrap().to_owned();
            (text("kind"), text("value"), text("reason"), e["times_seen"].as_i64().unwrap())
        })
        .collect();
    assert_eq!(
        entries,
        [
            ("device_id".into(), "phone-of-u0".into(), "device_id_of_identified_user".into(), 2),
            ("device_id".into(), "unknown-phone".into(), "unknown".into(), 2),
            ("external_id".into(), "nobody".into(), "unknown".into(), 2),
        ]
    );
    assert_eq!(listed["unmatched"][0]["alias_label"], Value::Null);
    // Paged one at a time, the cursor carries on where the page ended.
    let first = expect_json(app.admin_get(&format!("{path}?limit=2")).await, 200).await;
    assert_eq!(first["unmatched"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().unwrap();
    let rest = expect_json(app.admin_get(&format!("{path}?limit=2&cursor={cursor}")).await, 200).await;
    assert_eq!(rest["unmatched"][0]["value"], "nobody");
    // "nobody" signs up: it leaves the list, though no import sent it since.
    add_users(&app, ws, &[(Some("nobody"), None, &[])]).await;
    let listed = expect_json(app.admin_get(&path).await, 200).await;
    let values: Vec<&str> =
        listed["unmatched"].as_array().unwrap().iter().map(|e| e["value"].as_str().unwrap()).collect();
    assert_eq!(values, ["phone-of-u0", "unknown-phone"]);
    assert_eq!(app.admin_get(&format!("/admin/workspaces/{ws}/cohorts/kubit/none/unmatched")).await.status(), 404);
}

async fn replace(app: &TestApp, ws: Uuid, cohort: &str, lines: &str) -> Response {
    app.admin(reqwest::Method::PUT, &format!("/admin/workspaces/{ws}/cohorts/kubit/{cohort}/members"))
        .header("content-type", "application/x-ndjson")
        .body(lines.to_owned())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_operator_replace_repairs_a_cohort_that_lost_a_delta() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("kubit").await;
    let ws = setup.workspace;
    add_identified(&app, ws, "u", 6).await;
    add_users(&app, ws, &[(None, Some("anon@example.com"), &["anon-device"])]).await;
    let post = |changes: Value| {
        let body = json!({ "partner_api_key": setup.partner_api_key, "client_secret": setup.client_secret,
                           "cohort_id": "c", "cohort_changes": changes });
        app.client.post(app.url("/partners/kubit/cohorts/users")).json(&body).send()
    };
    expect_json(post(json!([{ "user_ids": ["u0", "u1", "u2", "u3", "u4"] }])).await.unwrap(), 200).await;
    // The partner then removed u1 and added u5, but that delta never arrived.
    let braze_id: String = sqlx::query_scalar("SELECT braze_id::text FROM users WHERE external_id = 'u3'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let lines = format!(
        "{{\"external_id\":\"u0\"}}\n{{\"external_id\":\"u2\"}}\n\n{{\"braze_id\":\"{braze_id}\"}}\n{{\"external_id\":\"u4\"}}\n\
         {{\"external_id\":\"u5\"}}\n{{\"external_id\":\"u0\"}}\n{{\"external_id\":\"lost\"}}\n{{\"device_id\":\"anon-device\"}}"
    );
    // A bad line: 400 naming it, and nothing changes.
    let bad = format!("{lines}\n{{\"email\":\"x\"}}\n");
    let response = replace(&app, ws, "c", &bad).await;
    let answer = expect_json(response, 400).await;
    assert!(answer["message"].as_str().unwrap().starts_with("line 10:"), "{answer}");
    assert_eq!(members(&app, ws, "c").await, ["u0", "u1", "u2", "u3", "u4"]);

    let answer = expect_json(replace(&app, ws, "c", &lines).await, 200).await;
    assert_eq!(
        answer,
        json!({ "added": 2, "removed": 1, "unchanged": 4, "unmatched": 1, "unmatched_unknown": 1,
                "unmatched_device_id_of_identified_user": 0 })
    );
    assert_eq!(members(&app, ws, "c").await, ["(anonymous)", "u0", "u2", "u3", "u4", "u5"]);
    let count: i64 = sqlx::query_scalar("SELECT member_count FROM cohorts WHERE cohort_id = 'c'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 6, "u0 u2 u3 u4 u5 and the anonymous user");
    assert_eq!(log(&app, ws, "c").await.last().unwrap(), &("replace".into(), 2, 1, 4, 1, 0));
    let listed =
        expect_json(app.admin_get(&format!("/admin/workspaces/{ws}/cohorts/kubit/c/unmatched")).await, 200).await;
    assert_eq!(listed["unmatched"][0]["value"], "lost", "{listed}");
    // Replacing with nothing empties it; a replace creates an unknown cohort.
    let answer = expect_json(replace(&app, ws, "c", "").await, 200).await;
    assert_eq!(answer["removed"], 6);
    let answer = expect_json(replace(&app, ws, "fresh", "{\"external_id\":\"u1\"}\n").await, 200).await;
    assert_eq!(answer["added"], 1);
    let wrong_type = app
        .admin(reqwest::Method::PUT, &format!("/admin/workspaces/{ws}/cohorts/kubit/c/members"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), 415);
    assert_bitmaps_match_memberships(&app.pool).await;
}

#[tokio::test]
async fn the_workspace_import_log_pages_newest_first_across_cohorts() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("kubit").await;
    let ws = setup.workspace;
    add_identified(&app, ws, "u", 2).await;
    for cohort in ["a", "b", "a", "c"] {
        let body = json!({ "partner_api_key": setup.partner_api_key, "client_secret": setup.client_secret,
                           "cohort_id": cohort, "cohort_changes": [{ "user_ids": ["u0"] }] });
        let response = app.client.post(app.url("/partners/kubit/cohorts/users")).json(&body).send().await.unwrap();
        expect_json(response, 200).await;
    }
    let path = format!("/admin/workspaces/{ws}/imports?limit=3");
    let first = expect_json(app.admin_get(&path).await, 200).await;
    let cohorts: Vec<&str> =
        first["imports"].as_array().unwrap().iter().map(|i| i["cohort_id"].as_str().unwrap()).collect();
    assert_eq!(cohorts, ["c", "a", "b"]);
    assert_eq!(first["imports"][1]["unchanged"], 1, "the second import of a found u0 there already");
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = expect_json(app.admin_get(&format!("{path}&cursor={cursor}")).await, 200).await;
    assert_eq!(second["imports"].as_array().unwrap().len(), 1);
    assert_eq!(second["imports"][0]["cohort_id"], "a");
    assert_eq!(second["next_cursor"], Value::Null);
    assert_eq!(app.admin_get(&format!("{path}&cursor=forged")).await.status(), 400);
}

/// The partner's rejections, once at least one is listed (they are written in the
/// background), within 5 s.
async fn rejections_of(app: &TestApp, ws: Uuid, partner: &str) -> Value {
    let path = format!("/admin/workspaces/{ws}/partners/{partner}/rejections");
    let mut listed = Value::Null;
    for _ in 0..100 {
        listed = expect_json(app.admin_get(&path).await, 200).await;
        if !listed["rejections"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    listed
}

#[tokio::test]
async fn an_operator_sees_what_a_partner_was_refused_after_its_key_was_accepted() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("kubit").await;
    let ws = setup.workspace;
    let post = |body: Value| app.client.post(app.url("/partners/kubit/cohorts/users")).json(&body).send();
    // Wrong key: the workspace is unknown, nothing to remember.
    let wrong = json!({ "partner_api_key": setup.partner_api_key, "client_secret": "dik_nope", "cohort_id": "c",
                        "cohort_changes": [] });
    assert_eq!(post(wrong).await.unwrap().status(), 401);
    // Accepted key, bad body: remembered, with its request id.
    let bad = json!({ "partner_api_key": setup.partner_api_key, "client_secret": setup.client_secret,
                      "cohort_id": "c", "cohort_changes": [{ "user_ids": "u1" }] });
    let response = app
        .client
        .post(app.url("/partners/kubit/cohorts/users"))
        .header("x-request-id", "req-bad-body")
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let amplitude_key = {
        app.create_partner("amplitude").await;
        app.create_data_import_key(ws, "amplitude").await
    };
    let response = app
        .client
        .post(app.url("/webhooks/amplitude/amplitude"))
        .bearer_auth(&amplitude_key)
        .json(&json!({ "cohort_name": "x", "cohort_id": "1", "in_cohort": "maybe", "users": [] }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    let listed = rejections_of(&app, ws, "kubit").await;
    let rejections = listed["rejections"].as_array().unwrap();
    assert_eq!(rejections.len(), 1, "{listed}");
    assert_eq!(rejections[0]["request_id"], "req-bad-body");
    assert_eq!(rejections[0]["route"], "/partners/{partner}/cohorts/users");
    assert_eq!(rejections[0]["status"], 400);
    assert!(rejections[0]["message"].as_str().unwrap().starts_with("cohort_changes must be"), "{listed}");
    let listed = rejections_of(&app, ws, "amplitude").await;
    assert_eq!(listed["rejections"][0]["route"], "/webhooks/amplitude/{partner}", "{listed}");
    assert_eq!(app.admin_get(&format!("/admin/workspaces/{ws}/partners/nobody/rejections")).await.status(), 404);
}

#[tokio::test]
async fn a_cohorts_unmatched_list_is_capped_and_expires() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("kubit").await;
    let ws = setup.workspace;
    let send = |ids: Vec<String>| {
        let body = json!({ "partner_api_key": setup.partner_api_key, "client_secret": setup.client_secret,
                           "cohort_id": "c", "cohort_changes": [{ "user_ids": ids }] });
        app.client.post(app.url("/partners/kubit/cohorts/users")).json(&body).send()
    };
    // 10,500 distinct unknown ids in 11 requests: 10,000 are kept.
    for request in 0..11 {
        let ids: Vec<String> =
            (0..1000).map(|i| format!("x{:05}", request * 1000 + i)).filter(|id| id.as_str() < "x10500").collect();
        if ids.is_empty() {
            break;
        }
        expect_json(send(ids).await.unwrap(), 200).await;
    }
    let counts: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM cohort_unmatched), (SELECT unmatched_listed FROM cohorts WHERE cohort_id = 'c')",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(counts, (10_000, 10_000));
    // At the cap: a listed id is still counted as seen again; a new one is not kept.
    expect_json(send(vec!["x00007".into(), "brand-new".into()]).await.unwrap(), 200).await;
    let seen: i64 = sqlx::query_scalar("SELECT times_seen FROM cohort_unmatched WHERE value = 'x00007'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(seen, 2);
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM cohort_unmatched WHERE value = 'brand-new'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(kept, 0);
    // An entry not seen for longer than the retention is not listed, and makes room.
    sqlx::query("UPDATE cohort_unmatched SET last_seen = now() - interval '31 days' WHERE value = 'x00000'")
        .execute(&app.pool)
        .await
        .unwrap();
    let path = format!("/admin/workspaces/{ws}/cohorts/kubit/c/unmatched?limit=2");
    let listed = expect_json(app.admin_get(&path).await, 200).await;
    assert_eq!(listed["unmatched"][0]["value"], "x00001", "{listed}");
    expect_json(send(vec!["brand-new".into()]).await.unwrap(), 200).await;
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM cohort_unmatched WHERE value IN ('brand-new', 'x00000')")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(kept, 1, "the expired entry went, the new one took its place");
}
