//! Every SQL statement of the service lives here, one file per table family.
//!
//! Functions take the [`database::Database`] (and acquire through it) or a connection or
//! transaction, and return plain row types; they know nothing of HTTP.

pub mod cohorts;
pub mod database;
pub mod keys;
pub mod locks;
pub mod partners;
pub mod segments;
pub mod users;
pub mod workspaces;
