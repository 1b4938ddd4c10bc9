//! Load shedding, the request deadline, and the JSON answers for failures that happen
//! outside handlers (a panic, a method the route does not have).

use std::{any::Any, sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{MatchedPath, Request, State},
    http::{Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use futures::StreamExt;
use tokio::sync::Semaphore;

use crate::{
    error::{ApiError, ErrorBody},
    store::database::CommitWatch,
};

/// Routes allowed to run past the request timeout: they stream large bodies whose
/// duration grows with the data, not with a fault (the bulk NDJSON user load and the
/// segment export).
pub const UNBOUNDED_ROUTES: &[(Method, &str)] = &[
    (Method::POST, "/admin/workspaces/{ws}/users/import"),
    (Method::PUT, "/admin/workspaces/{ws}/cohorts/{partner}/{cohort_id}/members"),
    (Method::POST, "/v1/segments/export"),
];

/// Routes that are never shed: probes and scrapes must keep answering when the service
/// is at capacity (a liveness probe failing under load would get the instance killed).
pub const UNSHED_ROUTES: &[(Method, &str)] = &[(Method::GET, "/healthz"), (Method::GET, "/metrics")];

/// Routes that enforce a body limit of their own: the NDJSON loads, whose limit is
/// `IMPORT_BODY_LIMIT_BYTES`, and Mixpanel's webhook, which answers its 413 in
/// Mixpanel's shape; every other route has `BODY_LIMIT_BYTES`.
pub const OWN_BODY_LIMIT_ROUTES: &[(Method, &str)] = &[
    (Method::POST, "/admin/workspaces/{ws}/users/import"),
    (Method::PUT, "/admin/workspaces/{ws}/cohorts/{partner}/{cohort_id}/members"),
    (Method::POST, "/webhooks/mixpanel/{partner}"),
];

/// What [`enforce_limits`] needs: one semaphore shared by every route.
#[derive(Debug, Clone)]
pub struct Limits {
    in_flight: Arc<Semaphore>,
    timeout: Duration,
    body_limit: u64,
}

impl Limits {
    /// At most `max_in_flight` requests at once, each within `timeout`, with bodies of at
    /// most `body_limit` bytes.
    pub fn new(max_in_flight: usize, timeout: Duration, body_limit: usize) -> Self {
        Limits {
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            timeout,
            body_limit: u64::try_from(body_limit).unwrap_or(u64::MAX),
        }
    }
}

/// Middleware: sheds the request with 503 + `Retry-After` when `max_in_flight` requests
/// are already running (a streamed response counts until its body ends) (waiting would only add latency to an overloaded service), and
/// answers 503 + `Retry-After` when it runs past the timeout before sending a COMMIT.
/// Dropping the handler's future then drops its open transaction, which PostgreSQL rolls
/// back: a timed-out request changes nothing. A request past the timeout whose COMMIT is
/// under way is let finish and answers its real outcome.
pub async fn enforce_limits(State(limits): State<Limits>, request: Request, next: Next) -> Response {
    let (unbounded, unshed, own_body_limit) = {
        let route = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
        let listed = |list: &[(Method, &str)]| {
            route.is_some_and(|route| list.iter().any(|(m, r)| m == request.method() && *r == route))
        };
        (listed(UNBOUNDED_ROUTES), listed(UNSHED_ROUTES), listed(OWN_BODY_LIMIT_ROUTES))
    };
    // A declared length over the limit is refused before waiting for a byte of it: the
    // extractor would otherwise wait for the body (until the deadline, if none comes).
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if !own_body_limit && declared.is_some_and(|length| length > limits.body_limit) {
        return ApiError::PayloadTooLarge("request body is too large".into()).into_response();
    }
    let permit = if unshed {
        None
    } else {
        match limits.in_flight.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => return ApiError::Overloaded("server is at capacity, retry later".into()).into_response(),
        }
    };
    if unbounded {
        // A streamed body is still work in flight: the slot is freed when it ends.
        let response = next.run(request).await;
        return match permit {
            Some(permit) => response.map(|body| {
                Body::from_stream(body.into_data_stream().map(move |chunk| {
                    let _slot = &permit;
                    chunk
                }))
            }),
            None => response,
        };
    }
    let commits = CommitWatch::default();
    let handler = commits.watch(next.run(request));
    let mut handler = std::pin::pin!(handler);
    match tokio::time::timeout(limits.timeout, handler.as_mut()).await {
        Ok(response) => response,
        // Its COMMIT is under way: cutting it off now would answer "timed out" for a
        // change that may be committed. Its outcome is awaited instead, for at most the
        // commit timeout (`Database::commit`), and answered as it is.
        Err(_) if commits.commit_sent() => {
            tracing::info!(timeout_secs = limits.timeout.as_secs(), "request past its deadline while committing");
            handler.await
        }
        // No COMMIT was sent: dropping the handler rolls its transaction back.
        Err(_) => {
            tracing::warn!(timeout_secs = limits.timeout.as_secs(), "request timed out");
            ApiError::Overloaded("request timed out, retry later".into()).into_response()
        }
    }
}

/// The answer to a panicking handler: a bare JSON 500 (the panic itself is reported by
/// the panic hook; nothing of it reaches the client).
pub fn panic_response(_payload: Box<dyn Any + Send + 'static>) -> Response {
    tracing::error!("request handler panicked");
    (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(ErrorBody { message: "internal error".into() })).into_response()
}

/// The answer to a known path with a method it does not have (axum adds `Allow`).
pub async fn method_not_allowed(method: Method) -> Response {
    let message = format!("method {method} is not allowed on this path");
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(ErrorBody { message })).into_response()
}
