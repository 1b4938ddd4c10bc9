//! Tests of operability; written with its issue.
