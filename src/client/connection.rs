//! One connection to the server, speaking frames of [`crate::protocol`] messages over
//! any byte stream ([`Transport`]): TCP, or TLS over it ([`super::tls`]).
//!
//! This is the only place the client reads and writes frames. It cuts the stream with the
//! shared [`FrameCodec`] (accepting frames up to [`CLIENT_MAX_FRAME`], since a history
//! may be large). A frame of a type it does not know is skipped, so a newer server that
//! adds message types does not break an older client; a frame that is not a JSON
//! object with a `type`, or whose known type has the wrong fields, or one over the
//! limit, ends the connection with an error that says so (the stream cannot be
//! trusted after it). The steps every session starts with, waiting for `welcome` and
//! authenticating, live here too, shared by both modes.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use super::args::ServerAddr;
use super::display::printable;
use crate::codec::{encode_frame, FrameCodec, FrameError, CLIENT_MAX_FRAME};
use crate::protocol::{AuthErrorCode, ClientMessage, ErrorCode, ServerMessage};

/// How long to wait for a TCP connection before calling the server unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait for the answer to an authentication request. PBKDF2 with a high
/// round count takes a while on a busy server, so this is generous.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(60);

/// Why talking to the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("no answer from {addr} within {secs} s")]
    Timeout { addr: String, secs: u64 },
    #[error("the server closed the connection")]
    Closed,
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server sent a frame of {len} bytes, over the {} MiB a client accepts", CLIENT_MAX_FRAME >> 20)]
    TooLarge { len: usize },
    #[error("the server sent a malformed frame ({0})")]
    Malformed(String),
    #[error("cannot encode a request: {0}")]
    Encode(#[from] serde_json::Error),
    /// The server sent `shutdown` or `kicked`: the session is over, by its decision.
    #[error("{0}")]
    Ended(Ended),
    #[error("the server answered with an error: {}", printable(.0))]
    Refused(String),
    #[error("TLS with {addr} failed: {why}")]
    Tls { addr: String, why: String },
    /// The server's certificate is not trusted; the sentence says why and what to do.
    #[error("{0}")]
    Untrusted(String),
}

impl ConnectionError {
    /// The server broke the protocol (a frame too large or malformed): a script stops
    /// rather than trust it again.
    pub fn is_protocol_violation(&self) -> bool {
        matches!(
            self,
            ConnectionError::TooLarge { .. } | ConnectionError::Malformed(_)
        )
    }

    /// Trying again cannot help: the server broke the protocol, or TLS failed or
    /// found the server untrusted (the same certificate is refused again).
    pub fn is_final(&self) -> bool {
        self.is_protocol_violation()
            || matches!(
                self,
                ConnectionError::Tls { .. } | ConnectionError::Untrusted(_)
            )
    }
}

impl From<FrameError> for ConnectionError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::TooLarge { len, .. } => ConnectionError::TooLarge { len },
            FrameError::Io(e) => ConnectionError::Io(e),
        }
    }
}

/// How the server ended a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    Shutdown(String),
    Kicked(String),
}

impl std::fmt::Display for Ended {
    /// One sentence with the server's own words (escaped) said once.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (what, message) = match self {
            Ended::Shutdown(message) => ("The server went away", message),
            Ended::Kicked(message) => ("The server ended your session", message),
        };
        if message.trim().is_empty() {
            write!(f, "{what}.")
        } else {
            write!(f, "{what}, saying: {}", printable(message))
        }
    }
}

/// The greeting's content that matters to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The name last authenticated from this IP address, if the server knows it.
    pub known_name: Option<String>,
}

/// The answer to `resume`, `login` or `register`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthReply {
    Accepted {
        name: String,
        token: String,
        new_user: bool,
    },
    Refused {
        code: AuthErrorCode,
        message: String,
    },
}

/// The byte stream under the frames: a TCP socket, or a TLS session over one.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug> Transport for T {}

/// A framed connection to the server.
#[derive(Debug)]
pub struct Connection {
    framed: Framed<Box<dyn Transport>, FrameCodec>,
    addr: String,
}

/// A TCP connection to `server`, giving up after [`CONNECT_TIMEOUT`].
pub async fn tcp_connect(server: &ServerAddr) -> Result<TcpStream, ConnectionError> {
    let addr = server.to_string();
    let attempt = TcpStream::connect((server.host.as_str(), server.port));
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => return Err(ConnectionError::Connect { addr, source }),
        Err(_) => {
            return Err(ConnectionError::Timeout {
                addr,
                secs: CONNECT_TIMEOUT.as_secs(),
            })
        }
    };
    // Chat lines are small and interactive: send them at once.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

impl Connection {
    /// Frames over an established `transport` to the server at `addr`.
    pub fn over(transport: Box<dyn Transport>, addr: String) -> Connection {
        Connection {
            framed: Framed::new(transport, FrameCodec::new(CLIENT_MAX_FRAME)),
            addr,
        }
    }

    /// Sends one request.
    pub async fn send(&mut self, message: &ClientMessage) -> Result<(), ConnectionError> {
        let frame = encode_frame(message)?;
        self.framed.send(frame).await?;
        Ok(())
    }

    /// The next message from the server, `None` when it closed the connection. Frames
    /// of an unknown type are skipped; anything else that is not a [`ServerMessage`] is
    /// an error. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<ServerMessage>, ConnectionError> {
        loop {
            let Some(payload) = self.framed.next().await.transpose()? else {
                return Ok(None);
            };
            if let Some(message) = parse_server_message(&payload)? {
                return Ok(Some(message));
            }
        }
    }

    /// Like [`Connection::recv`], but a closed connection is an error and the wait is
    /// bounded.
    async fn recv_within(&mut self, limit: Duration) -> Result<ServerMessage, ConnectionError> {
        match tokio::time::timeout(limit, self.recv()).await {
            Ok(Ok(Some(message))) => Ok(message),
            Ok(Ok(None)) => Err(ConnectionError::Closed),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ConnectionError::Timeout {
                addr: self.addr.clone(),
                secs: limit.as_secs(),
            }),
        }
    }

    /// Waits for the server's `welcome`. A paused server greets only when the admin
    /// resumes it, so `limit` may be `None` to wait as long as it takes.
    pub async fn welcome(&mut self, limit: Option<Duration>) -> Result<Welcome, ConnectionError> {
        loop {
            let message = match limit {
                Some(limit) => self.recv_within(limit).await?,
                None => self.recv().await?.ok_or(ConnectionError::Closed)?,
            };
            match message {
                ServerMessage::Welcome { known_name, .. } => return Ok(Welcome { known_name }),
                other => end_or_skip(other)?,
            }
        }
    }

    /// Sends an authentication request and waits for its `auth_ok` or `auth_error`.
    pub async fn authenticate(
        &mut self,
        request: &ClientMessage,
    ) -> Result<AuthReply, ConnectionError> {
        self.send(request).await?;
        loop {
            match self.recv_within(AUTH_TIMEOUT).await? {
                ServerMessage::AuthOk {
                    name,
                    token,
                    new_user,
                } => {
                    return Ok(AuthReply::Accepted {
                        name,
                        token,
                        new_user,
                    })
                }
                ServerMessage::AuthError { code, message } => {
                    return Ok(AuthReply::Refused { code, message })
                }
                ServerMessage::Error { message, .. } => {
                    return Err(ConnectionError::Refused(message))
                }
                other => end_or_skip(other)?,
            }
        }
    }

    /// Reads whatever the server still sends until it closes, for at most `limit`:
    /// after `quit` or `logout`, so the last messages are not lost.
    pub async fn drain(&mut self, limit: Duration, mut each: impl FnMut(ServerMessage)) {
        let _ = tokio::time::timeout(limit, async {
            while let Ok(Some(message)) = self.recv().await {
                each(message);
            }
        })
        .await;
    }
}

/// The `type` of every [`ServerMessage`].
const KNOWN_TYPES: &[&str] = &[
    "welcome",
    "auth_ok",
    "auth_error",
    "history",
    "message",
    "joined",
    "left",
    "who",
    "pong",
    "error",
    "shutdown",
    "kicked",
    "room",
    "parted",
    "member_joined",
    "member_left",
    "rooms",
    "password_changed",
    "account_deleted",
];

/// Reads one payload: `Ok(None)` for a type this client does not know, an error for a
/// payload that is no JSON object with a string `type`, or a known type with the
/// wrong fields. An `error` frame with a code this client does not know still reads,
/// as `internal` (the request did not take effect).
pub fn parse_server_message(payload: &[u8]) -> Result<Option<ServerMessage>, ConnectionError> {
    let malformed = |why: String| ConnectionError::Malformed(printable(&why));
    let value: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| malformed(format!("not JSON: {e}")))?;
    let kind = match value.get("type") {
        Some(serde_json::Value::String(kind)) if value.is_object() => kind.clone(),
        _ if !value.is_object() => return Err(malformed("not a JSON object".into())),
        _ => return Err(malformed("no string `type`".into())),
    };
    if !KNOWN_TYPES.contains(&kind.as_str()) {
        log::debug!("skipping a frame of unknown type {kind:?}");
        return Ok(None);
    }
    match serde_json::from_value::<ServerMessage>(value.clone()) {
        Ok(message) => Ok(Some(message)),
        Err(_) if kind == "error" && value.get("message").is_some_and(|m| m.is_string()) => {
            let message = value["message"].as_str().unwrap_or_default().to_string();
            Ok(Some(ServerMessage::error(ErrorCode::Internal, message)))
        }
        Err(e) => Err(malformed(format!("a `{kind}` frame: {e}"))),
    }
}

/// Turns `shutdown`/`kicked` into [`ConnectionError::Ended`]; anything else is skipped.
fn end_or_skip(message: ServerMessage) -> Result<(), ConnectionError> {
    match message {
        ServerMessage::Shutdown { message } => {
            Err(ConnectionError::Ended(Ended::Shutdown(message)))
        }
        ServerMessage::Kicked { message } => Err(ConnectionError::Ended(Ended::Kicked(message))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<ServerMessage>, ConnectionError> {
        parse_server_message(text.as_bytes())
    }

    #[test]
    fn known_frames_read_and_unknown_types_are_skipped() {
        assert_eq!(
            parse(r#"{"type":"pong","extra":1}"#).unwrap(),
            Some(ServerMessage::Pong)
        );
        assert_eq!(
            parse(r#"{"type":"sparkle","room":"x","members":[]}"#).unwrap(),
            None
        );
        assert_eq!(
            parse(r#"{"type":"error","code":"no_such_code","message":"later"}"#).unwrap(),
            Some(ServerMessage::error(ErrorCode::Internal, "later"))
        );
    }

    #[test]
    fn every_frame_of_rooms_and_accounts_reads() {
        for frame in [
            r#"{"type":"room","room":"r","members":["a"]}"#,
            r#"{"type":"parted","room":"r"}"#,
            r#"{"type":"member_joined","room":"r","name":"a"}"#,
            r#"{"type":"member_left","room":"r","name":"a"}"#,
            r#"{"type":"rooms","rooms":[{"room":"r","members":2,"member":true}]}"#,
            r#"{"type":"password_changed","token":"t"}"#,
            r#"{"type":"account_deleted"}"#,
            r#"{"type":"history","direct":true,"messages":[{"type":"message","id":1,"to":"b","from":"a","text":"x","ts":1}]}"#,
            r#"{"type":"history","with":"b","messages":[]}"#,
            r#"{"type":"error","code":"not_member","message":"m"}"#,
            r#"{"type":"auth_error","code":"banned","message":"spam"}"#,
        ] {
            assert!(parse(frame).unwrap().is_some(), "{frame}");
        }
        let e = parse(r#"{"type":"room","room":5}"#).unwrap_err();
        assert!(e.is_protocol_violation(), "{e}");
    }

    #[test]
    fn malformed_frames_are_errors() {
        for junk in [
            "not json",
            "[1,2]",
            "42",
            r#"{"no":"type"}"#,
            r#"{"type":5}"#,
            r#"{"type":"message","id":"x"}"#,
            r#"{"type":"welcome"}"#,
        ] {
            let e = parse(junk).expect_err(junk);
            assert!(e.is_protocol_violation(), "{junk}: {e}");
            assert!(e.to_string().contains("malformed"), "{e}");
        }
        let e = parse("\u{1b}[2J").unwrap_err().to_string();
        assert!(!e.contains('\u{1b}'), "{e:?}");
    }

    #[test]
    fn ended_says_the_servers_words_once() {
        let shutdown = Ended::Shutdown("the server is shutting down".into()).to_string();
        assert_eq!(shutdown.matches("shutting down").count(), 1, "{shutdown}");
        assert_eq!(
            Ended::Kicked(String::new()).to_string(),
            "The server ended your session."
        );
        assert!(!Ended::Kicked("\u{1b}]0;x\u{7}".into())
            .to_string()
            .contains('\u{1b}'));
    }
}
