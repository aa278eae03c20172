-- Rate-limit memory (issue 15): a provider rate-limited one connection (connection_id) or the
-- whole integration (connection_id = '') until until_ms (ms since the epoch). Every replica on
-- the store reads the running ones, so a 429 seen by one silences the others too.
CREATE TABLE ratelimit_cooldowns (
    integration TEXT NOT NULL,
    connection_id TEXT NOT NULL,
    until_ms BIGINT NOT NULL,
    PRIMARY KEY (integration, connection_id)
);
