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

/// How long a host name's addresses are reused before it is looked up again. The system
/// resolver gives no TTL, so this is short: a provider that fails over to new addresses
/// is followed within seconds, and a busy host is still looked up once per 5 s rather
/// than once per call.
pub const DNS_CACHE: Duration = Duration::from_secs(5);

/// Host names remembered at most; past this the cache starts over.
const DNS_CACHE_ENTRIES: usize = 1024;

type Addrs = ureq::unversioned::resolver::ResolvedSocketAddrs;
type Lookup = Box<dyn ureq::unversioned::resolver::Resolver>;

/// Resolves a URL's host for ureq. ureq looks the host up before every call, pooled
/// connection or not, and once a timeout is set it does so on a new thread: a thread per
/// call, which capped a loop of calls to 127.0.0.1 at ~10,700/s against ~40,000/s
/// without. So an IP address is used as it is, and a host name is looked up (on ureq's
/// thread, within the call's timeout) once per [`DNS_CACHE`], not once per call.
#[derive(Debug)]
pub struct Resolver {
    names: Lookup,
    ttl: Duration,
    cache: std::sync::Mutex<std::collections::HashMap<String, (Instant, Addrs)>>,
}

impl Default for Resolver {
    fn default() -> Resolver {
        Resolver::new(
            Box::new(ureq::unversioned::resolver::DefaultResolver::default()),
            DNS_CACHE,
        )
    }
}

impl Resolver {
    /// Host names go to `names`, and their addresses are kept for `ttl`.
    pub fn new(names: Lookup, ttl: Duration) -> Resolver {
        Resolver {
            names,
            ttl,
            cache: Default::default(),
        }
    }

    /// The address of an IP-literal `uri` (`http://10.0.0.1:8080/`, `https://[::1]/`),
    /// with the scheme's port when none is given; None for a host name.
    pub fn literal(uri: &ureq::http::Uri) -> Option<std::net::SocketAddr> {
        let host = uri.host()?;
        let ip: std::net::IpAddr = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .parse()
            .ok()?;
        let port = uri.port_u16().or(match uri.scheme_str() {
            Some("https") => Some(443),
            Some("http") => Some(80),
            _ => None,
        })?;
        Some(std::net::SocketAddr::new(ip, port))
    }
}

impl ureq::unversioned::resolver::Resolver for Resolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<Addrs, ureq::Error> {
        if let Some(addr) = Resolver::literal(uri) {
            let mut addrs = self.empty();
            addrs.push(addr);
            return Ok(addrs);
        }
        // host:port as ureq's resolver looks it up (never the URL's userinfo), with the
        // scheme's default port (a proxy's too).
        let key = match (uri.scheme(), uri.authority()) {
            (Some(scheme), Some(authority)) => {
                ureq::unversioned::resolver::DefaultResolver::host_and_port(scheme, authority)
            }
            _ => None,
        }
        .unwrap_or_default();
        let now = Instant::now();
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, addrs)) = cache.get(&key) {
                if now.saturating_duration_since(*at) < self.ttl {
                    return Ok(addrs.clone());
                }
            }
        }
        // Looked up outside the lock; failures are not kept, so the next call tries again.
        // The system resolver's failures come back as I/O errors, which would read as a
        // broken connection (ambiguous); nothing was sent, so they are "host not found".
        let addrs = match self.names.resolve(uri, config, timeout) {
            Ok(addrs) => addrs,
            Err(ureq::Error::Io(e)) => {
                log::debug!("looking up {key}: {e}");
                return Err(ureq::Error::HostNotFound);
            }
            Err(e) => return Err(e),
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= DNS_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, (now, addrs.clone()));
        Ok(addrs)
    }
}

/// The shared agent: keep-alive pool, statuses as responses (not errors), no redirects
/// (a 3xx is an outcome to classify, not something to follow with a POST body), IP
/// addresses used without a lookup ([`Resolver`]), and timeouts set per call (see
/// [`send`]).
pub fn agent(max_idle: usize) -> ureq::Agent {
    ureq::Agent::with_parts(
        agent_config(max_idle),
        ureq::unversioned::transport::DefaultConnector::default(),
        Resolver::default(),
    )
}

fn agent_config(max_idle: usize) -> ureq::config::Config {
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
            // rustls reports a failed handshake (a bad certificate, a server that does not
            // speak TLS) as invalid data: the request was not sent.
            K::InvalidData if is_tls_failure(&io.to_string()) => TransportKind::Tls,
            _ => TransportKind::Reset,
        },
        ureq::Error::BadUri(_) | ureq::Error::Http(_) => TransportKind::Invalid,
        other => {
            if is_tls_failure(&other.to_string()) {
                TransportKind::Tls
            } else {
                TransportKind::Reset
            }
        }
    };
    (kind, e.to_string())
}

/// True for the words rustls and ureq use for a TLS failure.
fn is_tls_failure(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "tls",
        "certificate",
        "rustls",
        "handshake",
        "corrupt message",
        "alert",
        "peer is incompatible",
        "peer misbehaved",
    ]
    .iter()
    .any(|w| m.contains(w))
}

/// Sends `call` and reads at most `body_cap` bytes of the answer (the rest is read and
/// discarded up to a limit, and flagged). `timeout_ms` bounds the whole call: name
/// lookup, connect, send, the response and its body. The lookup gets four tenths of it
/// and the connect (with the TLS handshake) half, so a call that never got connected is
/// told apart (it was not sent: [`TransportKind::ConnectTimeout`]) from one that timed
/// out after sending (ambiguous).
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
    // ureq starts the connect budget (TLS handshake included) when the lookup ends, so
    // the two together stay under the whole call's: a call that never got connected
    // times out as such, not as the ambiguous whole-call timeout.
    let total = Duration::from_millis(call.timeout_ms.max(1));
    let request = agent
        .configure_request(request)
        .timeout_per_call(Some(total))
        .timeout_resolve(Some(total * 4 / 10))
        .timeout_connect(Some(total / 2))
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
        // ureq reports its own errors (a timeout among them) wrapped in an io::Error.
        // The request was sent and answered: whatever breaks now is ambiguous.
        let timed_out = match e.get_ref().and_then(|x| x.downcast_ref::<ureq::Error>()) {
            Some(inner) => matches!(
                transport(inner).0,
                TransportKind::Timeout | TransportKind::ConnectTimeout
            ),
            None => e.kind() == std::io::ErrorKind::TimedOut,
        };
        let kind = if timed_out {
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

#[cfg(test)]
mod network_tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    fn uri(s: &str) -> ureq::http::Uri {
        s.parse().expect("uri")
    }

    #[test]
    fn an_ip_address_is_its_own_resolution_and_a_name_is_not() {
        let lit = |s| Resolver::literal(&uri(s)).map(|a| a.to_string());
        assert_eq!(
            lit("http://127.0.0.1:8080/x").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(lit("http://10.1.2.3/").as_deref(), Some("10.1.2.3:80"));
        assert_eq!(lit("https://10.1.2.3/").as_deref(), Some("10.1.2.3:443"));
        assert_eq!(lit("https://[::1]:9/a").as_deref(), Some("[::1]:9"));
        assert_eq!(lit("http://[::1]/").as_deref(), Some("[::1]:80"));
        assert_eq!(lit("https://api.example.com/"), None);
        assert_eq!(lit("http://localhost:80/"), None);
    }

    /// A server for one connection: reads the request, then lets `answer` write.
    fn serve_once(
        answer: impl FnOnce(&mut std::net::TcpStream) + Send + 'static,
    ) -> (u16, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut s, &mut buf);
            answer(&mut s);
        });
        (port, server)
    }

    fn get(url: String, timeout_ms: u64) -> Call {
        Call {
            method: "GET".into(),
            url,
            headers: Vec::new(),
            body: None,
            timeout_ms,
            body_cap: 1024,
        }
    }

    #[test]
    fn a_name_is_still_looked_up_and_a_call_to_it_connects() {
        let (port, server) = serve_once(|s| {
            let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
        });
        let (reply, _) = send(&agent(1), &get(format!("http://localhost:{port}/"), 5_000));
        assert!(
            matches!(reply, Reply::Response { status: 204, .. }),
            "{reply:?}"
        );
        server.join().expect("server");
    }

    fn kind(reply: &Reply) -> Option<TransportKind> {
        match reply {
            Reply::Transport { kind, .. } => Some(*kind),
            Reply::Response { .. } => None,
        }
    }

    /// A stand-in for the system resolver: counts the lookups that reach it, takes
    /// `delay`, then fails the way the system resolver does (`fail`) or really resolves.
    #[derive(Debug, Default)]
    struct Stub {
        calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        delay: Duration,
        fail: bool,
    }

    impl ureq::unversioned::resolver::Resolver for Stub {
        fn resolve(
            &self,
            uri: &ureq::http::Uri,
            config: &ureq::config::Config,
            timeout: ureq::unversioned::transport::NextTimeout,
        ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(self.delay);
            if self.fail {
                return Err(ureq::Error::Io(std::io::Error::other(
                    "failed to lookup address information: Name or service not known",
                )));
            }
            Resolver::default().resolve(uri, config, timeout)
        }
    }

    /// An agent like the engine's whose host names go to `lookup`.
    fn agent_with(lookup: impl ureq::unversioned::resolver::Resolver) -> ureq::Agent {
        ureq::Agent::with_parts(
            agent_config(1),
            ureq::unversioned::transport::DefaultConnector::default(),
            lookup,
        )
    }

    #[test]
    fn a_host_name_is_looked_up_once_per_ttl_and_an_ip_address_never() {
        use ureq::unversioned::resolver::Resolver as _;
        let lookups = |ttl: Duration| {
            let stub = Stub::default();
            let n = stub.calls.clone();
            let r = Resolver::new(Box::new(stub), ttl);
            let config = agent_config(1);
            for url in [
                "http://localhost:8080/a",
                "http://localhost:8080/b",
                "http://user:pw@localhost:8080/",
                "http://localhost:9090/",
                "http://127.0.0.1:8080/",
            ] {
                let addrs = r
                    .resolve(&uri(url), &config, Default::default())
                    .expect("resolve");
                assert!(!addrs.is_empty(), "{url}");
            }
            n.load(std::sync::atomic::Ordering::SeqCst)
        };
        // localhost:8080 once for three calls, localhost:9090 once, the IP address never.
        assert_eq!(lookups(DNS_CACHE), 2);
        // Past the TTL (here at once) every call to a host name looks it up again.
        assert_eq!(lookups(Duration::ZERO), 4);
    }

    #[test]
    fn a_host_that_does_not_resolve_was_not_sent() {
        let stub = Stub {
            fail: true,
            ..Stub::default()
        };
        let agent = agent_with(Resolver::new(Box::new(stub), DNS_CACHE));
        let (reply, _) = send(&agent, &get("http://nonexistent.invalid/".into(), 1_000));
        assert_eq!(kind(&reply), Some(TransportKind::Dns), "{reply:?}");
        assert!(!reply.is_ambiguous());
    }

    #[test]
    fn a_tls_handshake_that_fails_or_stalls_was_not_sent() {
        // A server that answers the ClientHello in plain HTTP.
        let (port, server) = serve_once(|s| {
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
            std::thread::sleep(Duration::from_millis(200));
        });
        let (reply, _) = send(&agent(1), &get(format!("https://127.0.0.1:{port}/"), 2_000));
        assert_eq!(kind(&reply), Some(TransportKind::Tls), "{reply:?}");
        assert!(!reply.is_ambiguous());
        server.join().expect("server");
        // A server that never answers the handshake, behind a slow lookup: the connect
        // runs out before the whole call does, so the call is known not to be sent.
        let (port, server) = serve_once(|_| std::thread::sleep(Duration::from_millis(1_500)));
        let slow = agent_with(Stub {
            delay: Duration::from_millis(300),
            ..Stub::default()
        });
        let (reply, _) = send(&slow, &get(format!("https://127.0.0.1:{port}/"), 1_000));
        assert_eq!(
            kind(&reply),
            Some(TransportKind::ConnectTimeout),
            "{reply:?}"
        );
        assert!(!reply.is_ambiguous());
        server.join().expect("server");
    }

    /// `timeout_ms` bounds the whole call: a server that answers each phase within it
    /// (headers after 60 %, the body over another 60 %) still runs out of it. Bounded per
    /// phase, as before, this call succeeded after 1.2 × `timeout_ms`.
    #[test]
    fn timeout_ms_bounds_the_whole_call_not_each_phase() {
        let (port, server) = serve_once(|s| {
            std::thread::sleep(Duration::from_millis(300));
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n");
            for b in b"abcdef" {
                std::thread::sleep(Duration::from_millis(50));
                if s.write_all(&[*b]).is_err() {
                    return;
                }
            }
        });
        let (reply, _) = send(&agent(1), &get(format!("http://127.0.0.1:{port}/"), 500));
        assert_eq!(kind(&reply), Some(TransportKind::Timeout), "{reply:?}");
        server.join().expect("server");
    }
}
