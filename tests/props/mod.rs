//! The properties the fuzzers check, shared by `tests/fuzz_props.rs` (proptest, in CI) and the
//! libFuzzer targets in `fuzz/` (long runs). Each check returns what was wrong, never panics
//! on its own account.

#![allow(dead_code)] // each user takes what it needs

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde_json::{json, Value};

use grantd::connections::crypto::Keyring;
use grantd::connections::token::{
    apply_tokens, classify, Answer, OAuthClient, TokenResult, MAX_LIFETIME_SECS,
};
use grantd::connections::{Connections, Secret};
use grantd::proxy::{decode_for_rules, rule_headers};
use grantd::rules::check::evaluate_captured;
use grantd::rules::engine::Cancel;
use grantd::rules::file::{self, CapturedResponse, RequestSpec};
use grantd::rules::{default_budget, Action, Endpoint, Facts, Outcome, RuleSet};
use grantd::store::ConnectionRow;

pub const SHIPPED: [(&str, &str); 6] = [
    ("github", include_str!("../../rules/github.yaml")),
    ("google", include_str!("../../rules/google.yaml")),
    ("hubspot", include_str!("../../rules/hubspot.yaml")),
    ("microsoft", include_str!("../../rules/microsoft.yaml")),
    ("salesforce", include_str!("../../rules/salesforce.yaml")),
    ("slack", include_str!("../../rules/slack.yaml")),
];

/// The proxy's default `max_buffered_body`.
pub const BODY_LIMIT: usize = 1024 * 1024;

pub fn shipped() -> &'static [RuleSet] {
    static SETS: OnceLock<Vec<RuleSet>> = OnceLock::new();
    SETS.get_or_init(|| {
        SHIPPED
            .iter()
            .map(|(name, text)| {
                file::parse(&format!("rules/{name}.yaml"), text, Some(name))
                    .unwrap_or_else(|e| panic!("shipped rules/{name}.yaml: {e:?}"))
            })
            .collect()
    })
}

// ---------------------------------------------------------------------------------------------
// The rule-file loader

/// The file name every fuzzed rule file is loaded as.
pub const FILE: &str = "rules/fz.yaml";

/// Lines as the YAML parser counts them (it also breaks on a lone CR, NEL, LS and PS).
pub fn line_count(text: &str) -> usize {
    let breaks = text
        .char_indices()
        .filter(|&(i, c)| match c {
            '\n' => !text[..i].ends_with('\r'),
            '\r' | '\u{85}' | '\u{2028}' | '\u{2029}' => true,
            _ => false,
        })
        .count();
    breaks + 1
}

/// `file:N: ...` with N a line of a text of `lines` lines.
pub fn names_file_and_line(file: &str, lines: usize, error: &str) -> Result<(), String> {
    let line = error
        .strip_prefix(file)
        .and_then(|r| r.strip_prefix(':'))
        .and_then(|r| r.split_once(": "))
        .and_then(|(n, _)| n.parse::<usize>().ok());
    if line.is_some_and(|n| (1..=lines).contains(&n)) {
        Ok(())
    } else {
        Err(format!(
            "error does not name `{file}:<line 1..={lines}>:`: {error}"
        ))
    }
}

/// A failed load says why, and every error names the file and a line of it; a loaded set's
/// rules and tests point at lines of the file.
pub fn check_loaded(text: &str, result: &Result<RuleSet, Vec<String>>) -> Result<(), String> {
    let lines = line_count(text);
    match result {
        Err(errors) if errors.is_empty() => Err("a failed load must say why".into()),
        Err(errors) => errors
            .iter()
            .try_for_each(|e| names_file_and_line(FILE, lines, e)),
        Ok(set) => {
            if set.file != FILE {
                return Err(format!("loaded as `{}`", set.file));
            }
            let lines_ok = set
                .rules
                .iter()
                .map(|r| (&r.name, r.line))
                .chain(set.tests.iter().map(|t| (&t.name, t.line)))
                .find(|(_, l)| !(1..=lines).contains(l));
            match lines_ok {
                Some((name, line)) => Err(format!("`{name}` placed at line {line} of {lines}")),
                None => Ok(()),
            }
        }
    }
}

/// Loads `text` as [`FILE`] and checks the result.
pub fn check_rule_file(text: &str) -> Result<(), String> {
    check_loaded(text, &file::parse(FILE, text, Some("fz")))
}

// ---------------------------------------------------------------------------------------------
// The rule input builder

/// One upstream response as the proxy receives it. Header names must be valid (lower-case)
/// names and values valid header values (which may be non-UTF-8).
#[derive(Debug, Clone)]
pub struct Response {
    pub endpoint: Endpoint,
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub method: String,
    pub path: String,
}

pub fn header_map(headers: &[(String, Vec<u8>)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("valid header name"),
            HeaderValue::from_bytes(value).expect("valid header value"),
        );
    }
    map
}

fn facts_of(r: &Response, headers: &HeaderMap) -> Facts {
    Facts {
        endpoint: r.endpoint,
        status: r.status,
        headers: rule_headers(headers),
        method: r.method.clone(),
        path: r.path.clone(),
    }
}

/// What `Proxy::rewrite` does with a buffered response: decode for rules, then evaluate.
pub fn run_rules(set: &RuleSet, r: &Response) -> Outcome {
    let headers = header_map(&r.headers);
    let facts = facts_of(r, &headers);
    match decode_for_rules(&headers, &Bytes::from(r.body.clone()), BODY_LIMIT) {
        Ok(decoded) => set.evaluate(&facts, &decoded, &default_budget(), &Cancel::default()),
        Err(message) => Outcome::RuleError {
            rule: "(body)".into(),
            message,
        },
    }
}

/// An outcome the proxy can apply: verdicts and errors from rules of the set, statuses and
/// headers that are valid, and no engine panic (caught or not, it is a crash to a fuzzer).
pub fn check_outcome(set: &RuleSet, outcome: &Outcome) -> Result<(), String> {
    let known = |rule: &str| rule == "(body)" || set.rules.iter().any(|r| r.name == rule);
    let fail = |what: String| Err(format!("{}: {what}", set.integration));
    match outcome {
        Outcome::Unchanged => Ok(()),
        Outcome::Verdict(v) if !known(&v.rule) => fail(format!("verdict from unknown rule {v:?}")),
        Outcome::Verdict(v) if !(100..=599).contains(&v.status) => fail(format!("{v:?}")),
        Outcome::Verdict(v) => match v.headers.iter().find(|(n, value)| {
            HeaderName::from_bytes(n.as_bytes()).is_err() || HeaderValue::from_str(value).is_err()
        }) {
            Some(bad) => fail(format!("invalid header {bad:?} in {v:?}")),
            None => Ok(()),
        },
        Outcome::RuleError { rule, .. } if !known(rule) => {
            fail(format!("rule error from unknown rule {rule}"))
        }
        Outcome::RuleError { rule, message }
            if message.is_empty() || message.contains("panicked") =>
        {
            fail(format!("rule `{rule}`: {message:?}"))
        }
        Outcome::RuleError { .. } => Ok(()),
    }
}

/// Every shipped rule set, on this response, along the proxy's path.
pub fn check_shipped_rules(r: &Response) -> Result<(), String> {
    shipped()
        .iter()
        .try_for_each(|set| check_outcome(set, &run_rules(set, r)))
}

/// The same response through `evaluate_captured` (`grantd check`, `rules eval`, and the token
/// classifier's path), with the body as text.
pub fn check_shipped_rules_captured(
    endpoint: Endpoint,
    response: &CapturedResponse,
    path: &str,
) -> Result<(), String> {
    let request = RequestSpec {
        method: "GET".into(),
        path: path.into(),
    };
    shipped().iter().try_for_each(|set| {
        check_outcome(
            set,
            &evaluate_captured(set, endpoint, &request, response, &default_budget()),
        )
    })
}

/// A rule set whose only rules return the whole document they were given.
fn echo_rules() -> &'static RuleSet {
    static ECHO: OnceLock<RuleSet> = OnceLock::new();
    ECHO.get_or_init(|| {
        let text = r#"
integration: echo
base_url: https://echo.test
rules:
  - name: api
    expr: '{"status": 200, "body": $}'
  - name: token
    on: token
    expr: '{"status": 200, "body": $}'
"#;
        file::parse("echo.yaml", text, Some("echo")).expect("echo rules load")
    })
}

/// Equal documents, numbers compared as the engine holds them (f64). serde_json's default
/// float parser may land one ULP off when it reads the engine's 17-digit output back, so
/// floats are compared to a relative 1e-15.
pub fn same_document(got: &Value, want: &Value) -> bool {
    match (got, want) {
        (Value::Number(a), Value::Number(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(a), Some(b)) => a == b || (a - b).abs() <= 1e-15 * a.abs().max(b.abs()),
            _ => false,
        },
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same_document(a, b))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(k, v)| b.get(k).is_some_and(|w| same_document(v, w)))
        }
        (a, b) => a == b,
    }
}

fn nesting(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(nesting).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(nesting).max().unwrap_or(0),
        _ => 0,
    }
}

/// What the rules see is exactly the response: status, headers (lower-case names, repeats
/// joined with ", ", non-UTF-8 bytes replaced), the body as JSON, as text, or null when
/// blank (after gzip/deflate decoding), and the request's method and path.
pub fn check_rules_see_the_response(r: &Response) -> Result<(), String> {
    let headers = header_map(&r.headers);
    let decoded = match decode_for_rules(&headers, &Bytes::from(r.body.clone()), BODY_LIMIT) {
        Ok(d) => d,
        Err(e) => {
            // Only a content-encoding that cannot be undone is refused.
            let coding = headers.get("content-encoding").map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .trim()
                    .to_ascii_lowercase()
            });
            return match coding {
                Some(c) if !matches!(c.as_str(), "" | "identity") => Ok(()),
                _ => Err(format!("body refused without a content-encoding: {e}")),
            };
        }
    };
    let mut want_headers = serde_json::Map::new();
    for (name, value) in &r.headers {
        let value = String::from_utf8_lossy(value).into_owned();
        match want_headers.get_mut(name) {
            Some(Value::String(joined)) => {
                joined.push_str(", ");
                joined.push_str(&value);
            }
            _ => {
                want_headers.insert(name.clone(), Value::String(value));
            }
        }
    }
    let want_body = if decoded.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice::<Value>(&decoded)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&decoded).into_owned()))
    };
    let want = json!({
        "status": r.status,
        "headers": want_headers,
        "body": want_body,
        "request": {"method": r.method, "path": r.path},
    });
    let outcome = echo_rules().evaluate(
        &facts_of(r, &headers),
        &decoded,
        &default_budget(),
        &Cancel::default(),
    );
    let depth = nesting(&want);
    match outcome {
        Outcome::Verdict(v) => {
            let got = v.body.unwrap_or(Value::Null);
            if same_document(&got, &want) {
                Ok(())
            } else {
                Err(format!("rules saw\n{got}\ninstead of\n{want}"))
            }
        }
        // The echo hands back the document one level deeper: past serde_json's 128-level
        // limit the result is refused, never a crash.
        Outcome::RuleError { message, .. }
            if depth >= 127 && message.contains("not usable JSON") =>
        {
            Ok(())
        }
        other => Err(format!(
            "echo returned {other:?} for a document of depth {depth}"
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// The token-response classifier

fn client(set: &RuleSet) -> OAuthClient {
    let auth = set.auth.clone().expect("shipped rule sets have auth");
    let urls = set.urls(None).expect("shipped rule sets have valid URLs");
    OAuthClient {
        token_url: urls.token.clone().expect("an auth section has a token URL"),
        urls,
        authorize_url: auth.authorize_url.clone(),
        auth,
        redirect_uri: None,
        scopes: Vec::new(),
        client_id: Secret::new("client"),
        client_secret: Some(Secret::new("secret")),
        rules: Arc::new(set.clone()),
        eval: Default::default(),
    }
}

/// One OAuth client per shipped rule set.
pub fn clients() -> &'static [OAuthClient] {
    static CLIENTS: OnceLock<Vec<OAuthClient>> = OnceLock::new();
    CLIENTS.get_or_init(|| shipped().iter().map(client).collect())
}

/// The same integration with no rules at all: plain RFC 6749.
fn ruleless(c: &OAuthClient) -> OAuthClient {
    let mut empty = RuleSet::empty(&c.rules.integration, c.rules.base_url.clone());
    empty.auth = c.rules.auth.clone();
    OAuthClient {
        rules: Arc::new(empty),
        ..c.clone()
    }
}

fn connections() -> &'static Connections {
    static GRANTS: OnceLock<(tempfile::TempDir, Connections)> = OnceLock::new();
    &GRANTS
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let store = rt
                .block_on(grantd::store::sqlite::SqliteStore::open(
                    &dir.path().join("g.db"),
                    Duration::from_secs(5),
                    Default::default(),
                ))
                .expect("store");
            let keys = Keyring::new(grantd::app::EXAMPLE_KEY, &[]).expect("key");
            let connections = Connections::new(Arc::new(store), keys, Duration::from_secs(2));
            (dir, connections)
        })
        .1
}

fn blank_row() -> ConnectionRow {
    ConnectionRow::new("c1", "fz", 0)
}

pub fn variant(r: &TokenResult) -> &'static str {
    match r {
        TokenResult::Tokens(_) => "tokens",
        TokenResult::Connection(_) => "grant",
        TokenResult::Config(_) => "config",
        TokenResult::Transient(..) => "transient",
    }
}

fn form_fields(body: &[u8]) -> serde_json::Map<String, Value> {
    form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect()
}

/// The fields of a token response: a JSON object, or else form-encoded fields.
/// A JSON object, or form fields when the answer says it is a form or says nothing.
fn token_fields(headers: &HeaderMap, body: &[u8]) -> serde_json::Map<String, Value> {
    let form = match headers.get(http::header::CONTENT_TYPE).map(|v| v.to_str()) {
        None => true,
        Some(Ok(ct)) => ct.contains("x-www-form-urlencoded"),
        Some(Err(_)) => false,
    };
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => map,
        _ if form => form_fields(body),
        _ => serde_json::Map::new(),
    }
}

fn has_access_token(fields: &serde_json::Map<String, Value>) -> bool {
    fields
        .get("access_token")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.is_empty())
}

/// Tokens come only from a 2xx answer whose body is a JSON object, or form-encoded fields,
/// with a non-empty string `access_token`; and they can be stored, with an expiry between
/// receipt and the longest lifetime taken at its word.
fn check_tokens(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    result: &TokenResult,
) -> Result<(), String> {
    let TokenResult::Tokens(fields) = result else {
        return Ok(());
    };
    if !status.is_success() {
        return Err(format!("tokens from a {status}"));
    }
    if !has_access_token(fields) {
        return Err(format!("tokens without an access token: {fields:?}"));
    }
    if &token_fields(headers, body) != fields {
        return Err(format!(
            "tokens that are neither the JSON object nor the form in the body: {fields:?}"
        ));
    }
    let now = 1_700_000_000_000i64;
    let mut row = blank_row();
    let urls = grantd::template::Urls::new("https://x.example", None, Default::default())
        .expect("a fixed URL");
    let answer = Answer {
        fields,
        metadata_keys: &[],
        urls: &urls,
        default_lifetime: Duration::from_secs(3600),
        received: now,
    };
    apply_tokens(connections(), &mut row, &answer, None);
    match row.expires_at {
        Some(e) if (now..=now + MAX_LIFETIME_SECS * 1000).contains(&e) => {}
        other => return Err(format!("expiry {other:?} for receipt at {now}: {fields:?}")),
    }
    if row.access_token.is_none() {
        return Err("the access token was not stored".into());
    }
    Ok(())
}

/// What the integration's token rules say about this answer, if they override RFC 6749.
fn token_rule_objection(
    client: &OAuthClient,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<&'static str> {
    let captured = CapturedResponse {
        status: status.as_u16(),
        headers: headers
            .iter()
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
            .collect::<BTreeMap<_, _>>(),
        body: Value::String(String::from_utf8_lossy(body).into_owned()),
    };
    let request = RequestSpec {
        method: "POST".into(),
        path: "/".into(),
    };
    match evaluate_captured(
        &client.rules,
        Endpoint::Token,
        &request,
        &captured,
        &default_budget(),
    ) {
        Outcome::Verdict(v) => match v.action {
            Action::Reauth => Some("grant"),
            Action::FixConfig => Some("config"),
            Action::Retry => Some("transient"),
            Action::Refresh | Action::None => None,
        },
        _ => None,
    }
}

/// Classifies one token-endpoint answer with and without the integration's rules:
/// no panic; tokens only from a real token response; and a 2xx token response is tokens
/// (without rules always, with them unless a token rule objects, whose action then decides).
/// Returns the classification with rules.
pub fn check_token_response(
    client: &OAuthClient,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<&'static str, String> {
    let bytes = Bytes::copy_from_slice(body);
    let result = classify(&client.rules, status, headers, &bytes);
    check_tokens(status, headers, body, &result)?;
    let plain = classify(&ruleless(client).rules, status, headers, &bytes);
    check_tokens(status, headers, body, &plain)?;
    if status.is_success() && has_access_token(&token_fields(headers, body)) {
        if !matches!(plain, TokenResult::Tokens(_)) {
            return Err(format!("a 2xx token response without rules: {plain:?}"));
        }
        let want = token_rule_objection(client, status, headers, body).unwrap_or("tokens");
        if variant(&result) != want {
            return Err(format!("expected {want}, got {result:?}"));
        }
    }
    Ok(variant(&result))
}
