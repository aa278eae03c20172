//! The third phase, and the connection policy in one place: which grant a request uses, when
//! it is refreshed, paused or replayed.
//!
//! A request that names a connection is refused when the connection is unknown, belongs to
//! another integration or is `needs_reauth` (the provider is not touched); an expired token is
//! refreshed (single-flight) before sending; after the response, a `reauth` signal pauses the
//! connection and a `refresh` signal refreshes once and replays a kept body once. It must not
//! build responses (it returns a [`Refusal`] for [`super::respond`]) and must never let a token
//! reach a log line or an error.

use std::sync::Arc;
use std::time::Duration;

use http::Response;

use super::forward::{Head, Replay};
use super::respond::{Failure, Refusal};
use super::rewrite::Signal;
use super::route::Target;
use super::Proxy;
use crate::body::{Body, IdleTimeout};
use crate::connections::refresh::{Refreshed, Refresher};
use crate::connections::{Connection, ConnectionError, Connections};
use crate::store::Status;
use crate::time::now_ms;
use hyper::body::Incoming;

/// The connection data plane: grants, the refresher, and how each integration injects.
pub struct ConnectionPolicy {
    pub connections: Arc<Connections>,
    pub refresher: Arc<Refresher>,
}

impl ConnectionPolicy {
    pub fn new(connections: Arc<Connections>, refresher: Arc<Refresher>) -> ConnectionPolicy {
        ConnectionPolicy {
            connections,
            refresher,
        }
    }

    /// A grant whose access token can be sent now, refreshing first when it is expired.
    async fn resolve(&self, id: &str, integration: &str) -> Result<Arc<Connection>, Refusal> {
        let grant = match self.connections.cached(id) {
            Some(g) => g,
            // A healthy store answers in milliseconds; the request path does not wait longer
            // than this to find out it is down.
            None => {
                match tokio::time::timeout(Duration::from_millis(500), self.connections.load(id))
                    .await
                {
                    Ok(Ok(g)) => g,
                    Ok(Err(ConnectionError::Store(e))) => self.stale(id, e.to_string())?,
                    Err(_) => self.stale(id, "the store did not answer within 500 ms".into())?,
                    Ok(Err(e)) => return Err(refusal(e)),
                }
            }
        };
        if grant.integration != integration {
            return Err(Refusal::WrongIntegration {
                actual: grant.integration.clone(),
                wanted: integration.to_string(),
            });
        }
        if grant.status == Status::NeedsReauth {
            return Err(Refusal::NeedsReauth);
        }
        let margin = self.refresher.config().expiry_margin.as_millis() as i64;
        let now = now_ms();
        if grant.fresh(now, margin) {
            return Ok(grant);
        }
        match self.refresher.refresh(id, grant.version).await {
            Refreshed::Ok { grant, .. } => Ok(grant),
            Refreshed::NeedsReauth { .. } => Err(Refusal::NeedsReauth),
            Refreshed::NotFound => Err(Refusal::NotFound),
            // Nothing to refresh with: send what we have and let the provider answer.
            Refreshed::Impossible { .. } if grant.access_token.is_some() => Ok(grant),
            Refreshed::Impossible { error } => Err(Refusal::Broken(error)),
            // Inside the margin but not yet expired: the old token still works.
            Refreshed::Transient { .. } | Refreshed::ConfigError { .. } if grant.fresh(now, 0) => {
                Ok(grant)
            }
            Refreshed::ConfigError { error } => Err(Refusal::ConfigError { error }),
            Refreshed::Transient { error, retry_at } => {
                Err(Refusal::Unavailable { error, retry_at })
            }
        }
    }

    /// The store is unreachable: keep serving what this process last knew.
    fn stale(&self, id: &str, error: String) -> Result<Arc<Connection>, Refusal> {
        self.connections
            .cached_stale(id)
            .ok_or(Refusal::Unavailable {
                error,
                retry_at: None,
            })
    }

    /// After a `refresh` verdict (or an `invalid_token` 401): one single-flight refresh past
    /// the version the request used.
    async fn refresh_after_rejection(&self, grant: &Connection) -> Option<Arc<Connection>> {
        match self.refresher.refresh(&grant.id, grant.version).await {
            Refreshed::Ok { grant, .. } => Some(grant),
            _ => None,
        }
    }

    /// A live `reauth` verdict pauses the connection (unless it changed meanwhile).
    async fn pause(&self, grant: &Connection, detail: serde_json::Value) {
        if let Err(e) = self
            .connections
            .mark_needs_reauth(&grant.id, grant.version, detail)
            .await
        {
            tracing::warn!(connection = %grant.id, error = %e, "could not record needs_reauth");
        }
    }
}

fn refusal(e: ConnectionError) -> Refusal {
    match e {
        ConnectionError::NotFound(_) => Refusal::NotFound,
        other => Refusal::Broken(other.to_string()),
    }
}

impl Proxy {
    /// A request that names a connection: resolve a usable token, send, and act on what the
    /// response signals (pause; or refresh once and replay once when the body was kept).
    pub(super) async fn for_connection(
        &self,
        target: Target<'_>,
        mut head: Head,
        body: IdleTimeout<Incoming>,
        id: &str,
    ) -> Result<Response<Body>, Failure> {
        let policy = self.policy.as_ref().ok_or(Failure::ConnectionsDisabled)?;
        let refused = |refusal| Failure::Connection {
            id: id.to_string(),
            refusal,
        };
        let grant = policy.resolve(id, target.name).await.map_err(refused)?;
        let (first, kept, _budget) = match self.keep_for_replay(&head, body).await? {
            Replay::Kept(bytes, held) => (Replay::body(&bytes), Some(bytes), held),
            Replay::Streamed(body) => (head.streamed(body), None, None),
        };
        let (resp, signal) = self.send(target, head.clone(), first, Some(&grant)).await?;
        let fresh = match fixed_signal(&grant, &resp, signal) {
            Signal::None => return Ok(resp),
            Signal::Reauth(detail) => {
                policy.pause(&grant, detail).await;
                return Ok(resp);
            }
            Signal::Refresh => policy.refresh_after_rejection(&grant).await,
        };
        // A streamed body cannot be sent again: the next call uses the new token.
        let (Some(fresh), Some(bytes)) = (fresh, kept) else {
            return Ok(resp);
        };
        let (resp, signal) = self
            .send(target, head, Replay::body(&bytes), Some(&fresh))
            .await?;
        if let Signal::Reauth(detail) = signal {
            policy.pause(&fresh, detail).await;
        }
        Ok(resp)
    }
}

/// An API key or Basic login cannot be refreshed: a `refresh` verdict, or a plain 401 no rule
/// explained, means the stored credential was rejected and a new one is needed.
fn fixed_signal(grant: &Connection, resp: &Response<Body>, signal: Signal) -> Signal {
    if !grant.kind.fixed() {
        return signal;
    }
    let rejected = |rule: Option<&str>| {
        Signal::Reauth(serde_json::json!({
            "rule": rule,
            "error": "credential_rejected",
            "message": format!("the provider rejected the stored {}", grant.kind.as_str()),
            "status": resp.status().as_u16(),
        }))
    };
    let rule = resp
        .headers()
        .get(super::respond::GRANTD_RULE)
        .and_then(|v| v.to_str().ok());
    match signal {
        Signal::Refresh => rejected(rule),
        Signal::None if resp.status() == http::StatusCode::UNAUTHORIZED && rule.is_none() => {
            rejected(None)
        }
        other => other,
    }
}
