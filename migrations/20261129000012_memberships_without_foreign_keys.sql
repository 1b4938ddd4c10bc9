-- cohort_memberships: integrity kept by locks and statement triggers instead of per-row
-- foreign keys.
--
-- The two foreign keys ran, for every membership an import adds, a lookup with a row
-- lock on the cohort and on the user: about 40% of a 1,000-identifier import, and the
-- user row locks are WAL-logged and dirty the users' heap pages. What they guaranteed is
-- kept another way:
--
-- * No membership of a missing cohort. An import holds its cohort's row lock from its
--   first statement (INSERT ... ON CONFLICT DO UPDATE) to its commit, so the cohort
--   cannot be deleted under it; deleting a cohort deletes its memberships (trigger below).
-- * No membership of a missing user. Every writer of memberships holds the workspace's
--   membership lock (a transaction-level advisory lock): imports and cohort deletions
--   shared, user deletions exclusive. A user deletion therefore waits for the imports in
--   flight and holds new ones back until it commits; an import resolves its identifiers
--   in a statement that starts after it holds the lock, so it never sees a user that is
--   being deleted. Deleting users by any other way (a workspace, by hand) deletes their
--   memberships too (trigger below).

ALTER TABLE cohort_memberships DROP CONSTRAINT cohort_memberships_workspace_id_cohort_ref_fkey;
ALTER TABLE cohort_memberships DROP CONSTRAINT cohort_memberships_workspace_id_user_id_fkey;

CREATE FUNCTION cohorts_delete_memberships() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM cohort_memberships m
     USING deleted_cohorts d
     WHERE m.workspace_id = d.workspace_id AND m.cohort_ref = d.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER cohorts_delete_memberships AFTER DELETE ON cohorts
    REFERENCING OLD TABLE AS deleted_cohorts
    FOR EACH STATEMENT EXECUTE FUNCTION cohorts_delete_memberships();

CREATE FUNCTION users_delete_memberships() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM cohort_memberships m
     USING deleted_users d
     WHERE m.workspace_id = d.workspace_id AND m.user_id = d.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER users_delete_memberships AFTER DELETE ON users
    REFERENCING OLD TABLE AS deleted_users
    FOR EACH STATEMENT EXECUTE FUNCTION users_delete_memberships();
