//! Step 3: the webhook paths and the operator's replace. Amplitude messages of 1,000
//! users sent by concurrent clients (Amplitude retries what is not answered within a
//! second or two: the latency is the figure), a Mixpanel `members` session of 10,000
//! members a page sent page after page as Mixpanel does, and the operator's NDJSON
//! replace; each replace's result is checked against the cohort's member count.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bytes::Bytes;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::{
    api::{Api, PARTNER, Setup, count_field, success_json},
    data::{COHORTS, Profile, Rng, external_id, pick_user},
    stats::{Latencies, per_second},
};

/// Users per Amplitude message, as the issue measures it.
const USERS_PER_MESSAGE: u64 = 1_000;
/// Members per Mixpanel page.
const MEMBERS_PER_PAGE: u64 = 10_000;

/// The Amplitude path's figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct AmplitudeReport {
    pub changes: u64,
    pub messages: usize,
    pub elapsed: Duration,
    pub latencies: Latencies,
}

impl AmplitudeReport {
    /// Users sent per second.
    pub fn per_second(&self) -> f64 {
        per_second(self.changes, self.elapsed)
    }
}

/// The step's figures; `None` for a part skipped.
#[derive(Debug, Clone, Copy, Default)]
pub struct WebhookReport {
    pub amplitude: Option<AmplitudeReport>,
    pub session: Option<ReplaceReport>,
    pub replace: Option<ReplaceReport>,
}

/// A full replace's figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplaceReport {
    pub members: u64,
    pub elapsed: Duration,
}

impl ReplaceReport {
    /// Members replaced per second.
    pub fn per_second(&self) -> f64 {
        per_second(self.members, self.elapsed)
    }
}

/// Sends `changes` users to Amplitude's webhook, 1,000 a message over the benchmark's
/// cohorts (one message in ten a removal), with `concurrency` clients.
pub async fn drive_amplitude(
    api: &Api,
    setup: &Setup,
    users: u64,
    changes: u64,
    concurrency: usize,
) -> anyhow::Result<AmplitudeReport> {
    let mut rng = Rng::new(7);
    let messages: Vec<Bytes> = (0..changes.div_ceil(USERS_PER_MESSAGE))
        .map(|index| {
            let size = (changes - index * USERS_PER_MESSAGE).min(USERS_PER_MESSAGE);
            let users: Vec<Value> = (0..size)
                .map(|_| json!({ "user_id": external_id(pick_user(&mut rng, users, |p| p != Profile::Anonymous)) }))
                .collect();
            let body = json!({
                "cohort_name": format!("Amplitude cohort {}", index % COHORTS as u64),
                "cohort_id": format!("amplitude-{}", index % COHORTS as u64),
                "in_cohort": index % 10 != 9,
                "computed_time": "1764547200",
                "message_id": format!("bench-{index}"),
                "users": users,
            });
            Bytes::from(serde_json::to_vec(&body).expect("a JSON value serializes"))
        })
        .collect();
    let messages = Arc::new(messages);
    let next = Arc::new(AtomicUsize::new(0));
    let url = api.url(&format!("/webhooks/amplitude/{PARTNER}"));
    let started = Instant::now();
    let clients: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (api, messages, next, url, key) =
                (api.clone(), messages.clone(), next.clone(), url.clone(), setup.client_secret.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while let Some(body) = messages.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let sent = Instant::now();
                    let response = api
                        .client
                        .post(&url)
                        .bearer_auth(&key)
                        .header(CONTENT_TYPE, "application/json")
                        .body(body.clone())
                        .send()
                        .await?;
                    success_json(response, "POST /webhooks/amplitude").await?;
                    latencies.push(sent.elapsed());
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for client in clients {
        latencies.extend(client.await.context("an Amplitude client panicked")??);
    }
    Ok(AmplitudeReport {
        changes,
        messages: messages.len(),
        elapsed: started.elapsed(),
        latencies: Latencies::of(latencies),
    })
}

/// The external ids of the first `members` identified users (at most those seeded).
fn identified(members: u64) -> impl Iterator<Item = String> {
    (0..members * 2).filter(|&i| Profile::of(i) != Profile::Anonymous).take(members as usize).map(external_id)
}

/// Sends a Mixpanel `members` session naming `members` identified users, page after
/// page, and checks that the cohort then holds exactly them.
pub async fn members_session(api: &Api, setup: &Setup, pool: &PgPool, members: u64) -> anyhow::Result<ReplaceReport> {
    let pages = members.div_ceil(MEMBERS_PER_PAGE);
    let names: Vec<String> = identified(members).collect();
    let url = api.url(&format!("/webhooks/mixpanel/{PARTNER}"));
    let started = Instant::now();
    for (page, chunk) in names.chunks(MEMBERS_PER_PAGE as usize).enumerate() {
        let members: Vec<Value> = chunk
            .iter()
            .map(
                |id| json!({ "mixpanel_distinct_id": id, "email": format!("{id}@example.com"), "first_name": "Bench" }),
            )
            .collect();
        let body = json!({ "action": "members", "parameters": {
            "mixpanel_project_id": "1", "mixpanel_cohort_id": "mixpanel-session", "mixpanel_cohort_name": "Session",
            "mixpanel_session_id": "bench-session",
            "page_info": { "page_count": page + 1, "total_pages": pages },
            "members": members,
        }});
        let response =
            api.client.post(&url).basic_auth("mixpanel", Some(&setup.client_secret)).json(&body).send().await?;
        let answer = success_json(response, "POST /webhooks/mixpanel").await?;
        if answer["status"] != "success" {
            bail!("Mixpanel page {page}: {answer}");
        }
    }
    let elapsed = started.elapsed();
    expect_members(pool, "mixpanel-session", members).await?;
    Ok(ReplaceReport { members, elapsed })
}

/// Replaces a cohort's membership with `members` identified users through the
/// operator's NDJSON replace, and checks its answer and the cohort.
pub async fn operator_replace(api: &Api, setup: &Setup, pool: &PgPool, members: u64) -> anyhow::Result<ReplaceReport> {
    let mut body = String::with_capacity(members as usize * 32);
    for id in identified(members) {
        body.push_str(&format!("{{\"external_id\":\"{id}\"}}\n"));
    }
    let path = format!("/admin/workspaces/{}/cohorts/{PARTNER}/replaced/members", setup.workspace);
    let started = Instant::now();
    let response = api.admin_put(&path).header(CONTENT_TYPE, "application/x-ndjson").body(body).send().await?;
    let answer = success_json(response, "PUT …/members").await?;
    let elapsed = started.elapsed();
    if count_field(&answer, "added")? != members {
        bail!("the replace added {} members of {members}: {answer}", count_field(&answer, "added")?);
    }
    expect_members(pool, "replaced", members).await?;
    Ok(ReplaceReport { members, elapsed })
}

async fn expect_members(pool: &PgPool, cohort_id: &str, members: u64) -> anyhow::Result<()> {
    let held: i64 = sqlx::query_scalar(
        "SELECT member_count FROM cohorts WHERE cohort_id = $1
          AND member_count = (SELECT count(*) FROM cohort_memberships m WHERE m.workspace_id = cohorts.workspace_id
                                 AND m.cohort_ref = cohorts.id)",
    )
    .bind(cohort_id)
    .fetch_optional(pool)
    .await?
    .with_context(|| format!("cohort {cohort_id}: missing, or its count differs from its memberships"))?;
    if held != members as i64 {
        bail!("cohort {cohort_id} holds {held} members, {members} were sent");
    }
    Ok(())
}
