//! The three key tables: `partner_api_keys`, `data_import_keys`, `api_keys`.
//!
//! Keys are stored as SHA-256 hashes (see [`crate::keys`]); lookups go by hash, so a
//! near-miss key costs the same as a random one. Revocation sets `revoked_at`, which
//! every lookup checks: a revoked key stops working with the next request.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::{
    domain::{PartnerName, Scope},
    keys::{KeyHash, NewKey},
    store::database::Database,
};

/// A key's row without its hash.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyInfo {
    pub id: Uuid,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A REST API key as listed: its name and scopes besides [`KeyInfo`].
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyInfo {
    pub id: Uuid,
    pub name: String,
    pub scopes: Vec<String>,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A key that authenticated a request, by table and primary key, for recording its use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UsedKey {
    /// A row of `partner_api_keys`.
    PartnerApi(Uuid),
    /// A row of `data_import_keys`.
    DataImport {
        /// The key's workspace.
        workspace_id: Uuid,
        /// The key's id.
        id: Uuid,
    },
    /// A row of `api_keys`.
    Api {
        /// The key's workspace.
        workspace_id: Uuid,
        /// The key's id.
        id: Uuid,
    },
}

// ---- partner API keys -------------------------------------------------------------

/// Stores a new partner API key for `partner`.
pub async fn insert_partner_api_key(
    executor: impl PgExecutor<'_>,
    partner: &PartnerName,
    key: &NewKey,
) -> sqlx::Result<KeyInfo> {
    sqlx::query_as!(
        KeyInfo,
        "INSERT INTO partner_api_keys (id, partner, key_hash, prefix) VALUES ($1, $2, $3, $4)
         RETURNING id, prefix, created_at, last_used_at, revoked_at",
        Uuid::new_v4(),
        partner.as_str(),
        key.hash.as_bytes(),
        key.prefix,
    )
    .fetch_one(executor)
    .await
}

/// Revokes one of `partner`'s API keys. `false` when no such key exists; revoking an
/// already revoked key keeps its first `revoked_at`.
pub async fn revoke_partner_api_key(db: &Database, partner: &str, id: Uuid) -> sqlx::Result<bool> {
    let mut tx = db.begin().await?;
    let result = sqlx::query!(
        "UPDATE partner_api_keys SET revoked_at = coalesce(revoked_at, $3) WHERE partner = $1 AND id = $2",
        partner,
        id,
        Utc::now(),
    )
    .execute(&mut *tx)
    .await?;
    db.commit(tx).await?;
    Ok(result.rows_affected() == 1)
}

// ---- data import keys -------------------------------------------------------------

/// Stores a new data import key of `workspace_id` for `partner`.
pub async fn insert_data_import_key(
    executor: impl PgExecutor<'_>,
    workspace_id: Uuid,
    partner: &str,
    key: &NewKey,
) -> sqlx::Result<KeyInfo> {
    sqlx::query_as!(
        KeyInfo,
        "INSERT INTO data_import_keys (workspace_id, id, partner, key_hash, prefix) VALUES ($1, $2, $3, $4, $5)
         RETURNING id, prefix, created_at, last_used_at, revoked_at",
        workspace_id,
        Uuid::new_v4(),
        partner,
        key.hash.as_bytes(),
        key.prefix,
    )
    .fetch_one(executor)
    .await
}

/// A workspace's data import keys for one partner, oldest first.
pub async fn list_data_import_keys(db: &Database, workspace_id: Uuid, partner: &str) -> sqlx::Result<Vec<KeyInfo>> {
    let mut conn = db.acquire().await?;
    sqlx::query_as!(
        KeyInfo,
        "SELECT id, prefix, created_at, last_used_at, revoked_at FROM data_import_keys
          WHERE workspace_id = $1 AND partner = $2 ORDER BY created_at, id",
        workspace_id,
        partner,
    )
    .fetch_all(&mut *conn)
    .await
}

/// Revokes a data import key. `false` when no such key exists.
pub async fn revoke_data_import_key(db: &Database, workspace_id: Uuid, partner: &str, id: Uuid) -> sqlx::Result<bool> {
    let mut tx = db.begin().await?;
    let result = sqlx::query!(
        "UPDATE data_import_keys SET revoked_at = coalesce(revoked_at, $4)
          WHERE workspace_id = $1 AND partner = $2 AND id = $3",
        workspace_id,
        partner,
        id,
        Utc::now(),
    )
    .execute(&mut *tx)
    .await?;
    db.commit(tx).await?;
    Ok(result.rows_affected() == 1)
}

/// The outcome of looking up the two keys of a partner request, in one round trip.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PartnerCredentials {
    /// Whether `partner_api_key` is a valid key of the partner in the path.
    pub partner_key_id: Option<Uuid>,
    /// The valid data import key presented as `client_secret`, if any.
    pub import_key_id: Option<Uuid>,
    /// The workspace that key belongs to.
    pub workspace_id: Option<Uuid>,
    /// The partner that key was issued for.
    pub import_key_partner: Option<String>,
}

/// Looks both keys of a partner request up by hash, valid (unrevoked) keys only.
pub async fn find_partner_credentials(
    db: &Database,
    partner: &str,
    partner_api_key: &KeyHash,
    client_secret: &KeyHash,
) -> sqlx::Result<PartnerCredentials> {
    let mut conn = db.acquire().await?;
    sqlx::query_as!(
        PartnerCredentials,
        r#"SELECT (SELECT id FROM partner_api_keys
                  WHERE key_hash = $2 AND partner = $1 AND revoked_at IS NULL) AS "partner_key_id?",
                d.id AS "import_key_id?", d.workspace_id AS "workspace_id?", d.partner AS "import_key_partner?"
           FROM (SELECT 1) AS one
           LEFT JOIN data_import_keys d ON d.key_hash = $3 AND d.revoked_at IS NULL"#,
        partner,
        partner_api_key.as_bytes(),
        client_secret.as_bytes(),
    )
    .fetch_one(&mut *conn)
    .await
}

/// A valid data import key of `partner`, found by hash: its id and workspace.
pub async fn find_data_import_key(db: &Database, partner: &str, hash: &KeyHash) -> sqlx::Result<Option<(Uuid, Uuid)>> {
    let mut conn = db.acquire().await?;
    sqlx::query!(
        "SELECT id, workspace_id FROM data_import_keys WHERE key_hash = $1 AND partner = $2 AND revoked_at IS NULL",
        hash.as_bytes(),
        partner,
    )
    .map(|key| (key.id, key.workspace_id))
    .fetch_optional(&mut *conn)
    .await
}

// ---- REST API keys ----------------------------------------------------------------

/// Stores a new REST API key of `workspace_id`.
pub async fn insert_api_key(
    executor: impl PgExecutor<'_>,
    workspace_id: Uuid,
    name: &str,
    scopes: &[Scope],
    key: &NewKey,
) -> sqlx::Result<ApiKeyInfo> {
    let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    sqlx::query_as!(
        ApiKeyInfo,
        "INSERT INTO api_keys (workspace_id, id, name, scopes, key_hash, prefix) VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING id, name, scopes, prefix, created_at, last_used_at, revoked_at",
        workspace_id,
        Uuid::new_v4(),
        name,
        &scopes[..] as &[&str],
        key.hash.as_bytes(),
        key.prefix,
    )
    .fetch_one(executor)
    .await
}

/// A workspace's REST API keys, oldest first.
pub async fn list_api_keys(db: &Database, workspace_id: Uuid) -> sqlx::Result<Vec<ApiKeyInfo>> {
    let mut conn = db.acquire().await?;
    sqlx::query_as!(
        ApiKeyInfo,
        "SELECT id, name, scopes, prefix, created_at, last_used_at, revoked_at
           FROM api_keys WHERE workspace_id = $1 ORDER BY created_at, id",
        workspace_id,
    )
    .fetch_all(&mut *conn)
    .await
}

/// Revokes a REST API key. `false` when no such key exists.
pub async fn revoke_api_key(db: &Database, workspace_id: Uuid, id: Uuid) -> sqlx::Result<bool> {
    let mut tx = db.begin().await?;
    let result = sqlx::query!(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, $3) WHERE workspace_id = $1 AND id = $2",
        workspace_id,
        id,
        Utc::now(),
    )
    .execute(&mut *tx)
    .await?;
    db.commit(tx).await?;
    Ok(result.rows_affected() == 1)
}

/// A valid REST API key, found by the hash of the presented bearer token.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyRecord {
    /// The key's id.
    pub id: Uuid,
    /// The workspace it belongs to: the only one it can see.
    pub workspace_id: Uuid,
    /// Its scopes, as stored.
    pub scopes: Vec<String>,
}

/// Finds an unrevoked REST API key by hash.
pub async fn find_api_key(db: &Database, hash: &KeyHash) -> sqlx::Result<Option<ApiKeyRecord>> {
    let mut conn = db.acquire().await?;
    sqlx::query_as!(
        ApiKeyRecord,
        "SELECT id, workspace_id, scopes FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        hash.as_bytes(),
    )
    .fetch_optional(&mut *conn)
    .await
}

// ---- usage ------------------------------------------------------------------------

/// Records that a key authenticated a request now. (The time is bound, never `now()`:
/// Citus evaluates no volatile function inside its statements on shards.)
pub async fn record_last_used(db: &Database, key: UsedKey) -> sqlx::Result<()> {
    let now = Utc::now();
    let mut conn = db.acquire().await?;
    match key {
        UsedKey::PartnerApi(id) => {
            sqlx::query!("UPDATE partner_api_keys SET last_used_at = $2 WHERE id = $1", id, now)
                .execute(&mut *conn)
                .await
        }
        UsedKey::DataImport { workspace_id, id } => {
            sqlx::query!(
                "UPDATE data_import_keys SET last_used_at = $3 WHERE workspace_id = $1 AND id = $2",
                workspace_id,
                id,
                now,
            )
            .execute(&mut *conn)
            .await
        }
        UsedKey::Api { workspace_id, id } => {
            sqlx::query!(
                "UPDATE api_keys SET last_used_at = $3 WHERE workspace_id = $1 AND id = $2",
                workspace_id,
                id,
                now
            )
            .execute(&mut *conn)
            .await
        }
    }
    .map(|_| ())
}
