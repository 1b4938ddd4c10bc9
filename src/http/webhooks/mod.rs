//! The cohort webhooks analytics tools send unchanged: Mixpanel's ([`mixpanel`]) and
//! Amplitude's ([`amplitude`]). Each adapter reads its wire format into the domain's one
//! operation (add these members, remove these, or replace the membership) and goes
//! through the write path, the import log and the metrics the Braze contract uses.

mod amplitude;
mod mixpanel;

use axum::{body::Bytes, extract::rejection::BytesRejection, http::StatusCode};
use serde_json::{Map, Value};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::partner::PartnerCaller,
    domain::{CohortId, MatchingRules, MemberChange, MemberRefs},
    error::{ApiError, ApiResult},
    state::AppState,
    store,
};

/// Most members one message may carry.
pub const MAX_MEMBERS_PER_MESSAGE: usize = 10_000;

/// The webhook routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(mixpanel::receive)).routes(routes!(amplitude::receive))
}

/// The body, or the 4xx for one that could not be read (too large, cut off).
fn body_bytes(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge("request body is too large".into())
        } else {
            ApiError::bad_request("could not read the request body")
        }
    })
}

/// The partner's matching rules in the caller's workspace, or the protocol's default:
/// `default_field` as the external id.
async fn matching_rules(state: &AppState, caller: &PartnerCaller, default_field: &str) -> ApiResult<MatchingRules> {
    let stored = store::matching::find(&state.db, caller.workspace_id, &caller.partner).await?;
    Ok(stored.unwrap_or_else(|| MatchingRules::external_id_from(default_field)))
}

/// The members of a message as references, by `rules`, and how many gave no readable
/// reference. 400 for a member that is not an object, or too many members.
fn read_members(rules: &MatchingRules, field: &str, members: &[Value]) -> ApiResult<(Vec<MemberRefs>, u64)> {
    if members.len() > MAX_MEMBERS_PER_MESSAGE {
        return Err(ApiError::bad_request(format!("{field}: at most {MAX_MEMBERS_PER_MESSAGE} members per message")));
    }
    let mut refs = Vec::with_capacity(members.len());
    let mut unreadable = 0;
    for (i, member) in members.iter().enumerate() {
        let object: &Map<String, Value> =
            member.as_object().ok_or_else(|| ApiError::bad_request(format!("{field}[{i}]: expected an object")))?;
        match rules.member_refs(object) {
            Some(member) => refs.push(member),
            None => unreadable += 1,
        }
    }
    Ok((refs, unreadable))
}

/// The members as changes, all adding or all removing.
fn as_changes(members: Vec<MemberRefs>, remove: bool) -> Vec<MemberChange> {
    members.into_iter().map(|member| MemberChange { member, remove }).collect()
}

/// A cohort id sent as a string or as a number.
fn cohort_id_of(value: Option<&Value>, field: &str) -> ApiResult<CohortId> {
    let text = match value {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(ApiError::bad_request(format!("{field}: expected a string or a number"))),
    };
    CohortId::parse(text).map_err(|_| ApiError::bad_request(format!("{field}: must be 1 to 255 bytes without NUL")))
}
