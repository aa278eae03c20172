//! The way back from the provider: the callback (on the public listener, or relayed by an app
//! through the admin API), taking the single-use `state` (checking its browser binding), the
//! one code exchange, storing the tokens, and where the browser goes next.
//!
//! Owns nothing stored itself: states are the store's, connections are written only through
//! [`Connections::store_authorized`](crate::connections::Connections::store_authorized).

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use http::StatusCode;
use serde_json::json;

use super::return_to::with_result;
use super::{
    browser, err, sha256_hex, unavailable, Connect, ConnectError, Finished, Notice, VERIFIER_AAD,
};
use crate::connections::token::{self, TokenResult};
use crate::store::{ConnectState, Taken};
use crate::telemetry::ConnectOutcome;
use crate::template::under_prefix;
use crate::time::{now_ms, rfc3339};

/// The public callback's answer: where the browser goes, and a cookie to clear.
#[derive(Debug, Clone)]
pub struct Answer {
    pub finished: Finished,
    pub set_cookie: Option<String>,
}

/// A callback whose state was valid, and how it went.
#[derive(Debug, Clone)]
pub struct Completed {
    pub state: ConnectState,
    /// The request's `return_to`, if it is still allowed.
    pub return_to: Option<String>,
    pub outcome: Result<(), ConnectError>,
}

impl Connect {
    /// The provider sent the browser back: validate `state` (and, for a flow bound to a
    /// browser, that this is the one: `cookie_headers` are the request's `Cookie` headers),
    /// exchange the code exactly once, store the tokens on the connection, and say where the
    /// browser goes next. A bound flow that completes clears its cookie.
    pub async fn callback(
        &self,
        query: &HashMap<String, String>,
        cookie_headers: &[&str],
    ) -> Answer {
        let proof = self.cookies.as_ref().and_then(|c| {
            let hash = sha256_hex(query.get("state")?);
            browser::find(cookie_headers, &c.name(&hash)).map(sha256_hex)
        });
        match self.complete(query, proof.as_deref()).await {
            Err(e) => Answer {
                finished: page(e, None),
                set_cookie: None,
            },
            Ok(done) => Answer {
                set_cookie: self.clear_cookie(&done.state),
                finished: finished(
                    done.outcome,
                    done.return_to.as_deref(),
                    &done.state,
                    self.display_name(&done.state.integration),
                ),
            },
        }
    }

    fn clear_cookie(&self, state: &ConnectState) -> Option<String> {
        state.browser.as_ref()?;
        let redirect_uri = state.detail["redirect_uri"].as_str().unwrap_or_default();
        Some(self.cookies.as_ref()?.clear(&state.hash, redirect_uri))
    }

    /// `Err`: the state itself was bad (nothing is known about the request), or it is bound to
    /// another browser than the one `browser` (the hex SHA-256 of its cookie) proves. `Ok`:
    /// the state was taken, and `outcome` says how the rest went. Also what `POST
    /// /v1/connect/callback` runs (with no browser) for an app that hosts the redirect URI
    /// itself and relays the query.
    pub async fn complete(
        &self,
        query: &HashMap<String, String>,
        browser: Option<&str>,
    ) -> Result<Completed, ConnectError> {
        let state = self.take_state(query, browser).await?;
        let return_to = state.detail["return_to"]
            .as_str()
            .filter(|r| under_prefix(r, &self.config.return_to))
            .map(str::to_string);
        let (outcome, counted) = if let Some(code) = query.get("error") {
            let description = query.get("error_description").map_or("", String::as_str);
            let message = format!("The provider did not grant access: {code} {description}");
            let refused = err(
                StatusCode::BAD_REQUEST,
                provider_code(code),
                message.trim_end(),
            );
            (Err(refused), ConnectOutcome::Declined)
        } else {
            let outcome = match query.get("code").filter(|c| !c.is_empty()) {
                Some(code) => self.exchange(&state, code).await,
                None => Err(err(
                    StatusCode::BAD_REQUEST,
                    "missing_code",
                    "The provider sent no authorization code.",
                )),
            };
            let counted = match &outcome {
                Ok(()) => ConnectOutcome::Connected,
                Err(e) if matches!(e.code, "exchange_failed" | "store_failed") => {
                    ConnectOutcome::ExchangeFailed
                }
                Err(_) => ConnectOutcome::Invalid,
            };
            (outcome, counted)
        };
        self.count(Some(&state.integration), counted);
        Ok(Completed {
            state,
            return_to,
            outcome,
        })
    }

    async fn take_state(
        &self,
        query: &HashMap<String, String>,
        browser: Option<&str>,
    ) -> Result<ConnectState, ConnectError> {
        let state = query.get("state").filter(|s| !s.is_empty()).ok_or_else(|| {
            self.count(None, ConnectOutcome::Invalid);
            err(
                StatusCode::BAD_REQUEST,
                "missing_state",
                "This request has no state, so it did not come from a sign-in grantd started. Start again from the app.",
            )
        })?;
        let now = now_ms();
        let taken = self
            .store
            .take_connect_state(&sha256_hex(state), browser, now)
            .await
            .map_err(unavailable)?;
        let counted = match &taken {
            Taken::Unknown => Some((None, ConnectOutcome::Invalid)),
            Taken::Foreign(s) | Taken::Used(s) => Some((Some(s), ConnectOutcome::Invalid)),
            Taken::Fresh(s) if s.expires_at <= now => Some((Some(s), ConnectOutcome::Expired)),
            Taken::Fresh(_) => None, // counted when the callback finishes
        };
        if let Some((state, outcome)) = counted {
            self.count(state.map(|s| s.integration.as_str()), outcome);
        }
        match taken {
            Taken::Unknown => Err(err(
                StatusCode::BAD_REQUEST,
                "invalid_state",
                "This sign-in request is unknown to grantd: its state was altered, or it was started by another deployment. Start again from the app.",
            )),
            Taken::Foreign(s) => {
                tracing::warn!(connection = %s.connection_id, integration = %s.integration, "connect callback refused: it came from another browser than the one that opened the link");
                Err(err(
                    StatusCode::FORBIDDEN,
                    "browser_mismatch",
                    "This sign-in was started in a different browser (or this browser did not keep grantd's cookie), so it cannot be finished here. Start again from the app's link, in this browser.",
                ))
            }
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
        let metadata = match self.store.get(&state.connection_id).await {
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
            TokenResult::Connection(f) | TokenResult::Config(f) | TokenResult::Transient(f, _) => {
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
            urls: &client.urls,
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
                .connections
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

/// `provider`: the integration's display name, for a page.
fn finished(
    outcome: Result<(), ConnectError>,
    return_to: Option<&str>,
    state: &ConnectState,
    provider: String,
) -> Finished {
    let id = ("connection_id", state.connection_id.as_str());
    let integration = ("integration", state.integration.as_str());
    match (outcome, return_to) {
        (Ok(()), Some(r)) => {
            Finished::Redirect(with_result(r, &[("status", "connected"), id, integration]))
        }
        (Ok(()), None) => Finished::Page(Notice {
            status: StatusCode::OK,
            code: "connected",
            provider: Some(provider),
        }),
        (Err(e), Some(r)) => Finished::Redirect(with_result(
            r,
            &[
                ("status", "error"),
                ("error", e.code),
                ("error_description", &e.message),
                id,
                integration,
            ],
        )),
        (Err(e), None) => page(e, Some(provider)),
    }
}

fn page(e: ConnectError, provider: Option<String>) -> Finished {
    Finished::Page(Notice {
        status: e.status,
        code: e.code,
        provider,
    })
}
