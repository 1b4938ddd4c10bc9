//! `last_used_at` bookkeeping without a write on every request.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::store::{self, database::Database, keys::UsedKey};

/// How often, at most, one key's `last_used_at` is written by one instance.
const RECORD_INTERVAL: Duration = Duration::from_secs(60);

/// Remembers when this instance last wrote each key's `last_used_at`, so that a busy
/// key costs one background UPDATE a minute instead of one per request.
#[derive(Debug, Default)]
pub struct KeyUsage {
    last_recorded: Mutex<HashMap<UsedKey, Instant>>,
}

impl KeyUsage {
    /// Notes that `key` authenticated a request; writes `last_used_at` in the background
    /// when the last write is older than a minute. Never delays or fails the request.
    pub fn record(&self, db: &Database, key: UsedKey) {
        let now = Instant::now();
        {
            let mut last_recorded = self.last_recorded.lock().unwrap_or_else(|e| e.into_inner());
            match last_recorded.get(&key) {
                Some(at) if now.duration_since(*at) < RECORD_INTERVAL => return,
                _ => last_recorded.insert(key, now),
            };
        }
        let db = db.clone();
        tokio::spawn(async move {
            if let Err(error) = store::keys::record_last_used(&db, key).await {
                tracing::debug!(%error, "could not record a key's last use");
            }
        });
    }
}
