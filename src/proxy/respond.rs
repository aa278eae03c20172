//! The last phase: every way a request can fail, typed, and the one table that turns each into
//! the response the app sees; the headers a rule's verdict puts on a rewritten response; and
//! what the request's trace span records from those headers.
//!
//! Owns the wording, status, `Grantd-*` headers and JSON shape of grantd's own answers. It
//! decides nothing: the phases above choose the [`Failure`], this module only says it. It must
//! never put a token or a secret in a body or header (the failures carry none).

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use serde_json::{json, Value};

use crate::body::{full, Body, BodyFailure};
use crate::callers::CallerRefusal;
use crate::rules::file::RateLimitScope;
use crate::rules::{Action, Verdict};

pub(super) const GRANTD_RULE: HeaderName = HeaderName::from_static("grantd-rule");
const GRANTD_ORIGINAL_STATUS: HeaderName = HeaderName::from_static("grantd-original-status");
const GRANTD_ERROR: HeaderName = HeaderName::from_static("grantd-error");
const GRANTD_ERROR_DETAIL: HeaderName = HeaderName::from_static("grantd-error-detail");
pub(super) const GRANTD_ACTION: HeaderName = HeaderName::from_static("grantd-action");
pub(super) const GRANTD_RULE_ERROR: HeaderName = HeaderName::from_static("grantd-rule-error");
/// `local` on a 429 grantd answered itself from a remembered rate limit.
const GRANTD_RATELIMITED: HeaderName = HeaderName::from_static("grantd-ratelimited");

/// Why grantd answered a request itself instead of with the provider's response.
#[derive(Debug)]
pub(super) enum Failure {
    /// `CONNECT`: grantd is not an open proxy.
    ConnectMethod,
    /// An HTTP/1 absolute-form target (`GET http://elsewhere/`).
    AbsoluteForm,
    UnknownIntegration {
        name: String,
        known: Vec<String>,
    },
    /// `/_grantd/{path}` that does not exist.
    UnknownInternal(String),
    /// Anything but `/_grantd/{healthz,readyz,metrics}` on the ops listener (the path is not
    /// echoed: it may carry a secret).
    NotOps,
    /// A `.` or `..` segment in any reading of the path.
    DotSegment,
    Caller(CallerRefusal),
    /// The provider rate-limited this connection (or the integration) until `until` (ms).
    RateLimited {
        scope: RateLimitScope,
        until: i64,
    },
    ConnectionsDisabled,
    /// A named connection grantd will not use right now.
    Connection {
        id: String,
        refusal: Refusal,
    },
    /// The app's request body stalled or broke; its connection's framing is lost.
    ClientBody {
        failure: BodyFailure,
        timeout: Duration,
    },
    Injection(String),
    /// The base URL needs connection metadata that is absent (`missing`) or unsafe.
    Metadata {
        missing: bool,
        message: String,
    },
    ConnectionRequired,
    UpstreamUrl(String),
    Unreachable(String),
    UpstreamTimeout(String),
    UpstreamBodyTimeout(String),
    UpstreamBodyError(String),
}

/// Why a request naming a connection is not sent.
#[derive(Debug)]
pub enum Refusal {
    NotFound,
    WrongIntegration {
        actual: String,
        wanted: String,
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

/// What a failure says: status, stable code, message, and the extras some of them carry.
struct Said {
    status: StatusCode,
    code: &'static str,
    message: String,
    action: Option<&'static str>,
    retry_at: Option<i64>,
    extra: Option<(&'static str, Value)>,
}

fn said(status: StatusCode, code: &'static str, message: String) -> Said {
    Said {
        status,
        code,
        message,
        action: None,
        retry_at: None,
        extra: None,
    }
}

impl Failure {
    /// The one table: each failure's status, code and message.
    fn said(self) -> Said {
        use StatusCode as S;
        match self {
            Failure::ConnectMethod => said(S::METHOD_NOT_ALLOWED, "connect_refused", "grantd is not an open proxy: CONNECT is refused".into()),
            Failure::AbsoluteForm => said(S::BAD_REQUEST, "absolute_form_refused", "grantd is not an open proxy: send origin-form requests like /slack/chat.postMessage".into()),
            Failure::UnknownIntegration { name, known } => Said {
                extra: Some(("known", json!(known))),
                ..said(S::NOT_FOUND, "unknown_integration", format!("no integration `{name}`; requests look like /{{integration}}/{{path}}"))
            },
            Failure::UnknownInternal(path) => said(S::NOT_FOUND, "not_found", format!("no internal endpoint /_grantd/{path}")),
            Failure::NotOps => said(S::NOT_FOUND, "not_found", "the ops listener serves only /_grantd/healthz, /_grantd/readyz and /_grantd/metrics".into()),
            Failure::DotSegment => said(S::BAD_REQUEST, "bad_path", "`.` and `..` path segments are refused".into()),
            Failure::Caller(CallerRefusal::Unauthenticated) => said(S::UNAUTHORIZED, "caller_unauthenticated", "this grantd authenticates its callers: send Proxy-Authorization: Bearer {caller token}".into()),
            Failure::Caller(CallerRefusal::Forbidden { caller, what }) => said(S::FORBIDDEN, "caller_forbidden", format!("caller `{caller}` may not use {what}")),
            Failure::RateLimited { scope, until } => Said {
                action: Some("retry"),
                retry_at: Some(until),
                extra: Some(("scope", json!(scope.as_str()))),
                ..said(S::TOO_MANY_REQUESTS, "rate_limited", format!("the provider rate-limited this {}; grantd answers for it until the limit ends, without calling the provider", scope.as_str()))
            },
            Failure::ConnectionsDisabled => said(S::BAD_REQUEST, "connections_disabled", "this grantd has no connection store".into()),
            Failure::Connection { id, refusal } => Said {
                extra: Some(("connection_id", json!(id))),
                ..refused(&id, refusal)
            },
            Failure::ClientBody { failure: BodyFailure::Stalled, timeout } => said(S::REQUEST_TIMEOUT, "request_body_timeout", format!("the request body stopped arriving for {timeout:?}; the request was not completed upstream")),
            Failure::ClientBody { failure: BodyFailure::Aborted, .. } => said(S::BAD_REQUEST, "request_body_incomplete", "the request body ended early or its connection broke; the request was not completed upstream".into()),
            Failure::Injection(e) => said(S::BAD_GATEWAY, "injection_failed", e),
            Failure::Metadata { missing: true, message } => said(S::BAD_REQUEST, "missing_metadata", message),
            Failure::Metadata { missing: false, message } => said(S::BAD_REQUEST, "bad_connection_metadata", message),
            Failure::ConnectionRequired => said(S::BAD_REQUEST, "connection_required", "this integration's base URL depends on the connection: name one with Grantd-Connection".into()),
            Failure::UpstreamUrl(e) => said(S::BAD_REQUEST, "bad_path", format!("cannot build the upstream URL: {e}")),
            Failure::Unreachable(m) => said(S::BAD_GATEWAY, "upstream_unreachable", m),
            Failure::UpstreamTimeout(m) => said(S::GATEWAY_TIMEOUT, "upstream_timeout", m),
            Failure::UpstreamBodyTimeout(m) => said(S::GATEWAY_TIMEOUT, "upstream_body_timeout", m),
            Failure::UpstreamBodyError(m) => said(S::BAD_GATEWAY, "upstream_body_error", m),
        }
    }

    /// The response: `{"error", "message", "integration"?, ...}` with `Grantd-Error`, plus the
    /// headers the status calls for.
    pub(super) fn respond(self, integration: Option<&str>) -> Response<Body> {
        let closes = matches!(self, Failure::ClientBody { .. });
        let caller = matches!(self, Failure::Caller(CallerRefusal::Unauthenticated));
        let local_limit = matches!(self, Failure::RateLimited { .. });
        let s = self.said();
        let mut body = json!({"error": s.code, "message": s.message});
        if let Some(i) = integration {
            body["integration"] = json!(i);
        }
        if let Some((key, value)) = s.extra {
            body[key] = value;
        }
        let mut resp = json_response(s.status, &body);
        let h = resp.headers_mut();
        h.insert(GRANTD_ERROR, HeaderValue::from_static(s.code));
        if let Some(action) = s.action {
            h.insert(GRANTD_ACTION, HeaderValue::from_static(action));
        }
        if caller {
            h.insert(
                header::PROXY_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="grantd""#),
            );
        } else if s.status == StatusCode::UNAUTHORIZED {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer error="invalid_token""#),
            );
        }
        if let Some(at) = s.retry_at {
            // Rounded up: coming back a fraction of a second early only meets the same answer.
            let secs = ((at - crate::time::now_ms() + 999) / 1000).max(1);
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if local_limit {
            h.insert(GRANTD_RATELIMITED, HeaderValue::from_static("local"));
        }
        if closes {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// A connection grantd will not use right now. Never contains a token.
fn refused(id: &str, refusal: Refusal) -> Said {
    use StatusCode as S;
    let with = |s: Said, action| Said {
        action: Some(action),
        ..s
    };
    match refusal {
        Refusal::NotFound => said(S::NOT_FOUND, "unknown_connection", format!("no connection `{id}`")),
        Refusal::WrongIntegration { actual, wanted } => said(S::BAD_REQUEST, "wrong_integration", format!("connection `{id}` belongs to `{actual}`, not `{wanted}`")),
        Refusal::NeedsReauth => with(said(S::UNAUTHORIZED, "needs_reauth", "the user must authorize this connection again".into()), "reauth"),
        Refusal::ConfigError { error } => with(said(S::SERVICE_UNAVAILABLE, "config_error", format!("the integration's client credentials were rejected ({error}): the operator must fix the config")), "fix_config"),
        Refusal::Unavailable { error, retry_at } => Said {
            retry_at,
            ..with(said(S::SERVICE_UNAVAILABLE, "refresh_unavailable", format!("the access token expired and refreshing it failed for now: {error}")), "retry")
        },
        Refusal::Broken(e) => said(S::INTERNAL_SERVER_ERROR, "connection_unusable", e),
    }
}

/// Records on the request span how `resp` came about, as its `Grantd-*` headers say: a
/// verdict's rule, action and original status; a refusal's action; else the provider's status.
pub(super) fn trace(span: &tracing::Span, resp: &Response<Body>) {
    if span.is_disabled() {
        return;
    }
    let h = resp.headers();
    let text = |name: &HeaderName| h.get(name).and_then(|v| v.to_str().ok());
    let status = resp.status().as_u16();
    let upstream = match text(&GRANTD_ORIGINAL_STATUS) {
        Some(original) => original.parse().ok(),
        None if h.contains_key(GRANTD_ERROR) => None, // grantd's own answer
        None => Some(status),
    };
    // `Grantd-Rule` is `{integration}/{rule}`; the span has the integration already.
    let rule = text(&GRANTD_RULE).map(|r| r.split_once('/').map_or(r, |(_, rule)| rule));
    crate::traces::responded(span, status, upstream, rule, text(&GRANTD_ACTION));
}

/// Puts a verdict on the provider's response: the new status, `Grantd-*` headers naming the
/// rule, RFC 6750 `WWW-Authenticate`, `Retry-After`, the rule's own headers.
pub(super) fn apply_verdict(integration: &str, v: &Verdict, parts: &mut http::response::Parts) {
    let original = parts.status;
    parts.status = StatusCode::from_u16(v.status).unwrap_or(original);
    let h = &mut parts.headers;
    h.insert(
        GRANTD_RULE,
        header_text(&format!("{integration}/{}", v.rule)),
    );
    h.insert(GRANTD_ORIGINAL_STATUS, HeaderValue::from(original.as_u16()));
    h.insert(GRANTD_ACTION, HeaderValue::from_static(v.action.as_str()));
    if let Some(e) = &v.error {
        h.insert(GRANTD_ERROR, header_text(e));
    }
    if let Some(d) = &v.detail {
        h.insert(GRANTD_ERROR_DETAIL, header_text(d));
    }
    if let Some(www) = www_authenticate(v) {
        h.insert(header::WWW_AUTHENTICATE, www);
    }
    if let Some(secs) = v.retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    for (name, value) in &v.headers {
        if let (Ok(n), Ok(val)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            h.insert(n, val);
        }
    }
}

/// RFC 6750 §3: `invalid_token` for 401, `insufficient_scope` for a 403 the user must fix by
/// consenting again.
fn www_authenticate(v: &Verdict) -> Option<HeaderValue> {
    let code = match (v.status, v.action) {
        (401, _) => "invalid_token",
        (403, Action::Reauth) => "insufficient_scope",
        _ => return None,
    };
    let mut value = format!("Bearer error=\"{code}\"");
    if let Some(msg) = &v.message {
        // error_description allows %x20-21 / %x23-5B / %x5D-7E only.
        let clean: String = msg
            .chars()
            .filter(|c| (' '..='~').contains(c) && *c != '"' && *c != '\\')
            .take(200)
            .collect();
        value.push_str(&format!(", error_description=\"{clean}\""));
    }
    HeaderValue::from_str(&value).ok()
}

/// The rule's replacement body, if any; fixes the framing headers to match it.
pub(super) fn replacement_body(v: &Verdict, headers: &mut HeaderMap) -> Option<Body> {
    let body = v.body.as_ref()?;
    let (bytes, ct) = match body {
        Value::String(s) => (Bytes::from(s.clone()), "text/plain; charset=utf-8"),
        other => (Bytes::from(other.to_string()), "application/json"),
    };
    headers.remove(header::CONTENT_ENCODING);
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    Some(full(bytes))
}

/// Visible ASCII only, at most 300 bytes: header values must never break framing.
pub(super) fn header_text(s: &str) -> HeaderValue {
    let clean: String = s
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .take(300)
        .collect();
    HeaderValue::from_str(&clean).unwrap_or_else(|_| HeaderValue::from_static("?"))
}

/// An error and its sources, each said once (hyper repeats its inner errors).
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

pub(super) fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut resp = Response::new(full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answered(f: Failure) -> (StatusCode, HeaderMap, Value) {
        use http_body_util::BodyExt;
        let resp = f.respond(Some("slack"));
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            serde_json::from_slice(&bytes).unwrap(),
        )
    }

    #[tokio::test]
    async fn each_failure_says_its_code_in_the_body_and_the_header() {
        let (status, h, body) = answered(Failure::DotSegment).await;
        assert_eq!(status, 400);
        assert_eq!(h["grantd-error"], "bad_path");
        assert_eq!(body["error"], "bad_path");
        assert_eq!(body["integration"], "slack");
    }

    #[tokio::test]
    async fn a_paused_connection_says_reauth_with_a_bearer_challenge() {
        let f = Failure::Connection {
            id: "acct_1".into(),
            refusal: Refusal::NeedsReauth,
        };
        let (status, h, body) = answered(f).await;
        assert_eq!(status, 401);
        assert_eq!(h["grantd-action"], "reauth");
        assert_eq!(
            h[header::WWW_AUTHENTICATE],
            r#"Bearer error="invalid_token""#
        );
        assert_eq!(body["connection_id"], "acct_1");
    }

    #[tokio::test]
    async fn an_unknown_caller_is_challenged_as_a_proxy_not_as_the_provider() {
        let (status, h, _) = answered(Failure::Caller(CallerRefusal::Unauthenticated)).await;
        assert_eq!(status, 401);
        assert!(h.get(header::WWW_AUTHENTICATE).is_none());
        assert_eq!(h[header::PROXY_AUTHENTICATE], r#"Bearer realm="grantd""#);
    }

    #[tokio::test]
    async fn a_broken_client_body_closes_the_connection() {
        let f = Failure::ClientBody {
            failure: BodyFailure::Stalled,
            timeout: Duration::from_secs(30),
        };
        let (status, h, _) = answered(f).await;
        assert_eq!(status, 408);
        assert_eq!(h[header::CONNECTION], "close");
    }
}
