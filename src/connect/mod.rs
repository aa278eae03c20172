//! The connect flow: OAuth 2.0 authorization code with PKCE (RFC 6749 §4.1, RFC 7636), used to
//! connect a new account or to re-authorize a dead connection in place.
//!
//! Owns authorization URLs, `state` (random, stored hashed, bound to one connection and
//! integration and, when a connect link started it, to that browser; expiring, single-use),
//! connect links, the one code exchange per `state`, and the `return_to` allow-list. It writes
//! connections only through [`Connections::store_authorized`] and must not touch the proxy path or
//! the refresher.

pub mod browser;
mod callback;
pub mod link;
mod page;
pub mod public;
mod return_to;
mod text;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::{BrandingConfig, Config, ConnectConfig, RefreshConfig};
use crate::connections::crypto::Keyring;
use crate::connections::token::OAuthClient;
use crate::connections::{validate_id, Connections};
use crate::store::{ConnectState, Store};
use crate::telemetry::ConnectOutcome;
use crate::template::under_prefix;
use crate::time::{now_ms, rfc3339};
use crate::upstream::UpstreamClient;
use browser::CookieScope;
pub use callback::{Answer, Completed};
use link::{LinkError, Links};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
const VERIFIER_AAD: &str = "grantd-pkce-verifier";

/// What an app asks for: connect (or reconnect) `connection_id` on `integration`. Short
/// serialized names keep connect links short.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ConnectRequest {
    #[serde(rename = "i")]
    pub integration: String,
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<String>,
    #[serde(rename = "h", default, skip_serializing_if = "Option::is_none")]
    pub login_hint: Option<String>,
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub return_to: Option<String>,
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
}

/// An error for the app (admin JSON) or the user (a page): `code` is stable, `message` says
/// what to do.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

fn err(status: StatusCode, code: &'static str, message: impl Into<String>) -> ConnectError {
    ConnectError {
        status,
        code,
        message: message.into(),
    }
}

/// A started authorization request.
#[derive(Debug, Clone, Serialize)]
pub struct Started {
    pub integration: String,
    pub connection_id: String,
    pub authorization_url: String,
    pub expires_at: String,
}

/// A used connect link: where the browser goes, and the cookie that binds the flow to it.
#[derive(Debug, Clone)]
pub struct Opened {
    pub authorization_url: String,
    /// A `Set-Cookie` value, when the callback comes back to this listener's origin.
    pub set_cookie: Option<String>,
}

/// How a callback ends for the browser.
#[derive(Debug, Clone, PartialEq)]
pub enum Finished {
    /// Back to the app's `return_to`, with the outcome in the query.
    Redirect(String),
    /// No (valid) `return_to`: a page saying how it went.
    Page(Notice),
}

/// What a page tells the user: `code` is `connected` or a [`ConnectError`] code; `provider`
/// the provider's display name, when the request is known.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub status: StatusCode,
    pub code: &'static str,
    pub provider: Option<String>,
}

/// What the Continue page shows before a connect link is used.
#[derive(Debug, Clone)]
pub struct Preview {
    /// The provider's display name.
    pub provider: String,
    /// The account the app expects (`login_hint`).
    pub account: Option<String>,
    /// Unix milliseconds.
    pub expires_at: i64,
    /// Plain-words descriptions of the scopes asked for (those the rule file describes).
    pub permissions: Vec<String>,
}

pub struct Connect {
    connections: Arc<Connections>,
    /// Connect states and used links live in the store; connections go through `grants`.
    store: Arc<dyn Store>,
    http: UpstreamClient,
    clients: HashMap<String, OAuthClient>,
    keys: Arc<Keyring>,
    links: Option<Arc<Links>>,
    /// Binding cookies, when the public listener is on.
    cookies: Option<CookieScope>,
    config: ConnectConfig,
    refresh: RefreshConfig,
    exchanges: AtomicU64,
}

impl Connect {
    pub fn new(
        connections: Arc<Connections>,
        store: Arc<dyn Store>,
        http: UpstreamClient,
        clients: HashMap<String, OAuthClient>,
        keys: Arc<Keyring>,
        links: Option<Arc<Links>>,
        config: &Config,
    ) -> Connect {
        let (config, refresh) = (config.connect.clone(), config.refresh.clone());
        let cookies = config
            .listen
            .and(config.public_url.as_deref())
            .and_then(CookieScope::new);
        Connect {
            connections,
            store,
            http,
            clients,
            keys,
            links,
            cookies,
            config,
            refresh,
            exchanges: AtomicU64::new(0),
        }
    }

    /// Authorization-code exchanges attempted by this process (for tests and metrics).
    pub fn exchanges(&self) -> u64 {
        self.exchanges.load(Ordering::Relaxed)
    }

    /// Counts a step of the flow; `integration` is `None` when the callback's `state` said nothing.
    fn count(&self, integration: Option<&str>, outcome: ConnectOutcome) {
        self.connections.metrics().connect(integration, outcome);
    }

    /// Validates a request and fills in its connection id. Returns the integration's client.
    async fn prepare(&self, req: &mut ConnectRequest) -> Result<&OAuthClient, ConnectError> {
        let name = &req.integration;
        let client = self.clients.get(name).ok_or_else(|| {
            err(StatusCode::NOT_FOUND, "unknown_integration", format!(
                "`{name}` has no OAuth client: it needs `auth:` in rules/{name}.yaml and integrations.{name}.client_id in the config"
            ))
        })?;
        if client.authorize_url.is_none() {
            return Err(err(
                StatusCode::CONFLICT,
                "no_authorize_url",
                format!("`{name}` has no auth.authorize_url (rule file) or integrations.{name}.authorize_url (config)"),
            ));
        }
        self.redirect_uri(client)?;
        let id = req.connection_id.get_or_insert_with(new_connection_id);
        validate_id(id).map_err(|e| {
            err(
                StatusCode::BAD_REQUEST,
                "invalid_connection_id",
                e.to_string(),
            )
        })?;
        match self.store.get(id).await {
            Ok(Some(row)) if row.integration != *name => {
                return Err(err(
                    StatusCode::CONFLICT,
                    "integration_mismatch",
                    format!(
                        "connection `{id}` belongs to `{}`, not `{name}`",
                        row.integration
                    ),
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(unavailable(e)),
        }
        if let Some(r) = &req.return_to {
            if !under_prefix(r, &self.config.return_to) {
                return Err(err(
                    StatusCode::BAD_REQUEST,
                    "return_to_not_allowed",
                    format!("return_to `{r}` does not match any prefix in connect.return_to"),
                ));
            }
        }
        Ok(client)
    }

    fn redirect_uri(&self, client: &OAuthClient) -> Result<String, ConnectError> {
        client
            .redirect_uri
            .clone()
            .or_else(|| self.config.default_redirect_uri())
            .ok_or_else(|| {
                err(
                    StatusCode::CONFLICT,
                    "connect_not_configured",
                    "set connect.public_url (or connect.redirect_uri) to the address providers redirect browsers to",
                )
            })
    }

    /// Starts an authorization request: records its `state` and returns the provider's URL.
    /// The app sends its user there itself, so grantd binds the flow to no browser.
    pub async fn start(&self, req: ConnectRequest) -> Result<Started, ConnectError> {
        Ok(self.begin(req, false).await?.0)
    }

    /// `bind`: the browser is here (a connect link); bind the flow to it with a cookie (the
    /// returned `Set-Cookie`) when the callback will come back to this listener's origin.
    async fn begin(
        &self,
        mut req: ConnectRequest,
        bind: bool,
    ) -> Result<(Started, Option<String>), ConnectError> {
        let client = self.prepare(&mut req).await?;
        let now = now_ms();
        let state = random_token();
        let hash = sha256_hex(&state);
        let verifier = client.auth.pkce.then(random_token);
        let redirect_uri = self.redirect_uri(client)?;
        let cookie = self
            .cookies
            .as_ref()
            .filter(|c| bind && c.covers(&redirect_uri))
            .map(|c| {
                let secret = random_token();
                let set = c.set(&hash, &secret, &redirect_uri, self.config.state_ttl);
                (set, sha256_hex(&secret))
            });
        let scopes = scopes(client, req.scopes.as_deref());
        let connection_id = req.connection_id.clone().unwrap_or_default();
        let record = ConnectState {
            hash: hash.clone(),
            integration: req.integration.clone(),
            connection_id: connection_id.clone(),
            key_id: self.keys.active_id().to_string(),
            verifier: verifier.as_ref().map(|v| {
                self.keys
                    .seal(&format!("{VERIFIER_AAD}\0{hash}"), v.as_bytes())
            }),
            browser: cookie.as_ref().map(|(_, proof)| proof.clone()),
            detail: json!({"redirect_uri": redirect_uri, "return_to": req.return_to, "scopes": scopes}),
            created_at: now,
            expires_at: now + self.config.state_ttl.as_millis() as i64,
        };
        self.store
            .put_connect_state(&record, now)
            .await
            .map_err(unavailable)?;
        let url = authorization_url(
            client,
            &redirect_uri,
            &state,
            verifier.as_deref(),
            &scopes,
            req.login_hint.as_deref(),
        )?;
        self.count(Some(&req.integration), ConnectOutcome::Started);
        let started = Started {
            integration: req.integration,
            connection_id,
            authorization_url: url,
            expires_at: rfc3339(record.expires_at),
        };
        Ok((started, cookie.map(|(set, _)| set)))
    }

    /// A connect link for the request, when the public listener is on: (url, expires_at).
    pub async fn link(
        &self,
        req: &mut ConnectRequest,
    ) -> Result<Option<(String, i64)>, ConnectError> {
        let Some(links) = &self.links else {
            return Ok(None);
        };
        self.prepare(req).await?;
        Ok(Some(links.make(req, now_ms())))
    }

    /// Reads a connect link without using it up (what a `GET` does: mail scanners and chat
    /// unfurlers fetch links before the user does), for the page that asks to continue, in
    /// language `lang`.
    pub fn preview(&self, token: &str, lang: &str) -> Result<Preview, ConnectError> {
        let claims = self.read_link(token, now_ms())?;
        let req = claims.request;
        let permissions = self.clients.get(&req.integration).map_or(Vec::new(), |c| {
            scopes(c, req.scopes.as_deref())
                .iter()
                .filter_map(|s| c.rules.scope_descriptions.get(s))
                .map(|d| d.get(lang).to_string())
                .collect()
        });
        Ok(Preview {
            provider: self.display_name(&req.integration),
            account: req.login_hint,
            expires_at: claims.expires_at,
            permissions,
        })
    }

    /// The provider's name for people (the rule file's `display_name`).
    pub fn display_name(&self, integration: &str) -> String {
        self.clients
            .get(integration)
            .map_or(integration, |c| c.rules.display_name.as_str())
            .to_string()
    }

    /// How the public pages present the app.
    pub fn branding(&self) -> &BrandingConfig {
        &self.config.branding
    }

    /// The user confirmed a connect link: use it up and start the authorization request,
    /// bound to the browser that confirmed.
    pub async fn open_link(&self, token: &str) -> Result<Opened, ConnectError> {
        let now = now_ms();
        let claims = self.read_link(token, now)?;
        let first = self
            .store
            .use_connect_link(&sha256_hex(token), claims.expires_at, now)
            .await
            .map_err(unavailable)?;
        if !first {
            return Err(err(
                StatusCode::GONE,
                "link_used",
                "This link was already used: each link works once. Ask the app for a new one.",
            ));
        }
        let (started, set_cookie) = self.begin(claims.request, true).await?;
        Ok(Opened {
            authorization_url: started.authorization_url,
            set_cookie,
        })
    }

    fn read_link(&self, token: &str, now: i64) -> Result<link::LinkClaims, ConnectError> {
        let links = self
            .links
            .as_ref()
            .ok_or_else(|| err(StatusCode::NOT_FOUND, "not_found", "connect links are off"))?;
        links.open(token, now).map_err(|e| match e {
            LinkError::Invalid => err(
                StatusCode::BAD_REQUEST,
                "invalid_link",
                "This link is not valid: it was altered, cut short, or made by another deployment. Ask the app for a new one.",
            ),
            LinkError::Expired(at) => err(
                StatusCode::GONE,
                "link_expired",
                format!("This link expired at {}. Ask the app for a new one.", rfc3339(at)),
            ),
        })
    }
}

fn unavailable(e: impl std::fmt::Display) -> ConnectError {
    err(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        format!("grantd cannot reach its store ({e}); try again shortly"),
    )
}

/// The scopes to ask for: the request's (or the integration's defaults), plus the rule file's
/// required ones, without duplicates, in order.
fn scopes(client: &OAuthClient, requested: Option<&[String]>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let asked = requested.unwrap_or(&client.scopes);
    for s in asked.iter().chain(&client.auth.required_scopes) {
        if !s.is_empty() && !out.contains(s) {
            out.push(s.clone());
        }
    }
    out
}

fn authorization_url(
    client: &OAuthClient,
    redirect_uri: &str,
    state: &str,
    verifier: Option<&str>,
    scopes: &[String],
    login_hint: Option<&str>,
) -> Result<String, ConnectError> {
    let base = client.authorize_url.as_deref().unwrap_or_default();
    let mut url = url::Url::parse(base).map_err(|e| {
        err(
            StatusCode::CONFLICT,
            "no_authorize_url",
            format!("authorize_url `{base}` is not a URL: {e}"),
        )
    })?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", client.client_id.expose())
            .append_pair("redirect_uri", redirect_uri);
        if !scopes.is_empty() {
            q.append_pair("scope", &scopes.join(&client.auth.scope_separator));
        }
        q.append_pair("state", state);
        if let Some(v) = verifier {
            q.append_pair("code_challenge", &pkce_challenge(v))
                .append_pair("code_challenge_method", "S256");
        }
        if let Some(h) = login_hint {
            q.append_pair("login_hint", h);
        }
        for (k, v) in &client.auth.authorize_params {
            q.append_pair(k, v);
        }
    }
    Ok(url.to_string())
}

/// RFC 7636 §4.2: BASE64URL(SHA256(verifier)).
fn pkce_challenge(verifier: &str) -> String {
    B64.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ))
}

/// 256 random bits, base64url (43 characters): states and PKCE verifiers.
fn random_token() -> String {
    let mut b = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("the OS random source works");
    B64.encode(b)
}

fn new_connection_id() -> String {
    format!("conn_{}", &sha256_hex(&random_token())[..24])
}

fn sha256_hex(s: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, s.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_challenge_matches_rfc_7636_appendix_b() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
