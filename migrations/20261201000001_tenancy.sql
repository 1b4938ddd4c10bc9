-- Tenancy and credentials: the global tables. On Citus they are reference tables (a
-- copy on every node), so every workspace table can join or reference them locally.
--
-- Secrets are never stored: only their SHA-256 hash and a short, readable prefix.

CREATE TABLE workspaces (
    id         uuid        PRIMARY KEY,
    name       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE partners (
    name       text        PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Keys a partner (Kubit, Segment, ...) sends as `partner_api_key`. Not workspace-owned.
CREATE TABLE partner_api_keys (
    id           uuid        PRIMARY KEY,
    partner      text        NOT NULL REFERENCES partners (name) ON DELETE CASCADE,
    key_hash     bytea       NOT NULL UNIQUE,
    prefix       text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    last_used_at timestamptz
);
CREATE INDEX partner_api_keys_partner_idx ON partner_api_keys (partner, created_at);

-- Keys a workspace hands to one partner, sent by the partner as `client_secret`. Global
-- although workspace-owned: the partner endpoints know only the secret, so
-- authentication looks its hash up across workspaces.
CREATE TABLE data_import_keys (
    workspace_id uuid        NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    id           uuid        NOT NULL,
    partner      text        NOT NULL REFERENCES partners (name) ON DELETE CASCADE,
    key_hash     bytea       NOT NULL,
    prefix       text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    last_used_at timestamptz,
    PRIMARY KEY (workspace_id, id),
    UNIQUE (workspace_id, key_hash)
);
-- Not unique on its own: SHA-256 of a 192-bit random secret does not collide.
CREATE INDEX data_import_keys_key_hash_idx ON data_import_keys (key_hash);

-- REST API keys for the segment filter API; global for the same reason.
CREATE TABLE api_keys (
    workspace_id uuid        NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    id           uuid        NOT NULL,
    name         text        NOT NULL,
    scopes       text[]      NOT NULL,
    key_hash     bytea       NOT NULL,
    prefix       text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    last_used_at timestamptz,
    PRIMARY KEY (workspace_id, id),
    UNIQUE (workspace_id, key_hash)
);
CREATE INDEX api_keys_key_hash_idx ON api_keys (key_hash);
