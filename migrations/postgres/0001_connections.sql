-- Connections: one row per OAuth grant. Tokens are AEAD ciphertext (see src/grants/crypto.rs);
-- key_id names the key that sealed them. Times are unix milliseconds.
CREATE TABLE connections (
    id                     TEXT PRIMARY KEY,
    integration            TEXT NOT NULL,
    status                 TEXT NOT NULL,
    key_id                 TEXT NOT NULL,
    access_token           BYTEA,
    refresh_token          BYTEA,
    expires_at             BIGINT,
    scopes                 TEXT NOT NULL DEFAULT '',
    metadata               TEXT NOT NULL DEFAULT '{}',
    version                BIGINT NOT NULL,
    lease_owner            TEXT,
    lease_until            BIGINT,
    refresh_failures       BIGINT NOT NULL DEFAULT 0,
    next_attempt_at        BIGINT,
    last_error_class       TEXT,
    last_error_status      BIGINT,
    last_error_description TEXT,
    last_error_at          BIGINT,
    created_at             BIGINT NOT NULL,
    updated_at             BIGINT NOT NULL
);
CREATE INDEX connections_by_integration ON connections (integration, status);
CREATE INDEX connections_by_expiry ON connections (status, expires_at);

-- Every status change, written in the same transaction as the change (callbacks read this).
CREATE TABLE transitions (
    seq            BIGSERIAL PRIMARY KEY,
    connection_id  TEXT NOT NULL,
    integration    TEXT NOT NULL,
    from_status    TEXT,
    to_status      TEXT NOT NULL,
    cause          TEXT NOT NULL,
    detail         TEXT NOT NULL DEFAULT '{}',
    at             BIGINT NOT NULL
);
CREATE INDEX transitions_by_connection ON transitions (connection_id, seq);
