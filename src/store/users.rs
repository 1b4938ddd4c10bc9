//! SQL for users; filled in by its issue.
