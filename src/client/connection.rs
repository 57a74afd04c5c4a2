//! One TCP connection to the server, speaking frames of [`crate::protocol`] messages.
//!
//! This is the only place the client touches the socket. It cuts the stream with the
//! shared [`FrameCodec`] (accepting frames up to [`CLIENT_MAX_FRAME`], since a history
//! may be large), and skips frames it does not understand, so a newer server that adds
//! message types does not break an older client. The steps every session starts with,
//! waiting for `welcome` and authenticating, live here too, shared by both modes.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use super::args::ServerAddr;
use crate::codec::{encode_frame, FrameCodec, FrameError, CLIENT_MAX_FRAME};
use crate::protocol::{AuthErrorCode, ClientMessage, ServerMessage};

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
    Frame(#[from] FrameError),
    #[error("cannot encode a request: {0}")]
    Encode(#[from] serde_json::Error),
    /// The server sent `shutdown` or `kicked`: the session is over, by its decision.
    #[error("{0}")]
    Ended(Ended),
    #[error("the server answered with an error: {0}")]
    Refused(String),
}

/// How the server ended a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    Shutdown(String),
    Kicked(String),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Shutdown(message) => write!(f, "The server is shutting down: {message}"),
            Ended::Kicked(message) => write!(f, "You were removed from the chat: {message}"),
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

/// A framed connection to the server.
#[derive(Debug)]
pub struct Connection {
    framed: Framed<TcpStream, FrameCodec>,
    addr: String,
}

impl Connection {
    /// Connects to `server`, giving up after [`CONNECT_TIMEOUT`].
    pub async fn connect(server: &ServerAddr) -> Result<Connection, ConnectionError> {
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
        Ok(Connection {
            framed: Framed::new(stream, FrameCodec::new(CLIENT_MAX_FRAME)),
            addr,
        })
    }

    /// Sends one request.
    pub async fn send(&mut self, message: &ClientMessage) -> Result<(), ConnectionError> {
        let frame = encode_frame(message)?;
        self.framed.send(frame).await?;
        Ok(())
    }

    /// The next message from the server, `None` when it closed the connection. Frames
    /// that are not a known [`ServerMessage`] are skipped. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<ServerMessage>, ConnectionError> {
        loop {
            let Some(payload) = self.framed.next().await.transpose()? else {
                return Ok(None);
            };
            match serde_json::from_slice::<ServerMessage>(&payload) {
                Ok(message) => return Ok(Some(message)),
                Err(e) => log::debug!("skipping a frame the client does not understand: {e}"),
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
