-- The connect flow. An authorization request's `state` (stored as its SHA-256; the PKCE
-- verifier sealed like a token) is single-use: `used_at` is set by exactly one callback.
CREATE TABLE connect_states (
    state_hash     TEXT PRIMARY KEY,
    integration    TEXT NOT NULL,
    connection_id  TEXT NOT NULL,
    key_id         TEXT NOT NULL,
    verifier       BYTEA,
    detail         TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    used_at        BIGINT
);
CREATE INDEX connect_states_expiry ON connect_states (expires_at);

-- Connect links are sealed, self-contained tokens; only their use is recorded (single use).
CREATE TABLE connect_links_used (
    link_hash   TEXT PRIMARY KEY,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT NOT NULL
);
CREATE INDEX connect_links_used_expiry ON connect_links_used (expires_at);
