//! Connect links (`{public_url}/connect/{token}`): self-contained tokens sealed with the
//! encryption key (AES-256-GCM, so they are both secret and tamper-evident), carrying the
//! connect request and an expiry. Making one writes nothing, so the callback worker makes each
//! `authentication_error`'s `reconnect_url` as it sends it (a link is a bearer credential and is
//! never stored); using one is recorded in the store (single use).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::ConnectRequest;
use crate::callbacks::body::ReconnectLinks;
use crate::config::ConnectConfig;
use crate::connections::crypto::Keyring;

const AAD: &str = "grantd-connect-link";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub struct Links {
    keys: Arc<Keyring>,
    /// `{public_url}/connect/`
    base: String,
    ttl: Duration,
    /// Where reconnect links send the user afterwards.
    reconnect_return_to: Option<String>,
}

/// What a link carries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LinkClaims {
    #[serde(flatten)]
    pub request: ConnectRequest,
    /// Unix milliseconds.
    pub expires_at: i64,
}

#[derive(Debug, PartialEq)]
pub enum LinkError {
    /// Not a token this deployment made (altered, truncated, or another key).
    Invalid,
    Expired(i64),
}

impl Links {
    pub fn new(keys: Arc<Keyring>, config: &ConnectConfig) -> Option<Links> {
        let public_url = config.public_url.as_ref()?;
        config.listen?;
        Some(Links {
            keys,
            base: format!("{}/connect/", public_url.trim_end_matches('/')),
            ttl: config.link_ttl,
            reconnect_return_to: config.reconnect_return_to.clone(),
        })
    }

    /// The link's URL and its expiry (unix ms).
    pub fn make(&self, request: &ConnectRequest, now: i64) -> (String, i64) {
        let expires_at = now + self.ttl.as_millis() as i64;
        let claims = LinkClaims {
            request: request.clone(),
            expires_at,
        };
        let json = serde_json::to_vec(&claims).expect("claims serialize");
        let sealed = self.keys.seal(AAD, &json);
        let token = format!("{}.{}", self.keys.active_id(), B64.encode(sealed));
        (format!("{}{token}", self.base), expires_at)
    }

    pub fn open(&self, token: &str, now: i64) -> Result<LinkClaims, LinkError> {
        let (key_id, sealed) = token.split_once('.').ok_or(LinkError::Invalid)?;
        let sealed = B64.decode(sealed).map_err(|_| LinkError::Invalid)?;
        let json = self
            .keys
            .open(key_id, AAD, &sealed)
            .map_err(|_| LinkError::Invalid)?;
        let claims: LinkClaims = serde_json::from_slice(&json).map_err(|_| LinkError::Invalid)?;
        if claims.expires_at <= now {
            return Err(LinkError::Expired(claims.expires_at));
        }
        Ok(claims)
    }
}

impl ReconnectLinks for Links {
    fn reconnect_url(&self, connection_id: &str, integration: &str, now: i64) -> String {
        let request = ConnectRequest {
            integration: integration.to_string(),
            connection_id: Some(connection_id.to_string()),
            return_to: self.reconnect_return_to.clone(),
            ..ConnectRequest::default()
        };
        self.make(&request, now).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(ttl: u64) -> ConnectConfig {
        ConnectConfig {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            public_url: Some("https://c.example/".into()),
            link_ttl: std::time::Duration::from_secs(ttl),
            ..ConnectConfig::default()
        }
    }

    fn links(ttl: u64) -> Links {
        let keys = Keyring::new(crate::connections::crypto::EXAMPLE_KEY, &[]).unwrap();
        Links::new(Arc::new(keys), &config(ttl)).unwrap()
    }

    fn token(url: &str) -> &str {
        url.strip_prefix("https://c.example/connect/").unwrap()
    }

    #[test]
    fn a_link_opens_to_what_it_was_made_with_until_it_expires() {
        let l = links(60);
        let req = ConnectRequest {
            integration: "google".into(),
            connection_id: Some("c1".into()),
            login_hint: Some("a@b.c".into()),
            return_to: Some("https://app.example/x".into()),
            scopes: Some(vec!["email".into()]),
        };
        let (url, exp) = l.make(&req, 1_000);
        assert_eq!(exp, 61_000);
        let claims = l.open(token(&url), 2_000).unwrap();
        assert_eq!(claims.request, req);
        assert_eq!(l.open(token(&url), 61_000), Err(LinkError::Expired(61_000)));
        assert!(
            !url.contains("a@b.c"),
            "the login hint is sealed, not readable"
        );
    }

    #[test]
    fn an_altered_or_foreign_link_does_not_open() {
        let l = links(60);
        let (url, _) = l.make(&ConnectRequest::default(), 0);
        let t = token(&url);
        let mut altered = t.to_string();
        let last = altered.pop().unwrap();
        altered.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(l.open(&altered, 1), Err(LinkError::Invalid));
        assert_eq!(l.open("garbage", 1), Err(LinkError::Invalid));
        let other = Keyring::new("b3RoZXIta2V5LW90aGVyLWtleS1vdGhlci1rZXktMzI=", &[]).unwrap();
        let foreign = Links::new(Arc::new(other), &config(60)).unwrap();
        let (url, _) = foreign.make(&ConnectRequest::default(), 0);
        assert_eq!(l.open(token(&url), 1), Err(LinkError::Invalid));
    }
}
