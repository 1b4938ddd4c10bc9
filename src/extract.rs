//! axum's extractors, with rejections that answer our JSON errors instead of plain text.
//! Outside `http` because authentication, which the handlers depend on, extracts with
//! them too.

use std::{borrow::Cow, collections::HashSet};

use axum::{
    extract::{
        FromRequest, FromRequestParts, Request,
        rejection::{PathRejection, QueryRejection},
    },
    response::{IntoResponse, Response},
};
use serde::{
    Deserialize, Deserializer, Serialize,
    de::{self, DeserializeOwned, MapAccess, SeqAccess, Visitor},
};
use serde_json::value::RawValue;

use crate::{error::ApiError, telemetry::REQUEST_ID};

/// A JSON body (or response). Rejections: 400 naming the field (or the duplicated key),
/// 413, 415.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        // axum checks the content type and the size, and reports syntax errors; the
        // text is then checked for duplicate keys anywhere (serde's derived structs
        // catch them only where a struct is parsed, not in maps or free-form values),
        // and only then parsed into `T`, with axum's messages.
        let axum::Json(raw) = axum::Json::<Box<RawValue>>::from_request(request, state).await?;
        reject_duplicate_keys(raw.get()).map_err(ApiError::BadRequest)?;
        let axum::Json(value) = axum::Json::<T>::from_bytes(raw.get().as_bytes())?;
        Ok(Json(value))
    }
}

/// `Err` with a message naming the key when an object of `json` holds a key twice (keys
/// compared once unescaped, so `"a"` and `"\u0061"` are the same key). Malformed JSON
/// passes: its own parse reports it.
pub fn reject_duplicate_keys(json: &str) -> Result<(), String> {
    match serde_json::from_str::<NoDuplicateKeys>(json) {
        Err(error) if error.is_data() => {
            // The only data error this pass raises is its own.
            let text = error.to_string();
            Err(text.split(" at line ").next().unwrap_or(&text).to_owned())
        }
        _ => Ok(()),
    }
}

/// Any JSON value, checked for duplicate keys at every level.
struct NoDuplicateKeys;

impl<'de> Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NoDuplicateKeys)
    }
}

impl<'de> Visitor<'de> for NoDuplicateKeys {
    type Value = NoDuplicateKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        let mut seen = HashSet::new();
        while let Some(KeyName(key)) = map.next_key()? {
            if seen.contains(&key) {
                return Err(de::Error::custom(format_args!("duplicate field `{}`", key.escape_debug())));
            }
            map.next_value::<NoDuplicateKeys>()?;
            seen.insert(key);
        }
        Ok(NoDuplicateKeys)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(NoDuplicateKeys)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(NoDuplicateKeys)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(NoDuplicateKeys)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(NoDuplicateKeys)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(NoDuplicateKeys)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(NoDuplicateKeys)
    }

    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(NoDuplicateKeys)
    }
}

/// An object key, unescaped; borrowed from the text when it has no escapes.
pub(crate) struct KeyName<'de>(pub(crate) Cow<'de, str>);

impl<'de> Deserialize<'de> for KeyName<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = KeyName<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object key")
            }

            fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Self::Value, E> {
                Ok(KeyName(Cow::Borrowed(key)))
            }

            fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
                Ok(KeyName(Cow::Owned(key.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Path parameters. A malformed one (e.g. a workspace id that is not a UUID) is a 400.
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// Query parameters. A malformed one is a 400.
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// The request's id, as the import log keeps it: the `x-request-id` header (set by the
/// request-id layer when the client sends none) when it is usable, else a new UUID.
#[derive(Debug, Clone)]
pub struct RequestId(String);

/// Longest request id kept in the import log.
const MAX_REQUEST_ID_BYTES: usize = 255;

impl RequestId {
    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        let id = parts
            .headers
            .get(&REQUEST_ID)
            .and_then(|value| value.to_str().ok())
            .filter(|id| !id.is_empty() && id.len() <= MAX_REQUEST_ID_BYTES)
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
        Ok(RequestId(id))
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        let text = rejection.body_text();
        let detail = text.strip_prefix("Invalid URL: ").unwrap_or(&text);
        ApiError::BadRequest(format!("invalid path: {detail}"))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        let text = rejection.body_text();
        let detail = text.strip_prefix("Failed to deserialize query string: ").unwrap_or(&text);
        ApiError::BadRequest(format!("invalid query string: {detail}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_found_at_any_depth_and_after_unescaping() {
        assert_eq!(reject_duplicate_keys(r#"{"a":1,"b":{"a":2}}"#), Ok(()));
        assert_eq!(reject_duplicate_keys(r#"{"a":1,"a":2}"#), Err("duplicate field `a`".to_owned()));
        assert_eq!(reject_duplicate_keys(r#"{"a\u005fb":1,"a_b":2}"#), Err("duplicate field `a_b`".to_owned()));
        assert!(reject_duplicate_keys(r#"[{"x":[{"k":1,"k":1}]}]"#).is_err());
        // Malformed JSON is left to the parse that follows.
        assert_eq!(reject_duplicate_keys(r#"{"a":1,"b""#), Ok(()));
    }
}
