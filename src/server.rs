//! `errand serve`: open the database, start the engine and the HTTP API, and stop both
//! cleanly when told to (SIGTERM/SIGINT in the binary, a channel in tests).

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;

use crate::api::{Api, HttpServer};
use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::store::Store;

/// True when every address `listen` resolves to is a loopback address.
pub fn is_loopback(listen: &str) -> Result<bool> {
    let addrs: Vec<SocketAddr> = listen
        .to_socket_addrs()
        .map_err(|e| {
            Error::invalid(
                "--listen",
                format!("{listen:?} is not an address: {e}; use HOST:PORT such as 127.0.0.1:8717"),
            )
        })?
        .collect();
    Ok(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()))
}

/// A running errand: engine plus HTTP API.
pub struct Server {
    pub engine: Engine,
    pub http: HttpServer,
    pub api: Arc<Api>,
}

impl Server {
    /// Checks the configuration, opens the database, recovers leases, starts the engine
    /// and binds the API.
    pub fn start(config: Config, clock: SharedClock) -> Result<Server> {
        if config.api_token.is_none() && !is_loopback(&config.listen)? {
            return Err(Error::invalid(
                "--listen",
                format!(
                    "{} is not a loopback address and no API token is set; set ERRAND_API_TOKEN (or api_token in the config) or listen on 127.0.0.1",
                    config.listen
                ),
            ));
        }
        let store = Arc::new(Store::open(&config.db, config.synchronous)?);
        let config = Arc::new(config);
        let engine = Engine::start(store.clone(), config.clone(), clock.clone())?;
        let api = Arc::new(Api::new(engine.shared().clone()));
        let http = HttpServer::start(&config.listen, api.clone())?;
        log::info!(
            "errand listening on http://{} (database {})",
            http.addr(),
            store.path().display()
        );
        Ok(Server { engine, http, api })
    }

    /// Stops taking requests (503 while draining), lets in-flight calls finish within the
    /// configured grace, writes their outcomes and stops.
    pub fn stop(self) {
        self.api.begin_shutdown();
        let grace = Duration::from_millis(self.api.shared.config.shutdown_grace_ms);
        self.engine.shutdown(grace);
        self.http.stop();
    }
}

/// Runs errand until `shutdown` receives (or is closed).
pub fn serve(config: Config, shutdown: Receiver<()>) -> Result<()> {
    let server = Server::start(config, Arc::new(SystemClock))?;
    let _ = shutdown.recv();
    log::info!("shutting down");
    server.stop();
    Ok(())
}
