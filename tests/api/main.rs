//! Black-box tests: each starts the real service on a random port against its own fresh
//! PostgreSQL database (on plain PostgreSQL a copy of a template migrated once per test
//! process, see `helpers`) and talks HTTP to it. One test binary, so it links once; an
//! unused helper is dead code in it, and warned about.

mod helpers;

mod admin;
mod admin_users;
mod citus;
mod cohort_import;
mod commits;
mod contract;
mod hostile_input;
mod operability;
mod plans;
mod segments;
mod slow_clients;
mod startup;
mod webhooks;
