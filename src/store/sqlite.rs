//! The embedded store: one SQLite file in WAL mode, shared safely by several grantd processes
//! (writes are single-statement CAS inside short transactions; `busy_timeout` waits for locks).
//!
//! Owns what only SQLite needs: opening the file private (0600), WAL and `synchronous = FULL`,
//! and its migrations. Every statement is `sql.rs`'s; must not add statements of its own.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::Sqlite;

use super::error::{db, ErrorKind};
use super::sql::{Dialect, SqlStore};
use super::{Outbox, StoreError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// SQLite runs one writer at a time: no locks beyond the statements' own, `?` placeholders.
impl Dialect for Sqlite {
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
}

super::sql::sql_store!(sqlx::Sqlite);

pub type SqliteStore = SqlStore<Sqlite>;

impl SqlStore<Sqlite> {
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
            .busy_timeout(busy_timeout)
            // 1 MiB of page cache per connection instead of SQLite's 2 MiB: the file's pages are
            // in the OS page cache anyway (a miss is one `pread`). Four caches may hold 8 MiB;
            // at 1M connections stored this saved 2 MiB of RSS (`bench/scale.py`).
            .pragma("cache_size", "-1024");
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::context(&format!("cannot open {}", path.display()), e))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::migrating(&format!("migrating {}", path.display()), e))?;
        Ok(SqlStore { pool, outbox })
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
        Err(e) => Err(StoreError::new(
            ErrorKind::Other,
            format!("cannot create {}: {e}", path.display()),
        )),
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
