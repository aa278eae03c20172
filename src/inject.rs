//! Token injection: which connection a request names, getting a usable token for it, and
//! putting that token where the provider expects it.
//!
//! Owns the request-path policy of connections: unknown or foreign connections are refused,
//! `needs_reauth` connections are paused without touching the provider, expired tokens are
//! refreshed (single-flight) before sending, and a live `reauth` verdict pauses the
//! connection. It must not speak HTTP itself (`proxy` turns a [`Refusal`] into a response) and
//! must never let a token reach a log line or an error.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::grants::refresh::{Refreshed, Refresher};
use crate::grants::{Grant, GrantError, Grants};
use crate::rules::file::Inject;
use crate::store::Status;
use crate::time::now_ms;

/// The connection data plane: grants, the refresher, and how each integration injects.
pub struct Connections {
    pub grants: Arc<Grants>,
    pub refresher: Arc<Refresher>,
    injects: HashMap<String, Inject>,
}

/// Why a request naming a connection is not sent.
#[derive(Debug)]
pub enum Refusal {
    NotFound,
    WrongIntegration {
        actual: String,
    },
    NeedsReauth,
    ConfigError {
        error: String,
    },
    /// The token is expired and refreshing failed for now.
    Unavailable {
        error: String,
        retry_at: Option<i64>,
    },
    Broken(String),
}

/// Who is asking and for which connection, as a request's headers say.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Named {
    /// `Grantd-Connection: {id}` or, for SDKs that only let you set a token,
    /// `Authorization: Bearer grantd:{id}`.
    pub connection: Option<String>,
    /// The caller's token: `Proxy-Authorization: Bearer {token}`, or the SDK form
    /// `Authorization: Bearer grantd:{id}/{token}`.
    pub caller_token: Option<String>,
}

/// Takes the connection and the caller's token out of the headers. `Proxy-Authorization`
/// always goes; the app's `Authorization` goes whenever a connection is named, so neither ever
/// reaches the provider.
pub fn take_names(headers: &mut HeaderMap) -> Named {
    let bearer = |name: HeaderName, headers: &HeaderMap| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(|v| v.trim().to_string())
    };
    let mut caller_token = bearer(header::PROXY_AUTHORIZATION, headers);
    headers.remove(header::PROXY_AUTHORIZATION);
    let named = headers
        .get("grantd-connection")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string());
    let from_auth = bearer(header::AUTHORIZATION, headers)
        .and_then(|v| v.strip_prefix("grantd:").map(str::to_string))
        .map(|v| match v.split_once('/') {
            Some((id, token)) => {
                caller_token = caller_token.take().or(Some(token.to_string()));
                id.to_string()
            }
            None => v,
        });
    let connection = named.or(from_auth).filter(|id| !id.is_empty());
    if connection.is_some() {
        headers.remove("grantd-connection");
        headers.remove(header::AUTHORIZATION);
    }
    Named {
        connection,
        caller_token,
    }
}

impl Connections {
    pub fn new(
        grants: Arc<Grants>,
        refresher: Arc<Refresher>,
        injects: HashMap<String, Inject>,
    ) -> Connections {
        Connections {
            grants,
            refresher,
            injects,
        }
    }

    /// A grant whose access token can be sent now, refreshing first when it is expired.
    pub async fn resolve(&self, id: &str, integration: &str) -> Result<Arc<Grant>, Refusal> {
        let grant = match self.grants.cached(id) {
            Some(g) => g,
            // A healthy store answers in milliseconds; the request path does not wait longer
            // than this to find out it is down.
            None => {
                match tokio::time::timeout(Duration::from_millis(500), self.grants.load(id)).await {
                    Ok(Ok(g)) => g,
                    Ok(Err(GrantError::Store(e))) => self.stale(id, e.to_string())?,
                    Err(_) => self.stale(id, "the store did not answer within 500 ms".into())?,
                    Ok(Err(e)) => return Err(refusal(e)),
                }
            }
        };
        if grant.integration != integration {
            return Err(Refusal::WrongIntegration {
                actual: grant.integration.clone(),
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
    fn stale(&self, id: &str, error: String) -> Result<Arc<Grant>, Refusal> {
        self.grants.cached_stale(id).ok_or(Refusal::Unavailable {
            error,
            retry_at: None,
        })
    }

    /// After a `refresh` verdict (or an `invalid_token` 401): one single-flight refresh past
    /// the version the request used.
    pub async fn refresh_after_rejection(&self, grant: &Grant) -> Option<Arc<Grant>> {
        match self.refresher.refresh(&grant.id, grant.version).await {
            Refreshed::Ok { grant, .. } => Some(grant),
            _ => None,
        }
    }

    /// A live `reauth` verdict pauses the connection (unless it changed meanwhile).
    pub async fn pause(&self, grant: &Grant, detail: serde_json::Value) {
        if let Err(e) = self
            .grants
            .mark_needs_reauth(&grant.id, grant.version, detail)
            .await
        {
            tracing::warn!(connection = %grant.id, error = %e, "could not record needs_reauth");
        }
    }

    /// Puts the access token where the integration wants it: a header (default
    /// `Authorization: Bearer {access_token}`) or a query parameter.
    pub fn apply(
        &self,
        integration: &str,
        grant: &Grant,
        headers: &mut HeaderMap,
        query: &mut Option<String>,
    ) -> Result<(), String> {
        let Some(token) = grant.access_token.as_ref() else {
            return Ok(());
        };
        let default = Inject::default();
        let inject = self.injects.get(integration).unwrap_or(&default);
        if let Some(param) = &inject.query {
            let pair: String = form_urlencoded::Serializer::new(String::new())
                .append_pair(param, token.expose())
                .finish();
            *query = Some(match query.take() {
                Some(q) if !q.is_empty() => format!("{q}&{pair}"),
                _ => pair,
            });
            return Ok(());
        }
        let name = HeaderName::from_bytes(inject.header.as_bytes())
            .map_err(|_| "bad inject header".to_string())?;
        let mut value =
            HeaderValue::from_str(&inject.format.replace("{access_token}", token.expose()))
                .map_err(|_| {
                    format!(
                        "connection `{}` has a token that is not a valid header value",
                        grant.id
                    )
                })?;
        // Keeps HTTP/2 HPACK from indexing it.
        value.set_sensitive(true);
        headers.insert(name, value);
        Ok(())
    }
}

fn refusal(e: GrantError) -> Refusal {
    match e {
        GrantError::NotFound(_) => Refusal::NotFound,
        other => Refusal::Broken(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_comes_from_its_header_or_a_grantd_bearer() {
        let mut h = HeaderMap::new();
        h.insert("grantd-connection", HeaderValue::from_static("acct_1"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer app-token"),
        );
        assert_eq!(take_names(&mut h).connection.as_deref(), Some("acct_1"));
        assert!(
            h.get(header::AUTHORIZATION).is_none(),
            "the app's Authorization never goes upstream"
        );

        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer grantd:acct_2"),
        );
        assert_eq!(take_names(&mut h).connection.as_deref(), Some("acct_2"));
        assert!(h.is_empty());

        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer app-token"),
        );
        assert_eq!(take_names(&mut h), Named::default());
        assert!(
            h.get(header::AUTHORIZATION).is_some(),
            "no connection named: the app's own token is its business"
        );
    }

    #[test]
    fn the_caller_token_comes_from_proxy_authorization_or_the_sdk_form() {
        let mut h = HeaderMap::new();
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Bearer gdc_abc"),
        );
        h.insert("grantd-connection", HeaderValue::from_static("acct_1"));
        let named = take_names(&mut h);
        assert_eq!(named.caller_token.as_deref(), Some("gdc_abc"));
        assert_eq!(named.connection.as_deref(), Some("acct_1"));
        assert!(h.is_empty(), "{h:?}");

        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer grantd:acct:2@x/gdc_def"),
        );
        let named = take_names(&mut h);
        assert_eq!(named.connection.as_deref(), Some("acct:2@x"));
        assert_eq!(named.caller_token.as_deref(), Some("gdc_def"));
        assert!(h.is_empty());
    }
}
