//! Segment filter expressions: parsed once from JSON into a [`Filter`] that cannot be
//! malformed or over the limits, so the SQL compiler never has to check anything.
//!
//! ```json
//! {"and": [
//!   {"cohort": {"partner": "kubit", "op": "includes_value", "cohort_ids": ["A", "B"]}},
//!   {"not": {"cohort": {"partner": "kubit", "op": "includes_value", "cohort_ids": ["C"]}}}
//! ]}
//! ```
//!
//! Every error names the place it found the problem, starting at `filter`, e.g.
//! `filter.and[1].cohort.op: expected "includes_value" or "does_not_include_value"`.

use std::borrow::Cow;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{CohortId, Invalid, PartnerName, cohort::MAX_COHORT_TEXT_BYTES};

/// Most cohort leaves one expression may hold.
pub const MAX_LEAVES: usize = 50;
/// Deepest nesting allowed: a lone leaf is 1 level, `{"not": leaf}` is 2.
pub const MAX_DEPTH: usize = 10;
/// Most cohort ids one leaf may list.
pub const MAX_COHORT_IDS_PER_LEAF: usize = 100;

/// How a leaf tests a user's memberships in its listed cohorts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CohortOp {
    /// The user is in at least one of the cohorts.
    IncludesValue,
    /// The user is in none of them (a user with no memberships at all matches).
    DoesNotIncludeValue,
}

impl CohortOp {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            CohortOp::IncludesValue => "includes_value",
            CohortOp::DoesNotIncludeValue => "does_not_include_value",
        }
    }
}

/// One `{"cohort": {...}}` test: a partner, an operator and 1 to 100 distinct cohort ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CohortLeaf {
    partner: PartnerName,
    op: CohortOp,
    cohort_ids: Vec<CohortId>,
}

impl CohortLeaf {
    /// The partner whose cohorts are tested.
    pub fn partner(&self) -> &PartnerName {
        &self.partner
    }

    /// The operator.
    pub fn op(&self) -> CohortOp {
        self.op
    }

    /// The cohort ids, distinct and sorted (never empty).
    pub fn cohort_ids(&self) -> &[CohortId] {
        &self.cohort_ids
    }
}

/// A node of a parsed expression. Only [`Filter::parse`] makes a [`Filter`], so an
/// `Expr` reached through one is always within the limits, with non-empty `and`/`or`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// A cohort membership test.
    Cohort(CohortLeaf),
    /// Every operand matches.
    And(Vec<Expr>),
    /// At least one operand matches.
    Or(Vec<Expr>),
    /// The operand does not match.
    Not(Box<Expr>),
}

/// A valid filter expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    root: Expr,
}

impl Filter {
    /// Parses the JSON found at the request's `filter` field.
    pub fn parse(value: &Value) -> Result<Filter, Invalid> {
        let mut parser = Parser { leaves: 0 };
        let root = parser.expr(value, "filter".to_owned(), 1)?;
        Ok(Filter { root })
    }

    /// The root of the expression.
    pub fn root(&self) -> &Expr {
        &self.root
    }

    /// Every leaf, left to right.
    pub fn leaves(&self) -> Vec<&CohortLeaf> {
        fn walk<'a>(expr: &'a Expr, out: &mut Vec<&'a CohortLeaf>) {
            match expr {
                Expr::Cohort(leaf) => out.push(leaf),
                Expr::And(operands) | Expr::Or(operands) => operands.iter().for_each(|e| walk(e, out)),
                Expr::Not(operand) => walk(operand, out),
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        out
    }

    /// A canonical text of the expression: equal for filters that differ only in JSON
    /// spacing, key order or the order and repetition of a leaf's cohort ids.
    pub fn canonical(&self) -> String {
        fn write(expr: &Expr, out: &mut String) {
            match expr {
                Expr::Cohort(leaf) => {
                    out.push_str("cohort(");
                    out.push_str(leaf.partner.as_str());
                    out.push(',');
                    out.push_str(leaf.op.as_str());
                    for id in &leaf.cohort_ids {
                        out.push(',');
                        // JSON string quoting keeps ids with commas or parentheses unambiguous.
                        out.push_str(&Value::String(id.as_str().to_owned()).to_string());
                    }
                    out.push(')');
                }
                Expr::And(operands) | Expr::Or(operands) => {
                    out.push_str(if matches!(expr, Expr::And(_)) { "and(" } else { "or(" });
                    for (i, operand) in operands.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        write(operand, out);
                    }
                    out.push(')');
                }
                Expr::Not(operand) => {
                    out.push_str("not(");
                    write(operand, out);
                    out.push(')');
                }
            }
        }
        let mut out = String::new();
        write(&self.root, &mut out);
        out
    }

    /// SHA-256 of [`Filter::canonical`]: identifies the filter a page cursor belongs to.
    pub fn fingerprint(&self) -> [u8; 32] {
        Sha256::digest(self.canonical().as_bytes()).into()
    }
}

const EXPECTED_NODE: &str = r#"expected an object with exactly one of "cohort", "and", "or", "not""#;

struct Parser {
    leaves: usize,
}

fn error(path: &str, message: impl Into<Cow<'static, str>>) -> Invalid {
    Invalid::new(message).at(path)
}

impl Parser {
    fn expr(&mut self, value: &Value, path: String, depth: usize) -> Result<Expr, Invalid> {
        if depth > MAX_DEPTH {
            return Err(error(&path, format!("filters nest at most {MAX_DEPTH} levels deep")));
        }
        let Some(object) = value.as_object() else {
            return Err(error(&path, EXPECTED_NODE));
        };
        let mut entries = object.iter();
        let (Some((key, operand)), None) = (entries.next(), entries.next()) else {
            return Err(error(&path, EXPECTED_NODE));
        };
        match key.as_str() {
            "cohort" => self.leaf(operand, format!("{path}.cohort")).map(Expr::Cohort),
            "and" => self.operands(operand, format!("{path}.and"), depth).map(Expr::And),
            "or" => self.operands(operand, format!("{path}.or"), depth).map(Expr::Or),
            "not" => Ok(Expr::Not(Box::new(self.expr(operand, format!("{path}.not"), depth + 1)?))),
            _ => Err(error(&path, EXPECTED_NODE)),
        }
    }

    fn operands(&mut self, value: &Value, path: String, depth: usize) -> Result<Vec<Expr>, Invalid> {
        match value.as_array() {
            Some(items) if !items.is_empty() => {
                items.iter().enumerate().map(|(i, item)| self.expr(item, format!("{path}[{i}]"), depth + 1)).collect()
            }
            _ => Err(error(&path, "expected a non-empty array of filters")),
        }
    }

    fn leaf(&mut self, value: &Value, path: String) -> Result<CohortLeaf, Invalid> {
        self.leaves += 1;
        if self.leaves > MAX_LEAVES {
            return Err(error(&path, format!("at most {MAX_LEAVES} cohort filters in one expression")));
        }
        let Some(object) = value.as_object() else {
            return Err(error(&path, r#"expected an object with "partner", "op" and "cohort_ids""#));
        };
        if let Some(unknown) = object.keys().find(|k| !matches!(k.as_str(), "partner" | "op" | "cohort_ids")) {
            return Err(error(
                &format!("{path}.{unknown}"),
                r#"unknown field, expected "partner", "op" or "cohort_ids""#,
            ));
        }
        let field = |name: &str| object.get(name).ok_or_else(|| error(&format!("{path}.{name}"), "missing field"));
        let partner_path = format!("{path}.partner");
        let partner = field("partner")?.as_str().and_then(|name| PartnerName::parse(name).ok()).ok_or_else(|| {
            error(&partner_path, "expected a partner name: 1 to 64 characters of lowercase a-z, 0-9, '_' or '-'")
        })?;
        let op = match field("op")?.as_str() {
            Some("includes_value") => CohortOp::IncludesValue,
            Some("does_not_include_value") => CohortOp::DoesNotIncludeValue,
            _ => return Err(error(&format!("{path}.op"), r#"expected "includes_value" or "does_not_include_value""#)),
        };
        let ids_path = format!("{path}.cohort_ids");
        let raw_ids = match field("cohort_ids")?.as_array() {
            Some(ids) if !ids.is_empty() => ids,
            _ => return Err(error(&ids_path, "expected a non-empty array of cohort ids")),
        };
        if raw_ids.len() > MAX_COHORT_IDS_PER_LEAF {
            return Err(error(&ids_path, format!("at most {MAX_COHORT_IDS_PER_LEAF} cohort ids per filter")));
        }
        let mut cohort_ids = Vec::with_capacity(raw_ids.len());
        for (i, raw) in raw_ids.iter().enumerate() {
            let id_path = format!("{ids_path}[{i}]");
            let text = raw.as_str().ok_or_else(|| error(&id_path, "expected a string"))?;
            let id = CohortId::parse(text.to_owned()).map_err(|_| {
                error(
                    &id_path,
                    format!("expected a non-empty string of at most {MAX_COHORT_TEXT_BYTES} bytes without NUL"),
                )
            })?;
            cohort_ids.push(id);
        }
        // A leaf tests set membership: order and repetition of ids mean nothing.
        cohort_ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        cohort_ids.dedup();
        Ok(CohortLeaf { partner, op, cohort_ids })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn leaf(op: &str, ids: &[&str]) -> Value {
        json!({"cohort": {"partner": "kubit", "op": op, "cohort_ids": ids}})
    }

    fn parse_error(value: Value) -> String {
        Filter::parse(&value).unwrap_err().to_string()
    }

    #[test]
    fn parses_leaves_and_operators() {
        let filter = Filter::parse(&json!({"and": [
            leaf("includes_value", &["B", "A", "B"]),
            {"or": [leaf("does_not_include_value", &["C"]), {"not": leaf("includes_value", &["D"])}]}
        ]}))
        .unwrap();
        let Expr::And(operands) = filter.root() else { panic!("expected and") };
        assert_eq!(operands.len(), 2);
        let leaves = filter.leaves();
        assert_eq!(leaves.len(), 3);
        // Sorted and deduplicated.
        assert_eq!(leaves[0].cohort_ids().iter().map(CohortId::as_str).collect::<Vec<_>>(), ["A", "B"]);
        assert_eq!(leaves[1].op(), CohortOp::DoesNotIncludeValue);
        assert_eq!(leaves[2].partner().as_str(), "kubit");
    }

    #[test]
    fn canonical_form_ignores_id_order_and_repetition_only() {
        let a = Filter::parse(&leaf("includes_value", &["A", "B"])).unwrap();
        let b = Filter::parse(&leaf("includes_value", &["B", "A", "A"])).unwrap();
        let c = Filter::parse(&leaf("does_not_include_value", &["A", "B"])).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        // Ids that look like syntax cannot make two filters collide.
        let d = Filter::parse(&leaf("includes_value", &["A\",\"B"])).unwrap();
        assert_ne!(a.canonical(), d.canonical());
        assert_eq!(a.canonical(), r#"cohort(kubit,includes_value,"A","B")"#);
    }

    #[test]
    fn errors_name_the_place() {
        let cases = [
            (json!(null), r#"filter: expected an object with exactly one of "cohort", "and", "or", "not""#),
            (json!({}), r#"filter: expected an object with exactly one of "cohort", "and", "or", "not""#),
            (json!({"xor": []}), r#"filter: expected an object with exactly one of "cohort", "and", "or", "not""#),
            (
                json!({"and": [leaf("includes_value", &["A"])], "or": [leaf("includes_value", &["A"])]}),
                r#"filter: expected an object with exactly one of "cohort", "and", "or", "not""#,
            ),
            (json!({"and": []}), "filter.and: expected a non-empty array of filters"),
            (json!({"or": {}}), "filter.or: expected a non-empty array of filters"),
            (
                json!({"and": [leaf("includes_value", &["A"]), {"cohort": {"partner": "kubit", "op": "is", "cohort_ids": ["A"]}}]}),
                r#"filter.and[1].cohort.op: expected "includes_value" or "does_not_include_value""#,
            ),
            (json!({"cohort": {"op": "includes_value", "cohort_ids": ["A"]}}), "filter.cohort.partner: missing field"),
            (
                json!({"cohort": {"partner": "Kubit", "op": "includes_value", "cohort_ids": ["A"]}}),
                "filter.cohort.partner: expected a partner name: 1 to 64 characters of lowercase a-z, 0-9, '_' or '-'",
            ),
            (
                json!({"cohort": {"partner": "kubit", "op": "includes_value", "cohort_ids": ["A"], "x": 1}}),
                r#"filter.cohort.x: unknown field, expected "partner", "op" or "cohort_ids""#,
            ),
            (json!({"cohort": []}), r#"filter.cohort: expected an object with "partner", "op" and "cohort_ids""#),
            (
                json!({"not": {"cohort": {"partner": "kubit", "op": "includes_value", "cohort_ids": []}}}),
                "filter.not.cohort.cohort_ids: expected a non-empty array of cohort ids",
            ),
            (
                json!({"cohort": {"partner": "kubit", "op": "includes_value", "cohort_ids": ["A", 7]}}),
                "filter.cohort.cohort_ids[1]: expected a string",
            ),
            (
                json!({"cohort": {"partner": "kubit", "op": "includes_value", "cohort_ids": ["A", ""]}}),
                "filter.cohort.cohort_ids[1]: expected a non-empty string of at most 255 bytes without NUL",
            ),
            (
                json!({"cohort": {"partner": "kubit", "op": "includes_value", "cohort_ids": ["a\u{0}"]}}),
                "filter.cohort.cohort_ids[0]: expected a non-empty string of at most 255 bytes without NUL",
            ),
            (
                json!({"cohort": {"partner": "kubit", "op": "includes_value", "cohort_ids": ["x".repeat(256)]}}),
                "filter.cohort.cohort_ids[0]: expected a non-empty string of at most 255 bytes without NUL",
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_error(value.clone()), expected, "for {value}");
        }
    }

    #[test]
    fn limits() {
        let ids: Vec<String> = (0..MAX_COHORT_IDS_PER_LEAF).map(|i| i.to_string()).collect();
        let ids_ref: Vec<&str> = ids.iter().map(String::as_str).collect();
        assert!(Filter::parse(&leaf("includes_value", &ids_ref)).is_ok());
        let mut over = ids_ref.clone();
        over.push("one more");
        assert_eq!(
            parse_error(leaf("includes_value", &over)),
            "filter.cohort.cohort_ids: at most 100 cohort ids per filter"
        );

        let fifty: Vec<Value> = (0..MAX_LEAVES).map(|_| leaf("includes_value", &["A"])).collect();
        assert!(Filter::parse(&json!({ "or": fifty })).is_ok());
        let fifty_one: Vec<Value> = (0..=MAX_LEAVES).map(|_| leaf("includes_value", &["A"])).collect();
        assert_eq!(
            parse_error(json!({ "or": fifty_one })),
            "filter.or[50].cohort: at most 50 cohort filters in one expression"
        );

        // A lone leaf is level 1: nine `not`s around it make 10 levels, ten make 11.
        let mut nested = leaf("includes_value", &["A"]);
        for _ in 0..MAX_DEPTH - 1 {
            nested = json!({ "not": nested });
        }
        assert!(Filter::parse(&nested).is_ok());
        let too_deep = json!({ "and": [nested] });
        assert_eq!(
            parse_error(too_deep),
            format!("filter.and[0]{}: filters nest at most 10 levels deep", ".not".repeat(9))
        );
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let word = prop_oneof![
            Just("cohort".to_owned()),
            Just("and".to_owned()),
            Just("or".to_owned()),
            Just("not".to_owned()),
            Just("partner".to_owned()),
            Just("op".to_owned()),
            Just("cohort_ids".to_owned()),
            Just("includes_value".to_owned()),
            Just("does_not_include_value".to_owned()),
            Just("kubit".to_owned()),
            ".{0,8}",
        ];
        let scalar = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            word.clone().prop_map(Value::String),
        ];
        scalar.prop_recursive(14, 256, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((word.clone(), inner), 0..4)
                    .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn arbitrary_json_never_panics_and_errors_start_at_filter(value in arbitrary_json()) {
            match Filter::parse(&value) {
                Ok(filter) => {
                    let leaves = filter.leaves();
                    prop_assert!(!leaves.is_empty() && leaves.len() <= MAX_LEAVES);
                }
                Err(e) => prop_assert!(e.to_string().starts_with("filter"), "{}", e),
            }
        }
    }
}
