//! User profiles as the batch upsert and the NDJSON import receive them, and the rules
//! that upsert a sequence of them into the user store.
//!
//! The rules run in memory ([`Upserter`]) over what the store already knows about the
//! identifiers at hand, one profile after the other, so a later profile sees the effects
//! of the earlier ones; the store then writes the outcome ([`UserStoreChanges`]) with a
//! constant number of set-based statements.

mod keys;
mod upsert;

use serde::Deserialize;
use utoipa::ToSchema;

pub use keys::{IdentifierKey, IdentifierKeys, WrittenIdentifiers};
pub use upsert::{NewUser, StoredIdentifier, StoredUser, TargetUser, UpsertOutcome, Upserter, UserStoreChanges};

use super::{Alias, DeviceId, ExternalId, Invalid, InvalidAt};

/// A profile as sent: one batch item or one NDJSON line.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileFields {
    /// The customer's id for the user; unique per workspace.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 512)]
    pub external_id: Option<String>,
    /// Aliases (label + name), each unique per workspace.
    #[serde(default)]
    pub aliases: Option<Vec<AliasFields>>,
    /// Device ids, each unique per workspace.
    #[serde(default)]
    pub device_ids: Option<Vec<String>>,
}

/// An alias as sent.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AliasFields {
    /// The name within the label.
    #[schema(min_length = 1, max_length = 512)]
    pub alias_name: String,
    /// The label (namespace).
    #[schema(min_length = 1, max_length = 512)]
    pub alias_label: String,
}

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
    /// Parses every identifier of `fields`; drops repeats within the profile. The error
    /// names the field within the profile (`aliases[0].alias_name must be …`).
    pub fn parse(fields: ProfileFields) -> Result<Profile, Invalid> {
        let external_id = fields.external_id.map(ExternalId::parse).transpose().at("external_id")?;
        let mut aliases = Vec::new();
        for (i, alias) in fields.aliases.unwrap_or_default().into_iter().enumerate() {
            let alias = Alias::parse(alias.alias_label, alias.alias_name).at(format_args!("aliases[{i}]"))?;
            if !aliases.contains(&alias) {
                aliases.push(alias);
            }
        }
        let mut device_ids = Vec::new();
        for (i, device_id) in fields.device_ids.unwrap_or_default().into_iter().enumerate() {
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
