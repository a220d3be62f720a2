//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "id.timestamp.body">`, with the secret given as `whsec_<base64>`.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};

/// Decodes a `whsec_<base64>` secret into its key bytes.
pub fn parse_secret(field: &str, secret: &str) -> Result<Vec<u8>> {
    let b64 = secret.strip_prefix("whsec_").ok_or_else(|| {
        Error::invalid(
            field,
            "must look like whsec_<base64>, e.g. whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )
    })?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| Error::invalid(field, "the part after whsec_ is not valid base64"))?;
    if key.len() < 16 {
        return Err(Error::invalid(field, "the key must be at least 16 bytes"));
    }
    Ok(key)
}

/// The `webhook-signature` value for one delivery attempt.
pub fn sign(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so new_from_slice cannot fail here.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!("v1,{sig}")
}

/// Checks a `webhook-signature` header (which may list several space-separated
/// signatures) against the expected one.
pub fn verify(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let want = sign(key, msg_id, timestamp, body);
    header
        .split_whitespace()
        .any(|s| crate::api::request::constant_time_eq(s.as_bytes(), want.as_bytes()))
}

/// A new random `whsec_` secret.
pub fn new_secret() -> String {
    let t = crate::rand::token();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(t.as_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_webhooks_reference_vector() {
        let key = parse_secret("secret", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(verify(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            body,
            &format!("v1,bogus {sig}")
        ));
        assert!(!verify(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_331,
            body,
            &sig
        ));
    }

    #[test]
    fn bad_secrets_are_named() {
        assert!(parse_secret("secret", "nope")
            .unwrap_err()
            .to_string()
            .starts_with("secret:"));
        assert!(parse_secret("secret", "whsec_!!!").is_err());
        assert!(parse_secret("secret", &new_secret()).is_ok());
    }
}
