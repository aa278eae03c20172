//! Durable connection state behind one trait, on SQLite (one file, the default) or PostgreSQL
//! (a fleet of replicas): one SQL store (`sql.rs`) with a small file per database.
//!
//! Owns rows, leases, the transition log and the events it causes ([`events`]). Every state
//! change is a compare-and-swap on the row's `version`, and a status change writes its
//! transition and its events in the same transaction. It must not see plaintext tokens
//! (`grants` seals them before they get here) and must not decide policy (what a failure means
//! is the refresher's business; what a transition means as an event is [`events`]' pure
//! functions, which the store calls inside the transaction). From the crate it imports only
//! `time` and `config`.

mod census;
#[cfg(test)]
mod conformance;
mod cooldowns;
mod error;
pub mod events;
mod lease;
mod log;
pub mod postgres;
mod rows;
mod sql;
pub mod sqlite;

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Kinds whose access token grantd mints itself (client credentials, JWT bearer): renewed
/// before expiry without a refresh token.
pub const MINTED: &[&str] = &["oauth2_client_credentials", "jwt_bearer"];

/// A claim of due work: lease, for `owner` until `until`, at most `max` of `ids` (all of
/// `integration`) that still expire before `horizon`, soonest first, as far as the fleet-wide
/// `cap` on the integration's live leases leaves room, skipping rows leased or locked elsewhere.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    pub integration: &'a str,
    pub ids: &'a [String],
    pub owner: &'a str,
    pub now: i64,
    pub until: i64,
    pub horizon: i64,
    pub cap: usize,
    pub max: usize,
}

/// Connection status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    /// The grant is dead: only the user consenting again helps. Traffic is paused.
    NeedsReauth,
    /// The integration's client credentials were rejected: the operator must fix config.
    ConfigError,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::NeedsReauth => "needs_reauth",
            Status::ConfigError => "config_error",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "active" => Some(Status::Active),
            "needs_reauth" => Some(Status::NeedsReauth),
            "config_error" => Some(Status::ConfigError),
            _ => None,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The last refresh failure, for operators (never contains a token).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LastError {
    pub class: String,
    pub provider_status: Option<u16>,
    pub description: Option<String>,
    pub at: i64,
}

/// One connection as stored. Tokens are sealed bytes; times are unix milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionRow {
    pub id: String,
    pub integration: String,
    pub status: Status,
    pub key_id: String,
    pub access_token: Option<Vec<u8>>,
    pub refresh_token: Option<Vec<u8>>,
    /// The credential kind (`oauth2`, `api_key`, ...): opaque here, except that [`MINTED`]
    /// kinds are due for renewal like rows with a refresh token.
    pub kind: String,
    /// A kind's long-lived secret, sealed like the tokens.
    pub secret: Option<Vec<u8>>,
    pub expires_at: Option<i64>,
    pub scopes: String,
    pub metadata: serde_json::Value,
    pub version: i64,
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
    pub refresh_failures: i64,
    pub next_attempt_at: Option<i64>,
    pub last_error: Option<LastError>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl ConnectionRow {
    /// A new `active` `oauth2` row with nothing in it yet, created and updated `now`.
    pub fn new(id: &str, integration: &str, now: i64) -> ConnectionRow {
        ConnectionRow {
            id: id.to_string(),
            integration: integration.to_string(),
            status: Status::Active,
            key_id: String::new(),
            access_token: None,
            refresh_token: None,
            kind: "oauth2".into(),
            secret: None,
            expires_at: None,
            scopes: String::new(),
            metadata: serde_json::json!({}),
            version: 0,
            lease_owner: None,
            lease_until: None,
            refresh_failures: 0,
            next_attempt_at: None,
            last_error: None,
            created_at: now,
            updated_at: now,
        }
    }
}

/// A status change and why, recorded with the write that makes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: Option<Status>,
    pub to: Status,
    pub cause: String,
    pub detail: serde_json::Value,
}

/// A recorded transition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransitionRecord {
    pub seq: i64,
    pub connection_id: String,
    pub integration: String,
    pub from_status: Option<Status>,
    pub to_status: Status,
    pub cause: String,
    pub detail: serde_json::Value,
    pub at: i64,
}

/// Filter and page for listing connections (ordered by id; `after` is the last id seen).
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub integration: Option<String>,
    pub status: Option<Status>,
    pub after: Option<String>,
    pub limit: u32,
}

/// Which endpoints receive which event types; the store creates one delivery row per
/// matching endpoint when it writes an event.
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    /// (endpoint name, event types it wants; `None` = all).
    pub endpoints: Vec<(String, Option<Vec<String>>)>,
}

impl Outbox {
    pub fn endpoints_for<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.endpoints
            .iter()
            .filter(move |(_, only)| only.as_ref().is_none_or(|o| o.iter().any(|k| k == kind)))
            .map(|(name, _)| name.as_str())
    }
}

/// One event's delivery to one endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delivery {
    #[serde(skip)]
    pub event_seq: i64,
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub connection_id: Option<String>,
    pub integration: String,
    #[serde(skip)]
    pub payload: String,
    pub endpoint: String,
    pub status: String,
    pub attempts: i64,
    #[serde(skip)]
    pub window_start: i64,
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    pub delivered_at: Option<i64>,
    pub created_at: i64,
}

/// How one delivery attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryResult {
    Delivered,
    Retry { at: i64, error: String },
    Failed { error: String },
}

/// One authorization request in flight (the connect flow). `hash` is the SHA-256 of the
/// `state` sent to the provider; the PKCE verifier is sealed like a token; `browser` (the
/// SHA-256 of a cookie) binds it to the browser that started it, when grantd saw that browser.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectState {
    pub hash: String,
    pub integration: String,
    pub connection_id: String,
    pub key_id: String,
    pub verifier: Option<Vec<u8>>,
    /// Hex SHA-256 of the binding cookie's value; `None`: not bound to a browser.
    pub browser: Option<String>,
    /// redirect_uri, return_to, scopes: what the callback needs besides the code.
    pub detail: serde_json::Value,
    pub created_at: i64,
    pub expires_at: i64,
}

/// What taking a `state` found.
#[derive(Debug, Clone, PartialEq)]
pub enum Taken {
    /// First use: it is now marked used.
    Fresh(ConnectState),
    /// It was used before (a replayed or doubled callback).
    Used(ConnectState),
    /// Unused, but bound to another browser than the caller's: it stays unused.
    Foreign(ConnectState),
    Unknown,
}

pub use error::{ErrorKind, StoreError};
pub use sql::SqlStore;

/// The store trait. Implementations must make `cas` and `put` atomic with their transition.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A cheap round trip, for readiness.
    async fn ping(&self) -> Result<(), StoreError>;
    async fn get(&self, id: &str) -> Result<Option<ConnectionRow>, StoreError>;
    async fn list(&self, query: &ListQuery) -> Result<Vec<ConnectionRow>, StoreError>;
    /// Creates the row or replaces it unconditionally (the app imported new credentials):
    /// version becomes the old one + 1 (or 1), and any lease is dropped. Returns the row.
    async fn put(
        &self,
        row: ConnectionRow,
        transition: Option<Transition>,
    ) -> Result<ConnectionRow, StoreError>;
    /// [`Store::put`] for many rows in one transaction: all are written, or none (a batch
    /// import's chunk).
    async fn put_many(
        &self,
        rows: Vec<(ConnectionRow, Option<Transition>)>,
    ) -> Result<Vec<ConnectionRow>, StoreError>;
    /// Writes `row` (whose `version` must be `expected + 1`) only if the stored version is
    /// still `expected`. False when someone else wrote first.
    async fn cas(
        &self,
        row: &ConnectionRow,
        expected: i64,
        transition: Option<Transition>,
    ) -> Result<bool, StoreError>;
    async fn delete(&self, id: &str) -> Result<bool, StoreError>;
    /// Takes the refresh lease if it is free, expired, or already `owner`'s, and fewer than
    /// `cap` other live leases exist for the connection's integration across every process
    /// (the fleet-wide limit on concurrent token calls).
    async fn acquire_lease(
        &self,
        id: &str,
        owner: &str,
        now: i64,
        until: i64,
        cap: usize,
    ) -> Result<bool, StoreError>;
    async fn release_lease(&self, id: &str, owner: &str) -> Result<(), StoreError>;
    /// Leases some of `claim.ids` (see [`Claim`]). Returns the ids claimed. The proactive
    /// loop's way of splitting due work between replicas.
    async fn claim(&self, claim: &Claim<'_>) -> Result<Vec<String>, StoreError>;
    /// Active connections expiring before `horizon` that may be attempted now and hold no live
    /// lease, soonest first.
    async fn due(
        &self,
        now: i64,
        horizon: i64,
        limit: u32,
    ) -> Result<Vec<ConnectionRow>, StoreError>;
    /// (integration, status, count) for every pair present.
    async fn counts(&self) -> Result<Vec<(String, Status, i64)>, StoreError>;
    /// The callback backlog: deliveries not yet delivered, and when the oldest one's event
    /// was written (`None` when there is none).
    async fn backlog(&self) -> Result<(i64, Option<i64>), StoreError>;
    async fn transitions(&self, id: &str) -> Result<Vec<TransitionRecord>, StoreError>;
    /// Pending deliveries that are due, at most one per (connection, endpoint): the oldest,
    /// so each connection's events arrive in order.
    async fn due_deliveries(&self, now: i64, limit: u32) -> Result<Vec<Delivery>, StoreError>;
    /// Claims a due delivery until `until` (a CAS on its attempt count), so one sender sends it.
    async fn claim_delivery(&self, d: &Delivery, now: i64, until: i64) -> Result<bool, StoreError>;
    async fn finish_delivery(
        &self,
        d: &Delivery,
        result: &DeliveryResult,
        now: i64,
    ) -> Result<(), StoreError>;
    async fn deliveries(
        &self,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError>;
    /// Makes every delivery of the event pending again, now, with a fresh retry window.
    async fn retry_event(&self, id: &str, now: i64) -> Result<bool, StoreError>;
    /// Records an authorization request (and sweeps long-expired ones).
    async fn put_connect_state(&self, state: &ConnectState, now: i64) -> Result<(), StoreError>;
    /// Marks the state used, atomically: of any number of concurrent callers one gets `Fresh`.
    /// A state bound to a browser is taken only with that browser's proof (`browser`, the hex
    /// SHA-256 of its cookie); without it the caller gets `Foreign` and the state stays unused.
    async fn take_connect_state(
        &self,
        hash: &str,
        browser: Option<&str>,
        now: i64,
    ) -> Result<Taken, StoreError>;
    /// Records a connect link's use; false if it was used before.
    async fn use_connect_link(
        &self,
        hash: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError>;
    /// Records a cooldown; of two for the same connection (or integration) the later end wins.
    /// Ended ones are swept.
    async fn put_cooldown(&self, cooldown: &Cooldown) -> Result<(), StoreError>;
    /// The cooldowns still running at `now`.
    async fn cooldowns(&self, now: i64) -> Result<Vec<Cooldown>, StoreError>;
}

/// A provider's rate limit remembered: no call to `integration` (for `connection`, or for any
/// when `None`) before `until` (ms since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cooldown {
    pub integration: String,
    pub connection: Option<String>,
    pub until: i64,
}
