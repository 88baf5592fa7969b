-- One-time SPA keys: every claim of key `counter` of a user, by the agent that
-- won it (online) or reported burning it (offline). The primary key is what
-- makes a key single-use fleet-wide: of concurrent claims (on any replica)
-- exactly one INSERT ... ON CONFLICT DO NOTHING inserts. A user's highest
-- claimed counter is where the agents' stock of keys starts.
CREATE TABLE otk_claims (
    user_name  TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    counter    BIGINT NOT NULL CHECK (counter >= 0),
    agent      TEXT NOT NULL,
    src        TEXT NOT NULL,
    at         BIGINT NOT NULL,
    offline    BOOLEAN NOT NULL,
    claimed_at BIGINT NOT NULL,
    PRIMARY KEY (user_name, counter)
);
