//! The embedded store: one SQLite file in WAL mode, shared safely by several grantd processes
//! (writes are single-statement CAS inside short transactions; `busy_timeout` waits for locks).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row as _, SqlitePool};

use super::rows::{db, minted_kinds, COLUMNS, DELIVERY_COLUMNS};
use super::{
    ConnectState, Delivery, DeliveryResult, LastError, ListQuery, Outbox, Row, Status, Store,
    StoreError, Taken, Transition, TransitionRecord,
};
use crate::callbacks::events::{self, Event};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

pub struct SqliteStore {
    pool: SqlitePool,
    outbox: Outbox,
}

impl SqliteStore {
    /// Opens (creating if needed) the file and applies pending migrations.
    pub async fn open(
        path: &Path,
        busy_timeout: Duration,
        outbox: Outbox,
    ) -> Result<SqliteStore, StoreError> {
        create_private(path)?;
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(db)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a rotated refresh token that was acknowledged survives a power cut too.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(busy_timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Db(format!("cannot open {}: {e}", path.display())))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Db(format!("migrating {}: {e}", path.display())))?;
        Ok(SqliteStore { pool, outbox })
    }
}

/// Creates the database file readable and writable by its owner only (0600), if it does not
/// exist yet: SQLite would create it 0644, and it gives the -wal and -shm files the main file's
/// mode. An existing file keeps its mode; a warning says when others can read it.
fn create_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match created {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mode = std::fs::metadata(path).map_or(0, |m| m.permissions().mode());
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "the store file is accessible to other users (it holds sealed tokens and connection metadata): chmod 600 it and its -wal and -shm files");
            }
            Ok(())
        }
        Err(e) => Err(db(format!("cannot create {}: {e}", path.display()))),
    }
}

super::rows::row_decoders!(SqliteRow);
super::rows::connect_statements!(SqlitePool, std::string::ToString::to_string);

/// Writes the transition and the events it causes, in the caller's transaction.
async fn record(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    outbox: &Outbox,
    row: &Row,
    t: &Transition,
) -> Result<(), StoreError> {
    let now = row.updated_at;
    let down_since: Option<i64> = match t.from {
        Some(from) => sqlx::query_scalar(
            "SELECT at FROM transitions WHERE connection_id = ? AND to_status = ? ORDER BY seq DESC LIMIT 1",
        )
        .bind(&row.id)
        .bind(from.as_str())
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?,
        None => None,
    };
    let mut out: Vec<Event> = events::for_transition(row, t, now, down_since)
        .into_iter()
        .collect();
    out.extend(config_episode(tx, row, t, now).await?);
    for event in &out {
        write_event(tx, outbox, event, now).await?;
    }
    record_transition(tx, row, t).await
}

/// `config_error` once per integration per episode; `config_recovered` when its last
/// connection leaves `config_error`.
async fn config_episode(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    row: &Row,
    t: &Transition,
    now: i64,
) -> Result<Option<Event>, StoreError> {
    let entering = t.to == Status::ConfigError && t.from != Some(Status::ConfigError);
    let leaving = t.from == Some(Status::ConfigError) && t.to != Status::ConfigError;
    if entering {
        let started =
            sqlx::query("INSERT OR IGNORE INTO config_episodes (integration, since) VALUES (?, ?)")
                .bind(&row.integration)
                .bind(now)
                .execute(&mut **tx)
                .await
                .map_err(db)?
                .rows_affected();
        if started == 1 {
            let affected: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM connections WHERE integration = ? AND status = 'config_error'")
                .bind(&row.integration)
                .fetch_one(&mut **tx)
                .await
                .map_err(db)?;
            return Ok(Some(events::config_error(
                &row.integration,
                affected,
                t,
                now,
            )));
        }
    } else if leaving {
        let remaining: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM connections WHERE integration = ? AND status = 'config_error'",
        )
        .bind(&row.integration)
        .fetch_one(&mut **tx)
        .await
        .map_err(db)?;
        if remaining == 0 {
            let since: Option<i64> = sqlx::query_scalar(
                "DELETE FROM config_episodes WHERE integration = ? RETURNING since",
            )
            .bind(&row.integration)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db)?;
            if let Some(since) = since {
                return Ok(Some(events::config_recovered(&row.integration, since, now)));
            }
        }
    }
    Ok(None)
}

async fn write_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    outbox: &Outbox,
    event: &Event,
    now: i64,
) -> Result<(), StoreError> {
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO events (id, type, connection_id, integration, payload, created_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING seq",
    )
    .bind(&event.id)
    .bind(event.kind)
    .bind(&event.connection_id)
    .bind(&event.integration)
    .bind(&event.payload)
    .bind(now)
    .fetch_one(&mut **tx)
    .await
    .map_err(db)?;
    for endpoint in outbox.endpoints_for(event.kind) {
        sqlx::query(
            "INSERT INTO deliveries (event_seq, endpoint, status, attempts, window_start, next_attempt_at) VALUES (?, ?, 'pending', 0, ?, ?)",
        )
        .bind(seq)
        .bind(endpoint)
        .bind(now)
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    }
    Ok(())
}

async fn record_transition(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    row: &Row,
    t: &Transition,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO transitions (connection_id, integration, from_status, to_status, cause, detail, at) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&row.id)
    .bind(&row.integration)
    .bind(t.from.map(Status::as_str))
    .bind(t.to.as_str())
    .bind(&t.cause)
    .bind(t.detail.to_string())
    .bind(row.updated_at)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Row>, StoreError> {
        let r = sqlx::query(&format!("SELECT {COLUMNS} FROM connections WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        r.as_ref().map(from_row).transpose()
    }

    async fn list(&self, q: &ListQuery) -> Result<Vec<Row>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM connections WHERE (? IS NULL OR integration = ?) AND (? IS NULL OR status = ?) \
             AND (? IS NULL OR id > ?) ORDER BY id LIMIT ?"
        ))
        .bind(&q.integration)
        .bind(&q.integration)
        .bind(q.status.map(Status::as_str))
        .bind(q.status.map(Status::as_str))
        .bind(&q.after)
        .bind(&q.after)
        .bind(q.limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(from_row).collect()
    }

    async fn put(&self, mut row: Row, transition: Option<Transition>) -> Result<Row, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        // The upsert is the transaction's first statement, so it takes the write lock at once.
        let version: i64 = sqlx::query_scalar(
            "INSERT INTO connections (id, integration, status, key_id, access_token, refresh_token, expires_at, \
               scopes, metadata, version, refresh_failures, created_at, updated_at, kind, secret) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, 0, ?, ?, ?, ?) \
             ON CONFLICT(id) DO UPDATE SET integration = excluded.integration, status = excluded.status, \
               key_id = excluded.key_id, access_token = excluded.access_token, refresh_token = excluded.refresh_token, \
               kind = excluded.kind, secret = excluded.secret, \
               expires_at = excluded.expires_at, scopes = excluded.scopes, metadata = excluded.metadata, \
               version = connections.version + 1, lease_owner = NULL, lease_until = NULL, refresh_failures = 0, \
               next_attempt_at = NULL, last_error_class = NULL, last_error_status = NULL, \
               last_error_description = NULL, last_error_at = NULL, updated_at = excluded.updated_at \
             RETURNING version",
        )
        .bind(&row.id)
        .bind(&row.integration)
        .bind(row.status.as_str())
        .bind(&row.key_id)
        .bind(&row.access_token)
        .bind(&row.refresh_token)
        .bind(row.expires_at)
        .bind(&row.scopes)
        .bind(row.metadata.to_string())
        .bind(row.created_at)
        .bind(row.updated_at)
        .bind(&row.kind)
        .bind(&row.secret)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        if let Some(t) = &transition {
            record(&mut tx, &self.outbox, &row, t).await?;
        }
        tx.commit().await.map_err(db)?;
        row.version = version;
        row.lease_owner = None;
        row.lease_until = None;
        row.refresh_failures = 0;
        row.next_attempt_at = None;
        row.last_error = None;
        Ok(row)
    }

    async fn cas(
        &self,
        row: &Row,
        expected: i64,
        transition: Option<Transition>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let e = row.last_error.as_ref();
        let updated = sqlx::query(
            "UPDATE connections SET status = ?, key_id = ?, access_token = ?, refresh_token = ?, secret = ?, expires_at = ?, \
               scopes = ?, metadata = ?, version = ?, lease_owner = ?, lease_until = ?, refresh_failures = ?, \
               next_attempt_at = ?, last_error_class = ?, last_error_status = ?, last_error_description = ?, \
               last_error_at = ?, updated_at = ? \
             WHERE id = ? AND version = ?",
        )
        .bind(row.status.as_str())
        .bind(&row.key_id)
        .bind(&row.access_token)
        .bind(&row.refresh_token)
        .bind(&row.secret)
        .bind(row.expires_at)
        .bind(&row.scopes)
        .bind(row.metadata.to_string())
        .bind(row.version)
        .bind(&row.lease_owner)
        .bind(row.lease_until)
        .bind(row.refresh_failures)
        .bind(row.next_attempt_at)
        .bind(e.map(|e| e.class.clone()))
        .bind(e.and_then(|e| e.provider_status).map(|s| s as i64))
        .bind(e.and_then(|e| e.description.clone()))
        .bind(e.map(|e| e.at))
        .bind(row.updated_at)
        .bind(&row.id)
        .bind(expected)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        if updated == 0 {
            tx.rollback().await.map_err(db)?;
            return Ok(false);
        }
        if let Some(t) = &transition {
            record(&mut tx, &self.outbox, row, t).await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(true)
    }

    async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let n = sqlx::query("DELETE FROM connections WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db)?
            .rows_affected();
        Ok(n > 0)
    }

    async fn acquire_lease(
        &self,
        id: &str,
        owner: &str,
        now: i64,
        until: i64,
        cap: usize,
    ) -> Result<bool, StoreError> {
        // One statement: SQLite runs writers one at a time, so the count cannot race.
        let n = sqlx::query(
            "UPDATE connections SET lease_owner = ?, lease_until = ? \
             WHERE id = ? AND (lease_owner IS NULL OR lease_until < ? OR lease_owner = ?) \
             AND (SELECT COUNT(*) FROM connections c WHERE c.integration = connections.integration \
                  AND c.lease_owner IS NOT NULL AND c.lease_until >= ? AND c.id != connections.id) < ?",
        )
        .bind(owner)
        .bind(until)
        .bind(id)
        .bind(now)
        .bind(owner)
        .bind(now)
        .bind(cap as i64)
        .execute(&self.pool)
        .await
        .map_err(db)?
        .rows_affected();
        Ok(n > 0)
    }

    async fn release_lease(&self, id: &str, owner: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE connections SET lease_owner = NULL, lease_until = NULL WHERE id = ? AND lease_owner = ?")
            .bind(id)
            .bind(owner)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn due(&self, now: i64, horizon: i64, limit: u32) -> Result<Vec<Row>, StoreError> {
        let minted = minted_kinds();
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM connections WHERE status = 'active' AND (refresh_token IS NOT NULL OR kind IN ({minted})) \
             AND expires_at IS NOT NULL AND expires_at < ? AND (next_attempt_at IS NULL OR next_attempt_at <= ?) \
             AND (lease_until IS NULL OR lease_until < ?) ORDER BY expires_at LIMIT ?"
        ))
        .bind(horizon)
        .bind(now)
        .bind(now)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(from_row).collect()
    }

    async fn counts(&self) -> Result<Vec<(String, Status, i64)>, StoreError> {
        let rows = sqlx::query("SELECT integration, status, COUNT(*) AS n FROM connections GROUP BY integration, status")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                let status: String = r.try_get("status").map_err(db)?;
                Ok((
                    r.try_get("integration").map_err(db)?,
                    Status::parse(&status)
                        .ok_or_else(|| StoreError::Db(format!("unknown status {status}")))?,
                    r.try_get("n").map_err(db)?,
                ))
            })
            .collect()
    }

    async fn due_deliveries(&self, now: i64, limit: u32) -> Result<Vec<Delivery>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.seq = d.event_seq \
             WHERE d.status = 'pending' AND d.next_attempt_at <= ? AND NOT EXISTS ( \
               SELECT 1 FROM deliveries d2 JOIN events e2 ON e2.seq = d2.event_seq \
               WHERE d2.endpoint = d.endpoint AND d2.status = 'pending' AND e2.seq < e.seq \
                 AND e2.integration = e.integration AND e2.connection_id IS e.connection_id) \
             ORDER BY e.seq LIMIT ?"
        ))
        .bind(now)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(delivery_from_row).collect()
    }

    async fn claim_delivery(&self, d: &Delivery, now: i64, until: i64) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE deliveries SET next_attempt_at = ? WHERE event_seq = ? AND endpoint = ? AND status = 'pending' \
             AND attempts = ? AND next_attempt_at <= ?",
        )
        .bind(until)
        .bind(d.event_seq)
        .bind(&d.endpoint)
        .bind(d.attempts)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(db)?
        .rows_affected();
        Ok(n == 1)
    }

    async fn finish_delivery(
        &self,
        d: &Delivery,
        result: &DeliveryResult,
        now: i64,
    ) -> Result<(), StoreError> {
        let (status, next, error, delivered) = match result {
            DeliveryResult::Delivered => ("delivered", now, None, Some(now)),
            DeliveryResult::Retry { at, error } => ("pending", *at, Some(error.as_str()), None),
            DeliveryResult::Failed { error } => ("failed", now, Some(error.as_str()), None),
        };
        sqlx::query(
            "UPDATE deliveries SET status = ?, attempts = attempts + 1, next_attempt_at = ?, last_error = ?, delivered_at = ? \
             WHERE event_seq = ? AND endpoint = ? AND attempts = ?",
        )
        .bind(status)
        .bind(next)
        .bind(error)
        .bind(delivered)
        .bind(d.event_seq)
        .bind(&d.endpoint)
        .bind(d.attempts)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn deliveries(
        &self,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.seq = d.event_seq \
             WHERE (? IS NULL OR d.status = ?) ORDER BY e.seq DESC LIMIT ?"
        ))
        .bind(status)
        .bind(status)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(delivery_from_row).collect()
    }

    async fn put_connect_state(&self, state: &ConnectState, now: i64) -> Result<(), StoreError> {
        put_state(&self.pool, state, now).await
    }

    async fn take_connect_state(
        &self,
        hash: &str,
        browser: Option<&str>,
        now: i64,
    ) -> Result<Taken, StoreError> {
        take_state(&self.pool, hash, browser, now).await
    }

    async fn use_connect_link(
        &self,
        hash: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        use_link(&self.pool, hash, expires_at, now).await
    }

    async fn retry_event(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = ?, window_start = ? \
             WHERE event_seq = (SELECT seq FROM events WHERE id = ?) AND status != 'delivered'",
        )
        .bind(now)
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(db)?
        .rows_affected();
        Ok(n > 0)
    }

    async fn transitions(&self, id: &str) -> Result<Vec<TransitionRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, connection_id, integration, from_status, to_status, cause, detail, at \
             FROM transitions WHERE connection_id = ? ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| {
                let from: Option<String> = r.try_get("from_status").map_err(db)?;
                let to: String = r.try_get("to_status").map_err(db)?;
                let detail: String = r.try_get("detail").map_err(db)?;
                Ok(TransitionRecord {
                    seq: r.try_get("seq").map_err(db)?,
                    connection_id: r.try_get("connection_id").map_err(db)?,
                    integration: r.try_get("integration").map_err(db)?,
                    from_status: from.as_deref().and_then(Status::parse),
                    to_status: Status::parse(&to)
                        .ok_or_else(|| StoreError::Db(format!("unknown status {to}")))?,
                    cause: r.try_get("cause").map_err(db)?,
                    detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
                    at: r.try_get("at").map_err(db)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[tokio::test]
    async fn a_new_database_and_its_wal_and_shm_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        // Open while the directory is read: the migrations wrote, so -wal and -shm exist.
        let _store = SqliteStore::open(
            &dir.path().join("g.db"),
            Duration::from_secs(5),
            Outbox::default(),
        )
        .await
        .unwrap();
        let mut seen = Vec::new();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name} is {mode:o}");
            seen.push(name);
        }
        seen.sort();
        assert_eq!(seen, ["g.db", "g.db-shm", "g.db-wal"]);
    }
}
