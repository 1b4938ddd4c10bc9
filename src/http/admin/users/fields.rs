//! A profile as the batch upsert and the NDJSON load receive it: the wire shape, which
//! [`Profile::parse`] turns into a valid profile.

use serde::Deserialize;
use utoipa::ToSchema;

use crate::domain::{Invalid, profile::Profile};

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

impl TryFrom<ProfileFields> for Profile {
    type Error = Invalid;

    fn try_from(fields: ProfileFields) -> Result<Profile, Invalid> {
        let aliases = fields.aliases.unwrap_or_default().into_iter().map(|alias| (alias.alias_label, alias.alias_name));
        Profile::parse(fields.external_id, aliases, fields.device_ids.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::InvalidAt;

    #[test]
    fn an_invalid_field_is_named_by_its_place_in_the_profile() {
        let fields = ProfileFields {
            aliases: Some(vec![AliasFields { alias_label: "l".into(), alias_name: "a".repeat(513) }]),
            ..Default::default()
        };
        assert_eq!(
            Profile::try_from(fields).at("users[3]").unwrap_err().to_string(),
            "users[3].aliases[0].alias_name must be at most 512 bytes"
        );
        assert_eq!(
            Profile::try_from(ProfileFields::default()).unwrap_err().to_string(),
            "profile must have an external_id, an alias or a device_id"
        );
    }
}
