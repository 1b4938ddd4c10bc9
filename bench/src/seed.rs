//! Step 1: seed the user store through the NDJSON import.

use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use reqwest::{Body, header::CONTENT_TYPE};
use uuid::Uuid;

use crate::{
    api::{Api, count_field, success_json},
    data::write_user_line,
    stats::per_second,
};

/// Users generated per chunk of the streamed body.
const LINES_PER_CHUNK: u64 = 10_000;

/// What seeding took.
#[derive(Debug, Clone, Copy)]
pub struct SeedReport {
    pub users: u64,
    pub elapsed: Duration,
    /// CPU time the service process used meanwhile (set by the caller).
    pub service_cpu: Duration,
    /// CPU time PostgreSQL's processes used meanwhile (set by the caller).
    pub postgres_cpu: Duration,
}

impl SeedReport {
    /// Users created per second.
    pub fn per_second(&self) -> f64 {
        per_second(self.users, self.elapsed)
    }
}

/// Streams `users` NDJSON lines to `POST /admin/workspaces/{ws}/users/import` (generated
/// while sending, so the benchmark's memory stays flat) and checks every user was created.
pub async fn seed_users(api: &Api, workspace: Uuid, users: u64) -> anyhow::Result<SeedReport> {
    let path = format!("/admin/workspaces/{workspace}/users/import");
    let chunks = (0..users.div_ceil(LINES_PER_CHUNK)).map(move |chunk| {
        let first = chunk * LINES_PER_CHUNK;
        let mut text = String::with_capacity(LINES_PER_CHUNK as usize * 80);
        for i in first..(first + LINES_PER_CHUNK).min(users) {
            write_user_line(i, &mut text);
        }
        Ok::<_, std::io::Error>(Bytes::from(text))
    });
    let body = Body::wrap_stream(futures::stream::iter(chunks));

    let started = Instant::now();
    let response = api.admin_post(&path).header(CONTENT_TYPE, "application/x-ndjson").body(body).send().await?;
    let outcome = success_json(response, &path).await?;
    let elapsed = started.elapsed();

    let created = count_field(&outcome, "created")?;
    let failed = count_field(&outcome, "failed")?;
    if failed > 0 || created != users {
        bail!("user import: {created} of {users} users created, {failed} failed: {}", outcome["errors"]);
    }
    Ok(SeedReport { users, elapsed, service_cpu: Duration::ZERO, postgres_cpu: Duration::ZERO })
}
