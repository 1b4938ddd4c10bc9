//! NDJSON request bodies, streamed: the content type, the split into lines (a line over
//! [`MAX_LINE_BYTES`] is reported, not buffered), and the reading itself, which ends a
//! body over its size limit (413) or one that brings no byte for the stall timeout (408),
//! so a slow client holds no transaction or lock for long.

use std::time::Duration;

use axum::{
    body::{Body, BodyDataStream, Bytes},
    http::{HeaderMap, header},
};
use futures::StreamExt;

use crate::error::{ApiError, ApiResult};

/// Longest NDJSON line accepted, in bytes; a longer line is reported and skipped.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// An NDJSON body being read piece by piece.
pub struct NdjsonBody {
    stream: BodyDataStream,
    received: usize,
    limit: usize,
    stall_timeout: Duration,
}

impl NdjsonBody {
    /// Reads `body` (declared NDJSON in `headers`, else 415) of at most `limit` bytes
    /// (413 at once when `Content-Length` says more).
    pub fn new(headers: &HeaderMap, body: Body, limit: usize, stall_timeout: Duration) -> ApiResult<Self> {
        require_ndjson(headers)?;
        let declared_length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        let body = NdjsonBody { stream: body.into_data_stream(), received: 0, limit, stall_timeout };
        if declared_length.is_some_and(|length| length > limit as u64) {
            return Err(body.too_large());
        }
        Ok(body)
    }

    /// The next piece of the body; `None` at its end.
    pub async fn next_piece(&mut self) -> ApiResult<Option<Bytes>> {
        let piece = tokio::time::timeout(self.stall_timeout, self.stream.next()).await.map_err(|_| {
            tracing::warn!(timeout_secs = self.stall_timeout.as_secs(), "NDJSON body stalled; rolling back");
            ApiError::RequestTimeout(format!(
                "the request body brought no data for {} s; nothing was changed",
                self.stall_timeout.as_secs()
            ))
        })?;
        let Some(piece) = piece else { return Ok(None) };
        let piece = piece.map_err(|_| ApiError::bad_request("the request body could not be read to its end"))?;
        self.received = self.received.saturating_add(piece.len());
        if self.received > self.limit {
            return Err(self.too_large());
        }
        Ok(Some(piece))
    }

    fn too_large(&self) -> ApiError {
        ApiError::PayloadTooLarge(format!("request body is larger than the import limit of {} bytes", self.limit))
    }
}

/// 415 unless the body is declared NDJSON.
pub fn require_ndjson(headers: &HeaderMap) -> ApiResult<()> {
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(str::trim);
    match media_type {
        Some(media) if media.eq_ignore_ascii_case("application/x-ndjson") => Ok(()),
        _ => Err(ApiError::UnsupportedMediaType(
            "expected a request body with Content-Type: application/x-ndjson".into(),
        )),
    }
}

/// One line of an NDJSON body: its number and bytes, or that it was too long.
pub struct Line<'a> {
    /// 1-based.
    pub number: u64,
    /// The line without its newline, or `Err` when it is over [`MAX_LINE_BYTES`].
    pub bytes: Result<&'a [u8], ()>,
}

/// Splits a body arriving in pieces into lines, without keeping more than one partial
/// line (at most [`MAX_LINE_BYTES`]) between pieces.
#[derive(Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
    /// Lines seen so far (the number of the line being read, minus one).
    lines: u64,
    /// The current line is over the limit: its bytes are dropped until its end.
    overlong: bool,
}

impl LineSplitter {
    /// Feeds a piece of the body; calls `on_line` for each line it completes.
    pub fn push(&mut self, mut bytes: &[u8], mut on_line: impl FnMut(Line<'_>)) {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            let (head, rest) = (&bytes[..end], &bytes[end + 1..]);
            self.lines += 1;
            if self.overlong {
                on_line(Line { number: self.lines, bytes: Err(()) });
            } else if self.partial.is_empty() {
                let line = if head.len() > MAX_LINE_BYTES { Err(()) } else { Ok(head) };
                on_line(Line { number: self.lines, bytes: line });
            } else {
                self.partial.extend_from_slice(head);
                let partial = std::mem::take(&mut self.partial);
                let line = if partial.len() > MAX_LINE_BYTES { Err(()) } else { Ok(&partial[..]) };
                on_line(Line { number: self.lines, bytes: line });
                self.partial = partial;
                self.partial.clear();
            }
            self.overlong = false;
            bytes = rest;
        }
        if !self.overlong {
            if self.partial.len() + bytes.len() > MAX_LINE_BYTES {
                self.overlong = true;
                self.partial = Vec::new();
            } else {
                self.partial.extend_from_slice(bytes);
            }
        }
    }

    /// Ends the body: a last line without a newline still counts.
    pub fn finish(mut self, mut on_line: impl FnMut(Line<'_>)) {
        if self.overlong || !self.partial.is_empty() {
            let number = self.lines + 1;
            let bytes = if self.overlong { Err(()) } else { Ok(&self.partial[..]) };
            on_line(Line { number, bytes });
            self.partial.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(pieces: &[&[u8]]) -> Vec<(u64, Option<Vec<u8>>)> {
        let mut lines = Vec::new();
        let mut splitter = LineSplitter::default();
        let mut record = |line: Line<'_>| lines.push((line.number, line.bytes.ok().map(<[u8]>::to_vec)));
        for piece in pieces {
            splitter.push(piece, &mut record);
        }
        splitter.finish(&mut record);
        lines
    }

    #[test]
    fn splits_lines_across_pieces() {
        let lines = split(&[b"ab\nc", b"d", b"\n\nef"]);
        assert_eq!(
            lines,
            vec![
                (1, Some(b"ab".to_vec())),
                (2, Some(b"cd".to_vec())),
                (3, Some(Vec::new())),
                (4, Some(b"ef".to_vec()))
            ]
        );
    }

    #[test]
    fn overlong_lines_are_reported_and_skipped() {
        let long = vec![b'x'; MAX_LINE_BYTES + 1];
        let lines = split(&[b"a\n", &long[..10], &long[10..], b"\nb\n"]);
        assert_eq!(lines, vec![(1, Some(b"a".to_vec())), (2, None), (3, Some(b"b".to_vec()))]);
        let lines = split(&[&long, b"\nc"]);
        assert_eq!(lines, vec![(1, None), (2, Some(b"c".to_vec()))]);
    }
}
