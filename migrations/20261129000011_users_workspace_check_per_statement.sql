-- users.workspace_id: checked once per statement instead of once per row.
--
-- The foreign key to workspaces ran one lookup (with a row lock) per inserted user: half
-- of PostgreSQL's work when the NDJSON import loads a million users. These triggers keep
-- the same guarantees set-based: every statement that inserts or moves users fails if
-- one of their workspaces does not exist, and deleting a workspace still deletes its
-- users (and, through their own foreign keys, their identifiers and memberships).
-- Workspaces are never deleted by the service; the delete trigger keeps a manual
-- deletion from leaving orphans.

ALTER TABLE users DROP CONSTRAINT users_workspace_id_fkey;

CREATE FUNCTION users_check_workspaces() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM checked_users u
               WHERE NOT EXISTS (SELECT 1 FROM workspaces w WHERE w.id = u.workspace_id)) THEN
        RAISE EXCEPTION 'users.workspace_id names no workspace'
            USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'users_workspace_id_check';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER users_workspace_exists_on_insert AFTER INSERT ON users
    REFERENCING NEW TABLE AS checked_users
    FOR EACH STATEMENT EXECUTE FUNCTION users_check_workspaces();
CREATE TRIGGER users_workspace_exists_on_update AFTER UPDATE ON users
    REFERENCING NEW TABLE AS checked_users
    FOR EACH STATEMENT EXECUTE FUNCTION users_check_workspaces();

CREATE FUNCTION workspaces_delete_users() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM users WHERE workspace_id = OLD.id;
    RETURN OLD;
END
$$;

CREATE TRIGGER workspaces_delete_users BEFORE DELETE ON workspaces
    FOR EACH ROW EXECUTE FUNCTION workspaces_delete_users();
