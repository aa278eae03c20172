-- A flow started from a connect link on grantd's public listener is bound to the browser that
-- opened the link (RFC 9700 §4.7.1): `browser_hash` is the SHA-256 of a random cookie set on
-- that browser, and a callback without it is refused (the state stays unused). NULL for flows
-- the app started through the admin API: grantd never saw that browser, the app binds them.
ALTER TABLE connect_states ADD COLUMN browser_hash TEXT;
