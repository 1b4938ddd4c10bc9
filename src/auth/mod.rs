//! Who is calling: extractors for the operator admin API and the segment filter API,
//! and the partner endpoints' body-carried credentials ([`partner`]).

pub mod partner;
pub mod rejections;
pub mod webhook;

use axum::{extract::FromRequestParts, http::HeaderMap, http::request::Parts};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::{
    domain::Scope,
    error::ApiError,
    keys::KeyHash,
    state::AppState,
    store::{self, keys::UsedKey},
};

/// Proof that the request carries the operator's `ADMIN_TOKEN`. A handler of the admin
/// API takes one as an argument.
#[derive(Debug, Clone, Copy)]
pub struct AdminAuth;

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(expected) = &state.config.admin_token else {
            return Err(ApiError::Unauthorized("the admin API is disabled until ADMIN_TOKEN is set".into()));
        };
        let presented = bearer_token(&parts.headers)
            .ok_or_else(|| {
                ApiError::Unauthorized("missing admin token: send Authorization: Bearer <ADMIN_TOKEN>".into())
            })?
            .map_err(|()| ApiError::Unauthorized("invalid admin token".into()))?;
        if secrets_equal(presented, expected.expose()) {
            Ok(AdminAuth)
        } else {
            Err(ApiError::Unauthorized("invalid admin token".into()))
        }
    }
}

/// A valid REST API key (`rak_…`) from `Authorization: Bearer`: the workspace it may
/// read and what it may do. Handlers take the extractor of the scope they need
/// ([`SegmentsReader`]), not this one, so no route can forget its scope.
#[derive(Debug, Clone)]
pub struct ApiKeyAuth {
    /// The key's workspace: the only one this caller sees.
    pub workspace_id: Uuid,
    /// The key's id.
    pub key_id: Uuid,
    scopes: Vec<Scope>,
}

impl ApiKeyAuth {
    /// 403 unless the key has `scope`.
    fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!("this API key lacks the {} scope", scope.as_str())))
        }
    }
}

impl FromRequestParts<AppState> for ApiKeyAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let presented = bearer_token(&parts.headers)
            .ok_or_else(|| ApiError::Unauthorized("missing API key: send Authorization: Bearer <REST API key>".into()))?
            .map_err(|()| ApiError::Unauthorized("invalid API key".into()))?;
        let record = store::keys::find_api_key(&state.db, &KeyHash::of(presented))
            .await?
            .ok_or_else(|| ApiError::Unauthorized("invalid API key".into()))?;
        state.key_usage.record(&state.db, UsedKey::Api { workspace_id: record.workspace_id, id: record.id });
        Ok(ApiKeyAuth {
            workspace_id: record.workspace_id,
            key_id: record.id,
            scopes: record.scopes.iter().filter_map(|s| Scope::parse(s).ok()).collect(),
        })
    }
}

/// A REST API key with the `segments.read` scope: what every route of the segment filter
/// API takes. 401 as for [`ApiKeyAuth`], 403 for a key without the scope.
#[derive(Debug, Clone, Copy)]
pub struct SegmentsReader {
    /// The key's workspace: the only one this caller sees.
    pub workspace_id: Uuid,
}

impl FromRequestParts<AppState> for SegmentsReader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let key = ApiKeyAuth::from_request_parts(parts, state).await?;
        key.require(Scope::SegmentsRead)?;
        Ok(SegmentsReader { workspace_id: key.workspace_id })
    }
}

/// The token of an `Authorization: Bearer <token>` header: `None` without the header,
/// `Some(Err)` when it is there but holds no readable bearer token (another scheme, no
/// token, bytes that are not visible ASCII, as in a key pasted with a `…`): a key was
/// presented, and it is not valid.
fn bearer_token(headers: &HeaderMap) -> Option<Result<&str, ()>> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?;
    let token = value.to_str().ok().and_then(|value| {
        let (scheme, token) = value.split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
    });
    Some(token.ok_or(()))
}

/// Compares two secrets in time independent of where they differ (and of their
/// lengths: both are hashed to 32 bytes first).
pub fn secrets_equal(presented: &str, expected: &str) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.ct_eq(&b).into()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn bearer_token_parsing() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_token(&headers), None);
        headers.insert("authorization", HeaderValue::from_static("Bearer abc"));
        assert_eq!(bearer_token(&headers), Some(Ok("abc")));
        headers.insert("authorization", HeaderValue::from_static("bearer  abc "));
        assert_eq!(bearer_token(&headers), Some(Ok("abc")));
        headers.insert("authorization", HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&headers), Some(Err(())));
        headers.insert("authorization", HeaderValue::from_static("Bearer "));
        assert_eq!(bearer_token(&headers), Some(Err(())));
        headers.insert("authorization", HeaderValue::from_bytes("Bearer rak_\u{2026}".as_bytes()).unwrap());
        assert_eq!(bearer_token(&headers), Some(Err(())));
    }

    #[test]
    fn secrets_compare() {
        assert!(secrets_equal("token", "token"));
        assert!(!secrets_equal("token", "tokeN"));
        assert!(!secrets_equal("token", "token2"));
    }
}
