//! The upsert rules: profiles applied one after the other, in memory, to what the store
//! knows of their identifiers, and the changes that carry the result out.

use foldhash::HashMap;
use uuid::Uuid;

use super::{IdentifierKey, Profile};
use crate::domain::{Alias, DeviceId, ExternalId};

/// A user already stored, as the upsert rules need to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredUser {
    /// Internal id.
    pub id: i64,
    /// Public id.
    pub braze_id: Uuid,
    /// Its external id, if identified.
    pub external_id: Option<ExternalId>,
}

/// An identifier that already belongs to a stored user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredIdentifier {
    /// An external id (the user's own).
    ExternalId(ExternalId),
    /// An alias.
    Alias(Alias),
    /// A device id.
    DeviceId(DeviceId),
}

/// What happened to one profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpsertOutcome {
    /// No user matched: a new one was created.
    Created(Uuid),
    /// It matched this existing user (or one created by an earlier profile).
    Updated(Uuid),
    /// It conflicts with the store; nothing of it was applied.
    Failed(String),
}

/// The user a change applies to: stored before, or created by the changes (index into
/// [`UserStoreChanges::new_users`]). Not [`crate::domain::UserRef`], which is a
/// reference a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetUser {
    /// `users.id` of a stored user.
    Stored(i64),
    /// Index of a user to create.
    New(usize),
}

/// A user to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    /// Its public id, chosen here.
    pub braze_id: Uuid,
    /// Its external id; none for an anonymous user.
    pub external_id: Option<ExternalId>,
}

/// Everything an upsert writes: the store applies it in a few set-based statements.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UserStoreChanges {
    /// Users to create.
    pub new_users: Vec<NewUser>,
    /// Stored users whose identifiers changed, with the external id they gain, if any.
    pub changed_users: Vec<(i64, Option<ExternalId>)>,
    /// Aliases to add, each new to the store.
    pub new_aliases: Vec<(TargetUser, Alias)>,
    /// Device ids to add, each new to the store.
    pub new_device_ids: Vec<(TargetUser, DeviceId)>,
}

impl UserStoreChanges {
    /// Every identifier the changes write to the store.
    pub fn written_keys(&self) -> impl Iterator<Item = IdentifierKey<'_>> {
        let new_users = self.new_users.iter().filter_map(|user| user.external_id.as_ref());
        let gained = self.changed_users.iter().filter_map(|(_, external_id)| external_id.as_ref());
        let external_ids = new_users.chain(gained).map(|id| IdentifierKey::ExternalId(id.as_str()));
        let aliases = self.new_aliases.iter().map(|(_, alias)| IdentifierKey::Alias {
            label: alias.alias_label.as_str(),
            name: alias.alias_name.as_str(),
        });
        let device_ids = self.new_device_ids.iter().map(|(_, id)| IdentifierKey::DeviceId(id.as_str()));
        external_ids.chain(aliases).chain(device_ids)
    }
}

/// A user as the rules see it while they run.
#[derive(Debug)]
struct KnownUser {
    /// `users.id`; none for a user this upsert creates.
    stored_id: Option<i64>,
    braze_id: Uuid,
    external_id: Option<ExternalId>,
    /// Stored users only: the external id this upsert gives it.
    gained_external_id: bool,
    /// Stored users only: whether this upsert adds anything to it.
    changed: bool,
}

/// Applies the upsert rules to profiles one after the other, in memory, starting from
/// what the store knows about their identifiers ([`Upserter::know`]).
///
/// A profile matches a user by its external id, else by its first alias that belongs to
/// someone, else by its first device id that does. Its identifiers are added to that
/// user, or to a new one when nothing matched. It fails, changing nothing, when one of
/// its identifiers belongs to another user, or when it brings an external id to a user
/// that has a different one.
#[derive(Debug, Default)]
pub struct Upserter {
    users: Vec<KnownUser>,
    stored: HashMap<i64, usize>,
    by_external_id: HashMap<ExternalId, usize>,
    by_alias: HashMap<Alias, usize>,
    by_device_id: HashMap<DeviceId, usize>,
    new_aliases: Vec<(usize, Alias)>,
    new_device_ids: Vec<(usize, DeviceId)>,
}

impl Upserter {
    /// Rules that know nothing yet.
    pub fn new() -> Self {
        Upserter::default()
    }

    /// Records that `identifier` belongs to the stored `user`.
    pub fn know(&mut self, user: StoredUser, identifier: StoredIdentifier) {
        let slot = match self.stored.get(&user.id) {
            Some(&slot) => slot,
            None => {
                let slot = self.users.len();
                if let Some(external_id) = &user.external_id {
                    self.by_external_id.insert(external_id.clone(), slot);
                }
                self.users.push(KnownUser {
                    stored_id: Some(user.id),
                    braze_id: user.braze_id,
                    external_id: user.external_id,
                    gained_external_id: false,
                    changed: false,
                });
                self.stored.insert(user.id, slot);
                slot
            }
        };
        match identifier {
            StoredIdentifier::ExternalId(external_id) => self.by_external_id.insert(external_id, slot),
            StoredIdentifier::Alias(alias) => self.by_alias.insert(alias, slot),
            StoredIdentifier::DeviceId(device_id) => self.by_device_id.insert(device_id, slot),
        };
    }

    /// Upserts one profile, after every earlier one.
    pub fn upsert(&mut self, profile: &Profile) -> UpsertOutcome {
        let matched = profile
            .external_id
            .as_ref()
            .and_then(|external_id| self.by_external_id.get(external_id))
            .or_else(|| profile.aliases.iter().find_map(|alias| self.by_alias.get(alias)))
            .or_else(|| profile.device_ids.iter().find_map(|device_id| self.by_device_id.get(device_id)))
            .copied();
        if let Err(reason) = self.check_conflicts(profile, matched) {
            return UpsertOutcome::Failed(reason);
        }

        let slot = matched.unwrap_or_else(|| {
            self.users.push(KnownUser {
                stored_id: None,
                // Time-ordered: the unique index on braze_id grows at its right edge instead
                // of at random pages, which makes bulk loads about a quarter faster.
                braze_id: Uuid::now_v7(),
                external_id: None,
                gained_external_id: false,
                changed: false,
            });
            self.users.len() - 1
        });
        let mut changed = false;
        if let Some(external_id) = &profile.external_id
            && self.users[slot].external_id.is_none()
        {
            self.users[slot].external_id = Some(external_id.clone());
            self.users[slot].gained_external_id = true;
            self.by_external_id.insert(external_id.clone(), slot);
            changed = true;
        }
        for alias in &profile.aliases {
            if !self.by_alias.contains_key(alias) {
                self.by_alias.insert(alias.clone(), slot);
                self.new_aliases.push((slot, alias.clone()));
                changed = true;
            }
        }
        for device_id in &profile.device_ids {
            if !self.by_device_id.contains_key(device_id) {
                self.by_device_id.insert(device_id.clone(), slot);
                self.new_device_ids.push((slot, device_id.clone()));
                changed = true;
            }
        }
        let user = &mut self.users[slot];
        user.changed |= changed;
        match matched {
            Some(_) => UpsertOutcome::Updated(user.braze_id),
            None => UpsertOutcome::Created(user.braze_id),
        }
    }

    /// Why the profile cannot be applied to the matched user (or to a new one), if so.
    fn check_conflicts(&self, profile: &Profile, matched: Option<usize>) -> Result<(), String> {
        if let (Some(external_id), Some(slot)) = (&profile.external_id, matched) {
            let user = &self.users[slot];
            if user.external_id.as_ref().is_some_and(|current| current != external_id) {
                return Err(format!(
                    "external_id conflicts: the matched user {} already has a different external_id",
                    user.braze_id
                ));
            }
        }
        let owned_by_another = |owner: Option<&usize>| owner.is_some_and(|&owner| Some(owner) != matched);
        for (i, alias) in profile.aliases.iter().enumerate() {
            if owned_by_another(self.by_alias.get(alias)) {
                let owner = self.users[self.by_alias[alias]].braze_id;
                return Err(format!("aliases[{i}] belongs to another user ({owner})"));
            }
        }
        for (i, device_id) in profile.device_ids.iter().enumerate() {
            if owned_by_another(self.by_device_id.get(device_id)) {
                let owner = self.users[self.by_device_id[device_id]].braze_id;
                return Err(format!("device_ids[{i}] belongs to another user ({owner})"));
            }
        }
        Ok(())
    }

    /// What the profiles upserted so far write to the store.
    pub fn into_changes(self) -> UserStoreChanges {
        let mut changes = UserStoreChanges::default();
        // Slot -> reference in the changes: new users are numbered in creation order.
        let mut refs = Vec::with_capacity(self.users.len());
        for user in self.users {
            match user.stored_id {
                Some(id) => {
                    if user.changed {
                        changes.changed_users.push((id, user.external_id.filter(|_| user.gained_external_id)));
                    }
                    refs.push(TargetUser::Stored(id));
                }
                None => {
                    refs.push(TargetUser::New(changes.new_users.len()));
                    changes.new_users.push(NewUser { braze_id: user.braze_id, external_id: user.external_id });
                }
            }
        }
        changes.new_aliases = self.new_aliases.into_iter().map(|(slot, alias)| (refs[slot], alias)).collect();
        changes.new_device_ids =
            self.new_device_ids.into_iter().map(|(slot, device_id)| (refs[slot], device_id)).collect();
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{InvalidAt, profile::IdentifierKeys};

    fn profile(external_id: Option<&str>, aliases: &[(&str, &str)], device_ids: &[&str]) -> Profile {
        Profile::parse(
            external_id.map(Into::into),
            aliases.iter().map(|(label, name)| ((*label).into(), (*name).into())),
            device_ids.iter().map(|d| (*d).into()),
        )
        .unwrap()
    }

    fn stored(id: i64, external_id: Option<&str>) -> StoredUser {
        StoredUser {
            id,
            braze_id: Uuid::from_u128(id as u128),
            external_id: external_id.map(|e| ExternalId::parse(e.into()).unwrap()),
        }
    }

    fn device(d: &str) -> StoredIdentifier {
        StoredIdentifier::DeviceId(DeviceId::parse(d.into()).unwrap())
    }

    #[test]
    fn parse_names_the_field_and_drops_repeats() {
        let too_long = [("l".to_owned(), "a".repeat(513))];
        assert_eq!(
            Profile::parse(None, too_long, []).at("users[3]").unwrap_err().to_string(),
            "users[3].aliases[0].alias_name must be at most 512 bytes"
        );
        assert_eq!(
            Profile::parse(None, [], ["d".to_owned(), String::new()]).unwrap_err().to_string(),
            "device_ids[1] must be a non-empty string"
        );
        assert_eq!(
            Profile::parse(None, [], []).unwrap_err().to_string(),
            "profile must have an external_id, an alias or a device_id"
        );
        assert_eq!(profile(None, &[], &["d", "d"]).device_ids.len(), 1);
    }

    #[test]
    fn later_profiles_see_earlier_ones() {
        let mut upserter = Upserter::new();
        let UpsertOutcome::Created(first) = upserter.upsert(&profile(None, &[], &["d1"])) else { panic!() };
        assert_eq!(upserter.upsert(&profile(Some("e1"), &[], &["d1", "d2"])), UpsertOutcome::Updated(first));
        assert_eq!(upserter.upsert(&profile(Some("e1"), &[("l", "n")], &[])), UpsertOutcome::Updated(first));
        let changes = upserter.into_changes();
        assert_eq!(changes.new_users.len(), 1);
        assert_eq!(changes.new_users[0].external_id.as_ref().map(ExternalId::as_str), Some("e1"));
        assert_eq!(changes.new_device_ids.len(), 2);
        assert_eq!(changes.new_aliases.len(), 1);
    }

    #[test]
    fn conflicts_fail_the_profile_only() {
        let mut upserter = Upserter::new();
        upserter.know(stored(1, Some("e1")), device("d1"));
        upserter.know(stored(2, None), device("d2"));
        // d2 belongs to user 2, the profile matched user 1 by external id.
        assert!(
            matches!(upserter.upsert(&profile(Some("e1"), &[], &["d2"])), UpsertOutcome::Failed(m) if m.starts_with("device_ids[0] belongs"))
        );
        // Matched user 1 by device, which has another external id.
        assert!(
            matches!(upserter.upsert(&profile(Some("e9"), &[], &["d1"])), UpsertOutcome::Failed(m) if m.starts_with("external_id conflicts"))
        );
        // Nothing of the failed profiles was applied: e9 is still free, d2 still user 2's.
        assert_eq!(upserter.upsert(&profile(None, &[], &["d2", "d3"])), UpsertOutcome::Updated(Uuid::from_u128(2)));
        let changes = upserter.into_changes();
        assert!(changes.new_users.is_empty());
        assert_eq!(changes.changed_users, vec![(2, None)]);
        assert_eq!(changes.new_device_ids, vec![(TargetUser::Stored(2), DeviceId::parse("d3".into()).unwrap())]);
    }

    #[test]
    fn written_keys_are_every_identifier_the_changes_write() {
        let mut upserter = Upserter::new();
        upserter.know(stored(2, None), device("d2"));
        upserter.upsert(&profile(Some("e1"), &[("l", "n")], &["d1"]));
        upserter.upsert(&profile(Some("e2"), &[], &["d2"]));
        let changes = upserter.into_changes();
        let mut keys: Vec<String> = changes.written_keys().map(|key| format!("{key:?}")).collect();
        keys.sort();
        let alias = IdentifierKey::Alias { label: "l", name: "n" };
        let mut expected: Vec<String> =
            [IdentifierKey::ExternalId("e1"), IdentifierKey::ExternalId("e2"), alias, IdentifierKey::DeviceId("d1")]
                .iter()
                .map(|key| format!("{key:?}"))
                .collect();
        expected.sort();
        assert_eq!(keys, expected);
    }

    #[test]
    fn identifier_keys_retain_keeps_aliases_whole() {
        let profiles = [profile(Some("e1"), &[("l1", "n1"), ("l2", "n2")], &["d1", "d2"])];
        let mut keys = IdentifierKeys::of(&profiles);
        keys.retain(|key| matches!(key, IdentifierKey::Alias { label: "l2", .. } | IdentifierKey::DeviceId("d1")));
        assert!(keys.external_ids.is_empty());
        assert_eq!((keys.alias_labels, keys.alias_names), (vec!["l2"], vec!["n2"]));
        assert_eq!(keys.device_ids, ["d1"]);
        let mut keys = IdentifierKeys::of(&profiles);
        keys.retain(|_| false);
        assert!(keys.is_empty());
    }
}
