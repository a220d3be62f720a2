//! The bench's local target: a small HTTP/1.1 responder on 127.0.0.1:0, written on
//! `std::net` with a thread per connection and keep-alive, answering after a configurable
//! latency and failing a configurable share of requests with 503.
//!
//! Not tiny_http: tiny_http 0.12's task pool can leave a new keep-alive connection
//! waiting until another one closes when connections arrive in a burst (as 256 workers
//! do), which would measure the target instead of errand.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::Result;

/// How the target answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TargetConfig {
    /// Time between reading a request and answering it.
    pub latency: Duration,
    /// Share of requests (0.0 to 1.0) answered 503, spread evenly.
    pub fail_rate: f64,
}

impl Default for TargetConfig {
    fn default() -> TargetConfig {
        TargetConfig {
            latency: Duration::ZERO,
            fail_rate: 0.0,
        }
    }
}

struct State {
    config: TargetConfig,
    stop: AtomicBool,
    received: AtomicU64,
    failed: AtomicU64,
    /// (n, when) for requests to `/mark/<n>`: the latency scenario's arrivals.
    marks: Mutex<Vec<(usize, Instant)>>,
}

/// A running target. Dropping it stops accepting; connection threads end when their
/// client closes.
pub struct Target {
    state: Arc<State>,
    port: u16,
}

const OK: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}";
const UNAVAILABLE: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 11\r\n\r\nunavailable";

impl Target {
    /// Binds 127.0.0.1:0 and starts accepting.
    pub fn start(config: TargetConfig) -> Result<Target> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(State {
            config,
            stop: AtomicBool::new(false),
            received: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            marks: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        std::thread::Builder::new()
            .name("bench-target".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if st.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Ok(stream) = conn {
                        let st = st.clone();
                        let spawned = std::thread::Builder::new()
                            .name("bench-target-conn".into())
                            .stack_size(64 * 1024)
                            .spawn(move || serve(stream, &st));
                        if let Err(e) = spawned {
                            log::error!("bench target: cannot start a connection thread: {e}");
                        }
                    }
                }
            })?;
        Ok(Target { state, port })
    }

    /// The URL of `path` on this target.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Requests answered so far (including failures).
    pub fn received(&self) -> u64 {
        self.state.received.load(Ordering::SeqCst)
    }

    /// Requests answered 503 so far.
    pub fn failed(&self) -> u64 {
        self.state.failed.load(Ordering::SeqCst)
    }

    /// Takes the arrivals recorded for `/mark/<n>` requests.
    pub fn take_marks(&self) -> Vec<(usize, Instant)> {
        std::mem::take(&mut *self.state.marks.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Unblock the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Answers requests on one keep-alive connection until the client closes it.
fn serve(stream: TcpStream, st: &State) {
    let _ = stream.set_nodelay(true);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::with_capacity(8 * 1024, read_half);
    let mut out = stream;
    let mut line = String::with_capacity(256);
    let mut body = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).map_or(true, |n| n == 0) {
            return;
        }
        let mark = line
            .split_whitespace()
            .nth(1)
            .and_then(|t| t.strip_prefix("/mark/"))
            .and_then(|n| n.parse::<usize>().ok());
        let arrived = Instant::now();
        let mut len = 0usize;
        loop {
            line.clear();
            if reader.read_line(&mut line).map_or(true, |n| n == 0) {
                return;
            }
            let h = line.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.trim().eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        if len > 0 {
            body.resize(len, 0);
            if reader.read_exact(&mut body).is_err() {
                return;
            }
        }
        if let Some(n) = mark {
            st.marks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((n, arrived));
        }
        let config = st.config;
        let seq = st.received.fetch_add(1, Ordering::SeqCst);
        if !config.latency.is_zero() {
            std::thread::sleep(config.latency);
        }
        let fail = fails(seq, config.fail_rate);
        if fail {
            st.failed.fetch_add(1, Ordering::SeqCst);
        }
        if out.write_all(if fail { UNAVAILABLE } else { OK }).is_err() {
            return;
        }
        if st.stop.load(Ordering::SeqCst) {
            return;
        }
    }
}

/// True when request number `seq` is one of the failing share: evenly spread, so a
/// rate of 0.1 fails exactly one request in ten.
fn fails(seq: u64, rate: f64) -> bool {
    if rate <= 0.0 {
        return false;
    }
    let before = (seq as f64 * rate).floor();
    let after = ((seq + 1) as f64 * rate).floor();
    after > before
}

#[cfg(test)]
mod tests {
    use super::fails;

    #[test]
    fn failure_share_is_spread_evenly() {
        let n = (0..1000).filter(|&s| fails(s, 0.1)).count();
        assert_eq!(n, 100);
        assert_eq!((0..1000).filter(|&s| fails(s, 0.0)).count(), 0);
        assert_eq!((0..1000).filter(|&s| fails(s, 1.0)).count(), 1000);
    }
}
