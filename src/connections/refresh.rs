//! The single-flight refresher.
//!
//! In process, concurrent callers for one connection share one flight. Across processes, a
//! lease in the store (owner + deadline, taken by compare-and-swap) admits one refresher; the
//! token call's hard timeout is shorter than the lease, a waiter takes over an expired lease,
//! and everyone re-reads the row before calling the provider. A new token pair is written (CAS
//! on `version`, lease released in the same write) before anyone uses it; a write that fails
//! is retried, never dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OnceCell, Semaphore};
use tracing::Instrument as _;

use super::credential::Kind;
use super::mint;
pub use super::refreshed::Refreshed;
use super::revoke::{self, Revocation};
use super::token::{self, Failure, OAuthClient, TokenResult};
use super::{Connection, Connections};
use crate::config::RefreshConfig;
use crate::store::{ConnectionRow, LastError, Status, Transition};
use crate::time::now_ms;
use crate::traces;
use crate::upstream::UpstreamClient;

pub struct Refresher {
    pub(super) connections: Arc<Connections>,
    client: UpstreamClient,
    clients: HashMap<String, OAuthClient>,
    pub(super) config: RefreshConfig,
    pub(super) runtime: tokio::runtime::Handle,
    process: String,
    flight_seq: AtomicU64,
    flights: Mutex<HashMap<String, Arc<OnceCell<Refreshed>>>>,
    caps: HashMap<String, Arc<Semaphore>>,
    /// Per integration, the proactive loop's own budget (kept apart from `caps`, which the
    /// refresh itself takes).
    pub(super) proactive: HashMap<String, Arc<Semaphore>>,
    /// Signalled when a proactive refresh ends: its permit is free for the next claim.
    pub(super) freed: tokio::sync::Notify,
    token_calls: AtomicU64,
}

impl Refresher {
    /// `runtime` is where refreshes run (the control runtime), whoever awaits them.
    pub fn new(
        connections: Arc<Connections>,
        client: UpstreamClient,
        clients: HashMap<String, OAuthClient>,
        config: RefreshConfig,
        runtime: tokio::runtime::Handle,
    ) -> Refresher {
        let semaphores = || -> HashMap<String, Arc<Semaphore>> {
            clients
                .keys()
                .map(|k| {
                    (
                        k.clone(),
                        Arc::new(Semaphore::new(config.max_concurrent_per_integration)),
                    )
                })
                .collect()
        };
        let (caps, proactive) = (semaphores(), semaphores());
        let mut rnd = [0u8; 6];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut rnd);
        let process = format!(
            "{}-{}",
            std::process::id(),
            rnd.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        Refresher {
            connections,
            client,
            clients,
            config,
            runtime,
            process,
            flight_seq: AtomicU64::new(0),
            flights: Mutex::new(HashMap::new()),
            caps,
            proactive,
            freed: tokio::sync::Notify::new(),
            token_calls: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> &RefreshConfig {
        &self.config
    }

    /// Revokes `connection`'s token at its provider (see [`super::revoke`]).
    pub async fn revoke(&self, connection: &Connection) -> Revocation {
        let client = self.clients.get(&connection.integration);
        revoke::revoke(&self.client, client, connection, self.config.token_timeout).await
    }

    /// Token-endpoint calls made by this process (for tests and metrics).
    pub fn token_calls(&self) -> u64 {
        self.token_calls.load(Ordering::Relaxed)
    }

    /// Refreshes `id` unless a version newer than `seen_version` is already stored. Every
    /// concurrent caller for one id in this process shares a single flight.
    pub async fn refresh(self: &Arc<Self>, id: &str, seen_version: i64) -> Refreshed {
        self.refresh_with(id, seen_version, false, None).await
    }

    /// An operator's refresh: ignores a fresh token and any backoff.
    pub async fn force(self: &Arc<Self>, id: &str) -> Refreshed {
        match self.connections.store.get(id).await {
            Ok(Some(row)) => self.refresh_with(id, row.version, true, None).await,
            Ok(None) => Refreshed::NotFound,
            Err(e) => transient(e.to_string(), None),
        }
    }

    /// `held`: the owner of a lease this process already holds on `id` (the proactive loop
    /// claims its work); otherwise the flight takes the lease, waiting for one held elsewhere.
    pub(super) async fn refresh_with(
        self: &Arc<Self>,
        id: &str,
        seen_version: i64,
        force: bool,
        held: Option<String>,
    ) -> Refreshed {
        let cell = {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            match flights.entry(id.to_string()) {
                // A flight already in this process waits for leases, ours included: hand
                // the claim back rather than join it.
                std::collections::hash_map::Entry::Occupied(_) if held.is_some() => None,
                e => Some(e.or_default().clone()),
            }
        };
        let Some(cell) = cell else {
            let owner = held.unwrap_or_default();
            let _ = self.connections.store.release_lease(id, &owner).await;
            return transient(
                "a refresh of this connection is already in flight".into(),
                None,
            );
        };
        let me = self.clone();
        let owned_id = id.to_string();
        let result = cell
            .get_or_init(|| async move {
                // A child of the request that started the flight, wherever it runs.
                let span = traces::refresh();
                // Run on the control runtime: a dropped caller does not cancel the refresh.
                let task = me.runtime.spawn({
                    let me = me.clone();
                    let run = async move {
                        match held {
                            Some(owner) => {
                                me.refresh_holding_lease(&owned_id, &owner, seen_version, force)
                                    .await
                            }
                            None => me.run(&owned_id, seen_version, force).await,
                        }
                    };
                    run.instrument(span.clone())
                });
                let result = task.await.unwrap_or_else(|e| Refreshed::Transient {
                    error: format!("refresh task failed: {e}"),
                    retry_at: None,
                });
                span.record("grantd.refresh.outcome", result.outcome());
                result
            })
            .await
            .clone();
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if flights.get(id).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            flights.remove(id);
        }
        result
    }

    /// A lease owner unique to one flight (or one claim) of this process.
    pub(super) fn lease_owner(&self) -> String {
        format!(
            "{}:{}",
            self.process,
            self.flight_seq.fetch_add(1, Ordering::Relaxed)
        )
    }

    async fn run(self: Arc<Self>, id: &str, seen_version: i64, force: bool) -> Refreshed {
        let owner = self.lease_owner();
        let give_up = now_ms()
            + 2 * self.config.lease.as_millis() as i64
            + self.config.token_timeout.as_millis() as i64;
        let asked = Instant::now();
        let mut waiting: Option<tracing::Span> = None;
        loop {
            let row = match self.connections.store.get(id).await {
                Ok(Some(row)) => row,
                Ok(None) => return Refreshed::NotFound,
                Err(e) => return transient(format!("{e}"), None),
            };
            let now = now_ms();
            // Observed once per refresh that took the lease or waited for it, however it ended.
            let lease_waited = || self.lease_waited(&row.integration, asked);
            if let Some(done) = self.already_settled(&row, seen_version, now, force) {
                if waiting.is_some() {
                    lease_waited();
                }
                return done;
            }
            if self
                .connections
                .store
                .acquire_lease(
                    id,
                    &owner,
                    now,
                    now + self.config.lease.as_millis() as i64,
                    self.config.max_concurrent_per_integration,
                )
                .await
                .unwrap_or(false)
            {
                lease_waited();
                drop(waiting); // the wait is over before the token call starts
                return self
                    .refresh_holding_lease(id, &owner, seen_version, force)
                    .await;
            }
            if now > give_up {
                lease_waited();
                return transient(
                    "timed out waiting for another refresher's lease".into(),
                    None,
                );
            }
            let span = waiting.get_or_insert_with(|| traces::lease_wait(&row.integration));
            let poll = tokio::time::sleep(self.config.lease_poll);
            poll.instrument(span.clone()).await;
        }
    }

    fn lease_waited(&self, integration: &str, since: Instant) {
        if let Some(m) = self.connections.metrics().lifecycle(integration) {
            m.lease_waited(since.elapsed().as_secs_f64());
        }
    }

    /// What a re-read row says before any token call: someone else refreshed, the connection
    /// is paused, backing off, or cannot be refreshed. `None` means "go ahead".
    fn already_settled(
        &self,
        row: &ConnectionRow,
        seen_version: i64,
        now: i64,
        force: bool,
    ) -> Option<Refreshed> {
        let margin = self.config.expiry_margin.as_millis() as i64;
        let grant = match self.connections.open(row) {
            Ok(g) => g,
            Err(e) => {
                return Some(Refreshed::Impossible {
                    error: e.to_string(),
                })
            }
        };
        if row.status == Status::NeedsReauth {
            // Another process may have paused it: let this process's cache know, so its
            // requests stop reaching the provider too.
            self.connections.remember(grant);
            return Some(Refreshed::NeedsReauth {
                error: last_code(row),
            });
        }
        if row.version > seen_version && row.status == Status::Active && grant.fresh(now, margin) {
            let grant = self.connections.remember(grant);
            return Some(Refreshed::Ok {
                version: row.version,
                expires_at: row.expires_at,
                grant,
            });
        }
        if !grant.renewable() {
            return Some(Refreshed::Impossible {
                error: match grant.kind {
                    Kind::Oauth2 => "the connection has no refresh token".into(),
                    k => format!("a `{}` credential is sent as stored", k.as_str()),
                },
            });
        }
        if !self.clients.contains_key(&row.integration) {
            return Some(Refreshed::Impossible {
                error: format!("integration `{}` has no OAuth client (auth: in its rule file, client_id in the config)", row.integration),
            });
        }
        if let Some(at) = row.next_attempt_at.filter(|&at| at > now && !force) {
            // Still the operator's problem until the next attempt says otherwise.
            if row.status == Status::ConfigError {
                return Some(Refreshed::ConfigError {
                    error: last_code(row),
                });
            }
            return Some(transient(
                format!(
                    "backing off after {} failures: {}",
                    row.refresh_failures,
                    last_code(row)
                ),
                Some(at),
            ));
        }
        None
    }

    async fn refresh_holding_lease(
        &self,
        id: &str,
        owner: &str,
        seen_version: i64,
        force: bool,
    ) -> Refreshed {
        // Re-read under the lease: another process may have refreshed and released its lease
        // between our read and our lease. Its token is then used, not refreshed again.
        let row = match self.connections.store.get(id).await {
            Ok(Some(row)) => row,
            Ok(None) => return Refreshed::NotFound,
            Err(e) => {
                let _ = self.connections.store.release_lease(id, owner).await;
                return transient(e.to_string(), None);
            }
        };
        // Once per refresh span: every refresh that holds the lease passes here exactly once.
        tracing::Span::current().record("grantd.integration", row.integration.as_str());
        if let Some(settled) = self.already_settled(&row, seen_version, now_ms(), force) {
            let _ = self.connections.store.release_lease(id, owner).await;
            return settled;
        }
        let grant = match self.connections.open(&row) {
            Ok(g) => g,
            Err(e) => {
                let _ = self.connections.store.release_lease(id, owner).await;
                return Refreshed::Impossible {
                    error: e.to_string(),
                };
            }
        };
        let client = &self.clients[&row.integration];
        let _permit = self.caps[&row.integration].acquire().await;
        let started = Instant::now();
        let answer = self.call_token_endpoint(client, &grant).await;
        // A minted token has no user behind it: a rejected grant is the operator's to fix.
        let result = answer.minted(grant.kind.minted());
        if let Some(m) = self.connections.metrics().lifecycle(&row.integration) {
            m.refreshed(result.outcome(), started.elapsed().as_secs_f64());
        }
        self.store_result(row, grant, result, client).await
    }

    async fn call_token_endpoint(&self, client: &OAuthClient, grant: &Connection) -> TokenResult {
        self.token_calls.fetch_add(1, Ordering::Relaxed);
        let renewal = match mint::renewal(client, grant, now_ms()) {
            Ok(r) => r,
            Err(e) => return TokenResult::Config(token::failure("invalid_request", None, Some(e))),
        };
        let form: Vec<(&str, &str)> = renewal
            .form
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        token::call(
            &self.client,
            &renewal.client,
            &form,
            &grant.metadata,
            self.config.token_timeout,
        )
        .instrument(traces::token_call(&grant.integration))
        .await
    }

    /// Applies a token-endpoint result with a CAS that also releases the lease. A failed write
    /// of new tokens is retried (the provider may already have rotated the old refresh token).
    /// `client`: whose rule file says which token-answer fields are kept as metadata.
    async fn store_result(
        &self,
        row: ConnectionRow,
        grant: Connection,
        result: TokenResult,
        client: &OAuthClient,
    ) -> Refreshed {
        let (next, transition, outcome) = self.decide(&row, &grant, result, client, now_ms());
        if let Err(theirs) = self.write(&row, &next, transition.clone()).await {
            return theirs;
        }
        self.connections
            .count_transition(&row.integration, transition.as_ref());
        log_outcome(&row, &next, transition.as_ref());
        match outcome {
            Some(o) => {
                self.connections.forget(&row.id);
                o
            }
            None => match self.connections.open(&next) {
                Ok(g) => {
                    let g = self.connections.remember(g);
                    Refreshed::Ok {
                        version: next.version,
                        expires_at: next.expires_at,
                        grant: g,
                    }
                }
                Err(e) => Refreshed::Impossible {
                    error: e.to_string(),
                },
            },
        }
    }

    /// Where a refresh is decided: the row after `result`, the status change it records, and
    /// what the caller is told unless the new tokens are opened (`None`).
    fn decide(
        &self,
        row: &ConnectionRow,
        grant: &Connection,
        result: TokenResult,
        client: &OAuthClient,
        now: i64,
    ) -> (ConnectionRow, Option<Transition>, Option<Refreshed>) {
        let mut next = row.clone();
        next.version = row.version + 1;
        next.updated_at = now;
        next.lease_owner = None;
        next.lease_until = None;
        let (transition, outcome);
        match result {
            TokenResult::Tokens(fields) => {
                let answer = token::Answer {
                    fields: &fields,
                    metadata_keys: &client.auth.token_metadata,
                    urls: &client.urls,
                    default_lifetime: self.config.default_lifetime,
                    received: now,
                };
                token::apply_tokens(
                    &self.connections,
                    &mut next,
                    &answer,
                    grant.refresh_token.as_ref(),
                );
                transition = (row.status != Status::Active).then(|| Transition {
                    from: Some(row.status),
                    to: Status::Active,
                    cause: "refresh_succeeded".into(),
                    detail: serde_json::json!({}),
                });
                outcome = None;
            }
            TokenResult::Connection(f) => {
                next.status = Status::NeedsReauth;
                next.last_error = Some(last_error(&f, "invalid_grant", now));
                transition = Some(failed_transition(row.status, Status::NeedsReauth, &f));
                outcome = Some(Refreshed::NeedsReauth {
                    error: f.code.clone(),
                });
            }
            TokenResult::Config(f) => {
                next.status = Status::ConfigError;
                next.refresh_failures = row.refresh_failures + 1;
                next.next_attempt_at = Some(now + self.backoff(next.refresh_failures));
                next.last_error = Some(last_error(&f, "invalid_client", now));
                transition = (row.status != Status::ConfigError)
                    .then(|| failed_transition(row.status, Status::ConfigError, &f));
                outcome = Some(Refreshed::ConfigError {
                    error: f.code.clone(),
                });
            }
            TokenResult::Transient(f, retry_after) => {
                next.refresh_failures = row.refresh_failures + 1;
                let at = now
                    + retry_after.map_or_else(|| self.backoff(next.refresh_failures), |s| s * 1000);
                next.next_attempt_at = Some(at);
                next.last_error = Some(last_error(&f, "transient", now));
                transition = None;
                outcome = Some(transient(
                    format!("{}: {}", f.code, f.description.clone().unwrap_or_default()),
                    Some(at),
                ));
            }
        }
        (next, transition, outcome)
    }

    /// Writes the decided row, retrying while the store fails: the provider may already have
    /// rotated the refresh token, so this result must not be dropped. `Err` when someone else
    /// replaced the row meanwhile (theirs wins, and is what the caller gets).
    async fn write(
        &self,
        row: &ConnectionRow,
        next: &ConnectionRow,
        transition: Option<Transition>,
    ) -> Result<(), Refreshed> {
        let mut delay = Duration::from_millis(50);
        loop {
            match self
                .connections
                .store
                .cas(next, row.version, transition.clone())
                .await
            {
                Ok(true) => return Ok(()),
                // Someone replaced the row (a PUT) while we held the lease: theirs wins.
                Ok(false) => {
                    return Err(match self.connections.load(&row.id).await {
                        Ok(g) => Refreshed::Ok {
                            version: g.version,
                            expires_at: g.expires_at,
                            grant: g,
                        },
                        Err(e) => transient(e.to_string(), None),
                    })
                }
                Err(e) => {
                    tracing::error!(connection = %row.id, error = %e, "cannot store the refresh result; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Exponential backoff with full jitter, capped.
    fn backoff(&self, failures: i64) -> i64 {
        let base = self.config.backoff_base.as_millis() as i64;
        let cap = self.config.backoff_max.as_millis() as i64;
        let ceiling = base.saturating_mul(1 << failures.clamp(0, 20)).min(cap);
        ceiling / 2 + jitter(ceiling / 2 + 1)
    }
}

fn transient(error: String, retry_at: Option<i64>) -> Refreshed {
    Refreshed::Transient { error, retry_at }
}

fn last_code(row: &ConnectionRow) -> String {
    row.last_error
        .as_ref()
        .map_or_else(|| row.status.as_str().to_string(), |e| e.class.clone())
}

fn last_error(f: &Failure, class: &str, now: i64) -> LastError {
    LastError {
        class: if f.code.is_empty() {
            class.into()
        } else {
            f.code.clone()
        },
        provider_status: f.status,
        description: f.description.clone(),
        at: now,
    }
}

fn failed_transition(from: Status, to: Status, f: &Failure) -> Transition {
    Transition {
        from: Some(from),
        to,
        cause: "refresh_failed".into(),
        detail: serde_json::json!({"code": f.code, "status": f.status, "description": f.description, "detail": f.detail}),
    }
}

fn log_outcome(row: &ConnectionRow, next: &ConnectionRow, transition: Option<&Transition>) {
    match transition {
        Some(t) => {
            tracing::warn!(connection = %row.id, integration = %row.integration, from = %row.status, to = %t.to, cause = %t.cause, "connection status changed")
        }
        None if next.last_error.is_some() => {
            tracing::info!(connection = %row.id, integration = %row.integration, failures = next.refresh_failures, "refresh failed transiently; backing off")
        }
        None => {
            tracing::debug!(connection = %row.id, integration = %row.integration, version = next.version, "token refreshed")
        }
    }
}

pub(super) fn jitter(below: i64) -> i64 {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    (u64::from_le_bytes(b) % below.max(1) as u64) as i64
}
