//! RFC 7523 JWT bearer assertions: grantd signs one per token request from a connection's
//! private key (Google service accounts with domain-wide delegation, Salesforce's JWT bearer
//! flow) and exchanges it at the token endpoint.
//!
//! Owns key loading (a PEM of the type the algorithm needs, proven by signing once) and the
//! claims. It must never put the key, or text from it, in an error or a log line.

use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;

pub use crate::rules::credentials::JwtAlgorithm as Algorithm;

fn jwt(alg: Algorithm) -> jsonwebtoken::Algorithm {
    match alg {
        Algorithm::RS256 => jsonwebtoken::Algorithm::RS256,
        Algorithm::ES256 => jsonwebtoken::Algorithm::ES256,
    }
}

/// The claims of one assertion (RFC 7523 §3): short-lived, for one audience.
#[derive(Debug, Clone, Serialize)]
pub struct Claims {
    pub iss: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    pub aud: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    pub iat: i64,
    pub exp: i64,
    /// Unique per assertion, so a provider that tracks them can refuse a replay.
    pub jti: String,
}

/// A loaded private key, ready to sign.
pub struct Signer {
    key: EncodingKey,
    header: Header,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({:?}, key hidden)", self.header.alg)
    }
}

impl Signer {
    /// Loads `pem` for `alg`, and signs once to prove the key works: a malformed PEM or a key
    /// of the wrong type fails here, when the connection is stored, not at the first refresh.
    pub fn new(pem: &str, alg: Algorithm, key_id: Option<&str>) -> Result<Signer, String> {
        let what = match alg {
            Algorithm::RS256 => "an RSA",
            Algorithm::ES256 => "a P-256 EC",
        };
        let refused = || format!("private_key: not {what} private key in PEM form ({alg:?})");
        if !pem.trim_start().starts_with("-----BEGIN") {
            return Err(refused());
        }
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(pem.as_bytes()),
            Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
        }
        .map_err(|_| refused())?;
        let mut header = Header::new(jwt(alg));
        header.kid = key_id.map(str::to_string);
        let signer = Signer { key, header };
        let probe = Claims {
            iss: "probe".into(),
            sub: None,
            aud: "probe".into(),
            scope: None,
            iat: 0,
            exp: 1,
            jti: "probe".into(),
        };
        signer.sign(&probe).map_err(|_| refused())?;
        Ok(signer)
    }

    /// The compact JWS of `claims`.
    pub fn sign(&self, claims: &Claims) -> Result<String, String> {
        jsonwebtoken::encode(&self.header, claims, &self.key)
            .map_err(|e| format!("cannot sign the assertion: {}", e.kind_name()))
    }
}

/// The error kind's name only: jsonwebtoken's messages never carry key bytes, but grantd does
/// not rely on that.
trait KindName {
    fn kind_name(&self) -> &'static str;
}

impl KindName for jsonwebtoken::errors::Error {
    fn kind_name(&self) -> &'static str {
        use jsonwebtoken::errors::ErrorKind as K;
        match self.kind() {
            K::InvalidEcdsaKey => "invalid ECDSA key",
            K::InvalidRsaKey(_) => "invalid RSA key",
            K::InvalidKeyFormat => "invalid key format",
            K::Json(_) => "claims are not JSON",
            _ => "signing failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA: &str = include_str!("../../tests/keys/rsa.pem");
    const EC: &str = include_str!("../../tests/keys/ec.pem");

    #[test]
    fn keys_load_only_for_their_algorithm_and_errors_never_show_the_key() {
        assert!(Signer::new(RSA, Algorithm::RS256, None).is_ok());
        assert!(Signer::new(EC, Algorithm::ES256, Some("k1")).is_ok());
        for (pem, alg) in [
            (EC, Algorithm::RS256),
            (RSA, Algorithm::ES256),
            ("not a key", Algorithm::RS256),
            (
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                Algorithm::ES256,
            ),
        ] {
            let e = Signer::new(pem, alg, None).unwrap_err();
            assert!(e.starts_with("private_key: not "), "{e}");
            assert!(!e.contains("MII") && !e.contains("AAAA"), "{e}");
        }
    }
}
