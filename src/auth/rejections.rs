//! Remembering what a partner was refused: a 4xx answered after the partner's key was
//! accepted is written, in the background, to the workspace's rejections, which the
//! operator API lists (`/admin/workspaces/{ws}/partners/{partner}/rejections`).
//! Here, beside the partner credentials, because resolving them is where most refusals
//! happen; the webhooks note theirs through the same call.

use chrono::Utc;

use crate::{
    auth::partner::PartnerCaller,
    error::ApiError,
    extract::RequestId,
    state::AppState,
    store::{self, rejections::Rejection},
};

/// Records `error` as answered to `caller` on `route`, if it is a 4xx. Never delays the
/// answer: the write runs on its own task, and a failure to write is only logged.
pub fn note(state: &AppState, caller: &PartnerCaller, route: &str, request_id: &RequestId, error: &ApiError) {
    let status = error.status();
    if !status.is_client_error() {
        return;
    }
    let rejection = Rejection {
        received_at: Utc::now(),
        request_id: request_id.as_str().to_owned(),
        route: route.to_owned(),
        status: i32::from(status.as_u16()),
        // Client errors' messages are written for the client: no secret, no internals.
        message: error.to_string(),
    };
    let (db, workspace_id, partner) = (state.db.clone(), caller.workspace_id, caller.partner.clone());
    tokio::spawn(async move {
        if let Err(error) = store::rejections::record(&db, workspace_id, &partner, &rejection).await {
            tracing::warn!(%error, "could not record a partner's rejected request");
        }
    });
}

/// `result`, its 4xx noted for `caller`.
pub fn noting<T>(
    state: &AppState,
    caller: &PartnerCaller,
    route: &str,
    request_id: &RequestId,
    result: Result<T, ApiError>,
) -> Result<T, ApiError> {
    result.inspect_err(|error| note(state, caller, route, request_id, error))
}
