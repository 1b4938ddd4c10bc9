-- The user store. Users are matched by external_id, by alias (label + name), or by
-- device_id; the internal bigint id keeps memberships and indexes compact, braze_id is
-- the public identifier.

CREATE TABLE users (
    workspace_id uuid        NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    id           bigint      GENERATED ALWAYS AS IDENTITY,
    braze_id     uuid        NOT NULL,
    external_id  text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, id),
    UNIQUE (workspace_id, braze_id),
    UNIQUE (workspace_id, external_id)
);

CREATE TABLE user_aliases (
    workspace_id uuid   NOT NULL,
    alias_label  text   NOT NULL,
    alias_name   text   NOT NULL,
    user_id      bigint NOT NULL,
    PRIMARY KEY (workspace_id, alias_label, alias_name),
    FOREIGN KEY (workspace_id, user_id) REFERENCES users (workspace_id, id) ON DELETE CASCADE
);
CREATE INDEX user_aliases_user_idx ON user_aliases (workspace_id, user_id);

CREATE TABLE user_device_ids (
    workspace_id uuid   NOT NULL,
    device_id    text   NOT NULL,
    user_id      bigint NOT NULL,
    PRIMARY KEY (workspace_id, device_id),
    FOREIGN KEY (workspace_id, user_id) REFERENCES users (workspace_id, id) ON DELETE CASCADE
);
CREATE INDEX user_device_ids_user_idx ON user_device_ids (workspace_id, user_id);
