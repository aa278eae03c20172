//! Caller authentication on the proxy port: which application is asking, and whether it may
//! use this integration and this connection.
//!
//! A caller presents a bearer token (`Proxy-Authorization: Bearer {token}`, or inside the
//! SDK form `Authorization: Bearer grantd:{connection}/{token}`). Only the token's SHA-256 is
//! configured, so neither the config nor the process holds a usable credential, and lookups
//! compare digests (their timing does not depend on the token's content). With no callers
//! configured the proxy is open: that is the sidecar on loopback, and `config` refuses it on
//! any other address unless the operator opts in.
//! It must not speak HTTP (`proxy` turns a [`CallerRefusal`] into a response) and must never
//! log or echo a presented token.

use std::collections::HashMap;

use base64::Engine as _;

use crate::config::CallerConfig;

/// The callers a proxy accepts, keyed by their token's SHA-256.
#[derive(Debug, Default)]
pub struct Callers {
    by_digest: HashMap<[u8; 32], Caller>,
}

#[derive(Debug)]
struct Caller {
    name: String,
    /// Empty: every integration.
    integrations: Vec<String>,
    /// Connection-id prefixes; empty: every connection.
    connections: Vec<String>,
}

/// Why a request is refused before anything is sent.
#[derive(Debug, PartialEq, Eq)]
pub enum CallerRefusal {
    /// No token, or one no caller has.
    Unauthenticated,
    /// A known caller asked for what it is not allowed.
    Forbidden { caller: String, what: String },
}

impl Callers {
    pub fn new(configs: &[CallerConfig]) -> Result<Callers, String> {
        let mut by_digest = HashMap::new();
        for (i, c) in configs.iter().enumerate() {
            let digest = parse_digest(&c.token_sha256)
                .ok_or_else(|| format!("callers[{i}] ({}): token_sha256 must be 64 hex digits (make one with: grantd caller-token)", c.name))?;
            let caller = Caller {
                name: c.name.clone(),
                integrations: c.integrations.clone(),
                connections: c.connections.clone(),
            };
            if by_digest.insert(digest, caller).is_some() {
                return Err(format!(
                    "callers[{i}] ({}): two callers share one token",
                    c.name
                ));
            }
        }
        Ok(Callers { by_digest })
    }

    /// True when no caller is configured: every request is let through.
    pub fn is_open(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// The caller's name if `token` may reach `integration` (and `connection`, if named).
    pub fn admit(
        &self,
        token: Option<&str>,
        integration: &str,
        connection: Option<&str>,
    ) -> Result<Option<&str>, CallerRefusal> {
        if self.is_open() {
            return Ok(None);
        }
        let caller = token
            .and_then(|t| self.by_digest.get(&sha256(t.as_bytes())))
            .ok_or(CallerRefusal::Unauthenticated)?;
        let forbidden = |what: String| CallerRefusal::Forbidden {
            caller: caller.name.clone(),
            what,
        };
        if !caller.integrations.is_empty() && !caller.integrations.iter().any(|i| i == integration)
        {
            return Err(forbidden(format!("integration `{integration}`")));
        }
        if let Some(id) = connection {
            if !caller.connections.is_empty()
                && !caller
                    .connections
                    .iter()
                    .any(|p| id.starts_with(p.as_str()))
            {
                return Err(forbidden(format!("connection `{id}`")));
            }
        }
        Ok(Some(&caller.name))
    }
}

/// A new caller token and the `token_sha256` to configure for it. Tokens are `gdc_` and 43
/// base64url characters: no `/` or `:`, so they fit the SDK form.
pub fn new_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the system random source works");
    let token = format!(
        "gdc_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let digest = sha256(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (token, digest)
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn callers() -> (Callers, String, String) {
        let (billing, billing_hash) = new_token();
        let (ops, ops_hash) = new_token();
        let configs = vec![
            CallerConfig {
                name: "billing".into(),
                token_sha256: billing_hash,
                integrations: vec!["slack".into()],
                connections: vec!["acme-".into()],
            },
            CallerConfig {
                name: "ops".into(),
                token_sha256: ops_hash.to_uppercase(),
                integrations: vec![],
                connections: vec![],
            },
        ];
        (Callers::new(&configs).unwrap(), billing, ops)
    }

    #[test]
    fn a_caller_reaches_only_its_integrations_and_connection_prefixes() {
        let (c, billing, ops) = callers();
        assert_eq!(
            c.admit(Some(&billing), "slack", Some("acme-1")),
            Ok(Some("billing"))
        );
        assert!(matches!(
            c.admit(Some(&billing), "github", Some("acme-1")),
            Err(CallerRefusal::Forbidden { .. })
        ));
        assert!(matches!(
            c.admit(Some(&billing), "slack", Some("globex-1")),
            Err(CallerRefusal::Forbidden { .. })
        ));
        assert_eq!(c.admit(Some(&billing), "slack", None), Ok(Some("billing")));
        assert_eq!(c.admit(Some(&ops), "github", Some("x")), Ok(Some("ops")));
        assert_eq!(
            c.admit(None, "slack", None),
            Err(CallerRefusal::Unauthenticated)
        );
        let wrong = format!("{billing}x");
        assert_eq!(
            c.admit(Some(&wrong), "slack", None),
            Err(CallerRefusal::Unauthenticated)
        );
    }

    #[test]
    fn without_callers_the_proxy_is_open_and_bad_digests_are_refused() {
        assert_eq!(Callers::default().admit(None, "slack", Some("x")), Ok(None));
        let bad = CallerConfig {
            name: "x".into(),
            token_sha256: "abc".into(),
            integrations: vec![],
            connections: vec![],
        };
        assert!(Callers::new(&[bad]).unwrap_err().contains("64 hex digits"));
        let (token, _) = new_token();
        assert!(token.starts_with("gdc_") && token.len() == 47, "{token}");
        assert!(!token.contains(['/', ':']));
    }
}
