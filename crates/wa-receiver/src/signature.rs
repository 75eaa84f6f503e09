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

#[derive(Clone)]
pub struct SignatureVerifier {
    /// One HMAC per secret with its key already absorbed: each body starts
    /// from a copy instead of hashing the key again.
    keyed: Vec<Hmac<Sha256>>,
}

impl std::fmt::Debug for SignatureVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignatureVerifier")
            .field("secrets", &self.keyed.len())
            .finish()
    }
}

impl SignatureVerifier {
    /// `secrets` is never empty: configuration validation sees to it.
    pub fn new(secrets: Vec<SecretString>) -> Self {
        let keyed = secrets
            .iter()
            .map(|secret| {
                Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
                    .expect("HMAC accepts keys of any length")
            })
            .collect();
        Self { keyed }
    }

    /// Checks `header` against the whole of `body` at once.
    pub fn verify(&self, header: Option<&[u8]>, body: &[u8]) -> Result<(), SignatureError> {
        let mut check = self.start(header)?;
        check.update(body);
        check.finish()
    }

    /// Parses the header and starts one HMAC per secret, to be fed the body
    /// while it arrives ([`BodySignature::update`]). A missing or malformed
    /// header fails here, before any byte of the body is read.
    pub fn start(&self, header: Option<&[u8]>) -> Result<BodySignature, SignatureError> {
        let expected = parse_signature_header(header)?;
        Ok(BodySignature {
            macs: self.keyed.clone(),
            expected,
        })
    }
}

/// Length of an HMAC-SHA256 digest.
const DIGEST_LEN: usize = 32;

/// The digest in `sha256=<64 hex digits>` (surrounding whitespace allowed,
/// hex digits in either case).
pub fn parse_signature_header(header: Option<&[u8]>) -> Result<[u8; DIGEST_LEN], SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let hex_digest = header
        .trim_ascii()
        .strip_prefix(b"sha256=")
        .ok_or(SignatureError::Malformed)?;
    let mut digest = [0u8; DIGEST_LEN];
    hex::decode_to_slice(hex_digest.trim_ascii(), &mut digest)
        .map_err(|_| SignatureError::Malformed)?;
    Ok(digest)
}

/// The signature check of one body in progress.
pub struct BodySignature {
    macs: Vec<Hmac<Sha256>>,
    expected: [u8; DIGEST_LEN],
}

impl BodySignature {
    pub fn update(&mut self, chunk: &[u8]) {
        for mac in &mut self.macs {
            mac.update(chunk);
        }
    }

    /// Whether the bytes fed match the header under any secret (constant time).
    pub fn finish(self) -> Result<(), SignatureError> {
        let expected = self.expected;
        let matches = self
            .macs
            .into_iter()
            .fold(false, |any, mac| mac.verify_slice(&expected).is_ok() | any);
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
    fn fed_in_pieces_is_the_same_as_at_once() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1"}]}"#;
        let v = verifier(&["old", "new"]);
        let header = sign("new", body);
        for split in [0, 1, 17, body.len()] {
            let mut check = v.start(Some(header.as_bytes())).unwrap();
            check.update(&body[..split]);
            check.update(&body[split..]);
            assert_eq!(check.finish(), Ok(()), "split at {split}");
        }
        let mut short = v.start(Some(header.as_bytes())).unwrap();
        short.update(&body[1..]);
        assert_eq!(short.finish(), Err(SignatureError::Mismatch));
    }

    #[test]
    fn header_spelling() {
        let digest = "ab".repeat(32);
        assert!(parse_signature_header(Some(format!(" sha256={digest} ").as_bytes())).is_ok());
        assert!(
            parse_signature_header(Some(format!("sha256={}", digest.to_uppercase()).as_bytes()))
                .is_ok()
        );
        for bad in [
            format!("sha256={}", &digest[1..]),
            format!("sha256={digest}00"),
            format!("SHA256={digest}"),
            format!("sha1={digest}"),
            "sha256=".to_owned(),
        ] {
            assert_eq!(
                parse_signature_header(Some(bad.as_bytes())),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
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
