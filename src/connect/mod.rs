//! The connect flow: OAuth 2.0 authorization code with PKCE (RFC 6749 §4.1, RFC 7636), used to
//! connect a new account or to re-authorize a dead connection in place.
//!
//! Owns authorization URLs, `state` (random, stored hashed, bound to one connection and
//! integration, expiring, single-use), connect links, the one code exchange per `state`, and
//! the `return_to` allow-list. It writes connections only through [`Grants::store_authorized`]
//! and must not touch the proxy path or the refresher.

pub mod link;
pub mod public;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::{ConnectConfig, RefreshConfig};
use crate::grants::crypto::Keyring;
use crate::grants::token::{self, OAuthClient, TokenResult};
use crate::grants::{rfc3339, validate_id, Grants};
use crate::store::{now_ms, ConnectState, Taken};
use crate::upstream::UpstreamClient;
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

/// A callback whose state was valid, and how it went.
#[derive(Debug, Clone)]
pub struct Completed {
    pub state: ConnectState,
    /// The request's `return_to`, if it is still allowed.
    pub return_to: Option<String>,
    pub outcome: Result<(), ConnectError>,
}

/// How a callback ends for the browser.
#[derive(Debug, Clone, PartialEq)]
pub enum Finished {
    /// Back to the app's `return_to`, with the outcome in the query.
    Redirect(String),
    /// No (valid) `return_to`: a page.
    Page {
        status: StatusCode,
        title: String,
        message: String,
    },
}

pub struct Connect {
    grants: Arc<Grants>,
    http: UpstreamClient,
    clients: HashMap<String, OAuthClient>,
    keys: Arc<Keyring>,
    links: Option<Arc<Links>>,
    config: ConnectConfig,
    refresh: RefreshConfig,
    exchanges: AtomicU64,
}

impl Connect {
    pub fn new(
        grants: Arc<Grants>,
        http: UpstreamClient,
        clients: HashMap<String, OAuthClient>,
        keys: Arc<Keyring>,
        links: Option<Arc<Links>>,
        config: ConnectConfig,
        refresh: RefreshConfig,
    ) -> Connect {
        Connect {
            grants,
            http,
            clients,
            keys,
            links,
            config,
            refresh,
            exchanges: AtomicU64::new(0),
        }
    }

    /// Authorization-code exchanges attempted by this process (for tests and metrics).
    pub fn exchanges(&self) -> u64 {
        self.exchanges.load(Ordering::Relaxed)
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
        match self.grants.store().get(id).await {
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
            if !allowed(r, &self.config.return_to) {
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
    pub async fn start(&self, mut req: ConnectRequest) -> Result<Started, ConnectError> {
        let client = self.prepare(&mut req).await?;
        let now = now_ms();
        let state = random_token();
        let hash = sha256_hex(&state);
        let verifier = client.auth.pkce.then(random_token);
        let redirect_uri = self.redirect_uri(client)?;
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
            detail: json!({"redirect_uri": redirect_uri, "return_to": req.return_to, "scopes": scopes}),
            created_at: now,
            expires_at: now + self.config.state_ttl.as_millis() as i64,
        };
        self.grants
            .store()
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
        Ok(Started {
            integration: req.integration,
            connection_id,
            authorization_url: url,
            expires_at: rfc3339(record.expires_at),
        })
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
    /// unfurlers fetch links before the user does).
    pub fn peek_link(&self, token: &str) -> Result<ConnectRequest, ConnectError> {
        Ok(self.read_link(token, now_ms())?.request)
    }

    /// The user confirmed a connect link: use it up and start the authorization request.
    pub async fn open_link(&self, token: &str) -> Result<String, ConnectError> {
        let now = now_ms();
        let claims = self.read_link(token, now)?;
        let first = self
            .grants
            .store()
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
        Ok(self.start(claims.request).await?.authorization_url)
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

    /// The provider sent the browser back: validate `state`, exchange the code exactly once,
    /// store the tokens on the connection, and say where the browser goes next.
    pub async fn callback(&self, query: &HashMap<String, String>) -> Finished {
        match self.complete(query).await {
            Err(e) => page(e),
            Ok(done) => finished(done.outcome, done.return_to.as_deref(), &done.state),
        }
    }

    /// `Err`: the state itself was bad (nothing is known about the request). `Ok`: the state
    /// was taken, and `outcome` says how the rest went. Also what `POST /v1/connect/callback`
    /// runs for an app that hosts the redirect URI itself and relays the query.
    pub async fn complete(
        &self,
        query: &HashMap<String, String>,
    ) -> Result<Completed, ConnectError> {
        let state = self.take_state(query).await?;
        let return_to = state.detail["return_to"]
            .as_str()
            .filter(|r| allowed(r, &self.config.return_to))
            .map(str::to_string);
        let outcome = if let Some(code) = query.get("error") {
            let description = query.get("error_description").map_or("", String::as_str);
            let message = format!("The provider did not grant access: {code} {description}");
            Err(err(
                StatusCode::BAD_REQUEST,
                provider_code(code),
                message.trim_end(),
            ))
        } else {
            match query.get("code").filter(|c| !c.is_empty()) {
                Some(code) => self.exchange(&state, code).await,
                None => Err(err(
                    StatusCode::BAD_REQUEST,
                    "missing_code",
                    "The provider sent no authorization code.",
                )),
            }
        };
        Ok(Completed {
            state,
            return_to,
            outcome,
        })
    }

    async fn take_state(
        &self,
        query: &HashMap<String, String>,
    ) -> Result<ConnectState, ConnectError> {
        let state = query.get("state").filter(|s| !s.is_empty()).ok_or_else(|| {
            err(
                StatusCode::BAD_REQUEST,
                "missing_state",
                "This request has no state, so it did not come from a sign-in grantd started. Start again from the app.",
            )
        })?;
        let now = now_ms();
        let taken = self
            .grants
            .store()
            .take_connect_state(&sha256_hex(state), now)
            .await
            .map_err(unavailable)?;
        match taken {
            Taken::Unknown => Err(err(
                StatusCode::BAD_REQUEST,
                "invalid_state",
                "This sign-in request is unknown to grantd: its state was altered, or it was started by another deployment. Start again from the app.",
            )),
            Taken::Used(_) => Err(err(
                StatusCode::CONFLICT,
                "state_used",
                "This sign-in was already completed or attempted: each one can be used once. Start again from the app.",
            )),
            Taken::Fresh(s) if s.expires_at <= now => Err(err(
                StatusCode::BAD_REQUEST,
                "state_expired",
                format!(
                    "This sign-in request expired at {} (they are valid for {} s). Start again from the app.",
                    rfc3339(s.expires_at),
                    self.config.state_ttl.as_secs()
                ),
            )),
            Taken::Fresh(s) => Ok(s),
        }
    }

    /// The one token call for this code. Whatever happens, it is not repeated: a code that
    /// reached the provider may be spent, and a reuse revokes what it issued.
    async fn exchange(&self, state: &ConnectState, code: &str) -> Result<(), ConnectError> {
        let client = self.clients.get(&state.integration).ok_or_else(|| {
            err(
                StatusCode::CONFLICT,
                "unknown_integration",
                format!("`{}` has no OAuth client any more", state.integration),
            )
        })?;
        let redirect_uri = state.detail["redirect_uri"].as_str().unwrap_or_default();
        let verifier = self.open_verifier(state)?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
        ];
        if let Some(v) = &verifier {
            form.push(("code_verifier", v));
        }
        let metadata = match self.grants.store().get(&state.connection_id).await {
            Ok(Some(row)) => row.metadata,
            _ => json!({}),
        };
        self.exchanges.fetch_add(1, Ordering::Relaxed);
        let result = token::call(
            &self.http,
            client,
            &form,
            &metadata,
            self.refresh.token_timeout,
        )
        .await;
        // Expiry counts from when the answer arrived here, not from any provider clock.
        let received = now_ms();
        let fields = match result {
            TokenResult::Tokens(fields) => fields,
            TokenResult::Grant(f) | TokenResult::Config(f) | TokenResult::Transient(f, _) => {
                tracing::warn!(connection = %state.connection_id, integration = %state.integration, error = %f.code, "authorization code exchange failed");
                let why = f
                    .description
                    .map_or(f.code.clone(), |d| format!("{}: {d}", f.code));
                return Err(err(
                    StatusCode::BAD_GATEWAY,
                    "exchange_failed",
                    format!("The provider did not accept the authorization ({why}). Start again from the app."),
                ));
            }
        };
        let scopes = state.detail["scopes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let answer = token::Answer {
            fields: &fields,
            metadata_keys: &client.auth.token_metadata,
            default_lifetime: self.refresh.default_lifetime,
            received,
        };
        self.store_tokens(state, &scopes, &answer).await
    }

    /// The tokens exist only in this call now: a failed write is retried for a while.
    async fn store_tokens(
        &self,
        state: &ConnectState,
        scopes: &str,
        answer: &token::Answer<'_>,
    ) -> Result<(), ConnectError> {
        let mut delay = std::time::Duration::from_millis(100);
        for attempt in 1.. {
            match self
                .grants
                .store_authorized(&state.connection_id, &state.integration, scopes, answer)
                .await
            {
                Ok(view) => {
                    tracing::info!(connection = %view.id, integration = %view.integration, version = view.version, "connection authorized");
                    return Ok(());
                }
                Err(e) if attempt < 8 => {
                    tracing::error!(connection = %state.connection_id, error = %e, attempt, "cannot store the new grant; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => {
                    return Err(err(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "store_failed",
                        format!("The authorization worked but could not be saved ({e}). Start again from the app."),
                    ))
                }
            }
        }
        unreachable!("the loop returns")
    }

    fn open_verifier(&self, state: &ConnectState) -> Result<Option<String>, ConnectError> {
        let Some(sealed) = &state.verifier else {
            return Ok(None);
        };
        let aad = format!("{VERIFIER_AAD}\0{}", state.hash);
        self.keys
            .open(&state.key_id, &aad, sealed)
            .ok()
            .and_then(|v| String::from_utf8(v).ok())
            .map(Some)
            .ok_or_else(|| {
                err(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "unreadable_state",
                    "This sign-in request cannot be read (was the encryption key changed?). Start again from the app.",
                )
            })
    }
}

/// A provider's `error` becomes our code when it is one of RFC 6749 §4.1.2.1's.
fn provider_code(code: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "access_denied",
        "invalid_request",
        "unauthorized_client",
        "unsupported_response_type",
        "invalid_scope",
        "server_error",
        "temporarily_unavailable",
    ];
    KNOWN
        .iter()
        .find(|k| **k == code)
        .copied()
        .unwrap_or("authorization_denied")
}

fn finished(
    outcome: Result<(), ConnectError>,
    return_to: Option<&str>,
    state: &ConnectState,
) -> Finished {
    let base = [
        ("connection_id", state.connection_id.as_str()),
        ("integration", state.integration.as_str()),
    ];
    match (outcome, return_to) {
        (Ok(()), Some(r)) => Finished::Redirect(with_query(r, &[("status", "connected")], &base)),
        (Ok(()), None) => Finished::Page {
            status: StatusCode::OK,
            title: "Connected".into(),
            message: format!(
                "{} is connected. You can close this window.",
                state.integration
            ),
        },
        (Err(e), Some(r)) => Finished::Redirect(with_query(
            r,
            &[
                ("status", "error"),
                ("error", e.code),
                ("error_description", &e.message),
            ],
            &base,
        )),
        (Err(e), None) => page(e),
    }
}

fn page(e: ConnectError) -> Finished {
    Finished::Page {
        status: e.status,
        title: "Not connected".into(),
        message: e.message,
    }
}

fn with_query(url: &str, first: &[(&str, &str)], then: &[(&str, &str)]) -> String {
    let mut u = url::Url::parse(url).expect("return_to was validated");
    u.query_pairs_mut().extend_pairs(first).extend_pairs(then);
    u.to_string()
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

/// Whether `return_to` is under one of the allowed prefixes: same scheme, host and port, and
/// a path that is the prefix's or continues it at a `/`. URLs are parsed (WHATWG), so
/// `https://app.example@evil.example/` or `//evil.example` do not pass for `app.example`.
pub fn allowed(return_to: &str, allow: &[String]) -> bool {
    let Ok(u) = url::Url::parse(return_to) else {
        return false;
    };
    if !matches!(u.scheme(), "http" | "https") || !u.username().is_empty() || u.password().is_some()
    {
        return false;
    }
    allow
        .iter()
        .filter_map(|a| url::Url::parse(a).ok())
        .any(|a| {
            a.scheme() == u.scheme()
                && a.host_str() == u.host_str()
                && a.port_or_known_default() == u.port_or_known_default()
                && path_under(a.path(), u.path())
        })
}

fn path_under(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path == prefix
        || (path.starts_with(prefix)
            && (prefix.ends_with('/') || path[prefix.len()..].starts_with('/')))
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
    fn return_to_must_be_under_an_allowed_prefix() {
        let allow = vec![
            "https://app.example/settings".to_string(),
            "http://localhost:3000/".to_string(),
        ];
        for ok in [
            "https://app.example/settings",
            "https://app.example/settings/integrations?tab=1",
            "https://APP.example/settings#x",
            "https://app.example:443/settings/",
            "http://localhost:3000/anything",
        ] {
            assert!(allowed(ok, &allow), "{ok} should pass");
        }
        for bad in [
            "https://app.example/settingsx",
            "https://app.example/other",
            "https://app.example.evil.example/settings",
            "https://app.example@evil.example/settings",
            "https://user@app.example/settings",
            "http://app.example/settings",
            "https://app.example:8443/settings",
            "//evil.example/settings",
            "javascript:alert(1)",
            "https://app.example/settings/../admin",
            "http://localhost:3001/",
        ] {
            assert!(!allowed(bad, &allow), "{bad} must not pass");
        }
        assert!(!allowed("https://app.example/settings", &[]));
    }

    #[test]
    fn pkce_challenge_matches_rfc_7636_appendix_b() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
