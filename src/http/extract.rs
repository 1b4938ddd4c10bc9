//! axum's extractors, with rejections that answer our JSON errors instead of plain text.

use axum::{
    extract::{
        FromRequest, FromRequestParts,
        rejection::{PathRejection, QueryRejection},
    },
    response::{IntoResponse, Response},
};
use serde::Serialize;

use crate::{error::ApiError, telemetry::REQUEST_ID};

/// A JSON body (or response). Rejections: 400 naming the field, 413, 415.
#[derive(Debug, Clone, Copy, Default, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

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
        ApiError::BadRequest(format!("invalid path: {}", rejection.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        let text = rejection.body_text();
        let detail = text.strip_prefix("Failed to deserialize query string: ").unwrap_or(&text);
        ApiError::BadRequest(format!("invalid query string: {detail}"))
    }
}
