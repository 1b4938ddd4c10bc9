-- The user store of each workspace. On Citus every table here is distributed by
-- workspace_id, co-located with the cohort tables.
--
-- Integrity that per-row foreign keys would check (a user's workspace exists, an
-- identifier's user exists, deleting a user deletes its identifiers) is kept by the
-- service's own statements instead: such a key costs a lookup with a row lock per row,
-- about half of PostgreSQL's work when a million users are loaded. Every write below
-- runs in a transaction holding the workspace's `user_id_counters` row, which exists only
-- while its workspace does; deleting a user deletes its identifiers, memberships and bits
-- in the same transaction. Deleting a workspace by hand must delete these rows too.

-- One row per workspace, created with it: the next internal user id, and the lock of the
-- workspace's user store (see src/store/locks.rs for who takes it in which mode). Ids are
-- dense within a workspace, so its bitmaps stay dense however many workspaces share the
-- database.
CREATE TABLE user_id_counters (
    workspace_id uuid   PRIMARY KEY REFERENCES workspaces (id) ON DELETE CASCADE,
    next_user_id bigint NOT NULL DEFAULT 1 CHECK (next_user_id >= 1)
);

-- Users are matched by external_id, by alias (label + name), or by device_id; the
-- internal id keeps memberships and indexes compact, braze_id is the public identifier.
-- Identifiers compare as bytes (collation "C"): they are opaque strings matched exactly,
-- and a memcmp is cheaper than the locale's strcoll in every index comparison.
CREATE TABLE users (
    workspace_id uuid        NOT NULL,
    id           bigint      NOT NULL,
    braze_id     uuid        NOT NULL,
    external_id  text        COLLATE "C",
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, id),
    UNIQUE (workspace_id, braze_id),
    -- INCLUDE (id): resolving an external id reads the index only, not the user's row.
    UNIQUE (workspace_id, external_id) INCLUDE (id)
);

CREATE TABLE user_aliases (
    workspace_id uuid   NOT NULL,
    alias_label  text   COLLATE "C" NOT NULL,
    alias_name   text   COLLATE "C" NOT NULL,
    user_id      bigint NOT NULL,
    PRIMARY KEY (workspace_id, alias_label, alias_name) INCLUDE (user_id)
);
CREATE INDEX user_aliases_user_idx ON user_aliases (workspace_id, user_id);

-- Resolving a device id reads its user's row anyway (device ids match anonymous users
-- only), so its index carries no INCLUDE.
CREATE TABLE user_device_ids (
    workspace_id uuid   NOT NULL,
    device_id    text   COLLATE "C" NOT NULL,
    user_id      bigint NOT NULL,
    PRIMARY KEY (workspace_id, device_id)
);
CREATE INDEX user_device_ids_user_idx ON user_device_ids (workspace_id, user_id);

-- Every user of the workspace as a bitmap over internal ids, in blocks of 8,192 bits
-- (1 KiB, inline in its row): user `id` is bit `id & 8191` of block `id >> 13`. The
-- universe every `not` of a segment filter is taken within, so that every filter is
-- bitmap algebra. Kept by the statements that create and delete users.
CREATE TABLE user_bitmaps (
    workspace_id uuid      NOT NULL,
    block        bigint    NOT NULL,
    bits         bit(8192) NOT NULL,
    PRIMARY KEY (workspace_id, block)
) WITH (fillfactor = 50);
