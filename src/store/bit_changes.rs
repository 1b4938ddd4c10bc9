//! `cohort_bit_changes`: changes to a cohort's bitmap held back from its blocks, and
//! written into them several imports at a time.
//!
//! An import's users fall in a block each (all ~120 blocks of a cohort at 1M users, ~700
//! of 1,221 at 10M), and rewriting a block logs most of its 1 KiB: about 100 bytes of
//! WAL per change. So an import stores the ids it sets and clears as one row instead;
//! the import that would take the cohort past its limit of held-back ids writes them all
//! into the blocks at once ("folds" them), each block once however many of the imports
//! changed it. Readers apply the rows to the blocks they read ([`HeldBack`]), in the
//! same snapshot, so every answer stays exact.
//!
//! The limit grows with the workspace ([`pending_limit`]): a fold rewrites up to every
//! block the workspace's users span, so a fixed limit would fold as often at 10M users as
//! at 1M and rewrite ten times the blocks each time.
//!
//! Every writer holds the cohort's row lock, and every change it writes is exact (it
//! sets only ids that are not members and clears only members), so a cohort's changes
//! apply in `import_id` order, and the last change to an id says whether it is set.

use std::{
    collections::{BTreeMap, HashMap},
    ops::Range,
};

use sqlx::PgConnection;
use uuid::Uuid;

use super::bitmaps::{self, Bitmap, Block, Masks};

/// Ids a cohort may hold in changes not yet in its blocks, at the least: a reader reads
/// them and binds a mask per block they touch, a writer saves a block rewrite for each
/// block that several imports touch (BENCHMARKS.md has the figures for both).
const MIN_PENDING_IDS: usize = 4096;

/// Ids a cohort may hold back per block its workspace's users span, above
/// [`MIN_PENDING_IDS`]: 1M users span 123 blocks, so the floor holds up to ~1M users,
/// and beyond it a fold rewrites as many blocks per id it writes as it does at 1M.
const PENDING_IDS_PER_BLOCK: usize = 32;

/// The ids a cohort may hold back in a workspace whose next user id is `next_user_id`.
fn pending_limit(next_user_id: i64) -> usize {
    let blocks = usize::try_from(next_user_id.saturating_sub(1) / bitmaps::BLOCK_BITS + 1).unwrap_or(usize::MAX);
    MIN_PENDING_IDS.max(blocks.saturating_mul(PENDING_IDS_PER_BLOCK))
}

/// A cohort's state of changes, as its locked row says.
#[derive(Debug, Clone, Copy)]
pub struct PendingBits {
    /// The cohort.
    pub cohort_ref: i64,
    /// The import log entry the change written now will be.
    pub import_id: i64,
    /// Ids in the cohort's changes not yet in its blocks.
    pub pending: usize,
}

/// Writes a change to the cohort's bitmap, setting the ids of `set` and clearing those
/// of `clear` (disjoint): as a row beside the others, or, when that would take the
/// cohort past its [`pending_limit`], into the blocks with every row before it. Returns
/// the ids the cohort holds in rows afterwards.
pub async fn write(
    conn: &mut PgConnection,
    workspace_id: Uuid,
    cohort: PendingBits,
    set: &[i64],
    clear: &[i64],
) -> sqlx::Result<usize> {
    let ids = set.len() + clear.len();
    if ids == 0 {
        return Ok(cohort.pending);
    }
    let pending = cohort.pending + ids;
    // Below the floor the workspace's size cannot matter: no statement to read it.
    if pending > MIN_PENDING_IDS && pending > pending_limit(next_user_id(conn, workspace_id).await?) {
        fold(conn, workspace_id, cohort, set, clear).await?;
        return Ok(0);
    }
    sqlx::query!(
        "INSERT INTO cohort_bit_changes (workspace_id, cohort_ref, import_id, set_ids, cleared_ids)
         VALUES ($1, $2, $3, $4, $5)",
        workspace_id,
        cohort.cohort_ref,
        cohort.import_id,
        set,
        clear,
    )
    .execute(conn)
    .await?;
    Ok(pending)
}

/// The id the workspace's next user gets: its users span the ids below it.
async fn next_user_id(conn: &mut PgConnection, workspace_id: Uuid) -> sqlx::Result<i64> {
    sqlx::query_scalar!("SELECT next_user_id FROM user_id_counters WHERE workspace_id = $1", workspace_id)
        .fetch_one(&mut *conn)
        .await
}

/// Writes the cohort's changes held in rows, then `set` and `clear`, into its blocks,
/// and deletes the rows. The cohort holds no id in rows afterwards.
pub async fn fold(
    conn: &mut PgConnection,
    workspace_id: Uuid,
    cohort: PendingBits,
    set: &[i64],
    clear: &[i64],
) -> sqlx::Result<()> {
    let bitmap = Bitmap::Cohort(cohort.cohort_ref);
    if cohort.pending == 0 {
        return bitmaps::apply(conn, workspace_id, bitmap, set, clear).await;
    }
    let mut held = sqlx::query!(
        "DELETE FROM cohort_bit_changes WHERE workspace_id = $1 AND cohort_ref = $2
         RETURNING import_id, set_ids, cleared_ids",
        workspace_id,
        cohort.cohort_ref,
    )
    .fetch_all(&mut *conn)
    .await?;
    held.sort_unstable_by_key(|change| change.import_id);
    let changes = held.iter().map(|change| (&change.set_ids[..], &change.cleared_ids[..]));
    let (set, clear) = net(changes.chain([(set, clear)]));
    bitmaps::apply(conn, workspace_id, bitmap, &set, &clear).await
}

/// The changes some cohorts hold back, as a reader applies them: per (block, cohort),
/// the mask of the bits they set and of those they clear, by block.
#[derive(Debug, Default)]
pub struct HeldBack(Vec<HeldMasks>);

#[derive(Debug)]
struct HeldMasks {
    block: i64,
    cohort_ref: i64,
    set: Option<Block>,
    clear: Option<Block>,
}

/// The masks of [`HeldBack`] for some blocks, as the four parallel arrays a statement
/// binds to `unnest(cohort_ref, block, set_bits, clear_bits)`.
pub struct HeldColumns<'a> {
    pub cohort_refs: Vec<i64>,
    pub blocks: Vec<i64>,
    pub set: Vec<Option<&'a Block>>,
    pub clear: Vec<Option<&'a Block>>,
}

impl HeldColumns<'_> {
    /// Whether there is no mask.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

impl HeldBack {
    /// The changes `cohorts` hold back now; read in the snapshot that reads their blocks.
    pub async fn read(conn: &mut PgConnection, workspace_id: Uuid, cohorts: &[i64]) -> sqlx::Result<Self> {
        let rows = sqlx::query!(
            "SELECT cohort_ref, set_ids, cleared_ids FROM cohort_bit_changes
              WHERE workspace_id = $1 AND cohort_ref = ANY($2) ORDER BY cohort_ref, import_id",
            workspace_id,
            cohorts,
        )
        .fetch_all(conn)
        .await?;
        let mut masks = Vec::new();
        for cohort in rows.chunk_by(|a, b| a.cohort_ref == b.cohort_ref) {
            let cohort_ref = cohort[0].cohort_ref;
            let (set, clear) = net(cohort.iter().map(|row| (&row.set_ids[..], &row.cleared_ids[..])));
            let mut blocks: BTreeMap<i64, (Option<Block>, Option<Block>)> = BTreeMap::new();
            for (block, mask) in Masks::of(&set).into_blocks() {
                blocks.entry(block).or_default().0 = Some(mask);
            }
            for (block, mask) in Masks::of(&clear).into_blocks() {
                blocks.entry(block).or_default().1 = Some(mask);
            }
            masks.extend(blocks.into_iter().map(|(block, (set, clear))| HeldMasks { block, cohort_ref, set, clear }));
        }
        masks.sort_unstable_by_key(|m| (m.block, m.cohort_ref));
        Ok(HeldBack(masks))
    }

    /// The masks of the blocks in `blocks`.
    pub fn columns(&self, blocks: Range<i64>) -> HeldColumns<'_> {
        let from = self.0.partition_point(|m| m.block < blocks.start);
        let to = self.0.partition_point(|m| m.block < blocks.end);
        let masks = &self.0[from..to.max(from)];
        HeldColumns {
            cohort_refs: masks.iter().map(|m| m.cohort_ref).collect(),
            blocks: masks.iter().map(|m| m.block).collect(),
            set: masks.iter().map(|m| m.set.as_ref()).collect(),
            clear: masks.iter().map(|m| m.clear.as_ref()).collect(),
        }
    }

    /// The masks of every block.
    pub fn all(&self) -> HeldColumns<'_> {
        self.columns(i64::MIN..i64::MAX)
    }
}

/// What changes applied in order come to: the ids whose last change sets them, and
/// those whose last change clears them, each ascending.
fn net<'a>(changes: impl IntoIterator<Item = (&'a [i64], &'a [i64])>) -> (Vec<i64>, Vec<i64>) {
    let mut last: HashMap<i64, bool> = HashMap::new();
    for (set, clear) in changes {
        last.extend(set.iter().map(|&id| (id, true)));
        last.extend(clear.iter().map(|&id| (id, false)));
    }
    let (mut set, mut clear): (Vec<i64>, Vec<i64>) = (Vec::new(), Vec::new());
    for (id, on) in last {
        if on { set.push(id) } else { clear.push(id) }
    }
    set.sort_unstable();
    clear.sort_unstable();
    (set, clear)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_grows_with_the_blocks_the_users_span_above_the_floor() {
        // A new workspace, and 1M users (123 blocks): the floor.
        assert_eq!(pending_limit(1), MIN_PENDING_IDS);
        assert_eq!(pending_limit(1_000_001), MIN_PENDING_IDS);
        // 10M users span 1,221 blocks; ids 1..=2,000,000 span 245.
        assert_eq!(pending_limit(10_000_001), 1_221 * PENDING_IDS_PER_BLOCK);
        assert_eq!(pending_limit(2_000_001), 245 * PENDING_IDS_PER_BLOCK);
        assert_eq!(pending_limit(i64::MAX), usize::try_from(i64::MAX / 8192 + 1).unwrap() * PENDING_IDS_PER_BLOCK);
    }

    #[test]
    fn the_last_change_to_an_id_wins() {
        let changes: [(&[i64], &[i64]); 3] = [(&[1, 2, 3], &[9]), (&[9], &[2]), (&[2, 7], &[1])];
        // 1: set, then cleared; 2: set, cleared, set; 3: set; 7: set; 9: cleared, then set.
        assert_eq!(net(changes), (vec![2, 3, 7, 9], vec![1]));
        assert_eq!(net([]), (vec![], vec![]));
    }
}
