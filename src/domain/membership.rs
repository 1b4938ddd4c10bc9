//! How a cohort's membership changes: the identifiers of a request, resolved to users and
//! read against who is a member now, become the exact memberships to add and to remove.

use std::collections::{HashMap, HashSet};

use super::{Alias, DeviceId, ExternalId};

/// Outcome counts of one cohort import request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportOutcome {
    /// Memberships that newly exist.
    pub added: u64,
    /// Memberships that newly ended.
    pub removed: u64,
    /// Users already in the requested state.
    pub unchanged: u64,
    /// Identifiers that matched no eligible user.
    pub unmatched: u64,
}

/// An identifier of a request, as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SentIdentifier<'a> {
    /// A `user_ids` entry.
    ExternalId(&'a ExternalId),
    /// A `device_ids` entry.
    DeviceId(&'a DeviceId),
    /// An `aliases` entry.
    Alias(&'a Alias),
}

/// One identifier of a request and what resolving it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved<'a> {
    /// The identifier.
    pub identifier: SentIdentifier<'a>,
    /// The position of its change in the request: a later change wins for the same user.
    pub change: i32,
    /// Whether its change removes the user.
    pub remove: bool,
    /// The user it matched, if any.
    pub user: Option<MatchedUser>,
}

/// A user an identifier matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatchedUser {
    /// Internal id.
    pub id: i64,
    /// Whether the user is in the cohort now.
    pub member: bool,
}

/// The memberships a request changes, exactly: valid while the cohort's memberships stay
/// as they were read (the writer holds the cohort's row lock).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MembershipChanges {
    /// Users to add, ascending.
    pub added: Vec<i64>,
    /// Users to remove, ascending.
    pub removed: Vec<i64>,
    /// Users matched and already in the requested state.
    pub unchanged: u64,
    /// Distinct identifiers that matched nobody.
    pub unmatched: u64,
}

impl MembershipChanges {
    /// Decides the changes: per user, the last change that reaches it; an identifier sent
    /// twice counts once among the unmatched.
    pub fn decide<'a>(resolved: impl IntoIterator<Item = Resolved<'a>>) -> Self {
        let mut requested: HashMap<i64, (i32, bool, bool)> = HashMap::new();
        let mut unmatched: HashSet<SentIdentifier<'a>> = HashSet::new();
        for r in resolved {
            match r.user {
                None => {
                    unmatched.insert(r.identifier);
                }
                Some(user) => {
                    let entry = requested.entry(user.id).or_insert((r.change, r.remove, user.member));
                    if r.change > entry.0 {
                        *entry = (r.change, r.remove, user.member);
                    }
                }
            }
        }
        let mut changes = MembershipChanges { unmatched: unmatched.len() as u64, ..Default::default() };
        for (id, (_, remove, member)) in requested {
            match (remove, member) {
                (false, false) => changes.added.push(id),
                (true, true) => changes.removed.push(id),
                _ => changes.unchanged += 1,
            }
        }
        changes.added.sort_unstable();
        changes.removed.sort_unstable();
        changes
    }

    /// The counts the import answers with.
    pub fn outcome(&self) -> ImportOutcome {
        ImportOutcome {
            added: self.added.len() as u64,
            removed: self.removed.len() as u64,
            unchanged: self.unchanged,
            unmatched: self.unmatched,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_change_reaching_a_user_wins_and_counts_are_exact() {
        let (a, b, c) = (
            ExternalId::parse("a".into()).unwrap(),
            ExternalId::parse("b".into()).unwrap(),
            ExternalId::parse("c".into()).unwrap(),
        );
        let d = DeviceId::parse("d".into()).unwrap();
        let user = |id, member| Some(MatchedUser { id, member });
        let r = |identifier, change, remove, user| Resolved { identifier, change, remove, user };
        let changes = MembershipChanges::decide([
            // User 1: added by change 0, removed by change 1 (a device id of the same user).
            r(SentIdentifier::ExternalId(&a), 0, false, user(1, true)),
            r(SentIdentifier::DeviceId(&d), 1, true, user(1, true)),
            // User 2 is not a member: added.
            r(SentIdentifier::ExternalId(&b), 0, false, user(2, false)),
            // User 3 is already a member: unchanged.
            r(SentIdentifier::ExternalId(&c), 2, false, user(3, true)),
            // User 4 removed but not a member: unchanged.
            r(SentIdentifier::ExternalId(&c), 2, true, user(4, false)),
            // An unknown identifier sent twice counts once.
            r(SentIdentifier::ExternalId(&a), 0, false, None),
            r(SentIdentifier::ExternalId(&a), 1, true, None),
            r(SentIdentifier::DeviceId(&d), 1, true, None),
        ]);
        assert_eq!(changes.added, [2]);
        assert_eq!(changes.removed, [1]);
        assert_eq!(changes.outcome(), ImportOutcome { added: 1, removed: 1, unchanged: 2, unmatched: 2 });
    }

    #[test]
    fn an_earlier_change_does_not_override_a_later_one_whatever_the_order() {
        let a = ExternalId::parse("a".into()).unwrap();
        let d = DeviceId::parse("d".into()).unwrap();
        let member = Some(MatchedUser { id: 7, member: true });
        // The later change (1, remove) comes first in the resolution order.
        let changes = MembershipChanges::decide([
            Resolved { identifier: SentIdentifier::DeviceId(&d), change: 1, remove: true, user: member },
            Resolved { identifier: SentIdentifier::ExternalId(&a), change: 0, remove: false, user: member },
        ]);
        assert_eq!(changes.removed, [7]);
        assert!(changes.added.is_empty());
    }
}
