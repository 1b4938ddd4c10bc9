//! `user_bitmaps` and `cohort_bitmaps`: a workspace's users and each cohort's members as
//! bitmaps over internal user ids, written by the service in the same transaction as the
//! rows they mirror (there are no triggers), so that every segment filter is bitmap
//! algebra that reads a few KiB per 8,192 users.
//!
//! User `id` is bit `id & 8191` of block `id >> 13`; a block is 1 KiB, stored inline.

use std::collections::BTreeMap;

use sqlx::{
    Encode, PgConnection, Postgres, Type,
    encode::IsNull,
    error::BoxDynError,
    postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, types::Oid},
};
use uuid::Uuid;

use super::copy::CopyRows;

/// Bits per block.
pub const BLOCK_BITS: i64 = 8192;
/// Bytes per block.
const BLOCK_BYTES: usize = BLOCK_BITS as usize / 8;

/// The block holding user `id`, and its bit there.
pub fn position(id: i64) -> (i64, usize) {
    (id >> 13, (id & (BLOCK_BITS - 1)) as usize)
}

/// The user ids the bits of block `block` stand for, in order, from the block's bytes in
/// PostgreSQL's order (the first bit is the high bit of the first byte). Zero bytes, most
/// of a sparse block, are skipped whole.
pub fn ids_in(block: i64, bytes: &[u8]) -> impl Iterator<Item = i64> + '_ {
    bytes.iter().enumerate().filter(|&(_, &byte)| byte != 0).flat_map(move |(index, &byte)| {
        (0..8)
            .filter(move |bit| byte & (0x80 >> bit) != 0)
            .map(move |bit| block * BLOCK_BITS + (index * 8 + bit) as i64)
    })
}

/// One block of a bitmap, built in memory and sent as a `varbit` of 8,192 bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block(Box<[u8; BLOCK_BYTES]>);

impl Block {
    /// No bit set.
    pub fn empty() -> Self {
        Block(Box::new([0; BLOCK_BYTES]))
    }

    /// Sets bit `bit` (`0..8192`).
    pub fn set(&mut self, bit: usize) {
        self.0[bit / 8] |= 0x80 >> (bit % 8);
    }

    /// The bytes, first bit in the high bit of the first byte.
    pub fn bytes(&self) -> &[u8] {
        &self.0[..]
    }
}

/// PostgreSQL's `varbit` (oid 1562) and its array type (1563).
const VARBIT: Oid = Oid(1562);
const VARBIT_ARRAY: Oid = Oid(1563);

impl Type<Postgres> for Block {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(VARBIT)
    }
}

impl PgHasArrayType for Block {
    fn array_type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(VARBIT_ARRAY)
    }
}

impl Encode<'_, Postgres> for Block {
    /// `varbit`'s binary form: the length in bits, then the bytes.
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.extend_from_slice(&(BLOCK_BITS as i32).to_be_bytes());
        buf.extend_from_slice(self.bytes());
        Ok(IsNull::No)
    }

    fn size_hint(&self) -> usize {
        4 + BLOCK_BYTES
    }
}

/// Which bitmap a change is written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bitmap {
    /// Every user of the workspace (`user_bitmaps`).
    Users,
    /// The members of one cohort, by internal id (`cohort_bitmaps`).
    Cohort(i64),
}

/// Ids grouped by block, as one mask per block.
#[derive(Debug, Default)]
pub struct Masks(BTreeMap<i64, Block>);

impl Masks {
    /// The masks of `ids`, one per block they fall in.
    pub fn of(ids: &[i64]) -> Self {
        let mut masks = Masks::default();
        for &id in ids {
            let (block, bit) = position(id);
            masks.0.entry(block).or_insert_with(Block::empty).set(bit);
        }
        masks
    }

    fn get(&self, block: i64) -> Option<&Block> {
        self.0.get(&block)
    }

    /// The masks, by block, ascending.
    pub fn into_blocks(self) -> impl Iterator<Item = (i64, Block)> {
        self.0.into_iter()
    }
}

/// Sets the bits of `set` and clears those of `clear` (disjoint) in `bitmap`: one update
/// of the blocks that exist, then one COPY of the blocks `set` needs and that did not.
/// The caller holds what keeps other writers of the bitmap out (the cohort's row lock,
/// the workspace lock), so no block appears between the two.
pub async fn apply(
    conn: &mut PgConnection,
    workspace_id: Uuid,
    bitmap: Bitmap,
    set: &[i64],
    clear: &[i64],
) -> sqlx::Result<()> {
    if set.is_empty() && clear.is_empty() {
        return Ok(());
    }
    let (set, clear) = (Masks::of(set), Masks::of(clear));
    let mut blocks: Vec<i64> = set.0.keys().chain(clear.0.keys()).copied().collect();
    blocks.sort_unstable();
    blocks.dedup();
    // A mask a block does not need is NULL, so the 1 KiB masks are sent, and combined,
    // only where they change something (an import is nearly always all adds or all
    // removals).
    let set_bits: Vec<Option<&Block>> = blocks.iter().map(|&b| set.get(b)).collect();
    let clear_bits: Vec<Option<&Block>> = blocks.iter().map(|&b| clear.get(b)).collect();
    // Existing blocks: set the bits of `set_bits`, then clear those of `clear_bits`; the
    // blocks that exist come back.
    let existing = match bitmap {
        Bitmap::Users => {
            sqlx::query_scalar!(
                "
UPDATE user_bitmaps b SET bits = CASE
         WHEN d.clear_bits IS NULL THEN b.bits | d.set_bits
         WHEN d.set_bits IS NULL THEN b.bits & ~d.clear_bits
         ELSE (b.bits | d.set_bits) & ~d.clear_bits END
  FROM unnest($2::int8[], $3::varbit[], $4::varbit[]) AS d(block, set_bits, clear_bits)
 WHERE b.workspace_id = $1 AND b.block = d.block
RETURNING b.block",
                workspace_id,
                &blocks,
                &set_bits as _,
                &clear_bits as _,
            )
            .fetch_all(&mut *conn)
            .await?
        }
        Bitmap::Cohort(cohort_ref) => {
            sqlx::query_scalar!(
                "
UPDATE cohort_bitmaps b SET bits = CASE
         WHEN d.clear_bits IS NULL THEN b.bits | d.set_bits
         WHEN d.set_bits IS NULL THEN b.bits & ~d.clear_bits
         ELSE (b.bits | d.set_bits) & ~d.clear_bits END
  FROM unnest($2::int8[], $3::varbit[], $4::varbit[]) AS d(block, set_bits, clear_bits)
 WHERE b.workspace_id = $1 AND b.cohort_ref = $5 AND b.block = d.block
RETURNING b.block",
                workspace_id,
                &blocks,
                &set_bits as _,
                &clear_bits as _,
                cohort_ref,
            )
            .fetch_all(&mut *conn)
            .await?
        }
    };

    // A block that did not exist has no bit to clear: only `set` creates blocks.
    let mut rows = CopyRows::with_capacity(set.0.len(), 1060);
    for (block, bits) in set.0.iter().filter(|(block, _)| !existing.contains(block)) {
        rows.uuid(workspace_id);
        if let Bitmap::Cohort(cohort_ref) = bitmap {
            rows.int(cohort_ref);
        }
        rows.int(*block).bits(bits).end_row();
    }
    let copy = match bitmap {
        Bitmap::Users => "COPY user_bitmaps (workspace_id, block, bits) FROM STDIN (FORMAT binary)",
        Bitmap::Cohort(_) => "COPY cohort_bitmaps (workspace_id, cohort_ref, block, bits) FROM STDIN (FORMAT binary)",
    };
    rows.copy(conn, copy).await
}

/// The workspace's last block of users (-1 when it has none): every user id, and so every
/// member, falls in a block up to it.
pub async fn last_block(conn: &mut PgConnection, workspace_id: Uuid) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"SELECT coalesce(max(block), -1) AS "block!" FROM user_bitmaps WHERE workspace_id = $1"#,
        workspace_id
    )
    .fetch_one(conn)
    .await
}

/// The ids whose bits are set in `bitmap`, ascending: of every block, or of `blocks` only.
pub async fn read_ids(
    conn: &mut PgConnection,
    workspace_id: Uuid,
    bitmap: Bitmap,
    blocks: Option<&[i64]>,
) -> sqlx::Result<Vec<i64>> {
    // `varbit_send`: the length in bits, then the bytes, instead of 8,192 characters.
    let rows: Vec<(i64, Vec<u8>)> = match bitmap {
        Bitmap::Users => {
            sqlx::query!(
                r#"SELECT block, varbit_send(bits) AS "bits!" FROM user_bitmaps
              WHERE workspace_id = $1 AND ($2::int8[] IS NULL OR block = ANY($2)) ORDER BY block"#,
                workspace_id,
                blocks,
            )
            .map(|row| (row.block, row.bits))
            .fetch_all(conn)
            .await?
        }
        Bitmap::Cohort(cohort_ref) => {
            sqlx::query!(
                r#"SELECT block, varbit_send(bits) AS "bits!" FROM cohort_bitmaps
              WHERE workspace_id = $1 AND cohort_ref = $3 AND ($2::int8[] IS NULL OR block = ANY($2)) ORDER BY block"#,
                workspace_id,
                blocks,
                cohort_ref,
            )
            .map(|row| (row.block, row.bits))
            .fetch_all(conn)
            .await?
        }
    };
    Ok(rows.iter().flat_map(|(block, bits)| ids_in(*block, bits.get(4..).unwrap_or_default())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_map_to_blocks_and_back() {
        assert_eq!(position(0), (0, 0));
        assert_eq!(position(8191), (0, 8191));
        assert_eq!(position(8192), (1, 0));
        let masks = Masks::of(&[1, 8191, 8192, 20_000]);
        let blocks: Vec<i64> = masks.0.keys().copied().collect();
        assert_eq!(blocks, [0, 1, 2]);
        let ids: Vec<i64> = masks.0.iter().flat_map(|(block, bits)| ids_in(*block, bits.bytes())).collect();
        assert_eq!(ids, [1, 8191, 8192, 20_000]);
        // PostgreSQL's order: bit 0 is the high bit of the first byte, as `B'1' >> n` sets bit n.
        assert_eq!(masks.0[&0].bytes()[0], 0b0100_0000);
        assert_eq!(masks.0[&0].bytes()[1023], 0b0000_0001);
    }
}
