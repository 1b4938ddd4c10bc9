//! Input a fuzzer or a hostile client sends: NUL in paths and queries, duplicate JSON
//! keys. Each is parsed at the edge and answered as the client's error, never reaching
//! the database.

use reqwest::Method;
use serde_json::json;

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
