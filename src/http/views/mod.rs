//! What the API answers about stored things: one view per store row, built from it with
//! `From`, as crates.io's "encodable" types are. A row never goes out as it is, so a
//! column added to a table shows up in no answer until a view says so, and the OpenAPI
//! schema of an answer is written here, beside the handlers that give it.

mod admin;
mod cohorts;
mod users;

pub use admin::{ApiKeyInfo, KeyInfo, PartnerWithKeys, Rejection, Workspace};
pub use cohorts::{Cohort, CohortSummary, ImportRecord, Member, UnmatchedIdentifier, WorkspaceImport};
pub use users::{ProfileAlias, ProfileCohort, UserProfile};

/// Every row of `rows` as its view.
pub fn all<Row, View: From<Row>>(rows: Vec<Row>) -> Vec<View> {
    rows.into_iter().map(View::from).collect()
}
