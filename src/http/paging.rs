//! Paging shared by every list endpoint: page-size bounds, the extra row that tells
//! whether a next page exists, and opaque cursors.

use crate::error::{ApiError, ApiResult};

/// The page size asked for, `default` when absent; 400 outside `1..=max`.
pub fn page_limit(limit: Option<i64>, default: i64, max: i64) -> ApiResult<i64> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request(format!("limit: must be between 1 and {max}"))),
    }
}

/// Trims rows fetched with one more than `limit`; returns the last kept row when there
/// is a next page, `None` on the last page.
pub fn next_page<T>(rows: &mut Vec<T>, limit: i64) -> Option<&T> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if rows.len() > limit {
        rows.truncate(limit);
        rows.last()
    } else {
        None
    }
}

/// The 400 for a cursor that [`cursor::open`] refused.
pub fn invalid_cursor() -> ApiError {
    ApiError::bad_request("cursor: invalid, or from another query; pass the previous page's next_cursor or start again")
}

/// Opaque page cursors: a position plus a checksum over the position and its context
/// (workspace, filter or search), base64url-encoded.
///
/// The checksum makes a cursor tamper-evident and tied to its context, so an edited
/// cursor, or one used with another filter, is refused instead of silently paging from
/// somewhere else. It is not a secret-keyed MAC: a client who forged one would only page
/// its own workspace from another position, which it may do anyway.
pub mod cursor {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    use sha2::{Digest, Sha256};

    const CHECKSUM_BYTES: usize = 12;
    /// Longest cursor text accepted (a cohort position holds three strings of ≤512 bytes).
    const MAX_CURSOR_CHARS: usize = 4096;

    fn checksum(context: &[u8], position: &[u8]) -> [u8; CHECKSUM_BYTES] {
        let mut hasher = Sha256::new();
        hasher.update(b"cohort-ingest cursor v1\0");
        hasher.update((context.len() as u64).to_be_bytes());
        hasher.update(context);
        hasher.update(position);
        let digest = hasher.finalize();
        let mut out = [0; CHECKSUM_BYTES];
        out.copy_from_slice(&digest[..CHECKSUM_BYTES]);
        out
    }

    /// The cursor text for `position` in `context`.
    pub fn seal(context: &[u8], position: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode([position, &checksum(context, position)].concat())
    }

    /// The position of a cursor made by [`seal`] for the same context; `None` otherwise.
    pub fn open(context: &[u8], text: &str) -> Option<Vec<u8>> {
        if text.len() > MAX_CURSOR_CHARS {
            return None;
        }
        let mut bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        let split = bytes.len().checked_sub(CHECKSUM_BYTES)?;
        let presented = bytes.split_off(split);
        (presented == checksum(context, &bytes)).then_some(bytes)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn round_trips_in_its_context_only() {
            let sealed = seal(b"ctx", &42i64.to_be_bytes());
            assert_eq!(open(b"ctx", &sealed), Some(42i64.to_be_bytes().to_vec()));
            assert_eq!(open(b"other", &sealed), None);
            assert_eq!(open(b"ctx", ""), None);
            assert_eq!(open(b"ctx", "not base64!"), None);
            // Every single-character edit is caught.
            for i in 0..sealed.len() {
                let mut edited = sealed.clone().into_bytes();
                edited[i] = if edited[i] == b'A' { b'B' } else { b'A' };
                let edited = String::from_utf8(edited).unwrap();
                assert_eq!(open(b"ctx", &edited), None, "{edited}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_limits_and_next_page() {
        assert_eq!(page_limit(None, 100, 1000).unwrap(), 100);
        assert_eq!(page_limit(Some(1000), 100, 1000).unwrap(), 1000);
        assert!(page_limit(Some(0), 100, 1000).is_err());
        assert!(page_limit(Some(1001), 100, 1000).is_err());
        let mut rows = vec![1, 2, 3];
        assert_eq!(next_page(&mut rows, 2), Some(&2));
        assert_eq!(rows, vec![1, 2]);
        assert_eq!(next_page(&mut rows, 2), None);
    }
}
