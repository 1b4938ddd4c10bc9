//! The operator admin API: auth, partners, workspaces, keys.

use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::helpers::{ADMIN_TOKEN, TestApp, expect_error, expect_json};

#[tokio::test]
async fn admin_api_is_disabled_without_admin_token() {
    let app = TestApp::spawn_with(|config| config.admin_token = None).await;
    let response = app.client.get(app.url("/admin/workspaces")).bearer_auth("anything").send().await.unwrap();
    expect_error(response, 401, "the admin API is disabled until ADMIN_TOKEN is set").await;
}

#[tokio::test]
async fn admin_api_rejects_missing_and_wrong_tokens() {
    let app = TestApp::spawn().await;
    let missing = app.client.get(app.url("/admin/workspaces")).send().await.unwrap();
    expect_error(missing, 401, "missing admin token: send Authorization: Bearer <ADMIN_TOKEN>").await;

    let near_miss = format!("{ADMIN_TOKEN}x");
    for token in [near_miss.as_str(), "wrong", &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1]] {
        let wrong = app.client.get(app.url("/admin/workspaces")).bearer_auth(token).send().await.unwrap();
        expect_error(wrong, 401, "invalid admin token").await;
    }
    // A rejected write changes nothing.
    let rejected = app
        .client
        .post(app.url("/admin/partners"))
        .bearer_auth("wrong")
        .json(&json!({ "name": "kubit" }))
        .send()
        .await
        .unwrap();
    assert_eq!(rejected.status(), 401);
    let partners = expect_json(app.admin_get("/admin/partners").await, 200).await;
    assert_eq!(partners["partners"], json!([]));
}

#[tokio::test]
async fn partner_is_created_once_with_a_key_shown_once_and_stored_hashed() {
    let app = TestApp::spawn().await;
    let created = expect_json(app.admin_post("/admin/partners", &json!({ "name": "kubit" })).await, 201).await;
    assert_eq!(created["name"], "kubit");
    let key = created["partner_api_key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("pak_"), "{key}");
    assert!(key.len() >= 4 + 32, "at least 128 bits of hex: {key}");

    let again = app.admin_post("/admin/partners", &json!({ "name": "kubit" })).await;
    expect_error(again, 409, "partner kubit already exists").await;

    // Only the SHA-256 hash and a prefix are stored: the secret is nowhere in the table.
    let (hash, prefix): (Vec<u8>, String) =
        sqlx::query_as("SELECT key_hash, prefix FROM partner_api_keys").fetch_one(&app.pool).await.unwrap();
    assert_eq!(hash, Sha256::digest(key.as_bytes()).to_vec());
    assert!(key.starts_with(&prefix) && prefix.len() < key.len());
    let dump: String = sqlx::query_scalar("SELECT string_agg(t::text, '') FROM partner_api_keys t")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(!dump.contains(&key));

    // The listing shows the key's prefix, never the secret.
    let listed = app.admin_get("/admin/partners").await.text().await.unwrap();
    assert!(!listed.contains(&key));
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["partners"][0]["name"], "kubit");
    assert_eq!(listed["partners"][0]["keys"][0]["prefix"], prefix.as_str());
    assert_eq!(listed["partners"][0]["keys"][0]["revoked_at"], Value::Null);
}

#[tokio::test]
async fn partner_names_are_validated() {
    let app = TestApp::spawn().await;
    for name in ["Kubit", "", "a b", &"x".repeat(65)] {
        let response = app.admin_post("/admin/partners", &json!({ "name": name })).await;
        expect_error(response, 400, "name must be 1 to 64 characters of lowercase a-z, 0-9, '_' or '-'").await;
    }
    let missing = expect_json(app.admin_post("/admin/partners", &json!({})).await, 400).await;
    assert!(missing["message"].as_str().unwrap().contains("name"), "{missing}");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM partners").fetch_one(&app.pool).await.unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn partner_keys_rotate_and_revoke() {
    let app = TestApp::spawn().await;
    let first = app.create_partner("segment").await;
    let second = expect_json(app.admin_post("/admin/partners/segment/api-keys", &json!({})).await, 201).await;
    assert_ne!(second["key"].as_str().unwrap(), first);
    let id = second["id"].as_str().unwrap();

    let listed = expect_json(app.admin_get("/admin/partners").await, 200).await;
    assert_eq!(listed["partners"][0]["keys"].as_array().unwrap().len(), 2);

    assert_eq!(app.admin_delete(&format!("/admin/partners/segment/api-keys/{id}")).await.status(), 204);
    let listed = expect_json(app.admin_get("/admin/partners").await, 200).await;
    let keys = listed["partners"][0]["keys"].as_array().unwrap();
    let revoked: Vec<_> = keys.iter().filter(|k| !k["revoked_at"].is_null()).collect();
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0]["id"], id);

    let unknown = app.admin_delete(&format!("/admin/partners/segment/api-keys/{}", Uuid::new_v4())).await;
    assert_eq!(unknown.status(), 404);
    let unknown_partner = app.admin_post("/admin/partners/nobody/api-keys", &json!({})).await;
    expect_error(unknown_partner, 404, "unknown partner nobody").await;
}

#[tokio::test]
async fn workspaces_are_created_listed_and_fetched() {
    let app = TestApp::spawn().await;
    let created = expect_json(app.admin_post("/admin/workspaces", &json!({ "name": "Acme" })).await, 201).await;
    let id = created["id"].as_str().unwrap();
    assert_eq!(created["name"], "Acme");
    assert!(created["created_at"].is_string());

    let fetched = expect_json(app.admin_get(&format!("/admin/workspaces/{id}")).await, 200).await;
    assert_eq!(fetched, created);
    let listed = expect_json(app.admin_get("/admin/workspaces").await, 200).await;
    assert_eq!(listed["workspaces"], json!([created]));

    let unknown = Uuid::new_v4();
    expect_error(
        app.admin_get(&format!("/admin/workspaces/{unknown}")).await,
        404,
        &format!("unknown workspace {unknown}"),
    )
    .await;
    let malformed = expect_json(app.admin_get("/admin/workspaces/not-a-uuid").await, 400).await;
    assert!(malformed["message"].as_str().unwrap().starts_with("invalid path"), "{malformed}");
    let empty = app.admin_post("/admin/workspaces", &json!({ "name": "  " })).await;
    assert_eq!(empty.status(), 400);
}

#[tokio::test]
async fn data_import_keys_are_created_listed_and_invalidated() {
    let app = TestApp::spawn().await;
    app.create_partner("kubit").await;
    let ws = app.create_workspace("Acme").await;
    let path = format!("/admin/workspaces/{ws}/partners/kubit/data-import-keys");

    let created = expect_json(app.admin_post(&path, &json!({})).await, 201).await;
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("dik_"));
    for field in ["id", "prefix", "created_at"] {
        assert!(created[field].is_string(), "{field} in {created}");
    }
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT key_hash FROM data_import_keys").fetch_one(&app.pool).await.unwrap();
    assert_eq!(stored, Sha256::digest(key.as_bytes()).to_vec());

    let listed = app.admin_get(&path).await.text().await.unwrap();
    assert!(!listed.contains(&key), "listing leaks the secret");
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["keys"][0]["id"], created["id"]);
    assert_eq!(listed["keys"][0]["last_used_at"], Value::Null);

    let id = created["id"].as_str().unwrap();
    assert_eq!(app.admin_delete(&format!("{path}/{id}")).await.status(), 204);
    let listed = expect_json(app.admin_get(&path).await, 200).await;
    assert!(listed["keys"][0]["revoked_at"].is_string());

    let unknown_ws = Uuid::new_v4();
    let response =
        app.admin_post(&format!("/admin/workspaces/{unknown_ws}/partners/kubit/data-import-keys"), &json!({})).await;
    expect_error(response, 404, &format!("unknown workspace {unknown_ws}")).await;
    let response =
        app.admin_post(&format!("/admin/workspaces/{ws}/partners/nobody/data-import-keys"), &json!({})).await;
    expect_error(response, 404, "unknown partner nobody").await;
}

#[tokio::test]
async fn api_keys_need_known_scopes() {
    let app = TestApp::spawn().await;
    let ws = app.create_workspace("Acme").await;
    let path = format!("/admin/workspaces/{ws}/api-keys");

    let bad = app.admin_post(&path, &json!({ "name": "builder", "scopes": ["segments.read", "segments.write"] })).await;
    expect_error(bad, 400, "scopes[1]: unknown scope; known scopes: segments.read").await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys").fetch_one(&app.pool).await.unwrap();
    assert_eq!(count, 0, "a rejected request stores nothing");

    let created =
        expect_json(app.admin_post(&path, &json!({ "name": "builder", "scopes": ["segments.read"] })).await, 201).await;
    let key = created["key"].as_str().unwrap();
    assert!(key.starts_with("rak_"));
    assert_eq!(created["scopes"], json!(["segments.read"]));

    let listed = app.admin_get(&path).await.text().await.unwrap();
    assert!(!listed.contains(key));
    let id = created["id"].as_str().unwrap();
    assert_eq!(app.admin_delete(&format!("{path}/{id}")).await.status(), 204);
    assert_eq!(app.admin_delete(&format!("{path}/{}", Uuid::new_v4())).await.status(), 404);
}

#[tokio::test]
async fn malformed_admin_bodies_get_json_errors() {
    let app = TestApp::spawn().await;
    let not_json = app
        .admin(Method::POST, "/admin/workspaces")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    let wrong_type = app
        .admin(Method::POST, "/admin/workspaces")
        .header("content-type", "text/plain")
        .body(r#"{"name":"x"}"#)
        .send()
        .await
        .unwrap();
    expect_error(wrong_type, 415, "expected a request body with Content-Type: application/json").await;
    let number = expect_json(app.admin_post("/admin/workspaces", &json!({ "name": 5 })).await, 400).await;
    assert!(number["message"].as_str().unwrap().contains("name"), "{number}");
}
