//! SQL for cohorts; filled in by its issue.
