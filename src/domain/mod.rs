//! Domain types: input parsed once at the edge into values that cannot be invalid.

pub mod cohort;
pub mod filter;
pub mod identifiers;
pub mod membership;
pub mod names;
pub mod profile;

pub use cohort::{CohortChanges, CohortId, CohortName};
pub use identifiers::{Alias, AliasLabel, AliasName, DeviceId, ExternalId, IdentifierError};
pub use membership::{ImportOutcome, MembershipChanges};
pub use names::{DisplayName, PartnerName, Scope};
