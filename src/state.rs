//! The state every handler and extractor can reach. It sits below the HTTP layer and
//! authentication, which both take it, and above what it holds.

mod key_usage;

use std::sync::Arc;

use tokio::sync::Semaphore;

pub use key_usage::KeyUsage;

use crate::{
    config::Config,
    middleware::{import_gate::ImportGate, rate_limit::RateLimiter},
    store::database::Database,
};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The PostgreSQL pool: every connection is acquired through it.
    pub db: Database,
    /// The settings the service was started with.
    pub config: Arc<Config>,
    /// When keys' `last_used_at` was last written.
    pub key_usage: Arc<KeyUsage>,
    /// `PARTNER_RATE_LIMIT`, per data import key: checked where partner credentials
    /// are resolved.
    pub partner_rate_limit: Arc<RateLimiter>,
    /// `MAX_CONCURRENT_EXPORTS`: a permit per segment export streaming now.
    pub exports: Arc<Semaphore>,
    /// `IMPORT_CONCURRENCY`: partner cohort imports wait here for their turn.
    pub cohort_imports: Arc<ImportGate>,
}

impl AppState {
    /// State for a pool and configuration.
    pub fn new(db: Database, config: Config) -> Self {
        let partner_rate_limit = Arc::new(RateLimiter::new(config.partner_rate_limit));
        let exports = Arc::new(Semaphore::new(config.max_concurrent_exports as usize));
        let cohort_imports = Arc::new(ImportGate::new(config.import_concurrency as usize, config.db_acquire_timeout()));
        AppState {
            db,
            config: Arc::new(config),
            key_usage: Arc::default(),
            partner_rate_limit,
            exports,
            cohort_imports,
        }
    }
}
