//! Loading users from an NDJSON body, streamed: reading and parsing, deciding the
//! upserts of a chunk and writing the chunk before it overlap, so PostgreSQL does not
//! wait for the service between chunks.

use serde::Serialize;
use sqlx::PgConnection;
use tokio::sync::mpsc;
use utoipa::ToSchema;
use uuid::Uuid;

use super::fields::ProfileFields;
use crate::{
    domain::profile::{Profile, UpsertOutcome},
    error::{ApiError, ApiResult},
    http::ndjson::{Line, LineSplitter, MAX_LINE_BYTES, NdjsonBody},
    store::{
        self,
        database::Database,
        users::{StoreLookups, UpsertPlan},
    },
};

/// Most errors listed in a load's response (all are counted in `failed`).
pub const MAX_IMPORT_ERRORS: usize = 100;
/// Lines upserted together by the load: large enough that a chunk's few statements
/// cost little per user, small enough that memory stays flat.
const CHUNK_LINES: usize = 10_000;
/// Bytes of lines upserted together at most, whatever their number.
const CHUNK_BYTES: usize = 16 * 1024 * 1024;

/// One failed line of an NDJSON user load.
#[derive(Debug, Serialize, ToSchema)]
pub struct FailedLine {
    /// The line's number, from 1.
    pub line: u64,
    /// What is wrong with it.
    pub message: String,
}

/// Response of `POST …/users/import`.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct UserLoadSummary {
    /// Lines that created a user.
    pub created: u64,
    /// Lines that matched a user.
    pub updated: u64,
    /// Lines that failed: malformed, invalid, or in conflict.
    pub failed: u64,
    /// The first 100 failures, by line.
    pub errors: Vec<FailedLine>,
}

/// Loads the NDJSON profiles of `body` into workspace `ws`, in one transaction that
/// holds the workspace's user-store lock: committed when the whole body has been read
/// and written, rolled back on any failure of the request as a whole.
pub async fn load_ndjson(db: &Database, ws: Uuid, mut body: NdjsonBody) -> ApiResult<UserLoadSummary> {
    // Three stages overlap: reading and parsing (here), deciding the upserts of a chunk
    // (a blocking thread, when that needs no read of the store), and writing the chunk
    // before it (the writer task, which owns the transaction). So PostgreSQL does not
    // wait for the service between chunks. The channel holds one chunk, so the lines
    // held in memory stay bounded.
    let mut tx = store::users::begin_writes(db, ws).await?;
    let mut lookups = StoreLookups::for_workspace(&mut tx, ws).await?;
    let (chunks, mut pending) = mpsc::channel::<LineChunk>(1);
    let writer = tokio::spawn(async move {
        let mut summary = UserLoadSummary::default();
        let mut decided: Option<(LineChunk, UpsertPlan)> = None;
        while let Some(chunk) = pending.recv().await {
            let deciding = tokio::task::spawn_blocking(move || {
                let plan = lookups.plan_unread(&chunk.profiles);
                (chunk, lookups, plan)
            });
            if let Some((previous, plan)) = decided.take() {
                previous.write(&mut tx, ws, plan, &mut summary).await?;
            }
            let (chunk, returned, plan) =
                deciding.await.map_err(|e| ApiError::Internal(anyhow::anyhow!("deciding a load chunk failed: {e}")))?;
            lookups = returned;
            let plan = match plan {
                Some(plan) => plan,
                None => store::users::plan_upserts(&mut tx, ws, &chunk.profiles, &mut lookups).await?,
            };
            decided = Some((chunk, plan));
        }
        if let Some((last, plan)) = decided {
            last.write(&mut tx, ws, plan, &mut summary).await?;
        }
        Ok::<_, ApiError>((tx, summary))
    });

    let read = async {
        let mut chunk = LineChunk::default();
        let mut lines = LineSplitter::default();
        // The transaction holds the workspace's user-store lock and a pooled connection
        // while the body arrives: a client that goes silent must not keep them.
        while let Some(bytes) = body.next_piece().await? {
            lines.push(&bytes, |line| chunk.add_line(line));
            if chunk.is_full() && chunks.send(std::mem::take(&mut chunk)).await.is_err() {
                return Ok(()); // The writer failed: its error is the answer.
            }
        }
        lines.finish(|line| chunk.add_line(line));
        let _ = chunks.send(chunk).await;
        Ok(())
    };
    let read: ApiResult<()> = read.await;
    // Closing the channel lets the writer finish what it holds and hand back the
    // transaction; on any error it is dropped, which rolls the whole load back.
    drop(chunks);
    let written = writer.await.map_err(|e| ApiError::Internal(anyhow::anyhow!("user load writer failed: {e}")))?;
    read?;
    let (tx, summary) = written?;
    db.commit(tx).await?;
    Ok(summary)
}

/// Lines of a user load parsed and waiting to be upserted together.
#[derive(Default)]
struct LineChunk {
    /// Line numbers of `profiles`.
    lines: Vec<u64>,
    /// The valid profiles, in line order.
    profiles: Vec<Profile>,
    /// Their size in the body.
    bytes: usize,
    /// Lines that failed to parse, by number.
    errors: Vec<(u64, String)>,
}

impl LineChunk {
    /// Parses one line into the chunk; a bad line is kept as an error.
    fn add_line(&mut self, line: Line<'_>) {
        let bytes = match line.bytes {
            Ok(bytes) => bytes.trim_ascii(),
            Err(()) => {
                let message = format!("line is longer than {MAX_LINE_BYTES} bytes");
                return self.errors.push((line.number, message));
            }
        };
        if bytes.is_empty() {
            return; // Blank lines (a trailing newline, a separator) are not profiles.
        }
        match serde_json::from_slice::<ProfileFields>(bytes) {
            Err(error) => self.errors.push((line.number, format!("invalid JSON: {error}"))),
            Ok(fields) => match Profile::try_from(fields) {
                Err(error) => self.errors.push((line.number, error.to_string())),
                Ok(profile) => {
                    self.bytes += bytes.len();
                    self.lines.push(line.number);
                    self.profiles.push(profile);
                }
            },
        }
    }

    fn is_full(&self) -> bool {
        self.profiles.len() >= CHUNK_LINES || self.bytes >= CHUNK_BYTES
    }

    /// Writes the chunk's upserts, decided in `plan`, and adds their outcomes to
    /// `summary`, failures in line order.
    async fn write(
        mut self,
        conn: &mut PgConnection,
        workspace_id: Uuid,
        plan: UpsertPlan,
        summary: &mut UserLoadSummary,
    ) -> ApiResult<()> {
        let outcomes = store::users::write_upserts(conn, workspace_id, plan).await?;
        for (line, outcome) in self.lines.into_iter().zip(outcomes) {
            match outcome {
                UpsertOutcome::Created(_) => summary.created += 1,
                UpsertOutcome::Updated(_) => summary.updated += 1,
                UpsertOutcome::Failed(reason) => self.errors.push((line, reason)),
            }
        }
        summary.failed += self.errors.len() as u64;
        self.errors.sort_by_key(|(line, _)| *line);
        let room = MAX_IMPORT_ERRORS.saturating_sub(summary.errors.len());
        let reported = self.errors.into_iter().take(room).map(|(line, message)| FailedLine { line, message });
        summary.errors.extend(reported);
        Ok(())
    }
}
