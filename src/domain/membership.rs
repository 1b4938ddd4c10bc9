//! How a cohort's membership changes. A request names members, each by the user
//! references that may identify it (tried in order); resolved against the workspace's
//! users and read against who is a member now, they become the exact memberships to add
//! and to remove. Every protocol (the Braze contract, Mixpanel's and Amplitude's
//! webhooks, the operator's replace) comes down to one of two operations on these.

use std::collections::{HashMap, HashSet};

use super::UserRef;

/// One member a request names: the references that may identify it, in the order they
/// are tried; the first that finds a user decides.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MemberRefs(Vec<UserRef>);

impl MemberRefs {
    /// A member named by one reference (the Braze contract, the operator's replace).
    pub fn one(user_ref: UserRef) -> Self {
        MemberRefs(vec![user_ref])
    }

    /// A member named by several references, in rule order; `None` if there is none.
    pub fn in_order(refs: Vec<UserRef>) -> Option<Self> {
        (!refs.is_empty()).then_some(MemberRefs(refs))
    }

    /// The references, in the order they are tried.
    pub fn refs(&self) -> &[UserRef] {
        &self.0
    }
}

/// One member of an add/remove request and what to do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberChange {
    /// Who.
    pub member: MemberRefs,
    /// Whether the member leaves the cohort (else it joins).
    pub remove: bool,
}

/// Why a member matched nobody.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnmatchedReason {
    /// No user has any of its references.
    Unknown,
    /// Only a device id of an identified user (device ids match anonymous users only).
    DeviceIdOfIdentifiedUser,
}

impl UnmatchedReason {
    /// The reason as the API and the log name it.
    pub fn as_str(self) -> &'static str {
        match self {
            UnmatchedReason::Unknown => "unknown",
            UnmatchedReason::DeviceIdOfIdentifiedUser => "device_id_of_identified_user",
        }
    }
}

/// Members that matched nobody, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unmatched {
    /// No user has any of its references.
    pub unknown: u64,
    /// Only a device id of an identified user.
    pub device_id_of_identified_user: u64,
}

impl Unmatched {
    /// All of them.
    pub fn total(&self) -> u64 {
        self.unknown + self.device_id_of_identified_user
    }

    /// Counts one more, for `reason`.
    pub fn count(&mut self, reason: UnmatchedReason) {
        match reason {
            UnmatchedReason::Unknown => self.unknown += 1,
            UnmatchedReason::DeviceIdOfIdentifiedUser => self.device_id_of_identified_user += 1,
        }
    }
}

/// Which protocol asked for a change, as the import log and the metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportKind {
    /// The Braze partner contract's users endpoint.
    Braze,
    /// A completed Mixpanel `members` session: a full replace.
    MixpanelMembers,
    /// Mixpanel `add_members`.
    MixpanelAddMembers,
    /// Mixpanel `remove_members`.
    MixpanelRemoveMembers,
    /// An Amplitude cohort webhook message.
    Amplitude,
    /// The operator's full replace.
    Replace,
}

impl ImportKind {
    /// The kind's name in the log, the API and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ImportKind::Braze => "braze",
            ImportKind::MixpanelMembers => "mixpanel_members",
            ImportKind::MixpanelAddMembers => "mixpanel_add_members",
            ImportKind::MixpanelRemoveMembers => "mixpanel_remove_members",
            ImportKind::Amplitude => "amplitude",
            ImportKind::Replace => "replace",
        }
    }
}

/// Outcome counts of one change to a cohort's membership.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportOutcome {
    /// Memberships that newly exist.
    pub added: u64,
    /// Memberships that newly ended.
    pub removed: u64,
    /// Users already in the requested state.
    pub unchanged: u64,
    /// Members that matched no eligible user.
    pub unmatched: Unmatched,
}

/// What resolving one reference of one member found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// The member's position in the request.
    pub member: usize,
    /// The reference's position among the member's.
    pub rank: usize,
    /// The user it matched, if any.
    pub user: Option<MatchedUser>,
    /// A device id that belongs to an identified user only (so it matched nobody).
    pub identified_device: bool,
}

/// A user a reference matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatchedUser {
    /// Internal id.
    pub id: i64,
    /// Whether the user is in the cohort now (read only for add/remove requests).
    pub member: bool,
}

/// Each member's user: the one its first matching reference found, or why none did.
pub fn users_of_members(
    members: usize,
    resolved: impl IntoIterator<Item = Resolved>,
) -> Vec<Result<MatchedUser, UnmatchedReason>> {
    let mut best: Vec<Option<(usize, MatchedUser)>> = vec![None; members];
    let mut identified_device = vec![false; members];
    for r in resolved {
        let (Some(slot), Some(flag)) = (best.get_mut(r.member), identified_device.get_mut(r.member)) else { continue };
        *flag |= r.identified_device;
        if let Some(user) = r.user
            && slot.is_none_or(|(rank, _)| r.rank < rank)
        {
            *slot = Some((r.rank, user));
        }
    }
    best.into_iter()
        .zip(identified_device)
        .map(|(user, identified_device)| match user {
            Some((_, user)) => Ok(user),
            None if identified_device => Err(UnmatchedReason::DeviceIdOfIdentifiedUser),
            None => Err(UnmatchedReason::Unknown),
        })
        .collect()
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
    /// Distinct members that matched nobody.
    pub unmatched: Unmatched,
    /// Those members, by position in the request, with why.
    pub unmatched_members: Vec<(usize, UnmatchedReason)>,
}

impl MembershipChanges {
    /// Decides the changes of an add/remove request: per user, the last change that
    /// reaches it wins; a member sent twice counts once among the unmatched.
    /// `resolved` holds what each reference of `changes` found.
    pub fn decide(changes: &[MemberChange], resolved: impl IntoIterator<Item = Resolved>) -> Self {
        let users = users_of_members(changes.len(), resolved);
        let mut requested: HashMap<i64, (bool, bool)> = HashMap::new();
        let mut unmatched: HashSet<&MemberRefs> = HashSet::new();
        let mut decided = MembershipChanges::default();
        // In request order, so a later change overwrites an earlier one.
        for (index, (change, user)) in changes.iter().zip(users).enumerate() {
            match user {
                Ok(user) => {
                    requested.insert(user.id, (change.remove, user.member));
                }
                Err(reason) => {
                    if unmatched.insert(&change.member) {
                        decided.unmatched.count(reason);
                        decided.unmatched_members.push((index, reason));
                    }
                }
            }
        }
        for (id, (remove, member)) in requested {
            match (remove, member) {
                (false, false) => decided.added.push(id),
                (true, true) => decided.removed.push(id),
                _ => decided.unchanged += 1,
            }
        }
        decided.added.sort_unstable();
        decided.removed.sort_unstable();
        decided
    }

    /// Decides a full replace: the cohort's members become exactly `wanted` (ascending,
    /// distinct), from `current` (ascending, distinct).
    pub fn replace(wanted: &[i64], current: &[i64], unmatched: Unmatched) -> Self {
        let mut decided = MembershipChanges { unmatched, ..Default::default() };
        let (mut w, mut c) = (wanted.iter().peekable(), current.iter().peekable());
        loop {
            match (w.peek(), c.peek()) {
                (Some(&&a), Some(&&b)) if a == b => {
                    decided.unchanged += 1;
                    w.next();
                    c.next();
                }
                (Some(&&a), Some(&&b)) if a < b => {
                    decided.added.push(a);
                    w.next();
                }
                (Some(_), Some(&&b)) => {
                    decided.removed.push(b);
                    c.next();
                }
                (Some(&&a), None) => {
                    decided.added.push(a);
                    w.next();
                }
                (None, Some(&&b)) => {
                    decided.removed.push(b);
                    c.next();
                }
                (None, None) => return decided,
            }
        }
    }

    /// The counts the change answers with.
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
    use crate::domain::{DeviceId, ExternalId};

    fn external(id: &str) -> MemberRefs {
        MemberRefs::one(UserRef::ExternalId(ExternalId::parse(id.into()).unwrap()))
    }

    fn device(id: &str) -> MemberRefs {
        MemberRefs::one(UserRef::DeviceId(DeviceId::parse(id.into()).unwrap()))
    }

    fn found(member: usize, id: i64, is_member: bool) -> Resolved {
        Resolved { member, rank: 0, user: Some(MatchedUser { id, member: is_member }), identified_device: false }
    }

    fn missed(member: usize, identified_device: bool) -> Resolved {
        Resolved { member, rank: 0, user: None, identified_device }
    }

    #[test]
    fn the_last_change_reaching_a_user_wins_and_counts_are_exact() {
        let change = |member, remove| MemberChange { member, remove };
        let changes = [
            change(external("a"), false), // 0: user 1, a member
            change(device("d"), true),    // 1: user 1 again, removed later: wins
            change(external("b"), false), // 2: user 2, not a member: added
            change(external("c"), false), // 3: user 3, already a member: unchanged
            change(external("e"), true),  // 4: user 4, not a member: unchanged
            change(external("x"), false), // 5: unknown
            change(external("x"), true),  // 6: the same unknown member: counted once
            change(device("y"), true),    // 7: a device of an identified user
        ];
        let decided = MembershipChanges::decide(
            &changes,
            [
                found(1, 1, true),
                found(0, 1, true),
                found(2, 2, false),
                found(3, 3, true),
                found(4, 4, false),
                missed(5, false),
                missed(6, false),
                missed(7, true),
            ],
        );
        assert_eq!(decided.added, [2]);
        assert_eq!(decided.removed, [1]);
        let reasons = [(5, UnmatchedReason::Unknown), (7, UnmatchedReason::DeviceIdOfIdentifiedUser)];
        assert_eq!(decided.unmatched_members, reasons);
        let unmatched = Unmatched { unknown: 1, device_id_of_identified_user: 1 };
        assert_eq!(decided.outcome(), ImportOutcome { added: 1, removed: 1, unchanged: 2, unmatched });
    }

    #[test]
    fn a_member_is_the_user_of_its_first_matching_reference() {
        let hit = |rank, id| Resolved {
            member: 0,
            rank,
            user: Some(MatchedUser { id, member: false }),
            identified_device: false,
        };
        let users = users_of_members(
            2,
            [hit(2, 30), hit(1, 20), Resolved { member: 1, rank: 0, user: None, identified_device: true }],
        );
        assert_eq!(users[0], Ok(MatchedUser { id: 20, member: false }));
        assert_eq!(users[1], Err(UnmatchedReason::DeviceIdOfIdentifiedUser));
        // A reference past the request's members is ignored, not a panic.
        assert_eq!(users_of_members(0, [hit(0, 1)]), []);
    }

    #[test]
    fn a_replace_adds_removes_and_keeps() {
        let decided = MembershipChanges::replace(&[1, 3, 5, 9], &[2, 3, 9, 10], Unmatched::default());
        assert_eq!(decided.added, [1, 5]);
        assert_eq!(decided.removed, [2, 10]);
        assert_eq!(decided.unchanged, 2);
        assert_eq!(MembershipChanges::replace(&[], &[4], Unmatched::default()).removed, [4]);
    }
}
