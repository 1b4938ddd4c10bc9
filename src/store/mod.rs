//! Every SQL statement of the service lives here, one file per table family.
//!
//! Functions take the [`database::Database`] (and acquire through it) or a connection or
//! transaction, and return plain row types; they know nothing of HTTP. Every statement on
//! a workspace's tables filters them by one `workspace_id`, so that on Citus it runs on
//! the one node holding that workspace ([`distribution`]).
//!
//! Every write, even of one statement, runs in a transaction committed with
//! [`database::Database::commit`] (not `tx.commit()`, nor autocommit): that is what lets
//! a request past its deadline answer its COMMIT's real outcome instead of a 503 for a
//! change that was applied.

pub mod bit_changes;
pub mod bitmaps;
pub mod cohorts;
pub mod copy;
pub mod database;
pub mod distribution;
pub mod keys;
pub mod locks;
pub mod matching;
pub mod partners;
pub mod rejections;
pub mod segments;
pub mod sessions;
pub mod users;
pub mod workspaces;
