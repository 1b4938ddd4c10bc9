//! On Citus (the test suite's Citus mode, see `helpers::citus_workers`): every statement
//! the service runs is a router plan, one task on one worker. The whole suite already
//! fails a statement that would touch several shards; this test reads the plan of every
//! statement a representative workload runs, through every hot endpoint, and also refuses
//! plans that pull rows through the coordinator.

use serde_json::json;

use crate::{
    helpers::{citus_workers, expect_json},
    plans::Plans,
};

#[tokio::test]
async fn every_statement_of_a_workload_is_a_single_task_router_plan() {
    if citus_workers().is_none() {
        eprintln!("skipped: set CITUS_TEST_COORDINATOR and CITUS_TEST_WORKERS to run it on Citus");
        return;
    }
    let (app, plans, _collecting) = Plans::of_an_app().await;
    let setup = app.partner_setup("kubit").await;
    let ws = setup.workspace;
    let admin = |path: &str| format!("/admin/workspaces/{ws}{path}");

    // The user store: a batch, an NDJSON load, identify, lookups, a profile.
    let batch = json!({ "users": [
        { "external_id": "u1", "aliases": [{ "alias_label": "email", "alias_name": "a@x" }] },
        { "external_id": "u2" },
        { "device_ids": ["d3"] },
    ] });
    let body = expect_json(app.admin_post(&admin("/users/batch"), &batch).await, 200).await;
    let anonymous = body["results"][2]["braze_id"].as_str().unwrap().to_owned();
    let ndjson = "{\"external_id\":\"u4\"}\n{\"external_id\":\"u5\",\"device_ids\":[\"d5\"]}\n";
    let response =
        app.admin(reqwest::Method::POST, &admin("/users/import")).header("content-type", "application/x-ndjson");
    assert_eq!(response.body(ndjson).send().await.unwrap().status(), 200);
    let identify = json!({ "external_id": "u3" });
    expect_json(app.admin_post(&admin(&format!("/users/{anonymous}/identify")), &identify).await, 200).await;
    expect_json(app.admin_get(&admin("/users?external_id=u1")).await, 200).await;
    expect_json(app.admin_get(&admin("/users?alias_label=email&alias_name=a@x")).await, 200).await;

    // The partner contract: a name, imports that add and remove, by every kind of id.
    let partner = |path: &str, body: serde_json::Value| {
        let mut body = body;
        body["partner_api_key"] = json!(setup.partner_api_key);
        body["client_secret"] = json!(setup.client_secret);
        app.client.post(app.url(&format!("/partners/kubit/{path}"))).json(&body).send()
    };
    let name = json!({ "cohort_id": "A", "name": "Churn risk", "created_at": "2026-01-01T00:00:00Z" });
    assert_eq!(partner("cohorts", name).await.unwrap().status(), 200);
    for (cohort, changes) in [
        ("A", json!([{ "user_ids": ["u1", "u2", "u4", "nobody"] }, { "device_ids": ["d5"] }])),
        (
            "A",
            json!([{ "user_ids": ["u2"], "should_remove": true }, { "aliases": [{ "alias_label": "email", "alias_name": "a@x" }] }]),
        ),
        ("B", json!([{ "user_ids": ["u2", "u3"] }])),
    ] {
        let body = json!({ "cohort_id": cohort, "cohort_changes": changes });
        assert_eq!(partner("cohorts/users", body).await.unwrap().status(), 200);
    }

    // Imports that take a cohort past the ids it may hold back: the one that does reads
    // the workspace's user counter and folds the held-back rows into the blocks.
    let ndjson: String = (1..=4_100).map(|n| format!("{{\"external_id\":\"n{n}\"}}\n")).collect();
    let response =
        app.admin(reqwest::Method::POST, &admin("/users/import")).header("content-type", "application/x-ndjson");
    assert_eq!(response.body(ndjson).send().await.unwrap().status(), 200);
    for first in (1..=4_100).step_by(1_000) {
        let user_ids: Vec<String> = (first..(first + 1_000).min(4_101)).map(|n| format!("n{n}")).collect();
        let body = json!({ "cohort_id": "F", "cohort_changes": [{ "user_ids": user_ids }] });
        assert_eq!(partner("cohorts/users", body).await.unwrap().status(), 200);
    }

    // A rejected body (remembered for the operator).
    let bad = json!({ "cohort_id": "A", "cohort_changes": [{ "user_ids": "u1" }] });
    assert_eq!(partner("cohorts/users", bad).await.unwrap().status(), 400);

    // The webhooks: matching rules, Mixpanel add/remove and a two-page members session,
    // Amplitude with a message id, twice; the operator's replace.
    app.create_partner("mixpanel").await;
    app.create_partner("amplitude").await;
    let mixpanel_key = app.create_data_import_key(ws, "mixpanel").await;
    let amplitude_key = app.create_data_import_key(ws, "amplitude").await;
    let rules = json!({ "rules": [{ "field": "mixpanel_distinct_id", "as": "external_id" },
                                  { "field": "email", "as": "alias", "alias_label": "email" }] });
    let put = app.admin(reqwest::Method::PUT, &admin("/partners/mixpanel/matching")).json(&rules).send().await;
    assert_eq!(put.unwrap().status(), 200);
    expect_json(app.admin_get(&admin("/partners/mixpanel/matching")).await, 200).await;
    let mixpanel = |action: &str, members: serde_json::Value, page: Option<(i64, i64)>| {
        let mut parameters = json!({ "mixpanel_cohort_id": "M", "mixpanel_cohort_name": "Mixed", "members": members });
        if let Some((page_count, total_pages)) = page {
            parameters["mixpanel_session_id"] = json!("s");
            parameters["page_info"] = json!({ "page_count": page_count, "total_pages": total_pages });
        }
        let body = json!({ "action": action, "parameters": parameters });
        app.client.post(app.url("/webhooks/mixpanel/mixpanel")).basic_auth("m", Some(&mixpanel_key)).json(&body).send()
    };
    let members = json!([{ "mixpanel_distinct_id": "u2" }, { "mixpanel_distinct_id": "x", "email": "a@x" },
                         { "mixpanel_distinct_id": "ghost" }]);
    assert_eq!(mixpanel("add_members", members.clone(), None).await.unwrap().status(), 200);
    assert_eq!(
        mixpanel("remove_members", json!([{ "mixpanel_distinct_id": "u2" }]), None).await.unwrap().status(),
        200
    );
    assert_eq!(mixpanel("members", members, Some((2, 2))).await.unwrap().status(), 200);
    assert_eq!(
        mixpanel("members", json!([{ "mixpanel_distinct_id": "u4" }]), Some((1, 2))).await.unwrap().status(),
        200
    );
    let message = json!({ "cohort_name": "Amp", "cohort_id": "P", "in_cohort": true, "message_id": "m1",
                          "users": [{ "user_id": "u2" }, { "user_id": "ghost" }] });
    for _ in 0..2 {
        let sent = app.client.post(app.url("/webhooks/amplitude/amplitude")).bearer_auth(&amplitude_key).json(&message);
        assert_eq!(sent.send().await.unwrap().status(), 200);
    }
    let replace = app
        .admin(reqwest::Method::PUT, &admin("/cohorts/kubit/A/members"))
        .header("content-type", "application/x-ndjson")
        .body("{\"external_id\":\"u2\"}\n{\"device_id\":\"d5\"}\n{\"external_id\":\"lost\"}\n");
    assert_eq!(replace.send().await.unwrap().status(), 200);

    // The segment filter API, every shape of filter.
    let key = app.create_api_key(ws, &["segments.read"]).await;
    let leaf = |op: &str, id: &str| json!({ "cohort": { "partner": "kubit", "op": op, "cohort_ids": [id] } });
    let filters = [
        leaf("includes_value", "A"),
        json!({ "and": [leaf("includes_value", "A"), leaf("does_not_include_value", "B")] }),
        json!({ "or": [leaf("includes_value", "A"), leaf("includes_value", "B")] }),
        json!({ "not": leaf("includes_value", "A") }),
        json!({ "or": [leaf("includes_value", "A"), leaf("does_not_include_value", "B")] }),
    ];
    let segments = |path: &str, body: serde_json::Value| {
        app.client.post(app.url(&format!("/v1/segments/{path}"))).bearer_auth(&key).json(&body).send()
    };
    for filter in &filters {
        for path in ["count", "users", "export"] {
            assert_eq!(segments(path, json!({ "filter": filter })).await.unwrap().status(), 200, "{path} {filter}");
        }
    }
    let check = json!({ "filter": filters[1], "users": [{ "external_id": "u1" }, { "device_id": "d3" },
        { "alias": { "alias_label": "email", "alias_name": "a@x" } }] });
    assert_eq!(segments("check", check).await.unwrap().status(), 200);
    let listed = app.client.get(app.url("/v1/cohorts")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(listed.status(), 200);

    // The operator's views and deletions.
    for path in [
        "/cohorts",
        "/cohorts/kubit/A",
        "/cohorts/kubit/A/imports",
        "/cohorts/kubit/A/members",
        "/cohorts/kubit/A/unmatched",
        "/imports",
        "/partners/kubit/rejections",
    ] {
        expect_json(app.admin_get(&admin(path)).await, 200).await;
    }
    let u1 = expect_json(app.admin_get(&admin("/users?external_id=u1")).await, 200).await;
    let u1 = u1["braze_id"].as_str().unwrap().to_owned();
    assert_eq!(app.admin_delete(&admin(&format!("/users/{u1}"))).await.status(), 204);
    assert_eq!(app.admin_delete(&admin("/cohorts/kubit/B")).await.status(), 204);

    let plans = plans.0.lock().unwrap().clone();
    let distributed: Vec<&String> = plans.iter().filter(|plan| plan.contains("Custom Scan (Citus")).collect();
    let offending: Vec<&&String> = distributed
        .iter()
        .filter(|plan| {
            !plan.contains("Task Count: 1\n")
                || ["Distributed Subplan", "pull to coordinator", "repartition", "Task Count: 0"]
                    .iter()
                    .any(|bad| plan.contains(bad))
        })
        .collect();
    assert!(
        offending.is_empty(),
        "plans that are not one task on one worker:\n{}",
        offending.iter().map(|p| p.as_str()).collect::<Vec<_>>().join("\n\n")
    );
    let mut statements: Vec<&str> =
        distributed.iter().filter_map(|plan| plan.lines().find(|l| l.starts_with("Query Text:"))).collect();
    statements.sort_unstable();
    statements.dedup();
    // Every hot endpoint ran its statements above: far more distinct ones than this.
    assert!(statements.len() >= 40, "only {} distinct distributed statements were seen", statements.len());
    assert!(
        statements.iter().any(|s| s.contains("SELECT next_user_id FROM user_id_counters")),
        "no import read the user counter to fold"
    );
}
