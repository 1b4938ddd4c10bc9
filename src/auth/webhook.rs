//! Authentication of the webhook endpoints: the workspace's data import key for the
//! partner in the path travels in `Authorization`, as the sending tool lets its user set
//! it: HTTP Basic's password (Mixpanel; the user name is ignored) or a bearer token
//! (Amplitude's custom headers).

use axum::http::{HeaderMap, header};
use base64::{Engine, engine::general_purpose::STANDARD};
use uuid::Uuid;

use super::{bearer_token, partner::PartnerCaller};
use crate::{
    domain::PartnerName,
    error::ApiError,
    keys::KeyHash,
    state::AppState,
    store::{self, keys::UsedKey},
};

/// Where a webhook carries its data import key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyIn {
    /// `Authorization: Basic base64(<any user>:<key>)`.
    BasicPassword,
    /// `Authorization: Bearer <key>`.
    Bearer,
}

/// The caller of a webhook: the workspace whose data import key for `partner` the
/// request presents, and the key's id (for its rate limit). 401 for a missing,
/// malformed, revoked or other partner's key.
pub async fn authenticate(
    state: &AppState,
    partner: &str,
    headers: &HeaderMap,
    key_in: KeyIn,
) -> Result<(PartnerCaller, Uuid), ApiError> {
    let unauthorized = || {
        ApiError::Unauthorized(match key_in {
            KeyIn::BasicPassword => "invalid credentials: send the data import key as the HTTP Basic password".into(),
            KeyIn::Bearer => "invalid credentials: send Authorization: Bearer <data import key>".into(),
        })
    };
    let partner = PartnerName::parse(partner).map_err(|_| unauthorized())?;
    let key = match key_in {
        KeyIn::BasicPassword => basic_password(headers),
        KeyIn::Bearer => bearer_token(headers).and_then(Result::ok).map(str::to_owned),
    }
    .ok_or_else(unauthorized)?;
    let (id, workspace_id) = store::keys::find_data_import_key(&state.db, partner.as_str(), &KeyHash::of(&key))
        .await?
        .ok_or_else(unauthorized)?;
    state.key_usage.record(&state.db, UsedKey::DataImport { workspace_id, id });
    Ok((PartnerCaller { partner: partner.as_str().to_owned(), workspace_id }, id))
}

/// The password of an `Authorization: Basic` header, if it holds one.
fn basic_password(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (_, password) = decoded.split_once(':')?;
    (!password.is_empty()).then(|| password.to_owned())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn the_basic_password_is_the_key() {
        let mut headers = HeaderMap::new();
        assert_eq!(basic_password(&headers), None);
        let encoded = STANDARD.encode("mixpanel:dik_secret:with:colons");
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Basic {encoded}")).unwrap());
        assert_eq!(basic_password(&headers).as_deref(), Some("dik_secret:with:colons"));
        let empty = STANDARD.encode("user:");
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Basic {empty}")).unwrap());
        assert_eq!(basic_password(&headers), None);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic not-base64!"));
        assert_eq!(basic_password(&headers), None);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer dik_x"));
        assert_eq!(basic_password(&headers), None);
    }
}
