//! Standard Webhooks signatures: `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")),
//! where the key is the base64 after `whsec_`. Several secrets sign at once (rotation): their
//! signatures are space-separated and a receiver accepts any.

use base64::Engine as _;
use ring::hmac;

/// A parsed `whsec_...` secret. `Debug` never shows it.
#[derive(Clone)]
pub struct SigningKey(hmac::Key);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("whsec_***")
    }
}

impl SigningKey {
    pub fn parse(s: &str) -> Result<SigningKey, String> {
        let b64 = s
            .trim()
            .strip_prefix("whsec_")
            .ok_or("a callback secret starts with whsec_")?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| "a callback secret is whsec_ followed by base64".to_string())?;
        if key.len() < 16 {
            return Err("a callback secret needs at least 16 bytes of key".into());
        }
        Ok(SigningKey(hmac::Key::new(hmac::HMAC_SHA256, &key)))
    }
}

/// The `webhook-signature` header value.
pub fn signature(secrets: &[SigningKey], id: &str, timestamp: i64, body: &str) -> String {
    let content = format!("{id}.{timestamp}.{body}");
    secrets
        .iter()
        .map(|s| {
            format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD
                    .encode(hmac::sign(&s.0, content.as_bytes()))
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from the Standard Webhooks specification's reference tests.
    #[test]
    fn matches_the_reference_signature() {
        let secret = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = signature(
            &[secret],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn bad_secrets_are_refused_and_never_printed() {
        assert!(SigningKey::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(SigningKey::parse("whsec_!!!").is_err());
        let s = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(format!("{s:?}"), "whsec_***");
    }
}
