//! A user as the admin API shows it: its references and its cohorts.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::store;

/// A user as the admin API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserProfile {
    /// The public id.
    pub braze_id: Uuid,
    /// The customer's id; null for an anonymous user.
    pub external_id: Option<String>,
    /// Its aliases, by label then name.
    pub aliases: Vec<ProfileAlias>,
    /// Its device ids, sorted.
    pub device_ids: Vec<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// The cohorts it belongs to, by partner then cohort id.
    pub cohorts: Vec<ProfileCohort>,
}

impl From<store::users::UserProfile> for UserProfile {
    fn from(row: store::users::UserProfile) -> Self {
        UserProfile {
            braze_id: row.braze_id,
            external_id: row.external_id,
            aliases: super::all(row.aliases),
            device_ids: row.device_ids,
            created_at: row.created_at,
            cohorts: super::all(row.cohorts),
        }
    }
}

/// One alias of a [`UserProfile`].
#[derive(Debug, Serialize, ToSchema)]
pub struct ProfileAlias {
    /// The label.
    pub alias_label: String,
    /// The name within the label.
    pub alias_name: String,
}

impl From<store::users::ProfileAlias> for ProfileAlias {
    fn from(row: store::users::ProfileAlias) -> Self {
        ProfileAlias { alias_label: row.alias_label, alias_name: row.alias_name }
    }
}

/// One cohort membership of a [`UserProfile`].
#[derive(Debug, Serialize, ToSchema)]
pub struct ProfileCohort {
    /// The partner that imports the cohort.
    pub partner: String,
    /// The partner's id of the cohort.
    pub cohort_id: String,
    /// The cohort's name.
    pub name: String,
    /// When the user joined it.
    pub added_at: DateTime<Utc>,
}

impl From<store::users::ProfileCohort> for ProfileCohort {
    fn from(row: store::users::ProfileCohort) -> Self {
        ProfileCohort { partner: row.partner, cohort_id: row.cohort_id, name: row.name, added_at: row.added_at }
    }
}
