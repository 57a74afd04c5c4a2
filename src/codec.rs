//! The wire format: a 4-byte big-endian payload length, then that many bytes of payload.
//!
//! This module knows nothing of what a payload means (that is `protocol`): it cuts a byte
//! stream into frames, refusing a frame whose header announces more than the configured
//! limit *before* any of its body is buffered, and it builds outgoing frames. Both
//! binaries use it, the server with `--max-frame`, the client with [`CLIENT_MAX_FRAME`].

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;
use tokio_util::codec::{Decoder, Encoder};

/// Size of the length header in bytes.
pub const HEADER_LEN: usize = 4;

/// Largest payload the server accepts unless `--max-frame` says otherwise.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024;

/// Largest payload a client accepts: server frames (a long history) may exceed the
/// server's own inbound limit, and the protocol promises clients accept up to 16 MiB.
pub const CLIENT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Why a byte stream could not be cut into frames. After any of these the stream
/// cannot be resynchronised, so the connection must be closed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The header announced a payload longer than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// The underlying socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Splits a byte stream into payloads and frames outgoing payloads.
///
/// Decoding yields the raw payload (`Bytes`, shared with the read buffer, no copy);
/// an empty payload is a valid frame whose parsing then fails as a bad request.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_frame: usize,
}

impl FrameCodec {
    /// A codec that refuses inbound payloads longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        FrameCodec { max_frame }
    }

    /// The inbound payload limit this codec enforces.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        let Some(header) = src.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let mut len_bytes = [0u8; HEADER_LEN];
        len_bytes.copy_from_slice(header);
        let len = u32::from_be_bytes(len_bytes) as usize;
        if len > self.max_frame {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        let needed = HEADER_LEN + len;
        if src.len() < needed {
            // Room for exactly this frame: the limit above bounds what a peer can make us hold.
            src.reserve(needed - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        Ok(Some(src.split_to(len).freeze()))
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = FrameError;

    /// Writes an already-built frame (see [`encode_frame`]) unchanged.
    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        dst.extend_from_slice(&frame);
        Ok(())
    }
}

/// Serialises `message` as JSON into a complete frame, header included.
///
/// The result is immutable and cheap to clone, so one frame can be shared by every
/// recipient of a broadcast.
pub fn encode_frame<T: Serialize>(message: &T) -> Result<Bytes, serde_json::Error> {
    let mut buf = BytesMut::with_capacity(128).writer();
    buf.get_mut().put_u32(0);
    serde_json::to_writer(&mut buf, message)?;
    let mut buf = buf.into_inner();
    Ok(seal_frame(&mut buf))
}

/// Wraps a payload that is already JSON text into a frame.
pub fn frame_from_payload(payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(HEADER_LEN + payload.len());
    buf.put_u32(0);
    buf.extend_from_slice(payload);
    seal_frame(&mut buf)
}

/// Writes the payload length into the 4 bytes reserved at the start of `buf`.
fn seal_frame(buf: &mut BytesMut) -> Bytes {
    let len = (buf.len() - HEADER_LEN) as u32;
    buf[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    buf.split().freeze()
}

/// The payload of a complete frame built by [`encode_frame`] (the JSON text).
pub fn payload_of(frame: &Bytes) -> Bytes {
    frame.slice(HEADER_LEN.min(frame.len())..)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn decodes_a_frame_split_across_reads() {
        let mut codec = FrameCodec::new(1024);
        let wire = framed(br#"{"type":"ping"}"#);
        let mut buf = BytesMut::new();
        for (i, byte) in wire.iter().enumerate() {
            buf.put_u8(*byte);
            let out = codec.decode(&mut buf).expect("no error");
            if i + 1 < wire.len() {
                assert!(out.is_none(), "frame completed early at byte {i}");
            } else {
                assert_eq!(out.as_deref(), Some(&br#"{"type":"ping"}"#[..]));
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn decodes_several_frames_from_one_read() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&framed(b"one"));
        buf.extend_from_slice(&framed(b""));
        buf.extend_from_slice(&framed(b"three"));
        buf.extend_from_slice(&framed(b"fo")[..5]);
        assert_eq!(
            codec.decode(&mut buf).unwrap().as_deref(),
            Some(&b"one"[..])
        );
        assert_eq!(codec.decode(&mut buf).unwrap().as_deref(), Some(&b""[..]));
        assert_eq!(
            codec.decode(&mut buf).unwrap().as_deref(),
            Some(&b"three"[..])
        );
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert_eq!(buf.len(), 5, "partial frame stays buffered");
    }

    #[test]
    fn refuses_an_oversize_frame_from_its_header_alone() {
        let mut codec = FrameCodec::new(10);
        let mut buf = BytesMut::new();
        buf.put_u32(11);
        match codec.decode(&mut buf) {
            Err(FrameError::TooLarge { len: 11, max: 10 }) => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(buf.capacity() < 1024, "body must not be reserved");
    }

    #[test]
    fn accepts_a_frame_of_exactly_the_limit() {
        let mut codec = FrameCodec::new(3);
        let mut buf = BytesMut::from(&framed(b"abc")[..]);
        assert_eq!(
            codec.decode(&mut buf).unwrap().as_deref(),
            Some(&b"abc"[..])
        );
    }

    #[test]
    fn refuses_a_header_of_u32_max_without_allocating() {
        let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn encode_frame_writes_the_big_endian_length() {
        let frame = encode_frame(&serde_json::json!({"type":"pong"})).unwrap();
        assert_eq!(&frame[..4], &(15u32).to_be_bytes());
        assert_eq!(&frame[4..], br#"{"type":"pong"}"#);
        assert_eq!(payload_of(&frame), &br#"{"type":"pong"}"#[..]);
        assert_eq!(frame_from_payload(br#"{"type":"pong"}"#), frame);
    }
}
