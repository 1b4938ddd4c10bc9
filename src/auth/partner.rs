//! Authentication of the partner endpoints, whose credentials travel in the JSON body
//! (`partner_api_key`, `client_secret`) as the Braze partner cohort-import contract has it.
//!
//! The body is read once into its top-level fields, kept as unparsed JSON text; the two
//! keys are checked first (one lookup by hash, so a near-miss key costs what a random one
//! does), and only then are the other fields parsed: a request with bad keys and a bad
//! body answers 401, and nothing is written on the way (`last_used_at` is recorded in the
//! background, at most once a minute per key).

use std::{
    borrow::Cow,
    collections::{HashMap, hash_map::Entry},
};

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, MatchedPath, Request},
    http::StatusCode,
};
use serde::{
    Deserialize, Deserializer,
    de::{MapAccess, Visitor},
};
use serde_json::value::RawValue;
use uuid::Uuid;

use super::rejections;
use crate::{
    domain::PartnerName,
    error::ApiError,
    extract::{KeyName, Path, RequestId},
    keys::{KeyHash, mask},
    state::AppState,
    store::{self, keys::UsedKey},
};

/// 401 when `partner_api_key` is not a valid key of the partner in the path.
pub const INVALID_PARTNER_API_KEY: &str = "Invalid Partner API key";
/// 401 when `client_secret` is not a valid data import key.
pub const INVALID_CLIENT_SECRET: &str = "Invalid client secret";

/// The top-level fields of a partner request body, each still JSON text (borrowed from
/// the body, not copied), so each field can be checked, with its own message, in the
/// order the contract needs. A key given twice is remembered, not resolved: which one
/// "wins" is the client's ambiguity, answered as an error.
pub struct BodyFields<'a> {
    fields: HashMap<Cow<'a, str>, &'a RawValue>,
    /// Keys given more than once, in the order their second time came.
    duplicates: Vec<Cow<'a, str>>,
}

impl<'a> BodyFields<'a> {
    /// Splits a body into its top-level fields; `None` if it is not a JSON object.
    fn parse(body: &'a [u8]) -> Option<Self> {
        serde_json::from_slice(body).ok()
    }

    /// The JSON text of a field, unless it is absent or `null`.
    pub fn raw(&self, name: &str) -> Option<&'a str> {
        self.fields.get(name).map(|raw| raw.get()).filter(|text| *text != "null")
    }

    /// Whether the body gives `name` more than once.
    pub fn is_duplicated(&self, name: &str) -> bool {
        self.duplicates.iter().any(|key| key == name)
    }

    /// A key the body gives more than once, if any.
    pub fn first_duplicate(&self) -> Option<&str> {
        self.duplicates.first().map(|key| &**key)
    }

    /// A field that must be a string: `None` if absent, null or of another type.
    fn string(&self, name: &str) -> Option<Cow<'a, str>> {
        serde_json::from_str(self.raw(name)?).ok()
    }

    /// A field that must be a string, empty if absent, null or of another type: the
    /// contract answers those as it answers an empty one.
    pub fn text(&self, name: &str) -> Cow<'a, str> {
        self.string(name).unwrap_or_default()
    }
}

impl<'de> Deserialize<'de> for BodyFields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = BodyFields<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut body = BodyFields { fields: HashMap::new(), duplicates: Vec::new() };
                while let Some(KeyName(key)) = map.next_key()? {
                    let value: &'de RawValue = map.next_value()?;
                    match body.fields.entry(key) {
                        Entry::Occupied(first) => body.duplicates.push(first.key().clone()),
                        Entry::Vacant(slot) => {
                            slot.insert(value);
                        }
                    }
                }
                Ok(body)
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

/// A partner endpoint's body type, parsed from the fields once the caller is known.
pub trait FromPartnerBody: Sized {
    /// Parses the fields other than the credentials; errors are the client's 400s.
    fn from_fields(fields: &BodyFields<'_>) -> Result<Self, ApiError>;
}

/// Who is posting: a partner, with a data import key of one workspace.
#[derive(Debug, Clone)]
pub struct PartnerCaller {
    /// The partner's name, as in the path (and as the data import key was issued for).
    pub partner: String,
    /// The workspace of the data import key: the only one this request touches.
    pub workspace_id: Uuid,
}

/// An authenticated partner request and its parsed body. The handler's last argument
/// (it consumes the body).
#[derive(Debug)]
pub struct PartnerRequest<T> {
    /// The authenticated caller.
    pub caller: PartnerCaller,
    /// The body, parsed after authentication.
    pub body: T,
}

impl<T: FromPartnerBody> FromRequest<AppState> for PartnerRequest<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        let route = parts.extensions.get::<MatchedPath>().map_or_else(String::new, |p| p.as_str().to_owned());
        let Ok(request_id) = RequestId::from_request_parts(&mut parts, state).await;
        // No valid partner name has a key: the contract's 401, before anything else.
        let Path(partner) = Path::<PartnerName>::from_request_parts(&mut parts, state)
            .await
            .map_err(|_| ApiError::Unauthorized(INVALID_PARTNER_API_KEY.into()))?;
        // The partner contract has no content-type requirement of its own: whatever the
        // header says, the body is read as JSON (so the credentials decide first).
        let bytes = Bytes::from_request(Request::from_parts(parts, body), state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge("request body is too large".into())
            } else {
                ApiError::bad_request("could not read the request body")
            }
        })?;
        // A body that is not a JSON object carries no credentials.
        let fields = BodyFields::parse(&bytes).ok_or_else(|| ApiError::Unauthorized(INVALID_PARTNER_API_KEY.into()))?;
        let (caller, import_key_id) = authenticate(state, partner, &fields).await?;
        // From here on the workspace is known: a 4xx is remembered for its operator.
        let body = state.partner_rate_limit.check(import_key_id).and_then(|()| {
            if let Some(key) = fields.first_duplicate() {
                return Err(ApiError::bad_request(format!("duplicate field `{}`", key.escape_debug())));
            }
            // Nested objects: `cohort_changes` entries reject duplicates as they parse.
            T::from_fields(&fields)
        });
        let body = rejections::noting(state, &caller, &route, &request_id, body)?;
        Ok(PartnerRequest { caller, body })
    }
}

/// Checks `partner_api_key` then `client_secret`, with the contract's 401 messages;
/// the caller and the id of its data import key.
async fn authenticate(
    state: &AppState,
    partner: PartnerName,
    fields: &BodyFields<'_>,
) -> Result<(PartnerCaller, Uuid), ApiError> {
    let partner = partner.as_str().to_owned();
    let unauthorized = |message: String| ApiError::Unauthorized(message);
    // A credential given twice is ambiguous: as invalid as a missing one.
    let credential = |name: &str| {
        if fields.is_duplicated(name) { Cow::Borrowed("") } else { fields.text(name) }
    };
    let partner_api_key = credential("partner_api_key");
    let client_secret = credential("client_secret");
    let found = store::keys::find_partner_credentials(
        &state.db,
        &partner,
        &KeyHash::of(&partner_api_key),
        &KeyHash::of(&client_secret),
    )
    .await?;
    let partner_key_id = found.partner_key_id.ok_or_else(|| unauthorized(INVALID_PARTNER_API_KEY.into()))?;
    let (Some(import_key_id), Some(workspace_id), Some(import_key_partner)) =
        (found.import_key_id, found.workspace_id, found.import_key_partner)
    else {
        return Err(unauthorized(INVALID_CLIENT_SECRET.into()));
    };
    if import_key_partner != partner {
        return Err(unauthorized(format!(
            "Partner not enabled for client with client secret: {}",
            mask(&client_secret)
        )));
    }
    state.key_usage.record(&state.db, UsedKey::PartnerApi(partner_key_id));
    state.key_usage.record(&state.db, UsedKey::DataImport { workspace_id, id: import_key_id });
    Ok((PartnerCaller { partner, workspace_id }, import_key_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_fields_keep_raw_text_and_skip_nulls() {
        let body =
            br#"{"partner_api_key": "pak_1", "cohort_id": 5, "name": null, "c": [{"x": 1}], "esc\u0061ped": "v"}"#;
        let fields = BodyFields::parse(body).unwrap();
        assert_eq!(fields.string("partner_api_key").as_deref(), Some("pak_1"));
        assert_eq!(fields.string("cohort_id"), None, "a number is not a string");
        assert_eq!(fields.raw("cohort_id"), Some("5"));
        assert_eq!(fields.raw("name"), None);
        assert_eq!(fields.raw("missing"), None);
        assert_eq!(fields.raw("c"), Some(r#"[{"x": 1}]"#));
        assert_eq!(fields.string("escaped").as_deref(), Some("v"));
        for not_an_object in [&b"[]"[..], b"", b"{", b"\"s\"", b"{\"a\": }"] {
            assert!(BodyFields::parse(not_an_object).is_none());
        }
    }
}
