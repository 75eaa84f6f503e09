//! `X-Hub-Signature-256` verification: HMAC-SHA256 of the raw body under the
//! app secret, compared in constant time. Several secrets may be configured so
//! that a secret can be rotated without rejecting traffic.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use wa_core::SecretString;

pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("missing X-Hub-Signature-256 header")]
    Missing,
    #[error("malformed X-Hub-Signature-256 header")]
    Malformed,
    #[error("signature does not match any configured app secret")]
    Mismatch,
}

#[derive(Debug, Clone)]
pub struct SignatureVerifier {
    secrets: Vec<SecretString>,
}

impl SignatureVerifier {
    /// `secrets` is never empty: configuration validation sees to it.
    pub fn new(secrets: Vec<SecretString>) -> Self {
        Self { secrets }
    }

    pub fn verify(&self, header: Option<&[u8]>, body: &[u8]) -> Result<(), SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let hex_digest = header
            .strip_prefix(b"sha256=")
            .ok_or(SignatureError::Malformed)?;
        let expected =
            hex::decode(hex_digest.trim_ascii()).map_err(|_| SignatureError::Malformed)?;
        let matches = self.secrets.iter().any(|secret| {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
                .expect("HMAC accepts keys of any length");
            mac.update(body);
            mac.verify_slice(&expected).is_ok()
        });
        if matches {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

/// The header value Meta would send for `body` signed with `secret`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(secrets: &[&str]) -> SignatureVerifier {
        SignatureVerifier::new(secrets.iter().map(|s| SecretString::new(*s)).collect())
    }

    #[test]
    fn accepts_any_configured_secret() {
        let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
        let v = verifier(&["old", "new"]);
        assert_eq!(v.verify(Some(sign("old", body).as_bytes()), body), Ok(()));
        assert_eq!(v.verify(Some(sign("new", body).as_bytes()), body), Ok(()));
    }

    #[test]
    fn rejects_what_does_not_match() {
        let body = b"{}";
        let v = verifier(&["secret"]);
        assert_eq!(v.verify(None, body), Err(SignatureError::Missing));
        assert_eq!(
            v.verify(Some(b"md5=00"), body),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            v.verify(Some(b"sha256=zz"), body),
            Err(SignatureError::Malformed)
        );
        let other = sign("other", body);
        assert_eq!(
            v.verify(Some(other.as_bytes()), body),
            Err(SignatureError::Mismatch)
        );
        let tampered = sign("secret", b"{ }");
        assert_eq!(
            v.verify(Some(tampered.as_bytes()), body),
            Err(SignatureError::Mismatch)
        );
    }
}
