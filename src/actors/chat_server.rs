//! `ChatServer`: the one owner of accounts, online sessions, history and the pause flag.
//!
//! Sessions send it typed requests; it answers by queueing frames on the session's
//! [`Outbox`] and publishes chat on the shared [`Broadcaster`] ring, serialising each
//! MESSAGE once. Slow work never runs on its thread: PBKDF2 goes to the
//! [`HashingPool`] (one computation per core, taking turns between addresses, so a
//! login storm queues instead of starving chat), and files go to `Persistence`.
//! Identity changes are [`IdentityChange`] values applied here and handed to
//! `Persistence`; a new account's `auth_ok` is held until it is on disk.

mod history;
mod presence;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

pub use self::history::{History, MAX_REPLAY_BYTES};
pub use self::presence::{Departure, Presence, LEFT_GRACE};
use super::persistence::{
    AppendHistory, HistoryWritable, PersistError, Persistence, RecordIdentities, ReserveIds,
    SyncForShutdown, WatchHistory,
};
use super::session::{Greeted, Session};
use crate::auth::{self, SERVER_NAME};
use crate::codec::{encode_frame, payload_of};
use crate::log_noise;
use crate::names::{self, confusable_keys, name_key};
use crate::protocol::{AuthErrorCode, ChatMessage, ErrorCode, ServerMessage};
use crate::server::config::ServerConfig;
use crate::server::hashing::HashingPool;
use crate::server::identity::{Account, Identities, IdentityChange};
use crate::server::limits::{KeyedBuckets, WindowLimiter};
use crate::server::logging::Noise;
use crate::server::outbound::{Broadcaster, Outbox, SessionId};
use crate::text::plural;

/// How often expired tokens and idle limiter entries are dropped.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

/// The window over which wrong guesses are counted (`--login-rate` is per minute).
const GUESS_WINDOW: Duration = Duration::from_secs(60);

/// The window over which new accounts are counted (`--register-rate` is per hour).
const REGISTER_WINDOW: Duration = Duration::from_secs(3600);

/// An address's authentications may burst to this many times `--auth-rate`.
const AUTH_BURST_FACTOR: u32 = 5;

/// How long shutdown waits for writers to deliver the `shutdown` frame.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// The settings `ChatServer` needs, taken from the command line.
#[derive(Debug, Clone)]
pub struct ChatSettings {
    pub history: usize,
    pub pbkdf2_rounds: u32,
    pub token_ttl: Duration,
    /// Connections at once: `--max-conns`, lowered to what the open-file limit allows.
    pub max_conns: usize,
    pub max_conns_per_ip: usize,
    pub login_rate: usize,
    pub register_rate: usize,
    pub msg_rate: u32,
    pub auth_rate: u32,
    /// PBKDF2 computations allowed at once.
    pub hashing_slots: usize,
}

impl ChatSettings {
    /// The settings in `config`, with one hashing slot per core and at most
    /// `max_conns` connections.
    pub fn from_config(config: &ServerConfig, max_conns: usize) -> ChatSettings {
        ChatSettings {
            history: config.history,
            pbkdf2_rounds: config.pbkdf2_rounds,
            token_ttl: Duration::from_secs(config.token_ttl),
            max_conns,
            max_conns_per_ip: config.max_conns_per_ip,
            login_rate: config.login_rate as usize,
            register_rate: config.register_rate as usize,
            msg_rate: config.msg_rate,
            auth_rate: config.auth_rate,
            hashing_slots: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// One connection as the server sees it.
struct Connection {
    session: Addr<Session>,
    outbox: Outbox,
    ip: IpAddr,
    greeted: bool,
    /// Name key once authenticated.
    user: Option<String>,
    /// Digest of the token this connection's last `auth_ok` carried.
    token_digest: Option<String>,
}

/// Where the server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    Serving,
    /// Shutdown has begun: nothing new is accepted.
    ShuttingDown,
    /// The state is on disk and every connection has been told; the process stops
    /// once they are gone (or the grace period ends).
    Drained,
}

/// The rate limits `ChatServer` keeps (see `limits`).
struct Limits {
    /// Wrong guesses (bad passwords, invalid tokens) per address (`--login-rate`).
    guesses_by_ip: WindowLimiter<IpAddr>,
    /// Wrong passwords per account (`--login-rate`): many addresses, one victim.
    guesses_by_account: WindowLimiter<String>,
    /// New accounts per address (`--register-rate`).
    registrations: WindowLimiter<IpAddr>,
    /// Authentications per address (`--auth-rate`), answered late beyond it.
    auth_pace: KeyedBuckets<IpAddr>,
    /// `say` per account across its connections (`--msg-rate`).
    messages: KeyedBuckets<String>,
}

impl Limits {
    fn new(settings: &ChatSettings) -> Limits {
        Limits {
            guesses_by_ip: WindowLimiter::new(settings.login_rate, GUESS_WINDOW),
            guesses_by_account: WindowLimiter::new(settings.login_rate, GUESS_WINDOW),
            registrations: WindowLimiter::new(settings.register_rate, REGISTER_WINDOW),
            auth_pace: KeyedBuckets::new(
                settings.auth_rate,
                settings.auth_rate.saturating_mul(AUTH_BURST_FACTOR),
            ),
            messages: KeyedBuckets::new(settings.msg_rate, settings.msg_rate.saturating_mul(2)),
        }
    }

    fn prune(&mut self, now: Instant) {
        self.guesses_by_ip.prune(now);
        self.guesses_by_account.prune(now);
        self.registrations.prune(now);
        self.auth_pace.prune(now);
        self.messages.prune(now);
    }
}

/// The actor. See the module documentation.
pub struct ChatServer {
    settings: ChatSettings,
    persistence: Addr<Persistence>,
    /// Cancelled at shutdown: the accept loop stops.
    stop_accepting: CancellationToken,
    address: SocketAddr,
    started_at: Instant,
    lifecycle: Lifecycle,

    identities: Identities,
    connections: HashMap<SessionId, Connection>,
    per_ip: HashMap<IpAddr, usize>,
    presence: Presence,
    /// Keys (name and look-alike) of registrations whose hash is being computed.
    pending_names: HashSet<String>,
    limits: Limits,

    paused: bool,
    /// Connections accepted while paused, in arrival order.
    waiting: VecDeque<SessionId>,

    ring: Broadcaster,
    history: History,
    hashing: HashingPool,
}

impl ChatServer {
    /// A server over the state recovered at start-up. Must be called within the actor
    /// system (it starts the hashing pool).
    pub fn new(
        settings: ChatSettings,
        identities: Identities,
        history: History,
        persistence: Addr<Persistence>,
        stop_accepting: CancellationToken,
        address: SocketAddr,
    ) -> ChatServer {
        ChatServer {
            hashing: HashingPool::start(settings.hashing_slots),
            limits: Limits::new(&settings),
            settings,
            persistence,
            stop_accepting,
            address,
            started_at: Instant::now(),
            lifecycle: Lifecycle::Serving,
            identities,
            connections: HashMap::new(),
            per_ip: HashMap::new(),
            presence: Presence::default(),
            pending_names: HashSet::new(),
            paused: false,
            waiting: VecDeque::new(),
            ring: Broadcaster::default(),
            history,
        }
    }

    /// Queues `message` for one connection.
    fn send_to(&self, id: SessionId, message: &ServerMessage) {
        if let Some(conn) = self.connections.get(&id) {
            if let Some(frame) = encode(message) {
                conn.outbox.send(frame);
            }
        }
    }

    fn send_error(&self, id: SessionId, code: ErrorCode, message: &str) {
        self.send_to(id, &ServerMessage::error(code, message));
    }

    fn greet(&mut self, id: SessionId) {
        let Some(conn) = self.connections.get_mut(&id) else {
            return;
        };
        conn.greeted = true;
        let welcome = ServerMessage::Welcome {
            server: "echochat".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            known_name: self.identities.known_name(conn.ip),
        };
        if let Some(frame) = encode(&welcome) {
            conn.outbox.send(frame);
        }
        conn.session.do_send(Greeted);
    }

    /// Applies identity changes here and hands them to `Persistence`, to be written
    /// with the next batch.
    fn note_identities(&mut self, changes: Vec<IdentityChange>) {
        if changes.is_empty() {
            return;
        }
        for change in &changes {
            self.identities.apply(change);
        }
        self.persistence.do_send(RecordIdentities {
            changes,
            durable: false,
        });
    }

    /// Applies identity changes here and hands them to `Persistence`; the future ends
    /// once they are on disk.
    fn save_identities(
        &mut self,
        changes: Vec<IdentityChange>,
    ) -> impl std::future::Future<Output = Result<(), PersistError>> {
        for change in &changes {
            self.identities.apply(change);
        }
        let sent = self.persistence.send(RecordIdentities {
            changes,
            durable: true,
        });
        async move {
            sent.await.unwrap_or_else(|e| {
                Err(PersistError {
                    path: "the state folder".into(),
                    message: format!("persistence unavailable: {e}"),
                })
            })
        }
    }

    /// Assigns the next id, records the message in history and delivers it to everyone;
    /// `None` if no id could be given (the reservation could not be written).
    fn publish_message(
        &mut self,
        from: &str,
        text: String,
        ctx: &mut Context<Self>,
    ) -> Option<u64> {
        let id = self.history.take_id();
        self.reserve_ids_if_due(ctx);
        let id = id?;
        let message = ServerMessage::Message(ChatMessage {
            id,
            from: from.to_string(),
            text,
            ts: unix_ms(),
        });
        let frame = encode(&message)?;
        let payload = payload_of(&frame);
        self.history.record(payload.clone());
        self.persistence.do_send(AppendHistory(payload));
        self.ring.publish(frame, None);
        Some(id)
    }

    /// Asks `Persistence` for the next block of ids when the reservation runs low.
    fn reserve_ids_if_due(&mut self, ctx: &mut Context<Self>) {
        let Some(through) = self.history.reservation_due() else {
            return;
        };
        self.persistence
            .send(ReserveIds { through })
            .into_actor(self)
            .map(move |saved, act, _| match saved {
                Ok(Ok(())) => act.history.reserved(through),
                Ok(Err(err)) => {
                    log::error!("message ids not reserved: {err}");
                    act.history.reservation_failed();
                }
                Err(err) => {
                    log::error!("message ids not reserved: {err}");
                    act.history.reservation_failed();
                }
            })
            .spawn(ctx);
    }

    /// Finishes a successful authentication: token, `auth_ok`, history, ring, `joined`.
    fn complete_login(
        &mut self,
        id: SessionId,
        key: &str,
        name: &str,
        new_user: bool,
    ) -> AuthOutcome {
        let Some(ip) = self.connections.get(&id).map(|c| c.ip) else {
            return AuthOutcome::Refused;
        };
        let ttl_ms = self.settings.token_ttl.as_millis() as u64;
        let (token, digest, mut changes) = self.identities.new_token_for(key, unix_ms(), ttl_ms);
        if !self.identities.ip_is_known_as(ip, name) {
            changes.push(IdentityChange::RememberIp {
                ip,
                name: name.to_string(),
            });
        }
        self.note_identities(changes);

        let auth_ok = ServerMessage::AuthOk {
            name: name.to_string(),
            token,
            new_user,
        };
        // Logged before anything is sent, so the log never lags what the client saw.
        log::info!("session {id} from {ip} authenticated as {name} (new user: {new_user})");
        let history = self.history.frame();
        let subscription = self.ring.subscribe();
        let Some(conn) = self.connections.get_mut(&id) else {
            return AuthOutcome::Refused;
        };
        conn.user = Some(key.to_string());
        conn.token_digest = Some(digest);
        if let Some(frame) = encode(&auth_ok) {
            conn.outbox.send(frame);
        }
        conn.outbox.send(history);
        // Same step as the history snapshot: no message falls between them or comes twice.
        conn.outbox.subscribe(subscription);

        if self.presence.arrive(key, name) {
            self.broadcast_event(
                &ServerMessage::Joined {
                    name: name.to_string(),
                },
                Some(id),
            );
        }
        AuthOutcome::Authenticated {
            name: name.to_string(),
        }
    }

    fn broadcast_event(&self, message: &ServerMessage, skip: Option<SessionId>) {
        if let Some(frame) = encode(message) {
            self.ring.publish(frame, skip);
        }
    }

    /// A refused authentication: logged and answered. (Whether it counts against a
    /// limit is for the caller to say.)
    fn refuse(&mut self, id: SessionId, ip: IpAddr, code: AuthErrorCode) -> AuthOutcome {
        let message = match code {
            AuthErrorCode::UnknownUser => "no account has that name".to_string(),
            AuthErrorCode::BadPassword => "wrong password".to_string(),
            AuthErrorCode::NameTaken => {
                "that name (or one that looks like it) is taken".to_string()
            }
            AuthErrorCode::InvalidToken => "the token is unknown, spent or expired".to_string(),
            AuthErrorCode::InvalidName => names::name_rule(),
            AuthErrorCode::InvalidPassword => auth::password_rule(),
            AuthErrorCode::RateLimited => {
                "too many attempts; wait a while and try again".to_string()
            }
        };
        if code == AuthErrorCode::RateLimited {
            log_noise!(
                ip,
                Noise::Limit,
                log::Level::Warn,
                "session {id} from {ip}: authentication rate limit hit"
            );
        } else {
            log_noise!(
                ip,
                Noise::AuthFailure,
                log::Level::Info,
                "session {id} from {ip}: authentication failed ({code:?})"
            );
        }
        self.send_to(id, &ServerMessage::auth_error(code, message));
        AuthOutcome::Refused
    }

    /// Whether a registration of `name` is waiting for its hash: the name, or one that
    /// looks like it.
    fn name_pending(&self, name: &str) -> bool {
        self.pending_names.contains(&name_key(name))
            || confusable_keys(name)
                .iter()
                .any(|k| self.pending_names.contains(k))
    }

    /// The keys a pending registration of `name` holds.
    fn pending_keys(name: &str) -> Vec<String> {
        let mut keys = vec![name_key(name)];
        keys.extend(confusable_keys(name));
        keys
    }

    /// Once the state is on disk and every connection is gone, stop the process.
    fn finish_shutdown_if_drained(&self) {
        if self.lifecycle == Lifecycle::Drained && self.connections.is_empty() {
            System::current().stop();
        }
    }
}

impl Actor for ChatServer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Unbounded (0, in actix's terms), so that a session's pipelined requests are
        // never parked and reordered; each session caps what it has in flight instead.
        // Set before any session exists, so no sender is parked yet.
        ctx.set_mailbox_capacity(0);
        self.persistence
            .do_send(WatchHistory(ctx.address().recipient()));
        self.reserve_ids_if_due(ctx);
        ctx.run_interval(HOUSEKEEPING_INTERVAL, |act, _| {
            let now = unix_ms();
            if act.identities.has_expired_tokens(now) {
                act.note_identities(vec![IdentityChange::PruneExpired { now_ms: now }]);
            }
            act.limits.prune(Instant::now());
            act.presence.prune(Instant::now());
        });
    }
}

fn encode(message: &ServerMessage) -> Option<Bytes> {
    match encode_frame(message) {
        Ok(frame) => Some(frame),
        Err(err) => {
            log::error!("could not serialise a frame: {err}");
            None
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

// ---------------------------------------------------------------------------------
// Connection lifecycle

/// A new connection (sent by its session once started).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Connect {
    pub id: SessionId,
    pub peer: SocketAddr,
    pub session: Addr<Session>,
    pub outbox: Outbox,
}

impl Handler<Connect> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: Connect, _: &mut Self::Context) {
        let ip = msg.peer.ip();
        let limit = &self.settings;
        let refusal = if self.lifecycle != Lifecycle::Serving {
            Some("shutting down")
        } else if limit.max_conns > 0 && self.connections.len() >= limit.max_conns {
            Some("--max-conns reached")
        } else if limit.max_conns_per_ip > 0
            && self.per_ip.get(&ip).copied().unwrap_or(0) >= limit.max_conns_per_ip
        {
            Some("--max-conns-per-ip reached")
        } else {
            None
        };
        if let Some(reason) = refusal {
            log_noise!(
                ip,
                Noise::Limit,
                log::Level::Warn,
                "connection {} from {} refused: {reason}",
                msg.id,
                msg.peer
            );
            msg.outbox.close();
            return;
        }
        log_noise!(
            ip,
            Noise::Connection,
            log::Level::Info,
            "session {} connected from {}",
            msg.id,
            msg.peer
        );
        *self.per_ip.entry(ip).or_insert(0) += 1;
        self.connections.insert(
            msg.id,
            Connection {
                session: msg.session,
                outbox: msg.outbox,
                ip,
                greeted: false,
                user: None,
                token_digest: None,
            },
        );
        if self.paused {
            self.waiting.push_back(msg.id);
        } else {
            self.greet(msg.id);
        }
    }
}

/// A connection has ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnect {
    pub id: SessionId,
}

impl Handler<Disconnect> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, ctx: &mut Self::Context) {
        let Some(conn) = self.connections.remove(&msg.id) else {
            return;
        };
        if let Some(count) = self.per_ip.get_mut(&conn.ip) {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&conn.ip);
            }
        }
        if !conn.greeted {
            self.waiting.retain(|id| *id != msg.id);
        }
        log_noise!(
            conn.ip,
            Noise::Connection,
            log::Level::Info,
            "session {} from {} disconnected",
            msg.id,
            conn.ip
        );
        if let Some(key) = conn.user {
            match self.presence.depart(&key, Instant::now()) {
                Departure::Stayed => {}
                Departure::Left(name) => self.broadcast_event(&ServerMessage::Left { name }, None),
                Departure::Held(held) => {
                    ctx.run_later(LEFT_GRACE, move |act, _| {
                        if let Some(name) = act.presence.departure_due(&held, Instant::now()) {
                            act.broadcast_event(&ServerMessage::Left { name }, None);
                        }
                    });
                }
            }
        }
        self.finish_shutdown_if_drained();
    }
}

// ---------------------------------------------------------------------------------
// Authentication

/// What a client offers to authenticate.
#[derive(Debug)]
pub enum Credentials {
    Resume { token: String },
    Login { name: String, password: String },
    Register { name: String, password: String },
}

/// Authenticate a connection. The frames (`auth_ok` + `history`, or `auth_error`) are
/// queued on its outbox; the session learns the outcome from the reply.
#[derive(Message)]
#[rtype(result = "AuthOutcome")]
pub struct Authenticate {
    pub id: SessionId,
    pub credentials: Credentials,
}

/// How an [`Authenticate`] ended.
#[derive(Debug, Clone, PartialEq, Eq, MessageResponse)]
pub enum AuthOutcome {
    Authenticated { name: String },
    Refused,
}

impl Handler<Authenticate> for ChatServer {
    type Result = ResponseActFuture<Self, AuthOutcome>;

    fn handle(&mut self, msg: Authenticate, _: &mut Self::Context) -> Self::Result {
        let id = msg.id;
        let Some(ip) = self.connections.get(&id).map(|c| c.ip) else {
            return Box::pin(fut::ready(AuthOutcome::Refused));
        };
        if self.lifecycle != Lifecycle::Serving {
            return Box::pin(fut::ready(AuthOutcome::Refused));
        }
        // An address authenticating in a tight loop is answered late, not refused: the
        // session waits for this answer before it reads anything more.
        let wait = self.limits.auth_pace.take_or_wait(&ip, Instant::now());
        if wait.is_zero() {
            return self.authenticate(id, ip, msg.credentials);
        }
        log_noise!(
            ip,
            Noise::Limit,
            log::Level::Info,
            "session {id} from {ip}: authentications paced, answering in {wait:?}"
        );
        let credentials = msg.credentials;
        Box::pin(
            fut::wrap_future(tokio::time::sleep(wait))
                .then(move |_, act: &mut Self, _| act.authenticate(id, ip, credentials)),
        )
    }
}

impl ChatServer {
    fn authenticate(
        &mut self,
        id: SessionId,
        ip: IpAddr,
        credentials: Credentials,
    ) -> ResponseActFuture<Self, AuthOutcome> {
        if !self.connections.contains_key(&id) || self.lifecycle != Lifecycle::Serving {
            return Box::pin(fut::ready(AuthOutcome::Refused));
        }
        match credentials {
            Credentials::Resume { token } => Box::pin(fut::ready(self.resume(id, ip, &token))),
            Credentials::Login { name, password } => self.login(id, ip, name, password),
            Credentials::Register { name, password } => self.register(id, ip, name, password),
        }
    }

    /// A valid token always logs in: checking one is cheap, so the guess limiter is
    /// asked only about tokens that fail.
    fn resume(&mut self, id: SessionId, ip: IpAddr, token: &str) -> AuthOutcome {
        if let Some((key, account, digest)) = self.identities.check_token(token, unix_ms()) {
            let (key, name) = (key.to_string(), account.name.clone());
            // Spent by this use.
            self.note_identities(vec![IdentityChange::RevokeToken { digest }]);
            return self.complete_login(id, &key, &name, false);
        }
        let now = Instant::now();
        if self.limits.guesses_by_ip.exceeded(&ip, now) {
            return self.refuse(id, ip, AuthErrorCode::RateLimited);
        }
        self.limits.guesses_by_ip.record(&ip, now);
        self.refuse(id, ip, AuthErrorCode::InvalidToken)
    }

    fn login(
        &mut self,
        id: SessionId,
        ip: IpAddr,
        name: String,
        password: String,
    ) -> ResponseActFuture<Self, AuthOutcome> {
        let now = Instant::now();
        if self.limits.guesses_by_ip.exceeded(&ip, now) {
            return Box::pin(fut::ready(self.refuse(id, ip, AuthErrorCode::RateLimited)));
        }
        // The code already says the name is unknown, so there is nothing to hide by
        // hashing, and nothing to count: it is not a guess at a password.
        let Some((key, account)) = self.identities.find(&name) else {
            return Box::pin(fut::ready(self.refuse(id, ip, AuthErrorCode::UnknownUser)));
        };
        let (key, stored) = (key.clone(), account.password_hash.clone());
        if self.limits.guesses_by_account.exceeded(&key, now) {
            log_noise!(
                ip,
                Noise::Limit,
                log::Level::Warn,
                "session {id} from {ip}: too many wrong passwords for one account lately"
            );
            return Box::pin(fut::ready(self.refuse(id, ip, AuthErrorCode::RateLimited)));
        }
        self.limits.guesses_by_ip.begin(&ip);
        self.limits.guesses_by_account.begin(&key);
        let hash = stored.clone();
        let check = self
            .hashing
            .run(ip, move || auth::verify_password(&password, &hash));
        Box::pin(
            fut::wrap_future(check).map(move |verdict, act: &mut Self, _| {
                act.limits.guesses_by_ip.end(&ip);
                act.limits.guesses_by_account.end(&key);
                // The account may have changed while the hash computed (clear-ids).
                let current = act.identities.account_by_key(&key).cloned();
                match (verdict, current) {
                    (_, None) => act.refuse(id, ip, AuthErrorCode::UnknownUser),
                    (Some(Ok(true)), Some(account)) if account.password_hash == stored => {
                        act.complete_login(id, &key, &account.name, false)
                    }
                    (Some(Ok(_)), Some(_)) => {
                        let now = Instant::now();
                        act.limits.guesses_by_ip.record(&ip, now);
                        act.limits.guesses_by_account.record(&key, now);
                        act.refuse(id, ip, AuthErrorCode::BadPassword)
                    }
                    (Some(Err(err)), Some(account)) => {
                        log::error!("password check for {} failed: {err}", account.name);
                        act.send_error(id, ErrorCode::Internal, "could not check the password");
                        AuthOutcome::Refused
                    }
                    (None, Some(account)) => {
                        log::error!("password check for {} did not run", account.name);
                        act.send_error(id, ErrorCode::Internal, "could not check the password");
                        AuthOutcome::Refused
                    }
                }
            }),
        )
    }

    fn register(
        &mut self,
        id: SessionId,
        ip: IpAddr,
        name: String,
        password: String,
    ) -> ResponseActFuture<Self, AuthOutcome> {
        let refusal = if let Err(err) = names::check_name(&name) {
            log_noise!(
                ip,
                Noise::AuthFailure,
                log::Level::Info,
                "session {id} from {ip}: invalid name: {err}"
            );
            Some(AuthErrorCode::InvalidName)
        } else if !auth::is_valid_password(&password) {
            Some(AuthErrorCode::InvalidPassword)
        } else if names::is_server_name(&name)
            || self.identities.is_taken(&name)
            || self.name_pending(&name)
        {
            Some(AuthErrorCode::NameTaken)
        } else if self.limits.registrations.exceeded(&ip, Instant::now()) {
            log_noise!(
                ip,
                Noise::Limit,
                log::Level::Warn,
                "session {id} from {ip}: --register-rate reached"
            );
            Some(AuthErrorCode::RateLimited)
        } else {
            None
        };
        if let Some(code) = refusal {
            return Box::pin(fut::ready(self.refuse(id, ip, code)));
        }
        let pending = Self::pending_keys(&name);
        self.pending_names.extend(pending.iter().cloned());
        self.limits.registrations.begin(&ip);
        let rounds = self.settings.pbkdf2_rounds;
        let hashing = self
            .hashing
            .run(ip, move || auth::hash_password(&password, rounds));
        Box::pin(
            fut::wrap_future(hashing)
                .then(move |hashed, act: &mut Self, _| {
                    for key in &pending {
                        act.pending_names.remove(key);
                    }
                    act.limits.registrations.end(&ip);
                    let failure = match hashed {
                        Some(Ok(hash)) => Ok(hash),
                        Some(Err(err)) => Err(format!("hashing the password failed: {err}")),
                        None => Err("hashing the password did not run".to_string()),
                    };
                    let account = failure.map(|password_hash| Account {
                        name: name.clone(),
                        password_hash,
                        created_ms: unix_ms(),
                    });
                    let saved = match account {
                        Ok(account) => {
                            let key = name_key(&account.name);
                            let save =
                                act.save_identities(vec![IdentityChange::AddAccount { account }]);
                            futures_util::future::Either::Left(async move {
                                save.await.map(|()| key).map_err(|e| e.to_string())
                            })
                        }
                        Err(reason) => {
                            futures_util::future::Either::Right(std::future::ready(Err(reason)))
                        }
                    };
                    fut::wrap_future(saved).map(move |saved, _: &mut Self, _| (name, saved))
                })
                .map(move |(name, saved), act: &mut Self, _| match saved {
                    Ok(key) => {
                        act.limits.registrations.record(&ip, Instant::now());
                        log::info!("registered account {name} from {ip}");
                        act.complete_login(id, &key, &name, true)
                    }
                    Err(reason) => {
                        if act.identities.account(&name).is_some() {
                            // Saved in memory, not on disk: undone, so it can be retried.
                            act.note_identities(vec![IdentityChange::RemoveAccount {
                                key: name_key(&name),
                            }]);
                        }
                        log::error!("registration of {name} failed: {reason}");
                        act.send_error(
                            id,
                            ErrorCode::Internal,
                            "the account could not be saved; try again later",
                        );
                        AuthOutcome::Refused
                    }
                }),
        )
    }
}

// ---------------------------------------------------------------------------------
// Chat

/// A chat message from an authenticated connection (text already checked).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Say {
    pub id: SessionId,
    pub text: String,
}

impl Handler<Say> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: Say, ctx: &mut Self::Context) {
        if self.lifecycle != Lifecycle::Serving {
            return;
        }
        let Some(conn) = self.connections.get(&msg.id) else {
            return;
        };
        let (ip, Some(key)) = (conn.ip, conn.user.clone()) else {
            return;
        };
        let Some(name) = self.presence.name_of(&key).map(str::to_string) else {
            return;
        };
        if !self.history.is_writable() {
            self.send_error(
                msg.id,
                ErrorCode::Internal,
                "the server cannot record messages right now; not sent, try again later",
            );
            return;
        }
        if !self.limits.messages.take(&key, Instant::now()) {
            log_noise!(
                ip,
                Noise::Limit,
                log::Level::Warn,
                "session {} from {ip}: message rate limit of account {name} hit",
                msg.id
            );
            self.send_error(
                msg.id,
                ErrorCode::RateLimited,
                "too many messages from this account; slow down",
            );
            return;
        }
        if self.publish_message(&name, msg.text, ctx).is_none() {
            self.send_error(
                msg.id,
                ErrorCode::Internal,
                "the server cannot number messages right now; not sent, try again later",
            );
        }
    }
}

impl Handler<HistoryWritable> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: HistoryWritable, _: &mut Self::Context) {
        self.history.set_writable(msg.0);
        if !msg.0 {
            log::error!("history cannot be written: refusing chat messages until it can");
        }
    }
}

/// Who is online, answered to the asking connection.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Who {
    pub id: SessionId,
}

impl Handler<Who> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: Who, _: &mut Self::Context) {
        let users = self.presence.names();
        self.send_to(msg.id, &ServerMessage::Who { users });
    }
}

/// Revoke the connection's token (durably); answered once done, then the session closes.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Logout {
    pub id: SessionId,
}

impl Handler<Logout> for ChatServer {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Logout, _: &mut Self::Context) -> Self::Result {
        let digest = self
            .connections
            .get_mut(&msg.id)
            .and_then(|c| c.token_digest.take());
        let Some(digest) = digest else {
            return Box::pin(fut::ready(()));
        };
        log::info!("session {} logged out", msg.id);
        let saved = self.save_identities(vec![IdentityChange::RevokeToken { digest }]);
        Box::pin(fut::wrap_future(saved).map(|saved, _, _| {
            if let Err(err) = saved {
                log::error!("a logout's token revocation was not saved: {err}");
            }
        }))
    }
}

// ---------------------------------------------------------------------------------
// Admin

/// Stop or restart greeting new connections; answers how many waiting ones were greeted.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct SetPaused(pub bool);

impl Handler<SetPaused> for ChatServer {
    type Result = usize;

    fn handle(&mut self, msg: SetPaused, _: &mut Self::Context) -> usize {
        self.paused = msg.0;
        if self.paused {
            log::info!("greeting paused by the admin");
            return 0;
        }
        let waiting: Vec<SessionId> = self.waiting.drain(..).collect();
        log::info!(
            "greeting resumed by the admin; {} greeted",
            plural(waiting.len(), "waiting connection", "waiting connections")
        );
        for id in &waiting {
            self.greet(*id);
        }
        waiting.len()
    }
}

/// The figures `status` prints.
#[derive(Debug, Clone, MessageResponse)]
pub struct StatusReport {
    pub address: SocketAddr,
    pub paused: bool,
    pub users_online: usize,
    pub connections: usize,
    pub waiting: usize,
    pub accounts: usize,
    pub uptime: Duration,
    pub next_message_id: u64,
}

/// Ask for a [`StatusReport`].
#[derive(Message)]
#[rtype(result = "StatusReport")]
pub struct Status;

impl Handler<Status> for ChatServer {
    type Result = StatusReport;

    fn handle(&mut self, _: Status, _: &mut Self::Context) -> StatusReport {
        StatusReport {
            address: self.address,
            paused: self.paused,
            users_online: self.presence.len(),
            connections: self.connections.len(),
            waiting: self.waiting.len(),
            accounts: self.identities.users.len(),
            uptime: self.started_at.elapsed(),
            next_message_id: self.history.next_id(),
        }
    }
}

/// The online users' names, sorted ignoring case.
#[derive(Message)]
#[rtype(result = "Vec<String>")]
pub struct ListUsers;

impl Handler<ListUsers> for ChatServer {
    type Result = Vec<String>;

    fn handle(&mut self, _: ListUsers, _: &mut Self::Context) -> Vec<String> {
        self.presence.names()
    }
}

/// Forget every account, IP identification and token, durably.
#[derive(Message)]
#[rtype(result = "Result<(), PersistError>")]
pub struct ClearIdentities;

impl Handler<ClearIdentities> for ChatServer {
    type Result = ResponseActFuture<Self, Result<(), PersistError>>;

    fn handle(&mut self, _: ClearIdentities, _: &mut Self::Context) -> Self::Result {
        for conn in self.connections.values_mut() {
            conn.token_digest = None;
        }
        log::warn!("identities cleared by the admin");
        let saved = self.save_identities(vec![IdentityChange::Clear]);
        Box::pin(fut::wrap_future(saved))
    }
}

/// Close every connection of a user after telling them; answers how many.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Kick {
    pub name: String,
}

impl Handler<Kick> for ChatServer {
    type Result = usize;

    fn handle(&mut self, msg: Kick, _: &mut Self::Context) -> usize {
        let key = name_key(&msg.name);
        let Some(frame) = encode(&ServerMessage::Kicked {
            message: "you were removed by the server's admin".to_string(),
        }) else {
            return 0;
        };
        let mut kicked = 0;
        for conn in self.connections.values() {
            if conn.user.as_deref() == Some(key.as_str()) {
                conn.outbox.send(frame.clone());
                conn.outbox.close();
                kicked += 1;
            }
        }
        if kicked > 0 {
            log::warn!(
                "{} kicked by the admin ({})",
                msg.name,
                plural(kicked, "connection", "connections")
            );
        }
        kicked
    }
}

/// A message from `server` to everyone; answers its id (`None`: no id could be given).
#[derive(Message)]
#[rtype(result = "Option<u64>")]
pub struct AdminSay {
    pub text: String,
}

impl Handler<AdminSay> for ChatServer {
    type Result = Option<u64>;

    fn handle(&mut self, msg: AdminSay, ctx: &mut Self::Context) -> Option<u64> {
        log::info!("the admin said something");
        self.publish_message(SERVER_NAME, msg.text, ctx)
    }
}

/// Graceful shutdown: stop accepting, put the state on disk, tell every connection,
/// let writers deliver, stop the process.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<Shutdown> for ChatServer {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) {
        if self.lifecycle != Lifecycle::Serving {
            return;
        }
        self.lifecycle = Lifecycle::ShuttingDown;
        self.stop_accepting.cancel();
        log::info!("shutting down");
        self.persistence
            .send(SyncForShutdown {
                last_id: self.history.last_id(),
            })
            .into_actor(self)
            .map(|synced, act, ctx| {
                match synced {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => log::error!("state not fully saved at shutdown: {err}"),
                    Err(err) => log::error!("state not saved at shutdown: {err}"),
                }
                act.lifecycle = Lifecycle::Drained;
                if let Some(frame) = encode(&ServerMessage::Shutdown {
                    message: "the server is shutting down".to_string(),
                }) {
                    for conn in act.connections.values() {
                        conn.outbox.send(frame.clone());
                        conn.outbox.close();
                    }
                }
                act.finish_shutdown_if_drained();
                ctx.run_later(SHUTDOWN_GRACE, |act, _| {
                    if !act.connections.is_empty() {
                        log::warn!(
                            "{} still open after the grace period",
                            plural(act.connections.len(), "connection", "connections")
                        );
                    }
                    System::current().stop();
                });
            })
            .spawn(ctx);
    }
}
