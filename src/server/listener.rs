//! The listening socket: binding with a fallback to the next ports, and the accept loop
//! that hands each connection to a `Session` on one of the session arbiters.
//!
//! Every connection costs a file descriptor: the accept loop never holds more than
//! [`ConnectionSlots`](crate::server::limits::ConnectionSlots) allows, so the state
//! files and the users already in always have descriptors to spare.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::dev::ArbiterHandle;
use actix::prelude::*;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::actors::chat_server::ChatServer;
use crate::actors::session::{Session, SessionSettings};
use crate::log_noise;
use crate::server::limits::{ConnectionSlot, ConnectionSlots};
use crate::server::logging::Noise;
use crate::server::outbound::{runtime, SessionId};
use crate::server::tls::HANDSHAKE_TIMEOUT;
use crate::server::transport::{Tcp, Tls, Transport};

/// First pause after an accept error; it doubles up to [`MAX_ACCEPT_BACKOFF`]. Running
/// out of file descriptors is the usual cause, and it passes as connections close.
const FIRST_ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Connections the kernel may queue before the accept loop takes them. The usual 128
/// overflows in a reconnect storm, and an overflowing queue drops connection attempts
/// that clients then retry only after a second. The kernel caps it at `somaxconn`.
const LISTEN_BACKLOG: i32 = 1024;

/// Binds `host:port` and listens.
fn bind(host: IpAddr, port: u16) -> io::Result<StdListener> {
    use socket2::{Domain, Socket, Type};
    let address = SocketAddr::new(host, port);
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    // As std does: a restarted server can bind while old connections linger in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Why no port could be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot bind {host}:{port}: {source}")]
    Bind {
        host: IpAddr,
        port: u16,
        source: io::Error,
    },
    #[error("no free port between {first} and {last} on {host}")]
    NoFreePort { host: IpAddr, first: u16, last: u16 },
}

/// A bound listener, and the ports tried before it that were busy.
pub struct Bound {
    pub listener: StdListener,
    pub busy: Vec<u16>,
}

/// Binds `host:port`, or the next free port among `attempts` (port 0: the OS picks).
pub fn bind_with_fallback(host: IpAddr, port: u16, attempts: u16) -> Result<Bound, BindError> {
    let failed = |port, source| BindError::Bind { host, port, source };
    if port == 0 {
        return bind(host, 0)
            .map(|listener| Bound {
                listener,
                busy: Vec::new(),
            })
            .map_err(|source| failed(0, source));
    }
    let mut busy = Vec::new();
    for offset in 0..attempts {
        let Some(candidate) = port.checked_add(offset) else {
            break;
        };
        match bind(host, candidate) {
            Ok(listener) => return Ok(Bound { listener, busy }),
            Err(err) if err.kind() == io::ErrorKind::AddrInUse => busy.push(candidate),
            Err(err) => return Err(failed(candidate, err)),
        }
    }
    Err(BindError::NoFreePort {
        host,
        first: port,
        last: port.saturating_add(attempts.saturating_sub(1)),
    })
}

/// `ports` as ranges: `9090-9092, 9095`.
pub fn describe_ports(ports: &[u16]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ports.len() {
        let start = ports[i];
        let mut end = start;
        while i + 1 < ports.len() && ports[i + 1] == end.wrapping_add(1) {
            end = ports[i + 1];
            i += 1;
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(", ")
}

/// What the accepted connections need besides their socket: where sessions run, who
/// they talk to, their settings, the slots they take, and ids. Shared by every
/// listener, so session ids are unique across them.
#[derive(Clone)]
pub struct Sessions {
    pub arbiters: Arc<[ArbiterHandle]>,
    pub server: Addr<ChatServer>,
    pub settings: Arc<SessionSettings>,
    pub slots: ConnectionSlots,
    pub next_id: Arc<AtomicU64>,
}

impl Sessions {
    /// Starts a session for `transport` on the next arbiter, holding `slot`; its id, or
    /// `None` when there is no arbiter to run it (the connection is then dropped).
    pub fn start(
        &self,
        peer: SocketAddr,
        transport: Box<dyn Transport>,
        slot: ConnectionSlot,
    ) -> Option<SessionId> {
        let id: SessionId = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let Some(arbiter) = self.arbiters.get(id as usize % self.arbiters.len().max(1)) else {
            log::error!("no session arbiter to run connection {id}");
            return None;
        };
        let server = self.server.clone();
        let settings = self.settings.clone();
        Session::start_in_arbiter(arbiter, move |_| {
            Session::new(id, peer, transport, server, settings, slot)
        });
        Some(id)
    }
}

/// What a listener speaks.
#[derive(Clone)]
pub enum Wire {
    /// The frames of §2 on plain TCP.
    Plain,
    /// The same frames inside TLS.
    Tls(Arc<rustls::ServerConfig>),
}

/// Accepts connections until `stop` is cancelled, spreading sessions round-robin over
/// the session arbiters. Accept errors back off and retry; they never end the loop. A
/// connection takes its slot (against `--max-conns` and `--max-conns-per-ip`) before
/// anything else, TLS handshake included; a TLS handshake runs on the I/O runtime and
/// is dropped if it takes longer than [`HANDSHAKE_TIMEOUT`].
pub async fn accept_loop(
    listener: TcpListener,
    wire: Wire,
    sessions: Sessions,
    stop: CancellationToken,
) {
    let mut backoff = FIRST_ACCEPT_BACKOFF;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff = FIRST_ACCEPT_BACKOFF;
                pair
            }
            Err(err) => {
                log::error!("accept failed: {err}; retrying in {backoff:?}");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                continue;
            }
        };
        let slot = match sessions.slots.take(peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                log_noise!(
                    peer.ip(),
                    Noise::Limit,
                    log::Level::Warn,
                    "connection from {peer} refused: {refusal}"
                );
                drop(stream);
                continue;
            }
        };
        if let Err(err) = stream.set_nodelay(true) {
            log::debug!("TCP_NODELAY on {peer}: {err}");
        }
        // The socket moves to the I/O runtime's reactor as a plain std socket.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(err) => {
                log::error!("connection from {peer} unusable: {err}");
                continue;
            }
        };
        match &wire {
            Wire::Plain => {
                sessions.start(peer, Box::new(Tcp(stream)), slot);
            }
            Wire::Tls(config) => {
                let handshake = tls_handshake(stream, peer, config.clone(), sessions.clone(), slot);
                match runtime::io_runtime() {
                    Some(runtime) => drop(runtime.spawn(handshake)),
                    None => drop(actix::spawn(handshake)),
                }
            }
        }
    }
    log::info!("stopped accepting connections");
}

/// Completes a TLS handshake (or gives up after [`HANDSHAKE_TIMEOUT`]), then starts the
/// connection's session.
async fn tls_handshake(
    stream: std::net::TcpStream,
    peer: SocketAddr,
    config: Arc<rustls::ServerConfig>,
    sessions: Sessions,
    slot: ConnectionSlot,
) {
    let stream = match runtime::register_tcp(stream) {
        Ok(stream) => stream,
        Err(err) => {
            log::error!("connection from {peer} unusable: {err}");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            sessions.start(peer, Box::new(Tls(tls)), slot);
        }
        Ok(Err(err)) => log_noise!(
            peer.ip(),
            Noise::BadInput,
            log::Level::Info,
            "TLS handshake with {peer} failed: {}",
            crate::text::quote(&err.to_string())
        ),
        Err(_) => log_noise!(
            peer.ip(),
            Noise::Connection,
            log::Level::Info,
            "TLS handshake with {peer} not done within {HANDSHAKE_TIMEOUT:?}; dropped"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_ports_read_as_ranges() {
        assert_eq!(describe_ports(&[9090, 9091, 9092, 9095]), "9090-9092, 9095");
        assert_eq!(describe_ports(&[7]), "7");
        assert_eq!(describe_ports(&[]), "");
    }

    #[test]
    fn a_taken_port_moves_to_the_next() {
        let host: IpAddr = "127.0.0.1".parse().unwrap();
        let first = bind_with_fallback(host, 0, 1).unwrap().listener;
        let taken = first.local_addr().unwrap().port();
        if taken > u16::MAX - 5 {
            return;
        }
        match bind_with_fallback(host, taken, 5) {
            Ok(second) => {
                assert!(second.listener.local_addr().unwrap().port() > taken);
                assert_eq!(second.busy.first(), Some(&taken));
            }
            // The next ports may happen to be taken too; never the same one.
            Err(reason) => assert!(reason.to_string().contains("no free port"), "{reason}"),
        }
        assert!(bind_with_fallback(host, taken, 1).is_err());
    }
}
