-- cohort_memberships (workspace_id, user_id, cohort_ref) is dropped.
--
-- It served "which cohorts is this user in" (the user profile, user deletion), and every
-- membership an import added paid a second B-tree insertion for it: ~17% of the import
-- statement. Those rare lookups now probe the primary key (workspace_id, cohort_ref,
-- user_id) once per cohort of the workspace instead.

DROP INDEX cohort_memberships_user_idx;

CREATE OR REPLACE FUNCTION users_delete_memberships() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM cohort_memberships m
     USING deleted_users d
      JOIN cohorts c ON c.workspace_id = d.workspace_id
     WHERE m.workspace_id = d.workspace_id AND m.cohort_ref = c.id AND m.user_id = d.id;
    RETURN NULL;
END
$$;
