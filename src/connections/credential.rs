//! Credential kinds: what a connection holds and how it is checked when it is stored.
//!
//! `oauth2` connections hold tokens (an authorization-code grant, refreshed with its refresh
//! token). The other kinds hold a long-lived secret, sealed like the tokens: an `api_key` or a
//! `basic` login is sent as stored; an `oauth2_client_credentials` client or a `jwt_bearer`
//! private key is what grantd mints access tokens from. Owns the kinds' names, which fields
//! each takes on `PUT`, and their validation; it must never echo a secret in an error.

use serde::{Deserialize, Serialize};

use super::assertion::Signer;
use super::Credentials;
use crate::rules::credentials::CredentialsSpec;
use crate::rules::RuleSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    #[default]
    Oauth2,
    ApiKey,
    Basic,
    Oauth2ClientCredentials,
    JwtBearer,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Oauth2,
        Kind::ApiKey,
        Kind::Basic,
        Kind::Oauth2ClientCredentials,
        Kind::JwtBearer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Oauth2 => "oauth2",
            Kind::ApiKey => "api_key",
            Kind::Basic => "basic",
            Kind::Oauth2ClientCredentials => "oauth2_client_credentials",
            Kind::JwtBearer => "jwt_bearer",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// grantd mints the access token itself (and renews it before expiry).
    pub fn minted(self) -> bool {
        crate::store::MINTED.contains(&self.as_str())
    }

    /// Sent as stored: there is nothing to refresh, and a rejection means a new one is needed.
    pub fn fixed(self) -> bool {
        matches!(self, Kind::ApiKey | Kind::Basic)
    }
}

/// A kind's long-lived secret, sealed as one JSON document in the row's `secret`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Held {
    ApiKey {
        api_key: String,
    },
    Basic {
        username: String,
        password: String,
    },
    ClientCredentials {
        client_id: Option<String>,
        client_secret: Option<String>,
    },
    JwtBearer {
        private_key: String,
        key_id: Option<String>,
        issuer: String,
        subject: Option<String>,
    },
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Held(***)")
    }
}

impl Held {
    /// The part a fingerprint is made of: the secret that tells two credentials apart.
    pub fn secret_part(&self) -> &str {
        match self {
            Held::ApiKey { api_key } => api_key,
            Held::Basic { password, .. } => password,
            Held::ClientCredentials {
                client_secret,
                client_id,
            } => client_secret
                .as_deref()
                .or(client_id.as_deref())
                .unwrap_or(""),
            Held::JwtBearer { private_key, .. } => private_key,
        }
    }
}

/// The credential kinds an integration accepts, from its rule file.
#[derive(Debug, Clone, Default)]
pub struct Accepts {
    /// OAuth tokens (imported, or from the connect flow): when the file has `auth:`, or
    /// declares no other kind (a plain route whose app imports bearer tokens).
    pub oauth2: bool,
    pub spec: CredentialsSpec,
}

impl Accepts {
    pub fn of(set: &RuleSet) -> Accepts {
        Accepts {
            oauth2: set.auth.is_some() || !declares_any(&set.credentials),
            spec: set.credentials.clone(),
        }
    }

    pub fn accepts(&self, kind: Kind) -> bool {
        match kind {
            Kind::Oauth2 => self.oauth2,
            Kind::ApiKey => self.spec.api_key.is_some(),
            Kind::Basic => self.spec.basic.is_some(),
            Kind::Oauth2ClientCredentials => self.spec.oauth2_client_credentials.is_some(),
            Kind::JwtBearer => self.spec.jwt_bearer.is_some(),
        }
    }

    /// `oauth2, api_key`, for errors and `grantd providers`.
    pub fn names(&self) -> String {
        let names: Vec<&str> = Kind::ALL
            .into_iter()
            .filter(|k| self.accepts(*k))
            .map(Kind::as_str)
            .collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }
}

fn declares_any(c: &CredentialsSpec) -> bool {
    c.api_key.is_some()
        || c.basic.is_some()
        || c.oauth2_client_credentials.is_some()
        || c.jwt_bearer.is_some()
}

/// Checks a `PUT`'s credentials for `kind` and returns the secret to seal (none for `oauth2`).
/// Errors name the field, never its value.
pub fn check(
    c: &Credentials,
    integration: &str,
    accepts: &Accepts,
) -> Result<Option<Held>, String> {
    let kind = c.kind.unwrap_or_default();
    if !accepts.accepts(kind) {
        return Err(format!(
            "credentials.kind: integration `{integration}` does not accept `{}` credentials (it accepts: {})",
            kind.as_str(),
            accepts.names()
        ));
    }
    let given = given_fields(c);
    let allowed: &[&str] = match kind {
        Kind::Oauth2 => &[
            "access_token",
            "refresh_token",
            "expires_in",
            "expires_at",
            "scopes",
        ],
        Kind::ApiKey => &["api_key"],
        Kind::Basic => &["username", "password"],
        Kind::Oauth2ClientCredentials => &["client_id", "client_secret", "scopes"],
        Kind::JwtBearer => &["private_key", "key_id", "issuer", "subject", "scopes"],
    };
    if let Some(extra) = given.iter().find(|f| !allowed.contains(f)) {
        return Err(format!(
            "credentials.{extra} does not belong to a `{}` connection",
            kind.as_str()
        ));
    }
    secret_for(kind, c, accepts)
}

/// The secret a `PUT` gives for `kind`, each field checked (fields already known to belong).
fn secret_for(kind: Kind, c: &Credentials, accepts: &Accepts) -> Result<Option<Held>, String> {
    let need = |name: &str, v: Option<&str>| -> Result<String, String> {
        let v =
            v.ok_or_else(|| format!("credentials.{name} is required for `{}`", kind.as_str()))?;
        header_safe(name, v)?;
        Ok(v.to_string())
    };
    let maybe = |name: &str, v: Option<&str>| -> Result<Option<String>, String> {
        v.map(|v| header_safe(name, v).map(|_| v.to_string()))
            .transpose()
    };
    Ok(Some(match kind {
        Kind::Oauth2 => return Ok(None),
        Kind::ApiKey => Held::ApiKey {
            api_key: need("api_key", c.api_key.as_ref().map(|s| s.expose()))?,
        },
        Kind::Basic => {
            let username = need("username", c.username.as_deref())?;
            if username.contains(':') {
                return Err("credentials.username cannot contain `:` (RFC 7617)".into());
            }
            let password = need("password", c.password.as_ref().map(|s| s.expose()))?;
            Held::Basic { username, password }
        }
        Kind::Oauth2ClientCredentials => Held::ClientCredentials {
            client_id: maybe("client_id", c.client_id.as_deref())?,
            client_secret: maybe(
                "client_secret",
                c.client_secret.as_ref().map(|s| s.expose()),
            )?,
        },
        Kind::JwtBearer => {
            let pem = c.private_key.as_ref().map(|s| s.expose());
            let pem = pem.ok_or("credentials.private_key is required for `jwt_bearer`")?;
            let alg = accepts
                .spec
                .jwt_bearer
                .as_ref()
                .map(|j| j.algorithm)
                .unwrap_or_default();
            let key_id = maybe("key_id", c.key_id.as_deref())?;
            Signer::new(pem, alg, key_id.as_deref()).map_err(|e| format!("credentials.{e}"))?;
            Held::JwtBearer {
                private_key: pem.to_string(),
                key_id,
                issuer: need("issuer", c.issuer.as_deref())?,
                subject: maybe("subject", c.subject.as_deref())?,
            }
        }
    }))
}

/// The credential fields a `PUT` gave, by name.
fn given_fields(c: &Credentials) -> Vec<&'static str> {
    [
        ("access_token", c.access_token.is_some()),
        ("refresh_token", c.refresh_token.is_some()),
        ("expires_in", c.expires_in.is_some()),
        ("expires_at", c.expires_at.is_some()),
        ("scopes", c.scopes.is_some()),
        ("api_key", c.api_key.is_some()),
        ("username", c.username.is_some()),
        ("password", c.password.is_some()),
        ("client_id", c.client_id.is_some()),
        ("client_secret", c.client_secret.is_some()),
        ("private_key", c.private_key.is_some()),
        ("key_id", c.key_id.is_some()),
        ("issuer", c.issuer.is_some()),
        ("subject", c.subject.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, given)| given.then_some(name))
    .collect()
}

/// A value that goes into a header or a form: visible ASCII and spaces only, never empty. A CR
/// or LF could split a header; other control or non-ASCII bytes do not survive every hop.
fn header_safe(name: &str, v: &str) -> Result<(), String> {
    if v.is_empty() || !v.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err(format!(
            "credentials.{name} must be non-empty visible ASCII (no control characters such as CR or LF)"
        ));
    }
    Ok(())
}

/// Metadata a credential implies: Mailchimp's data centre is the API key's suffix
/// (`...-us6` → `dc: us6`, per `credentials.api_key.suffix_metadata`).
pub fn derived_metadata(held: Option<&Held>, accepts: &Accepts) -> Option<(String, String)> {
    let key = accepts.spec.api_key.as_ref()?.suffix_metadata.as_ref()?;
    let Some(Held::ApiKey { api_key }) = held else {
        return None;
    };
    let (_, suffix) = api_key.rsplit_once('-')?;
    Some((key.clone(), suffix.to_string()))
}
