//! The HTTP API on tiny_http: routing, JSON in and out, errors as
//! `{"error": {"code", "message"}}`.
//!
//! Handler threads never block on a long wait: a `Prefer: wait=N` request is parked (the
//! tiny_http `Request` itself, with its deadline) in [`park::Parking`] and answered by
//! one responder thread when the writer commits the job's outcome or the deadline
//! passes.

pub mod admin;
pub mod metrics;
pub mod park;
mod reply;
pub mod request;
pub mod routes;
mod v1;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::engine::Shared;
use crate::error::{Error, Result};

pub use park::Wait;
pub use reply::Reply;
pub use request::Req;

/// The browser helper served at `/client.js`.
pub const CLIENT_JS: &str = include_str!("client.js");

/// Request-handling threads. They never hold a parked wait, so they only need to cover
/// the requests being read, routed and committed at one time.
pub const HANDLER_THREADS: usize = 64;

/// What a handler decided: answer now, or park the request until the job changes.
#[derive(Debug)]
pub enum Answer {
    /// Answer now.
    Reply(Reply),
    /// Park the request (`Prefer: wait`) until the job leaves approved/running/retry or
    /// the deadline passes.
    Wait(Wait),
}

impl From<Reply> for Answer {
    fn from(r: Reply) -> Answer {
        Answer::Reply(r)
    }
}

/// Everything a handler needs.
pub struct Api {
    pub shared: Arc<Shared>,
    shutting_down: AtomicBool,
    /// Logged-in admin page sessions (in memory).
    pub admin_sessions: admin::Sessions,
    /// Parked `Prefer: wait` requests and their responder.
    pub parking: park::Parking,
    /// `(account, Idempotency-Key)` of enqueues being written now: a concurrent
    /// duplicate answers 409 instead of racing the first.
    inflight_keys: Mutex<HashSet<(String, String)>>,
}

impl Api {
    /// The API over a running engine.
    pub fn new(shared: Arc<Shared>) -> Api {
        let max_parked = shared.config.max_parked_waits;
        Api {
            shared,
            shutting_down: AtomicBool::new(false),
            admin_sessions: admin::Sessions::default(),
            parking: park::Parking::new(max_parked),
            inflight_keys: Mutex::new(HashSet::new()),
        }
    }

    /// From now on `/v1` answers 503.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// True once shutdown has begun.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Answers one request: reads it (413 for a body over the limit) and routes it.
    pub fn handle(&self, raw: &mut tiny_http::Request) -> Answer {
        let req = match Req::read(raw, self.shared.config.max_request_bytes) {
            Ok(r) => r,
            Err(reply) => return reply.into(),
        };
        self.route(&req)
    }

    /// The browser helper served at `/client.js`.
    pub const CLIENT_JS: &str = include_str!("client.js");

    /// Serves one request on a handler thread: answers it, or parks it.
    pub fn serve(&self, mut raw: tiny_http::Request) {
        match self.handle(&mut raw) {
            Answer::Reply(reply) => {
                let _ = raw.respond(reply.into_response());
            }
            Answer::Wait(wait) => self.parking.park(self, raw, wait),
        }
    }

    /// Routes a parsed request through [`routes::ROUTES`].
    pub fn route(&self, req: &Req) -> Answer {
        routes::dispatch(self, req)
    }

    /// Marks `(account, key)` as being written; `None` when it already is.
    fn claim_key(&self, account: &str, key: &str) -> Option<KeyClaim<'_>> {
        let k = (account.to_string(), key.to_string());
        let fresh = self
            .inflight_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(k.clone());
        // Not `then_some`: it would build (and drop, releasing the key) a claim we lost.
        if fresh {
            Some(KeyClaim { api: self, key: k })
        } else {
            None
        }
    }
}

/// An idempotency key being written; released on drop.
struct KeyClaim<'a> {
    api: &'a Api,
    key: (String, String),
}

impl Drop for KeyClaim<'_> {
    fn drop(&mut self) {
        self.api
            .inflight_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

/// The listening HTTP server, its handler threads and the responder of parked waits.
pub struct HttpServer {
    server: Arc<tiny_http::Server>,
    threads: Vec<JoinHandle<()>>,
    responder: Option<JoinHandle<()>>,
    api: Arc<Api>,
    addr: SocketAddr,
}

impl HttpServer {
    /// Binds `listen` and starts the handler threads and the responder.
    pub fn start(listen: &str, api: Arc<Api>) -> Result<HttpServer> {
        let timeout = std::time::Duration::from_millis(api.shared.config.http_timeout_ms);
        let addr = tiny_http::ConfigListenAddr::from_socket_addrs(listen).map_err(|e| {
            Error::invalid(
                "--listen",
                format!("{listen:?} is not an address: {e}; use HOST:PORT such as 127.0.0.1:8717"),
            )
        })?;
        let server = tiny_http::Server::new(tiny_http::ServerConfig {
            addr,
            ssl: None,
            // An idle or stalled client gives its connection thread back (tiny_http keeps
            // one per connection), and cannot hold an answering thread by not reading.
            socket_timeout: Some(timeout),
        })
        // A valid address that cannot be bound (in use, not ours) is a failure, not a
        // usage error: the same command may work once the port is free.
        .map_err(|e| {
            let kind = e
                .downcast_ref::<std::io::Error>()
                .map_or(std::io::ErrorKind::Other, std::io::Error::kind);
            Error::Io(std::io::Error::new(
                kind,
                format!(
                    "--listen: cannot listen on {listen}: {e}; is another errand running \
                     there? Stop it or choose another port with --listen"
                ),
            ))
        })?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| Error::invalid("--listen", "not an IP address"))?;
        let server = Arc::new(server);
        let responder = park::spawn_responder(api.clone())?;
        let threads = (0..HANDLER_THREADS)
            .map(|i| {
                let server = server.clone();
                let api = api.clone();
                std::thread::Builder::new()
                    .name(format!("errand-http-{i}"))
                    .spawn(move || {
                        while let Ok(req) = server.recv() {
                            // A bug in one handler must not cost the server a thread; the
                            // request is dropped (its connection closes) and the thread
                            // goes on.
                            let served =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                    api.serve(req)
                                }));
                            if served.is_err() {
                                log::error!("a request handler panicked; the request was dropped");
                            }
                        }
                    })
                    .map_err(Error::Io)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(HttpServer {
            server,
            threads,
            responder: Some(responder),
            api,
            addr,
        })
    }

    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, joins the handler threads, and answers every parked wait with
    /// the job as it is now.
    pub fn stop(mut self) {
        for _ in &self.threads {
            self.server.unblock();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.api.parking.stop();
        if let Some(r) = self.responder.take() {
            let _ = r.join();
        }
    }
}
