//! The `/ws` route and the WebSocket as a session transport.
//!
//! The route applies the `Origin` rule before anything else (a refused page gets 403
//! and no upgrade), takes a connection slot as the TCP listener does (`--max-conns`,
//! `--max-conns-per-ip`, descriptors; 503 when there is none), upgrades, and starts a `Session` for the connection like the TCP accept loop
//! does, with a [`WebSocket`] transport and the client's address by the
//! `--trusted-proxies` rule.
//!
//! actix-web reads the connection on the HTTP worker that accepted it, and what it
//! reads cannot leave that thread; the session runs on a session arbiter. So a small
//! task on the worker decodes the messages ([`WsPayloads`]) and hands them to the
//! session over a channel of one, which keeps the session's pace: while the session
//! reads nothing (paused, or busy with a request), the task waits, actix-web's buffer
//! fills and the socket is not read, as for TCP. Frames the other way go from the
//! session's writer through [`WsWriter`] into actix-ws's bounded queue; when the
//! writer drops a reader that stopped reading, the same task cuts the connection.

use std::cell::Cell;
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
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWrite;
use tokio::sync::{mpsc, oneshot};

use super::client_ip::{canonical, client_ip};
use super::origin::{check_origin, OriginVerdict};
use super::ws_frames::{FrameSizeGuard, WsFrameWriter, WsPayloads};
use super::Gateway;
use crate::log_noise;
use crate::server::logging::Noise;
use crate::server::transport::{Inbound, Opened, Transport};
use crate::text;

/// What the worker decodes for a connection: actix-ws's messages, read through the
/// frame-size guard, answering pings through the connection's queue.
type WsReader = WsPayloads<actix_ws::MessageStream, actix_ws::Session>;

/// Requests decoded ahead of the session: one keeps both sides busy; more would only
/// be read ahead of a session that is not reading.
const INBOUND_QUEUE: usize = 1;

/// How long a closed connection may take to send its close message before it is cut
/// (a client that reads nothing would keep it, and its buffers, forever).
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// A WebSocket connection as a session's transport (see the module documentation).
pub struct WebSocket {
    inbound: mpsc::Receiver<Inbound>,
    writer: WsWriter,
}

impl Transport for WebSocket {
    fn open(self: Box<Self>, _max_frame: usize) -> io::Result<Opened> {
        // The worker's task applies `--max-frame` (it was given it at the upgrade).
        let WebSocket {
            mut inbound,
            writer,
        } = *self;
        let inbound = futures_util::stream::poll_fn(move |cx| inbound.poll_recv(cx));
        Ok(Opened {
            inbound: Box::pin(inbound),
            writer: Box::new(writer),
            // The socket is actix-web's, on another thread: `WsWriter` has it cut.
            reset: None,
        })
    }
}

/// Where a session's writer puts its length-prefixed frames; each leaves as one text
/// message. It behaves like the write half of a TCP socket: a write waits while the
/// client is not reading (actix-ws's queue is bounded), `shutdown` sends a normal
/// close, and dropping it without `shutdown` has the connection cut, as the writer
/// resets a TCP reader it drops.
pub struct WsWriter {
    frames: WsFrameWriter<actix_ws::Session>,
    /// Tells the connection's task how the writer ended: `true` after a clean shutdown.
    ended: Option<oneshot::Sender<bool>>,
    shut_down: bool,
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
        let done = Pin::new(&mut self.frames).poll_shutdown(cx);
        if done.is_ready() {
            self.shut_down = true;
        }
        done
    }
}

impl Drop for WsWriter {
    fn drop(&mut self) {
        if let Some(ended) = self.ended.take() {
            let _ = ended.send(self.shut_down);
        }
    }
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
/// the writer does to a TCP reader that stopped reading (a zero linger, so the kernel
/// drops what it still holds, and the connection closed).
///
/// actix-web owns the socket, and a client that reads nothing leaves it waiting on a
/// full send buffer with no timeout of its own, forever. Shutting the socket down makes
/// its next write fail, and actix-web drops the connection.
struct SocketReset {
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
    fn reset(&self) {
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

/// The connection's task on its HTTP worker: hands the decoded requests to the
/// session until either side ends, then cuts the connection if the writer was dropped
/// (or if the client has not taken the close within [`CLOSE_GRACE`]).
async fn serve_connection(
    mut reader: WsReader,
    inbound: mpsc::Sender<Inbound>,
    writer_ended: oneshot::Receiver<bool>,
    reset: SocketReset,
) {
    loop {
        let item = tokio::select! {
            item = reader.next() => item,
            // The session has gone.
            _ = inbound.closed() => break,
        };
        // The end of the messages (a close, or the connection gone): the session sees
        // the end of its input, delivers what is queued and closes.
        let Some(item) = item else { break };
        let last = matches!(item, Inbound::TooLarge { .. } | Inbound::Failed(_));
        if inbound.send(item).await.is_err() || last {
            break;
        }
    }
    // Dropping the reader drops its handle on the connection's queue, so the response
    // ends once the writer's is gone too.
    drop(reader);
    drop(inbound);
    match writer_ended.await {
        Ok(true) => {
            tokio::time::sleep(CLOSE_GRACE).await;
            reset.reset();
        }
        _ => reset.reset(),
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

    let slot = match gateway.sessions.slots.take(ip) {
        Ok(slot) => slot,
        Err(refusal) => {
            log_noise!(
                ip,
                Noise::Limit,
                log::Level::Warn,
                "WebSocket from {client} refused: {refusal}"
            );
            return HttpResponse::ServiceUnavailable()
                .insert_header((header::CONTENT_TYPE, "text/plain; charset=utf-8"))
                .body("too many connections; try again later\n");
        }
    };
    let reset = req
        .conn_data::<OpenSocket>()
        .map_or_else(SocketReset::none, SocketReset::of);

    // The connection's bytes pass the frame-size guard before actix-ws decodes them.
    let refused = Rc::new(Cell::new(None));
    let guarded = FrameSizeGuard::new(body.into_inner(), settings.max_frame, refused.clone());
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
    let reader = WsPayloads::new(messages, session.clone(), settings.max_frame, refused);
    let (inbound, inbound_receiver) = mpsc::channel(INBOUND_QUEUE);
    let (ended, writer_ended) = oneshot::channel();
    let transport = WebSocket {
        inbound: inbound_receiver,
        writer: WsWriter {
            frames: WsFrameWriter::new(session),
            ended: Some(ended),
            shut_down: false,
        },
    };
    actix_web::rt::spawn(serve_connection(reader, inbound, writer_ended, reset));
    if let Some(id) = gateway.sessions.start(client, Box::new(transport), slot) {
        log_noise!(
            ip,
            Noise::Connection,
            log::Level::Info,
            "session {id} is a WebSocket from {client}{}",
            via(ip, peer)
        );
    }
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
