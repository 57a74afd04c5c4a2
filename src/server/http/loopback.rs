//! For now, a WebSocket connection is served by the TCP session itself: the gateway
//! opens a loopback connection to the server's own TCP listener and carries each text
//! message across as one frame, and each frame back as one text message.
//!
//! This reuses every rule of the session unchanged (greeting and pause, limits,
//! timeouts, kick, shutdown, the slow-reader policy: a tab that stops reading blocks
//! this bridge, which stops reading the loopback connection, whose session is then
//! dropped by `--send-queue` like any TCP reader). What it cannot carry is the client's
//! address: `ChatServer` sees the loopback address, so identification by IP and the
//! per-address limits treat every web user as one. It goes once the session takes any
//! transport: the [`WsConnection`] handed here is exactly what that session needs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{BufMut, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::TcpSocket;

use super::ws::WsConnection;
use super::ws_frames::InboundError;
use crate::codec::HEADER_LEN;
use crate::log_noise;
use crate::protocol::{ErrorCode, ServerMessage};
use crate::server::logging::Noise;

/// Receive buffer of the loopback connection: small, so that a tab that stops reading
/// stalls the session after little more than `--send-queue`, not after megabytes of
/// kernel buffers.
const LOOPBACK_RECEIVE_BUFFER: u32 = 64 * 1024;

/// Serves `connection` on the current worker through the TCP listener at `tcp`.
pub fn run(connection: WsConnection, tcp: SocketAddr) {
    actix_web::rt::spawn(bridge(connection, tcp));
}

/// Where to reach a listener bound to `address` from this machine.
fn reachable(address: SocketAddr) -> SocketAddr {
    let ip = match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, address.port())
}

/// A reply from the gateway itself, as a text message.
fn error_message(code: ErrorCode, message: String) -> String {
    serde_json::to_string(&ServerMessage::error(code, message)).unwrap_or_default()
}

async fn bridge(connection: WsConnection, tcp: SocketAddr) {
    let WsConnection {
        number,
        client,
        reader: mut requests,
        mut writer,
        slot: _slot,
        ..
    } = connection;
    let ip = client.ip();
    let target = reachable(tcp);
    let socket = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    };
    let stream = match socket.and_then(|socket| {
        socket.set_recv_buffer_size(LOOPBACK_RECEIVE_BUFFER)?;
        Ok(socket.connect(target))
    }) {
        Ok(connecting) => connecting.await,
        Err(err) => Err(err),
    };
    let stream = match stream {
        Ok(stream) => stream,
        Err(err) => {
            log::error!(
                "WebSocket {number} from {client}: cannot reach the chat at {target}: {err}"
            );
            let reply = error_message(ErrorCode::Internal, "the chat is unavailable".into());
            let _ = writer.write_all(&framed(reply.as_bytes())).await;
            let _ = writer.shutdown().await;
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut from_chat, to_chat) = stream.into_split();
    let mut to_chat = BufWriter::new(to_chat);
    // Replies of the gateway's own (to a binary message, an oversized one) go out
    // beside the session's frames, each a whole message.
    let mut side = writer.side_channel();

    let upstream = async move {
        while let Some(request) = requests.next().await {
            let payload = match request {
                Ok(payload) => payload,
                Err(InboundError::NotText) => {
                    log_noise!(
                        ip,
                        Noise::BadInput,
                        log::Level::Info,
                        "WebSocket {number} from {client}: a message that is not text"
                    );
                    let reply =
                        error_message(ErrorCode::BadRequest, InboundError::NotText.to_string());
                    if side.text(reply).await.is_err() {
                        break;
                    }
                    continue;
                }
                Err(err @ InboundError::TooLarge { .. }) => {
                    log_noise!(
                        ip,
                        Noise::BadInput,
                        log::Level::Warn,
                        "WebSocket {number} from {client}: {err}; closing"
                    );
                    let reply = error_message(ErrorCode::FrameTooLarge, err.to_string());
                    let _ = side.text(reply).await;
                    break;
                }
                Err(err @ InboundError::Broken(_)) => {
                    log_noise!(
                        ip,
                        Noise::Connection,
                        log::Level::Info,
                        "WebSocket {number} from {client}: {err}"
                    );
                    break;
                }
            };
            let sent = async {
                to_chat.write_all(&framed(&payload)).await?;
                to_chat.flush().await
            };
            if sent.await.is_err() {
                break;
            }
        }
        // The session sees the end of input: it delivers what is queued, then closes.
        let _ = to_chat.shutdown().await;
    };

    let downstream = async move {
        use tokio::io::AsyncReadExt;
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            match from_chat.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => {
                    if writer.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                }
                // The session cut the connection (a reader it dropped): cut this one
                // too, by dropping the writer unclosed.
                Err(_) => return,
            }
        }
        let _ = writer.shutdown().await;
    };

    let upstream = std::pin::pin!(upstream);
    let mut downstream = std::pin::pin!(downstream);
    tokio::select! {
        _ = upstream => downstream.await,
        _ = &mut downstream => {}
    }
    log_noise!(
        ip,
        Noise::Connection,
        log::Level::Info,
        "WebSocket {number} from {client} closed"
    );
}

/// `payload` with its length header.
fn framed(payload: &[u8]) -> BytesMut {
    let mut frame = BytesMut::with_capacity(HEADER_LEN + payload.len());
    frame.put_u32(payload.len() as u32);
    frame.extend_from_slice(payload);
    frame
}
