//! The fleet store: PostgreSQL, shared by any number of grantd replicas. The same statements as
//! the SQLite store (`sql.rs`, placeholders numbered); migrations run under sqlx's advisory
//! lock, so replicas starting together migrate once.
//!
//! Owns what only PostgreSQL needs: connecting and the schema, the two locks that READ
//! COMMITTED asks for, and its migrations. Must not add statements of its own beyond those.

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::Postgres;

use super::error::{db, ErrorKind};
use super::sql::{numbered, Dialect, SqlStore};
use super::{Outbox, StoreError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl Dialect for Postgres {
    fn sql(text: &str) -> Cow<'_, str> {
        Cow::Owned(numbered(text))
    }

    /// Under READ COMMITTED two replicas leaving at once could each still see the other as
    /// failing; locking the episode row first serializes them.
    const LOCK_EPISODE: Option<&'static str> =
        Some("SELECT since FROM config_episodes WHERE integration = ? FOR UPDATE");

    /// Under READ COMMITTED two replicas could both count below the cap; an advisory lock per
    /// integration (held until commit) makes the count and the update one step.
    const LOCK_LEASES: Option<&'static str> =
        Some("SELECT pg_advisory_xact_lock(hashtext('grantd-lease:' || ?))");

    /// Replicas claiming at once each take rows the others have not locked, instead of
    /// queueing behind them.
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";
}

super::sql::sql_store!(sqlx::Postgres);

pub type PostgresStore = SqlStore<Postgres>;

impl SqlStore<Postgres> {
    /// Connects (`store.url`), creates `schema` if given and uses it, applies migrations.
    pub async fn open(
        url: &str,
        schema: Option<&str>,
        outbox: Outbox,
    ) -> Result<PostgresStore, StoreError> {
        let mut options =
            PgConnectOptions::from_str(url).map_err(|e| StoreError::context("store.url", e))?;
        if let Some(schema) = schema {
            create_schema(&options, schema).await?;
            options = options.options([("search_path", schema)]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(|e| StoreError::context("cannot connect to PostgreSQL", e))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::migrating("migrating", e))?;
        Ok(SqlStore { pool, outbox })
    }
}

/// `CREATE SCHEMA IF NOT EXISTS`, on a connection of its own (before `search_path` names it).
async fn create_schema(options: &PgConnectOptions, schema: &str) -> Result<(), StoreError> {
    if !schema
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(StoreError::new(
            ErrorKind::Other,
            "store.schema: letters, digits and _ only",
        ));
    }
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone())
        .await
        .map_err(|e| StoreError::context("cannot connect to PostgreSQL", e))?;
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .execute(&admin)
        .await
        .map_err(db)?;
    admin.close().await;
    Ok(())
}
