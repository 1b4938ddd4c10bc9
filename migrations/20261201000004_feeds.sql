-- What the webhook protocols need besides the cohorts: how each partner's members are
-- matched to users, the messages already applied, and the pages of full replaces still
-- arriving. On Citus every table here is distributed by workspace_id, co-located with
-- the cohorts.

-- A partner's matching rules in a workspace, as the API writes them:
-- [{"field": "email", "as": "alias", "alias_label": "email"}, ...]. No row: the
-- protocol's default.
CREATE TABLE matching_rules (
    workspace_id uuid        NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    partner      text        NOT NULL REFERENCES partners (name) ON DELETE CASCADE,
    rules        jsonb       NOT NULL,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, partner)
);

-- Messages applied, by the id their protocol gives them (Amplitude's message_id), with
-- their outcome: a message delivered again answers the same and changes nothing. Kept
-- at least 7 days.
CREATE TABLE delivered_messages (
    workspace_id                uuid        NOT NULL,
    partner                     text        NOT NULL,
    message_id                  text        NOT NULL,
    received_at                 timestamptz NOT NULL,
    added                       integer     NOT NULL,
    removed                     integer     NOT NULL,
    unchanged                   integer     NOT NULL,
    unmatched_unknown           integer     NOT NULL,
    unmatched_identified_device integer     NOT NULL,
    PRIMARY KEY (workspace_id, partner, message_id)
);
CREATE INDEX delivered_messages_received_idx ON delivered_messages (workspace_id, partner, received_at);

-- A full replace sent in pages (Mixpanel's `members` session): the pages kept aside
-- until the last one arrives, when the cohort's membership becomes their union. A
-- completed session is remembered, so a page delivered again after it changes nothing;
-- sessions are dropped, completed or not, once older than MEMBER_SESSION_TTL_SECS.
CREATE TABLE member_sessions (
    workspace_id uuid        NOT NULL,
    partner      text        NOT NULL,
    cohort_id    text        NOT NULL,
    session_id   text        NOT NULL,
    total_pages  integer     NOT NULL CHECK (total_pages >= 1),
    started_at   timestamptz NOT NULL,
    completed_at timestamptz,
    PRIMARY KEY (workspace_id, partner, cohort_id, session_id)
);
CREATE INDEX member_sessions_started_idx ON member_sessions (workspace_id, partner, started_at);

CREATE TABLE member_session_pages (
    workspace_id uuid        NOT NULL,
    partner      text        NOT NULL,
    cohort_id    text        NOT NULL,
    session_id   text        NOT NULL,
    page         integer     NOT NULL,
    -- The page's `members` array, as received (its members are matched when the session
    -- completes, with the rules of that moment).
    members      text        NOT NULL,
    received_at  timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, partner, cohort_id, session_id, page),
    FOREIGN KEY (workspace_id, partner, cohort_id, session_id)
        REFERENCES member_sessions (workspace_id, partner, cohort_id, session_id) ON DELETE CASCADE
);

-- The last requests of a workspace's partner answered 4xx after its key was accepted,
-- so an operator sees what a partner's UI complains about. At most 100 per workspace
-- and partner: each new one drops the oldest beyond that.
CREATE TABLE partner_rejections (
    workspace_id uuid        NOT NULL,
    partner      text        NOT NULL,
    received_at  timestamptz NOT NULL,
    request_id   text        NOT NULL,
    route        text        NOT NULL,
    status       integer     NOT NULL,
    message      text        NOT NULL,
    PRIMARY KEY (workspace_id, partner, received_at, request_id)
);
