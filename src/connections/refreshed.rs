//! How a refresh ended, as everyone waiting for it sees it (the request path, the admin API,
//! traces). Data only: the refresher itself is [`super::refresh`].

use std::sync::Arc;

use serde::Serialize;

use super::{Connection, ConnectionError};

/// How a refresh ended, as waiters see it.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Refreshed {
    /// A new token is stored (by this flight or, found on re-reading, by someone else).
    Ok {
        version: i64,
        expires_at: Option<i64>,
        #[serde(skip)]
        grant: Arc<Connection>,
    },
    NeedsReauth {
        error: String,
    },
    ConfigError {
        error: String,
    },
    /// Provider or network trouble; the connection stays as it was.
    Transient {
        error: String,
        retry_at: Option<i64>,
    },
    /// Nothing to refresh with (no refresh token, or no OAuth client configured).
    Impossible {
        error: String,
    },
    NotFound,
}

impl Refreshed {
    /// The outcome's name, as it is serialized (for traces and metrics).
    pub fn outcome(&self) -> &'static str {
        match self {
            Refreshed::Ok { .. } => "ok",
            Refreshed::NeedsReauth { .. } => "needs_reauth",
            Refreshed::ConfigError { .. } => "config_error",
            Refreshed::Transient { .. } => "transient",
            Refreshed::Impossible { .. } => "impossible",
            Refreshed::NotFound => "not_found",
        }
    }
}

impl From<ConnectionError> for Refreshed {
    fn from(e: ConnectionError) -> Self {
        match e {
            ConnectionError::NotFound(_) => Refreshed::NotFound,
            other => Refreshed::Transient {
                error: other.to_string(),
                retry_at: None,
            },
        }
    }
}
