//! Tracing: where log lines go and how they look, and the one span every request gets.
//!
//! Nothing here records a header or a body: a request's span carries its id, method,
//! route template, status and latency, nothing else (not even the raw path or query), so
//! credentials (in `Authorization` and in partner bodies) cannot reach a log line from
//! this layer.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use axum::{
    body::{Body, Bytes, HttpBody},
    extract::{MatchedPath, Request},
    http::{HeaderName, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::Response,
};
use http_body::{Frame, SizeHint};
use tracing::{Instrument, Span, Subscriber, field::Empty};
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

/// An error with its causes, `outer: cause: root`, on one line. A cause whose text its
/// predecessor already includes is left out: many errors (sqlx's, io's) print their
/// source in their own message, and anyhow's `{:#}` would repeat it.
pub fn error_chain(error: &anyhow::Error) -> String {
    let mut line = String::new();
    let mut previous = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if previous.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
        previous = text;
    }
    line
}

#[cfg(test)]
mod error_chain_tests {
    use super::*;

    #[test]
    fn causes_already_in_their_parents_text_are_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused (os error 111)");
        let error = anyhow::Error::new(sqlx::Error::Io(io)).context("cannot connect to PostgreSQL at h:5432");
        assert_eq!(
            error_chain(&error),
            "cannot connect to PostgreSQL at h:5432: error communicating with database: Connection refused (os error 111)"
        );
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

/// Middleware: gives the request its id, runs it inside a `request` span, records the
/// status when the response head is ready and, when the response body has ended (sent to
/// its last byte, failed, or dropped because the client left), the latency: span fields,
/// one `info` event, and the HTTP metrics. A streamed export is thus measured for as long
/// as it streams, not to its first chunk. Mounted with `Router::layer`, so the matched
/// route template is known.
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

    let in_flight = metrics::GaugeGuard::start(metrics::HTTP_IN_FLIGHT);
    let mut response = next.run(request).instrument(span.clone()).await;

    let status = response.status();
    span.record("status", status.as_u16());
    response.headers_mut().insert(REQUEST_ID, request_id);
    let completion = Completion { started, method, route, status, span, _in_flight: in_flight };
    response.map(|inner| Body::new(ObservedBody { inner, completion: Some(completion) }))
}

/// What is recorded of a request once its response body has ended.
struct Completion {
    started: Instant,
    method: Method,
    route: String,
    status: StatusCode,
    span: Span,
    /// The request counts as in flight until then.
    _in_flight: metrics::GaugeGuard,
}

/// How a response body ended (the `body` field of the `request completed` event).
#[derive(Debug, Clone, Copy)]
enum BodyEnd {
    /// Sent to its last byte.
    Complete,
    /// Failed midway (the client sees a truncated response).
    Failed,
    /// Dropped before its end: the client went away, or the connection broke.
    Abandoned,
}

impl BodyEnd {
    fn as_str(self) -> &'static str {
        match self {
            BodyEnd::Complete => "complete",
            BodyEnd::Failed => "failed",
            BodyEnd::Abandoned => "abandoned",
        }
    }
}

impl Completion {
    fn finish(self, end: BodyEnd) {
        let latency = self.started.elapsed();
        // Whole microseconds: f64 arithmetic on nanoseconds prints 3.3248409999999997.
        self.span.record("latency_ms", (latency.as_micros() as f64) / 1000.0);
        self.span.in_scope(|| tracing::info!(status = self.status.as_u16(), body = end.as_str(), "request completed"));
        metrics::record_request(&self.method, &self.route, self.status, latency);
    }
}

/// A response body that finishes its request's [`Completion`] when it ends, however it
/// ends: at its last frame, at an error, or dropped unfinished.
struct ObservedBody {
    inner: Body,
    /// Taken when finished, so a request is recorded once.
    completion: Option<Completion>,
}

impl ObservedBody {
    fn finish(&mut self, end: BodyEnd) {
        if let Some(completion) = self.completion.take() {
            completion.finish(end);
        }
    }
}

impl HttpBody for ObservedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.finish(BodyEnd::Complete),
            Poll::Ready(Some(Err(_))) => self.finish(BodyEnd::Failed),
            // hyper need not poll again once the body says it has ended (a body of known
            // length): it is complete now, not when hyper gets round to dropping it.
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.finish(BodyEnd::Complete),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        // Unfinished so far: a body hyper never polled because it is empty (or the request
        // is a HEAD) ends here complete; any other was cut off.
        let end = if self.inner.is_end_stream() { BodyEnd::Complete } else { BodyEnd::Abandoned };
        self.finish(end);
    }
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
