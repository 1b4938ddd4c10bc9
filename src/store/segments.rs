//! SQL for segments; filled in by its issue.
