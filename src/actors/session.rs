//! `Session`: one actor per connection, bridging its transport and `ChatServer`.
//!
//! It reads frames (the codec enforces `--max-frame` from the header), answers what it
//! can alone — malformed requests, `ping`, requests out of place, the `--msg-rate`
//! bucket — and forwards the rest to `ChatServer` one at a time: while a request is
//! with the server the session reads nothing more, so a fast client is slowed by TCP
//! instead of filling a mailbox. Output goes through the writer task of
//! [`crate::server::outbound`]. Nothing is read before the connection is greeted, so a client
//! that connects while the server is paused gets no frame at all until `resume`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;

use super::chat_server::{
    AuthOutcome, Authenticate, ChangePassword, ChatServer, Connect, Credentials, DeleteAccount,
    Disconnect, Greeted, JoinRoom, ListRooms, Logout, Page, PartRoom, PeerHandle, PostMessage, Who,
};
use crate::codec::encode_frame;
use crate::log_noise;
use crate::protocol::{ClientMessage, ErrorCode, ServerMessage, MAX_PAGE, MAX_TEXT_CHARS};
use crate::server::config::ServerConfig;
use crate::server::limits::ConnectionSlot;
use crate::server::limits::TokenBucket;
use crate::server::logging::Noise;
use crate::server::outbound::{direct_queue, run_writer, Outbox, SessionId, WriterEnd};
use crate::server::transport::{Inbound, InboundStream, Transport};
use crate::text;

/// How often the idle timeout is checked.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// `say` requests a session may have queued at `ChatServer` before it stops reading
/// until they are taken. Pipelining keeps a sender's window moving without a round
/// trip per message; the cap bounds what one connection can put in the server's
/// mailbox (the rest waits in its own socket, slowed by TCP).
const SAYS_IN_FLIGHT: usize = 32;

/// Bad requests (malformed, or out of place) a connection may send in a burst before it
/// is closed; the allowance refills at [`BAD_INPUT_RATE`] a second. A client with a bug
/// gets many answers explaining it; one that only sends garbage is cut off.
const BAD_INPUT_BURST: u32 = 50;
const BAD_INPUT_RATE: u32 = 1;

/// Longest explanation of a bad request sent back: it may quote the request.
const MAX_ERROR_TEXT_CHARS: usize = 200;

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
    transport: Option<Box<dyn Transport>>,
    /// The read half until the connection is greeted.
    inbound: Option<InboundStream>,
    outbox: Option<Outbox>,
    stage: Stage,
    last_heard: Instant,
    /// `--msg-rate` for this connection (the account's is `ChatServer`'s).
    bucket: TokenBucket,
    /// Bad requests this connection may still send.
    bad_input: TokenBucket,
    /// `say` requests sent to `ChatServer` and not yet taken.
    says_in_flight: usize,
    /// Set once the connection has been asked to close.
    closing: bool,
    /// This connection's descriptor slot, given back when the session ends.
    _slot: ConnectionSlot,
}

impl Session {
    /// A session for an accepted socket (non-blocking, from another thread's listener).
    pub fn new(
        id: SessionId,
        peer: SocketAddr,
        transport: Box<dyn Transport>,
        server: Addr<ChatServer>,
        settings: Arc<SessionSettings>,
        slot: ConnectionSlot,
    ) -> Session {
        let bucket = TokenBucket::new(settings.msg_rate, settings.msg_rate.saturating_mul(2));
        Session {
            id,
            peer,
            server,
            settings,
            transport: Some(transport),
            inbound: None,
            outbox: None,
            stage: Stage::Waiting,
            last_heard: Instant::now(),
            bucket,
            bad_input: TokenBucket::new(BAD_INPUT_RATE, BAD_INPUT_BURST),
            says_in_flight: 0,
            closing: false,
            _slot: slot,
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

    /// Answers a bad request; a connection that keeps sending them is closed.
    fn refuse_bad_input(&mut self, code: ErrorCode, message: &str, ctx: &mut Context<Self>) {
        if self.bad_input.take(Instant::now()) {
            self.reply_error(code, message);
            return;
        }
        log_noise!(
            self.peer.ip(),
            Noise::BadInput,
            log::Level::Warn,
            "session {} from {}: too many bad requests, closing",
            self.id,
            self.peer
        );
        self.reply_error(
            ErrorCode::BadRequest,
            "too many bad requests; closing the connection",
        );
        self.close(ctx);
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
                let reason = err.to_string();
                log_noise!(
                    self.peer.ip(),
                    Noise::BadInput,
                    log::Level::Info,
                    "session {} from {}: bad request: {}",
                    self.id,
                    self.peer,
                    text::quote(&reason)
                );
                let shown = text::excerpt(&reason, MAX_ERROR_TEXT_CHARS);
                self.refuse_bad_input(ErrorCode::BadRequest, &shown, ctx);
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
            (Stage::Anonymous | Stage::Waiting, _) => self.refuse_bad_input(
                ErrorCode::NotAuthenticated,
                "log in first (resume, login or register)",
                ctx,
            ),
            (
                Stage::User(_),
                ClientMessage::Resume { .. }
                | ClientMessage::Login { .. }
                | ClientMessage::Register { .. },
            ) => self.refuse_bad_input(ErrorCode::BadRequest, "already authenticated", ctx),
            (Stage::User(_), ClientMessage::Say { text, room, to }) => {
                self.post_message(text, room, to, ctx)
            }
            (Stage::User(_), ClientMessage::Who { room }) => {
                self.server.do_send(Who { id: self.id, room })
            }
            (Stage::User(_), ClientMessage::Join { room }) => {
                // Nothing more is read until the room is joined: a `say` sent right after
                // the `join` finds this connection in the room.
                self.server
                    .send(JoinRoom { id: self.id, room })
                    .into_actor(self)
                    .map(|_, _, _| ())
                    .wait(ctx);
            }
            (Stage::User(_), ClientMessage::Part { room }) => {
                self.server
                    .send(PartRoom { id: self.id, room })
                    .into_actor(self)
                    .map(|_, _, _| ())
                    .wait(ctx);
            }
            (Stage::User(_), ClientMessage::Rooms) => {
                self.server.do_send(ListRooms { id: self.id })
            }
            (
                Stage::User(_),
                ClientMessage::History {
                    room,
                    with,
                    before,
                    limit,
                },
            ) => self.page(room, with, before, limit, ctx),
            (Stage::User(_), ClientMessage::Logout) => {
                self.server
                    .send(Logout { id: self.id })
                    .into_actor(self)
                    .map(|_, act, ctx| act.close(ctx))
                    .wait(ctx);
            }
            (Stage::User(_), ClientMessage::Quit) => self.close(ctx),
            (Stage::User(_), ClientMessage::ChangePassword { old, new }) => {
                if !crate::auth::is_valid_password(&new) {
                    let rule = crate::auth::password_rule();
                    self.reply_error(ErrorCode::InvalidPassword, rule);
                    return;
                }
                // One request at a time: nothing more is read until it is answered.
                self.server
                    .send(ChangePassword {
                        id: self.id,
                        old,
                        new,
                    })
                    .into_actor(self)
                    .map(|_, _, _| ())
                    .wait(ctx);
            }
            (Stage::User(_), ClientMessage::DeleteAccount { password }) => {
                self.server
                    .send(DeleteAccount {
                        id: self.id,
                        password,
                    })
                    .into_actor(self)
                    .map(|_, _, _| ())
                    .wait(ctx);
            }
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

    /// Checks a history request and forwards it.
    fn page(
        &mut self,
        room: Option<String>,
        with: Option<String>,
        before: Option<u64>,
        limit: Option<u64>,
        ctx: &mut Context<Self>,
    ) {
        let problem = if room.is_some() && with.is_some() {
            Some("a history request names a room or a user, not both".to_string())
        } else if limit.is_some_and(|l| !(1..=MAX_PAGE).contains(&l)) {
            Some(format!("limit is from 1 to {MAX_PAGE}"))
        } else if before == Some(0) {
            Some("before is a message id, a positive integer".to_string())
        } else {
            None
        };
        if let Some(problem) = problem {
            self.refuse_bad_input(ErrorCode::BadRequest, &problem, ctx);
            return;
        }
        self.server.do_send(Page {
            id: self.id,
            room,
            with,
            before,
            limit,
        });
    }

    fn post_message(
        &mut self,
        text: String,
        room: Option<String>,
        to: Option<String>,
        ctx: &mut Context<Self>,
    ) {
        if room.is_some() && to.is_some() {
            self.refuse_bad_input(
                ErrorCode::BadRequest,
                "a message goes to a room or to a user, not both",
                ctx,
            );
            return;
        }
        if text.is_empty() {
            self.refuse_bad_input(ErrorCode::BadRequest, "empty message", ctx);
            return;
        }
        if text.chars().count() > MAX_TEXT_CHARS {
            let reason = format!("message longer than {MAX_TEXT_CHARS} characters");
            self.refuse_bad_input(ErrorCode::BadRequest, &reason, ctx);
            return;
        }
        if !self.bucket.take(Instant::now()) {
            log_noise!(
                self.peer.ip(),
                Noise::Limit,
                log::Level::Warn,
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
            .send(PostMessage {
                id: self.id,
                text,
                room,
                to,
            })
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
                    log_noise!(
                        act.peer.ip(),
                        Noise::Connection,
                        log::Level::Info,
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
                    log_noise!(
                        act.peer.ip(),
                        Noise::Connection,
                        log::Level::Info,
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
        let opened = match self.transport.take() {
            Some(transport) => transport.open(self.settings.max_frame),
            None => {
                ctx.stop();
                return;
            }
        };
        let opened = match opened {
            Ok(opened) => opened,
            Err(err) => {
                log::error!(
                    "session {} from {}: connection unusable: {err}",
                    self.id,
                    self.peer
                );
                ctx.stop();
                return;
            }
        };
        self.inbound = Some(opened.inbound);
        let (outbox, queue) = direct_queue();
        self.outbox = Some(outbox.clone());
        let me = ctx.address();
        let writer = run_writer(
            self.id,
            opened.writer,
            opened.reset,
            queue,
            self.settings.send_queue,
        );
        actix::spawn(async move {
            let end = writer.await;
            me.do_send(WriterFinished(end));
        });
        self.server.do_send(Connect {
            id: self.id,
            peer: self.peer,
            handle: PeerHandle {
                outbox,
                greeter: ctx.address().recipient(),
            },
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

impl Handler<Greeted> for Session {
    type Result = ();

    fn handle(&mut self, _: Greeted, ctx: &mut Self::Context) {
        let Some(inbound) = self.inbound.take() else {
            return;
        };
        self.stage = Stage::Anonymous;
        ctx.add_stream(inbound);
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
        let (id, peer, ip) = (self.id, self.peer, self.peer.ip());
        match msg.0 {
            WriterEnd::Closed | WriterEnd::Aborted => {}
            WriterEnd::Lagged => log_noise!(
                ip,
                Noise::Limit,
                log::Level::Warn,
                "session {id} from {peer}: fell a whole broadcast ring behind, dropped"
            ),
            WriterEnd::SendQueueFull(bytes) => log_noise!(
                ip,
                Noise::Limit,
                log::Level::Warn,
                "session {id} from {peer}: {bytes} bytes unsent (over --send-queue), dropped"
            ),
            WriterEnd::CloseTimedOut => log_noise!(
                ip,
                Noise::Connection,
                log::Level::Info,
                "session {id} from {peer}: last frames not taken in time, closed"
            ),
            WriterEnd::Io(err) => log_noise!(
                ip,
                Noise::Connection,
                log::Level::Info,
                "session {id} from {peer}: write failed: {err}"
            ),
        }
        ctx.stop();
    }
}

impl StreamHandler<Inbound> for Session {
    fn handle(&mut self, item: Inbound, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        match item {
            Inbound::Payload(payload) => self.handle_payload(payload, ctx),
            Inbound::Binary => self.refuse_bad_input(
                ErrorCode::BadRequest,
                "binary messages are not accepted; send each JSON object as text",
                ctx,
            ),
            Inbound::TooLarge { len, max } => {
                let reason = format!("frame of {len} bytes exceeds the limit of {max} bytes");
                log_noise!(
                    self.peer.ip(),
                    Noise::BadInput,
                    log::Level::Warn,
                    "session {} from {}: {reason}; closing",
                    self.id,
                    self.peer
                );
                self.reply_error(ErrorCode::FrameTooLarge, reason);
                self.close(ctx);
            }
            Inbound::Failed(err) => {
                log_noise!(
                    self.peer.ip(),
                    Noise::Connection,
                    log::Level::Info,
                    "session {} from {}: read failed: {err}",
                    self.id,
                    self.peer
                );
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
