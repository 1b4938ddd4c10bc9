//! Input a fuzzer or a hostile client sends: NUL in paths and queries, duplicate JSON
//! keys. Each is parsed at the edge and answered as the client's error, never reaching
//! the database.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, expect_json};

#[tokio::test]
async fn nul_in_a_path_or_query_parameter_is_the_clients_error() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("kubit").await;
    let ws = setup.workspace;
    let key = uuid::Uuid::new_v4();
    let admin: Vec<(Method, String)> = vec![
        (Method::GET, format!("/admin/workspaces/{ws}/cohorts?partner=%00")),
        (Method::GET, format!("/admin/workspaces/{ws}/cohorts/kubit/%00")),
        (Method::DELETE, format!("/admin/workspaces/{ws}/cohorts/kubit/%00")),
        (Method::GET, format!("/admin/workspaces/{ws}/cohorts/%00/x")),
        (Method::GET, format!("/admin/workspaces/{ws}/cohorts/kubit/%00/imports")),
        (Method::GET, format!("/admin/workspaces/{ws}/cohorts/kubit/%00/members")),
        (Method::GET, format!("/admin/workspaces/{ws}/cohorts/kubit/a%00b/members")),
        (Method::POST, "/admin/partners/%00/api-keys".to_owned()),
        (Method::DELETE, format!("/admin/partners/%00/api-keys/{key}")),
        (Method::GET, format!("/admin/workspaces/{ws}/partners/%00/data-import-keys")),
        (Method::POST, format!("/admin/workspaces/{ws}/partners/%00/data-import-keys")),
        (Method::DELETE, format!("/admin/workspaces/{ws}/partners/%00/data-import-keys/{key}")),
        (Method::GET, format!("/admin/workspaces/{ws}/users?external_id=%00")),
        (Method::GET, format!("/admin/workspaces/{ws}/users?device_id=a%00")),
        (Method::GET, format!("/admin/workspaces/{ws}/users?alias_label=%00&alias_name=x")),
    ];
    for (method, path) in admin {
        let response = app.admin(method.clone(), &path).json(&json!({})).send().await.unwrap();
        let body = expect_json(response, 400).await;
        assert!(body["message"].is_string(), "{method} {path}: {body}");
    }
    let api_key = app.create_api_key(ws, &["segments.read"]).await;
    for path in ["/v1/cohorts?partner=%00", "/v1/cohorts?q=%00", "/v1/cohorts?cursor=%00"] {
        let response = app.client.get(app.url(path)).bearer_auth(&api_key).send().await.unwrap();
        expect_json(response, 400).await;
    }
    // The partner routes answer the contract's 401 before anything else.
    let body = json!({ "partner_api_key": setup.partner_api_key, "client_secret": setup.client_secret,
                       "cohort_id": "c", "cohort_changes": [] });
    for path in ["/partners/%00/cohorts/users", "/partners/%00/cohorts", "/partners/k%FF/cohorts"] {
        let response = app.client.post(app.url(path)).json(&body).send().await.unwrap();
        let answer = expect_json(response, 401).await;
        assert_eq!(answer["message"], "Invalid Partner API key", "{path}");
    }
    let response = app.client.post(app.url("/partners/%00/cohorts/users")).body("{}").send().await.unwrap();
    expect_json(response, 401).await;
}
/// Posts a raw body to a partner endpoint.
async fn post_partner(app: &TestApp, route: &str, body: String) -> Value {
    let response = app.client.post(app.url(&format!("/partners/kubit/{route}"))).body(body).send().await.unwrap();
    let status = response.status().as_u16();
    let mut answer = expect_json(response, status).await;
    answer["status"] = json!(status);
    answer
}

#[tokio::test]
async fn duplicate_keys_are_refused_on_every_json_body() {
    let app = TestApp::spawn().await;
    let setup = app.partner_setup("kubit").await;
    let (pak, dik) = (&setup.partner_api_key, &setup.client_secret);
    let users = format!("/admin/workspaces/{}/users/batch", setup.workspace);
    expect_json(app.admin_post(&users, &json!({ "users": [{ "external_id": "u1" }] })).await, 200).await;

    // Ambiguous credentials are no credentials, even when the last one is good.
    let changes = r#"[{"user_ids":["u1"]}]"#;
    for body in [
        format!(
            r#"{{"partner_api_key":"pak_bad","partner_api_key":"{pak}","client_secret":"{dik}","cohort_id":"c","cohort_changes":{changes}}}"#
        ),
        format!(
            r#"{{"partner_api_key":"{pak}","partner_api_key":"{pak}","client_secret":"{dik}","cohort_id":"c","cohort_changes":{changes}}}"#
        ),
    ] {
        let answer = post_partner(&app, "cohorts/users", body).await;
        assert_eq!(
            (answer["status"].as_u64(), answer["message"].as_str()),
            (Some(401), Some("Invalid Partner API key"))
        );
    }
    let body = format!(
        r#"{{"partner_api_key":"{pak}","client_secret":"dik_bad","client_secret":"{dik}","cohort_id":"c","cohort_changes":{changes}}}"#
    );
    let answer = post_partner(&app, "cohorts/users", body).await;
    assert_eq!((answer["status"].as_u64(), answer["message"].as_str()), (Some(401), Some("Invalid client secret")));

    // Other fields given twice, escaped or not: 400 once the caller is known.
    for (route, body, key) in [
        (
            "cohorts/users",
            format!(
                r#"{{"partner_api_key":"{pak}","client_secret":"{dik}","cohort_id":"a","cohort_id":"b","cohort_changes":{changes}}}"#
            ),
            "cohort_id",
        ),
        (
            "cohorts/users",
            format!(
                r#"{{"partner_api_key":"{pak}","client_secret":"{dik}","cohort_id":"a","cohort\u005fid":"b","cohort_changes":{changes}}}"#
            ),
            "cohort_id",
        ),
        (
            "cohorts/users",
            format!(
                r#"{{"partner_api_key":"{pak}","client_secret":"{dik}","cohort_id":"a","cohort_changes":[],"cohort_changes":{changes}}}"#
            ),
            "cohort_changes",
        ),
        (
            "cohorts",
            format!(
                r#"{{"partner_api_key":"{pak}","client_secret":"{dik}","cohort_id":"a","name":"x","name":"y","created_at":"2024-03-01T12:00:00Z"}}"#
            ),
            "name",
        ),
    ] {
        let answer = post_partner(&app, route, body).await;
        assert_eq!(answer["status"], 400, "{answer}");
        assert_eq!(answer["message"], format!("duplicate field `{key}`"));
    }
    let written: i64 = sqlx::query_scalar("SELECT count(*) FROM cohorts").fetch_one(&app.pool).await.unwrap();
    assert_eq!(written, 0, "a request with duplicate keys wrote");

    // Every other JSON body, at any depth.
    let api_key = app.create_api_key(setup.workspace, &["segments.read"]).await;
    let leaf = r#"{"cohort":{"partner":"kubit","op":"includes_value","cohort_ids":["c"]}}"#;
    let admin_bodies = [
        ("/admin/workspaces", r#"{"name":"a","name":"b"}"#.to_owned()),
        (users.as_str(), r#"{"users":[{"external_id":"x","external_id":"y"}]}"#.to_owned()),
        (users.as_str(), r#"{"users":[],"users":[{"external_id":"y"}]}"#.to_owned()),
    ];
    for (path, body) in admin_bodies {
        let response = app
            .admin(Method::POST, path)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let answer = expect_json(response, 400).await;
        assert!(answer["message"].as_str().unwrap().contains("duplicate field"), "{body}: {answer}");
    }
    for body in [
        format!(r#"{{"filter":{{"and":[{leaf}],"and":[{leaf},{leaf}]}}}}"#),
        r#"{"filter":{"cohort":{"partner":"kubit","partner":"x","op":"includes_value","cohort_ids":["c"]}}}"#
            .to_owned(),
        format!(r#"{{"filter":{leaf},"filter":{leaf}}}"#),
    ] {
        let response = app
            .client
            .post(app.url("/v1/segments/count"))
            .bearer_auth(&api_key)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let answer = expect_json(response, 400).await;
        assert!(answer["message"].as_str().unwrap().starts_with("duplicate field"), "{body}: {answer}");
    }
}
