//! One benchmark client connection, where it connects to, and the accounts it logs in
//! as.
//!
//! An [`Endpoint`] is the server's address, reached over plain TCP or over TLS (SPEC §9)
//! pinned to the fingerprint the server printed. A [`Conn`] is a [`Stream`] plus a read buffer that [`FrameCodec`] cuts into frames in
//! place (each frame is a slice of the buffer, never a copy). It knows just enough of
//! the conversation to get a connection to the chatting state: welcome, then
//! `register`, `login` or `resume`, then `auth_ok` and `history`. The chat traffic itself
//! is handled by `load`, which takes the stream and buffer apart for speed.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use echochat::codec::{encode_frame, FrameCodec, CLIENT_MAX_FRAME};
use echochat::protocol::{AuthErrorCode, ClientMessage, ServerMessage};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::error::{within, BenchError, Result};

/// Bytes asked of the kernel per read once a connection carries chat traffic: large, so
/// one wake-up drains many frames.
pub const READ_CHUNK: usize = 64 * 1024;

/// Initial buffer of a connection that is still authenticating: small, because the
/// memory phase holds ten thousand of them.
const HANDSHAKE_BUFFER: usize = 4 * 1024;

/// Password of every benchmark account (valid under the 4..=1024 byte rule).
pub const PASSWORD: &str = "bench-password";

/// Where the server listens, and how to talk to it there.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `None` for plain TCP.
    tls: Option<TlsConnector>,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.tls {
            None => write!(f, "{}", self.addr),
            Some(_) => write!(f, "{} (TLS)", self.addr),
        }
    }
}

impl Endpoint {
    /// Plain TCP to `addr`.
    pub fn plain(addr: SocketAddr) -> Endpoint {
        Endpoint { addr, tls: None }
    }

    /// TLS to `addr`, trusting exactly the certificate whose fingerprint is
    /// `fingerprint` (`sha256:<hex>`, as the server prints it). Like the terminal client,
    /// every connection makes a full handshake: no TLS session is resumed.
    pub fn tls(addr: SocketAddr, fingerprint: String) -> Result<Endpoint> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Pinned {
            fingerprint,
            algorithms: provider.signature_verification_algorithms,
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| BenchError::Protocol(format!("TLS configuration: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        config.resumption = Resumption::disabled();
        Ok(Endpoint {
            addr,
            tls: Some(TlsConnector::from(Arc::new(config))),
        })
    }

    /// Whether connections are TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// Trusts the one certificate with the expected fingerprint (the server's, read from
/// its stdout), and checks that the peer holds its key.
#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let seen = echochat::server::tls::fingerprint_of(end_entity);
        if seen == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "certificate {seen} is not the server's {}",
                self.fingerprint
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A connection's byte stream: plain TCP or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// The reading half of a [`Stream`] borrowed by [`Stream::split`].
pub type ReadHalf<'a> = Box<dyn AsyncRead + Send + Unpin + 'a>;
/// The writing half of a [`Stream`] borrowed by [`Stream::split`].
pub type WriteHalf<'a> = Box<dyn AsyncWrite + Send + Unpin + 'a>;

impl Stream {
    /// Halves that can be used at once (one reading while the other writes). Over TLS
    /// a write must be followed by a flush: the record may still sit in the session.
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        match self {
            Stream::Plain(tcp) => {
                let (reader, writer) = tcp.split();
                (Box::new(reader), Box::new(writer))
            }
            Stream::Tls(tls) => {
                let (reader, writer) = tokio::io::split(&mut **tls);
                (Box::new(reader), Box::new(writer))
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(&mut **tls).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(&mut **tls).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(&mut **tls).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(&mut **tls).poll_shutdown(cx),
        }
    }
}

/// A connection to the server with its undecoded input.
pub struct Conn {
    pub stream: Stream,
    pub buf: BytesMut,
    pub codec: FrameCodec,
}

/// A benchmark account and the freshest session token the server gave it.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    /// `None` until the account was registered (or after a token was refused).
    pub token: Option<String>,
    /// Whether the server is known to hold this account.
    pub registered: bool,
    /// Whether the server takes `resume`; the reference server answers only `register`
    /// and `login`, so its accounts always log in with the password.
    pub resumes: bool,
}

impl Account {
    /// A not yet registered account.
    pub fn new(name: String) -> Account {
        Account {
            name,
            token: None,
            registered: false,
            resumes: true,
        }
    }

    /// An account on a server without `resume` (see [`Account::resumes`]).
    pub fn without_resume(name: String) -> Account {
        Account {
            resumes: false,
            ..Account::new(name)
        }
    }
}

/// What a successful authentication gives back.
pub struct Authenticated {
    pub conn: Conn,
    pub account: Account,
}

impl Conn {
    /// Opens a connection with Nagle off (the benchmark measures latency), and makes
    /// the TLS handshake if the endpoint asks for it.
    pub async fn connect(endpoint: &Endpoint) -> Result<Conn> {
        let addr = endpoint.addr;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| BenchError::io(format!("connect to {addr}"), e))?;
        tcp.set_nodelay(true)
            .map_err(|e| BenchError::io("set TCP_NODELAY", e))?;
        let stream = match &endpoint.tls {
            None => Stream::Plain(tcp),
            Some(connector) => {
                let name = ServerName::try_from("localhost")
                    .map_err(|e| BenchError::Protocol(format!("server name: {e}")))?;
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| BenchError::io(format!("TLS handshake with {addr}"), e))?;
                Stream::Tls(Box::new(tls))
            }
        };
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(HANDSHAKE_BUFFER),
            codec: FrameCodec::new(CLIENT_MAX_FRAME),
        })
    }

    /// The next frame's payload, reading as needed; a closed stream is an error because
    /// every caller is waiting for a specific answer.
    pub async fn next_frame(&mut self) -> Result<Bytes> {
        loop {
            if let Some(frame) = decode_frame(&mut self.codec, &mut self.buf)? {
                return Ok(frame);
            }
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(HANDSHAKE_BUFFER);
            }
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| BenchError::io("read", e))?;
            if n == 0 {
                return Err(BenchError::Closed(
                    "while a reply was awaited; is a limit such as --max-conns-per-ip on?",
                ));
            }
        }
    }

    /// The next frame parsed as a [`ServerMessage`].
    pub async fn next_message(&mut self) -> Result<ServerMessage> {
        let payload = self.next_frame().await?;
        parse_server_message(&payload)
    }

    /// Sends one request.
    pub async fn send(&mut self, message: &ClientMessage) -> Result<()> {
        let frame = encode_frame(message)
            .map_err(|e| BenchError::Protocol(format!("cannot encode a request: {e}")))?;
        self.stream
            .write_all(&frame)
            .await
            .map_err(|e| BenchError::io("write", e))?;
        self.stream
            .flush()
            .await
            .map_err(|e| BenchError::io("write", e))
    }

    /// Waits for the greeting (skipping nothing: it must be the first frame).
    pub async fn expect_welcome(&mut self) -> Result<()> {
        match self.next_message().await? {
            ServerMessage::Welcome { .. } => Ok(()),
            other => Err(unexpected("welcome", &other)),
        }
    }

    /// Sends an authentication request and waits for `auth_ok` and the `history` that
    /// follows it, returning the fresh token. A refusal comes back as `Err(code)` so the
    /// caller can fall back (an unknown token to a password login, say).
    pub async fn authenticate(
        &mut self,
        request: &ClientMessage,
    ) -> Result<std::result::Result<String, AuthErrorCode>> {
        self.send(request).await?;
        let token = loop {
            match self.next_message().await? {
                ServerMessage::AuthOk { token, .. } => break token,
                ServerMessage::AuthError { code, .. } => return Ok(Err(code)),
                // Broadcasts cannot precede auth_ok, but tolerate them rather than guess.
                ServerMessage::Joined { .. }
                | ServerMessage::Left { .. }
                | ServerMessage::Message(_)
                | ServerMessage::Pong => continue,
                other => return Err(unexpected("auth_ok", &other)),
            }
        };
        loop {
            match self.next_message().await? {
                ServerMessage::History { .. } => return Ok(Ok(token)),
                ServerMessage::Joined { .. }
                | ServerMessage::Left { .. }
                | ServerMessage::Message(_)
                | ServerMessage::Pong => continue,
                other => return Err(unexpected("history", &other)),
            }
        }
    }

    /// Reads and drops whatever the server sent before now (the histories of an
    /// account's rooms come after the lobby's): sends `ping` and reads up to its `pong`.
    pub async fn skip_pending(&mut self) -> Result<()> {
        self.send(&ClientMessage::Ping).await?;
        loop {
            if let ServerMessage::Pong = self.next_message().await? {
                return Ok(());
            }
        }
    }

    /// Gives back the read buffer's memory once a connection will only sit idle.
    pub fn into_idle(self) -> Stream {
        self.stream
    }
}

/// Cuts one frame from `buf` with the shared codec.
pub fn decode_frame(codec: &mut FrameCodec, buf: &mut BytesMut) -> Result<Option<Bytes>> {
    use tokio_util::codec::Decoder;
    Ok(codec.decode(buf)?)
}

/// Parses a payload, turning garbage into a protocol error that quotes its start.
pub fn parse_server_message(payload: &[u8]) -> Result<ServerMessage> {
    serde_json::from_slice(payload).map_err(|e| {
        let shown = String::from_utf8_lossy(&payload[..payload.len().min(120)]).into_owned();
        BenchError::Protocol(format!("malformed frame ({e}): {shown:?}"))
    })
}

/// The error for a reply of the wrong type.
fn unexpected(wanted: &str, got: &ServerMessage) -> BenchError {
    let shown = serde_json::to_string(got).unwrap_or_else(|_| format!("{got:?}"));
    BenchError::Protocol(format!("expected {wanted}, got {shown}"))
}

/// Connects and authenticates as `account`, the cheapest way that works: `resume` with
/// its token, else `register` if it is new, else a password `login`. The account comes
/// back with the fresh token.
pub async fn open_session(endpoint: &Endpoint, mut account: Account) -> Result<Authenticated> {
    let mut conn = Conn::connect(endpoint).await?;
    conn.expect_welcome().await?;
    if let Some(token) = account.token.take().filter(|_| account.resumes) {
        match conn.authenticate(&ClientMessage::Resume { token }).await? {
            Ok(token) => return finish(conn, account, token),
            Err(AuthErrorCode::InvalidToken) => {} // expired or lost: use the password
            Err(code) => return Err(refused(&account, "resume", code)),
        }
    }
    if !account.registered {
        let request = ClientMessage::Register {
            name: account.name.clone(),
            password: PASSWORD.into(),
        };
        match conn.authenticate(&request).await? {
            Ok(token) => return finish(conn, account, token),
            Err(AuthErrorCode::NameTaken) => {} // left over from an earlier run
            Err(code) => return Err(refused(&account, "register", code)),
        }
    }
    let request = ClientMessage::Login {
        name: account.name.clone(),
        password: PASSWORD.into(),
    };
    match conn.authenticate(&request).await? {
        Ok(token) => finish(conn, account, token),
        Err(code) => Err(refused(&account, "login", code)),
    }
}

/// Records the fresh token on the account.
fn finish(conn: Conn, mut account: Account, token: String) -> Result<Authenticated> {
    account.token = Some(token);
    account.registered = true;
    Ok(Authenticated { conn, account })
}

/// The error for an `auth_error` the benchmark cannot work around.
fn refused(account: &Account, how: &str, code: AuthErrorCode) -> BenchError {
    let code = serde_json::to_string(&code).unwrap_or_default();
    BenchError::Protocol(format!("{how} as {} refused: {code}", account.name))
}

/// Opens one authenticated connection per account, at most `parallel` handshakes at a
/// time, and returns them in account order with the accounts' fresh tokens.
pub async fn open_sessions(
    endpoint: &Endpoint,
    accounts: Vec<Account>,
    parallel: usize,
    limit: Duration,
) -> Result<(Vec<Conn>, Vec<Account>)> {
    let count = accounts.len();
    let work = async move {
        let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
        let mut set = JoinSet::new();
        for (i, account) in accounts.into_iter().enumerate() {
            let semaphore = semaphore.clone();
            let endpoint = endpoint.clone();
            set.spawn(async move {
                let _permit = semaphore.acquire_owned().await;
                (i, open_session(&endpoint, account).await)
            });
        }
        let mut slots: Vec<Option<Authenticated>> = (0..count).map(|_| None).collect();
        while let Some(joined) = set.join_next().await {
            let (i, result) = joined.map_err(|e| BenchError::Protocol(format!("task: {e}")))?;
            slots[i] = Some(result?);
        }
        let mut conns = Vec::with_capacity(count);
        let mut accounts = Vec::with_capacity(count);
        for done in slots.into_iter().flatten() {
            conns.push(done.conn);
            accounts.push(done.account);
        }
        Ok((conns, accounts))
    };
    within(limit, format!("opening {count} sessions"), work).await
}

/// Opens `count` authenticated connections spread over `accounts`, one chain of
/// sequential `resume`s per account (a resume spends the token it uses, so each account
/// must wait for its previous fresh token). Cheap for the server even at 600,000
/// PBKDF2 rounds once the accounts exist.
pub async fn open_chains(
    endpoint: &Endpoint,
    accounts: Vec<Account>,
    count: usize,
    limit: Duration,
) -> Result<(Vec<Conn>, Vec<Account>)> {
    let chains = accounts.len().max(1);
    let work = async move {
        let mut set = JoinSet::new();
        for (k, mut account) in accounts.into_iter().enumerate() {
            let share = count / chains + usize::from(k < count % chains);
            let endpoint = endpoint.clone();
            set.spawn(async move {
                let mut conns = Vec::with_capacity(share);
                for _ in 0..share {
                    let done = open_session(&endpoint, account).await?;
                    account = done.account;
                    conns.push(done.conn);
                }
                Ok::<_, BenchError>((conns, account))
            });
        }
        let mut conns = Vec::with_capacity(count);
        let mut accounts = Vec::new();
        while let Some(joined) = set.join_next().await {
            let (mut some, account) =
                joined.map_err(|e| BenchError::Protocol(format!("task: {e}")))??;
            conns.append(&mut some);
            accounts.push(account);
        }
        Ok((conns, accounts))
    };
    within(limit, format!("opening {count} connections"), work).await
}

/// Times one handshake for the report: connect, welcome, authenticate, history.
pub async fn timed_session(endpoint: &Endpoint, account: Account) -> Result<(Duration, Account)> {
    let started = Instant::now();
    let done = open_session(endpoint, account).await?;
    Ok((started.elapsed(), done.account))
}
