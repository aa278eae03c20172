//! Building each integration's OAuth client (the rule file's `auth:` plus the deployment's
//! credentials and evaluation limits), and the variants a renewal needs.
//!
//! Owns which integrations get a client; what a client sends is [`super::token`]'s.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::token::OAuthClient;
use super::Secret;
use crate::config::EvaluationConfig;
use crate::rules::RuleSet;

/// Builds the OAuth clients from the rule files and the deployment config. An integration
/// with `auth:` but no `client_id` is left out (its connections cannot be refreshed).
pub fn oauth_clients(
    config: &crate::config::Config,
    sets: &BTreeMap<String, RuleSet>,
) -> anyhow::Result<HashMap<String, OAuthClient>> {
    let mut out = HashMap::new();
    for (name, set) in sets {
        let Some(auth) = &set.auth else { continue };
        let over = config.integrations.get(name);
        let minted = set.credentials.oauth2_client_credentials.is_some()
            || set.credentials.jwt_bearer.is_some();
        let client_id = match over
            .and_then(|o| o.client_id.clone())
            .filter(|id| !id.is_empty())
        {
            Some(id) => id,
            // Client credentials may come with each connection; a JWT needs none.
            None if minted => String::new(),
            None => {
                tracing::info!(integration = %name, "no client_id configured: its connections will not be refreshed");
                continue;
            }
        };
        let urls = set.urls(over).map_err(anyhow::Error::msg)?;
        let Some(token_url) = urls.token.clone() else {
            continue;
        };
        out.insert(
            name.clone(),
            OAuthClient {
                auth: auth.clone(),
                token_url,
                urls,
                authorize_url: over
                    .and_then(|o| o.authorize_url.clone())
                    .or_else(|| auth.authorize_url.clone()),
                redirect_uri: over.and_then(|o| o.redirect_uri.clone()),
                scopes: over.map(|o| o.scopes.clone()).unwrap_or_default(),
                client_id: Secret::new(client_id),
                client_secret: over
                    .and_then(|o| o.client_secret.clone())
                    .filter(|s| !s.is_empty())
                    .map(Secret::new),
                rules: Arc::new(set.clone()),
                eval: token_budget(&config.evaluation),
            },
        );
    }
    Ok(out)
}

/// The limits token rules run under: the configured ones, but at least the rule-test budget's
/// time. Token responses are rare, and one misread under load (a rule cut off by the clock)
/// would cost a retry cycle, so they get at least a second; depth and length limits stay.
fn token_budget(configured: &EvaluationConfig) -> EvaluationConfig {
    crate::rules::at_least_test_budget(configured)
}

impl OAuthClient {
    /// Whether the deployment configured a client id (the authorization-code flow needs one).
    pub fn configured(&self) -> bool {
        !self.client_id.expose().is_empty()
    }

    /// The same client without client authentication (a JWT bearer assertion is its own).
    pub fn with_no_client(&self) -> OAuthClient {
        OAuthClient {
            client_id: Secret::new(""),
            client_secret: None,
            ..self.clone()
        }
    }

    /// The same client with a connection's own credentials (client credentials per tenant).
    pub fn with_credentials(&self, id: Option<&str>, secret: Option<&str>) -> OAuthClient {
        let mut c = self.clone();
        if let Some(id) = id {
            c.client_id = Secret::new(id);
        }
        if let Some(secret) = secret {
            c.client_secret = Some(Secret::new(secret));
        }
        c
    }
}
