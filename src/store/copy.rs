//! Rows for `COPY … FROM STDIN (FORMAT binary)`: the fastest way into PostgreSQL, and on
//! Citus a single-shard write when every row has the same `workspace_id`.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::bitmaps::Block;

/// Rows in COPY's binary format, written field by field straight into one buffer (a
/// million-user import writes four million fields: no allocation per field). Binary, so
/// that PostgreSQL copies each field's bytes instead of splitting lines, unescaping text
/// and parsing UUIDs and numbers from text, and nothing needs escaping on this side.
pub struct CopyRows {
    bytes: Vec<u8>,
    /// Where the current row's field count goes, once its fields are written.
    row_start: Option<usize>,
    fields: i16,
    rows: usize,
}

/// The binary COPY header: signature, flags (none), header extension length (none).
const COPY_BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The binary COPY trailer: a field count of -1.
const COPY_BINARY_TRAILER: [u8; 2] = (-1i16).to_be_bytes();
/// Microseconds from the Unix epoch to PostgreSQL's, 2000-01-01.
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

impl CopyRows {
    /// Room for `rows` rows of about `row_bytes` bytes.
    pub fn with_capacity(rows: usize, row_bytes: usize) -> Self {
        let mut bytes = Vec::with_capacity(COPY_BINARY_HEADER.len() + rows * row_bytes + COPY_BINARY_TRAILER.len());
        bytes.extend_from_slice(COPY_BINARY_HEADER);
        CopyRows { bytes, row_start: None, fields: 0, rows: 0 }
    }

    /// Appends one field: its length (-1 for NULL), then its bytes in the column type's
    /// binary form.
    fn field(&mut self, value: Option<&[u8]>) -> &mut Self {
        if self.row_start.is_none() {
            self.row_start = Some(self.bytes.len());
            self.bytes.extend_from_slice(&[0, 0]); // the field count, filled in by end_row
            self.fields = 0;
        }
        self.fields += 1;
        match value {
            None => self.bytes.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(value) => {
                // Identifiers are at most 512 bytes; a field too long for COPY's length
                // word would make PostgreSQL reject the data, not this panic.
                let length = i32::try_from(value.len()).unwrap_or(i32::MAX);
                self.bytes.extend_from_slice(&length.to_be_bytes());
                self.bytes.extend_from_slice(value);
            }
        }
        self
    }

    /// Appends a `text` field; `None` is SQL NULL.
    pub fn text(&mut self, value: Option<&str>) -> &mut Self {
        self.field(value.map(str::as_bytes))
    }

    /// Appends a `bigint` field.
    pub fn int(&mut self, value: i64) -> &mut Self {
        self.field(Some(&value.to_be_bytes()))
    }

    /// Appends an `integer` field.
    pub fn int4(&mut self, value: i32) -> &mut Self {
        self.field(Some(&value.to_be_bytes()))
    }

    /// Appends a `uuid` field.
    pub fn uuid(&mut self, value: Uuid) -> &mut Self {
        self.field(Some(value.as_bytes()))
    }

    /// Appends a `timestamptz` field.
    pub fn timestamp(&mut self, value: DateTime<Utc>) -> &mut Self {
        let micros = value.timestamp_micros() - POSTGRES_EPOCH_MICROS;
        self.field(Some(&micros.to_be_bytes()))
    }

    /// Appends a `bigint[]` field: dimensions (one, or none when empty), no NULLs, the
    /// element type, the length and lower bound (1), then each element's length and value.
    pub fn ints(&mut self, values: &[i64]) -> &mut Self {
        const INT8: u32 = 20;
        let mut field = Vec::with_capacity(20 + values.len() * 12);
        let dimensions: i32 = if values.is_empty() { 0 } else { 1 };
        field.extend_from_slice(&dimensions.to_be_bytes());
        field.extend_from_slice(&0i32.to_be_bytes());
        field.extend_from_slice(&INT8.to_be_bytes());
        if !values.is_empty() {
            field.extend_from_slice(&i32::try_from(values.len()).unwrap_or(i32::MAX).to_be_bytes());
            field.extend_from_slice(&1i32.to_be_bytes());
        }
        for value in values {
            field.extend_from_slice(&8i32.to_be_bytes());
            field.extend_from_slice(&value.to_be_bytes());
        }
        self.field(Some(&field))
    }

    /// Appends a `bit(8192)` field: its length in bits, then the bits.
    pub fn bits(&mut self, value: &Block) -> &mut Self {
        let mut field = Vec::with_capacity(4 + value.bytes().len());
        field.extend_from_slice(&(value.bytes().len() as i32 * 8).to_be_bytes());
        field.extend_from_slice(value.bytes());
        self.field(Some(&field))
    }

    /// Ends the row.
    pub fn end_row(&mut self) {
        if let Some(start) = self.row_start.take() {
            self.bytes[start..start + 2].copy_from_slice(&self.fields.to_be_bytes());
            self.rows += 1;
        }
    }

    /// Whether no row was written.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Sends the rows with `statement` (a `COPY … FROM STDIN (FORMAT binary)`); nothing
    /// when there are none.
    pub async fn copy(mut self, conn: &mut PgConnection, statement: &'static str) -> sqlx::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        self.bytes.extend_from_slice(&COPY_BINARY_TRAILER);
        let mut copy = conn.copy_in_raw(statement).await?;
        copy.send(self.bytes).await?;
        copy.finish().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_rows_write_the_binary_format() {
        let mut rows = CopyRows::with_capacity(2, 10);
        let id = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        rows.uuid(id).int(-42).text(Some("a\\b\tc\n\\N")).text(None).end_row();
        rows.text(Some("")).end_row();
        let mut expected = b"PGCOPY\n\xff\r\n\0".to_vec();
        expected.extend([0; 8]); // flags, header extension length
        expected.extend([0, 4]); // four fields
        expected.extend([0, 0, 0, 16]);
        expected.extend(id.as_bytes());
        expected.extend([0, 0, 0, 8]);
        expected.extend((-42i64).to_be_bytes());
        expected.extend([0, 0, 0, 8]);
        expected.extend(b"a\\b\tc\n\\N"); // as it is: nothing is escaped
        expected.extend([0xff; 4]); // NULL
        expected.extend([0, 1, 0, 0, 0, 0]); // one field, empty
        assert_eq!(rows.bytes, expected);
        assert!(!rows.is_empty());
    }

    #[test]
    fn bigint_arrays_are_in_postgres_binary_form() {
        let mut rows = CopyRows::with_capacity(1, 60);
        rows.ints(&[7, -1]).ints(&[]).end_row();
        let fields = &rows.bytes[COPY_BINARY_HEADER.len() + 2..];
        let mut expected = vec![0, 0, 0, 44]; // the field's length: 12 + 8 + 2 × 12
        expected.extend([0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 20]); // one dimension, no NULLs, int8
        expected.extend([0, 0, 0, 2, 0, 0, 0, 1]); // two elements from index 1
        expected.extend([0, 0, 0, 8]);
        expected.extend(7i64.to_be_bytes());
        expected.extend([0, 0, 0, 8]);
        expected.extend((-1i64).to_be_bytes());
        // The empty array: no dimension at all.
        expected.extend([0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 20]);
        assert_eq!(fields, &expected[..]);
    }

    #[test]
    fn bits_and_times_are_in_postgres_binary_form() {
        let mut bits = Block::empty();
        bits.set(0);
        bits.set(9);
        let mut rows = CopyRows::with_capacity(1, 1100);
        let noon = DateTime::parse_from_rfc3339("2000-01-02T00:00:00Z").unwrap().with_timezone(&Utc);
        rows.bits(&bits).timestamp(noon).end_row();
        let fields = &rows.bytes[COPY_BINARY_HEADER.len() + 2..];
        // bits: field length 4 + 1024, bit length 8192, then 1000_0000 0100_0000 0….
        assert_eq!(&fields[..10], &[0, 0, 4, 4, 0, 0, 32, 0, 0x80, 0x40]);
        let fields = &fields[8 + 1024..];
        // One day after PostgreSQL's epoch, in microseconds.
        assert_eq!(&fields[..4], &[0, 0, 0, 8]);
        assert_eq!(&fields[4..12], &86_400_000_000i64.to_be_bytes());
    }
}
