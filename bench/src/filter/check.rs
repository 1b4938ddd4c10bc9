//! The check of 1,000 references against resolving and testing them by hand.

use std::collections::HashMap;

use anyhow::Context;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Comparison, QUICK_REPETITIONS, Segments, time_repeated};
use crate::{
    data::{ALIAS_LABEL, Profile, Rng, alias_name, device_id, external_id, pick_user},
    stats::ms,
};

/// References per check request.
const CHECK_REFERENCES: usize = 1_000;

/// One user reference of a check request.
#[derive(Debug, Clone)]
pub(super) enum Reference {
    ExternalId(String),
    BrazeId(Uuid),
    DeviceId(String),
    Alias(String),
}

impl Reference {
    fn to_json(&self) -> Value {
        match self {
            Reference::ExternalId(id) => json!({ "external_id": id }),
            Reference::BrazeId(id) => json!({ "braze_id": id }),
            Reference::DeviceId(id) => json!({ "device_id": id }),
            Reference::Alias(name) => json!({ "alias": { "alias_name": name, "alias_label": ALIAS_LABEL } }),
        }
    }
}

/// 1,000 references: 55% external_id, 20% alias, 10% device_id, 10% braze_id (looked up
/// in the database), 5% unknown.
pub(super) async fn check_references(pool: &PgPool, workspace: Uuid, users: u64) -> anyhow::Result<Vec<Reference>> {
    let mut rng = Rng::new(2);
    let mut references = Vec::with_capacity(CHECK_REFERENCES);
    let mut by_braze_id = Vec::new();
    for _ in 0..CHECK_REFERENCES {
        let reference = match rng.below(100) {
            0..55 => Reference::ExternalId(external_id(pick_user(&mut rng, users, |p| p != Profile::Anonymous))),
            55..75 => Reference::Alias(alias_name(pick_user(&mut rng, users, |p| {
                p == Profile::Identified { with_alias: true }
            }))),
            75..85 => Reference::DeviceId(device_id(pick_user(&mut rng, users, |p| p == Profile::Anonymous))),
            85..95 => {
                by_braze_id.push(external_id(pick_user(&mut rng, users, |p| p != Profile::Anonymous)));
                Reference::BrazeId(Uuid::nil()) // Filled in below.
            }
            _ => Reference::ExternalId(format!("unknown-{}", rng.next_u64())),
        };
        references.push(reference);
    }
    let braze_ids: HashMap<String, Uuid> =
        sqlx::query_as("SELECT external_id, braze_id FROM users WHERE workspace_id = $1 AND external_id = ANY($2)")
            .bind(workspace)
            .bind(&by_braze_id)
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
    let mut wanted = by_braze_id.iter();
    for reference in &mut references {
        if let Reference::BrazeId(id) = reference {
            let external_id = wanted.next().context("one external_id per braze_id reference")?;
            *id = *braze_ids.get(external_id).with_context(|| format!("seeded user {external_id} not found"))?;
        }
    }
    Ok(references)
}

/// `POST /v1/segments/check` of 1,000 references against resolving and testing them by hand.
pub(super) async fn measure_check(
    segments: &Segments<'_>,
    filter: &Value,
    references: &[Reference],
    pool: &PgPool,
    workspace: Uuid,
    cohort_ref: i64,
    problems: &mut Vec<String>,
) -> anyhow::Result<Option<Comparison>> {
    let body = json!({ "filter": filter, "users": references.iter().map(Reference::to_json).collect::<Vec<_>>() });
    if segments.post_json("check", &body).await?.is_none() {
        return Ok(None);
    }
    let (service_time, answer) = time_repeated(QUICK_REPETITIONS, || async {
        let (answer, _) = segments.post_json("check", &body).await?.context("check route vanished")?;
        Ok(answer)
    })
    .await?;
    let service_matches: Vec<Option<bool>> = answer["results"]
        .as_array()
        .context("check response has no results array")?
        .iter()
        .map(|result| result["matches"].as_bool())
        .collect();

    let (sql_time, sql_matches) =
        time_repeated(QUICK_REPETITIONS, || sql_check(pool, workspace, cohort_ref, references)).await?;
    let differing = service_matches.iter().zip(&sql_matches).filter(|(service, sql)| **service != Some(**sql)).count();
    if service_matches.len() != sql_matches.len() || differing > 0 {
        problems.push(format!(
            "check: {} results, {differing} differ from SQL's {} answers",
            service_matches.len(),
            sql_matches.len()
        ));
    }
    Ok(Some(Comparison::Millis { service: ms(service_time), sql: ms(sql_time) }))
}

/// Resolves each reference and tests membership by hand, in the order given.
async fn sql_check(
    pool: &PgPool,
    workspace: Uuid,
    cohort_ref: i64,
    references: &[Reference],
) -> anyhow::Result<Vec<bool>> {
    let mut external_ids = Vec::new();
    let mut braze_ids = Vec::new();
    let mut device_ids = Vec::new();
    let mut alias_names = Vec::new();
    for reference in references {
        let (mut external_id, mut braze_id, mut device_id, mut alias) = (None, None, None, None);
        match reference {
            Reference::ExternalId(id) => external_id = Some(id.as_str()),
            Reference::BrazeId(id) => braze_id = Some(*id),
            Reference::DeviceId(id) => device_id = Some(id.as_str()),
            Reference::Alias(name) => alias = Some(name.as_str()),
        }
        external_ids.push(external_id);
        braze_ids.push(braze_id);
        device_ids.push(device_id);
        alias_names.push(alias);
    }
    // Like the API, it answers each reference's braze_id along with the verdict.
    let rows: Vec<(Option<Uuid>, bool)> = sqlx::query_as(
        "SELECT u.braze_id,
                EXISTS (SELECT 1 FROM cohort_memberships m
                         WHERE m.workspace_id = $1 AND m.cohort_ref = $2 AND m.user_id = u.id)
           FROM unnest($3::text[], $4::uuid[], $5::text[], $6::text[]) WITH ORDINALITY
                AS r (external_id, braze_id, device_id, alias_name, ord)
           LEFT JOIN LATERAL (
                SELECT id, braze_id FROM users WHERE workspace_id = $1 AND external_id = r.external_id
                UNION ALL
                SELECT id, braze_id FROM users WHERE workspace_id = $1 AND braze_id = r.braze_id
                UNION ALL
                SELECT x.id, x.braze_id FROM user_device_ids d JOIN users x ON x.workspace_id = $1 AND x.id = d.user_id
                 WHERE d.workspace_id = $1 AND d.device_id = r.device_id
                UNION ALL
                SELECT x.id, x.braze_id FROM user_aliases a JOIN users x ON x.workspace_id = $1 AND x.id = a.user_id
                 WHERE a.workspace_id = $1 AND a.alias_label = $7 AND a.alias_name = r.alias_name
                LIMIT 1) u ON true
          ORDER BY r.ord",
    )
    .bind(workspace)
    .bind(cohort_ref)
    .bind(&external_ids)
    .bind(&braze_ids)
    .bind(&device_ids)
    .bind(&alias_names)
    .bind(ALIAS_LABEL)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(_, matches)| matches).collect())
}
