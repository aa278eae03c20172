//! Connections: what grantd holds for each account an app connected (OAuth tokens or another
//! credential kind), sealing it at rest, and keeping it alive.
//!
//! One word throughout: a *connection* is [`crate::store::ConnectionRow`] in the
//! store (sealed), [`Connection`] once opened here, [`ConnectionView`] in the admin API, and
//! [`Connections`] the cached access to them all; `proxy::ConnectionPolicy` decides what a
//! request does with one.
//!
//! Owns the plaintext side of tokens (sealing and opening them, the in-memory cache the proxy
//! reads), the single-flight refresher ([`refresh`]) and the status machine (`active`,
//! `needs_reauth`, `config_error`) with its recorded transitions. It must not speak HTTP to the
//! app (that is `proxy` and `admin`) and must never put a token in a log line, an error or a view.

pub mod assertion;
mod cache;
pub mod census;
pub mod client;
pub mod credential;
pub mod crypto;
pub mod import;
pub mod mint;
mod proactive;
pub mod refresh;
mod refreshed;
pub mod revoke;
pub mod timing;
pub mod token;
mod view;

pub use view::{view, ConnectionView};

use std::sync::Arc;

use serde::Deserialize;

use crate::store::{ConnectionRow, ListQuery, Status, Store, StoreError, Transition};
use crate::telemetry::Metrics;
use crate::time::now_ms;
use credential::{Held, Kind};
use crypto::Keyring;

/// A secret string: its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A connection with its tokens opened, as the proxy and refresher use it.
#[derive(Debug, Clone)]
pub struct Connection {
    pub id: String,
    pub integration: String,
    pub status: Status,
    pub version: i64,
    pub access_token: Option<Secret>,
    pub refresh_token: Option<Secret>,
    pub expires_at: Option<i64>,
    pub scopes: String,
    pub metadata: serde_json::Value,
    /// Identifies the row's incarnation (a deleted and re-created connection differs).
    pub created_at: i64,
    pub kind: Kind,
    /// The kind's long-lived secret (none for `oauth2`).
    pub held: Option<Held>,
    /// When the row was last written: for a usable token, about when it was issued.
    pub issued_at: i64,
}

impl Connection {
    /// True when the credential is usable for at least `margin_ms` more (at most a fifth of
    /// the token's lifetime, see [`timing::margin`]): an API key or Basic login always is; a
    /// token until its expiry.
    pub fn fresh(&self, now: i64, margin_ms: i64) -> bool {
        let margin = timing::margin(margin_ms, self.issued_at, self.expires_at);
        self.kind.fixed()
            || (self.access_token.is_some() && self.expires_at.is_none_or(|e| e > now + margin))
    }

    /// Whether a refresh could produce a new access token.
    pub fn renewable(&self) -> bool {
        self.kind.minted() || (self.kind == Kind::Oauth2 && self.refresh_token.is_some())
    }
}

/// `PUT /v1/connections/{id}`: the app imports tokens it obtained itself.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutConnection {
    pub integration: String,
    pub credentials: Credentials,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// `oauth2` (default), `api_key`, `basic`, `oauth2_client_credentials`, `jwt_bearer`.
    pub kind: Option<credential::Kind>,
    pub api_key: Option<Secret>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    /// PEM (`jwt_bearer`).
    pub private_key: Option<Secret>,
    pub key_id: Option<String>,
    pub issuer: Option<String>,
    pub subject: Option<String>,
    pub access_token: Option<Secret>,
    pub refresh_token: Option<Secret>,
    pub expires_in: Option<i64>,
    /// RFC 3339.
    pub expires_at: Option<String>,
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("no connection `{0}`")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("connection `{id}` has an unreadable token: {why}")]
    Unreadable { id: String, why: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Access to connections, shared by the proxy, the admin API and the refresher.
pub struct Connections {
    store: Arc<dyn Store>,
    keys: Keyring,
    /// Connections as last read, with when: the proxy's fast path. Entries older than `cache_ttl`
    /// are read again, so a change made by another process is seen within that time. Bounded
    /// in bytes (`store.cache_size`), least recently used out first; sharded, so the request
    /// path takes no global lock.
    cache: moka::sync::Cache<String, cache::Cached>,
    cache_ttl: std::time::Duration,
    /// Status transitions, refreshes and lease waits are counted here (a private registry
    /// unless [`Connections::with_metrics`] gives the shared one).
    metrics: Arc<Metrics>,
}

fn aad(id: &str, field: &str) -> String {
    format!("{id}\0{field}")
}

impl Connections {
    /// Reads the row from the store, opens it and caches it.
    pub async fn load(&self, id: &str) -> Result<Arc<Connection>, ConnectionError> {
        match self.store.get(id).await? {
            Some(row) => Ok(self.remember(self.open(&row)?)),
            None => {
                self.forget(id);
                Err(ConnectionError::NotFound(id.to_string()))
            }
        }
    }

    pub fn open(&self, row: &ConnectionRow) -> Result<Connection, ConnectionError> {
        let kind =
            Kind::parse(&row.kind).ok_or_else(|| unreadable(row, "unknown credential kind"))?;
        Ok(Connection {
            id: row.id.clone(),
            integration: row.integration.clone(),
            status: row.status,
            version: row.version,
            access_token: self.open_field(row, "access_token", &row.access_token)?,
            refresh_token: self.open_field(row, "refresh_token", &row.refresh_token)?,
            expires_at: row.expires_at,
            scopes: row.scopes.clone(),
            metadata: row.metadata.clone(),
            created_at: row.created_at,
            kind,
            held: self.open_held(row)?,
            issued_at: row.updated_at,
        })
    }

    /// One sealed field of `row`, opened.
    pub(super) fn open_field(
        &self,
        row: &ConnectionRow,
        field: &str,
        sealed: &Option<Vec<u8>>,
    ) -> Result<Option<Secret>, ConnectionError> {
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let plain = self
            .keys
            .open(&row.key_id, &aad(&row.id, field), sealed)
            .map_err(|e| unreadable(row, &e.to_string()))?;
        String::from_utf8(plain)
            .map(|s| Some(Secret(s)))
            .map_err(|_| unreadable(row, "token is not UTF-8"))
    }

    /// The kind's secret of `row`, opened (none for `oauth2`).
    pub(super) fn open_held(&self, row: &ConnectionRow) -> Result<Option<Held>, ConnectionError> {
        self.open_field(row, "secret", &row.secret)?
            .map(|s| {
                serde_json::from_str::<Held>(s.expose())
                    .map_err(|_| unreadable(row, "the sealed secret is not a credential"))
            })
            .transpose()
    }

    /// Seals a kind's secret into `row` (with the active key, like its tokens).
    fn seal_secret(&self, row: &mut ConnectionRow, held: Option<&Held>) {
        row.secret = held.map(|h| {
            let json = serde_json::to_string(h).expect("a credential serializes");
            self.keys.seal(&aad(&row.id, "secret"), json.as_bytes())
        });
    }

    /// Seals `grant`'s tokens into `row` with the active key.
    pub fn seal_into(
        &self,
        row: &mut ConnectionRow,
        access: Option<&Secret>,
        refresh: Option<&Secret>,
    ) {
        // The kind's secret moves to the active key too: one key id per row.
        let held = self.open_held(row).ok().flatten();
        row.key_id = self.keys.active_id().to_string();
        self.seal_secret(row, held.as_ref());
        row.access_token = access.map(|t| {
            self.keys
                .seal(&aad(&row.id, "access_token"), t.expose().as_bytes())
        });
        row.refresh_token = refresh.map(|t| {
            self.keys
                .seal(&aad(&row.id, "refresh_token"), t.expose().as_bytes())
        });
    }

    /// Stores what an authorization-code exchange returned on connection `id`, in place:
    /// created if new; otherwise same id, same metadata and history, fresh tokens, `active`.
    /// Leaving `needs_reauth`/`config_error` is recorded as `reauthorized` (a `reactivated`
    /// event). A response without a refresh token keeps the stored one.
    pub async fn store_authorized(
        &self,
        id: &str,
        integration: &str,
        requested_scopes: &str,
        answer: &token::Answer<'_>,
    ) -> Result<ConnectionView, ConnectionError> {
        validate_id(id)?;
        let previous = self.store.get(id).await?;
        let kept_refresh = match &previous {
            Some(p) => self.open(p)?.refresh_token,
            None => None,
        };
        let mut row = active_row(id, integration, previous.as_ref(), answer.received);
        // Replaced by the response's `scope` when it has one.
        row.scopes = requested_scopes.to_string();
        if let Some(p) = &previous {
            row.metadata = p.metadata.clone();
        }
        token::apply_tokens(self, &mut row, answer, kept_refresh.as_ref());
        self.replace(row, previous.as_ref(), "reauthorized").await
    }

    /// Writes a new `active` row over `previous` (if any), recording how it became active:
    /// `created`, or `cause` when it was not active before.
    async fn replace(
        &self,
        row: ConnectionRow,
        previous: Option<&ConnectionRow>,
        cause: &str,
    ) -> Result<ConnectionView, ConnectionError> {
        let transition = to_active(previous, cause);
        let stored = self.store.put(row, transition.clone()).await?;
        self.count_transition(&stored.integration, transition.as_ref());
        self.settle(&stored)
    }

    /// Shares `metrics` (the process's registry) instead of a private one.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Connections {
        self.metrics = metrics;
        self
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Counts a recorded transition as the connection entering its status. A creation is
    /// not counted: a new connection enters nothing, and `active` means reactivated.
    fn count_transition(&self, integration: &str, t: Option<&Transition>) {
        let Some(t) = t.filter(|t| t.from.is_some()) else {
            return;
        };
        if let Some(lifecycle) = self.metrics.lifecycle(integration) {
            lifecycle.entered(t.to.as_str());
        }
    }

    /// After a write: the cache holds the stored row, and the view says what it is.
    fn settle(&self, stored: &ConnectionRow) -> Result<ConnectionView, ConnectionError> {
        self.forget(&stored.id);
        self.remember(self.open(stored)?);
        Ok(self.view_of(stored))
    }

    /// Pauses a connection after a live `reauth` verdict, unless it changed since the request
    /// read it (a newer token may be fine). Returns whether it was paused now.
    pub async fn mark_needs_reauth(
        &self,
        id: &str,
        seen_version: i64,
        detail: serde_json::Value,
    ) -> Result<bool, ConnectionError> {
        let Some(row) = self.store.get(id).await? else {
            return Ok(false);
        };
        if row.version != seen_version || row.status == Status::NeedsReauth {
            return Ok(false);
        }
        let now = now_ms();
        let mut next = row.clone();
        next.version = row.version + 1;
        next.status = Status::NeedsReauth;
        next.updated_at = now;
        next.last_error = Some(crate::store::LastError {
            class: detail["error"].as_str().unwrap_or("reauth").to_string(),
            provider_status: detail["status"].as_u64().map(|s| s as u16),
            description: detail["message"].as_str().map(str::to_string),
            at: now,
        });
        let t = Transition {
            from: Some(row.status),
            to: Status::NeedsReauth,
            cause: "rule_verdict".into(),
            detail,
        };
        let paused = self.store.cas(&next, row.version, Some(t.clone())).await?;
        if paused {
            self.count_transition(&row.integration, Some(&t));
            self.forget(id);
            tracing::warn!(connection = %id, integration = %row.integration, "connection needs re-authentication (rule verdict)");
        }
        Ok(paused)
    }

    pub async fn view(&self, id: &str) -> Result<ConnectionView, ConnectionError> {
        let row = self
            .store
            .get(id)
            .await?
            .ok_or_else(|| ConnectionError::NotFound(id.to_string()))?;
        Ok(self.view_of(&row))
    }

    pub async fn list(&self, query: &ListQuery) -> Result<Vec<ConnectionView>, ConnectionError> {
        let rows = self.store.list(query).await?;
        Ok(rows.iter().map(|r| self.view_of(r)).collect())
    }

    pub async fn delete(&self, id: &str) -> Result<bool, ConnectionError> {
        let deleted = self.store.delete(id).await?;
        self.forget(id);
        Ok(deleted)
    }
}

fn unreadable(row: &ConnectionRow, why: &str) -> ConnectionError {
    ConnectionError::Unreadable {
        id: row.id.clone(),
        why: why.to_string(),
    }
}

/// The transition a write that makes a connection `active` records: `created`, or `cause` when
/// it was not active before, or none.
fn to_active(previous: Option<&ConnectionRow>, cause: &str) -> Option<Transition> {
    match previous.map(|p| p.status) {
        Some(Status::Active) => None,
        from => Some(Transition {
            from,
            to: Status::Active,
            cause: if from.is_some() { cause } else { "created" }.into(),
            detail: serde_json::json!({}),
        }),
    }
}

/// A fresh `active` row with no tokens, keeping `previous`'s creation time.
fn active_row(
    id: &str,
    integration: &str,
    previous: Option<&ConnectionRow>,
    now: i64,
) -> ConnectionRow {
    ConnectionRow {
        created_at: previous.map_or(now, |p| p.created_at),
        ..ConnectionRow::new(id, integration, now)
    }
}

/// Connection ids are chosen by the app; keep them to a safe, URL-friendly alphabet.
pub fn validate_id(id: &str) -> Result<(), ConnectionError> {
    let ok = !id.is_empty()
        && id.len() <= 200
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(ConnectionError::Invalid(
            "connection ids are 1-200 characters of A-Z a-z 0-9 _ - . : @".into(),
        ))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("xoxb-very-secret");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        let g = Connection {
            id: "a".into(),
            integration: "slack".into(),
            status: Status::Active,
            version: 1,
            access_token: Some(s.clone()),
            refresh_token: Some(s),
            expires_at: None,
            scopes: String::new(),
            metadata: serde_json::json!({}),
            created_at: 0,
            issued_at: 0,
            kind: Kind::Basic,
            held: Some(Held::Basic {
                username: "u".into(),
                password: "very-secret-pw".into(),
            }),
        };
        assert!(!format!("{g:?}").contains("very-secret"));
    }

    #[test]
    fn connection_ids_are_restricted() {
        assert!(validate_id("acct_123").is_ok());
        assert!(validate_id("user@example.com:slack").is_ok());
        for bad in ["", "a/b", "a b", "a?b", &"x".repeat(201)] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }

    pub(super) async fn connections() -> (tempfile::TempDir, Connections) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::sqlite::SqliteStore::open(
            &dir.path().join("g.db"),
            std::time::Duration::from_secs(5),
            Default::default(),
        )
        .await
        .unwrap();
        let keys = Keyring::new(crate::connections::crypto::EXAMPLE_KEY, &[]).unwrap();
        let connections =
            Connections::new(Arc::new(store), keys, std::time::Duration::from_secs(2));
        (dir, connections)
    }

    fn fields(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().unwrap().clone()
    }

    #[tokio::test]
    async fn authorized_expiry_counts_from_our_clock_not_the_providers() {
        let (_dir, g) = connections().await;
        let now = now_ms();
        // A provider whose clock is a day ahead also sends absolute timestamps: ignored. Of
        // the extra fields only the one the rule file lists is kept (an id_token is a secret).
        let first = fields(serde_json::json!({
            "access_token": "at-1", "refresh_token": "rt-1", "expires_in": "3600",
            "expires_at": (now / 1000) + 86_400 + 3600, "expires_on": "1700000000",
            "ext_expires_in": 7200, "instance_url": "https://x.my.salesforce.com",
            "id_token": "eyJ-secret", "bot_token": "xoxb-secret",
        }));
        let keep = ["instance_url".to_string()];
        let urls =
            crate::template::Urls::new("https://x.example", None, Default::default()).unwrap();
        let answer = |fields, received| token::Answer {
            fields,
            metadata_keys: &keep,
            urls: &urls,
            default_lifetime: std::time::Duration::from_secs(3600),
            received,
        };
        let v = g
            .store_authorized("c1", "lab", "email", &answer(&first, now))
            .await
            .unwrap();
        let row = g.store.get("c1").await.unwrap().unwrap();
        assert_eq!(row.expires_at, Some(now + 3_600_000));
        assert_eq!(
            v.metadata,
            serde_json::json!({"instance_url": "https://x.my.salesforce.com"})
        );
        assert_eq!(
            v.scopes,
            vec!["email"],
            "requested scopes when the answer has none"
        );
        let t = g.store.transitions("c1").await.unwrap();
        assert_eq!(t.last().unwrap().cause, "created");

        // Re-authorized from needs_reauth without a new refresh token: the old one is kept,
        // metadata and created_at survive, and the transition says how it came back.
        let mut paused = row.clone();
        paused.version += 1;
        paused.status = Status::NeedsReauth;
        assert!(g.store.cas(&paused, row.version, None).await.unwrap());
        let again = fields(serde_json::json!({"access_token": "at-2", "scope": "email,profile"}));
        g.store_authorized("c1", "lab", "email", &answer(&again, now + 5))
            .await
            .unwrap();
        let grant = g.load("c1").await.unwrap();
        assert_eq!(grant.access_token.as_ref().unwrap().expose(), "at-2");
        assert_eq!(grant.refresh_token.as_ref().unwrap().expose(), "rt-1");
        assert_eq!(grant.created_at, row.created_at);
        assert_eq!(
            grant.expires_at,
            Some(now + 5 + 3_600_000),
            "default lifetime"
        );
        assert_eq!(grant.scopes, "email profile");
        assert_eq!(
            grant.metadata["instance_url"],
            "https://x.my.salesforce.com"
        );
        let t = g.store.transitions("c1").await.unwrap();
        assert_eq!(t.last().unwrap().cause, "reauthorized");
    }
}
