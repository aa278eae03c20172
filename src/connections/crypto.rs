//! Tokens at rest: AES-256-GCM with a random 96-bit nonce per seal. The associated data binds
//! each ciphertext to its connection and field, so a sealed token copied to another row or
//! column does not open. Keys are identified by a fingerprint stored with each row, so old keys
//! can stay readable while new writes use the active one.

use std::collections::HashMap;

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// The encryption key in `examples/grantd.yaml`: fine for trying grantd, never for real tokens.
pub const EXAMPLE_KEY: &str = "ZXhhbXBsZS1rZXktZG8tbm90LXVzZS1pbi1wcm9kISE=";

/// The encryption keys: one active (seals), any number readable (opens).
pub struct Keyring {
    active: String,
    keys: HashMap<String, LessSafeKey>,
    rng: SystemRandom,
    /// Keys credential fingerprints: derived from the active key, so a fingerprint cannot be
    /// checked against guessed passwords by anyone without it.
    fingerprints: ring::hmac::Key,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Keyring(active={}, {} keys)",
            self.active,
            self.keys.len()
        )
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CryptoError {
    #[error("sealed with key {0}, which is not configured (add it to encryption.previous_keys)")]
    UnknownKey(String),
    #[error("ciphertext does not open: wrong key, wrong row, or tampered")]
    Tampered,
}

impl Keyring {
    /// `active` and `previous` are base64 of 32 random bytes (`openssl rand -base64 32`).
    /// Errors say which key is wrong and how, never its value.
    pub fn new(active: &str, previous: &[String]) -> Result<Keyring, String> {
        let mut keys = HashMap::new();
        let (active_id, key) = parse_key(active).map_err(|e| format!("encryption.key: {e}"))?;
        keys.insert(active_id.clone(), key);
        let material = ring::digest::digest(
            &ring::digest::SHA256,
            format!("grantd credential fingerprints\0{}", active.trim()).as_bytes(),
        );
        let fingerprints = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, material.as_ref());
        for (i, k) in previous.iter().enumerate() {
            let (id, key) =
                parse_key(k).map_err(|e| format!("encryption.previous_keys[{i}]: {e}"))?;
            keys.entry(id).or_insert(key);
        }
        Ok(Keyring {
            active: active_id,
            keys,
            rng: SystemRandom::new(),
            fingerprints,
        })
    }

    /// A short, stable fingerprint of a secret (`fp-1a2b3c4d`): tells two credentials apart in
    /// the admin API without revealing either. Changes when the active key does.
    pub fn fingerprint(&self, secret: &[u8]) -> String {
        let tag = ring::hmac::sign(&self.fingerprints, secret);
        let hex: String = tag.as_ref()[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("fp-{hex}")
    }

    pub fn active_id(&self) -> &str {
        &self.active
    }

    /// nonce ‖ ciphertext ‖ tag, sealed with the active key.
    pub fn seal(&self, aad: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .expect("the OS random source works");
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + 16);
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        self.keys[&self.active]
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut body,
            )
            .expect("sealing a short buffer cannot fail");
        out.extend_from_slice(&body);
        out
    }

    pub fn open(&self, key_id: &str, aad: &str, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let key = self
            .keys
            .get(key_id)
            .ok_or_else(|| CryptoError::UnknownKey(key_id.to_string()))?;
        if sealed.len() < NONCE_LEN + 16 {
            return Err(CryptoError::Tampered);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Tampered)?;
        let mut body = body.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut body)
            .map_err(|_| CryptoError::Tampered)?;
        Ok(plain.to_vec())
    }
}

fn parse_key(b64: &str) -> Result<(String, LessSafeKey), String> {
    let b64 = b64.trim();
    if b64.is_empty() {
        return Err(
            "is empty; set it to 32 random bytes in base64 (openssl rand -base64 32)".into(),
        );
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| {
            "is not valid base64 (expected 32 random bytes in base64: openssl rand -base64 32)"
                .to_string()
        })?;
    if bytes.len() != 32 {
        return Err(format!(
            "decodes to {} bytes; AES-256 needs exactly 32",
            bytes.len()
        ));
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    let id: String = digest.as_ref()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let key = UnboundKey::new(&AES_256_GCM, &bytes)
        .map_err(|_| "is not a usable AES-256 key".to_string())?;
    Ok((format!("k-{id}"), LessSafeKey::new(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // "0123456789abcdef0123456789abcdef"
    const K2: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

    #[test]
    fn seals_and_opens_bound_to_row_and_field() {
        let ring = Keyring::new(K1, &[]).unwrap();
        let sealed = ring.seal("acct_1\0access_token", b"xoxb-secret");
        assert!(
            !sealed.windows(11).any(|w| w == b"xoxb-secret"),
            "no plaintext in the ciphertext"
        );
        assert_eq!(
            ring.open(ring.active_id(), "acct_1\0access_token", &sealed)
                .unwrap(),
            b"xoxb-secret"
        );
        assert_eq!(
            ring.open(ring.active_id(), "acct_2\0access_token", &sealed),
            Err(CryptoError::Tampered)
        );
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(
            ring.open(ring.active_id(), "acct_1\0access_token", &flipped),
            Err(CryptoError::Tampered)
        );
        assert_ne!(
            ring.seal("a", b"x"),
            ring.seal("a", b"x"),
            "fresh nonce every time"
        );
    }

    #[test]
    fn rotation_keeps_old_rows_readable() {
        let old = Keyring::new(K1, &[]).unwrap();
        let sealed = old.seal("a", b"token");
        let rotated = Keyring::new(K2, &[K1.to_string()]).unwrap();
        assert_ne!(rotated.active_id(), old.active_id());
        assert_eq!(
            rotated.open(old.active_id(), "a", &sealed).unwrap(),
            b"token"
        );
        let without = Keyring::new(K2, &[]).unwrap();
        assert!(matches!(
            without.open(old.active_id(), "a", &sealed),
            Err(CryptoError::UnknownKey(_))
        ));
    }

    #[test]
    fn bad_keys_are_refused_without_echoing_them() {
        for (key, needle) in [
            ("", "empty"),
            ("not base64!!", "base64"),
            ("c2hvcnQ=", "5 bytes"),
        ] {
            let e = Keyring::new(key, &[]).unwrap_err();
            assert!(e.contains("encryption.key") && e.contains(needle), "{e}");
            if !key.is_empty() {
                assert!(!e.contains(key), "the key leaked into: {e}");
            }
        }
        let e = Keyring::new(K1, &["nope".into()]).unwrap_err();
        assert!(e.contains("previous_keys[0]"), "{e}");
    }
}
