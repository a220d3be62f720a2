//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>): the headers
//! `webhook-id`, `webhook-timestamp` and `webhook-signature: v1,<base64>`, where the
//! signature is HMAC-SHA256 of `"{id}.{timestamp}.{body}"` keyed with the secret given as
//! `whsec_<base64>`. Used for `notify_url` deliveries and channel deliveries.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a receiver lets `webhook-timestamp` stray from its clock by default (seconds).
pub const DEFAULT_TOLERANCE_S: i64 = 300;

/// A signing secret, decoded from its `whsec_<base64>` form. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl Secret {
    /// Parses `whsec_<base64>` (the prefix is optional, as in the reference libraries).
    /// The error is the reason, for the caller to put after the setting's name.
    pub fn parse(s: &str) -> std::result::Result<Secret, &'static str> {
        let b64 = s.strip_prefix("whsec_").unwrap_or(s);
        let key = STANDARD.decode(b64).map_err(|_| {
            "must be \"whsec_\" followed by base64, e.g. whsec_ and the output of `openssl rand -base64 32`"
        })?;
        if key.len() < 16 {
            return Err("is too short: use at least 16 random bytes (24 base64 characters)");
        }
        Ok(Secret(key))
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length; this cannot fail.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
    }
}

/// The `webhook-signature` value for a message: `v1,<base64 HMAC-SHA256>`.
pub fn sign(secret: &Secret, msg_id: &str, timestamp_s: i64, body: &[u8]) -> String {
    let mut mac = secret.mac();
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The three headers of a signed message.
pub fn headers(
    secret: &Secret,
    msg_id: &str,
    timestamp_s: i64,
    body: &[u8],
) -> Vec<(String, String)> {
    vec![
        ("webhook-id".to_string(), msg_id.to_string()),
        ("webhook-timestamp".to_string(), timestamp_s.to_string()),
        (
            "webhook-signature".to_string(),
            sign(secret, msg_id, timestamp_s, body),
        ),
    ]
}

/// Why a message failed verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    /// `webhook-timestamp` is not a number.
    BadTimestamp,
    /// The timestamp is further than the tolerance from now (a replay, or a skewed clock).
    TooOld,
    /// No `v1,` signature in the header matches.
    NoMatch,
}

/// Checks a received message the way a receiver would: the timestamp within
/// `tolerance_s` of `now_s`, and one of the space-separated `v1,` signatures matching
/// (compared in constant time).
pub fn verify(
    secret: &Secret,
    msg_id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now_s: i64,
    tolerance_s: i64,
) -> std::result::Result<(), VerifyError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    if (now_s - ts).abs() > tolerance_s {
        return Err(VerifyError::TooOld);
    }
    let expected = sign(secret, msg_id, ts, body);
    let ok = signature_header
        .split_whitespace()
        .filter(|s| s.starts_with("v1,"))
        .any(|s| crate::api::request::constant_time_eq(s.as_bytes(), expected.as_bytes()));
    if ok {
        Ok(())
    } else {
        Err(VerifyError::NoMatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The reference vector of the Standard Webhooks specification and its libraries.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_the_reference_vector() {
        let s = Secret::parse(SECRET).unwrap();
        assert_eq!(sign(&s, ID, TS, BODY), SIG);
        let h = headers(&s, ID, TS, BODY);
        assert_eq!(h[2], ("webhook-signature".to_string(), SIG.to_string()));
    }

    #[test]
    fn verifies_and_refuses() {
        let s = Secret::parse(SECRET).unwrap();
        let ts = TS.to_string();
        assert_eq!(verify(&s, ID, &ts, SIG, BODY, TS + 10, 300), Ok(()));
        let several = format!("v1,bm90IGl0 {SIG}");
        assert_eq!(verify(&s, ID, &ts, &several, BODY, TS, 300), Ok(()));
        assert_eq!(
            verify(&s, ID, &ts, SIG, b"{\"test\": 1}", TS, 300),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(&s, "msg_other", &ts, SIG, BODY, TS, 300),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(&s, ID, &ts, SIG, BODY, TS + 301, 300),
            Err(VerifyError::TooOld)
        );
        assert_eq!(
            verify(&s, ID, "soon", SIG, BODY, TS, 300),
            Err(VerifyError::BadTimestamp)
        );
    }

    #[test]
    fn a_bad_secret_is_refused_and_never_printed() {
        assert!(Secret::parse("whsec_not base64!").is_err());
        assert!(Secret::parse("whsec_c2hvcnQ=").is_err());
        let s = Secret::parse(SECRET).unwrap();
        assert!(!format!("{s:?}").contains("MfKQ"));
    }
}
