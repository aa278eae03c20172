-- Credential kinds (issue 13): what a connection holds. `oauth2` rows keep their tokens in
-- access_token / refresh_token as before; every other kind keeps its long-lived secret (API key,
-- Basic login, client credentials, private key) sealed in `secret`, and a token grantd mints
-- from it in access_token.
ALTER TABLE connections ADD COLUMN kind TEXT NOT NULL DEFAULT 'oauth2';
ALTER TABLE connections ADD COLUMN secret BYTEA;
