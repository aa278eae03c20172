//! Rule files: per-integration JSONata rules that turn misleading provider responses into a
//! [`Verdict`] (honest status, action, error code).
//!
//! Owns loading and validating `rules/*.yaml` ([`mod@file`]), the cheap `match` prefilter, turning
//! an expression's result into a typed verdict, and running a file's `tests:` ([`check`]).
//! It must not do I/O on the request path or touch HTTP plumbing: `proxy` decides what to
//! buffer and applies the verdict; the engine itself lives behind [`engine`].

pub mod check;
pub mod credentials;
pub mod engine;
pub mod file;
mod run;
mod spec;
pub mod summary;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::EvaluationConfig;
use crate::template::{Hosts, Urls};
use engine::{Cancel, Document, Limits, Program, RequestFacts};

pub use file::{load_dir, LoadErrors};
pub use run::run;
pub use spec::ScopeText;

/// Which kind of provider endpoint produced a response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// The provider's API, reached through the proxy.
    #[default]
    Api,
    /// The OAuth token endpoint (used by the refresher).
    Token,
}

/// What the application (or grantd) should do about a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Refresh,
    Reauth,
    Retry,
    FixConfig,
    None,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Refresh => "refresh",
            Action::Reauth => "reauth",
            Action::Retry => "retry",
            Action::FixConfig => "fix_config",
            Action::None => "none",
        }
    }
}

/// A rule's decision about one response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub rule: String,
    pub status: u16,
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Provider-specific cause, e.g. `AADSTS50173` or `invalid_rapt`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Replacement body; `None` keeps the provider's body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
}

/// The result of running an integration's rules on one response.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Unchanged,
    Verdict(Verdict),
    /// A rule failed (threw, hit a limit, returned a malformed result): the response passes
    /// through unmodified and the app is told which rule failed.
    RuleError {
        rule: String,
        message: String,
    },
}

/// The facts of one response that rules look at, owned so they can cross to a blocking thread.
#[derive(Debug, Clone)]
pub struct Facts {
    pub endpoint: Endpoint,
    pub status: u16,
    /// Lower-case names; repeated headers joined with ", ".
    pub headers: Vec<(String, String)>,
    pub method: String,
    /// Path below the integration's base URL, without the query string.
    pub path: String,
}

impl Facts {
    fn content_type(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == "content-type")
            .map(|(_, v)| v.as_str())
    }
}

/// A status selector in `match.status`: an exact code or a class such as `4xx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusPattern {
    Exact(u16),
    Class(u16),
}

impl StatusPattern {
    fn matches(self, status: u16) -> bool {
        match self {
            StatusPattern::Exact(s) => s == status,
            StatusPattern::Class(c) => status / 100 == c,
        }
    }
}

/// The content-type selector in `match.content_type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentTypeMatch {
    Any,
    /// `application/json`, `application/problem+json`, `text/json`, ...
    Json,
    /// Case-insensitive substring of the content type, e.g. `x-www-form-urlencoded`.
    Contains(String),
}

/// The cheap prefilter: only responses it selects are buffered and evaluated.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub endpoint: Endpoint,
    pub statuses: Vec<StatusPattern>,
    pub content_type: ContentTypeMatch,
    pub path_prefix: Option<String>,
    pub path_contains: Option<String>,
}

impl Matcher {
    pub fn selects(&self, endpoint: Endpoint, status: u16, ct: Option<&str>, path: &str) -> bool {
        endpoint == self.endpoint
            && (self.statuses.is_empty() || self.statuses.iter().any(|p| p.matches(status)))
            && self.content_type_matches(ct)
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(p))
            && self
                .path_contains
                .as_deref()
                .is_none_or(|p| path.contains(p))
    }

    fn content_type_matches(&self, ct: Option<&str>) -> bool {
        let ct = ct.unwrap_or("").to_ascii_lowercase();
        match &self.content_type {
            ContentTypeMatch::Any => true,
            ContentTypeMatch::Json => ct.contains("json"),
            ContentTypeMatch::Contains(s) => ct.contains(s.as_str()),
        }
    }
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    /// Line of the rule in its file, for error messages.
    pub line: usize,
    pub matcher: Matcher,
    pub program: Program,
}

/// Everything loaded from one rule file.
#[derive(Debug, Clone)]
pub struct RuleSet {
    pub integration: String,
    pub file: String,
    pub base_url: String,
    /// For people: what the integration is (`grantd providers`, the README's table).
    pub description: Option<String>,
    /// For end users: the provider's product name (`display_name`; the integration id without).
    pub display_name: String,
    /// For end users: what each scope lets the app do, in plain words (`scope_descriptions`).
    pub scope_descriptions: std::collections::BTreeMap<String, ScopeText>,
    /// Hosts a templated URL (base, token, authorize) may resolve to.
    pub allowed_hosts: Vec<String>,
    pub allow_http: bool,
    /// Whether `_base.yaml`'s rules were appended to this file's (its `base: false` opts out).
    pub inherits_base: bool,
    pub auth: Option<file::AuthSpec>,
    /// The credential kinds it accepts besides OAuth (`credentials:`).
    pub credentials: credentials::CredentialsSpec,
    /// Whether and for whom a provider's 429 is remembered (`ratelimit:`).
    pub ratelimit: file::RateLimitSpec,
    pub rules: Vec<Rule>,
    pub tests: Vec<file::TestCase>,
    /// What of the file only a restart applies, as parsed YAML: everything but the `api`
    /// rules, `ratelimit`, the tests and the description (`spec::restart_only`). A reload
    /// compares it.
    pub restart_only: serde_yaml_ng::Value,
}

impl RuleSet {
    /// An integration with no rules (a plain proxy route defined only in the config).
    pub fn empty(integration: &str, base_url: String) -> RuleSet {
        RuleSet {
            integration: integration.to_string(),
            file: "(config)".into(),
            base_url,
            description: None,
            display_name: integration.to_string(),
            scope_descriptions: Default::default(),
            allowed_hosts: Vec::new(),
            allow_http: false,
            inherits_base: false,
            auth: None,
            credentials: Default::default(),
            ratelimit: Default::default(),
            rules: Vec::new(),
            tests: Vec::new(),
            restart_only: serde_yaml_ng::Value::Null,
        }
    }

    /// This integration's URLs as deployed: the rule file's `base_url`, `auth.token_url`,
    /// `allowed_hosts` and `allow_http`, each replaced by the config's override when given.
    pub fn urls(&self, over: Option<&crate::config::IntegrationConfig>) -> Result<Urls, String> {
        let patterns = over
            .and_then(|o| o.allowed_hosts.as_ref())
            .unwrap_or(&self.allowed_hosts);
        let http = over.and_then(|o| o.allow_http).unwrap_or(self.allow_http);
        let in_file = |e: String| format!("integration {}: {e}", self.integration);
        let hosts = Hosts::new(patterns, http).map_err(in_file)?;
        let base = over
            .and_then(|o| o.base_url.as_deref())
            .unwrap_or(&self.base_url);
        let auth = self.auth.as_ref();
        let token = auth.map(|a| {
            over.and_then(|o| o.token_url.as_deref())
                .unwrap_or(&a.token_url)
        });
        let refresh = over
            .and_then(|o| o.refresh_url.as_deref())
            .or(auth.and_then(|a| a.refresh_url.as_deref()));
        let revocation = over
            .and_then(|o| o.revocation_url.as_deref())
            .or(auth.and_then(|a| a.revocation_url.as_deref()));
        let mint = self
            .credentials
            .oauth2_client_credentials
            .as_ref()
            .and_then(|m| m.token_url.as_deref());
        Urls::new(base, token, hosts)
            .and_then(|u| u.with_endpoints(refresh, revocation, mint))
            .map_err(in_file)
    }

    /// True when every rule is stopped by the engine's own time limit, so evaluating inline on
    /// an async worker holds it for at most the evaluation budget.
    pub fn is_bounded(&self) -> bool {
        self.rules.iter().all(|r| r.program.is_bounded())
    }

    /// True when some rule's prefilter selects this response, i.e. it must be buffered.
    pub fn selects(&self, endpoint: Endpoint, status: u16, ct: Option<&str>, path: &str) -> bool {
        self.rules
            .iter()
            .any(|r| r.matcher.selects(endpoint, status, ct, path))
    }

    /// Runs the rules in file order; the first object result wins. Blocking: call it from a
    /// blocking thread. `cancel` lets the caller stop it when its budget is spent.
    pub fn evaluate(
        &self,
        facts: &Facts,
        body: &[u8],
        eval: &EvaluationConfig,
        cancel: &Cancel,
    ) -> Outcome {
        let limits = Limits {
            deadline: Instant::now() + eval.timeout,
            max_depth: eval.max_depth,
            max_sequence_length: eval.max_sequence_length,
        };
        let ct = facts.content_type();
        let mut doc = None;
        for rule in &self.rules {
            if !rule
                .matcher
                .selects(facts.endpoint, facts.status, ct, &facts.path)
            {
                continue;
            }
            let doc = doc.get_or_insert_with(|| {
                let req = RequestFacts {
                    method: &facts.method,
                    path: &facts.path,
                };
                Document::new(facts.status, &facts.headers, body, &req)
            });
            let rule_error = |message: String| Outcome::RuleError {
                rule: rule.name.clone(),
                message,
            };
            match rule.program.eval(doc, &limits, cancel) {
                Err(e) => return rule_error(e),
                Ok(None) => continue,
                Ok(Some(result)) => match verdict_from(&rule.name, result) {
                    Ok(Some(v)) => return Outcome::Verdict(v),
                    Ok(None) => continue,
                    Err(e) => return rule_error(e),
                },
            }
        }
        Outcome::Unchanged
    }
}

/// Interprets an expression's result: `false`/`null` mean "no opinion", an object is a
/// verdict, anything else is a malformed result.
fn verdict_from(rule: &str, result: serde_json::Value) -> Result<Option<Verdict>, String> {
    use serde_json::Value;
    let obj = match result {
        Value::Null | Value::Bool(false) => return Ok(None),
        Value::Object(obj) => obj,
        other => {
            return Err(format!(
                "result must be an object or false/undefined, got {}",
                short(&other)
            ))
        }
    };
    let mut v = Verdict {
        rule: rule.to_string(),
        status: 0,
        action: Action::None,
        error: None,
        detail: None,
        message: None,
        retry_after: None,
        headers: BTreeMap::new(),
        body: None,
    };
    // A field that is `null` counts as not given, so expressions can write `cond ? x : null`.
    for (key, value) in obj.into_iter().filter(|(_, v)| !v.is_null()) {
        match key.as_str() {
            "status" => v.status = status_from(&value)?,
            "action" => {
                v.action = serde_json::from_value(value.clone()).map_err(|_| {
                    format!(
                        "`action` must be one of refresh, reauth, retry, fix_config, none; got {}",
                        short(&value)
                    )
                })?
            }
            "error" => v.error = Some(string_field("error", &value)?),
            "detail" => v.detail = Some(string_field("detail", &value)?),
            "message" => v.message = Some(string_field("message", &value)?),
            "retry_after" => v.retry_after = Some(retry_after_from(&value)?),
            "headers" => v.headers = headers_from(&value)?,
            "body" => v.body = Some(value),
            other => return Err(format!("unknown field `{other}` in result")),
        }
    }
    if v.status == 0 {
        return Err("result has no `status`".into());
    }
    Ok(Some(v))
}

fn status_from(value: &serde_json::Value) -> Result<u16, String> {
    match value.as_f64() {
        Some(n) if n.fract() == 0.0 && (100.0..=599.0).contains(&n) => Ok(n as u16),
        _ => Err(format!(
            "`status` must be an integer from 100 to 599, got {}",
            short(value)
        )),
    }
}

/// Seconds; a computed value in the past (clock skew, a reset that just passed) means "now".
fn retry_after_from(value: &serde_json::Value) -> Result<u64, String> {
    match value.as_f64() {
        Some(n) if n.is_finite() => Ok(n.max(0.0).ceil() as u64),
        _ => Err(format!(
            "`retry_after` must be a number of seconds, got {}",
            short(value)
        )),
    }
}

fn string_field(name: &str, value: &serde_json::Value) -> Result<String, String> {
    value
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("`{name}` must be a string, got {}", short(value)))
}

/// Response headers a rule may not set: framing is grantd's job.
const RESERVED_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "content-encoding",
];

fn headers_from(value: &serde_json::Value) -> Result<BTreeMap<String, String>, String> {
    let obj = value
        .as_object()
        .ok_or_else(|| format!("`headers` must be an object, got {}", short(value)))?;
    let mut out = BTreeMap::new();
    for (name, v) in obj {
        let name = name.to_ascii_lowercase();
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!("`headers`: `{name}` is not a valid header name"));
        }
        if RESERVED_HEADERS.contains(&name.as_str()) {
            return Err(format!("`headers`: `{name}` is managed by grantd"));
        }
        let text = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            other => {
                return Err(format!(
                    "`headers.{name}` must be a string, got {}",
                    short(other)
                ))
            }
        };
        if http::HeaderValue::from_str(&text).is_err() {
            return Err(format!("`headers.{name}` is not a valid header value"));
        }
        out.insert(name, text);
    }
    Ok(out)
}

fn short(value: &serde_json::Value) -> String {
    let mut s = value.to_string();
    if s.len() > 60 {
        let cut = (0..=60).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// The evaluation budget for rules as configured; used by the CLI and tests.
/// `configured`, with at least the test budget's time: where a rule running a little long on a
/// loaded machine must not change the answer (rule tests, token responses), not the proxy's.
pub fn at_least_test_budget(configured: &EvaluationConfig) -> EvaluationConfig {
    let mut eval = configured.clone();
    eval.timeout = eval.timeout.max(default_budget().timeout);
    eval
}

pub fn default_budget() -> EvaluationConfig {
    EvaluationConfig {
        timeout: Duration::from_secs(1),
        ..EvaluationConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn false_null_and_objects_are_the_only_valid_results() {
        assert_eq!(verdict_from("r", json!(false)).unwrap(), None);
        assert_eq!(verdict_from("r", json!(null)).unwrap(), None);
        assert!(verdict_from("r", json!(true)).is_err());
        assert!(verdict_from("r", json!("401")).is_err());
        let v = verdict_from(
            "r",
            json!({"status": 401, "action": "refresh", "error": "x"}),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (v.status, v.action, v.error.as_deref()),
            (401, Action::Refresh, Some("x"))
        );
    }

    #[test]
    fn malformed_results_are_rule_errors() {
        for bad in [
            json!({"action": "refresh"}),
            json!({"status": 700}),
            json!({"status": 99}),
            json!({"status": 401.5}),
            json!({"status": "401"}),
            json!({"status": 401, "action": "explode"}),
            json!({"status": 401, "error": 5}),
            json!({"status": 401, "retry_after": "soon"}),
            json!({"status": 401, "headers": {"content-length": "5"}}),
            json!({"status": 401, "headers": {"bad name": "x"}}),
            json!({"status": 401, "headers": {"x": "a\nb"}}),
            json!({"status": 401, "colour": "red"}),
        ] {
            assert!(verdict_from("r", bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn null_fields_count_as_absent() {
        let v = verdict_from(
            "r",
            json!({"status": 429, "retry_after": null, "error": null}),
        )
        .unwrap()
        .unwrap();
        assert_eq!((v.retry_after, v.error), (None, None));
    }

    #[test]
    fn retry_after_rounds_up_and_never_goes_negative() {
        let v = verdict_from("r", json!({"status": 429, "retry_after": 1.2}))
            .unwrap()
            .unwrap();
        assert_eq!(v.retry_after, Some(2));
        let v = verdict_from("r", json!({"status": 429, "retry_after": -30}))
            .unwrap()
            .unwrap();
        assert_eq!(v.retry_after, Some(0));
    }

    #[test]
    fn matcher_prefilters_on_status_content_type_path_and_endpoint() {
        let m = Matcher {
            endpoint: Endpoint::Api,
            statuses: vec![StatusPattern::Exact(200), StatusPattern::Class(4)],
            content_type: ContentTypeMatch::Json,
            path_prefix: Some("/id/".into()),
            path_contains: None,
        };
        let json = Some("application/json; charset=utf-8");
        assert!(m.selects(Endpoint::Api, 200, json, "/id/1"));
        assert!(m.selects(
            Endpoint::Api,
            403,
            Some("application/problem+json"),
            "/id/1"
        ));
        assert!(!m.selects(Endpoint::Api, 500, json, "/id/1"));
        assert!(!m.selects(
            Endpoint::Api,
            200,
            Some("application/octet-stream"),
            "/id/1"
        ));
        assert!(!m.selects(Endpoint::Api, 200, None, "/id/1"));
        assert!(!m.selects(Endpoint::Api, 200, json, "/services/x"));
        assert!(!m.selects(Endpoint::Token, 200, json, "/id/1"));
    }
}
