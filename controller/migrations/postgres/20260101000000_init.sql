-- knockgate controller schema, PostgreSQL flavour. Timestamps are i64 unix
-- milliseconds (UTC), like on SQLite, so both backends share one semantics.

CREATE TABLE config_version (
    id      SMALLINT PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO config_version (id, version) VALUES (1, 0);

-- Replicas sharing this database LISTEN on knockgate_config; the notification
-- is sent when the bumping transaction commits, never for a rolled-back one.
CREATE FUNCTION knockgate_notify_config_version() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('knockgate_config', NEW.version::text);
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER config_version_notify AFTER UPDATE ON config_version
    FOR EACH ROW EXECUTE FUNCTION knockgate_notify_config_version();

CREATE TABLE users (
    name            TEXT PRIMARY KEY,
    groups          JSONB NOT NULL,
    disabled        BOOLEAN NOT NULL DEFAULT FALSE,
    created_at      BIGINT NOT NULL,
    spa_key         BYTEA NOT NULL CHECK (length(spa_key) = 32),
    fwknop_key      BYTEA NOT NULL CHECK (length(fwknop_key) = 32),
    fwknop_hmac_key BYTEA NOT NULL CHECK (length(fwknop_hmac_key) = 64),
    fwknop_hmac     TEXT NOT NULL DEFAULT 'sha256',
    rotating_secret BYTEA NOT NULL CHECK (length(rotating_secret) = 32),
    key_version     BIGINT NOT NULL DEFAULT 1
);

CREATE TABLE agents (
    name             TEXT PRIMARY KEY,
    labels           JSONB NOT NULL,
    address          TEXT,
    created_at       BIGINT NOT NULL,
    enrolled_at      BIGINT,
    cert_fingerprint TEXT,
    revoked_at       BIGINT,
    last_seen        BIGINT,
    applied_version  BIGINT NOT NULL DEFAULT 0,
    connected        BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE enrol_tokens (
    token_hash BYTEA PRIMARY KEY CHECK (length(token_hash) = 32),
    agent      TEXT NOT NULL REFERENCES agents (name) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX enrol_tokens_agent ON enrol_tokens (agent);

CREATE TABLE policies (
    name       TEXT PRIMARY KEY,
    spec       JSONB NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE grants (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent            TEXT NOT NULL,
    agent_ref        TEXT NOT NULL,
    user_name        TEXT,
    src              TEXT NOT NULL,
    proto            TEXT NOT NULL,
    port             BIGINT NOT NULL CHECK (port BETWEEN 0 AND 65535),
    policy           TEXT NOT NULL,
    opened_at        BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,
    closed_at        BIGINT,
    close_reason     TEXT,
    revoke_requested BOOLEAN NOT NULL DEFAULT FALSE,
    UNIQUE (agent, agent_ref)
);
CREATE INDEX grants_user ON grants (user_name);
CREATE INDEX grants_open ON grants (expires_at) WHERE closed_at IS NULL;

CREATE TABLE audit (
    id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        BIGINT NOT NULL,
    agent     TEXT,
    agent_seq BIGINT,
    kind      TEXT NOT NULL,
    user_name TEXT,
    src       TEXT,
    detail    JSONB NOT NULL,
    UNIQUE (agent, agent_seq)
);
CREATE INDEX audit_at ON audit (at);
CREATE INDEX audit_kind ON audit (kind, id);
CREATE INDEX audit_user ON audit (user_name, id);
