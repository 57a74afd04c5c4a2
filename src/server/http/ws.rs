//! The `/ws` route: the `Origin` rule before anything else (a refused page gets 403
//! and no upgrade), a connection slot from the descriptor budget the TCP listener
//! shares, the upgrade, and then the connection as a [`WsConnection`] handed to a
//! session.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{BorrowedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::Stream;
use tokio::io::AsyncWrite;

use super::client_ip::{canonical, client_ip};
use super::origin::{check_origin, OriginVerdict};
use super::ws_frames::{FrameSizeGuard, WsFrameWriter, WsPayloads};
use super::Gateway;
use crate::log_noise;
use crate::server::limits::ConnectionSlot;
use crate::server::logging::Noise;
use crate::text;

/// The requests of a WebSocket connection: one payload per text message, or why a
/// message gave none. Not `Send`: it reads the connection's socket on the worker that
/// accepted it, so the session that consumes it runs on that worker (the current
/// arbiter), not on one of the TCP session arbiters.
pub type WsReader = WsPayloads<actix_ws::MessageStream, actix_ws::Session>;

/// How long a closing WebSocket may take to queue its close message before the
/// connection is cut (the TCP writer's close deadline is the same).
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// An upgraded WebSocket connection, ready for a session.
pub struct WsConnection {
    /// Numbers the connection in the log.
    pub number: u64,
    /// The client: its address by the `--trusted-proxies` rule, with the port of the
    /// TCP peer (which is the proxy's when there is one).
    pub client: SocketAddr,
    /// The TCP peer, for the log.
    pub peer: SocketAddr,
    pub reader: WsReader,
    pub writer: WsWriter,
    /// This connection's place in the descriptor budget.
    pub slot: ConnectionSlot,
}

/// The open socket of an HTTP connection, recorded when the connection opens; the
/// flag drops with the connection (with the socket itself), so a [`SocketReset`] knows
/// whether its descriptor still means this connection.
pub(super) struct OpenSocket {
    fd: RawFd,
    open: Rc<Cell<bool>>,
}

impl OpenSocket {
    pub(super) fn new(fd: RawFd) -> OpenSocket {
        OpenSocket {
            fd,
            open: Rc::new(Cell::new(true)),
        }
    }
}

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.open.set(false);
    }
}

/// A handle that can cut an HTTP connection at once: the WebSocket equivalent of what
/// the TCP writer does to a reader that stopped reading (a zero linger, so the kernel
/// drops what it still holds, and the connection closed).
///
/// actix-web owns the socket, and a client that reads nothing leaves it waiting on a
/// full send buffer with no timeout of its own, forever. Shutting the socket down makes
/// its next write fail, and actix-web drops the connection.
pub struct SocketReset {
    fd: RawFd,
    /// False once the connection (and its descriptor) is gone. `Rc`, so the handle stays
    /// on the connection's worker thread, where the connection cannot close between
    /// looking at the flag and using the descriptor.
    open: Rc<Cell<bool>>,
}

impl SocketReset {
    fn of(socket: &OpenSocket) -> SocketReset {
        SocketReset {
            fd: socket.fd,
            open: socket.open.clone(),
        }
    }

    /// A handle that does nothing (a connection whose socket is unknown).
    fn none() -> SocketReset {
        SocketReset {
            fd: -1,
            open: Rc::new(Cell::new(false)),
        }
    }

    /// Cuts the connection if it is still open: whatever is unsent is dropped and the
    /// peer gets a reset.
    pub fn reset(&self) {
        if !self.open.get() {
            return;
        }
        // SAFETY: `open` is true, so the connection's extensions (which hold the
        // `OpenSocket`) have not been dropped, and they are dropped with the socket
        // itself, on this thread: the descriptor is this connection's and open.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let socket = socket2::SockRef::from(&fd);
        let _ = socket.set_linger(Some(Duration::ZERO));
        let _ = socket.shutdown(std::net::Shutdown::Both);
    }
}

/// Where a session's writer puts its length-prefixed frames; each leaves as one text
/// message. It behaves like the write half of a TCP socket: a write waits while the
/// client is not reading (actix-ws's queue is bounded), `shutdown` sends a normal close
/// and completes within [`CLOSE_GRACE`] (cutting the connection if the client does not
/// take it), and dropping it without `shutdown` cuts the connection, as the TCP writer
/// does to a reader it drops.
pub struct WsWriter {
    frames: WsFrameWriter<actix_ws::Session>,
    reset: SocketReset,
    /// When `shutdown` gives up on a client that does not read.
    close_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    shut_down: bool,
}

impl WsWriter {
    fn new(session: actix_ws::Session, reset: SocketReset) -> WsWriter {
        WsWriter {
            frames: WsFrameWriter::new(session),
            reset,
            close_deadline: None,
            shut_down: false,
        }
    }
}

impl WsWriter {
    /// Another handle on the connection's message queue, for messages of the gateway's
    /// own (whole messages, so they never split a frame of the writer's).
    pub(super) fn side_channel(&self) -> actix_ws::Session {
        self.frames.sink().clone()
    }
}

impl AsyncWrite for WsWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.frames).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.frames).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.shut_down {
            return Poll::Ready(Ok(()));
        }
        if let Poll::Ready(result) = Pin::new(&mut this.frames).poll_shutdown(cx) {
            this.shut_down = true;
            return Poll::Ready(result);
        }
        let deadline = this
            .close_deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(CLOSE_GRACE)));
        if deadline.as_mut().poll(cx).is_ready() {
            this.reset.reset();
            this.shut_down = true;
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    }
}

impl Drop for WsWriter {
    fn drop(&mut self) {
        if !self.shut_down {
            self.reset.reset();
            return;
        }
        // The close is queued; a client that never reads it would hold the connection
        // (and its buffers) forever.
        let reset = SocketReset {
            fd: self.reset.fd,
            open: self.reset.open.clone(),
        };
        actix_web::rt::spawn(async move {
            tokio::time::sleep(CLOSE_GRACE).await;
            reset.reset();
        });
    }
}

/// `GET /ws`.
pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    gateway: web::Data<Arc<Gateway>>,
) -> HttpResponse {
    let settings = &gateway.settings;
    let peer = req
        .peer_addr()
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let header_values = |name: header::HeaderName| -> Vec<&str> {
        req.headers()
            .get_all(name)
            .filter_map(|value| value.to_str().ok())
            .collect()
    };
    let forwarded_for = header_values(header::X_FORWARDED_FOR);
    let ip = client_ip(peer.ip(), &forwarded_for, &settings.trusted_proxies);
    let client = SocketAddr::new(ip, peer.port());

    // A proxy we trust that ends TLS for us says so; the page's origin is then https.
    let peer_trusted = settings.trusted_proxies.contains(&canonical(peer.ip()));
    let forwarded_proto = header_values(header::HeaderName::from_static("x-forwarded-proto"))
        .first()
        .map(|proto| proto.trim().to_ascii_lowercase());
    let scheme = match forwarded_proto.as_deref() {
        Some(proto @ ("http" | "https")) if peer_trusted => proto,
        _ => settings.scheme,
    };
    let origin = req
        .headers()
        .get(header::ORIGIN)
        // A header that is not text is no origin we could have allowed.
        .map(|value| value.to_str().unwrap_or("\u{fffd}"));
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|value| value.to_str().ok());
    let verdict = check_origin(origin, scheme, host, &settings.allowed_origins);
    if verdict == OriginVerdict::Refused {
        log_noise!(
            ip,
            Noise::BadInput,
            log::Level::Warn,
            "WebSocket from {client} refused: origin {} is not allowed (see --allowed-origins)",
            text::quote(origin.unwrap_or_default())
        );
        return HttpResponse::Forbidden()
            .insert_header((header::CONTENT_TYPE, "text/plain; charset=utf-8"))
            .body("this page's origin may not open the chat (see --allowed-origins)\n");
    }

    let Some(slot) = gateway.slots.take() else {
        log_noise!(
            ip,
            Noise::Limit,
            log::Level::Warn,
            "WebSocket from {client} refused: no descriptors left for more connections"
        );
        return HttpResponse::ServiceUnavailable().finish();
    };
    let reset = req
        .conn_data::<OpenSocket>()
        .map_or_else(SocketReset::none, SocketReset::of);

    // The connection's bytes pass the frame-size guard before actix-ws decodes them.
    let tripped = Rc::new(Cell::new(false));
    let guarded = FrameSizeGuard::new(body.into_inner(), settings.max_frame, tripped.clone());
    let guarded: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> = Box::pin(guarded);
    let mut guarded = Payload::from(guarded);
    let body = match web::Payload::from_request(&req, &mut guarded).await {
        Ok(body) => body,
        Err(err) => return err.error_response(),
    };
    let (response, session, messages) = match actix_ws::handle(&req, body) {
        Ok(parts) => parts,
        Err(err) => return err.error_response(),
    };
    let messages = messages.max_frame_size(settings.max_frame);
    let connection = WsConnection {
        number: gateway.next_connection(),
        client,
        peer,
        reader: WsPayloads::new(messages, session.clone(), settings.max_frame, tripped),
        writer: WsWriter::new(session, reset),
        slot,
    };
    log_noise!(
        ip,
        Noise::Connection,
        log::Level::Info,
        "WebSocket {} from {}{}",
        connection.number,
        client,
        via(client.ip(), peer)
    );
    super::loopback::run(connection, gateway.tcp_address);
    response
}

/// ` (via PEER)` when the connection came through a proxy.
fn via(client: IpAddr, peer: SocketAddr) -> String {
    if canonical(peer.ip()) == client {
        String::new()
    } else {
        format!(" (via {peer})")
    }
}
