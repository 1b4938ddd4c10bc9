//! Every JSON response the API tests get is checked against `/openapi.json`: the
//! operation and its status must be documented there, and the body must validate
//! against the documented schema (a JSON-schema validator, with the document's
//! components). A [`TestApp`] fails its test at the end when any response did not.
//!
//! [`TestApp`]: crate::helpers::TestApp

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::{
    body::Body,
    extract::{MatchedPath, Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::Response,
};
use cohort_ingest::app;
use serde_json::Value;

/// The document, the validators built from it so far, and what did not match.
pub struct ContractCheck {
    document: Value,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
    violations: Mutex<Vec<String>>,
}

impl ContractCheck {
    pub fn new() -> Arc<Self> {
        Arc::new(ContractCheck {
            document: serde_json::to_value(app::openapi()).unwrap(),
            validators: Mutex::default(),
            violations: Mutex::default(),
        })
    }

    /// What did not match the document, one line each.
    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }

    fn violation(&self, text: String) {
        self.violations.lock().unwrap().push(text);
    }

    /// Resolves a `{"$ref": "#/…"}` within the document.
    fn resolve<'a>(&'a self, value: &'a Value) -> &'a Value {
        match value.get("$ref").and_then(Value::as_str) {
            Some(reference) => self.document.pointer(reference.trim_start_matches('#')).unwrap_or(&Value::Null),
            None => value,
        }
    }

    fn validator(&self, key: &str, schema: &Value) -> Result<Arc<jsonschema::Validator>, String> {
        if let Some(validator) = self.validators.lock().unwrap().get(key) {
            return Ok(validator.clone());
        }
        // The schema's `$ref`s point into the document's components: give it them.
        let mut root = schema.clone();
        if let Value::Object(object) = &mut root {
            object.insert("components".into(), self.document["components"].clone());
        }
        let validator = Arc::new(jsonschema::validator_for(&root).map_err(|e| format!("{key}: bad schema: {e}"))?);
        self.validators.lock().unwrap().insert(key.to_owned(), validator.clone());
        Ok(validator)
    }

    /// Checks one response of `method route`.
    pub fn check(&self, method: &str, route: &str, status: StatusCode, content_type: Option<&str>, body: &[u8]) {
        let operation = &self.document["paths"][route][method.to_ascii_lowercase()];
        let what = format!("{method} {route} -> {}", status.as_u16());
        if operation.is_null() {
            return self.violation(format!("{what}: the operation is not documented"));
        }
        let Some(response) =
            operation["responses"].get(status.as_str()).or_else(|| operation["responses"].get("default"))
        else {
            return self.violation(format!("{what}: the status is not documented"));
        };
        let response = self.resolve(response);
        let is_json = content_type.is_some_and(|t| t.starts_with("application/json"));
        let Some(schema) = response.pointer("/content/application~1json/schema") else {
            if is_json && !body.is_empty() && response.get("content").is_none() {
                self.violation(format!("{what}: answered JSON, documented without a body"));
            }
            return;
        };
        if !is_json {
            return self.violation(format!("{what}: documented as JSON, answered {content_type:?}"));
        }
        let instance: Value = match serde_json::from_slice(body) {
            Ok(instance) => instance,
            Err(error) => return self.violation(format!("{what}: body is not JSON: {error}")),
        };
        match self.validator(&format!("{method} {route} {status}"), schema) {
            Ok(validator) => {
                let errors: Vec<String> =
                    validator.iter_errors(&instance).map(|e| format!("{} at {}", e, e.instance_path())).collect();
                if !errors.is_empty() {
                    self.violation(format!("{what}: {}", errors.join("; ")));
                }
            }
            Err(error) => self.violation(error),
        }
    }
}

/// Middleware (outermost, on every route): buffers each JSON response and checks it.
pub async fn check_response(State(check): State<Arc<ContractCheck>>, request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_owned();
    let route = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let response = next.run(request).await;
    // Unmatched paths are the fallback's 404 (and 405s have no operation of their own).
    let Some(route) = route else { return response };
    if response.status() == StatusCode::METHOD_NOT_ALLOWED {
        return response;
    }
    let content_type = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    if !content_type.as_deref().is_some_and(|t| t.starts_with("application/json")) {
        // Streams (the NDJSON export) and empty answers pass unbuffered.
        check.check(&method, &route, response.status(), content_type.as_deref(), b"");
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    check.check(&method, &route, parts.status, content_type.as_deref(), &bytes);
    Response::from_parts(parts, Body::from(bytes))
}

/// utoipa names a schema after its type, and two types of one name silently share one
/// entry in the document (one of them then describes the other's responses). Every type
/// deriving `ToSchema` in src/ must have a name of its own.
#[test]
fn every_schema_name_is_unique() {
    fn visit(dir: &std::path::Path, names: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                visit(&path, names);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                let mut lines = text.lines();
                while let Some(line) = lines.next() {
                    if !(line.trim_start().starts_with("#[derive(") && line.contains("ToSchema")) {
                        continue;
                    }
                    // The item follows its attributes: its name is the word after struct/enum.
                    for item in lines.by_ref() {
                        let words: Vec<&str> = item.split_whitespace().collect();
                        if let Some(i) = words.iter().position(|w| *w == "struct" || *w == "enum") {
                            let name = words[i + 1].trim_end_matches(|c: char| !c.is_alphanumeric()).to_owned();
                            let name = name.split('<').next().unwrap().to_owned();
                            names.push((name, path.display().to_string()));
                            break;
                        }
                    }
                }
            }
        }
    }
    let mut names = Vec::new();
    visit(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut names);
    assert!(names.len() > 20, "found only {names:?}");
    names.sort();
    let repeated: Vec<_> = names.windows(2).filter(|w| w[0].0 == w[1].0).collect();
    assert!(repeated.is_empty(), "schema names used twice: {repeated:?}");
}

#[test]
fn the_contract_check_flags_a_body_of_another_shape_and_an_undocumented_status() {
    let check = ContractCheck::new();
    let page = br#"{"cohorts":[{"partner":"kubit","cohort_id":"a","name":"A","member_count":1,"last_import_at":null}],"next_cursor":null}"#;
    check.check("GET", "/v1/cohorts", StatusCode::OK, Some("application/json"), page);
    assert_eq!(check.violations(), Vec::<String>::new());
    // A cohort without its required fields, a count of the wrong type.
    let wrong = br#"{"cohorts":[{"partner":"kubit","member_count":"one"}],"next_cursor":null}"#;
    check.check("GET", "/v1/cohorts", StatusCode::OK, Some("application/json"), &wrong[..]);
    check.check("GET", "/v1/cohorts", StatusCode::IM_A_TEAPOT, Some("application/json"), b"{}");
    assert_eq!(check.violations().len(), 2, "{:?}", check.violations());
}

/// The limits the server enforces on requests are in the document, so a generator
/// (schemathesis) stays within them, and a client can see them.
#[test]
fn request_schemas_carry_the_limits_the_server_enforces() {
    let document = serde_json::to_value(app::openapi()).unwrap();
    let schema = |name: &str, field: &str| document["components"]["schemas"][name]["properties"][field].clone();
    assert_eq!(schema("CohortUsersRequest", "cohort_id")["maxLength"], 255);
    assert_eq!(schema("CohortNameRequest", "name")["minLength"], 1);
    assert_eq!(schema("AliasDoc", "alias_name")["maxLength"], 512);
    assert_eq!(schema("BatchRequest", "users")["maxItems"], 10000);
    assert_eq!(schema("NewPartner", "name")["pattern"], "^[a-z0-9_-]{1,64}$");
    assert_eq!(schema("SegmentPageRequest", "limit")["maximum"], 10000);
    assert_eq!(schema("SegmentCheckRequest", "users")["maxItems"], 1000);
    let list = &document["paths"]["/v1/cohorts"]["get"]["parameters"];
    let limit = list.as_array().unwrap().iter().find(|p| p["name"] == "limit").unwrap();
    assert_eq!((limit["schema"]["minimum"].clone(), limit["schema"]["maximum"].clone()), (1.into(), 1000.into()));
}
