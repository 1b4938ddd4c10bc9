//! cohort-ingest: receives partner cohort imports over the Braze partner cohort-import
//! contract, resolves the identifiers against a PostgreSQL user store, keeps cohort
//! memberships, and answers the segment builder's filters.
//!
//! Data flows one way: [`http`] handlers parse requests into [`domain`] types, the
//! [`store`] runs every SQL statement, and [`error::ApiError`] turns failures into
//! JSON responses.
//!
//! Modules depend on each other one way, without cycles: [`app`] wires the [`http`]
//! handlers, which use [`auth`]; both take [`state::AppState`], which holds the
//! [`middleware`] and the [`store`]; the store works in [`domain`] types and records
//! [`metrics`], which need nothing below them but `domain`.

pub mod app;
pub mod auth;
pub mod config;
pub mod domain;
pub mod error;
pub mod extract;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod serve;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
