//! A new job as the user describes it (the body of `POST /v1/jobs`, an outbox row, or
//! `errand enqueue`), validated into a [`NewJob`] that cannot hold a bad value.

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::job::JobState;
use crate::time::parse_rfc3339;

/// Methods errand sends.
pub const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// The longest account, provider or idempotency key accepted.
const MAX_NAME: usize = 200;
/// The longest URL accepted.
const MAX_URL: usize = 8192;

/// The outbound `Idempotency-Key` policy of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundKey {
    /// errand makes one up at enqueue; it is the same on every attempt.
    Generate,
    /// The caller's own key.
    Given(String),
    /// Send no `Idempotency-Key` (`"idempotency_key": false`).
    Disabled,
}

/// When the job becomes due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// `delay_ms` after it is written (0 = now).
    After(i64),
    /// At an absolute time (Unix ms).
    At(i64),
}

/// Fields errand sets itself on the jobs it creates (operation steps, deliveries); never
/// taken from user input.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Internal {
    /// (operation id, step index) of an operation's step.
    pub operation: Option<(i64, i64)>,
    /// The Standard Webhooks message id, stable across retries.
    pub webhook_id: Option<String>,
    /// Where the signing secret lives, e.g. `subscription:CHANNEL/NAME`.
    pub signing_key: Option<String>,
}

/// A validated new job.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub account: String,
    pub provider: String,
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout_ms: Option<i64>,
    pub due: Due,
    pub max_attempts: Option<i64>,
    pub backoff: Option<Backoff>,
    pub idempotency_key: OutboundKey,
    pub expires_at: Option<i64>,
    pub callback_url: Option<String>,
    pub state: JobState,
    pub metadata: Value,
    pub internal: Internal,
}

impl NewJob {
    /// A GET of `url` for `account` with every default; handy for tests and the CLI.
    pub fn get(account: &str, url: &str) -> NewJob {
        NewJob {
            account: account.to_string(),
            provider: "default".to_string(),
            method: "GET".to_string(),
            url: url.to_string(),
            headers: Vec::new(),
            body: None,
            timeout_ms: None,
            due: Due::After(0),
            max_attempts: None,
            backoff: None,
            idempotency_key: OutboundKey::Generate,
            expires_at: None,
            callback_url: None,
            state: JobState::Approved,
            metadata: Value::Object(Map::new()),
            internal: Internal::default(),
        }
    }

    /// Refuses an `expires_at` at or before the job's first run (`run_at`, or `now` plus
    /// `delay_ms`): such a job could only expire. [`NewJob::from_json`] checks an absolute
    /// `run_at` already; a delay needs the clock of the moment the job is written.
    pub fn check_expiry(&self, now: i64) -> Result<()> {
        let first_run = match self.due {
            Due::After(d) => now.saturating_add(d),
            Due::At(t) => t,
        };
        match self.expires_at {
            Some(exp) if exp <= first_run => Err(Error::invalid(
                "expires_at",
                "is not after the job's first run (run_at, or now + delay_ms): the job could only expire; move expires_at later or drop it",
            )),
            _ => Ok(()),
        }
    }

    /// Parses and validates the JSON of SPEC §4 `POST /v1/jobs`.
    pub fn from_json(v: &Value) -> Result<NewJob> {
        let obj = v
            .as_object()
            .ok_or_else(|| Error::invalid("body", "must be a JSON object"))?;
        reject_unknown(
            obj,
            "",
            &[
                "account",
                "provider",
                "request",
                "timeout_ms",
                "delay_ms",
                "run_at",
                "max_attempts",
                "backoff",
                "idempotency_key",
                "expires_at",
                "callback_url",
                "state",
                "metadata",
            ],
        )?;
        let account = name(obj, "account")?
            .ok_or_else(|| Error::invalid("account", "is required (the tenant owning the job)"))?;
        let provider = name(obj, "provider")?.unwrap_or_else(|| "default".to_string());
        let req = match obj.get("request") {
            Some(Value::Object(r)) => r,
            Some(_) => return Err(Error::invalid("request", "must be an object")),
            None => {
                return Err(Error::invalid(
                    "request.url",
                    "is required (request: {\"url\": \"https://...\"})",
                ))
            }
        };
        reject_unknown(
            req,
            "request.",
            &["method", "url", "headers", "json", "body", "body_base64"],
        )?;
        let url = match req.get("url") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(Error::invalid("request.url", "must be a string")),
            None => return Err(Error::invalid("request.url", "is required")),
        };
        check_url("request.url", &url)?;
        let method = match req.get("method") {
            None | Some(Value::Null) => "GET".to_string(),
            Some(Value::String(m)) => check_method(m)?,
            Some(_) => return Err(Error::invalid("request.method", "must be a string")),
        };
        let mut headers = match req.get("headers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(h)) => {
                let mut out = Vec::with_capacity(h.len());
                for (k, v) in h {
                    let v = v.as_str().ok_or_else(|| {
                        Error::invalid(format!("request.headers.{k}"), "must be a string")
                    })?;
                    check_header(k, v)?;
                    out.push((k.clone(), v.to_string()));
                }
                out
            }
            Some(_) => return Err(Error::invalid("request.headers", "must be an object")),
        };
        let bodies = ["json", "body", "body_base64"]
            .iter()
            .filter(|k| req.get(**k).is_some_and(|v| !v.is_null()))
            .count();
        if bodies > 1 {
            return Err(Error::invalid(
                "request",
                "give only one of json, body and body_base64",
            ));
        }
        let body = if let Some(j) = req.get("json").filter(|v| !v.is_null()) {
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            {
                headers.push(("Content-Type".to_string(), "application/json".to_string()));
            }
            Some(serde_json::to_vec(j).map_err(|e| Error::invalid("request.json", e.to_string()))?)
        } else if let Some(b) = req.get("body").filter(|v| !v.is_null()) {
            Some(
                b.as_str()
                    .ok_or_else(|| Error::invalid("request.body", "must be a string"))?
                    .as_bytes()
                    .to_vec(),
            )
        } else if let Some(b) = req.get("body_base64").filter(|v| !v.is_null()) {
            let s = b
                .as_str()
                .ok_or_else(|| Error::invalid("request.body_base64", "must be a string"))?;
            Some(
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|_| Error::invalid("request.body_base64", "is not valid base64"))?,
            )
        } else {
            None
        };

        let timeout_ms = int(obj, "timeout_ms", 1, 600_000)?;
        let delay_ms = int(obj, "delay_ms", 0, 10 * 365 * 86_400_000)?;
        let run_at = time(obj, "run_at")?;
        let due = match (delay_ms, run_at) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(
                    "run_at",
                    "give either run_at or delay_ms, not both",
                ))
            }
            (_, Some(at)) => Due::At(at),
            (d, None) => Due::After(d.unwrap_or(0)),
        };
        let max_attempts = int(obj, "max_attempts", 1, 1000)?;
        let backoff = match obj.get("backoff") {
            None | Some(Value::Null) => None,
            Some(b) => {
                let p: Backoff = serde_json::from_value(b.clone()).map_err(|e| {
                    Error::invalid(
                        "backoff",
                        format!("{e}; use {{\"initial_ms\": 500, \"multiplier\": 2, \"max_ms\": 60000}}"),
                    )
                })?;
                p.validate("backoff")?;
                Some(p)
            }
        };
        let idempotency_key = match obj.get("idempotency_key") {
            None | Some(Value::Null) | Some(Value::Bool(true)) => OutboundKey::Generate,
            Some(Value::Bool(false)) => OutboundKey::Disabled,
            Some(Value::String(k)) => {
                if k.is_empty() || k.len() > MAX_NAME {
                    return Err(Error::invalid(
                        "idempotency_key",
                        "must be 1 to 200 characters, or false to send none",
                    ));
                }
                check_header("Idempotency-Key", k)
                    .map_err(|_| Error::invalid("idempotency_key", "must be printable ASCII"))?;
                OutboundKey::Given(k.clone())
            }
            Some(_) => {
                return Err(Error::invalid(
                    "idempotency_key",
                    "must be a string, or false to send none",
                ))
            }
        };
        let expires_at = time(obj, "expires_at")?;
        if let (Some(exp), Due::At(at)) = (expires_at, &due) {
            if exp <= *at {
                return Err(Error::invalid(
                    "expires_at",
                    "is not after run_at: the job could only expire; move expires_at later or drop it",
                ));
            }
        }
        let callback_url = match obj.get("callback_url") {
            None | Some(Value::Null) => None,
            Some(Value::String(u)) => {
                check_url("callback_url", u)?;
                Some(u.clone())
            }
            Some(_) => return Err(Error::invalid("callback_url", "must be a string")),
        };
        let state = match obj.get("state") {
            None | Some(Value::Null) => JobState::Approved,
            Some(Value::String(s)) if s == "approved" => JobState::Approved,
            Some(Value::String(s)) if s == "draft" => JobState::Draft,
            Some(_) => {
                return Err(Error::invalid(
                    "state",
                    "a new job is \"approved\" (the default) or \"draft\"",
                ))
            }
        };
        let metadata = match obj.get("metadata") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(m @ Value::Object(_)) => m.clone(),
            Some(_) => return Err(Error::invalid("metadata", "must be an object")),
        };
        Ok(NewJob {
            account,
            provider,
            method,
            url,
            headers,
            body,
            timeout_ms,
            due,
            max_attempts,
            backoff,
            idempotency_key,
            expires_at,
            callback_url,
            state,
            metadata,
            internal: Internal::default(),
        })
    }
}

fn reject_unknown(obj: &Map<String, Value>, prefix: &str, known: &[&str]) -> Result<()> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(Error::invalid(
            format!("{prefix}{k}"),
            format!("unknown field; known fields are {}", known.join(", ")),
        )),
        None => Ok(()),
    }
}

fn name(obj: &Map<String, Value>, field: &str) -> Result<Option<String>> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            check_name(field, s)?;
            Ok(Some(s.clone()))
        }
        Some(_) => Err(Error::invalid(field, "must be a string")),
    }
}

/// Checks an account, provider, channel or subscription name: 1 to 200 printable
/// characters without `/`, so it can stand in a URL path.
pub fn check_name(field: &str, s: &str) -> Result<()> {
    if s.is_empty() || s.len() > MAX_NAME || s.chars().any(|c| c.is_control() || c == '/') {
        return Err(Error::invalid(
            field,
            "must be 1 to 200 printable characters without '/'",
        ));
    }
    Ok(())
}

fn int(obj: &Map<String, Value>, field: &str, min: i64, max: i64) -> Result<Option<i64>> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(Error::invalid(
                field,
                format!("must be a whole number from {min} to {max}"),
            )),
        },
    }
}

fn time(obj: &Map<String, Value>, field: &str) -> Result<Option<i64>> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse_rfc3339(field, s).map(Some),
        Some(_) => Err(Error::invalid(
            field,
            "must be an RFC 3339 string such as 2026-11-22T10:00:00Z",
        )),
    }
}

/// Checks that `url` is an absolute http or https URL with a host.
pub fn check_url(field: &str, url: &str) -> Result<()> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(Error::invalid(field, "must be an http:// or https:// URL"));
    }
    if url.len() > MAX_URL {
        return Err(Error::invalid(field, "is longer than 8192 bytes"));
    }
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e| Error::invalid(field, format!("is not a valid URL: {e}")))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(Error::invalid(field, "has no host"));
    }
    Ok(())
}

/// Normalises and checks an HTTP method.
pub fn check_method(m: &str) -> Result<String> {
    let up = m.to_ascii_uppercase();
    if METHODS.contains(&up.as_str()) {
        Ok(up)
    } else {
        Err(Error::invalid(
            "request.method",
            format!("unknown method {m:?}; use one of {}", METHODS.join(", ")),
        ))
    }
}

/// Checks an outbound header name and value.
pub fn check_header(k: &str, v: &str) -> Result<()> {
    ureq::http::HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
        Error::invalid(format!("request.headers.{k}"), "is not a valid header name")
    })?;
    ureq::http::HeaderValue::from_str(v).map_err(|_| {
        Error::invalid(
            format!("request.headers.{k}"),
            "is not a valid header value (no control characters)",
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> String {
        NewJob::from_json(&v).unwrap_err().to_string()
    }

    #[test]
    fn minimal_job_takes_defaults() {
        let j =
            NewJob::from_json(&json!({"account": "acme", "request": {"url": "https://x.test/a"}}))
                .unwrap();
        assert_eq!(j, NewJob::get("acme", "https://x.test/a"));
    }

    #[test]
    fn json_body_sets_content_type() {
        let j = NewJob::from_json(&json!({"account": "a", "request":
            {"method": "post", "url": "http://h/x", "json": {"a": 1}}}))
        .unwrap();
        assert_eq!(j.method, "POST");
        assert_eq!(j.body.as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(
            j.headers,
            vec![("Content-Type".into(), "application/json".into())]
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        let cases = [
            (json!([1]), "body:"),
            (json!({"request": {"url": "http://h"}}), "account:"),
            (json!({"account": "a"}), "request.url:"),
            (
                json!({"account": "a", "request": {"url": "ftp://h/x"}}),
                "request.url:",
            ),
            (
                json!({"account": "a", "request": {"url": "http://"}}),
                "request.url:",
            ),
            (
                json!({"account": "a", "request": {"url": "http://h", "method": "BREW"}}),
                "request.method:",
            ),
            (
                json!({"account": "a", "request": {"url": "http://h"}, "max_attempts": -1}),
                "max_attempts:",
            ),
            (
                json!({"account": "a", "request": {"url": "http://h"}, "run_at": "tomorrow"}),
                "run_at:",
            ),
            (
                json!({"account": "a", "request": {"url": "http://h"}, "colour": 1}),
                "colour:",
            ),
            (
                json!({"account": "a", "request": {"url": "http://h"},
                       "run_at": "2026-11-22T10:00:00Z", "expires_at": "2026-11-22T09:00:00Z"}),
                "expires_at:",
            ),
            (
                json!({"account": "a", "request": {"url": "http://h", "headers": {"X": 1}}}),
                "request.headers.X:",
            ),
            (
                json!({"account": "a", "request": {"url": "http://h", "json": {}, "body": "x"}}),
                "request:",
            ),
            (
                json!({"account": "a", "request": {"url": "http://h"}, "state": "running"}),
                "state:",
            ),
            (
                json!({"account": "a", "request": {"url": "http://h"}, "backoff": {"initial_ms": 0, "multiplier": 2, "max_ms": 1}}),
                "backoff.initial_ms:",
            ),
            (
                json!({"account": "", "request": {"url": "http://h"}}),
                "account:",
            ),
        ];
        for (v, want) in cases {
            let e = err(v.clone());
            assert!(e.starts_with(want), "{v}: {e}");
        }
    }
}
