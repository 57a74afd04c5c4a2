//! What a session reads from and writes to, whatever carries it: plain TCP today, TLS
//! and WebSocket through the same seam.
//!
//! A [`Transport`] is handed to a `Session` and opened on the session's own thread into
//! a stream of [`Inbound`] items (the session polls it there) and a byte writer, which
//! the session's writer task drives on the I/O runtime (`server::outbound`). Whatever
//! the transport, the writer is given length-prefixed frames (§2); a transport whose
//! wire has messages of its own (WebSocket) unframes them in its writer.

use std::io;
use std::os::unix::io::RawFd;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWrite;
use tokio_util::codec::FramedRead;

use crate::codec::{FrameCodec, FrameError};
use crate::server::outbound::runtime;

/// Initial read buffer per connection; it grows only for a frame that needs it, so an
/// idle connection costs little.
const READ_BUFFER: usize = 512;

/// One thing read from a connection.
#[derive(Debug)]
pub enum Inbound {
    /// One frame's payload (a JSON object, if the client is well-behaved).
    Payload(Bytes),
    /// A message the wire carried as binary (WebSocket): answered `bad_request`.
    Binary,
    /// A frame longer than `--max-frame`: answered `frame_too_large`, then closed.
    TooLarge { len: usize, max: usize },
    /// Reading failed; the connection is over.
    Failed(io::Error),
}

impl From<Result<Bytes, FrameError>> for Inbound {
    fn from(item: Result<Bytes, FrameError>) -> Inbound {
        match item {
            Ok(payload) => Inbound::Payload(payload),
            Err(FrameError::TooLarge { len, max }) => Inbound::TooLarge { len, max },
            Err(FrameError::Io(err)) => Inbound::Failed(err),
        }
    }
}

/// What a session reads, polled on its own thread.
pub type InboundStream = Pin<Box<dyn Stream<Item = Inbound>>>;

/// What a session's writer writes: length-prefixed frames, on the I/O runtime.
pub type WireWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// An opened transport.
pub struct Opened {
    pub inbound: InboundStream,
    pub writer: WireWriter,
    /// The socket's descriptor, to reset it (rather than drain it) when a reader that
    /// stopped reading is dropped; `None` when the transport has no socket of its own.
    pub reset: Option<RawFd>,
}

/// A connection ready for a session.
pub trait Transport: Send {
    /// Opens the connection on the calling (session's) thread; payloads over
    /// `max_frame` bytes are refused.
    fn open(self: Box<Self>, max_frame: usize) -> io::Result<Opened>;
}

/// A plain TCP connection, as accepted.
pub struct Tcp(pub std::net::TcpStream);

impl Transport for Tcp {
    fn open(self: Box<Self>, max_frame: usize) -> io::Result<Opened> {
        use std::os::unix::io::AsRawFd;
        let socket = runtime::register_tcp(self.0)?;
        let reset = Some(socket.as_raw_fd());
        let (reader, writer) = socket.into_split();
        Ok(Opened {
            inbound: frames(reader, max_frame),
            writer: Box::new(writer),
            reset,
        })
    }
}

/// A TLS connection whose handshake is done (on the I/O runtime).
pub struct Tls(pub tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl Transport for Tls {
    fn open(self: Box<Self>, max_frame: usize) -> io::Result<Opened> {
        use std::os::unix::io::AsRawFd;
        let reset = Some(self.0.get_ref().0.as_raw_fd());
        let (reader, writer) = tokio::io::split(self.0);
        Ok(Opened {
            inbound: frames(reader, max_frame),
            writer: Box::new(writer),
            reset,
        })
    }
}

/// The frames read from a byte stream, each checked against `max_frame`.
fn frames(reader: impl tokio::io::AsyncRead + 'static, max_frame: usize) -> InboundStream {
    Box::pin(
        FramedRead::with_capacity(reader, FrameCodec::new(max_frame), READ_BUFFER)
            .map(Inbound::from),
    )
}
