//! Tests of admin_users; written with its issue.
