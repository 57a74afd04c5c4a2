//! Browser access (SPEC §10): an HTTP listener beside the TCP one, serving the web
//! client at `/` and the same JSON conversation over a WebSocket at `/ws`, to the same
//! `ChatServer`.
//!
//! The listener is an actix-web `HttpServer` on the actor system the rest of the server
//! runs on; its workers are arbiters of that system, one per core. A WebSocket is read
//! on the worker that owns its connection and runs the TCP connections' `Session` (on
//! the session arbiters), through a transport of its own. What is decided here is kept
//! in plain, unit-tested pieces:
//!
//! - [`assets`]: the embedded client and how it is served;
//! - [`origin`]: which pages may open the WebSocket (`--allowed-origins`);
//! - [`client_ip`]: whose address a connection counts as (`--trusted-proxies`);
//! - [`ws_frames`]: WebSocket messages ↔ the payloads and frames the session speaks,
//!   with the `--max-frame` check and the back-pressure of a TCP socket;
//! - [`ws`]: the `/ws` route itself: the origin check before the upgrade, then the
//!   connection handed to a `Session` (the TCP one, over a WebSocket transport).

pub mod assets;
pub mod client_ip;
pub mod origin;
pub mod ws;
pub mod ws_frames;

use std::io;
use std::net::{IpAddr, TcpListener as StdListener};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Extensions;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use tokio_util::sync::CancellationToken;

pub use client_ip::canonical as canonical_ip;
pub use origin::{BadOrigin, Origin};

use crate::server::config::{ConfigError, ServerConfig};
use crate::server::listener::Sessions;

/// How long a browser may take to send its request headers, and how long an idle
/// keep-alive connection (between page loads) stays open.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// HTTP connections per worker beyond its share of `--max-conns`: the page and its
/// files are fetched over a few connections of their own before the WebSocket opens.
const SPARE_HTTP_CONNECTIONS: usize = 256;

/// What the gateway needs to know, from the command line.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// The scheme the page is served with: `http`, or `https` with `--http-tls`.
    pub scheme: &'static str,
    pub max_frame: usize,
    pub allowed_origins: Vec<Origin>,
    pub trusted_proxies: Vec<IpAddr>,
}

impl HttpSettings {
    /// The settings in `config` (already validated).
    pub fn from_config(config: &ServerConfig) -> Result<HttpSettings, ConfigError> {
        Ok(HttpSettings {
            scheme: if config.http_tls { "https" } else { "http" },
            max_frame: config.max_frame,
            allowed_origins: config.allowed_origins()?,
            trusted_proxies: config.trusted_proxies()?,
        })
    }
}

/// What the `/ws` route needs beyond the request; shared by the workers.
pub struct Gateway {
    pub settings: HttpSettings,
    /// Starts sessions like the TCP and TLS listeners do: the same ids, arbiters and
    /// connection slots (`--max-conns`, `--max-conns-per-ip`).
    pub sessions: Sessions,
}

impl Gateway {
    pub fn new(settings: HttpSettings, sessions: Sessions) -> Self {
        Gateway { settings, sessions }
    }
}

/// Records each HTTP connection's socket, so that the `/ws` route can cut it (see
/// [`ws::SocketReset`]).
fn record_socket(connection: &dyn std::any::Any, data: &mut Extensions) {
    use actix_tls::accept::rustls_0_23::TlsStream;
    use actix_web::rt::net::TcpStream;
    let fd = if let Some(stream) = connection.downcast_ref::<TcpStream>() {
        stream.as_raw_fd()
    } else if let Some(stream) = connection.downcast_ref::<TlsStream<TcpStream>>() {
        stream.get_ref().0.as_raw_fd()
    } else {
        return;
    };
    data.insert(ws::OpenSocket::new(fd));
}

/// Starts serving `listener` on the running actor system, with `workers` worker
/// arbiters, over TLS with `tls` (`--http-tls`: the TLS listener's configuration, so a
/// reloaded certificate serves both); it stops accepting when `stop` is cancelled (the
/// graceful shutdown), and ends with the system. Connections already open are left to
/// the shutdown, which tells their sessions and then stops the system.
pub fn start(
    listener: StdListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    gateway: Gateway,
    workers: usize,
    max_connections: usize,
    stop: CancellationToken,
) -> io::Result<()> {
    let gateway = web::Data::new(Arc::new(gateway));
    let assets = web::Data::new(Arc::new(assets::Assets::new()));
    let workers = workers.max(1);
    let per_worker = match max_connections {
        0 => 25_000,
        total => total.div_ceil(workers) + SPARE_HTTP_CONNECTIONS,
    };
    let server = HttpServer::new(move || {
        App::new()
            .app_data(gateway.clone())
            .app_data(assets.clone())
            .route("/ws", web::get().to(ws::upgrade))
            .default_service(web::to(serve_file))
    })
    .workers(workers)
    .max_connections(per_worker)
    .client_request_timeout(REQUEST_TIMEOUT)
    .keep_alive(KEEP_ALIVE)
    .disable_signals()
    .on_connect(record_socket);
    let server = match tls {
        Some(config) => server.listen_rustls_0_23(listener, (*config).clone())?,
        None => server.listen(listener)?,
    }
    .run();
    let handle = server.handle();
    actix::spawn(async move {
        if let Err(err) = server.await {
            log::error!("the HTTP listener failed: {err}");
        }
    });
    actix::spawn(async move {
        stop.cancelled().await;
        handle.pause().await;
        log::info!("stopped accepting HTTP connections");
    });
    Ok(())
}

async fn serve_file(req: HttpRequest, assets: web::Data<Arc<assets::Assets>>) -> HttpResponse {
    assets.respond(&req)
}
