//! The operator's resources: workspaces, partners, their keys, and what partners were
//! refused.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::store;

/// A workspace.
#[derive(Debug, Serialize, ToSchema)]
pub struct Workspace {
    /// The workspace's id.
    pub id: Uuid,
    /// Its display name.
    pub name: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

impl From<store::workspaces::Workspace> for Workspace {
    fn from(row: store::workspaces::Workspace) -> Self {
        Workspace { id: row.id, name: row.name, created_at: row.created_at }
    }
}

/// What may be shown of a key after its creation: never the secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyInfo {
    /// The key's id, used to revoke it.
    pub id: Uuid,
    /// Its first characters, to recognise it.
    pub prefix: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last authenticated a request (recorded at most about once a minute).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was invalidated; null while valid.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<store::keys::KeyInfo> for KeyInfo {
    fn from(row: store::keys::KeyInfo) -> Self {
        KeyInfo {
            id: row.id,
            prefix: row.prefix,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
            revoked_at: row.revoked_at,
        }
    }
}

/// A REST API key as listed: its name and scopes besides [`KeyInfo`].
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyInfo {
    /// The key's id.
    pub id: Uuid,
    /// The operator's name for it.
    pub name: String,
    /// What it may do.
    pub scopes: Vec<String>,
    /// Its first characters.
    pub prefix: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last authenticated a request.
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was invalidated; null while valid.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<store::keys::ApiKeyInfo> for ApiKeyInfo {
    fn from(row: store::keys::ApiKeyInfo) -> Self {
        ApiKeyInfo {
            id: row.id,
            name: row.name,
            scopes: row.scopes,
            prefix: row.prefix,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
            revoked_at: row.revoked_at,
        }
    }
}

/// A partner with its partner API keys (no secrets).
#[derive(Debug, Serialize, ToSchema)]
pub struct PartnerWithKeys {
    /// The partner's name, as in `/partners/{partner}/...`.
    pub name: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Its partner API keys, oldest first, revoked ones included.
    pub keys: Vec<KeyInfo>,
}

impl From<store::partners::PartnerWithKeys> for PartnerWithKeys {
    fn from(row: store::partners::PartnerWithKeys) -> Self {
        PartnerWithKeys { name: row.name, created_at: row.created_at, keys: super::all(row.keys) }
    }
}

/// A request answered 4xx.
#[derive(Debug, Serialize, ToSchema)]
pub struct Rejection {
    /// When it was received.
    pub received_at: DateTime<Utc>,
    /// Its request id (`x-request-id`), to find it in the logs.
    pub request_id: String,
    /// The route template it came to.
    pub route: String,
    /// The status it was answered.
    pub status: i32,
    /// The message it was answered (never a secret: client messages only).
    pub message: String,
}

impl From<store::rejections::Rejection> for Rejection {
    fn from(row: store::rejections::Rejection) -> Self {
        Rejection {
            received_at: row.received_at,
            request_id: row.request_id,
            route: row.route,
            status: row.status,
            message: row.message,
        }
    }
}
