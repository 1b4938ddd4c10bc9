//! `partners`: the analytics tools that post cohorts.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use crate::{
    domain::PartnerName,
    store::{database::Database, keys::KeyInfo},
};

/// A partner with its partner API keys (no secrets).
#[derive(Debug, Clone)]
pub struct PartnerWithKeys {
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub keys: Vec<KeyInfo>,
}

/// Inserts a partner; `false` if the name is taken. (A conflict, not a unique violation:
/// on Citus a violation names the constraint of a shard, not the table's.)
pub async fn insert(executor: impl PgExecutor<'_>, name: &PartnerName) -> sqlx::Result<bool> {
    let inserted = sqlx::query!("INSERT INTO partners (name) VALUES ($1) ON CONFLICT DO NOTHING", name.as_str())
        .execute(executor)
        .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Whether a partner of that name exists.
pub async fn exists(executor: impl PgExecutor<'_>, name: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM partners WHERE name = $1) AS "exists!""#, name)
        .fetch_one(executor)
        .await
}

/// Every partner with its keys, by name.
pub async fn list_with_keys(db: &Database) -> sqlx::Result<Vec<PartnerWithKeys>> {
    let mut conn = db.acquire().await?;
    let partners = sqlx::query!("SELECT name, created_at FROM partners ORDER BY name").fetch_all(&mut *conn).await?;
    let keys: Vec<(String, KeyInfo)> = sqlx::query!(
        "SELECT partner, id, prefix, created_at, last_used_at, revoked_at
           FROM partner_api_keys ORDER BY partner, created_at, id",
    )
    .map(|k| {
        let key = KeyInfo {
            id: k.id,
            prefix: k.prefix,
            created_at: k.created_at,
            last_used_at: k.last_used_at,
            revoked_at: k.revoked_at,
        };
        (k.partner, key)
    })
    .fetch_all(&mut *conn)
    .await?;
    Ok(partners
        .into_iter()
        .map(|partner| PartnerWithKeys {
            keys: keys.iter().filter(|(of, _)| *of == partner.name).map(|(_, key)| key.clone()).collect(),
            name: partner.name,
            created_at: partner.created_at,
        })
        .collect())
}
