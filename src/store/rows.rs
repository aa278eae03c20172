//! Rows in and out, for both SQL stores: the column lists, the row decoders and the
//! connect-flow statements (macros, expanded inside `sql_store!`, which defines `Db`, `Pool`
//! and `q`).
//!
//! Owns how a stored row reads back. Must not write connections or the transition log.

pub(super) const COLUMNS: &str = "id, integration, status, key_id, access_token, refresh_token, expires_at, scopes, metadata, \
    version, lease_owner, lease_until, refresh_failures, next_attempt_at, last_error_class, last_error_status, \
    last_error_description, last_error_at, created_at, updated_at, kind, secret";

/// The [`super::MINTED`] kinds as an SQL list (`'a', 'b'`): constants, never input.
pub(crate) fn minted_kinds() -> String {
    super::MINTED
        .iter()
        .map(|k| format!("'{k}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) const DELIVERY_COLUMNS: &str =
    "d.event_seq, e.id, e.type, e.connection_id, e.integration, e.payload, d.endpoint, d.status, \
    d.attempts, d.window_start, d.next_attempt_at, d.last_error, d.delivered_at, e.created_at";

/// Defines `from_row`, `delivery_from_row`, `transition_from_row` and `count_from_row` for
/// one driver's row type.
macro_rules! row_decoders {
    () => {
        fn delivery_from_row(r: &DbRow) -> Result<Delivery, StoreError> {
            Ok(Delivery {
                event_seq: r.try_get("event_seq").map_err(db)?,
                id: r.try_get("id").map_err(db)?,
                kind: r.try_get("type").map_err(db)?,
                connection_id: r.try_get("connection_id").map_err(db)?,
                integration: r.try_get("integration").map_err(db)?,
                payload: r.try_get("payload").map_err(db)?,
                endpoint: r.try_get("endpoint").map_err(db)?,
                status: r.try_get("status").map_err(db)?,
                attempts: r.try_get("attempts").map_err(db)?,
                window_start: r.try_get("window_start").map_err(db)?,
                next_attempt_at: r.try_get("next_attempt_at").map_err(db)?,
                last_error: r.try_get("last_error").map_err(db)?,
                delivered_at: r.try_get("delivered_at").map_err(db)?,
                created_at: r.try_get("created_at").map_err(db)?,
            })
        }

        fn from_row(r: &DbRow) -> Result<ConnectionRow, StoreError> {
            let id: String = r.try_get("id").map_err(db)?;
            let corrupt = |what: &str| StoreError::Corrupt {
                id: id.clone(),
                what: what.to_string(),
            };
            let status: String = r.try_get("status").map_err(db)?;
            let metadata: String = r.try_get("metadata").map_err(db)?;
            let last_error = match r
                .try_get::<Option<String>, _>("last_error_class")
                .map_err(db)?
            {
                None => None,
                Some(class) => Some(LastError {
                    class,
                    provider_status: r
                        .try_get::<Option<i64>, _>("last_error_status")
                        .map_err(db)?
                        .map(|s| s as u16),
                    description: r.try_get("last_error_description").map_err(db)?,
                    at: r
                        .try_get::<Option<i64>, _>("last_error_at")
                        .map_err(db)?
                        .unwrap_or(0),
                }),
            };
            Ok(ConnectionRow {
                integration: r.try_get("integration").map_err(db)?,
                status: Status::parse(&status).ok_or_else(|| corrupt("unknown status"))?,
                key_id: r.try_get("key_id").map_err(db)?,
                access_token: r.try_get("access_token").map_err(db)?,
                refresh_token: r.try_get("refresh_token").map_err(db)?,
                kind: r.try_get("kind").map_err(db)?,
                secret: r.try_get("secret").map_err(db)?,
                expires_at: r.try_get("expires_at").map_err(db)?,
                scopes: r.try_get("scopes").map_err(db)?,
                metadata: serde_json::from_str(&metadata)
                    .map_err(|_| corrupt("metadata is not JSON"))?,
                version: r.try_get("version").map_err(db)?,
                lease_owner: r.try_get("lease_owner").map_err(db)?,
                lease_until: r.try_get("lease_until").map_err(db)?,
                refresh_failures: r.try_get("refresh_failures").map_err(db)?,
                next_attempt_at: r.try_get("next_attempt_at").map_err(db)?,
                last_error,
                created_at: r.try_get("created_at").map_err(db)?,
                updated_at: r.try_get("updated_at").map_err(db)?,
                id,
            })
        }

        fn transition_from_row(r: &DbRow) -> Result<TransitionRecord, StoreError> {
            let from: Option<String> = r.try_get("from_status").map_err(db)?;
            let to: String = r.try_get("to_status").map_err(db)?;
            let detail: String = r.try_get("detail").map_err(db)?;
            Ok(TransitionRecord {
                seq: r.try_get("seq").map_err(db)?,
                connection_id: r.try_get("connection_id").map_err(db)?,
                integration: r.try_get("integration").map_err(db)?,
                from_status: from.as_deref().and_then(Status::parse),
                to_status: Status::parse(&to).ok_or_else(|| unknown_status(&to))?,
                cause: r.try_get("cause").map_err(db)?,
                detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
                at: r.try_get("at").map_err(db)?,
            })
        }

        fn count_from_row(r: &DbRow) -> Result<(String, Status, i64), StoreError> {
            let status: String = r.try_get("status").map_err(db)?;
            Ok((
                r.try_get("integration").map_err(db)?,
                Status::parse(&status).ok_or_else(|| unknown_status(&status))?,
                r.try_get("n").map_err(db)?,
            ))
        }

        fn unknown_status(status: &str) -> StoreError {
            StoreError::new(ErrorKind::Corrupt, format!("unknown status {status}"))
        }
    };
}

pub(super) use row_decoders;

/// Defines the connect-flow statements (`put_state`, `take_state`, `use_link`) for one driver.
macro_rules! connect_statements {
    () => {
        async fn put_state(pool: &Pool, s: &ConnectState, now: i64) -> Result<(), StoreError> {
            // Expired states are of no use to anyone: sweep them on the way.
            sqlx::query(&q("DELETE FROM connect_states WHERE expires_at < ?"))
                .bind(now - 86_400_000)
                .execute(pool)
                .await
                .map_err(db)?;
            sqlx::query(&q(
                "INSERT INTO connect_states (state_hash, integration, connection_id, key_id, verifier, \
                 browser_hash, detail, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ))
            .bind(&s.hash)
            .bind(&s.integration)
            .bind(&s.connection_id)
            .bind(&s.key_id)
            .bind(&s.verifier)
            .bind(&s.browser)
            .bind(s.detail.to_string())
            .bind(s.created_at)
            .bind(s.expires_at)
            .execute(pool)
            .await
            .map_err(db)?;
            Ok(())
        }

        async fn take_state(
            pool: &Pool,
            hash: &str,
            browser: Option<&str>,
            now: i64,
        ) -> Result<Taken, StoreError> {
            let Some(r) = sqlx::query(&q(
                "SELECT state_hash, integration, connection_id, key_id, verifier, browser_hash, detail, \
                 created_at, expires_at, used_at FROM connect_states WHERE state_hash = ?",
            ))
            .bind(hash)
            .fetch_optional(pool)
            .await
            .map_err(db)?
            else {
                return Ok(Taken::Unknown);
            };
            let detail: String = r.try_get("detail").map_err(db)?;
            let state = ConnectState {
                hash: r.try_get("state_hash").map_err(db)?,
                integration: r.try_get("integration").map_err(db)?,
                connection_id: r.try_get("connection_id").map_err(db)?,
                key_id: r.try_get("key_id").map_err(db)?,
                verifier: r.try_get("verifier").map_err(db)?,
                browser: r.try_get("browser_hash").map_err(db)?,
                detail: serde_json::from_str(&detail).unwrap_or_default(),
                created_at: r.try_get("created_at").map_err(db)?,
                expires_at: r.try_get("expires_at").map_err(db)?,
            };
            if r.try_get::<Option<i64>, _>("used_at").map_err(db)?.is_some() {
                return Ok(Taken::Used(state));
            }
            // The binding never changes once written, so checking it before the gate is safe;
            // the gate repeats it anyway.
            if state.browser.is_some() && state.browser.as_deref() != browser {
                return Ok(Taken::Foreign(state));
            }
            // The single-use gate: exactly one caller flips used_at, whatever the race.
            let n = sqlx::query(&q(
                "UPDATE connect_states SET used_at = ? WHERE state_hash = ? AND used_at IS NULL \
                 AND (browser_hash IS NULL OR browser_hash = ?)",
            ))
            .bind(now)
            .bind(hash)
            .bind(browser)
            .execute(pool)
            .await
            .map_err(db)?
            .rows_affected();
            Ok(if n == 1 {
                Taken::Fresh(state)
            } else {
                Taken::Used(state)
            })
        }

        async fn use_link(
            pool: &Pool,
            hash: &str,
            expires_at: i64,
            now: i64,
        ) -> Result<bool, StoreError> {
            // A link past its expiry is refused before it gets here, so its row can go.
            sqlx::query(&q("DELETE FROM connect_links_used WHERE expires_at < ?"))
                .bind(now)
                .execute(pool)
                .await
                .map_err(db)?;
            let n = sqlx::query(&q(
                "INSERT INTO connect_links_used (link_hash, expires_at, used_at) VALUES (?, ?, ?) \
                 ON CONFLICT (link_hash) DO NOTHING",
            ))
            .bind(hash)
            .bind(expires_at)
            .bind(now)
            .execute(pool)
            .await
            .map_err(db)?
            .rows_affected();
            Ok(n == 1)
        }
    };
}

pub(super) use connect_statements;
