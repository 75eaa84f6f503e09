//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256
//! of "{id}.{timestamp}.{body}">`, one per secret (space-separated) while a
//! rotation lasts, secrets written `whsec_<base64 key>`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

const PREFIX: &str = "whsec_";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("a secret must look like whsec_<base64>")]
    NotWhsec,
    #[error("the secret's key is not valid base64")]
    NotBase64,
    #[error("the secret's key must be 24 to 64 bytes, is {0}")]
    Length(usize),
}

/// A signing key. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct SigningSecret(Vec<u8>);

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("whsec_***")
    }
}

impl SigningSecret {
    /// A fresh 32-byte key.
    pub fn generate() -> Self {
        Self(rand::random::<[u8; 32]>().to_vec())
    }

    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let key = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(SecretError::NotWhsec)?;
        let key = STANDARD.decode(key).map_err(|_| SecretError::NotBase64)?;
        if !(24..=64).contains(&key.len()) {
            return Err(SecretError::Length(key.len()));
        }
        Ok(Self(key))
    }

    /// The `whsec_...` form, to store and to show the endpoint's owner once.
    pub fn to_whsec(&self) -> String {
        format!("{PREFIX}{}", STANDARD.encode(&self.0))
    }

    fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` value: one `v1,...` per secret, space-separated.
pub fn signature_header(
    secrets: &[SigningSecret],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|secret| secret.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    // The test vector of the Standard Webhooks reference libraries.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_the_specification_test_vector() {
        let secret = SigningSecret::parse(SECRET).unwrap();
        assert_eq!(signature_header(&[secret], ID, TIMESTAMP, BODY), SIGNATURE);
    }

    #[test]
    fn a_rotation_signs_with_every_secret() {
        let old = SigningSecret::parse(SECRET).unwrap();
        let new = SigningSecret::generate();
        let header = signature_header(&[new.clone(), old], ID, TIMESTAMP, BODY);
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1], SIGNATURE);
        assert_eq!(parts[0], signature_header(&[new], ID, TIMESTAMP, BODY));
    }

    #[test]
    fn secrets_round_trip_and_bad_ones_are_named() {
        let secret = SigningSecret::generate();
        let text = secret.to_whsec();
        assert_eq!(SigningSecret::parse(&text).unwrap().to_whsec(), text);
        assert!(!format!("{secret:?}").contains(&text[6..]));
        assert_eq!(
            SigningSecret::parse("abc").unwrap_err(),
            SecretError::NotWhsec
        );
        assert_eq!(
            SigningSecret::parse("whsec_!!").unwrap_err(),
            SecretError::NotBase64
        );
        assert_eq!(
            SigningSecret::parse("whsec_AAAA").unwrap_err(),
            SecretError::Length(3)
        );
    }
}
