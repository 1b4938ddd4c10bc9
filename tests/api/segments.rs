//! The segment filter API: `/v1/cohorts` and `/v1/segments/{count,users,export,check}`.
//!
//! Memberships are written with SQL by the fixture below (keeping `member_count` right),
//! so these tests do not depend on the partner import endpoints.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::helpers::{
    PartnerSetup, TestApp, assert_bitmaps_match_memberships, change_members, expect_error, expect_json, insert_cohort,
    insert_users, wait_for_backend,
};

// ---- fixture ----------------------------------------------------------------------

/// A workspace with partners `kubit` and `segment`, and a `segments.read` key for it.
struct Segments {
    app: TestApp,
    workspace: Uuid,
    key: String,
}

impl Segments {
    async fn new() -> Segments {
        Segments::on(TestApp::spawn().await).await
    }

    /// The same on a service started with other settings.
    async fn on(app: TestApp) -> Segments {
        app.create_partner("kubit").await;
        app.create_partner("segment").await;
        let workspace = app.create_workspace("acme").await;
        let key = app.create_api_key(workspace, &["segments.read"]).await;
        Segments { app, workspace, key }
    }

    /// A workspace partner `kubit` imports into (its credentials come back too), with a
    /// `segments.read` key.
    async fn imported_by_kubit() -> (Segments, PartnerSetup) {
        let app = TestApp::spawn().await;
        let setup = app.partner_setup("kubit").await;
        let key = app.create_api_key(setup.workspace, &["segments.read"]).await;
        (Segments { app, workspace: setup.workspace, key }, setup)
    }

    /// `kubit`'s import adding (or removing) the users with these external ids to cohort
    /// `cohort_id`, through the partner endpoint.
    async fn import(&self, setup: &PartnerSetup, cohort_id: &str, user_ids: &[String], remove: bool) -> StatusCode {
        let body = json!({
            "partner_api_key": setup.partner_api_key,
            "client_secret": setup.client_secret,
            "cohort_id": cohort_id,
            "cohort_changes": [{ "user_ids": user_ids, "should_remove": remove }],
        });
        let response = self.app.client.post(self.app.url("/partners/kubit/cohorts/users")).json(&body).send();
        response.await.unwrap().status()
    }

    /// Another workspace of the same service, with its own key.
    async fn other_workspace(&self) -> (Uuid, String) {
        let workspace = self.app.create_workspace("other").await;
        let key = self.app.create_api_key(workspace, &["segments.read"]).await;
        (workspace, key)
    }

    async fn post_as(&self, key: &str, path: &str, body: &Value) -> reqwest::Response {
        self.app.client.post(self.app.url(path)).bearer_auth(key).json(body).send().await.unwrap()
    }

    async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.post_as(&self.key, path, body).await
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.app.client.get(self.app.url(path)).bearer_auth(&self.key).send().await.unwrap()
    }

    /// Identified users with these external ids.
    async fn users(&self, workspace: Uuid, external_ids: &[&str]) {
        let external_ids: Vec<Option<String>> = external_ids.iter().map(|e| Some(e.to_string())).collect();
        insert_users(&self.app.pool, workspace, &external_ids).await;
    }

    /// Numbers the workspace's next users from `id` on, as if that many had signed up.
    async fn next_user_ids_from(&self, id: i64) {
        sqlx::query("UPDATE user_id_counters SET next_user_id = $2 WHERE workspace_id = $1")
            .bind(self.workspace)
            .bind(id)
            .execute(&self.app.pool)
            .await
            .unwrap();
    }

    /// `count` identified users `<prefix><n>`, n = 1..=count.
    async fn numbered_users(&self, workspace: Uuid, prefix: &str, count: i32) {
        let external_ids: Vec<Option<String>> = (1..=count).map(|n| Some(format!("{prefix}{n}"))).collect();
        insert_users(&self.app.pool, workspace, &external_ids).await;
    }

    /// An anonymous user (no external id) with a device id; returns its braze_id.
    async fn anonymous_user(&self, workspace: Uuid, device_id: &str) -> Uuid {
        let [(id, braze_id)] = insert_users(&self.app.pool, workspace, &[None]).await[..] else { unreachable!() };
        sqlx::query("INSERT INTO user_device_ids (workspace_id, device_id, user_id) VALUES ($1, $2, $3)")
            .bind(workspace)
            .bind(device_id)
            .bind(id)
            .execute(&self.app.pool)
            .await
            .unwrap();
        braze_id
    }

    async fn braze_id(&self, workspace: Uuid, external_id: &str) -> Uuid {
        sqlx::query_scalar("SELECT braze_id FROM users WHERE workspace_id = $1 AND external_id = $2")
            .bind(workspace)
            .bind(external_id)
            .fetch_one(&self.app.pool)
            .await
            .unwrap()
    }

    /// A cohort whose members are the users with these external ids.
    async fn cohort(&self, workspace: Uuid, partner: &str, cohort_id: &str, name: &str, members: &[&str]) {
        insert_cohort(&self.app.pool, workspace, partner, cohort_id, name).await;
        self.change_members(workspace, partner, cohort_id, members, &[]).await;
    }

    /// Adds and removes members by external id, keeping `member_count` exact.
    async fn change_members(&self, workspace: Uuid, partner: &str, cohort_id: &str, add: &[&str], remove: &[&str]) {
        let cohort_ref: i64 =
            sqlx::query_scalar("SELECT id FROM cohorts WHERE workspace_id = $1 AND partner = $2 AND cohort_id = $3")
                .bind(workspace)
                .bind(partner)
                .bind(cohort_id)
                .fetch_one(&self.app.pool)
                .await
                .unwrap();
        let ids = |external_ids: &[&str]| {
            let external_ids: Vec<String> = external_ids.iter().map(|e| e.to_string()).collect();
            sqlx::query_scalar::<_, i64>("SELECT id FROM users WHERE workspace_id = $1 AND external_id = ANY($2)")
                .bind(workspace)
                .bind(external_ids)
                .fetch_all(&self.app.pool)
        };
        let (add, remove) = (ids(add).await.unwrap(), ids(remove).await.unwrap());
        change_members(&self.app.pool, workspace, cohort_ref, &add, &remove).await;
    }

    async fn count(&self, filter: &Value) -> i64 {
        let body = expect_json(self.post("/v1/segments/count", &json!({ "filter": filter })).await, 200).await;
        body["count"].as_i64().unwrap()
    }

    /// Every page of `/v1/segments/users` with `limit`, concatenated.
    async fn all_pages(&self, filter: &Value, limit: i64) -> Vec<Value> {
        let mut users = Vec::new();
        let mut cursor = Value::Null;
        loop {
            let mut request = json!({ "filter": filter, "limit": limit });
            if !cursor.is_null() {
                request["cursor"] = cursor.clone();
            }
            let page = expect_json(self.post("/v1/segments/users", &request).await, 200).await;
            let items = page["users"].as_array().unwrap();
            assert!(items.len() as i64 <= limit);
            users.extend(items.iter().cloned());
            cursor = page["next_cursor"].clone();
            if cursor.is_null() {
                return users;
            }
            assert_eq!(items.len() as i64, limit, "only the last page may be short");
        }
    }

    /// The external ids of the users matching `filter`, after checking that count, the
    /// pages and the export agree.
    async fn members(&self, filter: &Value) -> Vec<String> {
        let paged = self.all_pages(filter, 2).await;
        let ids: Vec<String> = paged.iter().map(|u| u["external_id"].as_str().unwrap_or("").to_owned()).collect();
        assert_eq!(self.count(filter).await, ids.len() as i64, "count agrees with paging for {filter}");
        assert_eq!(self.export(filter).await, paged, "export agrees with paging for {filter}");
        let mut sorted = ids;
        sorted.sort();
        sorted
    }

    async fn export(&self, filter: &Value) -> Vec<Value> {
        let response = self.post("/v1/segments/export", &json!({ "filter": filter })).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/x-ndjson");
        let text = response.text().await.unwrap();
        text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
    }
}

fn includes(ids: &[&str]) -> Value {
    json!({"cohort": {"partner": "kubit", "op": "includes_value", "cohort_ids": ids}})
}

fn excludes(ids: &[&str]) -> Value {
    json!({"cohort": {"partner": "kubit", "op": "does_not_include_value", "cohort_ids": ids}})
}

fn names(list: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// u1..u6; A = {u1, u2}, B = {u2, u3}, C = {u4}; u5 and u6 are in no cohort.
async fn small_world() -> Segments {
    let s = Segments::new().await;
    s.users(s.workspace, &["u1", "u2", "u3", "u4", "u5", "u6"]).await;
    s.cohort(s.workspace, "kubit", "A", "Churn risk", &["u1", "u2"]).await;
    s.cohort(s.workspace, "kubit", "B", "Trial ended", &["u2", "u3"]).await;
    s.cohort(s.workspace, "kubit", "C", "Power users", &["u4"]).await;
    s
}

// ---- operators --------------------------------------------------------------------

#[tokio::test]
async fn each_operator_and_their_nesting_select_the_right_users() {
    let s = small_world().await;
    let cases = [
        (includes(&["A"]), vec!["u1", "u2"]),
        (includes(&["A", "B"]), vec!["u1", "u2", "u3"]),
        (includes(&["B", "A", "A"]), vec!["u1", "u2", "u3"]),
        // Users with no memberships at all (u5, u6) match does_not_include_value.
        (excludes(&["A"]), vec!["u3", "u4", "u5", "u6"]),
        (excludes(&["A", "B"]), vec!["u4", "u5", "u6"]),
        (json!({"and": [includes(&["A"]), includes(&["B"])]}), vec!["u2"]),
        (json!({"and": [includes(&["A"]), excludes(&["B"])]}), vec!["u1"]),
        (json!({"or": [includes(&["A"]), includes(&["C"])]}), vec!["u1", "u2", "u4"]),
        (json!({"not": includes(&["A"])}), vec!["u3", "u4", "u5", "u6"]),
        (json!({"not": excludes(&["C"])}), vec!["u4"]),
        (json!({"not": {"or": [includes(&["A"]), includes(&["B"]), includes(&["C"])]}}), vec!["u5", "u6"]),
        (
            json!({"or": [
                {"and": [includes(&["A"]), {"not": includes(&["B"])}]},
                {"and": [includes(&["C"]), excludes(&["A"])]}
            ]}),
            vec!["u1", "u4"],
        ),
        (json!({"and": [{"or": [includes(&["A"]), includes(&["C"])]}, excludes(&["B"])]}), vec!["u1", "u4"]),
        (json!({"and": [includes(&["A"]), includes(&["C"])]}), vec![]),
        // Shapes a single-cohort conjunct drives, after `not` is pushed onto the leaves.
        (json!({"not": {"or": [excludes(&["A"]), includes(&["B"])]}}), vec!["u1"]),
        (
            json!({"and": [{"and": [excludes(&["C"]), includes(&["B"])]}, {"or": [includes(&["A"]), excludes(&["A"])]}]}),
            vec!["u2", "u3"],
        ),
        (json!({"and": [includes(&["B"]), includes(&["A", "C"])]}), vec!["u2"]),
        (json!({"and": [includes(&["A", "B"]), excludes(&["B"])]}), vec!["u1"]),
        (json!({"not": {"not": includes(&["C"])}}), vec!["u4"]),
    ];
    for (filter, expected) in cases {
        assert_eq!(s.members(&filter).await, names(&expected), "for {filter}");
    }
}

#[tokio::test]
async fn combined_counts_agree_with_the_memberships_across_bitmap_blocks() {
    let s = Segments::new().await;
    // Internal ids 1..=20,000 (user `p<n>` is id n): three 8,192-bit blocks, both block
    // edges inside.
    s.numbered_users(s.workspace, "p", 20_000).await;
    // Which of A, B and C user `p<n>` is in.
    let memberships = |n: u32| (n.is_multiple_of(2), n.is_multiple_of(3), n.is_multiple_of(7) || n <= 200);
    for (position, cohort) in ["A", "B", "C"].into_iter().enumerate() {
        let ids: Vec<String> = (1..=20_000)
            .filter(|&n| {
                let (a, b, c) = memberships(n);
                [a, b, c][position]
            })
            .map(|n| format!("p{n}"))
            .collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        s.cohort(s.workspace, "kubit", cohort, cohort, &ids).await;
    }
    type Expected = fn(bool, bool, bool) -> bool;
    let cases: [(Value, Expected); 6] = [
        (json!({"and": [includes(&["A"]), excludes(&["B"])]}), |a, b, _| a && !b),
        (json!({"and": [includes(&["A"]), includes(&["B"])]}), |a, b, _| a && b),
        (includes(&["A", "C"]), |a, _, c| a || c),
        (json!({"and": [includes(&["A", "B"]), {"not": includes(&["C"])}]}), |a, b, c| (a || b) && !c),
        (json!({"or": [{"and": [includes(&["C"]), excludes(&["A"])]}, includes(&["B"])]}), |a, b, c| (c && !a) || b),
        // Not bounded by its included cohorts: counted in SQL, for comparison.
        (json!({"or": [includes(&["A"]), excludes(&["B"])]}), |a, b, _| a || !b),
    ];
    for (filter, expected) in &cases {
        let want = (1..=20_000)
            .filter(|&n| {
                let (a, b, c) = memberships(n);
                expected(a, b, c)
            })
            .count() as i64;
        assert_eq!(s.count(filter).await, want, "for {filter}");
    }
    // Pages and exports of a bounded filter no single cohort drives come from the bitmaps too.
    let filter = json!({"or": [{"and": [includes(&["C"]), excludes(&["A"])]}, includes(&["B"])]});
    let paged: Vec<String> =
        s.all_pages(&filter, 997).await.iter().map(|u| u["external_id"].as_str().unwrap().to_owned()).collect();
    let expected: Vec<String> = (1..=20_000)
        .filter(|&n| {
            let (a, b, c) = memberships(n);
            (c && !a) || b
        })
        .map(|n| format!("p{n}"))
        .collect();
    assert_eq!(paged, expected);
    let exported: Vec<String> =
        s.export(&filter).await.iter().map(|u| u["external_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(exported, expected, "export (from the bitmaps, 4 blocks a batch) agrees");

    // Removals clear bits, across the blocks too.
    let gone: Vec<String> = (1..=20_000).filter(|n: &u32| n.is_multiple_of(10)).map(|n| format!("p{n}")).collect();
    let gone: Vec<&str> = gone.iter().map(String::as_str).collect();
    s.change_members(s.workspace, "kubit", "A", &[], &gone).await;
    let filter = json!({"and": [includes(&["A"]), excludes(&["B"])]});
    let want = (1..=20_000)
        .filter(|&n| {
            let (a, b, _) = memberships(n);
            a && !b && !n.is_multiple_of(10)
        })
        .count() as i64;
    assert_eq!(s.count(&filter).await, want);
}

#[tokio::test]
async fn single_cohort_count_is_the_maintained_member_count() {
    let s = small_world().await;
    assert_eq!(s.count(&includes(&["A"])).await, 2);
    s.change_members(s.workspace, "kubit", "A", &["u5", "u6"], &["u1"]).await;
    assert_eq!(s.count(&includes(&["A"])).await, 3);
    assert_eq!(s.members(&includes(&["A"])).await, names(&["u2", "u5", "u6"]));
}

#[tokio::test]
async fn leaves_of_other_partners_resolve_their_own_cohorts() {
    let s = small_world().await;
    s.cohort(s.workspace, "segment", "A", "Segment's A", &["u6"]).await;
    let theirs = json!({"cohort": {"partner": "segment", "op": "includes_value", "cohort_ids": ["A"]}});
    assert_eq!(s.members(&theirs).await, names(&["u6"]));
    assert_eq!(s.members(&json!({"or": [theirs, includes(&["A"])]})).await, names(&["u1", "u2", "u6"]));
}

// ---- paging and export ------------------------------------------------------------

#[tokio::test]
async fn paging_returns_every_matching_user_once() {
    let s = Segments::new().await;
    s.numbered_users(s.workspace, "p", 3000).await;
    let a: Vec<String> = (1..=3000).filter(|n| n % 3 != 0).map(|n| format!("p{n}")).collect();
    let b: Vec<String> = (1..=3000).filter(|n| n % 5 == 0).map(|n| format!("p{n}")).collect();
    s.cohort(s.workspace, "kubit", "A", "A", &a.iter().map(String::as_str).collect::<Vec<_>>()).await;
    s.cohort(s.workspace, "kubit", "B", "B", &b.iter().map(String::as_str).collect::<Vec<_>>()).await;

    let filter = json!({"and": [includes(&["A"]), excludes(&["B"])]});
    let count = s.count(&filter).await;
    assert_eq!(count, 1600, "2000 in A, minus the 400 of them in B");
    for limit in [37, 1000, 10_000] {
        let pages = s.all_pages(&filter, limit).await;
        let distinct: HashSet<&str> = pages.iter().map(|u| u["braze_id"].as_str().unwrap()).collect();
        assert_eq!(pages.len() as i64, count, "limit {limit}");
        assert_eq!(distinct.len() as i64, count, "no duplicate with limit {limit}");
    }
    // The export streams the same users in the same order, over many chunks.
    assert_eq!(s.export(&filter).await, s.all_pages(&filter, 10_000).await);
    // The default page size is 1,000.
    let first = expect_json(s.post("/v1/segments/users", &json!({ "filter": filter })).await, 200).await;
    assert_eq!(first["users"].as_array().unwrap().len(), 1000);
}

#[tokio::test]
async fn paging_never_repeats_a_user_while_memberships_change() {
    let s = Segments::new().await;
    s.numbered_users(s.workspace, "p", 300).await;
    let everyone: Vec<String> = (1..=300).map(|n| format!("p{n}")).collect();
    let everyone: Vec<&str> = everyone.iter().map(String::as_str).collect();
    s.cohort(s.workspace, "kubit", "A", "A", &everyone[..200]).await;
    let filter = includes(&["A"]);

    let mut seen = Vec::new();
    let mut cursor = Value::Null;
    let mut page_number = 0;
    loop {
        let mut request = json!({ "filter": filter, "limit": 25 });
        if !cursor.is_null() {
            request["cursor"] = cursor.clone();
        }
        let page = expect_json(s.post("/v1/segments/users", &request).await, 200).await;
        seen.extend(page["users"].as_array().unwrap().iter().map(|u| u["external_id"].as_str().unwrap().to_owned()));
        // An import between pages: users leave and others (already paged or not) join.
        page_number += 1;
        let joiners = &everyone[200 + page_number * 5..200 + page_number * 5 + 5];
        let leavers = &everyone[page_number * 3..page_number * 3 + 3];
        let rejoin = &everyone[..page_number];
        s.change_members(s.workspace, "kubit", "A", &[joiners, rejoin].concat(), leavers).await;
        cursor = page["next_cursor"].clone();
        if cursor.is_null() {
            break;
        }
    }
    let distinct: HashSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), seen.len(), "a user was returned twice: {seen:?}");
    // Users who were members throughout are all there.
    for n in 40..200 {
        assert!(distinct.contains(&format!("p{n}")), "p{n} was a member throughout");
    }
}

#[tokio::test]
async fn export_of_an_empty_segment_is_an_empty_body() {
    let s = small_world().await;
    let filter = json!({"and": [includes(&["A"]), includes(&["C"])]});
    assert_eq!(s.export(&filter).await, Vec::<Value>::new());
    let response = s.post("/v1/segments/export", &json!({ "filter": filter })).await;
    assert_eq!(response.text().await.unwrap(), "");
}

#[tokio::test]
async fn exports_past_the_cap_are_refused_until_one_ends() {
    let s = Segments::on(TestApp::spawn_with(|config| config.max_concurrent_exports = 1).await).await;
    s.users(s.workspace, &["u1", "u2"]).await;
    s.cohort(s.workspace, "kubit", "A", "Churn risk", &["u1", "u2"]).await;
    let body = json!({ "filter": includes(&["A"]) });
    // Lock the bitmaps so that the first export's query waits, holding its permit.
    let mut blocker = s.app.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE cohort_bitmaps IN ACCESS EXCLUSIVE MODE").execute(&mut *blocker).await.unwrap();
    let first =
        tokio::spawn(s.app.client.post(s.app.url("/v1/segments/export")).bearer_auth(&s.key).json(&body).send());
    wait_for_backend(&s.app.pool, "wait_event_type = 'Lock'", "the first export never reached its query").await;

    let refused = tokio::time::timeout(std::time::Duration::from_secs(10), s.post("/v1/segments/export", &body))
        .await
        .expect("a second export is refused at once, not queued behind the first");
    assert_eq!(refused.headers()["retry-after"], "1");
    expect_error(refused, 503, "too many segment exports are running (at most 1); retry later").await;
    // Other requests still get connections.
    assert_eq!(s.count(&includes(&["A"])).await, 2);

    blocker.rollback().await.unwrap();
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.text().await.unwrap().lines().count(), 2);
    // Its permit is back.
    assert_eq!(s.export(&includes(&["A"])).await.len(), 2);
}

#[tokio::test]
async fn export_lines_carry_braze_id_and_external_id() {
    let s = small_world().await;
    let anonymous = s.anonymous_user(s.workspace, "device-1").await;
    let (cohort_ref, user): (i64, i64) = sqlx::query_as(
        "SELECT c.id, u.id FROM users u JOIN cohorts c ON c.workspace_id = u.workspace_id
          WHERE u.braze_id = $1 AND c.cohort_id = 'C'",
    )
    .bind(anonymous)
    .fetch_one(&s.app.pool)
    .await
    .unwrap();
    change_members(&s.app.pool, s.workspace, cohort_ref, &[user], &[]).await;
    let u4 = s.braze_id(s.workspace, "u4").await;
    let lines = s.export(&json!({"or": [includes(&["C"])]})).await;
    assert_eq!(
        lines,
        vec![
            json!({"braze_id": u4.to_string(), "external_id": "u4"}),
            json!({"braze_id": anonymous.to_string(), "external_id": null}),
        ]
    );
}

// ---- check ------------------------------------------------------------------------

#[tokio::test]
async fn check_resolves_each_kind_of_reference_in_the_order_given() {
    let s = small_world().await;
    let anonymous = s.anonymous_user(s.workspace, "device-1").await;
    let u2 = s.braze_id(s.workspace, "u2").await;
    let u3 = s.braze_id(s.workspace, "u3").await;
    let u1 = s.braze_id(s.workspace, "u1").await;
    let u5 = s.braze_id(s.workspace, "u5").await;
    sqlx::query(
        "INSERT INTO user_aliases (workspace_id, alias_label, alias_name, user_id)
         SELECT workspace_id, 'amplitude_id', 'amp-5', id FROM users WHERE workspace_id = $1 AND external_id = 'u5'",
    )
    .bind(s.workspace)
    .execute(&s.app.pool)
    .await
    .unwrap();

    let users = json!([
        {"external_id": "u3"},
        {"braze_id": u1.to_string()},
        {"device_id": "device-1"},
        {"alias": {"alias_label": "amplitude_id", "alias_name": "amp-5"}},
        {"external_id": "nobody"},
        {"braze_id": Uuid::new_v4().to_string()},
        {"device_id": "no-device"},
        {"alias": {"alias_name": "amp-5", "alias_label": "other_label"}},
        {"external_id": "u2"},
        {"external_id": "u3"},
    ]);
    // Users in B, or anonymous.
    let filter =
        json!({"or": [includes(&["B"]), {"not": {"or": [includes(&["A"]), includes(&["B"]), includes(&["C"])]}}]});
    let body = expect_json(s.post("/v1/segments/check", &json!({"filter": filter, "users": users})).await, 200).await;
    let results = body["results"].as_array().unwrap();
    let expected = [
        (Some(u3), true),
        (Some(u1), false),
        (Some(anonymous), true),
        (Some(u5), true),
        (None, false),
        (None, false),
        (None, false),
        (None, false),
        (Some(u2), true),
        (Some(u3), true),
    ];
    assert_eq!(results.len(), expected.len());
    for (i, (result, (braze_id, matches))) in results.iter().zip(expected).enumerate() {
        assert_eq!(result["user"], users[i], "the reference is echoed as given");
        assert_eq!(result["braze_id"], braze_id.map_or(Value::Null, |id| json!(id.to_string())), "users[{i}]");
        assert_eq!(result["matches"], matches, "users[{i}]");
    }

    let empty = expect_json(s.post("/v1/segments/check", &json!({"filter": filter, "users": []})).await, 200).await;
    assert_eq!(empty, json!({"results": []}));
}

#[tokio::test]
async fn check_agrees_with_the_memberships_across_bitmap_blocks() {
    let s = Segments::new().await;
    // Internal ids 1..=20,000 (user `p<n>` is id n): three 8,192-bit blocks. A and B hold
    // members only up to id 8,000, so the blocks above have no bitmap row in any cohort.
    s.numbered_users(s.workspace, "p", 20_000).await;
    let memberships = |n: u32| (n <= 8_000 && n.is_multiple_of(2), n <= 8_000 && n.is_multiple_of(3));
    for (position, cohort) in ["A", "B"].into_iter().enumerate() {
        let ids: Vec<String> = (1..=20_000)
            .filter(|&n| {
                let (a, b) = memberships(n);
                [a, b][position]
            })
            .map(|n| format!("p{n}"))
            .collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        s.cohort(s.workspace, "kubit", cohort, cohort, &ids).await;
    }
    // 1,000 references: users spread over every block, both sides of each block edge
    // (ids 8,191 | 8,192, 16,383 | 16,384), both sides of the last id A and B reach
    // (8,000 | 8,001), and one unknown at [500].
    let edges = [8_191, 8_192, 16_383, 16_384, 8_000, 8_001];
    let checked: Vec<u32> = (0..994).map(|i| 1 + i * 20 + i % 7).chain(edges).collect();
    let mut users: Vec<Value> = checked.iter().map(|n| json!({"external_id": format!("p{n}")})).collect();
    users[500] = json!({"external_id": "nobody"});
    type Expected = fn(bool, bool) -> bool;
    let cases: [(Value, Expected); 5] = [
        (json!({"and": [includes(&["A"]), excludes(&["B"])]}), |a, b| a && !b),
        (includes(&["A", "B"]), |a, b| a || b),
        // Not bounded: users in blocks no cohort reaches match too.
        (json!({"not": includes(&["A"])}), |a, _| !a),
        (json!({"or": [includes(&["A"]), excludes(&["B"])]}), |a, b| a || !b),
        (excludes(&["A", "B"]), |a, b| !a && !b),
    ];
    for (filter, expected) in &cases {
        let body =
            expect_json(s.post("/v1/segments/check", &json!({"filter": filter, "users": users})).await, 200).await;
        let results = body["results"].as_array().unwrap();
        assert_eq!(results.len(), checked.len());
        for (i, (result, &n)) in results.iter().zip(&checked).enumerate() {
            let (a, b) = memberships(n);
            let want = i != 500 && expected(a, b);
            assert_eq!(result["matches"], want, "users[{i}] (p{n}) for {filter}");
        }
    }
}

#[tokio::test]
async fn check_rejects_malformed_references_and_too_many() {
    let s = small_world().await;
    let filter = includes(&["A"]);
    let cases = [
        (
            json!([{"external_id": "u1"}, 7]),
            r#"users[1]: expected an object with exactly one of "external_id", "braze_id", "device_id", "alias""#,
        ),
        (
            json!([{"external_id": "u1", "device_id": "d"}]),
            r#"users[0]: expected an object with exactly one of "external_id", "braze_id", "device_id", "alias""#,
        ),
        (
            json!([{"email": "x@y"}]),
            r#"users[0]: expected an object with exactly one of "external_id", "braze_id", "device_id", "alias""#,
        ),
        (json!([{"external_id": 5}]), "users[0].external_id: expected a string"),
        (json!([{"external_id": ""}]), "users[0].external_id must be a non-empty string"),
        (json!([{"device_id": "a\u{0}b"}]), "users[0].device_id must not contain NUL characters"),
        (json!([{"external_id": "x".repeat(513)}]), "users[0].external_id must be at most 512 bytes"),
        (json!([{"braze_id": "not-a-uuid"}]), "users[0].braze_id: expected a braze_id (a UUID)"),
        (json!([{"alias": "x"}]), r#"users[0].alias: expected an object with "alias_name" and "alias_label""#),
        (json!([{"alias": {"alias_name": "n"}}]), "users[0].alias.alias_label: missing field"),
        (
            json!([{"alias": {"alias_name": "n", "alias_label": ""}}]),
            "users[0].alias.alias_label must be a non-empty string",
        ),
        (
            json!([{"alias": {"alias_name": "n", "alias_label": "l", "x": 1}}]),
            r#"users[0].alias.x: unknown field, expected "alias_name" or "alias_label""#,
        ),
    ];
    for (users, message) in cases {
        let response = s.post("/v1/segments/check", &json!({"filter": filter, "users": users})).await;
        expect_error(response, 400, message).await;
    }
    let thousand: Vec<Value> = (0..1000).map(|i| json!({"external_id": format!("x{i}")})).collect();
    let ok = expect_json(s.post("/v1/segments/check", &json!({"filter": filter, "users": thousand})).await, 200).await;
    assert_eq!(ok["results"].as_array().unwrap().len(), 1000);
    let over: Vec<Value> = (0..1001).map(|i| json!({"external_id": format!("x{i}")})).collect();
    let response = s.post("/v1/segments/check", &json!({"filter": filter, "users": over})).await;
    expect_error(response, 400, "users: at most 1000 references per check").await;
}

// ---- the cohort dropdown ----------------------------------------------------------

#[tokio::test]
async fn cohorts_are_listed_by_name_with_search_partner_and_paging() {
    let s = small_world().await;
    s.cohort(s.workspace, "segment", "S1", "Churn risk (segment)", &["u1"]).await;
    let (other, _) = s.other_workspace().await;
    s.cohort(other, "kubit", "X", "Churn risk elsewhere", &[]).await;

    let all = expect_json(s.get("/v1/cohorts").await, 200).await;
    let listed: Vec<(&str, &str)> = all["cohorts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["partner"].as_str().unwrap(), c["cohort_id"].as_str().unwrap()))
        .collect();
    assert_eq!(listed, [("kubit", "A"), ("segment", "S1"), ("kubit", "C"), ("kubit", "B")]);
    assert_eq!(all["next_cursor"], Value::Null);
    let first = &all["cohorts"][0];
    assert_eq!(first["name"], "Churn risk");
    assert_eq!(first["member_count"], 2);
    assert_eq!(first["last_import_at"], Value::Null);

    let searched = expect_json(s.get("/v1/cohorts?q=cHuRn").await, 200).await;
    assert_eq!(searched["cohorts"].as_array().unwrap().len(), 2);
    let kubit_only = expect_json(s.get("/v1/cohorts?partner=kubit&q=churn").await, 200).await;
    assert_eq!(kubit_only["cohorts"].as_array().unwrap().len(), 1);
    assert_eq!(kubit_only["cohorts"][0]["cohort_id"], "A");
    // `%` and `_` are plain text in a search.
    let percent = expect_json(s.get("/v1/cohorts?q=%25").await, 200).await;
    assert_eq!(percent["cohorts"], json!([]));

    // Paging one at a time walks the same order.
    let mut paged = Vec::new();
    let mut path = "/v1/cohorts?limit=1".to_owned();
    loop {
        let page = expect_json(s.get(&path).await, 200).await;
        paged.extend(page["cohorts"].as_array().unwrap().iter().map(|c| c["cohort_id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/cohorts?limit=1&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(paged, ["A", "S1", "C", "B"]);

    let page = expect_json(s.get("/v1/cohorts?limit=1").await, 200).await;
    let cursor = page["next_cursor"].as_str().unwrap();
    let elsewhere = s.get(&format!("/v1/cohorts?limit=1&q=churn&cursor={cursor}")).await;
    expect_error(
        elsewhere,
        400,
        "cursor: invalid, or from another query; pass the previous page's next_cursor or start again",
    )
    .await;
    expect_error(s.get("/v1/cohorts?limit=0").await, 400, "limit: must be between 1 and 1000").await;
    expect_error(s.get("/v1/cohorts?limit=1001").await, 400, "limit: must be between 1 and 1000").await;
    expect_error(
        s.get("/v1/cohorts?partner=Kubit").await,
        400,
        "partner: name must be 1 to 64 characters of lowercase a-z, 0-9, '_' or '-'",
    )
    .await;
}

// ---- auth -------------------------------------------------------------------------

#[tokio::test]
async fn missing_unknown_and_revoked_keys_are_401_and_a_key_without_scope_is_403() {
    let s = small_world().await;
    let filter = json!({ "filter": includes(&["A"]) });
    let routes = ["/v1/segments/count", "/v1/segments/users", "/v1/segments/export", "/v1/segments/check"];

    for path in routes {
        let missing = s.app.client.post(s.app.url(path)).json(&filter).send().await.unwrap();
        expect_error(missing, 401, "missing API key: send Authorization: Bearer <REST API key>").await;
        expect_error(s.post_as("rak_0000", path, &filter).await, 401, "invalid API key").await;
        // A key pasted with a non-ASCII ellipsis is a key presented, and invalid.
        let pasted = reqwest::header::HeaderValue::from_bytes("Bearer rak_\u{2026}".as_bytes()).unwrap();
        let malformed = s.app.client.post(s.app.url(path)).header("authorization", pasted).json(&filter).send();
        expect_error(malformed.await.unwrap(), 401, "invalid API key").await;
    }
    let missing = s.app.client.get(s.app.url("/v1/cohorts")).send().await.unwrap();
    assert_eq!(missing.status(), 401);

    // A revoked key stops working with the next request.
    let path = format!("/admin/workspaces/{}/api-keys", s.workspace);
    let created =
        expect_json(s.app.admin_post(&path, &json!({"name": "temp", "scopes": ["segments.read"]})).await, 201).await;
    let key = created["key"].as_str().unwrap();
    assert_eq!(s.post_as(key, "/v1/segments/count", &filter).await.status(), 200);
    let revoked = s.app.admin_delete(&format!("{path}/{}", created["id"].as_str().unwrap())).await;
    assert_eq!(revoked.status(), 204);
    expect_error(s.post_as(key, "/v1/segments/count", &filter).await, 401, "invalid API key").await;
    let listing = s.app.client.get(s.app.url("/v1/cohorts")).bearer_auth(key).send().await.unwrap();
    expect_error(listing, 401, "invalid API key").await;

    // Only `segments.read` exists today; a key with another scope stands for a future one.
    let secret = "rak_without_segments_read_scope";
    sqlx::query(
        "INSERT INTO api_keys (workspace_id, id, name, scopes, key_hash, prefix)
         VALUES ($1, $2, 'no scope', ARRAY['segments.write'], $3, 'rak_without')",
    )
    .bind(s.workspace)
    .bind(Uuid::new_v4())
    .bind(Sha256::digest(secret.as_bytes()).to_vec())
    .execute(&s.app.pool)
    .await
    .unwrap();
    for path in routes {
        let body =
            if path.ends_with("check") { json!({"filter": includes(&["A"]), "users": []}) } else { filter.clone() };
        expect_error(s.post_as(secret, path, &body).await, 403, "this API key lacks the segments.read scope").await;
    }
    let listing = s.app.client.get(s.app.url("/v1/cohorts")).bearer_auth(secret).send().await.unwrap();
    expect_error(listing, 403, "this API key lacks the segments.read scope").await;
}

// ---- limits and errors ------------------------------------------------------------

#[tokio::test]
async fn malformed_and_over_limit_filters_are_400_naming_the_place() {
    let s = small_world().await;
    let mut too_deep = includes(&["A"]);
    for _ in 0..10 {
        too_deep = json!({ "not": too_deep });
    }
    let ids: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let cases = [
        (
            json!({"and": [includes(&["A"]), {"cohort": {"partner": "kubit", "op": "includes", "cohort_ids": ["A"]}}]}),
            r#"filter.and[1].cohort.op: expected "includes_value" or "does_not_include_value""#.to_owned(),
        ),
        (json!({"or": []}), "filter.or: expected a non-empty array of filters".to_owned()),
        (json!("A"), r#"filter: expected an object with exactly one of "cohort", "and", "or", "not""#.to_owned()),
        (
            json!({"or": vec![includes(&["A"]); 51]}),
            "filter.or[50].cohort: at most 50 cohort filters in one expression".to_owned(),
        ),
        (too_deep, format!("filter{}: filters nest at most 10 levels deep", ".not".repeat(10))),
        (includes(&ids), "filter.cohort.cohort_ids: at most 100 cohort ids per filter".to_owned()),
        (
            json!({"or": [includes(&["A", "nope"]), includes(&["gone", "nope"]), excludes(&["C"])]}),
            r#"filter: cohorts unknown in this workspace: kubit "nope", kubit "gone""#.to_owned(),
        ),
        (
            json!({"cohort": {"partner": "segment", "op": "includes_value", "cohort_ids": ["A"]}}),
            r#"filter: cohorts unknown in this workspace: segment "A""#.to_owned(),
        ),
    ];
    for (filter, message) in &cases {
        for path in ["/v1/segments/count", "/v1/segments/users", "/v1/segments/export"] {
            expect_error(s.post(path, &json!({ "filter": filter })).await, 400, message).await;
        }
        let check = json!({ "filter": filter, "users": [{"external_id": "u1"}] });
        expect_error(s.post("/v1/segments/check", &check).await, 400, message).await;
    }
    // At the limits exactly, filters are accepted.
    assert_eq!(s.count(&json!({"or": vec![includes(&["A"]); 50]})).await, 2);
    let response = s.post("/v1/segments/count", &json!({})).await;
    assert_eq!(response.status(), 400);
    let response = s.post("/v1/segments/count", &json!({"filter": includes(&["A"]), "extra": 1})).await;
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn page_limits_and_cursors_are_checked() {
    let s = small_world().await;
    let filter = includes(&["A", "B"]);
    for limit in [0, -1, 10_001] {
        let response = s.post("/v1/segments/users", &json!({"filter": filter, "limit": limit})).await;
        expect_error(response, 400, "limit: must be between 1 and 10000").await;
    }
    let page = expect_json(s.post("/v1/segments/users", &json!({"filter": filter, "limit": 1})).await, 200).await;
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let bad_cursor = "cursor: invalid, or from another query; pass the previous page's next_cursor or start again";

    // The same filter written differently keeps the cursor valid.
    let same = json!({"filter": includes(&["B", "A"]), "limit": 1, "cursor": cursor});
    let second = expect_json(s.post("/v1/segments/users", &same).await, 200).await;
    assert_ne!(second["users"][0], page["users"][0]);

    let another = json!({"filter": includes(&["A"]), "limit": 1, "cursor": cursor});
    expect_error(s.post("/v1/segments/users", &another).await, 400, bad_cursor).await;
    for tampered in [format!("{cursor}A"), cursor[1..].to_owned(), "garbage".to_owned(), String::new()] {
        let request = json!({"filter": filter, "limit": 1, "cursor": tampered});
        expect_error(s.post("/v1/segments/users", &request).await, 400, bad_cursor).await;
    }
    // A cursor of another workspace is refused too.
    let (other, other_key) = s.other_workspace().await;
    s.users(other, &["o1"]).await;
    s.cohort(other, "kubit", "A", "A", &["o1"]).await;
    s.cohort(other, "kubit", "B", "B", &[]).await;
    let request = json!({"filter": filter, "limit": 1, "cursor": cursor});
    expect_error(s.post_as(&other_key, "/v1/segments/users", &request).await, 400, bad_cursor).await;
}

// ---- workspace isolation ----------------------------------------------------------

#[tokio::test]
async fn a_key_never_sees_another_workspace() {
    let s = small_world().await;
    let (other, other_key) = s.other_workspace().await;
    s.users(other, &["u1", "o2", "o3"]).await;
    s.cohort(other, "kubit", "A", "Their A", &["u1", "o2", "o3"]).await;
    s.cohort(other, "kubit", "ONLY_THEIRS", "Theirs", &["o2"]).await;

    // Same cohort id, different workspaces: each key counts its own.
    assert_eq!(s.count(&includes(&["A"])).await, 2);
    let theirs =
        expect_json(s.post_as(&other_key, "/v1/segments/count", &json!({"filter": includes(&["A"])})).await, 200).await;
    assert_eq!(theirs["count"], 3);
    // Their universe is theirs: does_not_include counts only their users.
    let theirs =
        expect_json(s.post_as(&other_key, "/v1/segments/count", &json!({"filter": excludes(&["A"])})).await, 200).await;
    assert_eq!(theirs["count"], 0);
    assert_eq!(s.members(&excludes(&["A"])).await, names(&["u3", "u4", "u5", "u6"]));

    let response = s.post("/v1/segments/count", &json!({"filter": includes(&["ONLY_THEIRS"])})).await;
    expect_error(response, 400, r#"filter: cohorts unknown in this workspace: kubit "ONLY_THEIRS""#).await;

    let listed = expect_json(s.get("/v1/cohorts").await, 200).await;
    assert!(listed["cohorts"].as_array().unwrap().iter().all(|c| c["name"] != "Their A" && c["name"] != "Theirs"));

    // Check resolves references in the key's workspace only.
    let their_u1 = s.braze_id(other, "u1").await;
    let our_u1 = s.braze_id(s.workspace, "u1").await;
    let check = json!({"filter": includes(&["A"]), "users": [
        {"external_id": "o2"}, {"braze_id": their_u1.to_string()}, {"external_id": "u1"}
    ]});
    let body = expect_json(s.post("/v1/segments/check", &check).await, 200).await;
    assert_eq!(body["results"][0]["braze_id"], Value::Null);
    assert_eq!(body["results"][1]["braze_id"], Value::Null);
    assert_eq!(body["results"][1]["matches"], false);
    assert_eq!(body["results"][2]["braze_id"], our_u1.to_string());
    assert_eq!(body["results"][2]["matches"], true);
}

// ---- with the partner import --------------------------------------------------------

#[tokio::test]
async fn memberships_imported_by_a_partner_are_what_segments_see() {
    let (s, setup) = Segments::imported_by_kubit().await;
    s.users(s.workspace, &["u1", "u2", "u3"]).await;
    let name = json!({
        "partner_api_key": setup.partner_api_key, "client_secret": setup.client_secret,
        "cohort_id": "A", "name": "Churn risk", "created_at": "2024-03-01T12:00:00Z",
    });
    let named = s.app.client.post(s.app.url("/partners/kubit/cohorts")).json(&name).send().await.unwrap();
    assert_eq!(named.status(), 200);
    let users = |ids: &[&str]| ids.iter().map(|id| id.to_string()).collect::<Vec<_>>();
    assert_eq!(s.import(&setup, "A", &users(&["u1", "u2", "u3"]), false).await, 200);
    assert_eq!(s.import(&setup, "A", &users(&["u2"]), true).await, 200);

    assert_eq!(s.members(&includes(&["A"])).await, names(&["u1", "u3"]));
    assert_eq!(s.members(&excludes(&["A"])).await, names(&["u2"]));
    let listed = expect_json(s.get("/v1/cohorts?partner=kubit").await, 200).await;
    assert_eq!(listed["cohorts"][0]["name"], "Churn risk");
    assert_eq!(listed["cohorts"][0]["member_count"], 2);
    assert!(listed["cohorts"][0]["last_import_at"].is_string());
}

#[tokio::test]
async fn an_export_that_panics_gives_its_connection_back_outside_any_transaction() {
    let (_db, pool) = crate::helpers::TestDatabase::create().await;
    // One connection: the one the export held is the one the next caller gets.
    let options = pool.connect_options().as_ref().clone();
    let single = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect_with(options).await.unwrap();
    let db = cohort_ingest::store::database::Database::new(single);
    let export = tokio::spawn({
        let db = db.clone();
        async move {
            let mut snapshot = cohort_ingest::store::segments::begin_snapshot(&db).await.unwrap();
            sqlx::query("SELECT count(*) FROM users").execute(&mut *snapshot).await.unwrap();
            panic!("an export's producer panics mid-stream");
        }
    });
    assert!(export.await.unwrap_err().is_panic());
    let mut conn = db.acquire().await.unwrap();
    let isolation: String =
        sqlx::query_scalar("SELECT current_setting('transaction_isolation')").fetch_one(&mut *conn).await.unwrap();
    assert_eq!(isolation, "read committed", "the connection came back inside the export's snapshot");
    // And it writes: it is not stuck in a read-only transaction.
    sqlx::query("INSERT INTO workspaces (id, name) VALUES (gen_random_uuid(), 'after the panic')")
        .execute(&mut *conn)
        .await
        .unwrap();
}

/// Imports hold their bit changes back until a cohort has 4,096 of them (in a workspace of
/// up to ~1M users), then write them into the blocks (`store::bit_changes`): every read,
/// before and after, must see exactly the memberships, whatever mix of held-back changes,
/// blocks, user deletions and replaces made them.
#[tokio::test]
async fn imports_held_back_and_folded_are_what_segments_see() {
    let (s, setup) = Segments::imported_by_kubit().await;
    // Ids 1..=20,000 (user `p<n>` is id n): three blocks.
    const USERS: u32 = 20_000;
    s.numbered_users(s.workspace, "p", USERS as i32).await;
    let held_back = |cohort_id: &'static str| {
        sqlx::query_scalar::<_, i32>("SELECT bits_pending FROM cohorts WHERE workspace_id = $1 AND cohort_id = $2")
            .bind(s.workspace)
            .bind(cohort_id)
            .fetch_optional(&s.app.pool)
    };
    let (mut a, mut b): (HashSet<u32>, HashSet<u32>) = (HashSet::new(), HashSet::new());
    let mut deleted: HashSet<u32> = HashSet::new();
    // A fixed stream of requests (SplitMix64), a third of them removals of users that may
    // or may not be members, so ids are set, cleared and set again across held-back rows.
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = move || {
        seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let (mut saw_held_back, mut saw_folded) = (false, false);
    for step in 0..24 {
        let (cohort_id, members) = if step % 4 == 3 { ("B", &mut b) } else { ("A", &mut a) };
        let remove = step > 2 && next() % 3 == 0;
        let users: Vec<u32> = (0..1_000).map(|_| 1 + (next() % u64::from(USERS)) as u32).collect();
        let before = held_back(cohort_id).await.unwrap().unwrap_or(0);
        let user_ids: Vec<String> = users.iter().map(|n| format!("p{n}")).collect();
        assert_eq!(s.import(&setup, cohort_id, &user_ids, remove).await, 200);
        let after = held_back(cohort_id).await.unwrap().unwrap_or(0);
        saw_held_back |= after > before;
        saw_folded |= after < before;
        for n in users.iter().filter(|n| !deleted.contains(n)) {
            if remove {
                members.remove(n)
            } else {
                members.insert(*n)
            };
        }
        if step == 10 {
            // A user deletion clears its bit as a held-back change, after the others.
            let n = *a.iter().min().unwrap();
            let braze_id = s.braze_id(s.workspace, &format!("p{n}")).await;
            let path = format!("/admin/workspaces/{}/users/{braze_id}", s.workspace);
            assert_eq!(s.app.admin_delete(&path).await.status(), 204);
            a.remove(&n);
            b.remove(&n);
            deleted.insert(n);
        }
        if step == 15 {
            // The operator's replace reads the blocks: it folds first.
            let wanted: Vec<u32> = a.iter().copied().filter(|n| n % 5 != 0).take(3_000).collect();
            let ndjson: String = wanted.iter().map(|n| format!("{{\"external_id\":\"p{n}\"}}\n")).collect();
            let path = format!("/admin/workspaces/{}/cohorts/kubit/A/members", s.workspace);
            let response =
                s.app.admin(reqwest::Method::PUT, &path).header("content-type", "application/x-ndjson").body(ndjson);
            assert_eq!(response.send().await.unwrap().status(), 200);
            a = wanted.into_iter().collect();
        }
        if step % 5 != 4 {
            continue;
        }
        let everyone: HashSet<u32> = (1..=USERS).filter(|n| !deleted.contains(n)).collect();
        let cases: [(Value, HashSet<u32>); 3] = [
            (json!({"and": [includes(&["A"]), excludes(&["B"])]}), a.difference(&b).copied().collect()),
            (json!({"not": includes(&["A"])}), everyone.difference(&a).copied().collect()),
            (
                json!({"or": [includes(&["A"]), excludes(&["B"])]}),
                everyone.iter().copied().filter(|n| a.contains(n) || !b.contains(n)).collect(),
            ),
        ];
        for (filter, expected) in &cases {
            assert_eq!(s.count(filter).await, expected.len() as i64, "step {step}: count of {filter}");
        }
        let filter = includes(&["A", "B"]);
        let mut expected: Vec<u32> = a.union(&b).copied().collect();
        expected.sort_unstable();
        let expected: Vec<String> = expected.iter().map(|n| format!("p{n}")).collect();
        let paged: Vec<String> =
            s.all_pages(&filter, 4_999).await.iter().map(|u| u["external_id"].as_str().unwrap().to_owned()).collect();
        assert_eq!(paged, expected, "step {step}: pages of A or B");
        let exported: Vec<String> =
            s.export(&filter).await.iter().map(|u| u["external_id"].as_str().unwrap().to_owned()).collect();
        assert_eq!(exported, expected, "step {step}: export of A or B");
        let checked: Vec<u32> = (0..1_000).map(|i| 1 + i * 19).collect();
        let users: Vec<Value> = checked.iter().map(|n| json!({"external_id": format!("p{n}")})).collect();
        let filter = json!({"and": [includes(&["A"]), excludes(&["B"])]});
        let body =
            expect_json(s.post("/v1/segments/check", &json!({"filter": filter, "users": users})).await, 200).await;
        for (result, n) in body["results"].as_array().unwrap().iter().zip(&checked) {
            let want = a.contains(n) && !b.contains(n);
            assert_eq!(result["matches"], want, "step {step}: check of p{n}");
        }
    }
    assert!(saw_held_back && saw_folded, "the stream both held changes back and folded them");
    assert_bitmaps_match_memberships(&s.app.pool).await;
}

/// Pages and exports read a range of blocks at a time, with the held-back changes of that
/// range: users far past the first range, and changes held back for them, are reached.
#[tokio::test]
async fn pages_and_exports_reach_users_and_held_back_changes_far_apart() {
    let (s, setup) = Segments::imported_by_kubit().await;
    // Users `near<n>` in block 0, users `far<n>` from id 2,000,000 on (block 244): more
    // blocks apart than a page's or an export's read looks at.
    s.numbered_users(s.workspace, "near", 50).await;
    s.next_user_ids_from(2_000_000).await;
    s.numbered_users(s.workspace, "far", 50).await;
    let members: Vec<String> =
        (1..=50).flat_map(|n| [format!("near{n}"), format!("far{n}")]).filter(|id| !id.ends_with('7')).collect();
    assert_eq!(s.import(&setup, "A", &members, false).await, 200);
    let held_back: i32 = sqlx::query_scalar("SELECT bits_pending FROM cohorts WHERE workspace_id = $1")
        .bind(s.workspace)
        .fetch_one(&s.app.pool)
        .await
        .unwrap();
    assert_eq!(held_back, 90, "the import's bits are held back");

    let mut expected = members.clone();
    expected.sort();
    // `A or A`: not a single cohort's count, so it is read from the bitmaps.
    let a = json!({"or": [includes(&["A"]), includes(&["A"])]});
    assert_eq!(s.members(&a).await, expected);
    let mut others: Vec<String> = (1..=50).flat_map(|n| [format!("near{n}"), format!("far{n}")]).collect();
    others.retain(|id| id.ends_with('7'));
    others.sort();
    assert_eq!(s.members(&json!({"not": includes(&["A"])})).await, others);
}

/// The ids a cohort holds back grow with the blocks its workspace's users span: 32 a
/// block above 4,096 (`store::bit_changes`), so a fold at 10M users rewrites as many blocks
/// per id as at 1M. Users from id 2,000,000 on span 245 blocks: 7,840 ids.
#[tokio::test]
async fn a_larger_workspace_holds_more_ids_back_before_a_fold() {
    let (s, setup) = Segments::imported_by_kubit().await;
    s.next_user_ids_from(2_000_000).await;
    s.numbered_users(s.workspace, "p", 8_000).await;
    // The ids the cohort holds back, and the rows they are in.
    let held_back = || {
        sqlx::query_as::<_, (i32, i64)>(
            "SELECT (SELECT bits_pending FROM cohorts WHERE workspace_id = $1),
                    (SELECT count(*) FROM cohort_bit_changes WHERE workspace_id = $1)",
        )
        .bind(s.workspace)
        .fetch_one(&s.app.pool)
    };
    for step in 1..=8 {
        let user_ids: Vec<String> = (1..=1_000).map(|n| format!("p{}", (step - 1) * 1_000 + n)).collect();
        assert_eq!(s.import(&setup, "A", &user_ids, false).await, 200);
        // Seven imports are held back, 7,000 ids in seven rows; the eighth folds them all.
        let expected = if step < 8 { (step * 1_000, i64::from(step)) } else { (0, 0) };
        assert_eq!(held_back().await.unwrap(), expected, "after import {step}");
        if step >= 7 {
            // Not a single cohort's count, so it is read from the bitmaps and held rows.
            let a = json!({"or": [includes(&["A"]), includes(&["A"])]});
            assert_eq!(s.count(&a).await, i64::from(step) * 1_000, "after import {step}");
        }
    }
    assert_bitmaps_match_memberships(&s.app.pool).await;
}
