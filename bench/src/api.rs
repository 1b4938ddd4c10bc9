//! The service's HTTP API as the benchmark uses it: the admin calls that set a run up,
//! and the checks every response goes through.

use anyhow::{Context, bail};
use reqwest::Response;
use serde_json::{Value, json};
use uuid::Uuid;

/// The partner the benchmark imports as.
pub const PARTNER: &str = "bench";

/// A client of one running service.
#[derive(Clone)]
pub struct Api {
    /// Shared connection pool.
    pub client: reqwest::Client,
    base_url: String,
    admin_token: String,
}

/// What a partner needs to import into the benchmark's workspace, and the REST API key
/// the segment filter calls use.
#[derive(Debug, Clone)]
pub struct Setup {
    pub workspace: Uuid,
    pub partner_api_key: String,
    pub client_secret: String,
    pub rest_api_key: String,
}

impl Api {
    /// A client of the service at `base_url`.
    pub fn new(client: reqwest::Client, base_url: &str, admin_token: &str) -> Api {
        Api { client, base_url: base_url.to_owned(), admin_token: admin_token.to_owned() }
    }

    /// The absolute URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// A POST with the admin token.
    pub fn admin_post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(self.url(path)).bearer_auth(&self.admin_token)
    }

    /// A PUT with the admin token.
    pub fn admin_put(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.put(self.url(path)).bearer_auth(&self.admin_token)
    }

    /// Creates the workspace, the partner, a data import key linking them and a REST API
    /// key with `segments.read`.
    pub async fn set_up(&self) -> anyhow::Result<Setup> {
        let workspace = self.created("/admin/workspaces", json!({ "name": "cohort-bench" })).await?;
        let workspace: Uuid = string_field(&workspace, "id")?.parse().context("workspace id is not a UUID")?;
        let partner = self.created("/admin/partners", json!({ "name": PARTNER })).await?;
        let partner_api_key = string_field(&partner, "partner_api_key")?;
        let key_path = format!("/admin/workspaces/{workspace}/partners/{PARTNER}/data-import-keys");
        let client_secret = string_field(&self.created(&key_path, json!({})).await?, "key")?;
        let api_key_path = format!("/admin/workspaces/{workspace}/api-keys");
        let api_key =
            self.created(&api_key_path, json!({ "name": "cohort-bench", "scopes": ["segments.read"] })).await?;
        let rest_api_key = string_field(&api_key, "key")?;
        Ok(Setup { workspace, partner_api_key, client_secret, rest_api_key })
    }

    /// An admin POST that creates something; its JSON body.
    async fn created(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let response = self.admin_post(path).json(&body).send().await.with_context(|| format!("POST {path}"))?;
        success_json(response, path).await
    }
}

/// The JSON body of a successful (2xx) response; anything else is an error that names the
/// request, the status and the service's message.
pub async fn success_json(response: Response, what: &str) -> anyhow::Result<Value> {
    let status = response.status();
    let text = response.text().await.with_context(|| format!("{what}: reading the response"))?;
    if !status.is_success() {
        bail!("{what}: {status}: {}", first_chars(&text, 300));
    }
    serde_json::from_str(&text).with_context(|| format!("{what}: response is not JSON"))
}

/// A string field of a JSON object.
pub fn string_field(body: &Value, field: &str) -> anyhow::Result<String> {
    body[field].as_str().map(str::to_owned).with_context(|| format!("response has no string {field:?}"))
}

/// A non-negative integer field of a JSON object.
pub fn count_field(body: &Value, field: &str) -> anyhow::Result<u64> {
    body[field].as_u64().with_context(|| format!("response has no count {field:?}"))
}

/// At most `limit` characters of `text`, for error messages.
fn first_chars(text: &str, limit: usize) -> String {
    text.chars().take(limit).collect()
}
