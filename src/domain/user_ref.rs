//! A reference to one user of a workspace, in the shapes the operator and segment APIs
//! take: `{"external_id"}`, `{"braze_id"}`, `{"device_id"}` or `{"alias": {…}}`.

use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::{Alias, DeviceId, ExternalId, Invalid, InvalidAt};

/// One user reference, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UserRef {
    /// By external id: identified users.
    ExternalId(ExternalId),
    /// By public id.
    BrazeId(Uuid),
    /// By device id.
    DeviceId(DeviceId),
    /// By alias.
    Alias(Alias),
}

const EXPECTED_REFERENCE: &str =
    r#"expected an object with exactly one of "external_id", "braze_id", "device_id", "alias""#;

/// A reference in the documented form, as serde reads an externally tagged enum: an
/// object with exactly one of these keys.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum WellFormedRef {
    ExternalId(String),
    BrazeId(String),
    DeviceId(String),
    Alias(WellFormedAlias),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WellFormedAlias {
    alias_label: String,
    alias_name: String,
}

impl WellFormedRef {
    /// The reference, if its values are valid too.
    fn into_user_ref(self) -> Option<UserRef> {
        match self {
            WellFormedRef::ExternalId(id) => ExternalId::parse(id).ok().map(UserRef::ExternalId),
            WellFormedRef::BrazeId(id) => id.parse().ok().map(UserRef::BrazeId),
            WellFormedRef::DeviceId(id) => DeviceId::parse(id).ok().map(UserRef::DeviceId),
            WellFormedRef::Alias(a) => Alias::parse(a.alias_label, a.alias_name).ok().map(UserRef::Alias),
        }
    }
}

impl UserRef {
    /// Parses the JSON text of a reference; the error names the field at fault within it
    /// (its caller puts the reference's own place in front: `users[3]`, `line 7`). A valid
    /// one is read straight into its type (checks and replaces read many, and a JSON tree
    /// of each costs more than the rest of the work); anything else is read as a tree,
    /// which says what is wrong.
    pub fn parse_json(json: &str) -> Result<UserRef, Invalid> {
        if let Some(user_ref) = serde_json::from_str::<WellFormedRef>(json).ok().and_then(WellFormedRef::into_user_ref)
        {
            return Ok(user_ref);
        }
        match serde_json::from_str::<Value>(json) {
            Ok(value) => Self::explain(&value),
            Err(error) => Err(Invalid::new(format!("invalid JSON: {error}"))),
        }
    }

    /// The error for the reference `value`, naming what is wrong (or the reference,
    /// should it be valid after all).
    fn explain(value: &Value) -> Result<UserRef, Invalid> {
        let single = value.as_object().filter(|o| o.len() == 1).and_then(|o| o.iter().next());
        let Some((kind, raw)) = single else {
            return Err(Invalid::new(EXPECTED_REFERENCE));
        };
        let text = |field: &str, raw: &Value| {
            raw.as_str().map(str::to_owned).ok_or_else(|| Invalid::new("expected a string").at(field))
        };
        match kind.as_str() {
            "external_id" => ExternalId::parse(text("external_id", raw)?).map(UserRef::ExternalId).at("external_id"),
            "device_id" => DeviceId::parse(text("device_id", raw)?).map(UserRef::DeviceId).at("device_id"),
            "braze_id" => text("braze_id", raw)?
                .parse::<Uuid>()
                .map(UserRef::BrazeId)
                .map_err(|_| Invalid::new("expected a braze_id (a UUID)").at("braze_id")),
            "alias" => {
                let alias = raw.as_object().ok_or_else(|| {
                    Invalid::new(r#"expected an object with "alias_name" and "alias_label""#).at("alias")
                })?;
                if let Some(unknown) = alias.keys().find(|k| !matches!(k.as_str(), "alias_name" | "alias_label")) {
                    return Err(Invalid::new(r#"unknown field, expected "alias_name" or "alias_label""#)
                        .at(format_args!("alias.{unknown}")));
                }
                let half = |field: &str| match alias.get(field) {
                    Some(raw) => text(&format!("alias.{field}"), raw),
                    None => Err(Invalid::new("missing field").at(format_args!("alias.{field}"))),
                };
                let (label, name) = (half("alias_label")?, half("alias_name")?);
                Alias::parse(label, name).map(UserRef::Alias).at("alias")
            }
            _ => Err(Invalid::new(EXPECTED_REFERENCE)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_parses_and_bad_ones_say_why() {
        let ok = |json: &str| UserRef::parse_json(json).unwrap();
        assert!(matches!(ok(r#"{"external_id":"u1"}"#), UserRef::ExternalId(id) if id.as_str() == "u1"));
        assert!(matches!(ok(r#"{"device_id":"d1"}"#), UserRef::DeviceId(_)));
        assert!(matches!(ok(r#"{"braze_id":"0190a2c4-93b1-7cc1-b1a2-1c2b3d4e5f60"}"#), UserRef::BrazeId(_)));
        assert!(matches!(ok(r#"{"alias":{"alias_label":"email","alias_name":"a@b"}}"#), UserRef::Alias(_)));
        let err = |json: &str| UserRef::parse_json(json).at("line 3").unwrap_err().to_string();
        assert_eq!(err(r#"{"braze_id":"x"}"#), "line 3.braze_id: expected a braze_id (a UUID)");
        assert_eq!(err(r#"{"external_id":""}"#), "line 3.external_id must be a non-empty string");
        assert_eq!(err(r#"{"a":1,"b":2}"#), format!("line 3: {EXPECTED_REFERENCE}"));
        assert_eq!(err(r#"{"alias":{"alias_label":"l"}}"#), "line 3.alias.alias_name: missing field");
        assert_eq!(
            err(r#"{"alias":{"alias_label":"l","alias_name":7}}"#),
            "line 3.alias.alias_name: expected a string"
        );
        assert_eq!(
            err(r#"{"alias":{"alias_label":"","alias_name":"n"}}"#),
            "line 3.alias.alias_label must be a non-empty string"
        );
        assert!(err("{not json").starts_with("line 3: invalid JSON"));
    }

    #[test]
    fn references_read_straight_or_as_a_tree_come_out_the_same() {
        let cases = [
            r#"{"external_id": "u1"}"#,
            r#"{"braze_id": "0192a0b5-4c5e-7d3a-9f1e-2b3c4d5e6f70"}"#,
            r#"{"braze_id": "0192A0B5-4C5E-7D3A-9F1E-2B3C4D5E6F70"}"#,
            r#"{"device_id": "d\u00e9vice"}"#,
            r#"{"alias": {"alias_name": "n", "alias_label": "l"}}"#,
            // Malformed or invalid: only the tree names the problem.
            r#"{"external_id": "a", "external_id": "b"}"#,
            r#"{"external_id": "a", "braze_id": null}"#,
            r#"{"external_id": null}"#,
            r#"{"external_id": ""}"#,
            r#"{"external_id": 5}"#,
            r#"{"braze_id": "not-a-uuid"}"#,
            r#"{"alias": {"alias_name": "n", "alias_label": "l", "x": 1}}"#,
            r#"{"alias": {"alias_name": "n"}}"#,
            r#"{"alias": {"alias_name": "n", "alias_name": "m", "alias_label": "l"}}"#,
            r#"{"email": "x@y"}"#,
            r#"{}"#,
            r#"["external_id", "u1"]"#,
            r#""external_id""#,
            r#"null"#,
        ];
        for case in cases {
            let tree: Value = serde_json::from_str(case).unwrap();
            let straight = format!("{:?}", UserRef::parse_json(case));
            assert_eq!(straight, format!("{:?}", UserRef::explain(&tree)), "for {case}");
        }
        let valid = cases.iter().filter(|case| serde_json::from_str::<WellFormedRef>(case).is_ok()).count();
        assert!(valid >= 5, "the straight path reads the documented forms");
    }
}
