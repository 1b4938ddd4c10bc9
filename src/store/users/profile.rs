//! Reading one user's profile, as the admin API shows it.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::{PgExecutor, types::Json};
use uuid::Uuid;

use crate::domain::{Alias, DeviceId, ExternalId};

/// A user with its references and cohorts, read in one statement.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserProfile {
    pub braze_id: Uuid,
    pub external_id: Option<String>,
    #[sqlx(json)]
    pub aliases: Vec<ProfileAlias>,
    pub device_ids: Vec<String>,
    pub created_at: DateTime<Utc>,
    #[sqlx(json)]
    pub cohorts: Vec<ProfileCohort>,
}

/// One alias of a [`UserProfile`].
#[derive(Debug, Clone, Deserialize)]
pub struct ProfileAlias {
    pub alias_label: String,
    pub alias_name: String,
}

/// One cohort membership of a [`UserProfile`].
#[derive(Debug, Clone, Deserialize)]
pub struct ProfileCohort {
    pub partner: String,
    pub cohort_id: String,
    pub name: String,
    pub added_at: DateTime<Utc>,
}

/// How a user is looked up.
#[derive(Debug, Clone)]
pub enum UserLookup {
    /// By public id.
    BrazeId(Uuid),
    /// By external id.
    ExternalId(ExternalId),
    /// By device id.
    DeviceId(DeviceId),
    /// By alias.
    Alias(Alias),
}

/// A profile as the query reads it: the aliases and cohorts as JSON.
struct ProfileRow {
    braze_id: Uuid,
    external_id: Option<String>,
    created_at: DateTime<Utc>,
    aliases: Json<Vec<ProfileAlias>>,
    device_ids: Vec<String>,
    cohorts: Json<Vec<ProfileCohort>>,
}

impl From<ProfileRow> for UserProfile {
    fn from(row: ProfileRow) -> Self {
        UserProfile {
            braze_id: row.braze_id,
            external_id: row.external_id,
            aliases: row.aliases.0,
            device_ids: row.device_ids,
            created_at: row.created_at,
            cohorts: row.cohorts.0,
        }
    }
}

/// The profile query, checked, with the filter that picks the user appended to it and
/// its parameters; `$1` is the workspace.
macro_rules! query_profile {
    ($filter:literal, $($parameter:expr),+ $(,)?) => {
        sqlx::query_as!(
            ProfileRow,
            r#"SELECT u.braze_id, u.external_id, u.created_at,
                coalesce((SELECT jsonb_agg(jsonb_build_object('alias_label', a.alias_label, 'alias_name', a.alias_name)
                                           ORDER BY a.alias_label, a.alias_name)
                          FROM user_aliases a WHERE a.workspace_id = $1 AND a.user_id = u.id),
                         '[]') AS "aliases!: Json<Vec<ProfileAlias>>",
                ARRAY(SELECT d.device_id FROM user_device_ids d
                      WHERE d.workspace_id = $1 AND d.user_id = u.id ORDER BY d.device_id) AS "device_ids!",
                coalesce((SELECT jsonb_agg(jsonb_build_object('partner', c.partner, 'cohort_id', c.cohort_id,
                                                              'name', c.name, 'added_at', m.added_at)
                                           ORDER BY c.partner, c.cohort_id)
                          FROM cohort_memberships m
                          JOIN cohorts c ON c.workspace_id = $1 AND c.id = m.cohort_ref
                          WHERE m.workspace_id = $1 AND m.user_id = u.id),
                         '[]') AS "cohorts!: Json<Vec<ProfileCohort>>"
             FROM users u WHERE u.workspace_id = $1 AND "# + $filter,
            $($parameter),+
        )
    };
}

/// The profile of the user `lookup` names, if there is one.
pub async fn find_profile(
    executor: impl PgExecutor<'_>,
    workspace_id: Uuid,
    lookup: &UserLookup,
) -> sqlx::Result<Option<UserProfile>> {
    let row = match lookup {
        UserLookup::BrazeId(braze_id) => {
            query_profile!("u.braze_id = $2", workspace_id, *braze_id).fetch_optional(executor).await?
        }
        UserLookup::ExternalId(external_id) => {
            query_profile!("u.external_id = $2", workspace_id, external_id.as_str()).fetch_optional(executor).await?
        }
        UserLookup::DeviceId(device_id) => {
            query_profile!(
                "u.id = (SELECT user_id FROM user_device_ids WHERE workspace_id = $1 AND device_id = $2)",
                workspace_id,
                device_id.as_str(),
            )
            .fetch_optional(executor)
            .await?
        }
        UserLookup::Alias(alias) => {
            query_profile!(
                "u.id = (SELECT user_id FROM user_aliases
                     WHERE workspace_id = $1 AND alias_label = $2 AND alias_name = $3)",
                workspace_id,
                alias.alias_label.as_str(),
                alias.alias_name.as_str(),
            )
            .fetch_optional(executor)
            .await?
        }
    };
    Ok(row.map(UserProfile::from))
}
