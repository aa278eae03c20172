//! The SQL store, written once for SQLite and PostgreSQL: [`SqlStore`] over a sqlx driver, and
//! `sql_store!`, which implements [`Store`](super::Store) for it with one driver's types.
//!
//! Owns every statement both databases run. What really differs between them is a
//! [`Dialect`] (placeholders and the two locks PostgreSQL needs under READ COMMITTED) and the
//! opening (files and WAL, or URL and schema; migrations), in `sqlite.rs` and `postgres.rs`.
//! Must not decide policy: what a transition means is `store::events`'.

use std::borrow::Cow;

use super::Outbox;

/// What one SQL database does differently. Statements are written with `?` placeholders.
pub trait Dialect: sqlx::Database {
    /// The statement in this database's placeholders.
    fn sql(text: &str) -> Cow<'_, str> {
        Cow::Borrowed(text)
    }

    /// Run before counting who is still in `config_error` when a connection leaves it (one
    /// bind: the integration), where two writers leaving at once could each miss the other.
    const LOCK_EPISODE: Option<&'static str> = None;

    /// Run, in the same transaction, before counting and taking leases (one bind: the
    /// integration), where two writers could both count below the cap.
    const LOCK_LEASES: Option<&'static str> = None;

    /// Opens a transaction that reads before it writes: SQLite must take its write lock at
    /// `BEGIN`, or two such transactions deadlock on upgrading and one fails at once.
    const BEGIN_WRITE: &'static str = "BEGIN";

    /// Appended to the claim's row selection: skip rows another transaction has locked.
    const SKIP_LOCKED: &'static str = "";
}

/// `?` placeholders → `$1, $2, ...` (no statement here has a `?` inside a string literal).
pub(super) fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

/// A store on one SQL database: a connection pool and the outbox's routing table.
pub struct SqlStore<DB: sqlx::Database> {
    pub(super) pool: sqlx::Pool<DB>,
    pub(super) outbox: Outbox,
}

/// Implements `Store` for `SqlStore<$db>`, in a private module `shared` of the caller.
macro_rules! sql_store {
    ($db:ty) => {
        mod shared {
            use async_trait::async_trait;
            use sqlx::Row as _;

            use $crate::store::error::{db, ErrorKind};
            use $crate::store::events::{self, EpisodeChange, EpisodeMove, Event};
            use $crate::store::rows::{minted_kinds, COLUMNS, DELIVERY_COLUMNS};
            use $crate::store::sql::{Dialect, SqlStore};
            use $crate::store::{
                Claim, ConnectState, ConnectionRow, Cooldown, Delivery, DeliveryResult, LastError,
                ListQuery, Outbox, Status, Store, StoreError, Taken, Transition, TransitionRecord,
            };

            type Db = $db;
            type DbRow = <Db as sqlx::Database>::Row;
            type Pool = sqlx::Pool<Db>;
            type Tx<'c> = sqlx::Transaction<'c, Db>;

            fn q(text: &str) -> std::borrow::Cow<'_, str> {
                <Db as Dialect>::sql(text)
            }

            $crate::store::rows::row_decoders!();
            $crate::store::rows::connect_statements!();
            $crate::store::log::log_statements!();
            $crate::store::sql::connection_statements!();
            $crate::store::lease::lease_statements!();
            $crate::store::sql::delivery_statements!();
            $crate::store::census::census_statements!();
            $crate::store::cooldowns::cooldown_statements!();

            #[async_trait]
            impl Store for SqlStore<Db> {
                async fn ping(&self) -> Result<(), StoreError> {
                    sqlx::query("SELECT 1")
                        .execute(&self.pool)
                        .await
                        .map_err(db)?;
                    Ok(())
                }

                async fn get(&self, id: &str) -> Result<Option<ConnectionRow>, StoreError> {
                    get(&self.pool, id).await
                }

                async fn list(&self, query: &ListQuery) -> Result<Vec<ConnectionRow>, StoreError> {
                    list(&self.pool, query).await
                }

                async fn put(
                    &self,
                    row: ConnectionRow,
                    transition: Option<Transition>,
                ) -> Result<ConnectionRow, StoreError> {
                    put(&self.pool, &self.outbox, row, transition).await
                }

                async fn put_many(
                    &self,
                    rows: Vec<(ConnectionRow, Option<Transition>)>,
                ) -> Result<Vec<ConnectionRow>, StoreError> {
                    put_many(&self.pool, &self.outbox, rows).await
                }

                async fn cas(
                    &self,
                    row: &ConnectionRow,
                    expected: i64,
                    transition: Option<Transition>,
                ) -> Result<bool, StoreError> {
                    cas(&self.pool, &self.outbox, row, expected, transition).await
                }

                async fn delete(&self, id: &str) -> Result<bool, StoreError> {
                    delete(&self.pool, id).await
                }

                async fn acquire_lease(
                    &self,
                    id: &str,
                    owner: &str,
                    now: i64,
                    until: i64,
                    cap: usize,
                ) -> Result<bool, StoreError> {
                    acquire_lease(&self.pool, id, owner, (now, until), cap).await
                }

                async fn release_lease(&self, id: &str, owner: &str) -> Result<(), StoreError> {
                    release_lease(&self.pool, id, owner).await
                }

                async fn claim(&self, c: &Claim<'_>) -> Result<Vec<String>, StoreError> {
                    claim(&self.pool, c).await
                }

                async fn due(
                    &self,
                    now: i64,
                    horizon: i64,
                    limit: u32,
                ) -> Result<Vec<ConnectionRow>, StoreError> {
                    due(&self.pool, now, horizon, limit).await
                }

                async fn counts(&self) -> Result<Vec<(String, Status, i64)>, StoreError> {
                    counts(&self.pool).await
                }

                async fn backlog(&self) -> Result<(i64, Option<i64>), StoreError> {
                    backlog(&self.pool).await
                }

                async fn transitions(&self, id: &str) -> Result<Vec<TransitionRecord>, StoreError> {
                    transitions(&self.pool, id).await
                }

                async fn due_deliveries(
                    &self,
                    now: i64,
                    limit: u32,
                ) -> Result<Vec<Delivery>, StoreError> {
                    due_deliveries(&self.pool, now, limit).await
                }

                async fn claim_delivery(
                    &self,
                    d: &Delivery,
                    now: i64,
                    until: i64,
                ) -> Result<bool, StoreError> {
                    claim_delivery(&self.pool, d, now, until).await
                }

                async fn finish_delivery(
                    &self,
                    d: &Delivery,
                    result: &DeliveryResult,
                    now: i64,
                ) -> Result<(), StoreError> {
                    finish_delivery(&self.pool, d, result, now).await
                }

                async fn deliveries(
                    &self,
                    status: Option<&str>,
                    limit: u32,
                ) -> Result<Vec<Delivery>, StoreError> {
                    deliveries(&self.pool, status, limit).await
                }

                async fn retry_event(&self, id: &str, now: i64) -> Result<bool, StoreError> {
                    retry_event(&self.pool, id, now).await
                }

                async fn put_connect_state(
                    &self,
                    state: &ConnectState,
                    now: i64,
                ) -> Result<(), StoreError> {
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

                async fn put_cooldown(&self, c: &Cooldown) -> Result<(), StoreError> {
                    put_cooldown(&self.pool, c).await
                }

                async fn cooldowns(&self, now: i64) -> Result<Vec<Cooldown>, StoreError> {
                    cooldowns(&self.pool, now).await
                }
            }
        }
    };
}

pub(super) use sql_store;

/// Defines the statements on connections (`get`, `list`, `put`, `cas`, `delete`, leases,
/// `due`, `transitions`) for one driver.
macro_rules! connection_statements {
    () => {
        async fn get(pool: &Pool, id: &str) -> Result<Option<ConnectionRow>, StoreError> {
            let r = sqlx::query(&q(&format!(
                "SELECT {COLUMNS} FROM connections WHERE id = ?"
            )))
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(db)?;
            r.as_ref().map(from_row).transpose()
        }

        async fn list(pool: &Pool, query: &ListQuery) -> Result<Vec<ConnectionRow>, StoreError> {
            let rows = sqlx::query(&q(&format!(
                "SELECT {COLUMNS} FROM connections WHERE (? IS NULL OR integration = ?) \
                 AND (? IS NULL OR status = ?) AND (? IS NULL OR id > ?) ORDER BY id LIMIT ?"
            )))
            .bind(&query.integration)
            .bind(&query.integration)
            .bind(query.status.map(Status::as_str))
            .bind(query.status.map(Status::as_str))
            .bind(&query.after)
            .bind(&query.after)
            .bind(query.limit as i64)
            .fetch_all(pool)
            .await
            .map_err(db)?;
            rows.iter().map(from_row).collect()
        }

        async fn put(
            pool: &Pool,
            outbox: &Outbox,
            row: ConnectionRow,
            transition: Option<Transition>,
        ) -> Result<ConnectionRow, StoreError> {
            let mut rows = put_many(pool, outbox, vec![(row, transition)]).await?;
            Ok(rows.pop().expect("one row in, one row out"))
        }

        async fn put_many(
            pool: &Pool,
            outbox: &Outbox,
            rows: Vec<(ConnectionRow, Option<Transition>)>,
        ) -> Result<Vec<ConnectionRow>, StoreError> {
            let mut tx = pool.begin().await.map_err(db)?;
            let mut out = Vec::with_capacity(rows.len());
            for (mut row, transition) in rows {
                // The first upsert is the transaction's first statement: it takes the write lock.
                let version: i64 = sqlx::query_scalar(&q(
                    "INSERT INTO connections (id, integration, status, key_id, access_token, \
                       refresh_token, expires_at, scopes, metadata, version, refresh_failures, \
                       created_at, updated_at, kind, secret) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, 0, ?, ?, ?, ?) \
                     ON CONFLICT(id) DO UPDATE SET integration = excluded.integration, \
                       status = excluded.status, key_id = excluded.key_id, \
                       access_token = excluded.access_token, refresh_token = excluded.refresh_token, \
                       kind = excluded.kind, secret = excluded.secret, \
                       expires_at = excluded.expires_at, scopes = excluded.scopes, \
                       metadata = excluded.metadata, version = connections.version + 1, \
                       lease_owner = NULL, lease_until = NULL, refresh_failures = 0, \
                       next_attempt_at = NULL, last_error_class = NULL, last_error_status = NULL, \
                       last_error_description = NULL, last_error_at = NULL, \
                       updated_at = excluded.updated_at \
                     RETURNING version",
                ))
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
                    record(&mut tx, outbox, &row, t).await?;
                }
                row.version = version;
                row.lease_owner = None;
                row.lease_until = None;
                row.refresh_failures = 0;
                row.next_attempt_at = None;
                row.last_error = None;
                out.push(row);
            }
            tx.commit().await.map_err(db)?;
            Ok(out)
        }

        async fn cas(
            pool: &Pool,
            outbox: &Outbox,
            row: &ConnectionRow,
            expected: i64,
            transition: Option<Transition>,
        ) -> Result<bool, StoreError> {
            let mut tx = pool.begin().await.map_err(db)?;
            let e = row.last_error.as_ref();
            let updated = sqlx::query(&q(
                "UPDATE connections SET status = ?, key_id = ?, access_token = ?, \
                   refresh_token = ?, secret = ?, expires_at = ?, scopes = ?, metadata = ?, version = ?, \
                   lease_owner = ?, lease_until = ?, refresh_failures = ?, next_attempt_at = ?, \
                   last_error_class = ?, last_error_status = ?, last_error_description = ?, \
                   last_error_at = ?, updated_at = ? \
                 WHERE id = ? AND version = ?",
            ))
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
                record(&mut tx, outbox, row, t).await?;
            }
            tx.commit().await.map_err(db)?;
            Ok(true)
        }

        async fn delete(pool: &Pool, id: &str) -> Result<bool, StoreError> {
            let n = sqlx::query(&q("DELETE FROM connections WHERE id = ?"))
                .bind(id)
                .execute(pool)
                .await
                .map_err(db)?
                .rows_affected();
            Ok(n > 0)
        }

        async fn due(
            pool: &Pool,
            now: i64,
            horizon: i64,
            limit: u32,
        ) -> Result<Vec<ConnectionRow>, StoreError> {
            // Rows with a refresh token, or of a kind grantd mints itself.
            let minted = minted_kinds();
            let rows = sqlx::query(&q(&format!(
                "SELECT {COLUMNS} FROM connections WHERE status = 'active' \
                 AND (refresh_token IS NOT NULL OR kind IN ({minted})) \
                 AND expires_at IS NOT NULL AND expires_at < ? \
                 AND (next_attempt_at IS NULL OR next_attempt_at <= ?) \
                 AND (lease_until IS NULL OR lease_until < ?) ORDER BY expires_at LIMIT ?"
            )))
            .bind(horizon)
            .bind(now)
            .bind(now)
            .bind(limit as i64)
            .fetch_all(pool)
            .await
            .map_err(db)?;
            rows.iter().map(from_row).collect()
        }

        async fn transitions(pool: &Pool, id: &str) -> Result<Vec<TransitionRecord>, StoreError> {
            let rows = sqlx::query(&q(
                "SELECT seq, connection_id, integration, from_status, to_status, cause, detail, at \
                 FROM transitions WHERE connection_id = ? ORDER BY seq",
            ))
            .bind(id)
            .fetch_all(pool)
            .await
            .map_err(db)?;
            rows.iter().map(transition_from_row).collect()
        }
    };
}

pub(super) use connection_statements;

/// Defines the outbox's delivery statements for one driver.
macro_rules! delivery_statements {
    () => {
        async fn due_deliveries(
            pool: &Pool,
            now: i64,
            limit: u32,
        ) -> Result<Vec<Delivery>, StoreError> {
            let rows = sqlx::query(&q(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.seq = d.event_seq \
                 WHERE d.status = 'pending' AND d.next_attempt_at <= ? AND NOT EXISTS ( \
                   SELECT 1 FROM deliveries d2 JOIN events e2 ON e2.seq = d2.event_seq \
                   WHERE d2.endpoint = d.endpoint AND d2.status = 'pending' AND e2.seq < e.seq \
                     AND e2.integration = e.integration \
                     AND e2.connection_id IS NOT DISTINCT FROM e.connection_id) \
                 ORDER BY e.seq LIMIT ?"
            )))
            .bind(now)
            .bind(limit as i64)
            .fetch_all(pool)
            .await
            .map_err(db)?;
            rows.iter().map(delivery_from_row).collect()
        }

        async fn claim_delivery(
            pool: &Pool,
            d: &Delivery,
            now: i64,
            until: i64,
        ) -> Result<bool, StoreError> {
            let n = sqlx::query(&q(
                "UPDATE deliveries SET next_attempt_at = ? WHERE event_seq = ? AND endpoint = ? \
                 AND status = 'pending' AND attempts = ? AND next_attempt_at <= ?",
            ))
            .bind(until)
            .bind(d.event_seq)
            .bind(&d.endpoint)
            .bind(d.attempts)
            .bind(now)
            .execute(pool)
            .await
            .map_err(db)?
            .rows_affected();
            Ok(n == 1)
        }

        async fn finish_delivery(
            pool: &Pool,
            d: &Delivery,
            result: &DeliveryResult,
            now: i64,
        ) -> Result<(), StoreError> {
            let (status, next, error, delivered) = match result {
                DeliveryResult::Delivered => ("delivered", now, None, Some(now)),
                DeliveryResult::Retry { at, error } => ("pending", *at, Some(error.as_str()), None),
                DeliveryResult::Failed { error } => ("failed", now, Some(error.as_str()), None),
            };
            sqlx::query(&q(
                "UPDATE deliveries SET status = ?, attempts = attempts + 1, next_attempt_at = ?, \
                 last_error = ?, delivered_at = ? WHERE event_seq = ? AND endpoint = ? \
                 AND attempts = ?",
            ))
            .bind(status)
            .bind(next)
            .bind(error)
            .bind(delivered)
            .bind(d.event_seq)
            .bind(&d.endpoint)
            .bind(d.attempts)
            .execute(pool)
            .await
            .map_err(db)?;
            Ok(())
        }

        async fn deliveries(
            pool: &Pool,
            status: Option<&str>,
            limit: u32,
        ) -> Result<Vec<Delivery>, StoreError> {
            let rows = sqlx::query(&q(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.seq = d.event_seq \
                 WHERE (? IS NULL OR d.status = ?) ORDER BY e.seq DESC LIMIT ?"
            )))
            .bind(status)
            .bind(status)
            .bind(limit as i64)
            .fetch_all(pool)
            .await
            .map_err(db)?;
            rows.iter().map(delivery_from_row).collect()
        }

        async fn retry_event(pool: &Pool, id: &str, now: i64) -> Result<bool, StoreError> {
            let n = sqlx::query(&q(
                "UPDATE deliveries SET status = 'pending', next_attempt_at = ?, window_start = ? \
                 WHERE event_seq = (SELECT seq FROM events WHERE id = ?) AND status != 'delivered'",
            ))
            .bind(now)
            .bind(now)
            .bind(id)
            .execute(pool)
            .await
            .map_err(db)?
            .rows_affected();
            Ok(n > 0)
        }
    };
}

pub(super) use delivery_statements;
