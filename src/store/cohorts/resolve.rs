//! Resolving the members a request names to users of the workspace: one statement for
//! up to a request's worth of references, every branch a unique-index probe.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{
    MemberRefs, UserRef,
    membership::{MatchedUser, Resolved},
};

/// The references of some members as parallel arrays, one group per kind, bound to
/// `unnest(...)`, with where each came from.
#[derive(Default)]
struct RefColumns<'a> {
    external_id: Vec<&'a str>,
    alias_label: Vec<&'a str>,
    alias_name: Vec<&'a str>,
    device_id: Vec<&'a str>,
    braze_id: Vec<Uuid>,
    /// Per kind (as the statement of [`resolve`] numbers them), the (member, rank) of each array entry.
    origin: [Vec<(usize, usize)>; 4],
}

impl<'a> RefColumns<'a> {
    fn of(members: impl IntoIterator<Item = &'a MemberRefs>) -> Self {
        let mut columns = RefColumns::default();
        for (member, refs) in members.into_iter().enumerate() {
            for (rank, user_ref) in refs.refs().iter().enumerate() {
                let kind = match user_ref {
                    UserRef::ExternalId(id) => {
                        columns.external_id.push(id.as_str());
                        0
                    }
                    UserRef::Alias(alias) => {
                        columns.alias_label.push(alias.alias_label.as_str());
                        columns.alias_name.push(alias.alias_name.as_str());
                        1
                    }
                    UserRef::DeviceId(id) => {
                        columns.device_id.push(id.as_str());
                        2
                    }
                    UserRef::BrazeId(id) => {
                        columns.braze_id.push(*id);
                        3
                    }
                };
                columns.origin[kind].push((member, rank));
            }
        }
        columns
    }

    /// The (member, rank) of the `position`th (1-based) reference of `kind`.
    fn origin(&self, kind: i16, position: i64) -> Option<(usize, usize)> {
        let index = usize::try_from(position.checked_sub(1)?).ok()?;
        self.origin.get(usize::try_from(kind).ok()?)?.get(index).copied()
    }
}

/// What every reference of `members` finds in the workspace, and, when `cohort_ref` is
/// given, whether each user found is a member of that cohort.
pub(super) async fn resolve<'a>(
    conn: &mut PgConnection,
    workspace_id: Uuid,
    cohort_ref: Option<i64>,
    members: impl IntoIterator<Item = &'a MemberRefs>,
) -> sqlx::Result<Vec<Resolved>> {
    let columns = RefColumns::of(members);
    // One row per reference: its kind (0 external id, 1 alias, 2 device id, 3 braze_id)
    // and 1-based position in its array, the user it matches (null: no eligible user),
    // whether it is a device id of an identified user (which matches nobody), and whether
    // the user is in cohort `$2` now. Every branch is a unique-index probe, and so is the
    // membership test: a lateral subquery kept apart by `OFFSET 0`, so the planner cannot
    // turn it into a join over every member of the cohort (which it did, from a growing
    // cohort's stale row estimate, at 1.5-3 s a request). `$2 = 0` (no cohort) skips it.
    let rows = sqlx::query!(
        r#"
SELECT r.kind AS "kind!", r.position AS "position!", r.user_id AS "user_id?", r.identified_device AS "identified_device!",
       coalesce(m.member, false) AS "member!"
  FROM (SELECT 0::int2 AS kind, c.position, u.id AS user_id, false AS identified_device
          FROM unnest($3::text[]) WITH ORDINALITY AS c(value, position)
          LEFT JOIN users u ON u.workspace_id = $1 AND u.external_id = c.value
        UNION ALL
        SELECT 1::int2, c.position, a.user_id, false
          FROM unnest($4::text[], $5::text[]) WITH ORDINALITY AS c(label, value, position)
          LEFT JOIN user_aliases a ON a.workspace_id = $1 AND a.alias_label = c.label AND a.alias_name = c.value
        UNION ALL
        SELECT 2::int2, c.position, CASE WHEN found.anonymous THEN found.user_id END, coalesce(NOT found.anonymous, false)
          FROM unnest($6::text[]) WITH ORDINALITY AS c(value, position)
          LEFT JOIN LATERAL (
              SELECT d.user_id, u.external_id IS NULL AS anonymous FROM user_device_ids d
                JOIN users u ON u.workspace_id = d.workspace_id AND u.id = d.user_id
               WHERE d.workspace_id = $1 AND d.device_id = c.value
          ) AS found ON true
        UNION ALL
        SELECT 3::int2, c.position, u.id, false
          FROM unnest($7::uuid[]) WITH ORDINALITY AS c(value, position)
          LEFT JOIN users u ON u.workspace_id = $1 AND u.braze_id = c.value
       ) AS r
  LEFT JOIN LATERAL (
      SELECT true AS member FROM cohort_memberships
       WHERE $2 <> 0 AND workspace_id = $1 AND cohort_ref = $2 AND user_id = r.user_id
      OFFSET 0
  ) AS m ON true"#,
        workspace_id,
        // Bound as int8, as `cohort_ref` is: described without a bound type, `$2 <> 0`
        // would make it int4.
        cohort_ref.unwrap_or(0) as i64,
        &columns.external_id[..] as &[&str],
        &columns.alias_label[..] as &[&str],
        &columns.alias_name[..] as &[&str],
        &columns.device_id[..] as &[&str],
        &columns.braze_id,
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|row| {
            let (member_index, rank) = columns
                .origin(row.kind, row.position)
                .ok_or_else(|| sqlx::Error::Protocol("resolved a reference that was not sent".into()))?;
            Ok(Resolved {
                member: member_index,
                rank,
                user: row.user_id.map(|id| MatchedUser { id, member: row.member }),
                identified_device: row.identified_device,
            })
        })
        .collect()
}
