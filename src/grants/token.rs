//! The token endpoint: building requests (refresh and authorization-code grants, both client
//! authentication methods), sending them once with a hard timeout, and classifying answers
//! (token rules first, then RFC 6749). Shared by the refresher and the connect flow; it must not
//! store anything.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};

use super::{Grants, Secret};
use crate::rules::file::{AuthSpec, CapturedResponse, ClientAuth, RequestSpec};
use crate::rules::{check::evaluate_captured, Action, Endpoint, Outcome as RuleOutcome, RuleSet};
use crate::store::{Row, Status};
use crate::upstream::UpstreamClient;

/// One integration's OAuth client: the rule file's `auth` plus the deployment's credentials.
#[derive(Debug, Clone)]
pub struct OAuthClient {
    pub auth: AuthSpec,
    pub token_url: String,
    pub authorize_url: Option<String>,
    /// The integration's own redirect URI, if it has one (else `connect.redirect_uri`).
    pub redirect_uri: Option<String>,
    /// Scopes asked for when a connect request names none.
    pub scopes: Vec<String>,
    pub client_id: Secret,
    pub client_secret: Option<Secret>,
    pub rules: Arc<RuleSet>,
}

/// What the token endpoint said, classified.
#[derive(Debug)]
pub enum TokenResult {
    Tokens(serde_json::Map<String, serde_json::Value>),
    Grant(Failure),
    Config(Failure),
    Transient(Failure, Option<i64>),
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
        Ok(Ok((parts, body))) => classify(client, parts.status, &parts.headers, &body),
    }
}

fn token_request(
    client: &OAuthClient,
    grant: &[(&str, &str)],
    metadata: &serde_json::Value,
) -> Result<Request<crate::upstream::RequestBody>, String> {
    let url = crate::proxy::fill_template(&client.token_url, metadata, false)?;
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (k, v) in grant {
        form.append_pair(k, v);
    }
    for (k, v) in &client.auth.token_params {
        form.append_pair(k, v);
    }
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(&url)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json");
    let secret = client.client_secret.as_ref().map_or("", |s| s.expose());
    match client.auth.client_auth {
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

/// The longest `expires_in` taken at its word (ten years); longer ones are cut to it.
pub const MAX_TOKEN_LIFETIME_SECS: i64 = 10 * 365 * 24 * 3600;

/// Writes a token response into `next`: tokens sealed, expiry from the *local* receipt time
/// `now` plus `expires_in` (provider clocks and absolute timestamps are ignored), scopes and
/// extra fields as metadata. A response without a refresh token keeps `keep_refresh`.
pub fn apply_tokens(
    grants: &Grants,
    next: &mut Row,
    fields: &serde_json::Map<String, serde_json::Value>,
    keep_refresh: Option<&Secret>,
    default_lifetime: Duration,
    now: i64,
) {
    let access = fields
        .get("access_token")
        .and_then(|v| v.as_str())
        .map(Secret::new);
    let refresh = fields
        .get("refresh_token")
        .and_then(|v| v.as_str())
        .map(Secret::new)
        .or_else(|| keep_refresh.cloned());
    // A negative lifetime means "already expired"; a huge one must not overflow the expiry.
    let lifetime = fields
        .get("expires_in")
        .and_then(number)
        .unwrap_or(default_lifetime.as_secs() as i64)
        .clamp(0, MAX_TOKEN_LIFETIME_SECS);
    next.expires_at = Some(now + lifetime * 1000);
    if let Some(scope) = fields.get("scope").and_then(|v| v.as_str()) {
        next.scopes = scope.replace(',', " ");
    }
    merge_metadata(&mut next.metadata, fields);
    grants.seal_into(next, access.as_ref(), refresh.as_ref());
    next.status = Status::Active;
    next.refresh_failures = 0;
    next.next_attempt_at = None;
    next.last_error = None;
}

/// Token rules first (providers that lie), then RFC 6749 §5.2.
pub fn classify(
    client: &OAuthClient,
    status: StatusCode,
    headers: &http::HeaderMap,
    body: &Bytes,
) -> TokenResult {
    let captured = CapturedResponse {
        status: status.as_u16(),
        headers: headers
            .iter()
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
            .collect(),
        body: serde_json::Value::String(String::from_utf8_lossy(body).into_owned()),
    };
    let request = RequestSpec {
        method: "POST".into(),
        path: "/".into(),
    };
    let retry_after = headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let fields = parse_fields(headers, body);
    let code = fields
        .as_ref()
        .and_then(|f| f.get("error"))
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    let description = fields
        .as_ref()
        .and_then(|f| f.get("error_description"))
        .and_then(|v| v.as_str())
        .map(str::to_string);
    if let RuleOutcome::Verdict(v) = evaluate_captured(
        &client.rules,
        Endpoint::Token,
        &request,
        &captured,
        &crate::rules::default_budget(),
    ) {
        let f = Failure {
            code: v.error.clone().unwrap_or_else(|| code.clone()),
            status: Some(status.as_u16()),
            description: v.message.clone().or(description.clone()),
            detail: v.detail.clone(),
        };
        match v.action {
            Action::Reauth => return TokenResult::Grant(f),
            Action::FixConfig => return TokenResult::Config(f),
            Action::Retry => {
                return TokenResult::Transient(f, v.retry_after.map(|s| s as i64).or(retry_after))
            }
            Action::Refresh | Action::None => {}
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
        "invalid_grant" => TokenResult::Grant(f),
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
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("x-www-form-urlencoded"));
    if form || body.contains(&b'=') {
        let map: serde_json::Map<_, _> = form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), serde_json::Value::String(v.into_owned())))
            .collect();
        if !map.is_empty() {
            return Some(map);
        }
    }
    None
}

/// Builds the OAuth clients from the rule files and the deployment config. An integration
/// with `auth:` but no `client_id` is left out (its connections cannot be refreshed).
pub fn oauth_clients(
    config: &crate::config::Config,
    sets: &BTreeMap<String, RuleSet>,
) -> HashMap<String, OAuthClient> {
    let mut out = HashMap::new();
    for (name, set) in sets {
        let Some(auth) = &set.auth else { continue };
        let over = config.integrations.get(name);
        let Some(client_id) = over
            .and_then(|o| o.client_id.clone())
            .filter(|id| !id.is_empty())
        else {
            tracing::info!(integration = %name, "no client_id configured: its connections will not be refreshed");
            continue;
        };
        out.insert(
            name.clone(),
            OAuthClient {
                auth: auth.clone(),
                token_url: over
                    .and_then(|o| o.token_url.clone())
                    .unwrap_or_else(|| auth.token_url.clone()),
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
            },
        );
    }
    out
}

pub fn number(v: &serde_json::Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// Token-response fields other than the tokens themselves are kept as connection metadata
/// (e.g. Salesforce's `instance_url`).
pub fn merge_metadata(
    metadata: &mut serde_json::Value,
    fields: &serde_json::Map<String, serde_json::Value>,
) {
    const NOT_METADATA: &[&str] = &[
        "access_token",
        "refresh_token",
        "id_token",
        "expires_in",
        "token_type",
        "scope",
        "refresh_token_expires_in",
        // Provider clocks: expiry comes from `expires_in` and our clock only.
        "expires_at",
        "expires_on",
        "ext_expires_in",
    ];
    if !metadata.is_object() {
        *metadata = serde_json::json!({});
    }
    let obj = metadata.as_object_mut().expect("made an object above");
    for (k, v) in fields {
        if !NOT_METADATA.contains(&k.as_str()) && (v.is_string() || v.is_number() || v.is_boolean())
        {
            obj.insert(k.clone(), v.clone());
        }
    }
}
