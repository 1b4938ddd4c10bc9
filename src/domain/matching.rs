//! How the members a webhook sends are matched to users: an ordered list of rules per
//! workspace and partner, each reading one field of the member object as one kind of
//! user reference. A member is the user its first matching rule finds.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Alias, AliasLabel, DeviceId, ExternalId, Invalid, InvalidAt, MemberRefs, UserRef};

/// Most rules a partner's list holds.
pub const MAX_RULES: usize = 8;
/// Longest `field`, in bytes.
const MAX_FIELD_BYTES: usize = 255;

/// One rule as the API and the store write it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// A key of the member object; `a.b` reads key `b` of object `a` when the member has
    /// no key `a.b` itself (Amplitude's `user_properties.email`).
    pub field: String,
    /// `external_id`, `device_id` or `alias`.
    #[serde(rename = "as")]
    pub target: String,
    /// The alias label, for `alias` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias_label: Option<String>,
}

/// What a rule reads its field as.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    ExternalId,
    DeviceId,
    Alias(AliasLabel),
}

/// One rule, valid.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    field: String,
    target: Target,
}

impl Rule {
    /// Parses one rule; the error names the field at fault within it.
    fn parse(spec: RuleSpec) -> Result<Self, Invalid> {
        if spec.field.is_empty() || spec.field.len() > MAX_FIELD_BYTES || spec.field.contains('\0') {
            return Err(Invalid::predicate(format!("must be 1 to {MAX_FIELD_BYTES} bytes without NUL")).at("field"));
        }
        let target = match (spec.target.as_str(), spec.alias_label) {
            ("external_id", None) => Target::ExternalId,
            ("device_id", None) => Target::DeviceId,
            ("alias", Some(label)) => Target::Alias(AliasLabel::parse(label).at("alias_label")?),
            ("alias", None) => return Err(Invalid::predicate("is required with \"as\": \"alias\"").at("alias_label")),
            ("external_id" | "device_id", Some(_)) => {
                return Err(Invalid::predicate("is only for \"as\": \"alias\"").at("alias_label"));
            }
            _ => return Err(Invalid::predicate("must be \"external_id\", \"device_id\" or \"alias\"").at("as")),
        };
        Ok(Rule { field: spec.field, target })
    }
}

/// A partner's matching rules, in the order they are tried: 1 to [`MAX_RULES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchingRules(Vec<Rule>);

impl MatchingRules {
    /// Parses rules; the error names the rule (`rules[1].as must be …`).
    pub fn parse(specs: Vec<RuleSpec>) -> Result<Self, Invalid> {
        if specs.is_empty() || specs.len() > MAX_RULES {
            return Err(Invalid::new(format!("expected 1 to {MAX_RULES} rules")).at("rules"));
        }
        let rules = specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| Rule::parse(spec).at(format_args!("rules[{i}]")))
            .collect::<Result<Vec<_>, Invalid>>()?;
        Ok(MatchingRules(rules))
    }

    /// One rule: `field` read as an external id (each protocol's default).
    pub fn external_id_from(field: &str) -> Self {
        MatchingRules(vec![Rule { field: field.to_owned(), target: Target::ExternalId }])
    }

    /// The rules as written.
    pub fn specs(&self) -> Vec<RuleSpec> {
        self.0
            .iter()
            .map(|rule| {
                let (target, alias_label) = match &rule.target {
                    Target::ExternalId => ("external_id", None),
                    Target::DeviceId => ("device_id", None),
                    Target::Alias(label) => ("alias", Some(label.as_str().to_owned())),
                };
                RuleSpec { field: rule.field.clone(), target: target.to_owned(), alias_label }
            })
            .collect()
    }

    /// The references a member object gives, in rule order; `None` if no rule finds a
    /// usable value (absent, not a string or an integer, or not a valid identifier).
    pub fn member_refs(&self, member: &Map<String, Value>) -> Option<MemberRefs> {
        let refs = self
            .0
            .iter()
            .filter_map(|rule| {
                let value = text_of(lookup(member, &rule.field)?)?;
                match &rule.target {
                    Target::ExternalId => ExternalId::parse(value).ok().map(UserRef::ExternalId),
                    Target::DeviceId => DeviceId::parse(value).ok().map(UserRef::DeviceId),
                    Target::Alias(label) => Alias::parse(label.as_str().to_owned(), value).ok().map(UserRef::Alias),
                }
            })
            .collect();
        MemberRefs::in_order(refs)
    }
}

/// The value of `field` in `object`: the key itself, else `a.b` as key `b` of object `a`.
fn lookup<'a>(object: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    if let Some(value) = object.get(field) {
        return Some(value);
    }
    let (head, rest) = field.split_once('.')?;
    lookup(object.get(head)?.as_object()?, rest)
}

/// A string, or an integer as its digits (ids are sometimes sent as numbers).
fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rules(value: Value) -> Result<MatchingRules, String> {
        MatchingRules::parse(serde_json::from_value(value).unwrap()).map_err(|e| e.to_string())
    }

    #[test]
    fn rules_parse_and_say_what_is_wrong() {
        let ok = rules(json!([
            {"field": "mixpanel_distinct_id", "as": "external_id"},
            {"field": "email", "as": "alias", "alias_label": "email"}
        ]))
        .unwrap();
        assert_eq!(ok.specs().len(), 2);
        assert_eq!(rules(json!([])).unwrap_err(), "rules: expected 1 to 8 rules");
        assert_eq!(
            rules(json!([{"field": "email", "as": "alias"}])).unwrap_err(),
            "rules[0].alias_label is required with \"as\": \"alias\""
        );
        assert_eq!(
            rules(json!([{"field": "x", "as": "phone"}])).unwrap_err(),
            "rules[0].as must be \"external_id\", \"device_id\" or \"alias\""
        );
        assert_eq!(
            rules(json!([{"field": "x", "as": "device_id"}, {"field": "", "as": "device_id"}])).unwrap_err(),
            "rules[1].field must be 1 to 255 bytes without NUL"
        );
        assert_eq!(
            rules(json!([{"field": "x", "as": "device_id", "alias_label": "l"}])).unwrap_err(),
            "rules[0].alias_label is only for \"as\": \"alias\""
        );
        assert_eq!(
            rules(json!([{"field": "x", "as": "alias", "alias_label": ""}])).unwrap_err(),
            "rules[0].alias_label must be a non-empty string"
        );
    }

    #[test]
    fn a_member_gives_its_references_in_rule_order() {
        let rules = rules(json!([
            {"field": "user_properties.email", "as": "alias", "alias_label": "email"},
            {"field": "user_id", "as": "external_id"},
            {"field": "missing", "as": "device_id"}
        ]))
        .unwrap();
        let member = json!({"user_id": 42, "user_properties": {"email": "a@b.c"}});
        let refs = rules.member_refs(member.as_object().unwrap()).unwrap();
        assert!(matches!(&refs.refs()[0], UserRef::Alias(a) if a.alias_name.as_str() == "a@b.c"));
        assert!(matches!(&refs.refs()[1], UserRef::ExternalId(id) if id.as_str() == "42"));
        assert_eq!(refs.refs().len(), 2);
        // Nothing usable: no member.
        let member = json!({"user_id": "", "user_properties": {"email": true}});
        assert_eq!(rules.member_refs(member.as_object().unwrap()), None);
        // A key holding a dot is read as is first.
        let dotted = MatchingRules::external_id_from("a.b");
        let member = json!({"a.b": "direct", "a": {"b": "nested"}});
        assert!(matches!(&dotted.member_refs(member.as_object().unwrap()).unwrap().refs()[0],
            UserRef::ExternalId(id) if id.as_str() == "direct"));
    }
}
