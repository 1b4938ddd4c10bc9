//! Black-box tests: each starts the real service on a random port against its own fresh
//! PostgreSQL database and talks HTTP to it. One test binary, so it links once.

// Helpers serve every test module, each using some.
#[allow(dead_code)]
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
