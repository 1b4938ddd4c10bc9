//! The user store: `users`, `user_aliases`, `user_device_ids`.
//!
//! Every write to a workspace's users runs in a transaction that holds the workspace's
//! user-store lock ([`begin_writes`]): the upsert rules decide in memory from what they
//! read, so nothing may change those identifiers between the read and the write. Reads
//! (lookups, cohort imports) take no lock.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgExecutor, Postgres, Transaction};
use utoipa::ToSchema;
use uuid::Uuid;

use super::locks::{self, MembershipWriter};
use crate::domain::{
    Alias, DeviceId, ExternalId, IdentifierError,
    profile::{
        IdentifierKeys, Profile, StoredIdentifier, StoredUser, UpsertOutcome, Upserter, UserRef, UserStoreChanges,
        WrittenIdentifiers,
    },
};
use crate::store::database::Database;

/// A user as the admin API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct UserProfile {
    /// The public id.
    pub braze_id: Uuid,
    /// The customer's id; null for an anonymous user.
    pub external_id: Option<String>,
    /// Its aliases, by label then name.
    #[sqlx(json)]
    pub aliases: Vec<ProfileAlias>,
    /// Its device ids, sorted.
    pub device_ids: Vec<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// The cohorts it belongs to, by partner then cohort id.
    #[sqlx(json)]
    pub cohorts: Vec<ProfileCohort>,
}

/// One alias of a [`UserProfile`].
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProfileAlias {
    /// The label.
    pub alias_label: String,
    /// The name within the label.
    pub alias_name: String,
}

/// One cohort membership of a [`UserProfile`].
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProfileCohort {
    /// The partner that imports the cohort.
    pub partner: String,
    /// The partner's id of the cohort.
    pub cohort_id: String,
    /// The cohort's name.
    pub name: String,
    /// When the user joined it.
    pub added_at: DateTime<Utc>,
}

/// How a user is looked up.
#[derive(Debug, Clone)]
pub enum UserLookup {
    /// By public id.
    BrazeId(Uuid),
    /// By external id.
    ExternalId(ExternalId),
    /// By device id.
    DeviceId(DeviceId),
    /// By alias.
    Alias(Alias),
}

/// The profile query, with the filter that picks the user appended; `$1` is the workspace.
macro_rules! profile_query {
    ($filter:literal) => {
        concat!(
            "SELECT u.braze_id, u.external_id, u.created_at,
                coalesce((SELECT jsonb_agg(jsonb_build_object('alias_label', a.alias_label, 'alias_name', a.alias_name)
                                           ORDER BY a.alias_label, a.alias_name)
                          FROM user_aliases a WHERE a.workspace_id = u.workspace_id AND a.user_id = u.id),
                         '[]') AS aliases,
                ARRAY(SELECT d.device_id FROM user_device_ids d
                      WHERE d.workspace_id = u.workspace_id AND d.user_id = u.id ORDER BY d.device_id) AS device_ids,
                coalesce((SELECT jsonb_agg(jsonb_build_object('partner', c.partner, 'cohort_id', c.cohort_id,
                                                              'name', c.name, 'added_at', m.added_at)
                                           ORDER BY c.partner, c.cohort_id)
                          FROM cohort_memberships m
                          JOIN cohorts c ON c.workspace_id = m.workspace_id AND c.id = m.cohort_ref
                          WHERE m.workspace_id = u.workspace_id AND m.user_id = u.id),
                         '[]') AS cohorts
             FROM users u WHERE u.workspace_id = $1 AND ",
            $filter
        )
    };
}

/// The profile of the user `lookup` names, if there is one.
pub async fn find_profile(
    executor: impl PgExecutor<'_>,
    workspace_id: Uuid,
    lookup: &UserLookup,
) -> sqlx::Result<Option<UserProfile>> {
    let query = match lookup {
        UserLookup::BrazeId(braze_id) => {
            sqlx::query_as(profile_query!("u.braze_id = $2")).bind(workspace_id).bind(*braze_id)
        }
        UserLookup::ExternalId(external_id) => {
            sqlx::query_as(profile_query!("u.external_id = $2")).bind(workspace_id).bind(external_id.as_str())
        }
        UserLookup::DeviceId(device_id) => sqlx::query_as(profile_query!(
            "u.id = (SELECT user_id FROM user_device_ids WHERE workspace_id = $1 AND device_id = $2)"
        ))
        .bind(workspace_id)
        .bind(device_id.as_str()),
        UserLookup::Alias(alias) => sqlx::query_as(profile_query!(
            "u.id = (SELECT user_id FROM user_aliases
                     WHERE workspace_id = $1 AND alias_label = $2 AND alias_name = $3)"
        ))
        .bind(workspace_id)
        .bind(alias.alias_label.as_str())
        .bind(alias.alias_name.as_str()),
    };
    query.fetch_optional(executor).await
}

/// Begins a transaction that holds the workspace's user-store lock until it ends, so
/// user-store writes of one workspace happen one at a time.
pub async fn begin_writes(db: &Database, workspace_id: Uuid) -> sqlx::Result<Transaction<'static, Postgres>> {
    let mut tx = db.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('cohort-ingest user store ' || $1::text, 0))")
        .bind(workspace_id)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Which identifiers the upserts of one transaction from [`begin_writes`] look up in the
/// store.
///
/// In a workspace that had no users when the transaction took the user-store lock, the
/// only identifiers the store can hold are those the transaction wrote itself: nothing
/// else writes them until it commits. So a first load remembers what it wrote, in Bloom
/// filters, and looks up only the identifiers those may hold, instead of probing three
/// indexes for every identifier of every chunk: a fifth of PostgreSQL's work when a
/// million users are loaded (BENCHMARKS.md).
#[derive(Debug)]
pub enum StoreLookups {
    /// The workspace had users: look every identifier up.
    Every,
    /// The workspace had none: look up only what this transaction may have written.
    WrittenHere(WrittenIdentifiers),
}

impl StoreLookups {
    /// What `conn`, in a transaction from [`begin_writes`], has to look up.
    pub async fn for_workspace(conn: &mut PgConnection, workspace_id: Uuid) -> sqlx::Result<Self> {
        let has_users: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE workspace_id = $1)")
            .bind(workspace_id)
            .fetch_one(conn)
            .await?;
        Ok(if has_users { StoreLookups::Every } else { StoreLookups::WrittenHere(WrittenIdentifiers::default()) })
    }

    /// Decides the upserts of `profiles` without reading the store, when it certainly
    /// holds none of their identifiers (a first load, mostly); `None` when it has to be
    /// read ([`plan_upserts`]). Needs no connection, so a long import can decide its
    /// next chunk while PostgreSQL writes the last one.
    pub fn plan_unread(&mut self, profiles: &[Profile]) -> Option<UpsertPlan> {
        if matches!(self, StoreLookups::Every) {
            return None;
        }
        let mut keys = IdentifierKeys::of(profiles);
        self.narrow(&mut keys);
        keys.is_empty().then(|| self.decide(Upserter::new(), profiles))
    }

    /// Drops from `keys` the identifiers the store certainly does not hold.
    fn narrow(&self, keys: &mut IdentifierKeys<'_>) {
        if let StoreLookups::WrittenHere(written) = self {
            keys.retain(|key| written.may_contain(key));
        }
    }

    /// Runs the upsert rules over `profiles`, from what `upserter` knows of the store,
    /// and notes what the result writes: later plans must look those identifiers up.
    fn decide(&mut self, mut upserter: Upserter, profiles: &[Profile]) -> UpsertPlan {
        let outcomes = profiles.iter().map(|profile| upserter.upsert(profile)).collect();
        let changes = upserter.into_changes();
        if let StoreLookups::WrittenHere(written) = self {
            changes.written_keys().for_each(|key| written.insert(key));
        }
        UpsertPlan { outcomes, changes }
    }
}

/// The upserts of some profiles, decided: one outcome per profile, and the writes that
/// carry them out ([`write_upserts`]).
#[derive(Debug)]
pub struct UpsertPlan {
    outcomes: Vec<UpsertOutcome>,
    changes: UserStoreChanges,
}

/// Upserts `profiles` in order (see [`Upserter`] for the rules) inside a transaction from
/// [`begin_writes`]: one read of what the store knows of their identifiers (those
/// `lookups` cannot rule out), then a few set-based writes. Returns one outcome per profile.
pub async fn upsert_profiles(
    conn: &mut PgConnection,
    workspace_id: Uuid,
    profiles: &[Profile],
    lookups: &mut StoreLookups,
) -> sqlx::Result<Vec<UpsertOutcome>> {
    let plan = plan_upserts(&mut *conn, workspace_id, profiles, lookups).await?;
    write_upserts(conn, workspace_id, plan).await
}

/// Decides the upserts of `profiles` from one read of what the store knows of their
/// identifiers (those `lookups` cannot rule out). Plans of one transaction must be
/// written in the order they were made: each counts on the ones before.
pub async fn plan_upserts(
    conn: &mut PgConnection,
    workspace_id: Uuid,
    profiles: &[Profile],
    lookups: &mut StoreLookups,
) -> sqlx::Result<UpsertPlan> {
    let mut upserter = Upserter::new();
    let mut keys = IdentifierKeys::of(profiles);
    lookups.narrow(&mut keys);
    if !keys.is_empty() {
        load_known_identifiers(conn, workspace_id, &keys, &mut upserter).await?;
    }
    Ok(lookups.decide(upserter, profiles))
}

/// Writes `plan` in a few set-based statements; returns its outcomes, one per profile.
pub async fn write_upserts(
    conn: &mut PgConnection,
    workspace_id: Uuid,
    plan: UpsertPlan,
) -> sqlx::Result<Vec<UpsertOutcome>> {
    apply_changes(conn, workspace_id, &plan.changes).await?;
    Ok(plan.outcomes)
}

/// Tells `upserter` which stored user owns each of `keys`, in one query.
async fn load_known_identifiers(
    conn: &mut PgConnection,
    workspace_id: Uuid,
    keys: &IdentifierKeys<'_>,
    upserter: &mut Upserter,
) -> sqlx::Result<()> {
    #[derive(sqlx::FromRow)]
    struct Owner {
        kind: String,
        key: String,
        alias_name: Option<String>,
        id: i64,
        braze_id: Uuid,
        external_id: Option<String>,
    }
    let owners: Vec<Owner> = sqlx::query_as(
        "SELECT 'external_id' AS kind, u.external_id AS key, NULL::text AS alias_name, u.id, u.braze_id, u.external_id
         FROM unnest($2::text[]) AS k(external_id)
         JOIN users u ON u.workspace_id = $1 AND u.external_id = k.external_id
         UNION ALL
         SELECT 'alias', a.alias_label, a.alias_name, u.id, u.braze_id, u.external_id
         FROM unnest($3::text[], $4::text[]) AS k(alias_label, alias_name)
         JOIN user_aliases a ON a.workspace_id = $1 AND a.alias_label = k.alias_label AND a.alias_name = k.alias_name
         JOIN users u ON u.workspace_id = $1 AND u.id = a.user_id
         UNION ALL
         SELECT 'device_id', d.device_id, NULL, u.id, u.braze_id, u.external_id
         FROM unnest($5::text[]) AS k(device_id)
         JOIN user_device_ids d ON d.workspace_id = $1 AND d.device_id = k.device_id
         JOIN users u ON u.workspace_id = $1 AND u.id = d.user_id",
    )
    .bind(workspace_id)
    .bind(&keys.external_ids)
    .bind(&keys.alias_labels)
    .bind(&keys.alias_names)
    .bind(&keys.device_ids)
    .fetch_all(conn)
    .await?;

    for owner in owners {
        let external_id = owner.external_id.map(ExternalId::parse).transpose().map_err(undecodable)?;
        let user = StoredUser { id: owner.id, braze_id: owner.braze_id, external_id };
        let identifier = match (owner.kind.as_str(), owner.alias_name) {
            ("external_id", _) => StoredIdentifier::ExternalId(ExternalId::parse(owner.key).map_err(undecodable)?),
            ("alias", Some(name)) => {
                StoredIdentifier::Alias(Alias::parse(owner.key, name).map_err(|(_, error)| undecodable(error))?)
            }
            _ => StoredIdentifier::DeviceId(DeviceId::parse(owner.key).map_err(undecodable)?),
        };
        upserter.know(user, identifier);
    }
    Ok(())
}

/// An identifier read back from the store that does not parse: cannot happen, since only
/// parsed ones are written, but if it does it is a 500, not a panic.
fn undecodable(error: IdentifierError) -> sqlx::Error {
    sqlx::Error::Decode(Box::new(error))
}

/// Writes what an upsert decided: new users, external ids gained, new aliases and
/// device ids. New rows go in with COPY, the fastest way into PostgreSQL; the users'
/// ids are drawn from their sequence first so aliases and device ids can name them.
async fn apply_changes(conn: &mut PgConnection, workspace_id: Uuid, changes: &UserStoreChanges) -> sqlx::Result<()> {
    let new_ids: Vec<i64> = if changes.new_users.is_empty() {
        Vec::new()
    } else {
        // The sequence is looked up once, not per row (that would triple the cost), and
        // the ids come back as one array rather than as a row each.
        sqlx::query_scalar(
            "WITH s AS MATERIALIZED (SELECT pg_get_serial_sequence('users', 'id')::regclass AS seq)
             SELECT array_agg(nextval(s.seq)) FROM s, generate_series(1, $1)",
        )
        .bind(changes.new_users.len() as i64)
        .fetch_one(&mut *conn)
        .await?
    };
    let id_of = |user: UserRef| match user {
        UserRef::Stored(id) => id,
        UserRef::New(index) => new_ids[index],
    };

    if !changes.new_users.is_empty() {
        let mut rows = CopyRows::with_capacity(changes.new_users.len(), 120);
        for (user, id) in changes.new_users.iter().zip(&new_ids) {
            rows.uuid(workspace_id)
                .int(*id)
                .uuid(user.braze_id)
                .text(user.external_id.as_ref().map(ExternalId::as_str))
                .end_row();
        }
        rows.copy(conn, "COPY users (workspace_id, id, braze_id, external_id) FROM STDIN (FORMAT binary)").await?;
    }

    if !changes.changed_users.is_empty() {
        let (ids, external_ids): (Vec<i64>, Vec<Option<&str>>) = changes
            .changed_users
            .iter()
            .map(|(id, external_id)| (*id, external_id.as_ref().map(|e| e.as_str())))
            .unzip();
        sqlx::query(
            "UPDATE users u SET external_id = coalesce(c.external_id, u.external_id), updated_at = now()
             FROM unnest($2::bigint[], $3::text[]) AS c(id, external_id)
             WHERE u.workspace_id = $1 AND u.id = c.id",
        )
        .bind(workspace_id)
        .bind(&ids)
        .bind(&external_ids)
        .execute(&mut *conn)
        .await?;
    }

    if !changes.new_aliases.is_empty() {
        let mut rows = CopyRows::with_capacity(changes.new_aliases.len(), 100);
        for (user, alias) in &changes.new_aliases {
            rows.uuid(workspace_id)
                .text(Some(alias.alias_label.as_str()))
                .text(Some(alias.alias_name.as_str()))
                .int(id_of(*user))
                .end_row();
        }
        rows.copy(
            conn,
            "COPY user_aliases (workspace_id, alias_label, alias_name, user_id) FROM STDIN (FORMAT binary)",
        )
        .await?;
    }

    if !changes.new_device_ids.is_empty() {
        let mut rows = CopyRows::with_capacity(changes.new_device_ids.len(), 90);
        for (user, device_id) in &changes.new_device_ids {
            rows.uuid(workspace_id).text(Some(device_id.as_str())).int(id_of(*user)).end_row();
        }
        rows.copy(conn, "COPY user_device_ids (workspace_id, device_id, user_id) FROM STDIN (FORMAT binary)").await?;
    }
    Ok(())
}

/// Rows in COPY's binary format, written field by field straight into one buffer (a
/// million-user import writes four million fields: no allocation per field). Binary, so
/// that PostgreSQL copies each field's bytes instead of splitting lines, unescaping text and
/// parsing UUIDs and numbers from text, and nothing needs escaping on this side.
struct CopyRows {
    bytes: Vec<u8>,
    /// Where the current row's field count goes, once its fields are written.
    row_start: Option<usize>,
    fields: i16,
}

/// The binary COPY header: signature, flags (none), header extension length (none).
const COPY_BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The binary COPY trailer: a field count of -1.
const COPY_BINARY_TRAILER: [u8; 2] = (-1i16).to_be_bytes();

impl CopyRows {
    /// Room for `rows` rows of about `row_bytes` bytes.
    fn with_capacity(rows: usize, row_bytes: usize) -> Self {
        let mut bytes = Vec::with_capacity(COPY_BINARY_HEADER.len() + rows * row_bytes + COPY_BINARY_TRAILER.len());
        bytes.extend_from_slice(COPY_BINARY_HEADER);
        CopyRows { bytes, row_start: None, fields: 0 }
    }

    /// Appends one field: its length (-1 for NULL), then its bytes in the column type's
    /// binary form.
    fn field(&mut self, value: Option<&[u8]>) -> &mut Self {
        if self.row_start.is_none() {
            self.row_start = Some(self.bytes.len());
            self.bytes.extend_from_slice(&[0, 0]); // the field count, filled in by end_row
            self.fields = 0;
        }
        self.fields += 1;
        match value {
            None => self.bytes.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(value) => {
                // Identifiers are at most 512 bytes; a field too long for COPY's length
                // word would make PostgreSQL reject the data, not this panic.
                let length = i32::try_from(value.len()).unwrap_or(i32::MAX);
                self.bytes.extend_from_slice(&length.to_be_bytes());
                self.bytes.extend_from_slice(value);
            }
        }
        self
    }

    /// Appends a `text` field; `None` is SQL NULL.
    fn text(&mut self, value: Option<&str>) -> &mut Self {
        self.field(value.map(str::as_bytes))
    }

    /// Appends a `bigint` field.
    fn int(&mut self, value: i64) -> &mut Self {
        self.field(Some(&value.to_be_bytes()))
    }

    /// Appends a `uuid` field.
    fn uuid(&mut self, value: Uuid) -> &mut Self {
        self.field(Some(value.as_bytes()))
    }

    /// Ends the row.
    fn end_row(&mut self) {
        if let Some(start) = self.row_start.take() {
            self.bytes[start..start + 2].copy_from_slice(&self.fields.to_be_bytes());
        }
    }

    /// Sends the rows with `statement` (a `COPY … FROM STDIN (FORMAT binary)`).
    async fn copy(mut self, conn: &mut PgConnection, statement: &'static str) -> sqlx::Result<()> {
        self.bytes.extend_from_slice(&COPY_BINARY_TRAILER);
        let mut copy = conn.copy_in_raw(statement).await?;
        copy.send(self.bytes).await?;
        copy.finish().await?;
        Ok(())
    }
}

/// What [`identify`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentifyOutcome {
    /// The anonymous user now has the external id (or already had this one).
    Identified,
    /// No such user.
    NotFound,
    /// The user already has another external id.
    HasOtherExternalId,
    /// The external id belongs to another user (its braze_id).
    TakenBy(Uuid),
}

/// Gives the anonymous user `braze_id` the external id `external_id`.
pub async fn identify(
    db: &Database,
    workspace_id: Uuid,
    braze_id: Uuid,
    external_id: &ExternalId,
) -> sqlx::Result<IdentifyOutcome> {
    let mut tx = begin_writes(db, workspace_id).await?;
    let user: Option<(i64, Option<String>)> =
        sqlx::query_as("SELECT id, external_id FROM users WHERE workspace_id = $1 AND braze_id = $2")
            .bind(workspace_id)
            .bind(braze_id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((id, current)) = user else { return Ok(IdentifyOutcome::NotFound) };
    match current {
        Some(current) if current == external_id.as_str() => return Ok(IdentifyOutcome::Identified),
        Some(_) => return Ok(IdentifyOutcome::HasOtherExternalId),
        None => {}
    }
    let owner: Option<Uuid> =
        sqlx::query_scalar("SELECT braze_id FROM users WHERE workspace_id = $1 AND external_id = $2")
            .bind(workspace_id)
            .bind(external_id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
    if let Some(owner) = owner {
        return Ok(IdentifyOutcome::TakenBy(owner));
    }
    sqlx::query("UPDATE users SET external_id = $3, updated_at = now() WHERE workspace_id = $1 AND id = $2")
        .bind(workspace_id)
        .bind(id)
        .bind(external_id.as_str())
        .execute(&mut *tx)
        .await?;
    db.commit(tx).await?;
    Ok(IdentifyOutcome::Identified)
}

/// Deletes the user `braze_id` with its identifiers and memberships, and takes it off
/// the `member_count` of every cohort it was in, in one transaction. False if no such user.
pub async fn delete(db: &Database, workspace_id: Uuid, braze_id: Uuid) -> sqlx::Result<bool> {
    let mut tx = begin_writes(db, workspace_id).await?;
    let id: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE workspace_id = $1 AND braze_id = $2")
        .bind(workspace_id)
        .bind(braze_id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(id) = id else { return Ok(false) };
    // Exclusive: waits for the cohort imports and deletions in flight and keeps new ones
    // from starting until this user is gone. They take it before any row lock, so none of
    // them holds a lock this transaction needs next: no deadlock. And no other writer
    // changes memberships meanwhile, so those deleted here are exactly the counts to fix.
    locks::memberships(&mut tx, workspace_id, MembershipWriter::AcrossCohorts).await?;
    // Through the workspace's cohorts: one primary-key probe per cohort.
    sqlx::query(
        "WITH gone AS (DELETE FROM cohort_memberships m USING cohorts c
                        WHERE c.workspace_id = $1 AND m.workspace_id = $1 AND m.cohort_ref = c.id AND m.user_id = $2
                        RETURNING m.cohort_ref)
         UPDATE cohorts c SET member_count = c.member_count - 1
         FROM gone WHERE c.workspace_id = $1 AND c.id = gone.cohort_ref",
    )
    .bind(workspace_id)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    // Triggers delete its aliases and device ids with it; its memberships are gone
    // already, so the one that deletes a deleted user's memberships finds none.
    sqlx::query("DELETE FROM users WHERE workspace_id = $1 AND id = $2")
        .bind(workspace_id)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    db.commit(tx).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> Profile {
        Profile::parse(serde_json::from_str(json).unwrap()).unwrap()
    }

    /// A long first load decides a chunk without the store (and so while the chunk
    /// before is being written) only when the store cannot hold its identifiers.
    #[test]
    fn plans_made_unread_only_when_the_store_cannot_hold_the_identifiers() {
        let mut lookups = StoreLookups::WrittenHere(WrittenIdentifiers::default());
        let plan = lookups
            .plan_unread(&[profile(r#"{"external_id":"a","device_ids":["d"]}"#)])
            .expect("an empty workspace holds nothing yet");
        assert!(matches!(plan.outcomes[..], [UpsertOutcome::Created(_)]));
        assert_eq!(plan.changes.new_users.len(), 1);
        assert_eq!(plan.changes.new_device_ids.len(), 1);

        // What that plan writes, a later one must read back from the store.
        assert!(lookups.plan_unread(&[profile(r#"{"device_ids":["d"]}"#)]).is_none());
        assert!(lookups.plan_unread(&[profile(r#"{"external_id":"a"}"#)]).is_none());
        assert!(lookups.plan_unread(&[profile(r#"{"external_id":"b"}"#)]).is_some());

        // A workspace that had users: every plan reads the store.
        assert!(StoreLookups::Every.plan_unread(&[profile(r#"{"external_id":"b"}"#)]).is_none());
    }

    #[test]
    fn copy_rows_write_the_binary_format() {
        let mut rows = CopyRows::with_capacity(2, 10);
        let id = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        rows.uuid(id).int(-42).text(Some("a\\b\tc\n\\N")).text(None).end_row();
        rows.text(Some("")).end_row();
        let mut expected = b"PGCOPY\n\xff\r\n\0".to_vec();
        expected.extend([0; 8]); // flags, header extension length
        expected.extend([0, 4]); // four fields
        expected.extend([0, 0, 0, 16]);
        expected.extend(id.as_bytes());
        expected.extend([0, 0, 0, 8]);
        expected.extend((-42i64).to_be_bytes());
        expected.extend([0, 0, 0, 8]);
        expected.extend(b"a\\b\tc\n\\N"); // as it is: nothing is escaped
        expected.extend([0xff; 4]); // NULL
        expected.extend([0, 1, 0, 0, 0, 0]); // one field, empty
        assert_eq!(rows.bytes, expected);
    }
}
