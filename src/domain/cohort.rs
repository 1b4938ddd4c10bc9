//! Partner cohorts: their ids and names, the `created_at` of the name endpoint, and the
//! `cohort_changes` of the users endpoint, parsed once with the exact messages of the
//! Braze partner cohort-import contract (partners show them to their customers).

use chrono::{DateTime, FixedOffset};
use serde::Deserialize;

use super::{Alias, DeviceId, ExternalId, Invalid, InvalidAt, MemberChange, MemberRefs, UserRef};

/// Longest `cohort_id` or cohort `name` accepted, in bytes.
pub const MAX_COHORT_TEXT_BYTES: usize = 255;
/// Most identifiers (user_ids, device_ids and aliases together) in one users request.
pub const MAX_IDENTIFIERS_PER_REQUEST: usize = 1000;

/// 400 for a request over [`MAX_IDENTIFIERS_PER_REQUEST`].
const TOO_MANY_IDENTIFIERS: &str = "Only 1,000 user_ids, device_ids, and aliases are allowed per request";
/// What a `cohort_changes` of the wrong shape (or none) is told it must be.
const COHORT_CHANGES_SHAPE: &str = "must be an array of objects each with key user_ids and/or device_ids mapping to an array of strings, or an aliases object";

/// Whether `value` is acceptable as a cohort id or name: 1 to 255 bytes, no NUL
/// (PostgreSQL cannot store NUL in `text`).
fn is_cohort_text(value: &str) -> bool {
    !value.is_empty() && value.len() <= MAX_COHORT_TEXT_BYTES && !value.contains('\0')
}

/// A partner's id for a cohort, unique per (workspace, partner).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CohortId(String);

impl CohortId {
    /// Parses a raw id; the error is the contract's (`cohort_id must be a valid string`),
    /// which a missing or non-string one, parsed as empty, gets too.
    pub fn parse(value: String) -> Result<Self, Invalid> {
        if is_cohort_text(&value) {
            Ok(CohortId(value))
        } else {
            Err(Invalid::predicate("must be a valid string").at("cohort_id"))
        }
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Parsed as a path parameter: 400 for an empty, over-long or NUL-holding one.
impl<'de> Deserialize<'de> for CohortId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        CohortId::parse(String::deserialize(deserializer)?)
            .map_err(|_| serde::de::Error::custom("cohort_id must be 1 to 255 bytes without NUL"))
    }
}

/// A cohort's display name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CohortName(String);

impl CohortName {
    /// Parses a raw name; the error is the contract's (`name must be a non-empty string`).
    pub fn parse(value: String) -> Result<Self, Invalid> {
        if is_cohort_text(&value) {
            Ok(CohortName(value))
        } else {
            Err(Invalid::predicate("must be a non-empty string").at("name"))
        }
    }

    /// The name's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Parses the name endpoint's `created_at`: ISO-8601 with or without fractional seconds,
/// with `Z` or an offset (`+02:00`, and the basic `+0200` that some JVM formatters emit).
pub fn parse_created_at(value: &str) -> Result<DateTime<FixedOffset>, Invalid> {
    DateTime::parse_from_rfc3339(value)
        .or_else(|_| DateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .map_err(|_| Invalid::predicate("must be a valid time as an ISO-8601 string").at("created_at"))
}

/// The `cohort_changes` of a users request, valid and within the identifier limit: one
/// member per identifier, in request order (a later change wins over an earlier one for the
/// same user).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CohortChanges {
    /// Each identifier as the member it names, with its change's `should_remove`.
    pub members: Vec<MemberChange>,
}

/// The wire shape of one change. Unknown keys are ignored, as are null ones.
#[derive(Deserialize)]
struct RawChange {
    user_ids: Option<Vec<String>>,
    device_ids: Option<Vec<String>>,
    aliases: Option<Vec<RawAlias>>,
    should_remove: Option<bool>,
}

/// The wire shape of one alias; a missing half is reported as an empty one.
#[derive(Deserialize)]
struct RawAlias {
    alias_name: Option<String>,
    alias_label: Option<String>,
}

impl CohortChanges {
    /// Parses the JSON text of `cohort_changes` (empty for none). The error is the
    /// contract's shape message, its identifier-limit message, or one naming the
    /// offending identifier (`cohort_changes[0].user_ids[3] must be at most 512 bytes`).
    pub fn parse_json(json: &str) -> Result<Self, Invalid> {
        let raw: Vec<RawChange> =
            serde_json::from_str(json).map_err(|_| Invalid::predicate(COHORT_CHANGES_SHAPE).at("cohort_changes"))?;
        let total: usize = raw
            .iter()
            .map(|c| {
                c.user_ids.as_ref().map_or(0, Vec::len)
                    + c.device_ids.as_ref().map_or(0, Vec::len)
                    + c.aliases.as_ref().map_or(0, Vec::len)
            })
            .sum();
        if total > MAX_IDENTIFIERS_PER_REQUEST {
            return Err(Invalid::new(TOO_MANY_IDENTIFIERS));
        }
        let mut changes = CohortChanges { members: Vec::with_capacity(total) };
        for (index, change) in raw.into_iter().enumerate() {
            let remove = change.should_remove.unwrap_or(false);
            let mut push = |user_ref| changes.members.push(MemberChange { member: MemberRefs::one(user_ref), remove });
            for (i, value) in change.user_ids.into_iter().flatten().enumerate() {
                let id = ExternalId::parse(value).at(format_args!("cohort_changes[{index}].user_ids[{i}]"))?;
                push(UserRef::ExternalId(id));
            }
            for (i, value) in change.device_ids.into_iter().flatten().enumerate() {
                let id = DeviceId::parse(value).at(format_args!("cohort_changes[{index}].device_ids[{i}]"))?;
                push(UserRef::DeviceId(id));
            }
            for (i, alias) in change.aliases.into_iter().flatten().enumerate() {
                let alias = Alias::parse(alias.alias_label.unwrap_or_default(), alias.alias_name.unwrap_or_default())
                    .at(format_args!("cohort_changes[{index}].aliases[{i}]"))?;
                push(UserRef::Alias(alias));
            }
        }
        Ok(changes)
    }

    /// How many identifiers the request holds (duplicates included).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the request holds no identifier at all (`[]`, `[{}]`, …): partners send
    /// such requests to test their credentials.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cohort_ids_and_names() {
        assert!(CohortId::parse("c-1".into()).is_ok());
        assert!(CohortId::parse("x".repeat(255)).is_ok());
        for bad in [String::new(), "x".repeat(256), "a\0b".into()] {
            assert_eq!(CohortId::parse(bad.clone()).unwrap_err().to_string(), "cohort_id must be a valid string");
            assert_eq!(CohortName::parse(bad).unwrap_err().to_string(), "name must be a non-empty string");
        }
    }

    #[test]
    fn created_at_accepts_iso_8601_variants() {
        for ok in [
            "2024-03-01T12:00:00Z",
            "2024-03-01T12:00:00.123Z",
            "2024-03-01T12:00:00.123456789+02:00",
            "2024-03-01T12:00:00-05:00",
            "2024-03-01T12:00:00.5+0200",
            "2024-03-01T12:00:00+0000",
        ] {
            assert!(parse_created_at(ok).is_ok(), "{ok}");
        }
        for bad in ["", "yesterday", "2024-03-01", "2024-03-01T12:00:00", "2024-13-01T12:00:00Z", "1709294400"] {
            let error = parse_created_at(bad).unwrap_err().to_string();
            assert_eq!(error, "created_at must be a valid time as an ISO-8601 string", "{bad}");
        }
    }

    #[test]
    fn changes_keep_order_kind_and_removal() {
        let json = r#"[
            {"user_ids": ["u1", "u2"], "device_ids": null},
            {"device_ids": ["d1"], "aliases": [{"alias_name": "n", "alias_label": "l"}], "should_remove": true},
            {"unknown": 1}
        ]"#;
        let changes = CohortChanges::parse_json(json).unwrap();
        assert_eq!(changes.len(), 4);
        let external = |id: &str| MemberRefs::one(UserRef::ExternalId(ExternalId::parse(id.into()).unwrap()));
        assert_eq!(changes.members[1], MemberChange { member: external("u2"), remove: false });
        assert!(matches!(changes.members[2].member.refs(), [UserRef::DeviceId(_)]));
        assert!(changes.members[2].remove);
        assert!(
            matches!(changes.members[3].member.refs(), [UserRef::Alias(a)] if a.alias_label.as_str() == "l" && a.alias_name.as_str() == "n")
        );
        assert!(changes.members[3].remove);
        assert!(CohortChanges::parse_json("[]").unwrap().is_empty());
    }

    #[test]
    fn shape_errors_use_the_contract_message() {
        for bad in [
            "",
            "{}",
            "null",
            r#"[1]"#,
            r#"[{"user_ids": "u1"}]"#,
            r#"[{"user_ids": [1]}]"#,
            r#"[{"aliases": ["x"]}]"#,
            r#"[{"should_remove": "yes"}]"#,
        ] {
            let error = CohortChanges::parse_json(bad).unwrap_err().to_string();
            assert_eq!(
                error,
                "cohort_changes must be an array of objects each with key user_ids and/or device_ids mapping to an array of strings, or an aliases object",
                "{bad}"
            );
        }
    }

    #[test]
    fn identifier_limit_counts_every_kind() {
        let ids = |n: usize| (0..n).map(|i| format!("\"{i}\"")).collect::<Vec<_>>().join(",");
        let at_limit = format!(r#"[{{"user_ids": [{}]}}, {{"device_ids": [{}]}}]"#, ids(500), ids(500));
        assert_eq!(CohortChanges::parse_json(&at_limit).unwrap().len(), 1000);
        let over = format!(
            r#"[{{"user_ids": [{}]}}, {{"device_ids": [{}]}}, {{"aliases": [{{"alias_name": "n", "alias_label": "l"}}]}}]"#,
            ids(500),
            ids(500)
        );
        assert_eq!(CohortChanges::parse_json(&over).unwrap_err().to_string(), TOO_MANY_IDENTIFIERS);
    }

    #[test]
    fn identifier_errors_name_the_field() {
        let error = |json: &str| CohortChanges::parse_json(json).unwrap_err().to_string();
        let long = "x".repeat(513);
        let json = format!(r#"[{{"user_ids": ["ok"]}}, {{"user_ids": ["fine", "{long}"]}}]"#);
        assert_eq!(error(&json), "cohort_changes[1].user_ids[1] must be at most 512 bytes");
        let nul = r#"[{"device_ids": ["a\u0000b"]}]"#;
        assert_eq!(error(nul), "cohort_changes[0].device_ids[0] must not contain NUL characters");
        let alias = r#"[{"aliases": [{"alias_name": "n"}]}]"#;
        assert_eq!(error(alias), "cohort_changes[0].aliases[0].alias_label must be a non-empty string");
    }
}
