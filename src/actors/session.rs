//! `Session`: one actor per TCP connection, bridging the framed stream and `ChatServer`.
//!
//! It reads frames (the codec enforces `--max-frame` from the header), answers what it
//! can alone — malformed requests, `ping`, requests out of place, the `--msg-rate`
//! bucket — and forwards the rest to `ChatServer` one at a time: while a request is
//! with the server the session reads nothing more, so a fast client is slowed by TCP
//! instead of filling a mailbox. Output goes through the writer task of
//! [`crate::outbound`]. Nothing is read before the connection is greeted, so a client
//! that connects while the server is paused gets no frame at all until `resume`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio_util::codec::FramedRead;

use super::chat_server::{
    AuthOutcome, Authenticate, ChatServer, Connect, Credentials, Disconnect, Logout, Say, Who,
};
use crate::codec::{encode_frame, FrameCodec, FrameError};
use crate::config::ServerConfig;
use crate::outbound::{direct_queue, run_writer, Outbox, SessionId, WriterEnd};
use crate::protocol::{ClientMessage, ErrorCode, ServerMessage, MAX_TEXT_CHARS};

/// Initial read buffer per connection; it grows only for a frame that needs it, so an
/// idle connection costs little.
const READ_BUFFER: usize = 512;

/// How often the idle timeout is checked.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// `say` requests a session may have queued at `ChatServer` before it stops reading
/// until they are taken. Pipelining keeps a sender's window moving without a round
/// trip per message; the cap bounds what one connection can put in the server's
/// mailbox (the rest waits in its own socket, slowed by TCP).
const SAYS_IN_FLIGHT: usize = 32;

/// Per-connection settings, shared by every session.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub max_frame: usize,
    /// `say` per second (0 = unlimited); bursts up to twice that.
    pub msg_rate: u32,
    pub auth_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub send_queue: u64,
}

impl SessionSettings {
    /// The settings in `config`.
    pub fn from_config(config: &ServerConfig) -> SessionSettings {
        SessionSettings {
            max_frame: config.max_frame,
            msg_rate: config.msg_rate,
            auth_timeout: config.auth_timeout(),
            idle_timeout: config.idle_timeout(),
            send_queue: config.send_queue as u64,
        }
    }
}

/// Where a connection stands in the conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    /// Accepted, not yet greeted (the server may be paused).
    Waiting,
    /// Greeted; no identity yet.
    Anonymous,
    /// Authenticated as this user.
    User(String),
}

/// The actor. See the module documentation.
pub struct Session {
    id: SessionId,
    peer: SocketAddr,
    server: Addr<ChatServer>,
    settings: Arc<SessionSettings>,
    /// The socket until `started` splits it.
    stream: Option<std::net::TcpStream>,
    /// The read half until the connection is greeted.
    reader: Option<OwnedReadHalf>,
    outbox: Option<Outbox>,
    stage: Stage,
    last_heard: Instant,
    bucket: TokenBucket,
    /// `say` requests sent to `ChatServer` and not yet taken.
    says_in_flight: usize,
    /// Set once the connection has been asked to close.
    closing: bool,
}

impl Session {
    /// A session for an accepted socket (non-blocking, from another thread's listener).
    pub fn new(
        id: SessionId,
        peer: SocketAddr,
        stream: std::net::TcpStream,
        server: Addr<ChatServer>,
        settings: Arc<SessionSettings>,
    ) -> Session {
        let bucket = TokenBucket::new(settings.msg_rate);
        Session {
            id,
            peer,
            server,
            settings,
            stream: Some(stream),
            reader: None,
            outbox: None,
            stage: Stage::Waiting,
            last_heard: Instant::now(),
            bucket,
            says_in_flight: 0,
            closing: false,
        }
    }

    fn reply(&self, message: &ServerMessage) {
        let Some(outbox) = &self.outbox else {
            return;
        };
        match encode_frame(message) {
            Ok(frame) => outbox.send(frame),
            Err(err) => log::error!("session {}: could not serialise a reply: {err}", self.id),
        }
    }

    fn reply_error(&self, code: ErrorCode, message: impl Into<String>) {
        self.reply(&ServerMessage::error(code, message));
    }

    /// Deliver what is queued, then close (once).
    fn close(&mut self, _: &mut Context<Self>) {
        if std::mem::replace(&mut self.closing, true) {
            return;
        }
        if let Some(outbox) = &self.outbox {
            outbox.close();
        }
    }

    fn handle_payload(&mut self, payload: Bytes, ctx: &mut Context<Self>) {
        let request = match ClientMessage::parse(&payload) {
            Ok(request) => request,
            Err(err) => {
                log::info!("session {} from {}: bad request: {err}", self.id, self.peer);
                self.reply_error(ErrorCode::BadRequest, err.to_string());
                return;
            }
        };
        match (&self.stage, request) {
            (_, ClientMessage::Ping) => self.reply(&ServerMessage::Pong),
            (Stage::Anonymous, ClientMessage::Resume { token }) => {
                self.authenticate(Credentials::Resume { token }, ctx)
            }
            (Stage::Anonymous, ClientMessage::Login { name, password }) => {
                self.authenticate(Credentials::Login { name, password }, ctx)
            }
            (Stage::Anonymous, ClientMessage::Register { name, password }) => {
                self.authenticate(Credentials::Register { name, password }, ctx)
            }
            (Stage::Anonymous | Stage::Waiting, _) => self.reply_error(
                ErrorCode::NotAuthenticated,
                "log in first (resume, login or register)",
            ),
            (
                Stage::User(_),
                ClientMessage::Resume { .. }
                | ClientMessage::Login { .. }
                | ClientMessage::Register { .. },
            ) => self.reply_error(ErrorCode::BadRequest, "already authenticated"),
            (Stage::User(_), ClientMessage::Say { text }) => self.say(text, ctx),
            (Stage::User(_), ClientMessage::Who) => self.server.do_send(Who { id: self.id }),
            (Stage::User(_), ClientMessage::Logout) => {
                self.server
                    .send(Logout { id: self.id })
                    .into_actor(self)
                    .map(|_, act, ctx| act.close(ctx))
                    .wait(ctx);
            }
            (Stage::User(_), ClientMessage::Quit) => self.close(ctx),
        }
    }

    fn authenticate(&mut self, credentials: Credentials, ctx: &mut Context<Self>) {
        self.server
            .send(Authenticate {
                id: self.id,
                credentials,
            })
            .into_actor(self)
            .map(|outcome, act, _| {
                if let Ok(AuthOutcome::Authenticated { name }) = outcome {
                    act.stage = Stage::User(name);
                }
            })
            // One request at a time: nothing more is read until this is answered.
            .wait(ctx);
    }

    fn say(&mut self, text: String, ctx: &mut Context<Self>) {
        if text.is_empty() {
            self.reply_error(ErrorCode::BadRequest, "empty message");
            return;
        }
        if text.chars().count() > MAX_TEXT_CHARS {
            self.reply_error(
                ErrorCode::BadRequest,
                format!("message longer than {MAX_TEXT_CHARS} characters"),
            );
            return;
        }
        if !self.bucket.take(Instant::now()) {
            log::warn!(
                "session {} from {}: message rate limit hit",
                self.id,
                self.peer
            );
            self.reply_error(ErrorCode::RateLimited, "too many messages; slow down");
            return;
        }
        self.says_in_flight += 1;
        let taken = self
            .server
            .send(Say { id: self.id, text })
            .into_actor(self)
            .map(|_, act, _| act.says_in_flight -= 1);
        if self.says_in_flight >= SAYS_IN_FLIGHT {
            // Requests are taken in order, so once this one is, all are.
            taken.wait(ctx);
        } else {
            ctx.spawn(taken);
        }
    }

    fn start_timers(&mut self, ctx: &mut Context<Self>) {
        if let Some(limit) = self.settings.auth_timeout {
            ctx.run_later(limit, move |act, ctx| {
                if !matches!(act.stage, Stage::User(_)) {
                    log::info!(
                        "session {} from {}: not authenticated within {limit:?}, closing",
                        act.id,
                        act.peer
                    );
                    act.close(ctx);
                }
            });
        }
        if let Some(limit) = self.settings.idle_timeout {
            self.last_heard = Instant::now();
            ctx.run_interval(IDLE_CHECK.min(limit), move |act, ctx| {
                if act.last_heard.elapsed() >= limit && !act.closing {
                    log::info!(
                        "session {} from {}: idle for {limit:?}, closing",
                        act.id,
                        act.peer
                    );
                    act.close(ctx);
                }
            });
        }
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let stream = self.stream.take().map(TcpStream::from_std);
        let stream = match stream {
            Some(Ok(stream)) => stream,
            Some(Err(err)) => {
                log::error!(
                    "session {} from {}: socket unusable: {err}",
                    self.id,
                    self.peer
                );
                ctx.stop();
                return;
            }
            None => {
                ctx.stop();
                return;
            }
        };
        let (reader, writer) = stream.into_split();
        self.reader = Some(reader);
        let (outbox, queue) = direct_queue();
        self.outbox = Some(outbox.clone());
        let me = ctx.address();
        let writer = run_writer(self.id, writer, queue, self.settings.send_queue);
        actix::spawn(async move {
            let end = writer.await;
            me.do_send(WriterFinished(end));
        });
        self.server.do_send(Connect {
            id: self.id,
            peer: self.peer,
            session: ctx.address(),
            outbox,
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        // The session stops once its writer has finished or its socket has failed:
        // nothing is left to deliver.
        if let Some(outbox) = &self.outbox {
            outbox.abort();
        }
        self.server.do_send(Disconnect { id: self.id });
    }
}

/// The server has sent this connection its `welcome`: start reading and the timers.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Greeted;

impl Handler<Greeted> for Session {
    type Result = ();

    fn handle(&mut self, _: Greeted, ctx: &mut Self::Context) {
        let Some(reader) = self.reader.take() else {
            return;
        };
        self.stage = Stage::Anonymous;
        let codec = FrameCodec::new(self.settings.max_frame);
        ctx.add_stream(FramedRead::with_capacity(reader, codec, READ_BUFFER));
        self.start_timers(ctx);
    }
}

/// The writer task has ended; the connection is over.
#[derive(Message)]
#[rtype(result = "()")]
struct WriterFinished(WriterEnd);

impl Handler<WriterFinished> for Session {
    type Result = ();

    fn handle(&mut self, msg: WriterFinished, ctx: &mut Self::Context) {
        match msg.0 {
            WriterEnd::Closed | WriterEnd::Aborted => {}
            WriterEnd::Lagged => log::warn!(
                "session {} from {}: fell a whole broadcast ring behind, dropped",
                self.id,
                self.peer
            ),
            WriterEnd::SendQueueFull(bytes) => log::warn!(
                "session {} from {}: {bytes} bytes unsent (over --send-queue), dropped",
                self.id,
                self.peer
            ),
            WriterEnd::CloseTimedOut => log::info!(
                "session {} from {}: last frames not taken in time, closed",
                self.id,
                self.peer
            ),
            WriterEnd::Io(err) => log::info!(
                "session {} from {}: write failed: {err}",
                self.id,
                self.peer
            ),
        }
        ctx.stop();
    }
}

impl StreamHandler<Result<Bytes, FrameError>> for Session {
    fn handle(&mut self, item: Result<Bytes, FrameError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        match item {
            Ok(payload) => self.handle_payload(payload, ctx),
            Err(err @ FrameError::TooLarge { .. }) => {
                log::warn!("session {} from {}: {err}; closing", self.id, self.peer);
                self.reply_error(ErrorCode::FrameTooLarge, err.to_string());
                self.close(ctx);
            }
            Err(FrameError::Io(err)) => {
                log::info!("session {} from {}: read failed: {err}", self.id, self.peer);
                ctx.stop();
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The peer closed its side (or the stream failed): let the writer deliver what
        // is queued, then it ends the session.
        self.close(ctx);
    }
}

/// The `--msg-rate` allowance: `rate` tokens a second, holding at most `2 × rate`.
#[derive(Debug, Clone)]
struct TokenBucket {
    rate: f64,
    tokens: f64,
    updated: Option<Instant>,
}

impl TokenBucket {
    fn new(rate: u32) -> TokenBucket {
        TokenBucket {
            rate: f64::from(rate),
            tokens: 2.0 * f64::from(rate),
            updated: None,
        }
    }

    /// Takes one token if there is one; a zero rate means no limit.
    fn take(&mut self, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        if let Some(updated) = self.updated {
            let refill = now.saturating_duration_since(updated).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(2.0 * self.rate);
        }
        self.updated = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TokenBucket;
    use std::time::{Duration, Instant};

    #[test]
    fn bucket_allows_a_burst_of_twice_the_rate_then_the_rate() {
        let mut bucket = TokenBucket::new(5);
        let start = Instant::now();
        let burst = (0..20).filter(|_| bucket.take(start)).count();
        assert_eq!(burst, 10);
        assert!(!bucket.take(start));
        assert!(bucket.take(start + Duration::from_millis(210)));
        assert!(!bucket.take(start + Duration::from_millis(210)));
    }

    #[test]
    fn zero_rate_means_unlimited() {
        let mut bucket = TokenBucket::new(0);
        let now = Instant::now();
        assert!((0..10_000).all(|_| bucket.take(now)));
    }
}
