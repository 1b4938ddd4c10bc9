//! `POST /v1/segments/export`: every user of a filter, streamed as NDJSON.

use std::{panic::AssertUnwindSafe, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};
use futures::{FutureExt, SinkExt, StreamExt, channel::mpsc};
use tracing::Instrument;

use super::{SegmentMember, SegmentRequest, prepare};
use crate::{
    auth::SegmentsReader,
    domain::filter::Filter,
    error::{ApiError, ApiResult, ErrorBody},
    extract::Json,
    state::AppState,
    store::{self, database::Database, segments::SegmentQuery},
};

/// Export bytes gathered before they are handed to the client as one chunk.
const EXPORT_CHUNK_BYTES: usize = 64 * 1024;
/// How long an export waits for a client that stopped reading before it gives up and
/// frees its database connection.
const EXPORT_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Streams every user matching a filter as NDJSON, one `{"braze_id","external_id"}` a
/// line, in the order of `/v1/segments/users`.
///
/// The rows come from a connection of its own (one streamed query, or a few bitmap blocks'
/// users at a time: see [`store::segments::export`]) and go out in 64 KiB chunks through a
/// channel of two, so the service holds a few chunks whatever the segment's size. The
/// route is exempt from the request timeout (see [`crate::middleware::limits::UNBOUNDED_ROUTES`]);
/// instead, a client that stops reading for a minute ends it. A failure after the first
/// chunk (the query's, a stalled client, a panic of the task producing the rows) aborts the
/// response: the client sees a truncated transfer, never a clean end.
#[utoipa::path(post, path = "/v1/segments/export", tag = "segments", security(("api_key" = [])),
    request_body = SegmentRequest,
    responses((status = 200, content_type = "application/x-ndjson", body = SegmentMember,
            description = "One user a line"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "`MAX_CONCURRENT_EXPORTS` exports are running; retry after `Retry-After`")))]
pub(super) async fn export_segment(
    auth: SegmentsReader,
    State(state): State<AppState>,
    Json(body): Json<SegmentRequest>,
) -> ApiResult<Response> {
    let filter = Filter::parse(&body.filter)?;
    let query = prepare(&state, &auth, &filter).await?;
    // Each export holds a pooled connection for as long as its client reads: past the cap,
    // refuse at once rather than let exports take every connection from the other requests.
    let permit = state.exports.clone().try_acquire_owned().map_err(|_| {
        ApiError::Overloaded(format!(
            "too many segment exports are running (at most {}); retry later",
            state.config.max_concurrent_exports
        ))
    })?;

    let (sender, chunks) = mpsc::channel(2);
    let db = state.db.clone();
    // The task outlives the handler: it carries the request's span, so its log lines keep
    // the request id. The permit is released when it ends, however it ends.
    let task = run_export(sender, move |sender| async move {
        let _permit = permit;
        export_rows(db, query, sender).await
    });
    tokio::spawn(task.instrument(tracing::Span::current()));
    export_response(chunks).await
}

/// Where an export's producer sends its chunks, and at last why it stopped early.
type ExportSender = mpsc::Sender<Result<Bytes, ExportFailure>>;

/// Why an export ended before its last row.
#[derive(Debug, thiserror::Error)]
enum ExportFailure {
    /// Getting a connection or running the query failed.
    #[error("segment export query failed")]
    Database(#[from] sqlx::Error),
    /// The client stopped reading for [`EXPORT_STALL_TIMEOUT`].
    #[error("the client stopped reading the export")]
    Stalled,
    /// The client went away (the response body was dropped).
    #[error("the client left")]
    ClientGone,
    /// The task producing the rows panicked.
    #[error("the segment export task panicked")]
    Panicked,
}

impl From<ExportFailure> for ApiError {
    fn from(failure: ExportFailure) -> Self {
        match failure {
            ExportFailure::Database(error) => error.into(),
            other => ApiError::Internal(other.into()),
        }
    }
}

/// Runs an export's producer to its end and makes sure the response body learns of every
/// end but a complete one. Left alone, a producer that panics or gives up just drops its
/// sender, and the body ends as cleanly as a complete export would; here its failure goes
/// into the channel as the last item instead, so the body ends with an error and hyper
/// aborts the chunked response without its terminating chunk (before the first chunk,
/// [`export_response`] answers it as a JSON error).
async fn run_export<P, F>(sender: ExportSender, produce: P)
where
    P: FnOnce(ExportSender) -> F,
    F: Future<Output = Result<(), ExportFailure>>,
{
    // A sender kept for the failure, never used for rows: each sender of a futures channel
    // has a slot of its own besides the shared buffer, so the failure goes in at once even
    // when a stalled client has left the buffer full.
    let mut report = sender.clone();
    let failure = match AssertUnwindSafe(async move { produce(sender).await }).catch_unwind().await {
        Ok(Ok(())) => return,
        Ok(Err(failure)) => failure,
        Err(_) => ExportFailure::Panicked,
    };
    match &failure {
        ExportFailure::ClientGone => {
            tracing::debug!("segment export stopped: the client left");
            return;
        }
        ExportFailure::Stalled => {
            tracing::warn!(
                timeout_secs = EXPORT_STALL_TIMEOUT.as_secs(),
                "segment export stopped: the client stopped reading"
            )
        }
        ExportFailure::Database(error) => tracing::error!(%error, "segment export failed"),
        // The panic hook has logged the panic itself.
        ExportFailure::Panicked => tracing::error!("segment export task panicked; aborting the response"),
    }
    // Fails only when the response body is gone, and with it anyone to tell.
    let _ = report.try_send(Err(failure));
}

/// The response of an export whose chunks arrive on `chunks`. It waits for the first
/// chunk, so a failure before any row is still a proper JSON error (500, or 503 when the
/// database is unavailable); a failure after it ends the body with an error.
async fn export_response(mut chunks: mpsc::Receiver<Result<Bytes, ExportFailure>>) -> ApiResult<Response> {
    let first = match chunks.next().await {
        Some(Ok(bytes)) => Some(bytes),
        Some(Err(failure)) => return Err(failure.into()),
        None => None,
    };
    let rest = chunks.map(|chunk| chunk.map_err(std::io::Error::other));
    let body = futures::stream::iter(first.map(Ok)).chain(rest);
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(body)).into_response())
}

/// Produces an export in a snapshot of its own ([`store::segments::begin_snapshot`]), its
/// rows sent as NDJSON chunks. The snapshot is committed after the last row; an export
/// that stops early (an error, a client gone, a panic) drops it, which rolls it back.
async fn export_rows(db: Database, query: SegmentQuery, mut sender: ExportSender) -> Result<(), ExportFailure> {
    let mut snapshot = store::segments::begin_snapshot(&db).await?;
    stream_ndjson(&mut snapshot, &query, &mut sender).await?;
    snapshot.commit().await?;
    Ok(())
}

/// Reads the export's rows and sends them as NDJSON chunks, to the last (or none, for
/// an empty segment).
async fn stream_ndjson(
    connection: &mut sqlx::PgConnection,
    query: &SegmentQuery,
    sender: &mut ExportSender,
) -> Result<(), ExportFailure> {
    let mut rows = store::segments::export(connection, query);
    let mut chunk = Vec::with_capacity(EXPORT_CHUNK_BYTES + 1024);
    loop {
        match rows.next().await {
            Some(Ok(user)) => {
                // Writing a plain struct into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut chunk, &SegmentMember::from(user));
                chunk.push(b'\n');
                if chunk.len() >= EXPORT_CHUNK_BYTES {
                    let full = std::mem::replace(&mut chunk, Vec::with_capacity(EXPORT_CHUNK_BYTES + 1024));
                    send(sender, Bytes::from(full)).await?;
                }
            }
            Some(Err(error)) => return Err(error.into()),
            None if chunk.is_empty() => return Ok(()),
            None => return send(sender, Bytes::from(chunk)).await,
        }
    }
}

/// Hands one chunk to the response body, unless the client is gone or stalled.
async fn send(sender: &mut ExportSender, chunk: Bytes) -> Result<(), ExportFailure> {
    match tokio::time::timeout(EXPORT_STALL_TIMEOUT, sender.send(Ok(chunk))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(ExportFailure::ClientGone),
        Err(_) => Err(ExportFailure::Stalled),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::{Router, routing::post};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        sync::Notify,
    };

    use super::*;

    const LINE: &[u8] = b"{\"braze_id\":\"x\",\"external_id\":null}\n";

    /// Everything `run_export` lets through for `produce`, as the response body would see it.
    async fn items_of<F>(produce: impl FnOnce(ExportSender) -> F) -> Vec<Result<Bytes, ExportFailure>>
    where
        F: Future<Output = Result<(), ExportFailure>>,
    {
        let (sender, receiver) = mpsc::channel(2);
        run_export(sender, produce).await;
        receiver.collect().await
    }

    #[tokio::test]
    async fn a_producer_that_panics_ends_the_export_with_an_error() {
        let items = items_of(|mut sender| async move {
            sender.send(Ok(Bytes::from_static(LINE))).await.unwrap();
            panic!("a bug in the export");
        })
        .await;
        assert!(matches!(items.as_slice(), [Ok(_), Err(ExportFailure::Panicked)]), "{items:?}");
    }

    #[tokio::test]
    async fn a_producer_that_fails_ends_the_export_with_its_error() {
        let items = items_of(|mut sender| async move {
            sender.send(Ok(Bytes::from_static(LINE))).await.unwrap();
            Err(ExportFailure::Database(sqlx::Error::PoolClosed))
        })
        .await;
        assert!(matches!(items.as_slice(), [Ok(_), Err(ExportFailure::Database(_))]), "{items:?}");
    }

    #[tokio::test]
    async fn a_stalled_export_still_ends_with_an_error_when_the_buffer_is_full() {
        // Nobody reads while the producer fills the buffer (2) and its own slot, then
        // gives up as it does when the client stalls: the failure still goes in.
        let items = items_of(|mut sender| async move {
            for _ in 0..3 {
                sender.try_send(Ok(Bytes::from_static(LINE))).unwrap();
            }
            assert!(sender.try_send(Ok(Bytes::from_static(LINE))).unwrap_err().is_full());
            Err(ExportFailure::Stalled)
        })
        .await;
        assert!(matches!(items.as_slice(), [Ok(_), Ok(_), Ok(_), Err(ExportFailure::Stalled)]), "{items:?}");
    }

    #[tokio::test]
    async fn a_complete_export_ends_cleanly() {
        let items = items_of(|mut sender| async move {
            sender.send(Ok(Bytes::from_static(LINE))).await.unwrap();
            Ok(())
        })
        .await;
        assert!(matches!(items.as_slice(), [Ok(_)]), "{items:?}");
        assert!(items_of(|_| async { Ok(()) }).await.is_empty());
    }

    /// A server of one route, an export whose producer sends `lines` lines, waits for
    /// `release`, then panics; and a connection to it with the request sent, `close`
    /// asking the server to close the connection after the response.
    async fn export_that_panics(lines: usize, release: Arc<Notify>, close: bool) -> tokio::net::TcpStream {
        let export = move || async move {
            let (sender, chunks) = mpsc::channel(2);
            tokio::spawn(run_export(sender, move |mut sender| async move {
                for _ in 0..lines {
                    sender.send(Ok(Bytes::from_static(LINE))).await.map_err(|_| ExportFailure::ClientGone)?;
                }
                release.notified().await;
                panic!("a bug in the export");
            }));
            export_response(chunks).await
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, Router::new().route("/export", post(export))).await });
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let connection = if close { "Connection: close\r\n" } else { "" };
        let request = format!("POST /export HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n{connection}\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        stream
    }

    /// Reads until the server closes the connection (a reset counts), within 10 s.
    async fn read_until_closed(stream: &mut tokio::net::TcpStream, received: &mut Vec<u8>) {
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buffer = [0; 4096];
            while let Ok(n @ 1..) = stream.read(&mut buffer).await {
                received.extend_from_slice(&buffer[..n]);
            }
        })
        .await;
        assert!(closed.is_ok(), "the connection stayed open after: {}", String::from_utf8_lossy(received));
    }

    #[tokio::test]
    async fn a_panic_mid_export_reaches_the_client_as_an_incomplete_transfer() {
        let release = Arc::new(Notify::new());
        let mut stream = export_that_panics(1, release.clone(), false).await;
        // The client has the head and the first line when the producer panics.
        let mut received = Vec::new();
        while !received.windows(LINE.len()).any(|w| w == LINE) {
            let mut buffer = [0; 4096];
            let n = stream.read(&mut buffer).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&received));
            received.extend_from_slice(&buffer[..n]);
        }
        release.notify_one();
        // The server closes the connection (not `Connection: close`: it must, since that
        // is the only way HTTP/1.1 has to say a chunked body is incomplete)...
        read_until_closed(&mut stream, &mut received).await;
        let response = String::from_utf8(received).unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.contains("transfer-encoding: chunked\r\n"), "{response}");
        // ...without the last chunk: the client cannot take the export for a complete one.
        assert!(!response.ends_with("\r\n0\r\n\r\n"), "{response}");
    }

    #[tokio::test]
    async fn a_panic_before_the_first_row_is_a_json_500() {
        let release = Arc::new(Notify::new());
        release.notify_one();
        let mut stream = export_that_panics(0, release, true).await;
        let mut received = Vec::new();
        read_until_closed(&mut stream, &mut received).await;
        let response = String::from_utf8(received).unwrap();
        assert!(response.starts_with("HTTP/1.1 500 Internal Server Error\r\n"), "{response}");
        assert!(response.ends_with(r#"{"message":"internal error"}"#), "{response}");
    }
}
