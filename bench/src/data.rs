//! The benchmark's data, generated deterministically: the same flags give the same users
//! and the same cohort changes on every run and every machine.

use std::fmt::Write as _;

/// Seed of every random choice the benchmark makes.
const SEED: u64 = 0x00c0_4041_b3e5_c4ed;

/// Identifiers a cohort users request carries (the contract's limit).
pub const IDENTIFIERS_PER_REQUEST: u64 = 1_000;

/// Cohorts the changes are spread across.
pub const COHORTS: usize = 10;

/// The alias label every seeded alias uses.
pub const ALIAS_LABEL: &str = "email";

/// A removal request reuses the identifiers of an add request to the same cohort at least
/// this many add requests back, so it removes members that are (almost surely) already in:
/// far enough back that no concurrent client still has that add in flight.
const REMOVAL_DISTANCE: usize = 4;

/// SplitMix64: tiny, fast, and the same sequence whatever the `rand` crate's version.
pub struct Rng(u64);

impl Rng {
    /// A generator for one purpose, derived from the benchmark's seed.
    pub fn new(stream: u64) -> Self {
        Rng(SEED ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound` > 0), without modulo bias worth mentioning.
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// True with the given probability in percent.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// How seeded user number `i` is known. 80% are identified (half of those also carry an
/// alias), 20% are anonymous with a device id; the pattern is fixed by the number, so the
/// change generator can pick a user of a given kind without a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Has an external_id, and an alias when `with_alias`.
    Identified { with_alias: bool },
    /// Has only a device id.
    Anonymous,
}

impl Profile {
    /// The profile of seeded user `i`.
    pub fn of(i: u64) -> Profile {
        if i.is_multiple_of(5) { Profile::Anonymous } else { Profile::Identified { with_alias: i % 2 == 1 } }
    }
}

/// The external_id of seeded user `i` (identified users only).
pub fn external_id(i: u64) -> String {
    format!("user-{i}")
}

/// The alias name of seeded user `i` (label [`ALIAS_LABEL`]).
pub fn alias_name(i: u64) -> String {
    format!("alias-{i}")
}

/// The device id of seeded user `i` (anonymous users only).
pub fn device_id(i: u64) -> String {
    format!("device-{i}")
}

/// Appends the NDJSON line of seeded user `i` to `out`. The identifiers are plain ASCII
/// without quotes or backslashes, so no JSON escaping is needed.
pub fn write_user_line(i: u64, out: &mut String) {
    match Profile::of(i) {
        Profile::Anonymous => {
            let _ = writeln!(out, r#"{{"device_ids":["{}"]}}"#, device_id(i));
        }
        Profile::Identified { with_alias: false } => {
            let _ = writeln!(out, r#"{{"external_id":"{}"}}"#, external_id(i));
        }
        Profile::Identified { with_alias: true } => {
            let _ = writeln!(
                out,
                r#"{{"external_id":"{}","aliases":[{{"alias_name":"{}","alias_label":"{ALIAS_LABEL}"}}]}}"#,
                external_id(i),
                alias_name(i)
            );
        }
    }
}

/// One identifier of a cohort change, as a partner sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identifier {
    /// Matches an identified user's external_id.
    UserId(String),
    /// Matches a user's alias with label [`ALIAS_LABEL`] and this name.
    Alias(String),
    /// Matches an anonymous user's device id.
    DeviceId(String),
}

/// One `POST /partners/{partner}/cohorts/users` request: identifiers added to (or removed
/// from) one cohort.
#[derive(Debug, Clone)]
pub struct ChangeRequest {
    /// Which of the [`COHORTS`] cohorts, `0..COHORTS`.
    pub cohort: usize,
    /// Removal instead of addition.
    pub remove: bool,
    /// At most [`IDENTIFIERS_PER_REQUEST`].
    pub identifiers: Vec<Identifier>,
}

/// The requests that carry `changes` changes to cohorts of a `users`-user population:
/// 1,000 identifiers a request, round-robin over the cohorts; of the identifiers about 70%
/// user_ids, 20% aliases, 10% device_ids, 5% of them unknown; 10% of the requests removals.
/// `stream` picks the random sequence (the ingest's is 1).
pub fn change_requests(users: u64, changes: u64, stream: u64) -> Vec<ChangeRequest> {
    let mut rng = Rng::new(stream);
    let mut adds_by_cohort: Vec<Vec<usize>> = vec![Vec::new(); COHORTS];
    let mut requests: Vec<ChangeRequest> = Vec::new();
    let count = changes.div_ceil(IDENTIFIERS_PER_REQUEST);
    for index in 0..count {
        let size = (changes - index * IDENTIFIERS_PER_REQUEST).min(IDENTIFIERS_PER_REQUEST) as usize;
        let cohort = (index % COHORTS as u64) as usize;
        let earlier_adds = &adds_by_cohort[cohort];
        let removable = earlier_adds.len().saturating_sub(REMOVAL_DISTANCE);
        let request = if removable > 0 && rng.percent(10) {
            let source = earlier_adds[rng.below(removable as u64) as usize];
            let identifiers = requests[source].identifiers.iter().take(size).cloned().collect();
            ChangeRequest { cohort, remove: true, identifiers }
        } else {
            adds_by_cohort[cohort].push(requests.len());
            let identifiers = (0..size).map(|_| random_identifier(&mut rng, users)).collect();
            ChangeRequest { cohort, remove: false, identifiers }
        };
        requests.push(request);
    }
    requests
}

/// One identifier: 70% user_id, 20% alias, 10% device_id; 5% of them match nobody.
fn random_identifier(rng: &mut Rng, users: u64) -> Identifier {
    let unknown = rng.percent(5);
    let kind = rng.below(100);
    if unknown {
        let nobody = format!("unknown-{}", rng.next_u64());
        return match kind {
            0..70 => Identifier::UserId(nobody),
            70..90 => Identifier::Alias(nobody),
            _ => Identifier::DeviceId(nobody),
        };
    }
    match kind {
        0..70 => Identifier::UserId(external_id(pick_user(rng, users, |p| p != Profile::Anonymous))),
        70..90 => {
            Identifier::Alias(alias_name(pick_user(rng, users, |p| p == Profile::Identified { with_alias: true })))
        }
        _ => Identifier::DeviceId(device_id(pick_user(rng, users, |p| p == Profile::Anonymous))),
    }
}

/// A random seeded user whose profile satisfies `wanted` (every kind is at least 20% of
/// the users, so this takes a handful of draws).
pub fn pick_user(rng: &mut Rng, users: u64, wanted: impl Fn(Profile) -> bool) -> u64 {
    loop {
        let i = rng.below(users);
        if wanted(Profile::of(i)) {
            return i;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_have_the_issue_proportions() {
        let mut anonymous = 0;
        let mut with_alias = 0;
        for i in 0..1_000 {
            match Profile::of(i) {
                Profile::Anonymous => anonymous += 1,
                Profile::Identified { with_alias: true } => with_alias += 1,
                Profile::Identified { with_alias: false } => {}
            }
        }
        assert_eq!((anonymous, with_alias), (200, 400));
    }

    #[test]
    fn changes_are_deterministic_and_sized() {
        let first = change_requests(1_000, 12_345, 1);
        let again = change_requests(1_000, 12_345, 1);
        assert_eq!(first.len(), 13);
        assert_eq!(first.iter().map(|r| r.identifiers.len()).sum::<usize>(), 12_345);
        assert!(first.iter().zip(&again).all(|(a, b)| a.identifiers == b.identifiers && a.remove == b.remove));
    }

    #[test]
    fn user_lines_are_json() {
        let mut out = String::new();
        for i in 0..10 {
            write_user_line(i, &mut out);
        }
        for line in out.lines() {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
    }
}
