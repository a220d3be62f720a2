//! The HTTP API on tiny_http: routing, JSON in and out, errors as
//! `{"error": {"code", "message"}}`.

pub mod admin;
pub mod metrics;
mod reply;
pub mod request;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::engine::Shared;
use crate::error::{Error, Result};

pub use reply::Reply;
pub use request::Req;

/// The browser helper served at `/client.js`.
const CLIENT_JS: &str = include_str!("client.js");

/// Request-handling threads. Each parked `Prefer: wait` holds one, so there are many
/// more than cores.
pub const HANDLER_THREADS: usize = 64;

/// Everything a handler needs.
pub struct Api {
    pub shared: Arc<Shared>,
    shutting_down: AtomicBool,
    /// Logged-in admin page sessions (in memory).
    pub admin_sessions: admin::Sessions,
}

impl Api {
    /// The API over a running engine.
    pub fn new(shared: Arc<Shared>) -> Api {
        Api {
            shared,
            shutting_down: AtomicBool::new(false),
            admin_sessions: admin::Sessions::default(),
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
    pub fn handle(&self, raw: &mut tiny_http::Request) -> Reply {
        let req = match Req::read(raw, self.shared.config.max_request_bytes) {
            Ok(r) => r,
            Err(reply) => return reply,
        };
        self.route(&req)
    }

    /// Routes a parsed request.
    pub fn route(&self, req: &Req) -> Reply {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/healthz") => Reply::json(200, &serde_json::json!({"status": "ok"})),
            (_, "/healthz") => Reply::error(405, "method_not_allowed", "use GET"),
            ("GET", "/readyz") => metrics::readyz(self),
            ("GET", "/metrics") => metrics::metrics(self, req),
            ("GET", "/client.js") => {
                Reply::with_type(200, "text/javascript; charset=utf-8", CLIENT_JS.into())
            }
            (_, p) if p == "/admin" || p.starts_with("/admin/") => admin::handle(self, req),
            _ => Reply::error(
                404,
                "not_found",
                &format!("no route for {} {}", req.method, req.path),
            ),
        }
    }
}

/// The listening HTTP server and its handler threads.
pub struct HttpServer {
    server: Arc<tiny_http::Server>,
    threads: Vec<JoinHandle<()>>,
    addr: SocketAddr,
}

impl HttpServer {
    /// Binds `listen` and starts the handler threads.
    pub fn start(listen: &str, api: Arc<Api>) -> Result<HttpServer> {
        let server = tiny_http::Server::http(listen).map_err(|e| {
            Error::invalid(
                "--listen",
                format!("cannot listen on {listen}: {e}; is another errand running there?"),
            )
        })?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| Error::invalid("--listen", "not an IP address"))?;
        let server = Arc::new(server);
        let threads = (0..HANDLER_THREADS)
            .map(|i| {
                let server = server.clone();
                let api = api.clone();
                std::thread::Builder::new()
                    .name(format!("errand-http-{i}"))
                    .spawn(move || {
                        while let Ok(mut req) = server.recv() {
                            let reply = api.handle(&mut req);
                            let _ = req.respond(reply.into_response());
                        }
                    })
                    .map_err(Error::Io)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(HttpServer {
            server,
            threads,
            addr,
        })
    }

    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and joins the handler threads.
    pub fn stop(self) {
        for _ in &self.threads {
            self.server.unblock();
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}
