//! Citus: when the database has the `citus` extension, the global tables become reference
//! tables (a copy on every node) and every workspace table is distributed by
//! `workspace_id`, co-located, so a workspace's rows of every table sit on one node and
//! each of the service's statements runs there. Idempotent: tables already distributed
//! are left alone. On plain PostgreSQL nothing here runs.

use sqlx::PgConnection;

/// The global tables, as reference tables: referenced before referencing.
const REFERENCE_TABLES: &[&str] = &["workspaces", "partners", "partner_api_keys", "data_import_keys", "api_keys"];

/// The workspace tables, distributed by `workspace_id` and co-located with the first:
/// referenced before referencing.
const DISTRIBUTED_TABLES: &[&str] = &[
    "user_id_counters",
    "users",
    "user_aliases",
    "user_device_ids",
    "user_bitmaps",
    "cohort_id_counters",
    "cohorts",
    "cohort_memberships",
    "cohort_bitmaps",
    "cohort_bit_changes",
    "cohort_imports",
    "cohort_unmatched",
    "matching_rules",
    "delivered_messages",
    "member_sessions",
    "member_session_pages",
    "partner_rejections",
];

/// Whether the database has the `citus` extension.
pub async fn is_citus(conn: &mut PgConnection) -> sqlx::Result<bool> {
    sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') AS "exists!""#)
        .fetch_one(conn)
        .await
}

/// Distributes the schema on Citus, if the database has Citus; `true` if it has.
pub async fn distribute(conn: &mut PgConnection) -> sqlx::Result<bool> {
    if !is_citus(&mut *conn).await? {
        return Ok(false);
    }
    // Otherwise making the global tables reference tables would first turn the tables
    // that reference them into Citus-local tables, which then cannot be distributed.
    sqlx::query("SET citus.enable_local_reference_table_foreign_keys = off").execute(&mut *conn).await?;
    for &table in REFERENCE_TABLES {
        if !is_distributed(&mut *conn, table).await? {
            sqlx::query("SELECT create_reference_table($1)").bind(table).execute(&mut *conn).await?;
            tracing::info!(table, "made a reference table");
        }
    }
    let colocate_with = DISTRIBUTED_TABLES[0];
    for &table in DISTRIBUTED_TABLES {
        if !is_distributed(&mut *conn, table).await? {
            let colocation = if table == colocate_with { "default" } else { colocate_with };
            sqlx::query("SELECT create_distributed_table($1, 'workspace_id', colocate_with => $2)")
                .bind(table)
                .bind(colocation)
                .execute(&mut *conn)
                .await?;
            tracing::info!(table, "distributed by workspace_id");
        }
    }
    sqlx::query("RESET citus.enable_local_reference_table_foreign_keys").execute(&mut *conn).await?;
    Ok(true)
}

/// Whether Citus already knows `table` (distributed or reference).
async fn is_distributed(conn: &mut PgConnection, table: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = $1::regclass)")
        .bind(table)
        .fetch_one(conn)
        .await
}
