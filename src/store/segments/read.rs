//! A segment's users from the bitmaps: its count, a page, and an export streamed with
//! flat memory however large the segment. Each reads the changes its cohorts hold back
//! in the snapshot that reads their blocks. Pages and exports take the matching ids
//! block by block and then read those users by id.

use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use sqlx::{AssertSqlSafe, PgConnection, Postgres, Transaction};
use uuid::Uuid;

use super::query::SegmentQuery;
use crate::store::{bit_changes::HeldBack, bitmaps, database::Database};

/// Bitmap blocks holding a match read per round trip while a page is collected from them.
const PAGE_BLOCKS_PER_READ: i64 = 16;
/// Bitmap blocks holding a match per batch of an export: at most 4 × 8,192 users in
/// memory at once.
const EXPORT_BLOCKS_PER_READ: i64 = 4;
/// How far past its first block one read of blocks looks, in multiples of the blocks it
/// wants: the held-back changes it binds are those of this range.
const BLOCKS_SPAN_PER_WANTED: i64 = 8;

/// Number of users of the workspace matching the filter, exact.
pub async fn count(db: &Database, query: &SegmentQuery) -> sqlx::Result<i64> {
    if let Some(members) = query.single_cohort_members() {
        // Maintained in the same transaction as every membership change: exact.
        return Ok(members);
    }
    let mut tx = begin_snapshot(db).await?;
    let held = HeldBack::read(&mut tx, query.workspace_id, &query.all_cohorts()).await?;
    let held = held.all();
    let statement = sqlx::query_as::<_, (i64,)>(AssertSqlSafe(query.count_sql(!held.is_empty())))
        .bind(query.workspace_id)
        .bind(query.all_cohorts());
    // Generated text varies per filter: an unnamed statement.
    let (n,) = query.bind_leaves(statement, held).persistent(false).fetch_one(&mut *tx).await?;
    tx.commit().await?;
    Ok(n)
}

/// A user of a segment.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SegmentUser {
    /// Internal id: the keyset pagination's position.
    pub id: i64,
    /// Public id.
    pub braze_id: Uuid,
    /// External id, when the user is identified.
    pub external_id: Option<String>,
}

/// Begins the read-only, repeatable-read transaction a count, a page or an export reads
/// in, so its bitmaps, the changes held back from them and its users are one snapshot.
/// Dropped unfinished (an error, a client gone, a panic), it is rolled back before its
/// connection is used again.
pub async fn begin_snapshot(db: &Database) -> sqlx::Result<Transaction<'static, Postgres>> {
    db.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY").await
}

/// Up to `limit` matching users with an internal id above `after`, in id order.
pub async fn page(db: &Database, query: &SegmentQuery, after: i64, limit: i64) -> sqlx::Result<Vec<SegmentUser>> {
    let wanted = usize::try_from(limit).unwrap_or(0);
    let mut ids: Vec<i64> = Vec::with_capacity(wanted.min(10_000));
    let mut tx = begin_snapshot(db).await?;
    let blocks = BlockReads::start(&mut tx, query, PAGE_BLOCKS_PER_READ).await?;
    let mut next_block = Some(after.max(0) >> 13);
    while let Some(from) = next_block
        && ids.len() < wanted
    {
        next_block = blocks.matching_ids(&mut tx, query, from, after, wanted, &mut ids).await?;
    }
    let users = users_by_id(&mut tx, query.workspace_id, &ids).await?;
    tx.commit().await?;
    Ok(users)
}

/// Reads of a filter's bitmap blocks, a few holding a match at a time (see
/// [`SegmentQuery::page_blocks_sql`]), with the changes its cohorts hold back.
struct BlockReads {
    /// The statement for a range of blocks without held-back changes, and with.
    sql: [String; 2],
    held: HeldBack,
    /// Blocks holding a match to read at most per read.
    wanted: i64,
    /// The workspace's last block of users: no block after it holds a match.
    last: i64,
}

impl BlockReads {
    /// Reads what every read needs (in the snapshot `conn` reads in).
    async fn start(conn: &mut PgConnection, query: &SegmentQuery, wanted: i64) -> sqlx::Result<Self> {
        let held = HeldBack::read(&mut *conn, query.workspace_id, &query.all_cohorts()).await?;
        let last = bitmaps::last_block(conn, query.workspace_id).await?;
        let sql = [query.page_blocks_sql(false), query.page_blocks_sql(true)];
        Ok(BlockReads { sql, held, wanted, last })
    }

    /// Appends to `ids`, in order, the matching user ids above `after` of the blocks read
    /// from block `from` on, stopping once it holds `max_ids`; returns the block to read
    /// next, `None` when there is none left. One read looks at a range of blocks, and
    /// binds the held-back changes of that range only.
    async fn matching_ids(
        &self,
        conn: &mut PgConnection,
        query: &SegmentQuery,
        from: i64,
        after: i64,
        max_ids: usize,
        ids: &mut Vec<i64>,
    ) -> sqlx::Result<Option<i64>> {
        let to = from.saturating_add(self.wanted * BLOCKS_SPAN_PER_WANTED);
        let held = self.held.columns(from..to);
        let sql = &self.sql[usize::from(!held.is_empty())];
        let statement = sqlx::query_as::<_, (i64, Vec<u8>)>(AssertSqlSafe(sql.clone()))
            .bind(query.workspace_id)
            .bind(query.all_cohorts())
            .bind(from)
            .bind(to)
            .bind(self.wanted);
        let blocks = query.bind_leaves(statement, held).persistent(false).fetch_all(&mut *conn).await?;
        for (block, bits) in &blocks {
            // `varbit_send`: the length in bits, then the bytes.
            let bytes = bits.get(4..).unwrap_or_default();
            for id in bitmaps::ids_in(*block, bytes).filter(|&id| id > after) {
                ids.push(id);
                if ids.len() >= max_ids {
                    return Ok(Some(*block));
                }
            }
        }
        Ok(match blocks.last() {
            Some(&(last, _)) if blocks.len() as i64 == self.wanted => Some(last + 1),
            _ if to <= self.last => Some(to),
            _ => None,
        })
    }
}

/// The users with these internal ids (ascending), in id order. A dense run of ids (a
/// quarter or more of the ids in its range) is read as the range, one index descent and
/// its leaves in order, keeping the ids asked for; a sparse one probes each id.
async fn users_by_id(conn: &mut PgConnection, workspace_id: Uuid, ids: &[i64]) -> sqlx::Result<Vec<SegmentUser>> {
    let (Some(&first), Some(&last)) = (ids.first(), ids.last()) else { return Ok(Vec::new()) };
    if (ids.len() as i64).saturating_mul(4) < last - first + 1 {
        return sqlx::query_as!(
            SegmentUser,
            "SELECT id, braze_id, external_id FROM users WHERE workspace_id = $1 AND id = ANY($2) ORDER BY id",
            workspace_id,
            ids,
        )
        .fetch_all(conn)
        .await;
    }
    let range = sqlx::query_as!(
        SegmentUser,
        "SELECT id, braze_id, external_id FROM users WHERE workspace_id = $1 AND id BETWEEN $2 AND $3 ORDER BY id",
        workspace_id,
        first,
        last,
    )
    .fetch_all(conn)
    .await?;
    // Both in id order: keep the rows whose id comes next among those asked for.
    let mut wanted = ids.iter().peekable();
    Ok(range
        .into_iter()
        .filter(|user| {
            while wanted.next_if(|&&id| id < user.id).is_some() {}
            wanted.next_if(|&&id| id == user.id).is_some()
        })
        .collect())
}

/// Every matching user, in id order, a few bitmap blocks' users at a time, read on
/// `snapshot` (from [`begin_snapshot`]; the caller commits it after the last user).
pub fn export<'e>(snapshot: &'e mut PgConnection, query: &'e SegmentQuery) -> BoxStream<'e, sqlx::Result<SegmentUser>> {
    let batches = futures::stream::try_unfold((snapshot, None, Some(0i64)), move |(conn, reads, next)| async move {
        let Some(from) = next else { return Ok::<_, sqlx::Error>(None) };
        let reads = match reads {
            Some(reads) => reads,
            None => BlockReads::start(conn, query, EXPORT_BLOCKS_PER_READ).await?,
        };
        let mut ids = Vec::new();
        let next = reads.matching_ids(conn, query, from, -1, usize::MAX, &mut ids).await?;
        let users = users_by_id(conn, query.workspace_id, &ids).await?;
        Ok(Some((users, (conn, Some(reads), next))))
    });
    batches.map_ok(|users| futures::stream::iter(users.into_iter().map(Ok))).try_flatten().boxed()
}
