//! Tests of segments; written with its issue.
