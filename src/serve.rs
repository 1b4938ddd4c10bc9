//! Accepting and serving HTTP connections, with what `axum::serve` lacks: a cap on open
//! connections, a header-read timeout and an idle timeout.
//!
//! hyper's own header-read timeout runs from the moment a connection is ready for a
//! request, so it cannot tell a slow header from an idle keep-alive connection; both are
//! watched here instead, per connection, from its reads and its requests:
//! - while a request is in flight (its handler running or its body streaming), nothing
//!   is timed here: the request's own limits apply;
//! - otherwise, a new connection must bring its first request's headers within the
//!   header-read timeout of being accepted (a client connects to send a request: a silent
//!   new connection is a held slot, as slowloris holds them), and a kept-alive one,
//!   once a byte of its next request has arrived, within the header-read timeout of that
//!   byte;
//! - otherwise (a kept-alive connection with no byte since its last response) it is
//!   closed after the idle timeout.

use std::{
    convert::Infallible,
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::Request,
};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Notify, Semaphore, watch},
    time::Instant,
};
use tower::ServiceExt;

/// The limits on connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open connections at most; the next one is accepted when one closes.
    pub max_connections: u32,
    /// From a connection's accept, or a later request's first byte, to the end of the
    /// request's headers.
    pub header_read_timeout: Duration,
    /// A kept-alive connection with no request in flight and no byte of a next one.
    pub idle_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting, asks
/// every connection to finish its request in flight and close, and returns once all have
/// closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let max = limits.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(max as usize));
    let (stop, stopping) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // At the cap, stop accepting: further connections wait in the listen backlog
        // (kernel memory, no task, no buffers) until one of ours closes.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let router = router.clone();
        let stopping = stopping.clone();
        tokio::spawn(async move {
            serve_connection(stream, router, limits, stopping).await;
            drop(slot);
        });
    }
    // Closing the listening socket refuses new connections at once.
    drop(listener);
    let _ = stop.send(true);
    // Every connection holds a slot until it has closed.
    let _all_closed = slots.acquire_many(max).await;
    Ok(())
}

/// Accept errors: a connection reset before it was accepted is nothing; anything else
/// (out of file descriptors) is logged and waited out, as hyper used to.
async fn accept_failed(error: io::Error) {
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "cannot accept a connection");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

async fn serve_connection(
    stream: TcpStream,
    router: Router,
    limits: ConnectionLimits,
    mut stopping: watch::Receiver<bool>,
) {
    // Small responses are written whole; waiting to coalesce them only adds latency.
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched { inner: stream, activity: activity.clone() });
    let counted = activity.clone();
    let service = tower::service_fn(move |request: Request<Incoming>| {
        // Counted from here to the end of the response body, or until hyper drops the
        // call because the client left.
        let in_flight = InFlight::start(counted.clone());
        let call = router.clone().oneshot(request.map(Body::new));
        async move {
            let response = call.await?;
            Ok::<_, Infallible>(response.map(|body| Body::new(GuardedBody { inner: body, _in_flight: in_flight })))
        }
    });
    let service = TowerToHyperService::new(service);
    // HTTP/1 only, as `axum::serve` without its `http2` feature served. hyper's own
    // header-read timeout is off: timed here instead (the module's doc says why).
    let connection = http1::Builder::new().header_read_timeout(None).serve_connection(io, service).with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let mut draining = false;
    loop {
        let deadline = activity.deadline(limits);
        let changed = activity.changed.notified();
        tokio::select! {
            _ = connection.as_mut() => return,
            result = stopping.changed(), if !draining => {
                // The sender went away or said stop: either way, finish and close.
                let _ = result;
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
            () = changed => {}
            () = sleep_until(deadline) => {
                if activity.deadline(limits).is_some_and(|deadline| deadline <= Instant::now()) {
                    // No request in flight: closing loses nothing.
                    return;
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// What the watchdog of one connection knows of it.
struct Activity {
    opened: Instant,
    /// Requests whose response has not ended yet.
    in_flight: AtomicUsize,
    /// When the connection last had no request in flight (ms since `opened`).
    idle_since: AtomicU64,
    /// When the first byte of the next request arrived (ms since `opened`), or `NONE`.
    head_started: AtomicU64,
    /// Wakes the watchdog when its deadline may have moved.
    changed: Notify,
}

const NONE: u64 = u64::MAX;

impl Activity {
    fn new() -> Self {
        Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            // A new connection's first request is timed from its accept.
            head_started: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.opened + Duration::from_millis(ms)
    }

    /// Bytes arrived: with no request in flight, they begin the next one's headers.
    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_started.compare_exchange(NONE, self.now(), Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            self.changed.notify_one();
        }
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(NONE, Ordering::Release);
        self.changed.notify_one();
    }

    fn request_ended(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle_since.store(self.now(), Ordering::Release);
            self.head_started.store(NONE, Ordering::Release);
        }
        self.changed.notify_one();
    }

    /// When the connection is to be closed if nothing changes; `None` while a request
    /// is in flight.
    fn deadline(&self, limits: ConnectionLimits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        match self.head_started.load(Ordering::Acquire) {
            NONE => Some(self.at(self.idle_since.load(Ordering::Acquire)) + limits.idle_timeout),
            started => Some(self.at(started) + limits.header_read_timeout),
        }
    }
}

/// One request in flight until dropped (with its response body, or with the service
/// future when the client left before the response was ready).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> Self {
        activity.request_started();
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// A response body that keeps its request counted in flight until it ends.
struct GuardedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's socket, reporting reads to its [`Activity`].
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
