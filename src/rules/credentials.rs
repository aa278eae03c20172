//! A rule file's `credentials:` section: the kinds of credential an integration accepts besides
//! OAuth's authorization code (`auth:`), and how each is injected or minted.
//!
//! ```yaml
//! credentials:
//!   api_key: { header: Authorization, format: "Bearer {api_key}" }   # or { query: api_key },
//!                                                # or { basic: "anystring:{api_key}" }
//!   basic: { username: "{username}/token", password: "{password}" }  # Zendesk API tokens
//!   oauth2_client_credentials: { params: { scope: "https://graph.microsoft.com/.default" } }
//!   jwt_bearer: { algorithm: RS256, scope: "https://www.googleapis.com/auth/drive" }
//! ```
//!
//! Pure data and its load-time checks; sealing, injecting and minting are `grants`' and
//! `proxy`'s.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsSpec {
    #[serde(default)]
    pub api_key: Option<ApiKeySpec>,
    #[serde(default)]
    pub basic: Option<BasicSpec>,
    #[serde(default)]
    pub oauth2_client_credentials: Option<MintSpec>,
    #[serde(default)]
    pub jwt_bearer: Option<JwtBearerSpec>,
}

/// An API key, sent in a header (`format` with `{api_key}`) or as a query parameter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySpec {
    #[serde(default = "authorization")]
    pub header: String,
    #[serde(default = "bearer_key")]
    pub format: String,
    /// Send the key as this query parameter instead of a header.
    #[serde(default)]
    pub query: Option<String>,
    /// Send the key in HTTP Basic instead, as this `user:password` template (Mailchimp:
    /// `"anystring:{api_key}"`, Freshdesk: `"{api_key}:X"`).
    #[serde(default)]
    pub basic: Option<String>,
    /// The part of the key after its last `-` becomes this metadata key (Mailchimp's data
    /// centre: `...-us6` → `dc: us6`), so a templated `base_url` can use it.
    #[serde(default)]
    pub suffix_metadata: Option<String>,
}

/// HTTP Basic: the user name and password sent, made from the stored `{username}` and
/// `{password}` (Zendesk: `username: "{username}/token"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicSpec {
    #[serde(default = "username")]
    pub username: String,
    #[serde(default = "password")]
    pub password: String,
}

/// The client-credentials grant: grantd mints the token at `auth.token_url`, or at its own
/// `token_url` (Microsoft: a tenant's endpoint, `.../{metadata.tenant}/oauth2/v2.0/token`,
/// where the authorization-code flow uses `common`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintSpec {
    #[serde(default)]
    pub token_url: Option<String>,
    /// Form parameters of the token request (`scope`, `audience`, `resource`, ...).
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

/// RFC 7523: grantd signs an assertion with the connection's private key and exchanges it at
/// `auth.token_url`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtBearerSpec {
    #[serde(default)]
    pub algorithm: JwtAlgorithm,
    /// The assertion's `aud`; default the token URL.
    #[serde(default)]
    pub audience: Option<String>,
    /// A `scope` claim (Google) when set.
    #[serde(default)]
    pub scope: Option<String>,
    /// Seconds the assertion is valid for (at most 3600, RFC 7523 asks for short ones).
    #[serde(default = "hour")]
    pub lifetime: i64,
    /// Extra form parameters of the token request.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

impl Default for JwtBearerSpec {
    fn default() -> Self {
        JwtBearerSpec {
            algorithm: JwtAlgorithm::default(),
            audience: None,
            scope: None,
            lifetime: hour(),
            params: BTreeMap::new(),
        }
    }
}

/// The signing algorithms grantd supports (what Google, Salesforce and most providers take).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
pub enum JwtAlgorithm {
    #[default]
    RS256,
    ES256,
}

fn authorization() -> String {
    "Authorization".into()
}
fn bearer_key() -> String {
    "Bearer {api_key}".into()
}
fn username() -> String {
    "{username}".into()
}
fn password() -> String {
    "{password}".into()
}
fn hour() -> i64 {
    3600
}

impl CredentialsSpec {
    /// What is wrong with the section, as `credentials.*: problem` lines. `has_token_url`:
    /// whether the file's `auth:` gives a token endpoint (the minted kinds need one).
    pub fn problems(&self, has_token_url: bool) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(k) = &self.api_key {
            if let Some(b) = &k.basic {
                if !b.contains("{api_key}") || !b.contains(':') {
                    out.push(
                        "credentials.api_key.basic must be \"user:password\" using {api_key}"
                            .into(),
                    );
                }
            } else if k.query.is_none() {
                if !k.format.contains("{api_key}") {
                    out.push("credentials.api_key.format must contain {api_key}".into());
                }
                if http::HeaderName::from_bytes(k.header.as_bytes()).is_err() {
                    out.push(format!(
                        "credentials.api_key.header `{}` is not a header name",
                        k.header
                    ));
                }
            }
        }
        if let Some(b) = &self.basic {
            if !b.username.contains("{username}") && !b.password.contains("{password}") {
                out.push(
                    "credentials.basic: username or password must use {username} or {password}"
                        .into(),
                );
            }
        }
        let minted = self.oauth2_client_credentials.is_some() || self.jwt_bearer.is_some();
        if minted && !has_token_url {
            out.push(
                "credentials: oauth2_client_credentials and jwt_bearer need auth.token_url".into(),
            );
        }
        if let Some(j) = &self.jwt_bearer {
            if !(1..=3600).contains(&j.lifetime) {
                out.push("credentials.jwt_bearer.lifetime must be 1 to 3600 seconds".into());
            }
        }
        out
    }
}
