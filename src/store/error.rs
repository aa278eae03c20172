//! The store's error: a kind a caller can act on, and a message for operators.
//!
//! Owns the mapping from driver errors to kinds. Must not put a token or a secret in a message
//! (the store only ever sees sealed tokens, and no statement's values are quoted here).

/// What went wrong, as far as a caller can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The database could not be reached, the connection was lost, the pool timed out or the
    /// database stayed locked: the same call may work later.
    Unavailable,
    /// A constraint refused the write, or a concurrent transaction conflicted with it.
    Conflict,
    /// Stored data could not be read back as what is written (unknown status, bad JSON, a value
    /// of the wrong type).
    Corrupt,
    /// Anything else: configuration, migrations, a statement the database rejected.
    Other,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {message}")]
    Db { kind: ErrorKind, message: String },
    #[error("store: corrupt row {id}: {what}")]
    Corrupt { id: String, what: String },
}

impl StoreError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Db { kind, .. } => *kind,
            StoreError::Corrupt { .. } => ErrorKind::Corrupt,
        }
    }

    pub(super) fn new(kind: ErrorKind, message: impl Into<String>) -> StoreError {
        StoreError::Db {
            kind,
            message: message.into(),
        }
    }

    /// A driver error, its message prefixed with what was being done (`"cannot open x"`).
    pub(super) fn context(what: &str, e: sqlx::Error) -> StoreError {
        StoreError::new(kind_of(&e), format!("{what}: {e}"))
    }

    /// A migration error, prefixed like [`StoreError::context`].
    pub(super) fn migrating(what: &str, e: sqlx::migrate::MigrateError) -> StoreError {
        let kind = match &e {
            sqlx::migrate::MigrateError::Execute(e) => kind_of(e),
            _ => ErrorKind::Other,
        };
        StoreError::new(kind, format!("{what}: {e}"))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        StoreError::new(kind_of(&e), e.to_string())
    }
}

/// `.map_err(db)`: a driver error as a store error, its message unchanged.
pub(super) fn db(e: sqlx::Error) -> StoreError {
    e.into()
}

fn kind_of(e: &sqlx::Error) -> ErrorKind {
    use sqlx::Error as E;
    match e {
        E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => {
            ErrorKind::Unavailable
        }
        E::ColumnDecode { .. } | E::Decode(_) => ErrorKind::Corrupt,
        E::Database(d) => database_kind(d.as_ref()),
        _ => ErrorKind::Other,
    }
}

fn database_kind(d: &dyn sqlx::error::DatabaseError) -> ErrorKind {
    use sqlx::error::ErrorKind as K;
    match d.kind() {
        K::UniqueViolation | K::ForeignKeyViolation | K::NotNullViolation | K::CheckViolation => {
            return ErrorKind::Conflict
        }
        _ => {}
    }
    let code = d.code().unwrap_or_default();
    if d.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        // The primary result code is the extended code's low byte.
        return match code.parse::<i32>().map_or(0, |n| n & 0xff) {
            // SQLITE_BUSY, SQLITE_LOCKED: still locked after busy_timeout.
            5 | 6 => ErrorKind::Unavailable,
            // SQLITE_CORRUPT, SQLITE_NOTADB.
            11 | 26 => ErrorKind::Corrupt,
            _ => ErrorKind::Other,
        };
    }
    match code.as_ref() {
        // PostgreSQL: serialization failure, deadlock.
        "40001" | "40P01" => ErrorKind::Conflict,
        // PostgreSQL: data corrupted, index corrupted.
        "XX001" | "XX002" => ErrorKind::Corrupt,
        // PostgreSQL: connection exceptions, shutting down, out of resources.
        c if c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") => {
            ErrorKind::Unavailable
        }
        _ => ErrorKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_keep_the_message() {
        let e = StoreError::from(sqlx::Error::PoolTimedOut);
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert_eq!(
            e.to_string(),
            format!("store: {}", sqlx::Error::PoolTimedOut)
        );
        let e = StoreError::context("cannot connect to PostgreSQL", sqlx::Error::PoolClosed);
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e
            .to_string()
            .starts_with("store: cannot connect to PostgreSQL: "));
        let e = StoreError::from(sqlx::Error::RowNotFound);
        assert_eq!(e.kind(), ErrorKind::Other);
        let e = StoreError::Corrupt {
            id: "c1".into(),
            what: "unknown status".into(),
        };
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert_eq!(e.to_string(), "store: corrupt row c1: unknown status");
    }
}
