//! Tracing: where log lines go and how they look, and the one span every request gets.
//!
//! Nothing here records a header or a body: a request's span carries its id, method,
//! route template, status and latency, nothing else (not even the raw path or query), so
//! credentials (in `Authorization` and in partner bodies) cannot reach a log line from
//! this layer.

use std::time::Instant;

use axum::{
    extract::{MatchedPath, Request},
    http::{HeaderName, HeaderValue},
    middleware::Next,
    response::Response,
};
use tracing::{Instrument, Subscriber, field::Empty};
use tracing_subscriber::{EnvFilter, fmt, fmt::MakeWriter, prelude::*};

use crate::{config::LogFormat, metrics};

/// The request id header: taken from the request when it is sensible, else generated;
/// set on the request (handlers and the import log read it there) and echoed in the
/// response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id accepted from a client; longer ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Route label of requests that matched no route (a fixed value: raw paths would give
/// a scanner unbounded metric series).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Installs the global subscriber on stderr, and a panic hook that reports panics as
/// log events (so `LOG_FORMAT=json` stays one object a line). A bad filter falls back to
/// `info` rather than failing start-up over a log setting; it is reported once the
/// subscriber is in place.
pub fn init(format: LogFormat, filter: &str) {
    let (env_filter, bad_filter) = match EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e.to_string())),
    };
    tracing::subscriber::set_global_default(subscriber(format, env_filter, std::io::stderr))
        .expect("init runs once, before anything else sets a subscriber");
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        tracing::error!(panic = %panic_message(info.payload()), %location, "panic");
    }));
    if let Some(error) = bad_filter {
        tracing::warn!(%error, "RUST_LOG is not a valid filter; logging at info");
    }
}

/// A subscriber writing `format` lines to `writer`, filtered by `filter`: what [`init`]
/// installs on stderr, and what tests install on a buffer.
pub fn subscriber<W>(format: LogFormat, filter: EnvFilter, writer: W) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Pretty => Box::new(registry.with(fmt::layer().with_writer(writer))),
        LogFormat::Json => Box::new(registry.with(
            fmt::layer().json().flatten_event(true).with_current_span(true).with_span_list(false).with_writer(writer),
        )),
    }
}

/// The text of a panic payload (`panic!` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload")
}

/// Middleware: gives the request its id, runs it inside a `request` span, and when the
/// response head is ready records status and latency (span fields, one `info` event, and
/// the HTTP metrics). Mounted with `Router::layer`, so the matched route template is known.
pub async fn observe_request(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = request
        .headers()
        .get(&REQUEST_ID)
        .filter(|value| is_acceptable_request_id(value))
        .cloned()
        .unwrap_or_else(generate_request_id);
    request.headers_mut().insert(REQUEST_ID, request_id.clone());

    let method = request.method().clone();
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| UNMATCHED_ROUTE.to_owned(), |m| m.as_str().to_owned());
    let span = tracing::info_span!(
        "request",
        request_id = request_id.to_str().unwrap_or_default(),
        method = %method,
        route = %route,
        status = Empty,
        latency_ms = Empty,
    );

    let in_flight = metrics::InFlight::start();
    let mut response = next.run(request).instrument(span.clone()).await;
    drop(in_flight);

    let latency = started.elapsed();
    let status = response.status();
    span.record("status", status.as_u16());
    span.record("latency_ms", latency.as_secs_f64() * 1000.0);
    span.in_scope(|| tracing::info!(status = status.as_u16(), "request completed"));
    metrics::record_request(&method, &route, status, latency);
    response.headers_mut().insert(REQUEST_ID, request_id);
    response
}

/// A client's request id is kept when it is short and made of token characters only:
/// anything else (huge, spaces, control bytes) would pollute the logs and is replaced.
fn is_acceptable_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_REQUEST_ID_LEN
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

fn generate_request_id() -> HeaderValue {
    HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).expect("a UUID is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_from_clients_are_kept_only_when_sensible() {
        assert!(is_acceptable_request_id(&HeaderValue::from_static("abc-123_X.y:z")));
        assert!(!is_acceptable_request_id(&HeaderValue::from_static("")));
        assert!(!is_acceptable_request_id(&HeaderValue::from_static("has space")));
        assert!(!is_acceptable_request_id(&HeaderValue::from_str(&"a".repeat(129)).unwrap()));
    }

    #[test]
    fn panic_messages_are_read_from_both_payload_kinds() {
        assert_eq!(panic_message(&"static"), "static");
        assert_eq!(panic_message(&String::from("owned")), "owned");
        assert_eq!(panic_message(&42), "non-string panic payload");
    }
}
