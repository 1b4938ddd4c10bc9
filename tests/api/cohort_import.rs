//! Tests of cohort_import; written with its issue.
