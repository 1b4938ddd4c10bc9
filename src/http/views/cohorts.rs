//! Partner cohorts as the operator API and the segment builder's dropdown show them:
//! the cohorts, their import logs, their members and what matched nobody.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::store;

/// A cohort as the operator API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Cohort {
    /// The partner that posts it.
    pub partner: String,
    /// The partner's id for it.
    pub cohort_id: String,
    /// Its name (its id until the partner names it).
    pub name: String,
    /// How many users are in it now.
    pub member_count: i64,
    /// When it was first posted.
    pub created_at: DateTime<Utc>,
    /// When its name or its members last changed.
    pub updated_at: DateTime<Utc>,
    /// When the last users request was accepted; null before the first.
    pub last_import_at: Option<DateTime<Utc>>,
}

impl From<store::cohorts::Cohort> for Cohort {
    fn from(row: store::cohorts::Cohort) -> Self {
        Cohort {
            partner: row.partner,
            cohort_id: row.cohort_id,
            name: row.name,
            member_count: row.member_count,
            created_at: row.created_at,
            updated_at: row.updated_at,
            last_import_at: row.last_import_at,
        }
    }
}

/// One change to a cohort's membership, as logged.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportRecord {
    /// The log entry's id within the cohort; pass it as `before` to page further back.
    pub id: i64,
    /// Who asked: `braze`, `mixpanel_members`, `mixpanel_add_members`,
    /// `mixpanel_remove_members`, `amplitude`, `replace` (the operator's full replace), or
    /// `user_deletion` (an operator deleted a member).
    pub kind: String,
    /// The request id (`x-request-id`), to find the request in the logs.
    pub request_id: String,
    /// When the request was received.
    pub received_at: DateTime<Utc>,
    /// Memberships that newly exist.
    pub added: i32,
    /// Memberships that newly ended.
    pub removed: i32,
    /// Users already in the requested state.
    pub unchanged: i32,
    /// Members that matched no eligible user.
    pub unmatched: i32,
    /// Of those, members no user has any reference of.
    pub unmatched_unknown: i32,
    /// Of those, members named only by a device id of an identified user (device ids
    /// match anonymous users only).
    pub unmatched_device_id_of_identified_user: i32,
    /// The cohort's member count right after this change.
    pub member_count_after: i64,
}

impl From<store::cohorts::ImportRecord> for ImportRecord {
    fn from(row: store::cohorts::ImportRecord) -> Self {
        ImportRecord {
            id: row.id,
            kind: row.kind,
            request_id: row.request_id,
            received_at: row.received_at,
            added: row.added,
            removed: row.removed,
            unchanged: row.unchanged,
            unmatched: row.unmatched,
            unmatched_unknown: row.unmatched_unknown,
            unmatched_device_id_of_identified_user: row.unmatched_device_id_of_identified_user,
            member_count_after: row.member_count_after,
        }
    }
}

/// One change to a cohort's membership in a workspace's log, with its cohort.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkspaceImport {
    /// The cohort's partner.
    pub partner: String,
    /// The partner's id for the cohort.
    pub cohort_id: String,
    /// The change, as its cohort's log shows it.
    #[serde(flatten)]
    pub record: ImportRecord,
}

impl From<store::cohorts::WorkspaceImport> for WorkspaceImport {
    fn from(row: store::cohorts::WorkspaceImport) -> Self {
        WorkspaceImport { partner: row.partner, cohort_id: row.cohort_id, record: row.record.into() }
    }
}

/// A member of a cohort.
#[derive(Debug, Serialize, ToSchema)]
pub struct Member {
    /// The user's public id.
    pub braze_id: Uuid,
    /// The user's external id; null for an anonymous user.
    pub external_id: Option<String>,
    /// When the user joined the cohort.
    pub added_at: DateTime<Utc>,
}

impl From<store::cohorts::Member> for Member {
    fn from(row: store::cohorts::Member) -> Self {
        Member { braze_id: row.braze_id, external_id: row.external_id, added_at: row.added_at }
    }
}

/// An identifier that matched nobody, as listed.
#[derive(Debug, Serialize, ToSchema)]
pub struct UnmatchedIdentifier {
    /// `external_id`, `device_id`, `alias` or `braze_id`.
    pub kind: String,
    /// The alias label, for an alias.
    #[schema(required = true)]
    pub alias_label: Option<String>,
    /// The identifier (an alias's name).
    pub value: String,
    /// `unknown` or `device_id_of_identified_user`.
    pub reason: String,
    /// When it was first sent and matched nobody.
    pub first_seen: DateTime<Utc>,
    /// When it was last sent and matched nobody.
    pub last_seen: DateTime<Utc>,
    /// How many requests sent it.
    pub times_seen: i64,
}

impl From<store::cohorts::unmatched::UnmatchedIdentifier> for UnmatchedIdentifier {
    fn from(row: store::cohorts::unmatched::UnmatchedIdentifier) -> Self {
        UnmatchedIdentifier {
            kind: row.kind,
            alias_label: row.alias_label.into_label(),
            value: row.value,
            reason: row.reason,
            first_seen: row.first_seen,
            last_seen: row.last_seen,
            times_seen: row.times_seen,
        }
    }
}

/// A partner cohort as the segment builder's dropdown shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CohortSummary {
    /// The partner that imports it.
    pub partner: String,
    /// The partner's id for it.
    pub cohort_id: String,
    /// Its display name.
    pub name: String,
    /// Its current number of members (exact).
    pub member_count: i64,
    /// When an import last changed it; null before the first.
    pub last_import_at: Option<DateTime<Utc>>,
}

impl From<store::segments::CohortSummary> for CohortSummary {
    fn from(row: store::segments::CohortSummary) -> Self {
        CohortSummary {
            partner: row.partner,
            cohort_id: row.cohort_id,
            name: row.name,
            member_count: row.member_count,
            last_import_at: row.last_import_at,
        }
    }
}
