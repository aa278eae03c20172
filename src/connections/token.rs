//! The token endpoint: building requests (refresh and authorization-code grants, both client
//! authentication methods), sending them once with a hard timeout, and classifying answers
//! (token rules first, then RFC 6749). Shared by the refresher and the connect flow; it must not
//! store anything.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};

use super::{Connections, Secret};
use crate::config::EvaluationConfig;
use crate::rules::engine::Cancel;
use crate::rules::file::{AuthSpec, CapturedResponse, ClientAuth};
use crate::rules::{Action, Endpoint, Facts, Outcome as RuleOutcome, RuleSet, Verdict};
use crate::store::{ConnectionRow, Status};
use crate::telemetry::RefreshOutcome;
use crate::template::{Template, Urls};
use crate::upstream::UpstreamClient;

/// One integration's OAuth client: the rule file's `auth` plus the deployment's credentials.
#[derive(Debug, Clone)]
pub struct OAuthClient {
    pub auth: AuthSpec,
    pub token_url: Template,
    /// The integration's URLs: where the token URL may point, and what metadata must fit.
    pub urls: Urls,
    pub authorize_url: Option<String>,
    /// The integration's own redirect URI, if it has one (else `connect.redirect_uri`).
    pub redirect_uri: Option<String>,
    /// Scopes asked for when a connect request names none.
    pub scopes: Vec<String>,
    pub client_id: Secret,
    pub client_secret: Option<Secret>,
    pub rules: Arc<RuleSet>,
    /// The limits its token rules run under (`evaluation` in the config).
    pub eval: EvaluationConfig,
}

/// What the token endpoint said, classified.
#[derive(Debug)]
pub enum TokenResult {
    Tokens(serde_json::Map<String, serde_json::Value>),
    Connection(Failure),
    Config(Failure),
    Transient(Failure, Option<i64>),
}

impl TokenResult {
    /// For a `minted` connection a rejected grant is a config error (no user can fix it).
    pub fn minted(self, minted: bool) -> TokenResult {
        match self {
            TokenResult::Connection(f) if minted => TokenResult::Config(f),
            other => other,
        }
    }

    /// The word the refresh metrics count this answer under.
    pub fn outcome(&self) -> RefreshOutcome {
        match self {
            TokenResult::Tokens(_) => RefreshOutcome::Ok,
            TokenResult::Connection(_) => RefreshOutcome::NeedsReauth,
            TokenResult::Config(_) => RefreshOutcome::ConfigError,
            TokenResult::Transient(..) => RefreshOutcome::Transient,
        }
    }

    /// What the refresher does with this answer and what the app then sees, as `grantd rules
    /// eval` prints it: `reauth` (401 `needs_reauth`), `fix_config` (503 `config_error`), `retry`
    /// (503 `refresh_unavailable` once the old token has expired), or tokens.
    pub fn summary(&self) -> serde_json::Value {
        let (result, action, status, failure, retry_after) = match self {
            TokenResult::Tokens(_) => ("tokens", "none", 200, None, None),
            TokenResult::Connection(f) => ("needs_reauth", "reauth", 401, Some(f), None),
            TokenResult::Config(f) => ("config_error", "fix_config", 503, Some(f), None),
            TokenResult::Transient(f, after) => ("transient", "retry", 503, Some(f), *after),
        };
        let mut out = serde_json::json!({"result": result, "action": action, "status": status});
        if let Some(f) = failure {
            out["error"] = serde_json::json!(f.code);
            out["description"] = serde_json::json!(f.description);
            out["detail"] = serde_json::json!(f.detail);
        }
        if let Some(secs) = retry_after {
            out["retry_after"] = serde_json::json!(secs);
        }
        out
    }
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub code: String,
    pub status: Option<u16>,
    pub description: Option<String>,
    pub detail: Option<String>,
}

pub fn failure(code: &str, status: Option<u16>, description: Option<String>) -> Failure {
    Failure {
        code: code.into(),
        status,
        description,
        detail: None,
    }
}

/// Sends one token request (`grant` holds the grant-specific form fields) and classifies the
/// answer. Never retries: for an authorization code a retry could be a reuse.
pub async fn call(
    http: &UpstreamClient,
    client: &OAuthClient,
    grant: &[(&str, &str)],
    metadata: &serde_json::Value,
    timeout: Duration,
) -> TokenResult {
    let request = match token_request(client, grant, metadata) {
        Ok(r) => r,
        Err(e) => return TokenResult::Config(failure("invalid_request", None, Some(e))),
    };
    let sent = tokio::time::timeout(timeout, async {
        let resp = http.request(request).await.map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, 1 << 20)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((parts, body))
    })
    .await;
    match sent {
        Err(_) => TokenResult::Transient(
            failure(
                "timeout",
                None,
                Some(format!("no answer within {timeout:?}")),
            ),
            None,
        ),
        Ok(Err(e)) => TokenResult::Transient(failure("unreachable", None, Some(e)), None),
        Ok(Ok((parts, body))) => classify_sent(client, parts.status, &parts.headers, &body).await,
    }
}

fn token_request(
    client: &OAuthClient,
    grant: &[(&str, &str)],
    metadata: &serde_json::Value,
) -> Result<Request<crate::upstream::RequestBody>, String> {
    // A refresh goes to the provider's refresh endpoint when it has its own.
    let refreshing = grant.contains(&("grant_type", "refresh_token"));
    let endpoint = match &client.urls.refresh {
        Some(refresh) if refreshing => refresh,
        _ => &client.token_url,
    };
    let url = endpoint.fill(metadata, &client.urls.hosts)?;
    form_request(client, &url, grant)
}

/// A form POST to one of the client's endpoints, authenticated as `auth.client_auth` says
/// (token and revocation requests alike, RFC 6749 §2.3.1 and RFC 7009 §2.1).
pub fn form_request(
    client: &OAuthClient,
    url: &str,
    grant: &[(&str, &str)],
) -> Result<Request<crate::upstream::RequestBody>, String> {
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (k, v) in grant {
        form.append_pair(k, v);
    }
    for (k, v) in &client.auth.token_params {
        form.append_pair(k, v);
    }
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(url)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json");
    let secret = client.client_secret.as_ref().map_or("", |s| s.expose());
    match client.auth.client_auth {
        // No client (a JWT bearer assertion authenticates itself).
        _ if client.client_id.expose().is_empty() => {}
        ClientAuth::Body => {
            form.append_pair("client_id", client.client_id.expose());
            if client.client_secret.is_some() {
                form.append_pair("client_secret", secret);
            }
        }
        ClientAuth::Basic => {
            // RFC 6749 §2.3.1: each part form-urlencoded before Basic encoding.
            let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let pair = format!("{}:{}", enc(client.client_id.expose()), enc(secret));
            let basic = base64::engine::general_purpose::STANDARD.encode(pair);
            builder = builder.header(header::AUTHORIZATION, format!("Basic {basic}"));
        }
    }
    let body = Full::new(Bytes::from(form.finish()))
        .map_err(|never| match never {})
        .boxed();
    builder
        .body(body)
        .map_err(|e| format!("token request: {e}"))
}

/// A successful token answer, with what the deployment says about reading it.
pub struct Answer<'a> {
    pub fields: &'a serde_json::Map<String, serde_json::Value>,
    /// The rule file's `auth.token_metadata`: the only fields kept as connection metadata.
    pub metadata_keys: &'a [String],
    /// What those fields must fit (an `instance_url` becomes a host): a value that does not
    /// is not kept.
    pub urls: &'a Urls,
    /// The lifetime when `expires_in` is absent or unusable.
    pub default_lifetime: Duration,
    /// When the answer arrived, by grantd's clock (unix ms): expiry counts from here.
    pub received: i64,
}

/// Writes a token answer into `next`: tokens sealed, expiry from the *local* receipt time plus
/// `expires_in` (provider clocks and absolute timestamps are ignored), scopes, and the fields
/// the rule file lists as metadata. An answer without a refresh token keeps `keep_refresh`.
pub fn apply_tokens(
    connections: &Connections,
    next: &mut ConnectionRow,
    answer: &Answer<'_>,
    keep_refresh: Option<&Secret>,
) {
    let fields = answer.fields;
    let access = fields
        .get("access_token")
        .and_then(|v| v.as_str())
        .map(Secret::new);
    let refresh = fields
        .get("refresh_token")
        .and_then(|v| v.as_str())
        .map(Secret::new)
        .or_else(|| keep_refresh.cloned());
    let default = (answer.default_lifetime.as_secs() as i64).min(MAX_LIFETIME_SECS);
    let lifetime = match fields.get("expires_in") {
        None | Some(serde_json::Value::Null) => default,
        Some(v) => lifetime_secs(v).unwrap_or_else(|| {
            tracing::warn!(integration = %next.integration, connection = %next.id, "the token endpoint's expires_in is not a positive number of seconds; using refresh.default_lifetime");
            default
        }),
    };
    next.expires_at = Some(
        answer
            .received
            .saturating_add(lifetime.saturating_mul(1000)),
    );
    if let Some(scope) = fields.get("scope").and_then(|v| v.as_str()) {
        next.scopes = scope.replace(',', " ");
    }
    let before = next.metadata.clone();
    merge_metadata(&mut next.metadata, fields, answer.metadata_keys);
    if let Some(Err(why)) = next.metadata.as_object().map(|m| answer.urls.check(m)) {
        // The tokens are kept (they may be rotated already); the unsafe value is not.
        tracing::warn!(integration = %next.integration, connection = %next.id, %why, "token response metadata refused; the previous values are kept");
        next.metadata = before;
    }
    connections.seal_into(next, access.as_ref(), refresh.as_ref());
    next.status = Status::Active;
    next.refresh_failures = 0;
    next.next_attempt_at = None;
    next.last_error = None;
}

/// What the token rules see of a token response: the same facts as `grantd rules eval` with
/// `"on": "token"` builds from a captured one, so both classify alike.
fn token_facts(status: StatusCode, headers: &http::HeaderMap, body: &Bytes) -> (Facts, Bytes) {
    let captured = CapturedResponse {
        status: status.as_u16(),
        headers: headers
            .iter()
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
            .collect(),
        body: serde_json::Value::String(String::from_utf8_lossy(body).into_owned()),
    };
    let facts = Facts {
        endpoint: Endpoint::Token,
        status: captured.status,
        headers: captured.rule_headers(),
        method: "POST".into(),
        path: "/".into(),
    };
    (facts, Bytes::from(captured.body_bytes()))
}

/// Classifies a token response on the refresh and connect paths: the rules run with the
/// configured `evaluation` limits, off the async threads unless they are bounded.
async fn classify_sent(
    client: &OAuthClient,
    status: StatusCode,
    headers: &http::HeaderMap,
    body: &Bytes,
) -> TokenResult {
    let (facts, text) = token_facts(status, headers, body);
    let outcome = crate::rules::run(client.rules.clone(), facts, text, &client.eval).await;
    classify_outcome(outcome, status, headers, body)
}

/// [`classify_outcome`] with the rules evaluated here and now under the rule-test budget
/// (`grantd rules eval` and tests; the refresher uses the configured limits through [`call`]).
pub fn classify(
    rules: &RuleSet,
    status: StatusCode,
    headers: &http::HeaderMap,
    body: &Bytes,
) -> TokenResult {
    let (facts, text) = token_facts(status, headers, body);
    let budget = crate::rules::default_budget();
    let outcome = rules.evaluate(&facts, &text, &budget, &Cancel::default());
    classify_outcome(outcome, status, headers, body)
}

/// A token rule's verdict, when it settles the answer (`refresh` and `none` do not): the
/// rule's words first, the response's own (`error`, `error_description`, `Retry-After`) after.
fn from_verdict(
    v: &Verdict,
    status: StatusCode,
    (code, description, retry_after): (&str, Option<&str>, Option<i64>),
) -> Option<TokenResult> {
    let f = Failure {
        code: v.error.clone().unwrap_or_else(|| code.to_string()),
        status: Some(status.as_u16()),
        description: v.message.clone().or(description.map(str::to_string)),
        detail: v.detail.clone(),
    };
    match v.action {
        Action::Reauth => Some(TokenResult::Connection(f)),
        Action::FixConfig => Some(TokenResult::Config(f)),
        Action::Retry => Some(TokenResult::Transient(
            f,
            v.retry_after.map(|s| s as i64).or(retry_after),
        )),
        Action::Refresh | Action::None => None,
    }
}

/// Token rules first (providers that lie: `outcome` is theirs on this response), then
/// RFC 6749 §5.2.
pub fn classify_outcome(
    outcome: RuleOutcome,
    status: StatusCode,
    headers: &http::HeaderMap,
    body: &Bytes,
) -> TokenResult {
    let retry_after = headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let fields = parse_fields(headers, body);
    let field = |name| {
        fields
            .as_ref()
            .and_then(|f| f.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let (code, description) = (
        field("error").unwrap_or_default(),
        field("error_description"),
    );
    if let RuleOutcome::Verdict(v) = outcome {
        let said = (code.as_str(), description.as_deref(), retry_after);
        if let Some(result) = from_verdict(&v, status, said) {
            return result;
        }
    }
    let f = Failure {
        code: code.clone(),
        status: Some(status.as_u16()),
        description,
        detail: None,
    };
    if status.is_success() {
        if let Some(fields) = fields.filter(|f| {
            f.get("access_token")
                .and_then(|v| v.as_str())
                .is_some_and(|t| !t.is_empty())
        }) {
            return TokenResult::Tokens(fields);
        }
    }
    match code.as_str() {
        "invalid_grant" => TokenResult::Connection(f),
        "invalid_client" | "unauthorized_client" | "unsupported_grant_type" | "invalid_scope" => {
            TokenResult::Config(f)
        }
        _ if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() => {
            TokenResult::Transient(f, retry_after)
        }
        "" if status.is_success() => TokenResult::Transient(
            Failure {
                code: "malformed_token_response".into(),
                ..f
            },
            None,
        ),
        _ => TokenResult::Transient(
            Failure {
                code: if code.is_empty() {
                    format!("http_{}", status.as_u16())
                } else {
                    code
                },
                ..f
            },
            retry_after,
        ),
    }
}

/// JSON object, or `application/x-www-form-urlencoded` (GitHub without `Accept`).
fn parse_fields(
    headers: &http::HeaderMap,
    body: &Bytes,
) -> Option<serde_json::Map<String, serde_json::Value>> {
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(body) {
        return Some(map);
    }
    // A form when it says so, or when it says nothing (GitHub without `Accept`); never an HTML
    // page or other typed body that merely contains `access_token=` (found by the fuzzer).
    let form = match headers.get(header::CONTENT_TYPE).map(|v| v.to_str()) {
        None => body.contains(&b'='),
        Some(Ok(ct)) => ct.contains("x-www-form-urlencoded"),
        Some(Err(_)) => false,
    };
    if form {
        let map: serde_json::Map<_, _> = form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), serde_json::Value::String(v.into_owned())))
            .collect();
        if !map.is_empty() {
            return Some(map);
        }
    }
    None
}

/// The longest token lifetime grantd believes (ten years): a larger `expires_in` is clamped.
pub const MAX_LIFETIME_SECS: i64 = 10 * 365 * 86_400;

/// A token answer's `expires_in` (a number, or a string holding one) in whole seconds, clamped
/// to [`MAX_LIFETIME_SECS`]; `None` unless it is at least one second.
fn lifetime_secs(v: &serde_json::Value) -> Option<i64> {
    let secs = match v {
        serde_json::Value::Number(n) => n.as_f64()?,
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    // NaN fails this comparison too.
    if secs >= 1.0 {
        Some(secs.min(MAX_LIFETIME_SECS as f64) as i64)
    } else {
        None
    }
}

/// Keeps the token-answer fields named in `keep` (strings, numbers, booleans) as connection
/// metadata, e.g. Salesforce's `instance_url`. Nothing else is kept: extras are often secrets
/// (`id_token`, Slack's `bot_token`, `authed_user.access_token`).
fn merge_metadata(
    metadata: &mut serde_json::Value,
    fields: &serde_json::Map<String, serde_json::Value>,
    keep: &[String],
) {
    if !metadata.is_object() {
        *metadata = serde_json::json!({});
    }
    let obj = metadata.as_object_mut().expect("made an object above");
    for k in keep {
        if let Some(v) = fields
            .get(k)
            .filter(|v| v.is_string() || v.is_number() || v.is_boolean())
        {
            obj.insert(k.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_html_page_with_access_token_in_it_is_not_a_token_response() {
        let rules = RuleSet::empty("x", "https://x.example".into());
        let mut h = http::HeaderMap::new();
        h.insert(header::CONTENT_TYPE, "text/html".parse().unwrap());
        let page = Bytes::from_static(b"<a href='/cb?x=1&access_token=stolen'>go</a>");
        let got = classify(&rules, StatusCode::OK, &h, &page);
        assert!(!matches!(got, TokenResult::Tokens(_)), "{got:?}");
        h.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        let form = Bytes::from_static(b"access_token=gho_1&token_type=bearer");
        assert!(matches!(
            classify(&rules, StatusCode::OK, &h, &form),
            TokenResult::Tokens(_)
        ));
        let untyped = classify(&rules, StatusCode::OK, &http::HeaderMap::new(), &form);
        assert!(matches!(untyped, TokenResult::Tokens(_)));
    }

    #[test]
    fn expires_in_is_a_positive_number_of_seconds_clamped_to_ten_years() {
        use serde_json::json;
        for (v, want) in [
            (json!(3600), Some(3600)),
            (json!("3600"), Some(3600)),
            (json!(3599.9), Some(3599)),
            (json!(i64::MAX), Some(MAX_LIFETIME_SECS)),
            (json!(u64::MAX), Some(MAX_LIFETIME_SECS)),
            (json!(1e30), Some(MAX_LIFETIME_SECS)),
            (json!("9223372036854775807"), Some(MAX_LIFETIME_SECS)),
        ] {
            assert_eq!(lifetime_secs(&v), want, "{v}");
        }
        for v in [
            json!(-5),
            json!(0),
            json!(0.5),
            json!("-5"),
            json!("soon"),
            json!("NaN"),
            json!(true),
            json!({"s": 1}),
        ] {
            assert_eq!(lifetime_secs(&v), None, "{v}");
        }
    }
}
