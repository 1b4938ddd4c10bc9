//! A segment's users from the bitmaps: its count, a page, and an export streamed with
//! flat memory however large the segment. Pages and exports take the matching ids block
//! by block and then read those users by id, in one snapshot.

use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use sqlx::{AssertSqlSafe, PgConnection, Postgres, Transaction};
use uuid::Uuid;

use super::query::SegmentQuery;
use crate::store::{bitmaps, database::Database};

/// Bitmap blocks read per round trip while a page is collected from them.
const PAGE_BLOCKS_PER_READ: i64 = 16;
/// Bitmap blocks per batch of an export: at most 4 × 8,192 users in memory at once.
const EXPORT_BLOCKS_PER_READ: i64 = 4;

/// Number of users of the workspace matching the filter, exact.
pub async fn count(db: &Database, query: &SegmentQuery) -> sqlx::Result<i64> {
    if let Some(members) = query.single_cohort_members() {
        // Maintained in the same transaction as every membership change: exact.
        return Ok(members);
    }
    let statement = sqlx::query_as::<_, (i64,)>(AssertSqlSafe(query.count_sql()))
        .bind(query.workspace_id)
        .bind(query.all_cohorts());
    let mut conn = db.acquire().await?;
    // Generated text varies per filter: an unnamed statement.
    let (n,) = query.bind_leaves(statement).persistent(false).fetch_one(&mut *conn).await?;
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

/// Begins the read-only, repeatable-read transaction a page or an export reads in, so its
/// bitmaps and users are one snapshot. Dropped unfinished (an error, a client gone, a
/// panic), it is rolled back before its connection is used again.
pub async fn begin_snapshot(db: &Database) -> sqlx::Result<Transaction<'static, Postgres>> {
    let mut tx = db.begin().await?;
    sqlx::query!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    Ok(tx)
}

/// Up to `limit` matching users with an internal id above `after`, in id order.
pub async fn page(db: &Database, query: &SegmentQuery, after: i64, limit: i64) -> sqlx::Result<Vec<SegmentUser>> {
    let wanted = usize::try_from(limit).unwrap_or(0);
    let blocks_sql = query.page_blocks_sql();
    let mut ids: Vec<i64> = Vec::with_capacity(wanted.min(10_000));
    let mut tx = begin_snapshot(db).await?;
    let mut next_block = Some(after.max(0) >> 13);
    while let Some(from) = next_block
        && ids.len() < wanted
    {
        let read = BitmapRead { from, blocks: PAGE_BLOCKS_PER_READ, after, max_ids: wanted };
        next_block = read.matching_ids(&mut tx, query, &blocks_sql, &mut ids).await?;
    }
    let users = users_by_id(&mut tx, query.workspace_id, &ids).await?;
    tx.commit().await?;
    Ok(users)
}

/// One read of bitmap blocks (see [`SegmentQuery::page_blocks_sql`]).
struct BitmapRead {
    /// The first block to read.
    from: i64,
    /// How many blocks holding a match to read at most.
    blocks: i64,
    /// Only ids above this one count.
    after: i64,
    /// Stop once `ids` holds this many.
    max_ids: usize,
}

impl BitmapRead {
    /// Appends the matching user ids of the blocks read to `ids`, in order; returns the
    /// block to read next, `None` when there is none left.
    async fn matching_ids(
        &self,
        conn: &mut PgConnection,
        query: &SegmentQuery,
        blocks_sql: &str,
        ids: &mut Vec<i64>,
    ) -> sqlx::Result<Option<i64>> {
        let statement = sqlx::query_as::<_, (i64, Vec<u8>)>(AssertSqlSafe(blocks_sql.to_owned()))
            .bind(query.workspace_id)
            .bind(query.all_cohorts())
            .bind(self.from)
            .bind(self.blocks);
        let blocks = query.bind_leaves(statement).persistent(false).fetch_all(&mut *conn).await?;
        for (block, bits) in &blocks {
            // `varbit_send`: the length in bits, then the bytes.
            let bytes = bits.get(4..).unwrap_or_default();
            for id in bitmaps::ids_in(*block, bytes).filter(|&id| id > self.after) {
                ids.push(id);
                if ids.len() >= self.max_ids {
                    return Ok(Some(*block));
                }
            }
        }
        Ok(match blocks.last() {
            Some(&(last, _)) if blocks.len() as i64 == self.blocks => Some(last + 1),
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
    let blocks_sql = std::sync::Arc::new(query.page_blocks_sql());
    let batches = futures::stream::try_unfold((snapshot, Some(0i64)), move |(conn, next)| {
        let blocks_sql = blocks_sql.clone();
        async move {
            let Some(from) = next else { return Ok::<_, sqlx::Error>(None) };
            let mut ids = Vec::new();
            let read = BitmapRead { from, blocks: EXPORT_BLOCKS_PER_READ, after: -1, max_ids: usize::MAX };
            let next = read.matching_ids(conn, query, &blocks_sql, &mut ids).await?;
            let users = users_by_id(conn, query.workspace_id, &ids).await?;
            Ok(Some((users, (conn, next))))
        }
    });
    batches.map_ok(|users| futures::stream::iter(users.into_iter().map(Ok))).try_flatten().boxed()
}
