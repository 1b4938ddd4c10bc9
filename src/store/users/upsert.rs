//! Upserting profiles: what the store knows of their identifiers is read, the upsert
//! rules ([`Upserter`]) decide in memory, and the decisions are written with COPY.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    domain::{
        Alias, DeviceId, ExternalId, Invalid,
        profile::{
            IdentifierKeys, Profile, StoredIdentifier, StoredUser, TargetUser, UpsertOutcome, Upserter,
            UserStoreChanges, WrittenIdentifiers,
        },
    },
    store::{
        bitmaps::{self, Bitmap},
        copy::CopyRows,
    },
};

/// Which identifiers the upserts of one transaction from [`begin_writes`](super::begin_writes) look up in the
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
    /// What `conn`, in a transaction from [`begin_writes`](super::begin_writes), has to look up.
    pub async fn for_workspace(conn: &mut PgConnection, workspace_id: Uuid) -> sqlx::Result<Self> {
        let has_users = sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM users WHERE workspace_id = $1) AS "exists!""#,
            workspace_id,
        )
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
/// [`begin_writes`](super::begin_writes): one read of what the store knows of their identifiers (those
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
    struct Owner {
        kind: String,
        key: String,
        alias_name: Option<String>,
        id: i64,
        braze_id: Uuid,
        external_id: Option<String>,
    }
    // The first branch names the columns (and says which may be null) for all three.
    let owners = sqlx::query_as!(
        Owner,
        r#"SELECT 'external_id' AS "kind!", u.external_id AS "key!", NULL::text AS "alias_name?", u.id AS "id!",
                u.braze_id AS "braze_id!", u.external_id AS "external_id?"
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
         JOIN users u ON u.workspace_id = $1 AND u.id = d.user_id"#,
        workspace_id,
        &keys.external_ids[..] as &[&str],
        &keys.alias_labels[..] as &[&str],
        &keys.alias_names[..] as &[&str],
        &keys.device_ids[..] as &[&str],
    )
    .fetch_all(conn)
    .await?;

    for owner in owners {
        let external_id = owner.external_id.map(ExternalId::parse).transpose().map_err(undecodable)?;
        let user = StoredUser { id: owner.id, braze_id: owner.braze_id, external_id };
        let identifier = match (owner.kind.as_str(), owner.alias_name) {
            ("external_id", _) => StoredIdentifier::ExternalId(ExternalId::parse(owner.key).map_err(undecodable)?),
            ("alias", Some(name)) => StoredIdentifier::Alias(Alias::parse(owner.key, name).map_err(undecodable)?),
            _ => StoredIdentifier::DeviceId(DeviceId::parse(owner.key).map_err(undecodable)?),
        };
        upserter.know(user, identifier);
    }
    Ok(())
}

/// An identifier read back from the store that does not parse: cannot happen, since only
/// parsed ones are written, but if it does it is a 500, not a panic.
fn undecodable(error: impl Into<Invalid>) -> sqlx::Error {
    sqlx::Error::Decode(Box::new(error.into()))
}

/// Writes what an upsert decided: new users (with their bits), external ids gained, new
/// aliases and device ids. New rows go in with COPY, the fastest way into PostgreSQL; the
/// users' ids are drawn from the workspace's counter first so aliases and device ids can
/// name them.
async fn apply_changes(conn: &mut PgConnection, workspace_id: Uuid, changes: &UserStoreChanges) -> sqlx::Result<()> {
    let new_ids: Vec<i64> = if changes.new_users.is_empty() {
        Vec::new()
    } else {
        let count = changes.new_users.len() as i64;
        // The transaction holds the counter row (begin_writes): the ids are its own.
        let first = sqlx::query_scalar!(
            r#"UPDATE user_id_counters SET next_user_id = next_user_id + $2 WHERE workspace_id = $1
             RETURNING next_user_id - $2 AS "first!""#,
            workspace_id,
            count,
        )
        .fetch_one(&mut *conn)
        .await?;
        (first..first + count).collect()
    };
    let id_of = |user: TargetUser| match user {
        TargetUser::Stored(id) => id,
        TargetUser::New(index) => new_ids[index],
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
        bitmaps::apply(conn, workspace_id, Bitmap::Users, &new_ids, &[]).await?;
    }

    if !changes.changed_users.is_empty() {
        let (ids, external_ids): (Vec<i64>, Vec<Option<&str>>) = changes
            .changed_users
            .iter()
            .map(|(id, external_id)| (*id, external_id.as_ref().map(|e| e.as_str())))
            .unzip();
        sqlx::query!(
            "UPDATE users u SET external_id = coalesce(c.external_id, u.external_id), updated_at = $4
             FROM unnest($2::bigint[], $3::text[]) AS c(id, external_id)
             WHERE u.workspace_id = $1 AND u.id = c.id",
            workspace_id,
            &ids,
            &external_ids as &[Option<&str>],
            chrono::Utc::now(),
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(external_id: Option<&str>, device_ids: &[&str]) -> Profile {
        Profile::parse(external_id.map(Into::into), [], device_ids.iter().map(|d| (*d).into())).unwrap()
    }

    /// A long first load decides a chunk without the store (and so while the chunk
    /// before is being written) only when the store cannot hold its identifiers.
    #[test]
    fn plans_made_unread_only_when_the_store_cannot_hold_the_identifiers() {
        let mut lookups = StoreLookups::WrittenHere(WrittenIdentifiers::default());
        let plan = lookups.plan_unread(&[profile(Some("a"), &["d"])]).expect("an empty workspace holds nothing yet");
        assert!(matches!(plan.outcomes[..], [UpsertOutcome::Created(_)]));
        assert_eq!(plan.changes.new_users.len(), 1);
        assert_eq!(plan.changes.new_device_ids.len(), 1);

        // What that plan writes, a later one must read back from the store.
        assert!(lookups.plan_unread(&[profile(None, &["d"])]).is_none());
        assert!(lookups.plan_unread(&[profile(Some("a"), &[])]).is_none());
        assert!(lookups.plan_unread(&[profile(Some("b"), &[])]).is_some());

        // A workspace that had users: every plan reads the store.
        assert!(StoreLookups::Every.plan_unread(&[profile(Some("b"), &[])]).is_none());
    }
}
