-- Partner cohorts, their memberships and the log of every accepted import.

CREATE TABLE cohorts (
    workspace_id   uuid        NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    -- Internal id: memberships reference it instead of (partner, cohort_id) text.
    id             bigint      GENERATED ALWAYS AS IDENTITY,
    partner        text        NOT NULL REFERENCES partners (name) ON DELETE CASCADE,
    cohort_id      text        NOT NULL,
    name           text        NOT NULL,
    -- Maintained in the same transaction as every membership change, so it is exact.
    member_count   bigint      NOT NULL DEFAULT 0 CHECK (member_count >= 0),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
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
    added_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, cohort_ref, user_id),
    FOREIGN KEY (workspace_id, cohort_ref) REFERENCES cohorts (workspace_id, id) ON DELETE CASCADE,
    FOREIGN KEY (workspace_id, user_id) REFERENCES users (workspace_id, id) ON DELETE CASCADE
);
-- A user's cohorts (profile, per-user checks) and the user side of foreign-key cascades.
CREATE INDEX cohort_memberships_user_idx ON cohort_memberships (workspace_id, user_id, cohort_ref);

CREATE TABLE cohort_imports (
    workspace_id       uuid        NOT NULL,
    id                 bigint      GENERATED ALWAYS AS IDENTITY,
    cohort_ref         bigint      NOT NULL,
    request_id         text        NOT NULL,
    received_at        timestamptz NOT NULL DEFAULT now(),
    added              integer     NOT NULL,
    removed            integer     NOT NULL,
    unchanged          integer     NOT NULL,
    unmatched          integer     NOT NULL,
    member_count_after bigint      NOT NULL,
    PRIMARY KEY (workspace_id, id),
    FOREIGN KEY (workspace_id, cohort_ref) REFERENCES cohorts (workspace_id, id) ON DELETE CASCADE
);
CREATE INDEX cohort_imports_cohort_idx ON cohort_imports (workspace_id, cohort_ref, id DESC);
