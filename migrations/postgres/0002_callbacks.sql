-- The callback outbox: events are written in the same transaction as the status change that
-- causes them; one delivery row per (event, endpoint). Times are unix milliseconds.
CREATE TABLE events (
    seq            BIGSERIAL PRIMARY KEY,
    id             TEXT NOT NULL UNIQUE,
    type           TEXT NOT NULL,
    connection_id  TEXT,
    integration    TEXT NOT NULL,
    payload        TEXT NOT NULL,
    created_at     BIGINT NOT NULL
);

CREATE TABLE deliveries (
    event_seq        BIGINT NOT NULL REFERENCES events (seq),
    endpoint         TEXT NOT NULL,
    status           TEXT NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    window_start     BIGINT NOT NULL,
    next_attempt_at  BIGINT NOT NULL,
    last_error       TEXT,
    delivered_at     BIGINT,
    PRIMARY KEY (event_seq, endpoint)
);
CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at);

-- An integration whose client credentials are being rejected: one config_error event per episode.
CREATE TABLE config_episodes (
    integration  TEXT PRIMARY KEY,
    since        BIGINT NOT NULL
);
