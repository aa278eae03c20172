//! What the admin API shows of a connection: status and facts, a fingerprint of its credential,
//! never a secret.

use serde::Serialize;

use super::credential::Kind;
use super::Connections;
use crate::store::{ConnectionRow, Status};
use crate::time::rfc3339;

/// What the admin API shows of a connection: status and facts, never a token.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionView {
    pub id: String,
    pub integration: String,
    pub status: Status,
    pub version: i64,
    pub kind: Kind,
    /// Tells two credentials apart without showing either (`fp-1a2b3c4d`).
    pub fingerprint: Option<String>,
    pub has_access_token: bool,
    pub has_refresh_token: bool,
    pub expires_at: Option<String>,
    pub scopes: Vec<String>,
    pub metadata: serde_json::Value,
    pub refresh_failures: i64,
    pub next_attempt_at: Option<String>,
    pub last_error: Option<crate::store::LastError>,
    pub created_at: String,
    pub updated_at: String,
}

impl Connections {
    /// The admin API's view, with the credential's fingerprint (its secret, or for OAuth its
    /// refresh or access token) when it can be opened.
    pub(super) fn view_of(&self, row: &ConnectionRow) -> ConnectionView {
        let mut v = view(row);
        let secret = match self.open_held(row) {
            Ok(Some(held)) => Some(held.secret_part().to_string()),
            Ok(None) => [
                ("refresh_token", &row.refresh_token),
                ("access_token", &row.access_token),
            ]
            .into_iter()
            .find_map(|(field, sealed)| self.open_field(row, field, sealed).ok().flatten())
            .map(|s| s.expose().to_string()),
            Err(_) => None,
        };
        v.fingerprint = secret.map(|s| self.keys.fingerprint(s.as_bytes()));
        v
    }
}

pub fn view(row: &ConnectionRow) -> ConnectionView {
    ConnectionView {
        id: row.id.clone(),
        integration: row.integration.clone(),
        status: row.status,
        version: row.version,
        kind: Kind::parse(&row.kind).unwrap_or_default(),
        fingerprint: None,
        has_access_token: row.access_token.is_some(),
        has_refresh_token: row.refresh_token.is_some(),
        expires_at: row.expires_at.map(rfc3339),
        scopes: row.scopes.split_whitespace().map(str::to_string).collect(),
        metadata: row.metadata.clone(),
        refresh_failures: row.refresh_failures,
        next_attempt_at: row.next_attempt_at.map(rfc3339),
        last_error: row.last_error.clone(),
        created_at: rfc3339(row.created_at),
        updated_at: rfc3339(row.updated_at),
    }
}
