//! What a rule file says, as typed data: the YAML shapes (`auth`, `rules`, `tests`) and the
//! captured responses tests are written in. Pure data and their defaults; loading and
//! compiling them is [`super::file`]'s.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::Endpoint;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSpec {
    pub(super) integration: String,
    pub(super) base_url: String,
    /// Hosts a templated URL may resolve to (`*.zendesk.com`, `host:port`, `host:*`).
    #[serde(default)]
    pub(super) allowed_hosts: Vec<String>,
    /// Lets templated URLs use plain http (local test setups only).
    #[serde(default)]
    pub(super) allow_http: bool,
    /// Inherit the shared base (`_base.yaml`), evaluated after this file's own rules.
    #[serde(default = "default_true")]
    pub(super) base: bool,
    #[serde(default)]
    pub(super) description: Option<String>,
    /// The provider's product name as its users know it ("Google Workspace"), for pages.
    #[serde(default)]
    pub(super) display_name: Option<String>,
    /// Plain-words descriptions of scopes for the user ("Read your calendar"), by scope.
    #[serde(default)]
    pub(super) scope_descriptions: BTreeMap<String, ScopeText>,
    #[serde(default)]
    pub(super) auth: Option<AuthSpec>,
    #[serde(default)]
    pub(super) credentials: super::credentials::CredentialsSpec,
    #[serde(default)]
    pub(super) ratelimit: RateLimitSpec,
    #[serde(default)]
    pub(super) rules: Vec<RuleSpec>,
    #[serde(default)]
    pub(super) tests: Vec<TestSpec>,
}

/// `ratelimit:`: whether grantd remembers this provider's 429s, and for whom.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Off: every request reaches the provider, 429 or not.
    #[serde(default = "default_true")]
    pub remember: bool,
    #[serde(default)]
    pub scope: RateLimitScope,
}

impl Default for RateLimitSpec {
    fn default() -> Self {
        RateLimitSpec {
            remember: true,
            scope: RateLimitScope::default(),
        }
    }
}

/// Whose budget a provider's 429 spends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitScope {
    /// Per token, user or workspace (most providers): only that connection waits.
    #[default]
    Connection,
    /// Per app (one client id for everyone): every request to the integration waits.
    Integration,
}

impl RateLimitScope {
    pub fn as_str(self) -> &'static str {
        match self {
            RateLimitScope::Connection => "connection",
            RateLimitScope::Integration => "integration",
        }
    }
}

impl FileSpec {
    /// What is wrong with the names shown to end users: blank, or too long for a heading.
    pub(super) fn naming_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(name) = &self.display_name {
            if name.trim().is_empty() || name.chars().count() > 60 {
                out.push("display_name must be 1 to 60 characters".to_string());
            }
        }
        for (scope, text) in &self.scope_descriptions {
            let texts = match text {
                ScopeText::One(t) => vec![t],
                ScopeText::ByLanguage(by) => by.values().collect(),
            };
            if texts.is_empty() || texts.iter().any(|t| t.trim().is_empty()) {
                out.push(format!(
                    "scope_descriptions: `{scope}` has an empty description"
                ));
            } else if matches!(text, ScopeText::ByLanguage(by) if !by.contains_key("en")) {
                out.push(format!(
                    "scope_descriptions: `{scope}` needs an `en` text (the fallback)"
                ));
            }
        }
        out
    }
}

/// A scope's description: one text, or one per language (`{ en: Read your calendar, fr: ... }`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ScopeText {
    One(String),
    ByLanguage(BTreeMap<String, String>),
}

impl ScopeText {
    /// The text for language `lang` (a primary subtag: `fr`), else English.
    pub fn get(&self, lang: &str) -> &str {
        match self {
            ScopeText::One(t) => t,
            ScopeText::ByLanguage(by) => by
                .get(lang)
                .or_else(|| by.get("en"))
                .map_or("", String::as_str),
        }
    }
}

/// How the integration does OAuth. Client id and secret come from the deployment config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSpec {
    #[serde(default)]
    pub authorize_url: Option<String>,
    /// May use `{metadata.KEY}` placeholders, like `base_url`.
    pub token_url: String,
    /// Where refresh-token grants go when the provider has a second endpoint for them (Figma:
    /// `https://api.figma.com/v1/oauth/refresh`); default `token_url`.
    #[serde(default)]
    pub refresh_url: Option<String>,
    /// RFC 7009 token revocation endpoint: a deleted connection's token is revoked there first.
    #[serde(default)]
    pub revocation_url: Option<String>,
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Extra form parameters for token requests.
    #[serde(default)]
    pub token_params: BTreeMap<String, String>,
    /// Extra query parameters for the authorization URL (`access_type: offline`, ...).
    #[serde(default)]
    pub authorize_params: BTreeMap<String, String>,
    /// Scopes always asked for, whatever the app asks (`offline_access` for a refresh token).
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// How scopes are joined in the authorization URL (Slack: `,`).
    #[serde(default = "default_scope_separator")]
    pub scope_separator: String,
    /// Send a PKCE S256 challenge (RFC 7636). Providers that do not know PKCE ignore it.
    #[serde(default = "default_true")]
    pub pkce: bool,
    #[serde(default)]
    pub inject: Inject,
    /// Token-answer fields kept as connection metadata, for `{metadata.KEY}` templates
    /// (Salesforce: `[instance_url]`). Nothing else from a token answer is kept.
    #[serde(default)]
    pub token_metadata: Vec<String>,
}

fn default_scope_separator() -> String {
    " ".into()
}

fn default_true() -> bool {
    true
}

/// RFC 6749 §2.3.1: `basic` (form-urlencoded id and secret inside HTTP Basic) or `body`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    Basic,
    #[default]
    Body,
}

impl ClientAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::Basic => "basic",
            ClientAuth::Body => "body",
        }
    }
}

/// Where the access token goes: a header with a format, or a query parameter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inject {
    #[serde(default = "default_inject_header")]
    pub header: String,
    #[serde(default = "default_inject_format")]
    pub format: String,
    #[serde(default)]
    pub query: Option<String>,
}

impl Default for Inject {
    fn default() -> Self {
        Inject {
            header: default_inject_header(),
            format: default_inject_format(),
            query: None,
        }
    }
}

fn default_inject_header() -> String {
    "authorization".into()
}
fn default_inject_format() -> String {
    "Bearer {access_token}".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleSpec {
    pub(super) name: String,
    #[serde(default)]
    pub(super) on: Endpoint,
    #[serde(rename = "match", default)]
    pub(super) matcher: MatchSpec,
    pub(super) expr: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MatchSpec {
    #[serde(default)]
    pub(super) status: Vec<StatusSpec>,
    #[serde(default)]
    pub(super) content_type: Option<String>,
    #[serde(default)]
    pub(super) path_prefix: Option<String>,
    /// The path contains this (e.g. `graphql`: `/graphql`, `/admin/api/2024-10/graphql.json`).
    #[serde(default)]
    pub(super) path_contains: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum StatusSpec {
    Code(u16),
    Class(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TestSpec {
    pub(super) name: String,
    #[serde(default)]
    pub(super) on: Endpoint,
    /// Catalog id the case was taken from, e.g. `slack-04`.
    #[serde(default)]
    pub(super) source: Option<String>,
    #[serde(default)]
    pub(super) request: Option<RequestSpec>,
    pub(super) response: CapturedResponse,
    pub(super) expect: Expect,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    #[serde(default = "default_method")]
    pub method: String,
    #[serde(default = "default_path")]
    pub path: String,
}

pub(super) fn default_method() -> String {
    "GET".into()
}
pub(super) fn default_path() -> String {
    "/".into()
}

/// A captured provider response, as written in `tests:` and read by `grantd rules eval`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapturedResponse {
    pub status: u16,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A JSON value, or a string holding the raw body text; absent means empty.
    #[serde(default)]
    pub body: serde_json::Value,
}

impl CapturedResponse {
    /// The body bytes as the provider sent them: a string is the raw text, anything else
    /// is serialized JSON.
    pub fn body_bytes(&self) -> Vec<u8> {
        match &self.body {
            serde_json::Value::Null => Vec::new(),
            serde_json::Value::String(s) => s.clone().into_bytes(),
            other => other.to_string().into_bytes(),
        }
    }

    /// Headers as rules see them (lower-case). A test without `content-type` gets the one
    /// its body implies, so catalog payloads can be pasted without their headers.
    pub fn rule_headers(&self) -> Vec<(String, String)> {
        let mut headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        if !headers.iter().any(|(k, _)| k == "content-type") {
            let implied = match &self.body {
                serde_json::Value::Null => None,
                serde_json::Value::String(_) => Some("text/plain"),
                _ => Some("application/json"),
            };
            if let Some(ct) = implied {
                headers.push(("content-type".into(), ct.into()));
            }
        }
        headers
    }
}

/// What a test expects; every field given must match.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    #[serde(default)]
    pub unchanged: bool,
    pub rule: Option<String>,
    pub status: Option<u16>,
    pub action: Option<super::Action>,
    pub error: Option<String>,
    pub detail: Option<String>,
    pub retry_after: Option<u64>,
}

/// One test case from a rule file, ready to run.
#[derive(Debug, Clone)]
pub struct TestCase {
    pub name: String,
    pub line: usize,
    pub on: Endpoint,
    pub source: Option<String>,
    pub request: RequestSpec,
    pub response: CapturedResponse,
    pub expect: Expect,
}

/// Keys a reload applies; everything else in a rule file feeds the refresher, the connect flow
/// and the admin API, which are built once at startup.
const RELOADABLE: &[&str] = &["description", "tests", "ratelimit"];

/// The file without what a reload may change: its `api` rules (`on: token` rules stay: the
/// refresher classifies token responses with the set it started with) and [`RELOADABLE`] keys.
pub(super) fn restart_only(text: &str) -> serde_yaml_ng::Value {
    use serde_yaml_ng::Value;
    // `text` already parsed as a rule file, so it parses as YAML.
    let mut value: Value = serde_yaml_ng::from_str(text).unwrap_or(Value::Null);
    if let Some(map) = value.as_mapping_mut() {
        for key in RELOADABLE {
            map.remove(*key);
        }
        if let Some(Value::Sequence(rules)) = map.get_mut("rules") {
            rules.retain(|r| r.get("on").and_then(Value::as_str) == Some("token"));
        }
        // No token rules and no `rules:` key are the same thing.
        if map
            .get("rules")
            .is_some_and(|r| r.as_sequence().is_some_and(Vec::is_empty))
        {
            map.remove("rules");
        }
    }
    value
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_shipped_rule_file_names_its_provider_for_people() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        let sets = super::super::load_dir(&dir).expect("shipped rules load");
        assert!(sets.len() >= 54, "{}", sets.len());
        // `_base.yaml` holds shared rules, not a provider.
        for (id, set) in sets.iter().filter(|(id, _)| *id != "_base") {
            assert_ne!(set.display_name, *id, "rules/{id}.yaml has no display_name");
        }
        assert_eq!(sets["google"].display_name, "Google Workspace");
        assert_eq!(sets["microsoft"].display_name, "Microsoft 365");
    }

    #[test]
    fn a_blank_display_name_or_scope_description_is_refused_with_its_file() {
        let text = "integration: x\ndisplay_name: \" \"\nbase_url: https://x.example\nscope_descriptions: { read: \"\" }\n";
        let errors = super::super::file::parse("rules/x.yaml", text, Some("x")).unwrap_err();
        assert_eq!(
            errors,
            [
                "rules/x.yaml:1: display_name must be 1 to 60 characters",
                "rules/x.yaml:1: scope_descriptions: `read` has an empty description"
            ]
        );
        let ok = "integration: x\nbase_url: https://x.example\n";
        let set = super::super::file::parse("rules/x.yaml", ok, Some("x")).unwrap();
        assert_eq!(set.display_name, "x", "without one, the id");
        let text = "integration: x\nbase_url: https://x.example\nscope_descriptions:\n  a: Read\n  b: { en: Write, fr: Écrire }\n  c: { de: Löschen }\n  d: {}\n";
        let errors = super::super::file::parse("rules/x.yaml", text, Some("x")).unwrap_err();
        assert_eq!(
            errors,
            [
                "rules/x.yaml:1: scope_descriptions: `c` needs an `en` text (the fallback)",
                "rules/x.yaml:1: scope_descriptions: `d` has an empty description"
            ]
        );
        let fixed = text.replace("  c: { de: Löschen }\n  d: {}\n", "");
        let set = super::super::file::parse("rules/x.yaml", &fixed, Some("x")).unwrap();
        let d = &set.scope_descriptions;
        assert_eq!(
            (d["a"].get("fr"), d["b"].get("fr"), d["b"].get("ja")),
            ("Read", "Écrire", "Write")
        );
    }
}
