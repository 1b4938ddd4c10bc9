//! Plans that hold whatever the planner's statistics say: the hot statements are written
//! so that their cheapest plan is the one intended even on statistics taken while the
//! tables were empty (and never again, as with autovacuum off). The plans are read as
//! PostgreSQL sends them (auto_explain, [`TestApp::spawn_logging_plans`]).

use std::sync::{Arc, Mutex};

use serde_json::json;
use tracing::field::{Field, Visit};
use tracing::subscriber::DefaultGuard;
use tracing_subscriber::{Layer, layer::SubscriberExt};

use crate::helpers::{TestApp, change_members, expect_json, insert_cohort, insert_users, skipped_on_citus};

/// Collects the plans PostgreSQL sends as NOTICEs (auto_explain), which sqlx reports as
/// tracing events of target `sqlx::postgres::notice`.
#[derive(Clone, Default)]
pub struct Plans(pub Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> Layer<S> for Plans {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != "sqlx::postgres::notice" {
            return;
        }
        struct Message(Option<String>);
        impl Visit for Message {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = Some(format!("{value:?}"));
                }
            }
            fn record_str(&mut self, field: &Field, value: &str) {
                if field.name() == "message" {
                    self.0 = Some(value.to_owned());
                }
            }
        }
        let mut message = Message(None);
        event.record(&mut message);
        if let Some(text) = message.0.filter(|text| text.contains("plan:")) {
            self.0.lock().unwrap().push(text);
        }
    }
}

impl Plans {
    /// The service, its every statement's plan collected here while the guard lives.
    /// `#[tokio::test]` runs everything, the service included, on the test's thread,
    /// which the guard's collector covers.
    pub async fn of_an_app() -> (TestApp, Plans, DefaultGuard) {
        let plans = Plans::default();
        let collecting = tracing::subscriber::set_default(tracing_subscriber::registry().with(plans.clone()));
        (TestApp::spawn_logging_plans().await, plans, collecting)
    }

    /// The plans collected so far of the statements whose text contains `statement`.
    pub fn of(&self, statement: &str) -> Vec<String> {
        self.0.lock().unwrap().iter().filter(|plan| plan.contains(statement)).cloned().collect()
    }
}

#[tokio::test]
async fn removing_members_probes_each_one_on_statistics_of_an_empty_table() {
    if skipped_on_citus("the plans checked are a plain PostgreSQL's; the Citus test reads the workers'") {
        return;
    }
    let (app, plans, _collecting) = Plans::of_an_app().await;
    let setup = app.partner_setup("kubit").await;
    let ws = setup.workspace;
    // Statistics of the empty table, then a cohort of 20,000 members they know nothing of.
    sqlx::query("ANALYZE cohort_memberships").execute(&app.pool).await.unwrap();
    let external_ids: Vec<Option<String>> = (0..20_000).map(|i| Some(format!("u{i}"))).collect();
    let inserted = insert_users(&app.pool, ws, &external_ids).await;
    let users: Vec<i64> = inserted.iter().map(|&(id, _)| id).collect();
    let cohort = insert_cohort(&app.pool, ws, "kubit", "A", "A").await;
    change_members(&app.pool, ws, cohort, &users, &[]).await;

    // More requests than PostgreSQL plans afresh before it weighs a generic plan (five).
    for request in 0..7 {
        let removed: Vec<String> = (0..100).map(|i| format!("u{}", request * 100 + i)).collect();
        let body = json!({
            "partner_api_key": setup.partner_api_key,
            "client_secret": setup.client_secret,
            "cohort_id": "A",
            "cohort_changes": [{ "user_ids": removed, "should_remove": true }],
        });
        let response = app.client.post(app.url("/partners/kubit/cohorts/users")).json(&body).send().await.unwrap();
        assert_eq!(expect_json(response, 200).await["removed"], 100);
    }

    let deletes = plans.of("DELETE FROM cohort_memberships");
    assert!(deletes.len() >= 7, "one plan per removal request, got {}", deletes.len());
    for plan in &deletes {
        let probes = plan.lines().any(|line| line.contains("Index Cond") && line.contains("user_id"));
        let scans = ["Bitmap Heap Scan on cohort_memberships", "Seq Scan on cohort_memberships", "Hash Join"]
            .iter()
            .any(|shape| plan.contains(shape));
        assert!(probes && !scans, "not a primary-key probe per removed member:\n{plan}");
    }

    // A member's deletion takes it out of every cohort it is in: a probe per cohort.
    let member = inserted[19_999].1;
    assert_eq!(app.admin_delete(&format!("/admin/workspaces/{ws}/users/{member}")).await.status(), 204);
    let deletions = plans.of("DELETE FROM cohort_memberships m USING cohorts");
    assert!(!deletions.is_empty(), "the user deletion's plan");
    for plan in &deletions {
        let probes = plan.lines().any(|line| line.contains("Index Cond") && line.contains("user_id"));
        assert!(probes && !plan.contains("Seq Scan on cohort_memberships"), "not a probe per cohort:\n{plan}");
    }
    let count: i64 = sqlx::query_scalar("SELECT member_count FROM cohorts WHERE workspace_id = $1 AND id = $2")
        .bind(ws)
        .bind(cohort)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 20_000 - 701);
}
