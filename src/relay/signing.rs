//! Standard Webhooks signatures: HMAC-SHA256 over `{id}.{timestamp}.{body}`, keyed
//! with the base64 bytes after `whsec_`, sent as `v1,<base64>`; several space-separated
//! when a secret is being rotated. Verification compares in constant time.

use axum::http::HeaderName;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

const PREFIX: &str = "whsec_";

/// The Standard Webhooks headers: the message id, its Unix time in seconds, and the
/// signatures.
pub const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
pub const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
pub const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// A decoded Standard Webhooks secret, kept as an HMAC already keyed with it (each
/// signature starts from a copy instead of hashing the key again).
#[derive(Clone)]
pub struct SigningKey(HmacSha256);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(redacted)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error(
        "a secret must start with `whsec_` followed by base64 (generate one with `waas secret`)"
    )]
    Prefix,
    #[error("the part after `whsec_` is not valid base64")]
    Base64,
    #[error("the secret must decode to between 24 and 64 bytes, this one has {0}")]
    Length(usize),
}

impl SigningKey {
    pub fn parse(secret: &str) -> Result<SigningKey, KeyError> {
        let encoded = secret.strip_prefix(PREFIX).ok_or(KeyError::Prefix)?;
        let bytes = STANDARD.decode(encoded).map_err(|_| KeyError::Base64)?;
        // The spec asks for 24–64 bytes; the spec's own example vector is 24.
        if !(24..=64).contains(&bytes.len()) {
            return Err(KeyError::Length(bytes.len()));
        }
        // HMAC accepts keys of any length, so this cannot fail.
        let mac = HmacSha256::new_from_slice(&bytes).map_err(|_| KeyError::Length(bytes.len()))?;
        Ok(SigningKey(mac))
    }

    /// The `v1,<base64>` signature of one message.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut out = String::with_capacity(47);
        self.sign_into(&mut out, msg_id, timestamp, body);
        out
    }

    fn sign_into(&self, out: &mut String, msg_id: &str, timestamp: i64, body: &[u8]) {
        out.push_str("v1,");
        STANDARD.encode_string(self.mac(msg_id, timestamp, body), out);
    }

    fn mac(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
        let mut mac = self.0.clone();
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }
}

/// The `webhook-signature` header value: one signature per key, space-separated.
pub fn signature_header(keys: &[SigningKey], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut out = String::with_capacity(48 * keys.len());
    for (i, key) in keys.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        key.sign_into(&mut out, msg_id, timestamp, body);
    }
    out
}

/// Why a signed request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("the webhook-id, webhook-timestamp and webhook-signature headers are required")]
    MissingHeaders,
    #[error("webhook-timestamp is not a Unix time in seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is more than 5 minutes away from the server's clock")]
    Stale,
    #[error("no signature in webhook-signature matches a configured signing secret")]
    NoMatch,
}

/// Checks a signed request against every accepted key, in constant time per comparison.
pub fn verify(
    keys: &[SigningKey],
    msg_id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now_secs: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    // abs_diff: a timestamp near i64::MIN must not overflow (found by fuzz/signature).
    if now_secs.abs_diff(ts) > tolerance_secs.unsigned_abs() {
        return Err(VerifyError::Stale);
    }
    let candidates: Vec<Vec<u8>> = signatures
        .split_whitespace()
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|b| STANDARD.decode(b).ok())
        .collect();
    for key in keys {
        let expected = key.mac(msg_id, ts, body);
        for candidate in &candidates {
            if bool::from(expected[..].ct_eq(candidate)) {
                return Ok(());
            }
        }
    }
    Err(VerifyError::NoMatch)
}

/// A fresh random secret in the `whsec_` format (32 bytes).
pub fn generate_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{PREFIX}{}", STANDARD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TS: i64 = 1649367553;
    const BODY: &str = r#"{"email":"test@example.com","username":"test_user"}"#;

    #[test]
    fn spec_example_vector() {
        let key = SigningKey::parse(SECRET).unwrap();
        assert_eq!(
            key.sign(ID, TS, BODY.as_bytes()),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn verify_accepts_any_matching_signature_and_refuses_the_rest() {
        let key = SigningKey::parse(SECRET).unwrap();
        let other = SigningKey::parse(&generate_secret()).unwrap();
        let header = signature_header(&[other.clone(), key.clone()], ID, TS, BODY.as_bytes());
        assert_eq!(header.split(' ').count(), 2);
        let ok = verify(
            std::slice::from_ref(&key),
            ID,
            "1649367553",
            &header,
            BODY.as_bytes(),
            TS + 299,
            300,
        );
        assert_eq!(ok, Ok(()));
        let stale = verify(
            std::slice::from_ref(&key),
            ID,
            "1649367553",
            &header,
            BODY.as_bytes(),
            TS + 301,
            300,
        );
        assert_eq!(stale, Err(VerifyError::Stale));
        let tampered = verify(
            std::slice::from_ref(&key),
            ID,
            "1649367553",
            &header,
            b"{}",
            TS,
            300,
        );
        assert_eq!(tampered, Err(VerifyError::NoMatch));
        let garbage = verify(
            &[key],
            ID,
            "1649367553",
            "v1,!!! v2,abc",
            BODY.as_bytes(),
            TS,
            300,
        );
        assert_eq!(garbage, Err(VerifyError::NoMatch));
    }

    #[test]
    fn secrets_are_checked() {
        assert_eq!(SigningKey::parse("abc").unwrap_err(), KeyError::Prefix);
        assert_eq!(
            SigningKey::parse("whsec_***").unwrap_err(),
            KeyError::Base64
        );
        assert_eq!(
            SigningKey::parse("whsec_AAAA").unwrap_err(),
            KeyError::Length(3)
        );
        assert!(SigningKey::parse(&generate_secret()).is_ok());
    }

    #[test]
    fn extreme_timestamps_are_stale_not_a_panic() {
        let key = SigningKey::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        for ts in [i64::MIN.to_string(), i64::MAX.to_string()] {
            assert!(matches!(
                verify(
                    std::slice::from_ref(&key),
                    "msg_1",
                    &ts,
                    "v1,abc",
                    b"{}",
                    1_700_000_000,
                    300
                ),
                Err(VerifyError::Stale)
            ));
        }
    }
}
