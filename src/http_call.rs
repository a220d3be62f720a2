//! One outbound request with ureq through the shared agent, and redaction of secrets
//! for the audit log. Only workers call [`send`].

use std::io::Read;
use std::time::{Duration, Instant};

use crate::store::attempts::Outcome;

/// How much of a response body beyond the cap is read and discarded so the connection
/// can be reused; past this the connection is dropped instead.
const DRAIN_LIMIT: u64 = 16 * 1024 * 1024;

/// A connection's input buffer: room for the largest response header accepted (32 KiB,
/// far above what APIs send; 256 pooled connections cost 8 MiB, not 16).
const INPUT_BUFFER: usize = 32 * 1024;

/// Header names whose values are never written to the audit log.
const SECRET_HEADERS: [&str; 7] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
];

/// The shared agent: keep-alive pool, statuses as responses (not errors), no redirects
/// (a 3xx is an outcome to classify, not something to follow with a POST body), and no
/// agent-level timeouts (see [`send`]).
pub fn agent(max_idle: usize) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .max_idle_connections(max_idle.max(16))
        .max_idle_connections_per_host(max_idle.max(16))
        // ureq fills a connection's buffers to their full size on first use (128 KiB
        // each by default): 256 KiB of resident memory per pooled connection, 64 MiB
        // with 256 workers. The input buffer bounds the response headers (32 KiB); request
        // bodies stream through the output buffer in chunks, so 16 KiB only has to hold
        // the request headers.
        .input_buffer_size(INPUT_BUFFER)
        .max_response_header_size(INPUT_BUFFER)
        .output_buffer_size(16 * 1024)
        .user_agent(concat!("errand/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

/// A request ready to send. `headers` already include the credential, if any.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout_ms: u64,
    pub body_cap: usize,
}

/// What went wrong below HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// Connection refused, host unreachable: the request was not sent.
    Refused,
    /// The host name did not resolve.
    Dns,
    /// TLS handshake or certificate failure.
    Tls,
    /// Connecting took too long: the request was not sent.
    ConnectTimeout,
    /// Sending or waiting for the response took too long: it may have been processed.
    Timeout,
    /// The connection broke after the request was (maybe) sent.
    Reset,
    /// The request could not be built (bad URL or header): retrying will not help.
    Invalid,
}

/// The answer to one call.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Any HTTP status.
    Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        truncated: bool,
    },
    /// No HTTP answer.
    Transport {
        kind: TransportKind,
        message: String,
    },
}

impl Reply {
    /// True when the request may have reached the provider although no answer came.
    pub fn is_ambiguous(&self) -> bool {
        matches!(
            self,
            Reply::Transport {
                kind: TransportKind::Timeout | TransportKind::Reset,
                ..
            }
        )
    }
}

fn transport(e: &ureq::Error) -> (TransportKind, String) {
    use std::io::ErrorKind as K;
    let kind = match e {
        ureq::Error::HostNotFound => TransportKind::Dns,
        ureq::Error::Timeout(t) => match t {
            ureq::Timeout::Resolve | ureq::Timeout::Connect => TransportKind::ConnectTimeout,
            _ => TransportKind::Timeout,
        },
        ureq::Error::ConnectionFailed => TransportKind::Refused,
        ureq::Error::Io(io) => match io.kind() {
            K::ConnectionRefused | K::AddrNotAvailable | K::NotFound => TransportKind::Refused,
            K::TimedOut | K::WouldBlock => TransportKind::Timeout,
            _ => TransportKind::Reset,
        },
        ureq::Error::BadUri(_) | ureq::Error::Http(_) => TransportKind::Invalid,
        other => {
            let s = other.to_string().to_ascii_lowercase();
            if s.contains("tls") || s.contains("certificate") || s.contains("rustls") {
                TransportKind::Tls
            } else {
                TransportKind::Reset
            }
        }
    };
    (kind, e.to_string())
}

/// Sends `call` and reads at most `body_cap` bytes of the answer (the rest is read and
/// discarded up to a limit, and flagged). Timeouts are set per phase — connect, send,
/// wait for the response, read the body — each `timeout_ms`: a global timeout would make
/// ureq resolve the host on a new thread for every call.
pub fn send(agent: &ureq::Agent, call: &Call) -> (Reply, Duration) {
    let start = Instant::now();
    let reply = send_inner(agent, call);
    (reply, start.elapsed())
}

fn send_inner(agent: &ureq::Agent, call: &Call) -> Reply {
    let mut builder = ureq::http::Request::builder()
        .method(call.method.as_str())
        .uri(call.url.as_str());
    for (k, v) in &call.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let request = match builder.body(call.body.clone().unwrap_or_default()) {
        Ok(r) => r,
        Err(e) => {
            return Reply::Transport {
                kind: TransportKind::Invalid,
                message: e.to_string(),
            }
        }
    };
    let t = Some(Duration::from_millis(call.timeout_ms.max(1)));
    let request = agent
        .configure_request(request)
        .timeout_connect(t)
        .timeout_send_request(t)
        .timeout_send_body(t)
        .timeout_recv_response(t)
        .timeout_recv_body(t)
        .build();
    let mut response = match agent.run(request) {
        Ok(r) => r,
        Err(e) => {
            let (kind, message) = transport(&e);
            return Reply::Transport { kind, message };
        }
    };
    let status = response.status().as_u16();
    let headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut body = Vec::new();
    let mut reader = response.body_mut().with_config().reader();
    let read = (&mut reader)
        .take(call.body_cap as u64 + 1)
        .read_to_end(&mut body);
    if let Err(e) = read {
        let kind = if e.kind() == std::io::ErrorKind::TimedOut {
            TransportKind::Timeout
        } else {
            TransportKind::Reset
        };
        return Reply::Transport {
            kind,
            message: format!("reading the response body: {e}"),
        };
    }
    let truncated = body.len() > call.body_cap;
    if truncated {
        body.truncate(call.body_cap);
        let _ = std::io::copy(&mut (&mut reader).take(DRAIN_LIMIT), &mut std::io::sink());
    }
    Reply::Response {
        status,
        headers,
        body,
        truncated,
    }
}

/// True for header names whose values must never be stored or shown.
pub fn is_secret_header(name: &str, extra: Option<&str>) -> bool {
    let lower = name.to_ascii_lowercase();
    SECRET_HEADERS.contains(&lower.as_str()) || extra.is_some_and(|x| x.eq_ignore_ascii_case(name))
}

/// Headers as the audit log keeps them: secret values replaced, and any occurrence of
/// `secret` in a value masked.
pub fn redact_headers(
    headers: &[(String, String)],
    credential_header: Option<&str>,
    secret: Option<&str>,
) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            if is_secret_header(k, credential_header) {
                (k.clone(), "[redacted]".to_string())
            } else {
                (k.clone(), redact_text(v, secret))
            }
        })
        .collect()
}

/// Masks every occurrence of `secret` in `text`.
pub fn redact_text(text: &str, secret: Option<&str>) -> String {
    match secret {
        Some(s) if !s.is_empty() && text.contains(s) => text.replace(s, "[redacted]"),
        _ => text.to_string(),
    }
}

/// Masks every occurrence of `secret` in `bytes`.
pub fn redact_bytes(bytes: &[u8], secret: Option<&str>) -> Vec<u8> {
    match secret {
        Some(s) if !s.is_empty() => {
            let needle = s.as_bytes();
            if !bytes.windows(needle.len()).any(|w| w == needle) {
                return bytes.to_vec();
            }
            let mut out = Vec::with_capacity(bytes.len());
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i..].starts_with(needle) {
                    out.extend_from_slice(b"[redacted]");
                    i += needle.len();
                } else {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
            out
        }
        _ => bytes.to_vec(),
    }
}

/// The outcome a transport failure falls into by default.
pub fn transport_outcome(kind: TransportKind) -> Outcome {
    match kind {
        TransportKind::Invalid => Outcome::Unclassified,
        _ => Outcome::Unavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_masks_secret_headers_and_values() {
        let h = vec![
            ("Authorization".to_string(), "Bearer s3cret".to_string()),
            ("X-Token".to_string(), "s3cret".to_string()),
            ("X-Other".to_string(), "a s3cret b".to_string()),
            ("Accept".to_string(), "*/*".to_string()),
        ];
        let r = redact_headers(&h, Some("x-token"), Some("s3cret"));
        assert_eq!(r[0].1, "[redacted]");
        assert_eq!(r[1].1, "[redacted]");
        assert_eq!(r[2].1, "a [redacted] b");
        assert_eq!(r[3].1, "*/*");
        assert_eq!(redact_bytes(b"xs3crety", Some("s3cret")), b"x[redacted]y");
    }
}
