//! Domain types: input parsed once at the edge into values that cannot be invalid.

pub mod cohort;
pub mod filter;
pub mod identifiers;
pub mod invalid;
pub mod matching;
pub mod membership;
pub mod names;
pub mod profile;
pub mod user_ref;

pub use cohort::{CohortChanges, CohortId, CohortName};
pub use identifiers::{Alias, AliasLabel, AliasName, DeviceId, ExternalId, IdentifierError};
pub use invalid::{Invalid, InvalidAt};
pub use matching::MatchingRules;
pub use membership::{
    ImportKind, ImportOutcome, MemberChange, MemberRefs, MembershipChanges, Unmatched, UnmatchedReason,
};
pub use names::{DisplayName, PartnerName, Scope};
pub use user_ref::UserRef;
