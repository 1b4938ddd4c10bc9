//! User profiles as the batch upsert and the NDJSON load give them, and the rules that
//! upsert a sequence of them into the user store.
//!
//! The rules run in memory ([`Upserter`]) over what the store already knows about the
//! identifiers at hand, one profile after the other, so a later profile sees the effects
//! of the earlier ones; the store then writes the outcome ([`UserStoreChanges`]) with a
//! constant number of set-based statements.

mod keys;
mod upsert;

pub use keys::{IdentifierKey, IdentifierKeys, WrittenIdentifiers};
pub use upsert::{NewUser, StoredIdentifier, StoredUser, TargetUser, UpsertOutcome, Upserter, UserStoreChanges};

use super::{Alias, DeviceId, ExternalId, Invalid, InvalidAt};

/// A valid profile: at least one identifier, each valid, none repeated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The external id, if any.
    pub external_id: Option<ExternalId>,
    /// Distinct aliases, in the order sent.
    pub aliases: Vec<Alias>,
    /// Distinct device ids, in the order sent.
    pub device_ids: Vec<DeviceId>,
}

impl Profile {
    /// Parses every identifier, aliases as (label, name); drops repeats within the
    /// profile. The error names the field within the profile (`aliases[0].alias_name
    /// must be …`).
    pub fn parse(
        external_id: Option<String>,
        sent_aliases: impl IntoIterator<Item = (String, String)>,
        sent_device_ids: impl IntoIterator<Item = String>,
    ) -> Result<Profile, Invalid> {
        let external_id = external_id.map(ExternalId::parse).transpose().at("external_id")?;
        let mut aliases = Vec::new();
        for (i, (label, name)) in sent_aliases.into_iter().enumerate() {
            let alias = Alias::parse(label, name).at(format_args!("aliases[{i}]"))?;
            if !aliases.contains(&alias) {
                aliases.push(alias);
            }
        }
        let mut device_ids = Vec::new();
        for (i, device_id) in sent_device_ids.into_iter().enumerate() {
            let device_id = DeviceId::parse(device_id).at(format_args!("device_ids[{i}]"))?;
            if !device_ids.contains(&device_id) {
                device_ids.push(device_id);
            }
        }
        if external_id.is_none() && aliases.is_empty() && device_ids.is_empty() {
            return Err(Invalid::no_identifier());
        }
        Ok(Profile { external_id, aliases, device_ids })
    }
}
