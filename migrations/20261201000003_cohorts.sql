-- Partner cohorts, who is in them, and the log of every change to their membership. On Citus every table
-- here is distributed by workspace_id, co-located with the user store.
--
-- Memberships have no foreign keys: one to the cohort and one to the user ran, for every
-- membership added, a lookup with a row lock (about 40% of an import). The service keeps
-- both guarantees: every writer of a cohort's memberships holds the cohort's row lock,
-- deleting a cohort deletes its memberships, and a user deletion excludes imports while
-- it deletes the user's memberships (src/store/locks.rs).

-- Cohort ids are drawn here, one per new cohort, outside the transaction that creates it
-- (an id lost to a rollback costs nothing; a lock held for the import would).
CREATE TABLE cohort_id_counters (
    workspace_id   uuid   PRIMARY KEY REFERENCES workspaces (id) ON DELETE CASCADE,
    next_cohort_id bigint NOT NULL DEFAULT 1 CHECK (next_cohort_id >= 1)
);

CREATE TABLE cohorts (
    workspace_id   uuid        NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    -- Internal id: memberships and bitmaps reference it instead of (partner, cohort_id).
    id             bigint      NOT NULL,
    partner        text        NOT NULL REFERENCES partners (name) ON DELETE CASCADE,
    cohort_id      text        NOT NULL,
    name           text        NOT NULL,
    -- Maintained in the same transaction as every membership change, so it is exact.
    member_count   bigint      NOT NULL DEFAULT 0 CHECK (member_count >= 0),
    -- Entries in the cohort's import log: the id of its latest entry.
    log_entries    bigint      NOT NULL DEFAULT 0,
    -- Rows of cohort_unmatched for it (a count over them cost more than the import).
    unmatched_listed bigint    NOT NULL DEFAULT 0,
    -- Ids in the cohort's rows of cohort_bit_changes: when an import would take it past
    -- 8,192, that import writes them into the blocks.
    bits_pending   integer     NOT NULL DEFAULT 0 CHECK (bits_pending >= 0),
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    last_import_at timestamptz,
    PRIMARY KEY (workspace_id, id),
    UNIQUE (workspace_id, partner, cohort_id)
);
-- The segment builder's dropdown: ordered by name then id.
CREATE INDEX cohorts_name_idx ON cohorts (workspace_id, partner, name, cohort_id);

CREATE TABLE cohort_memberships (
    workspace_id uuid        NOT NULL,
    cohort_ref   bigint      NOT NULL,
    user_id      bigint      NOT NULL,
    added_at     timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, cohort_ref, user_id)
);

-- Each cohort's members also as a bitmap over internal user ids, in the blocks of
-- `user_bitmaps`, written by the same statements as the memberships: a filter combining
-- cohorts is a few bitwise operations per 8,192 users instead of a join over rows.
-- Blocks exist only where a cohort has had a member. Half of each page is left free, so
-- rewriting a block (every import rewrites those its users fall in) stays on its page: a
-- HOT update, with no new index entry.
CREATE TABLE cohort_bitmaps (
    workspace_id uuid      NOT NULL,
    cohort_ref   bigint    NOT NULL,
    block        bigint    NOT NULL,
    bits         bit(8192) NOT NULL,
    PRIMARY KEY (workspace_id, cohort_ref, block),
    FOREIGN KEY (workspace_id, cohort_ref) REFERENCES cohorts (workspace_id, id) ON DELETE CASCADE
) WITH (fillfactor = 50);

-- Changes to a cohort's bitmap not yet written into its blocks: one row per import (and
-- per user deletion) with the ids it set and cleared. An import's users fall in most of
-- a cohort's blocks, and rewriting a block logs most of its 1 KiB, so the changes of
-- several imports are written into the blocks together, each block once
-- (src/store/bit_changes.rs). Readers of the bitmaps apply these rows to the blocks they
-- read, in the same snapshot, so what they answer is exact.
CREATE TABLE cohort_bit_changes (
    workspace_id uuid     NOT NULL,
    cohort_ref   bigint   NOT NULL,
    -- The change's entry in the cohort's import log: changes apply in this order.
    import_id    bigint   NOT NULL,
    set_ids      bigint[] NOT NULL,
    cleared_ids  bigint[] NOT NULL,
    PRIMARY KEY (workspace_id, cohort_ref, import_id),
    FOREIGN KEY (workspace_id, cohort_ref) REFERENCES cohorts (workspace_id, id) ON DELETE CASCADE
);
-- Compressed in the row rather than moved to the TOAST table: a request's 1,000 ids
-- compress to a few KiB, and a row kept in one place is one write and one read.
ALTER TABLE cohort_bit_changes ALTER COLUMN set_ids SET STORAGE MAIN, ALTER COLUMN cleared_ids SET STORAGE MAIN;

-- The import log: every change to a cohort's membership, each accepted import and each
-- user deletion that took a member away, so that its sum of added - removed is the
-- member count.
CREATE TABLE cohort_imports (
    workspace_id       uuid        NOT NULL,
    cohort_ref         bigint      NOT NULL,
    -- 1, 2, ... within the cohort (cohorts.log_entries).
    id                 bigint      NOT NULL,
    -- Who asked: 'braze', 'mixpanel_members', 'mixpanel_add_members',
    -- 'mixpanel_remove_members', 'amplitude', 'replace' (the operator), or 'user_deletion'.
    kind               text        NOT NULL,
    request_id         text        NOT NULL,
    received_at        timestamptz NOT NULL,
    added              integer     NOT NULL,
    removed            integer     NOT NULL,
    unchanged          integer     NOT NULL,
    -- Members that matched nobody, by reason: no user has the reference, or it is a
    -- device id of an identified user (device ids match anonymous users only).
    unmatched_unknown           integer NOT NULL,
    unmatched_identified_device integer NOT NULL,
    member_count_after bigint      NOT NULL,
    PRIMARY KEY (workspace_id, cohort_ref, id),
    FOREIGN KEY (workspace_id, cohort_ref) REFERENCES cohorts (workspace_id, id) ON DELETE CASCADE
);
-- The workspace's recent changes across cohorts, newest first.
CREATE INDEX cohort_imports_received_idx ON cohort_imports (workspace_id, received_at, cohort_ref, id);

-- Identifiers sent for a cohort that matched nobody, for operators: one row per
-- identifier (its kind, the alias label or '', the value) with why it matched nobody
-- and when it was seen. At most 10,000 per cohort (cohorts.unmatched_listed); rows not
-- seen for UNMATCHED_RETENTION_DAYS are not listed, and are dropped when the cohort has
-- no room left. An identifier that matches a user by now is left out of the list when
-- it is read.
CREATE TABLE cohort_unmatched (
    workspace_id uuid        NOT NULL,
    cohort_ref   bigint      NOT NULL,
    kind         text        NOT NULL,
    alias_label  text        NOT NULL,
    value        text        NOT NULL,
    reason       text        NOT NULL,
    first_seen   timestamptz NOT NULL,
    last_seen    timestamptz NOT NULL,
    times_seen   bigint      NOT NULL,
    PRIMARY KEY (workspace_id, cohort_ref, kind, alias_label, value),
    FOREIGN KEY (workspace_id, cohort_ref) REFERENCES cohorts (workspace_id, id) ON DELETE CASCADE
);
CREATE INDEX cohort_unmatched_last_seen_idx ON cohort_unmatched (workspace_id, cohort_ref, last_seen);
