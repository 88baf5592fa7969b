-- knockgate controller schema, SQLite flavour. Timestamps are i64 unix
-- milliseconds (UTC); JSON columns hold text.

CREATE TABLE config_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO config_version (id, version) VALUES (1, 0);

CREATE TABLE users (
    name            TEXT PRIMARY KEY,
    groups          TEXT NOT NULL,              -- JSON array of group names
    disabled        BOOLEAN NOT NULL DEFAULT FALSE,
    created_at      INTEGER NOT NULL,
    spa_key         BLOB NOT NULL CHECK (length(spa_key) = 32),
    fwknop_key      BLOB NOT NULL CHECK (length(fwknop_key) = 32),
    fwknop_hmac_key BLOB NOT NULL CHECK (length(fwknop_hmac_key) = 64),
    fwknop_hmac     TEXT NOT NULL DEFAULT 'sha256',
    rotating_secret BLOB NOT NULL CHECK (length(rotating_secret) = 32),
    key_version     INTEGER NOT NULL DEFAULT 1
);

CREATE TABLE agents (
    name             TEXT PRIMARY KEY,
    labels           TEXT NOT NULL,             -- JSON object string -> string
    address          TEXT,
    created_at       INTEGER NOT NULL,
    enrolled_at      INTEGER,
    cert_fingerprint TEXT,
    revoked_at       INTEGER,
    last_seen        INTEGER,
    applied_version  INTEGER NOT NULL DEFAULT 0,
    connected        BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE enrol_tokens (
    token_hash BLOB PRIMARY KEY CHECK (length(token_hash) = 32),
    agent      TEXT NOT NULL REFERENCES agents (name) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
);
CREATE INDEX enrol_tokens_agent ON enrol_tokens (agent);

CREATE TABLE policies (
    name       TEXT PRIMARY KEY,
    spec       TEXT NOT NULL,                   -- JSON
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE grants (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    agent            TEXT NOT NULL,
    agent_ref        TEXT NOT NULL,
    user_name        TEXT,
    src              TEXT NOT NULL,
    proto            TEXT NOT NULL,
    port             INTEGER NOT NULL CHECK (port BETWEEN 0 AND 65535),
    policy           TEXT NOT NULL,
    opened_at        INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    closed_at        INTEGER,
    close_reason     TEXT,
    revoke_requested BOOLEAN NOT NULL DEFAULT FALSE,
    UNIQUE (agent, agent_ref)
);
CREATE INDEX grants_user ON grants (user_name);
CREATE INDEX grants_open ON grants (expires_at) WHERE closed_at IS NULL;

CREATE TABLE audit (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        INTEGER NOT NULL,
    agent     TEXT,
    agent_seq INTEGER,
    kind      TEXT NOT NULL,
    user_name TEXT,
    src       TEXT,
    detail    TEXT NOT NULL,                    -- JSON
    UNIQUE (agent, agent_seq)
);
CREATE INDEX audit_at ON audit (at);
CREATE INDEX audit_kind ON audit (kind, id);
CREATE INDEX audit_user ON audit (user_name, id);
