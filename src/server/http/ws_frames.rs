//! WebSocket messages ↔ the payloads and frames the session logic speaks, so that a
//! WebSocket connection runs the very same session as a TCP one (SPEC §10: one text
//! message is one JSON object, in both directions, no length header).
//!
//! - [`FrameSizeGuard`] watches the raw bytes of the upgraded connection and refuses a
//!   WebSocket frame whose header announces more than `--max-frame`, *before* its body
//!   is buffered. (actix-ws's decoder checks the size only once the whole frame has
//!   arrived, so on its own it would buffer whatever length a client announces.)
//! - [`WsPayloads`] turns actix-ws's message stream into the session's [`Inbound`]
//!   items: a text message is a payload; a binary message, or text that is not UTF-8,
//!   is [`Inbound::Binary`] (answered `bad_request`, the connection stays); a message
//!   over `--max-frame` is [`Inbound::TooLarge`] (answered `frame_too_large`, then
//!   closed). Fragmented messages are put together within the same limit; pings are
//!   answered; a close ends the stream.
//! - [`WsFrameWriter`] is an [`AsyncWrite`] that takes the writer's length-prefixed
//!   frames and sends each payload as one text message. It accepts bytes only when
//!   actix-ws's bounded queue has room, so a tab that stops reading blocks the writer
//!   exactly like a TCP socket that stops draining, and `--send-queue` applies as it
//!   does to TCP.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_web::error::PayloadError;
use actix_ws::{CloseCode, Item, Message, ProtocolError};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::{Sink, Stream};
use tokio::io::AsyncWrite;

use crate::codec::HEADER_LEN;
use crate::server::transport::Inbound;

/// The length a refused frame announced, set by [`FrameSizeGuard`] for [`WsPayloads`].
pub type Refused = Rc<Cell<Option<u64>>>;

/// Where [`FrameSizeGuard`] is in the byte stream.
#[derive(Debug)]
enum GuardState {
    /// Collecting a frame header (2 to 14 bytes).
    Header { bytes: [u8; 14], have: usize },
    /// Skipping this many payload bytes of an accepted frame.
    Payload { remaining: u64 },
}

/// A pass-through over the raw bytes a WebSocket client sends, which reads every frame
/// header and ends the stream with an error as soon as one announces a data frame
/// longer than the limit. The bytes themselves go on unchanged (no copy).
pub struct FrameSizeGuard<S> {
    inner: S,
    max_frame: usize,
    state: GuardState,
    /// Set when a frame is refused, for [`WsPayloads`] to tell the end apart from a
    /// broken connection.
    refused: Refused,
}

impl<S> FrameSizeGuard<S> {
    /// Guards `inner`; `refused` is set to the announced length when a frame is refused.
    pub fn new(inner: S, max_frame: usize, refused: Refused) -> FrameSizeGuard<S> {
        FrameSizeGuard {
            inner,
            max_frame,
            state: GuardState::Header {
                bytes: [0; 14],
                have: 0,
            },
            refused,
        }
    }

    /// Follows `chunk` through headers and payloads; the announced length when a header
    /// announces too much.
    fn inspect(&mut self, mut chunk: &[u8]) -> Result<(), u64> {
        while !chunk.is_empty() {
            match &mut self.state {
                GuardState::Payload { remaining } => {
                    let skip = (*remaining).min(chunk.len() as u64);
                    *remaining -= skip;
                    chunk = &chunk[skip as usize..];
                    if *remaining == 0 {
                        self.state = GuardState::Header {
                            bytes: [0; 14],
                            have: 0,
                        };
                    }
                }
                GuardState::Header { bytes, have } => {
                    bytes[*have] = chunk[0];
                    *have += 1;
                    chunk = &chunk[1..];
                    let Some((opcode, length)) = parse_frame_header(&bytes[..*have]) else {
                        continue;
                    };
                    // Control frames (close, ping, pong) are limited to 125 bytes by the
                    // decoder; data frames (text, binary, continuation) by us.
                    let is_data = opcode < 0x8;
                    if is_data && length > self.max_frame as u64 {
                        return Err(length);
                    }
                    self.state = if length == 0 {
                        GuardState::Header {
                            bytes: [0; 14],
                            have: 0,
                        }
                    } else {
                        GuardState::Payload { remaining: length }
                    };
                }
            }
        }
        Ok(())
    }
}

/// A complete client frame header's opcode and payload length, or `None` while more
/// header bytes are needed. (RFC 6455 §5.2: 2 bytes, then a 2- or 8-byte extended
/// length, then the 4-byte mask key.)
fn parse_frame_header(header: &[u8]) -> Option<(u8, u64)> {
    let (&first, &second) = (header.first()?, header.get(1)?);
    let opcode = first & 0x0F;
    let masked = second & 0x80 != 0;
    let (extended, length) = match second & 0x7F {
        126 => (
            2,
            u64::from(u16::from_be_bytes([*header.get(2)?, *header.get(3)?])),
        ),
        127 => {
            let mut be = [0u8; 8];
            be.copy_from_slice(header.get(2..10)?);
            (8, u64::from_be_bytes(be))
        }
        short => (0, u64::from(short)),
    };
    let needed = 2 + extended + if masked { 4 } else { 0 };
    (header.len() >= needed).then_some((opcode, length))
}

impl<S, E> Stream for FrameSizeGuard<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: From<PayloadError>,
{
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.refused.get().is_some() {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => match self.inspect(&chunk) {
                Ok(()) => Poll::Ready(Some(Ok(chunk))),
                Err(length) => {
                    self.refused.set(Some(length));
                    Poll::Ready(Some(Err(PayloadError::Overflow.into())))
                }
            },
            other => other,
        }
    }
}

/// A fragmented message being put together.
struct Fragments {
    text: bool,
    parts: BytesMut,
}

/// The requests of one WebSocket connection, as payloads (see the module
/// documentation). `M` is actix-ws's message stream, `P` where pongs go (the
/// connection's `actix_ws::Session`).
pub struct WsPayloads<M, P> {
    messages: M,
    pongs: P,
    max_frame: usize,
    /// Set by the connection's [`FrameSizeGuard`].
    refused: Refused,
    fragments: Option<Fragments>,
    /// A ping to answer before reading on.
    pending_pong: Option<Bytes>,
    done: bool,
}

impl<M, P> WsPayloads<M, P> {
    /// The payloads of `messages`, answering pings through `pongs`.
    pub fn new(messages: M, pongs: P, max_frame: usize, refused: Refused) -> Self {
        WsPayloads {
            messages,
            pongs,
            max_frame,
            refused,
            fragments: None,
            pending_pong: None,
            done: false,
        }
    }
}

impl<M, P> WsPayloads<M, P>
where
    P: Sink<Message> + Unpin,
{
    /// Sends the pending pong if the queue has room; `Pending` while it has none (the
    /// connection then reads nothing more, as a full TCP send buffer would make it).
    fn poll_pong(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(data) = self.pending_pong.take() else {
            return Poll::Ready(());
        };
        match Pin::new(&mut self.pongs).poll_ready(cx) {
            Poll::Pending => {
                self.pending_pong = Some(data);
                Poll::Pending
            }
            Poll::Ready(Ok(())) => {
                // A closed session means the connection is going away; reading on
                // finds that out.
                let _ = Pin::new(&mut self.pongs).start_send(Message::Pong(data));
                let _ = Pin::new(&mut self.pongs).poll_flush(cx);
                Poll::Ready(())
            }
            Poll::Ready(Err(_)) => Poll::Ready(()),
        }
    }

    /// What one message means; `None` for those that carry no request.
    fn take(&mut self, message: Message) -> Option<Inbound> {
        match message {
            Message::Text(text) => Some(Inbound::Payload(text.into_bytes())),
            Message::Binary(_) => Some(Inbound::Binary),
            Message::Continuation(item) => self.take_fragment(item),
            Message::Ping(data) => {
                self.pending_pong = Some(data);
                None
            }
            Message::Pong(_) | Message::Nop => None,
            Message::Close(_) => {
                self.done = true;
                None
            }
        }
    }

    fn take_fragment(&mut self, item: Item) -> Option<Inbound> {
        let (first, data, last) = match item {
            Item::FirstText(data) => (Some(true), data, false),
            Item::FirstBinary(data) => (Some(false), data, false),
            Item::Continue(data) => (None, data, false),
            Item::Last(data) => (None, data, true),
        };
        if let Some(text) = first {
            self.fragments = Some(Fragments {
                text,
                parts: BytesMut::new(),
            });
        }
        let Some(fragments) = self.fragments.as_mut() else {
            // The decoder refuses a continuation that was never started; be as strict.
            self.done = true;
            return Some(Inbound::Failed(io::Error::new(
                io::ErrorKind::InvalidData,
                "continuation frame without a first frame",
            )));
        };
        let len = fragments.parts.len() + data.len();
        if len > self.max_frame {
            self.fragments = None;
            self.done = true;
            return Some(Inbound::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        fragments.parts.extend_from_slice(&data);
        if !last {
            return None;
        }
        let Fragments { text, parts } = self.fragments.take()?;
        let parts = parts.freeze();
        if !text || std::str::from_utf8(&parts).is_err() {
            return Some(Inbound::Binary);
        }
        Some(Inbound::Payload(parts))
    }
}

impl<M, P> Stream for WsPayloads<M, P>
where
    M: Stream<Item = Result<Message, ProtocolError>> + Unpin,
    P: Sink<Message> + Unpin,
{
    type Item = Inbound;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if this.poll_pong(cx).is_pending() {
                return Poll::Pending;
            }
            let message = match Pin::new(&mut this.messages).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Ok(message))) => message,
                Poll::Ready(Some(Err(err))) => {
                    let announced = match (this.refused.get(), &err) {
                        (Some(len), _) => Some(len),
                        // The decoder's own limit (the guard's is the same, and first).
                        (None, ProtocolError::Overflow) => Some(this.max_frame as u64 + 1),
                        _ => None,
                    };
                    if let Some(len) = announced {
                        this.done = true;
                        return Poll::Ready(Some(Inbound::TooLarge {
                            len: usize::try_from(len).unwrap_or(usize::MAX),
                            max: this.max_frame,
                        }));
                    }
                    if let ProtocolError::Io(io_err) = &err {
                        // A text frame that is not UTF-8: the decoder has consumed it
                        // and goes on with the next one.
                        if io_err.kind() == io::ErrorKind::InvalidData {
                            return Poll::Ready(Some(Inbound::Binary));
                        }
                        // The connection ended without a close message (a tab closed):
                        // an end like any other.
                        let payload_error = io_err
                            .get_ref()
                            .and_then(|inner| inner.downcast_ref::<PayloadError>());
                        if matches!(payload_error, Some(PayloadError::Incomplete(_))) {
                            this.done = true;
                            return Poll::Ready(None);
                        }
                    }
                    this.done = true;
                    return Poll::Ready(Some(Inbound::Failed(io::Error::other(format!(
                        "WebSocket: {err}"
                    )))));
                }
            };
            if let Some(item) = this.take(message) {
                return Poll::Ready(Some(item));
            }
        }
    }
}

/// An [`AsyncWrite`] over a WebSocket that takes the frames the session writer
/// produces (a 4-byte big-endian length, then the payload) and sends each payload as
/// one text message. See the module documentation for back-pressure.
///
/// Bytes are accepted only when the message queue has room, and a frame is handed to
/// the queue as soon as its last byte arrives: every byte reported written is either
/// queued for the client or part of an unfinished frame held here, so `flush` has
/// nothing to wait for. `shutdown` sends a normal close.
pub struct WsFrameWriter<K> {
    sink: K,
    /// The frame being collected when it came in pieces: its header, then its payload.
    partial: BytesMut,
    /// The payload length of the frame in `partial`, once its header is complete.
    expected: Option<usize>,
    close_sent: bool,
}

impl<K> WsFrameWriter<K> {
    /// Writes frames into `sink` (the connection's `actix_ws::Session`).
    pub fn new(sink: K) -> WsFrameWriter<K> {
        WsFrameWriter {
            sink,
            partial: BytesMut::new(),
            expected: None,
            close_sent: false,
        }
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "WebSocket closed")
}

/// A payload as a text message; the server only ever writes JSON, so anything else is
/// a bug worth failing the connection for rather than sending.
fn text_message(payload: Bytes) -> io::Result<Message> {
    ByteString::try_from(payload)
        .map(Message::Text)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "frame payload is not UTF-8"))
}

impl<K> WsFrameWriter<K> {
    /// Where the messages go.
    pub fn sink(&self) -> &K {
        &self.sink
    }
}

impl<K> WsFrameWriter<K>
where
    K: Sink<Message> + Unpin,
{
    /// Takes bytes from `buf` towards the current frame (the queue has room); returns
    /// how many, and the finished payload if they completed one.
    fn consume(&mut self, buf: &[u8]) -> (usize, Option<Bytes>) {
        // The common case: a whole frame at the start of `buf`, nothing held.
        if self.partial.is_empty() && buf.len() >= HEADER_LEN {
            let mut header = [0u8; HEADER_LEN];
            header.copy_from_slice(&buf[..HEADER_LEN]);
            let len = u32::from_be_bytes(header) as usize;
            if let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + len) {
                return (HEADER_LEN + len, Some(Bytes::copy_from_slice(payload)));
            }
        }
        let expected = match self.expected {
            Some(len) => len,
            None => {
                let take = (HEADER_LEN - self.partial.len()).min(buf.len());
                self.partial.extend_from_slice(&buf[..take]);
                if self.partial.len() < HEADER_LEN {
                    return (take, None);
                }
                let mut header = [0u8; HEADER_LEN];
                header.copy_from_slice(&self.partial[..HEADER_LEN]);
                let len = u32::from_be_bytes(header) as usize;
                self.partial.clear();
                self.partial.reserve(len);
                self.expected = Some(len);
                if len > 0 {
                    return (take, None);
                }
                self.expected = None;
                return (take, Some(Bytes::new()));
            }
        };
        let take = (expected - self.partial.len()).min(buf.len());
        self.partial.extend_from_slice(&buf[..take]);
        if self.partial.len() < expected {
            return (take, None);
        }
        self.expected = None;
        (take, Some(self.partial.split().freeze()))
    }
}

impl<K> AsyncWrite for WsFrameWriter<K>
where
    K: Sink<Message> + Unpin,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.close_sent {
            return Poll::Ready(Err(closed()));
        }
        match Pin::new(&mut this.sink).poll_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => return Poll::Ready(Err(closed())),
            Poll::Ready(Ok(())) => {}
        }
        let (taken, payload) = this.consume(buf);
        if let Some(payload) = payload {
            let message = text_message(payload)?;
            if Pin::new(&mut this.sink).start_send(message).is_err() {
                return Poll::Ready(Err(closed()));
            }
        }
        Poll::Ready(Ok(taken))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.sink)
            .poll_flush(cx)
            .map_err(|_| closed())
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.close_sent {
            match Pin::new(&mut this.sink).poll_ready(cx) {
                Poll::Pending => return Poll::Pending,
                // Already closed: nothing to say.
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {}
            }
            this.close_sent = true;
            let close = Message::Close(Some(CloseCode::Normal.into()));
            if Pin::new(&mut this.sink).start_send(close).is_err() {
                return Poll::Ready(Ok(()));
            }
        }
        Pin::new(&mut this.sink).poll_close(cx).map(|_| Ok(()))
    }
}

#[cfg(test)]
mod tests;
