//! The one error type of the HTTP API, and how each failure becomes a response.
//!
//! Every error answers JSON `{"message": "..."}`. Client errors carry a short message
//! written for the caller; server-side failures are logged with their cause and answer a
//! generic message, so no internal detail (or secret) reaches a client.

use axum::{
    Json,
    extract::rejection::JsonRejection,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{domain::Invalid, store::database::CommitOutcomeUnknown};

/// Seconds a client is asked to wait before retrying a 503 or 429.
pub const RETRY_AFTER_SECS: u64 = 1;

/// The message of a request whose COMMIT's outcome is unknown.
pub const COMMIT_OUTCOME_UNKNOWN: &str = "the outcome of this request is unknown: the database did not confirm its \
commit, so it may or may not have been applied; retrying it is safe";

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: malformed or invalid input; the message names the field.
    #[error("{0}")]
    BadRequest(String),
    /// 401: missing or invalid credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: valid credentials without the needed scope.
    #[error("{0}")]
    Forbidden(String),
    /// 404: unknown resource.
    #[error("{0}")]
    NotFound(String),
    /// 408: the client stopped sending its request body.
    #[error("{0}")]
    RequestTimeout(String),
    /// 409: conflicts with existing data.
    #[error("{0}")]
    Conflict(String),
    /// 413: body over the configured limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415: body is not of the expected content type.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 429: a rate limit was hit.
    #[error("{0}")]
    TooManyRequests(String),
    /// 503: the service is at capacity or the request ran out of time; retry later.
    #[error("{0}")]
    Overloaded(String),
    /// 503: the request's COMMIT was sent but its outcome cannot be known; a retry is safe.
    #[error("{COMMIT_OUTCOME_UNKNOWN}")]
    CommitOutcomeUnknown,
    /// 503: the database cannot take the request now; retry later.
    #[error("database unavailable")]
    Unavailable(#[source] Option<sqlx::Error>),
    /// 500: a bug or an unexpected database failure; details go to the log only.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for the caller.
    pub message: String,
}

impl ApiError {
    /// Shorthand for [`ApiError::BadRequest`].
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest(message.into())
    }

    /// Shorthand for [`ApiError::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::NotFound(message.into())
    }

    /// Shorthand for [`ApiError::Conflict`].
    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError::Conflict(message.into())
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Overloaded(_) | ApiError::Unavailable(_) | ApiError::CommitOutcomeUnknown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if CommitOutcomeUnknown::is(&error) {
            // Logged where it happened (`Database::commit`).
            return ApiError::CommitOutcomeUnknown;
        }
        if is_unavailable(&error) { ApiError::Unavailable(Some(error)) } else { ApiError::Internal(error.into()) }
    }
}

/// Input the domain refused: a 400 saying where and why.
impl From<Invalid> for ApiError {
    fn from(invalid: Invalid) -> Self {
        ApiError::BadRequest(invalid.to_string())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        ApiError::Internal(error)
    }
}

/// Whether a database error means "PostgreSQL is not reachable now" (worth a 503 and a
/// retry) rather than a bug.
fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exceptions; 57P01-03: admin shutdown, crash shutdown,
            // cannot connect now; 53300: too many connections.
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

impl ApiError {
    /// The response, its body built by `body` from the status and the client's message:
    /// a server-side failure is logged here with its cause and answers a generic
    /// message; 503 and 429 carry `Retry-After`. (Protocols with their own error shape,
    /// such as Mixpanel's webhook, answer through this too.)
    pub fn respond_with<B: Serialize>(self, body: impl FnOnce(StatusCode, String) -> B) -> Response {
        let status = self.status();
        let message = match &self {
            ApiError::Internal(cause) => {
                tracing::error!(error = ?cause, "request failed");
                "internal error".to_owned()
            }
            ApiError::Unavailable(cause) => {
                tracing::warn!(error = ?cause, "database unavailable");
                "service temporarily unavailable, retry later".to_owned()
            }
            other => other.to_string(),
        };
        let mut response = (status, Json(body(status, message))).into_response();
        if matches!(status, StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS) {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.respond_with(|_, message| ErrorBody { message })
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge("request body is too large".into()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                ApiError::UnsupportedMediaType("expected a request body with Content-Type: application/json".into())
            }
            _ => ApiError::BadRequest(json_rejection_message(&rejection)),
        }
    }
}

/// axum's rejection text, shortened to what the caller needs: serde's message with the
/// path of the offending field, without axum's boilerplate prefix.
fn json_rejection_message(rejection: &JsonRejection) -> String {
    let text = rejection.body_text();
    for prefix in
        ["Failed to deserialize the JSON body into the target type: ", "Failed to parse the request body as JSON: "]
    {
        if let Some(rest) = text.strip_prefix(prefix) {
            return format!("invalid JSON body: {rest}");
        }
    }
    text
}

/// Result type of handlers.
pub type ApiResult<T> = Result<T, ApiError>;
