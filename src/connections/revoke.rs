//! Revocation on delete (RFC 7009): before a connection is deleted, its refresh token (or,
//! without one, its access token) is revoked at the integration's `auth.revocation_url`, best
//! effort and bounded by the token timeout. Deleting never waits on the provider's opinion.
//!
//! Owns the revocation request and what its outcome is called; deleting is the caller's.

use std::time::Duration;

use http_body_util::BodyExt;

use super::credential::Held;
use super::token::{form_request, OAuthClient};
use super::Connection;
use crate::upstream::UpstreamClient;

/// What happened at the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    Revoked,
    /// The integration has no revocation endpoint, or the credential is not a token.
    NotSupported,
    /// `?revoke=false`.
    Skipped,
    Failed(String),
}

impl Revocation {
    /// `revoked`, `not_supported`, `skipped` or `failed: reason`.
    pub fn describe(&self) -> String {
        match self {
            Revocation::Revoked => "revoked".into(),
            Revocation::NotSupported => "not_supported".into(),
            Revocation::Skipped => "skipped".into(),
            Revocation::Failed(why) => format!("failed: {why}"),
        }
    }
}

/// Revokes `grant`'s token with `client` (none: the integration has no OAuth client).
pub async fn revoke(
    http: &UpstreamClient,
    client: Option<&OAuthClient>,
    grant: &Connection,
    timeout: Duration,
) -> Revocation {
    let Some(client) = client else {
        return Revocation::NotSupported;
    };
    let Some(endpoint) = &client.urls.revocation else {
        return Revocation::NotSupported;
    };
    let (token, hint) = match (&grant.refresh_token, &grant.access_token) {
        (Some(r), _) => (r.expose(), "refresh_token"),
        (None, Some(a)) => (a.expose(), "access_token"),
        (None, None) => return Revocation::NotSupported,
    };
    // A minted token is revoked with the connection's own client, as it was minted.
    let own;
    let client = match &grant.held {
        Some(Held::ClientCredentials {
            client_id,
            client_secret,
        }) => {
            own = client.with_credentials(client_id.as_deref(), client_secret.as_deref());
            &own
        }
        _ => client,
    };
    let form = [("token", token), ("token_type_hint", hint)];
    let request = match endpoint
        .fill(&grant.metadata, &client.urls.hosts)
        .and_then(|url| form_request(client, &url, &form))
    {
        Ok(r) => r,
        Err(e) => return Revocation::Failed(e),
    };
    let sent = tokio::time::timeout(timeout, async {
        let resp = http.request(request).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        // Drained so the connection can be reused; the body says nothing we act on.
        let _ = resp.into_body().collect().await;
        Ok::<_, String>(status)
    })
    .await;
    match sent {
        Err(_) => Revocation::Failed(format!("no answer within {timeout:?}")),
        Ok(Err(e)) => Revocation::Failed(format!("unreachable: {e}")),
        // RFC 7009 §2.2: 200 also for a token that was already invalid.
        Ok(Ok(status)) if status.is_success() => Revocation::Revoked,
        Ok(Ok(status)) => Revocation::Failed(format!("the provider answered {}", status.as_u16())),
    }
}
