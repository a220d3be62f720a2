//! Pure: an answer (or its absence) -> exactly one outcome category (SPEC §3.6).
//! Provider rules are tried first, then the retry-hint header, then the defaults.

use serde_json::Value;

use crate::config::{Provider, Rule};
use crate::http_call::{transport_outcome, Reply};
use crate::store::attempts::Outcome;

/// The category of one attempt, and what the answer said about the next one.
#[derive(Debug, Clone, PartialEq)]
pub struct Classified {
    pub outcome: Outcome,
    /// The request may have been processed although no answer came (a timeout).
    pub ambiguous: bool,
    /// `Retry-After` of a 429/503, in ms from now.
    pub retry_after_ms: Option<i64>,
}

/// The default category of an HTTP status.
pub fn by_status(status: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Success,
        408 | 425 | 429 | 500 | 502 | 503 | 504 => Outcome::Unavailable,
        401 => Outcome::Unauthorized,
        403 => Outcome::Forbidden,
        _ => Outcome::Unclassified,
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn json_equal(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn rule_matches(
    rule: &Rule,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
    json: Option<&Value>,
) -> bool {
    if let Some(statuses) = &rule.status {
        if !statuses.contains(&status) {
            return false;
        }
    }
    if let Some((pointer, equals)) = &rule.json_pointer {
        let Some(found) = json.and_then(|j| j.pointer(pointer)) else {
            return false;
        };
        if !equals.is_empty() && !equals.iter().any(|e| json_equal(e, found)) {
            return false;
        }
    }
    if let Some(needle) = &rule.body_contains {
        let n = needle.as_bytes();
        if n.is_empty() || !body.windows(n.len()).any(|w| w == n) {
            return false;
        }
    }
    if let Some((name, equals)) = &rule.header {
        let Some(v) = header(headers, name) else {
            return false;
        };
        if let Some(eq) = equals {
            if !eq.iter().any(|e| e.eq_ignore_ascii_case(v.trim())) {
                return false;
            }
        }
    }
    true
}

/// Classifies one reply under a provider's policy at `now_ms`.
pub fn classify(reply: &Reply, provider: &Provider, now_ms: i64) -> Classified {
    match reply {
        Reply::Transport { kind, .. } => Classified {
            outcome: transport_outcome(*kind),
            ambiguous: reply.is_ambiguous(),
            retry_after_ms: None,
        },
        Reply::Response {
            status,
            headers,
            body,
            ..
        } => {
            let status = *status;
            let json = if provider.rules.iter().any(|r| r.json_pointer.is_some()) {
                serde_json::from_slice::<Value>(body).ok()
            } else {
                None
            };
            let ruled = provider
                .rules
                .iter()
                .find(|r| rule_matches(r, status, headers, body, json.as_ref()))
                .map(|r| r.category);
            let hinted = || {
                let name = provider.retry_hint_header.as_deref()?;
                match header(headers, name)?.trim() {
                    "true" if !(200..300).contains(&status) => Some(Outcome::Unavailable),
                    "false" if by_status(status) == Outcome::Unavailable => {
                        Some(Outcome::Unclassified)
                    }
                    _ => None,
                }
            };
            let outcome = ruled.or_else(hinted).unwrap_or_else(|| by_status(status));
            let retry_after_ms = if matches!(status, 429 | 503) {
                header(headers, "retry-after")
                    .and_then(|v| crate::backoff::parse_retry_after(v, now_ms))
            } else {
                None
            };
            Classified {
                outcome,
                ambiguous: false,
                retry_after_ms,
            }
        }
    }
}

/// A short signature grouping like errors for triage: the status (or transport kind)
/// and the body's first 100 characters with digits folded, so ids and timestamps do not
/// split one error into many.
pub fn signature(reply: &Reply) -> String {
    match reply {
        Reply::Transport { kind, .. } => format!("transport {kind:?}"),
        Reply::Response { status, body, .. } => {
            let text: String = String::from_utf8_lossy(body)
                .chars()
                .take(100)
                .map(|c| if c.is_ascii_digit() { '#' } else { c })
                .collect();
            format!(
                "HTTP {status} {}",
                text.split_whitespace().collect::<Vec<_>>().join(" ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::http_call::TransportKind;

    fn resp(status: u16, headers: &[(&str, &str)], body: &str) -> Reply {
        Reply::Response {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
            truncated: false,
        }
    }

    #[test]
    fn default_table() {
        let p = Provider::default();
        let cases = [
            (200, Outcome::Success),
            (204, Outcome::Success),
            (301, Outcome::Unclassified),
            (400, Outcome::Unclassified),
            (401, Outcome::Unauthorized),
            (403, Outcome::Forbidden),
            (404, Outcome::Unclassified),
            (408, Outcome::Unavailable),
            (418, Outcome::Unclassified),
            (425, Outcome::Unavailable),
            (429, Outcome::Unavailable),
            (500, Outcome::Unavailable),
            (501, Outcome::Unclassified),
            (502, Outcome::Unavailable),
            (503, Outcome::Unavailable),
            (504, Outcome::Unavailable),
        ];
        for (status, want) in cases {
            assert_eq!(
                classify(&resp(status, &[], ""), &p, 0).outcome,
                want,
                "{status}"
            );
        }
    }

    #[test]
    fn transport_errors_are_unavailable_and_timeouts_ambiguous() {
        let p = Provider::default();
        let t = |kind| Reply::Transport {
            kind,
            message: String::new(),
        };
        let refused = classify(&t(TransportKind::Refused), &p, 0);
        assert_eq!(
            (refused.outcome, refused.ambiguous),
            (Outcome::Unavailable, false)
        );
        let timeout = classify(&t(TransportKind::Timeout), &p, 0);
        assert_eq!(
            (timeout.outcome, timeout.ambiguous),
            (Outcome::Unavailable, true)
        );
        assert_eq!(
            classify(&t(TransportKind::Dns), &p, 0).outcome,
            Outcome::Unavailable
        );
        assert_eq!(
            classify(&t(TransportKind::Invalid), &p, 0).outcome,
            Outcome::Unclassified
        );
    }

    #[test]
    fn rules_come_first() {
        let c = Config::from_toml(
            r#"
[providers.twitter]
retry_hint_header = "Stripe-Should-Retry"
[[providers.twitter.rules]]
json = { pointer = "/errors/0/code", equals = [89] }
category = "unauthorized"
[[providers.twitter.rules]]
status = [400]
body_contains = "quota"
category = "unavailable"
[[providers.twitter.rules]]
header = { name = "X-Kind", equals = ["banned"] }
category = "forbidden"
"#,
        )
        .unwrap();
        let p = c.provider("twitter");
        let out = |r: Reply| classify(&r, &p, 0).outcome;
        assert_eq!(
            out(resp(400, &[], r#"{"errors":[{"code":89}]}"#)),
            Outcome::Unauthorized
        );
        assert_eq!(
            out(resp(400, &[], r#"{"errors":[{"code":88}]}"#)),
            Outcome::Unclassified
        );
        assert_eq!(out(resp(400, &[], "over quota")), Outcome::Unavailable);
        assert_eq!(
            out(resp(418, &[("x-kind", "banned")], "")),
            Outcome::Forbidden
        );
        assert_eq!(
            out(resp(409, &[("Stripe-Should-Retry", "true")], "")),
            Outcome::Unavailable
        );
        assert_eq!(
            out(resp(503, &[("Stripe-Should-Retry", "false")], "")),
            Outcome::Unclassified
        );
    }

    #[test]
    fn retry_after_only_on_429_and_503() {
        let p = Provider::default();
        assert_eq!(
            classify(&resp(429, &[("Retry-After", "2")], ""), &p, 0).retry_after_ms,
            Some(2000)
        );
        assert_eq!(
            classify(&resp(500, &[("Retry-After", "2")], ""), &p, 0).retry_after_ms,
            None
        );
    }

    #[test]
    fn signatures_fold_digits() {
        assert_eq!(
            signature(&resp(418, &[], "teapot 123")),
            signature(&resp(418, &[], "teapot 456"))
        );
        assert_ne!(
            signature(&resp(418, &[], "x")),
            signature(&resp(417, &[], "x"))
        );
    }
}
