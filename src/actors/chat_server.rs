//! `ChatServer`: the one owner of accounts, online sessions, history and the pause flag.
//!
//! Sessions send it typed requests; it answers by queueing frames on the session's
//! [`Outbox`] and publishes chat on the shared [`Broadcaster`] ring, serialising each
//! MESSAGE once. Slow work never runs on its thread: PBKDF2 goes to the blocking pool
//! (at most one computation per core at a time, so a login storm queues instead of
//! starving chat), and files go to `Persistence`. A new account's `auth_ok` is held
//! until `users.json` holding it is on disk; other identity changes (tokens, IPs) are
//! saved in batches every [`SAVE_INTERVAL`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use futures_util::future::Either;
use tokio::sync::{oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

use super::persistence::LoadedHistory;
use super::persistence::{
    AppendHistory, Flush, HistoryWritable, PersistError, Persistence, SaveIdentities, WatchHistory,
};
use super::session::{Greeted, Session};
use crate::auth::{self, SERVER_NAME};
use crate::codec::{encode_frame, frame_from_payload, payload_of};
use crate::config::ServerConfig;
use crate::identity::Identities;
use crate::outbound::{Broadcaster, Outbox, SessionId};
use crate::protocol::{AuthErrorCode, ChatMessage, ErrorCode, ServerMessage};

/// How often batched identity changes (rotated tokens, IPs) are written out: the most
/// a crash can lose of them, as the contract allows.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// The window over which failed authentications are counted per IP.
const LOGIN_RATE_WINDOW: Duration = Duration::from_secs(60);

/// How long shutdown waits for writers to deliver the `shutdown` frame.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// The settings `ChatServer` needs, taken from the command line.
#[derive(Debug, Clone)]
pub struct ChatSettings {
    pub history: usize,
    pub pbkdf2_rounds: u32,
    pub token_ttl: Duration,
    pub max_conns: usize,
    pub max_conns_per_ip: usize,
    pub login_rate: usize,
    /// PBKDF2 computations allowed at once.
    pub hashing_slots: usize,
}

impl ChatSettings {
    /// The settings in `config`, with one hashing slot per core.
    pub fn from_config(config: &ServerConfig) -> ChatSettings {
        ChatSettings {
            history: config.history,
            pbkdf2_rounds: config.pbkdf2_rounds,
            token_ttl: Duration::from_secs(config.token_ttl),
            max_conns: config.max_conns,
            max_conns_per_ip: config.max_conns_per_ip,
            login_rate: config.login_rate as usize,
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
    /// Lower-cased name once authenticated.
    user: Option<String>,
    /// Digest of the token this connection's last `auth_ok` carried.
    token_digest: Option<String>,
}

/// A user with at least one authenticated connection.
struct OnlineUser {
    name: String,
    connections: usize,
}

/// Failed authentications from one IP, for `--login-rate`.
#[derive(Default)]
struct LoginAttempts {
    failures: VecDeque<Instant>,
    /// Password checks queued or running, counted against the limit in advance so
    /// that a burst cannot slip past it while the hashes compute.
    in_flight: usize,
}

/// The actor. See the module documentation.
pub struct ChatServer {
    settings: ChatSettings,
    persistence: Addr<Persistence>,
    /// Cancelled at shutdown: the accept loop stops.
    stop_accepting: CancellationToken,
    address: SocketAddr,
    started_at: Instant,

    identities: Identities,
    connections: HashMap<SessionId, Connection>,
    per_ip: HashMap<IpAddr, usize>,
    online: HashMap<String, OnlineUser>,
    /// Registrations whose hash is being computed, by lower-cased name.
    pending_names: HashSet<String>,
    login_attempts: HashMap<IpAddr, LoginAttempts>,

    paused: bool,
    /// Connections accepted while paused, in arrival order.
    waiting: VecDeque<SessionId>,

    ring: Broadcaster,
    next_id: u64,
    /// The last `--history` MESSAGE payloads, oldest first.
    history: VecDeque<Bytes>,
    /// The `history` frame for the current `history`, built on first use.
    history_frame: Option<Bytes>,

    hashing: Arc<Semaphore>,
    decoy_hash: Arc<str>,

    identities_dirty: bool,
    save_in_flight: bool,
    save_waiters: Vec<oneshot::Sender<Result<(), PersistError>>>,

    /// False while `history.jsonl` refuses writes (a full disk): `say` is refused
    /// rather than accepted into a buffer that cannot drain.
    history_writable: bool,

    shutting_down: bool,
    /// Set once shutdown has put the state on disk and told every connection.
    shutdown_flushed: bool,
}

impl ChatServer {
    /// A server over the state recovered at start-up.
    pub fn new(
        settings: ChatSettings,
        identities: Identities,
        history: LoadedHistory,
        persistence: Addr<Persistence>,
        stop_accepting: CancellationToken,
        address: SocketAddr,
    ) -> Result<ChatServer, auth::HashError> {
        let decoy_hash = auth::decoy_hash(settings.pbkdf2_rounds)?.into();
        Ok(ChatServer {
            hashing: Arc::new(Semaphore::new(settings.hashing_slots.max(1))),
            settings,
            persistence,
            stop_accepting,
            address,
            started_at: Instant::now(),
            identities,
            connections: HashMap::new(),
            per_ip: HashMap::new(),
            online: HashMap::new(),
            pending_names: HashSet::new(),
            login_attempts: HashMap::new(),
            paused: false,
            waiting: VecDeque::new(),
            ring: Broadcaster::default(),
            next_id: history.next_id,
            history: history.recent,
            history_frame: None,
            decoy_hash,
            identities_dirty: false,
            save_in_flight: false,
            save_waiters: Vec::new(),
            history_writable: true,
            shutting_down: false,
            shutdown_flushed: false,
        })
    }

    /// Queues `message` for one connection.
    fn send_to(&self, id: SessionId, message: &ServerMessage) {
        if let Some(conn) = self.connections.get(&id) {
            if let Some(frame) = encode(message) {
                conn.outbox.send(frame);
            }
        }
    }

    fn send_auth_error(&self, id: SessionId, code: AuthErrorCode, message: &str) {
        self.send_to(id, &ServerMessage::auth_error(code, message));
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

    /// Assigns the next id, records the message in history and delivers it to everyone.
    fn publish_message(&mut self, from: &str, text: String) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let message = ServerMessage::Message(ChatMessage {
            id,
            from: from.to_string(),
            text,
            ts: unix_ms(),
        });
        let Some(frame) = encode(&message) else {
            return id;
        };
        let payload = payload_of(&frame);
        if self.settings.history > 0 {
            if self.history.len() == self.settings.history {
                self.history.pop_front();
            }
            self.history.push_back(payload.clone());
            self.history_frame = None;
        }
        self.persistence.do_send(AppendHistory(payload));
        self.ring.publish(frame, None);
        id
    }

    /// The `history` frame, built from the stored payloads without re-serialising them.
    fn history_frame(&mut self) -> Bytes {
        if let Some(frame) = &self.history_frame {
            return frame.clone();
        }
        let size = self.history.iter().map(|p| p.len() + 1).sum::<usize>();
        let mut payload = BytesMut::with_capacity(size + 32);
        payload.extend_from_slice(br#"{"type":"history","messages":["#);
        for (i, message) in self.history.iter().enumerate() {
            if i > 0 {
                payload.extend_from_slice(b",");
            }
            payload.extend_from_slice(message);
        }
        payload.extend_from_slice(b"]}");
        let frame = frame_from_payload(&payload);
        self.history_frame = Some(frame.clone());
        frame
    }

    /// Finishes a successful authentication: token, `auth_ok`, history, ring, `joined`.
    fn complete_login(&mut self, id: SessionId, name: &str, new_user: bool) -> AuthOutcome {
        let Some(ip) = self.connections.get(&id).map(|c| c.ip) else {
            return AuthOutcome::Refused;
        };
        let ttl_ms = self.settings.token_ttl.as_millis() as u64;
        let (token, digest) = self.identities.issue_token(name, unix_ms(), ttl_ms);
        self.identities.remember_ip(ip, name);
        self.identities_dirty = true;

        let key = auth::name_key(name);
        let auth_ok = ServerMessage::AuthOk {
            name: name.to_string(),
            token,
            new_user,
        };
        // Logged before anything is sent, so the log never lags what the client saw.
        log::info!("session {id} from {ip} authenticated as {name} (new user: {new_user})");
        let history = self.history_frame();
        let subscription = self.ring.subscribe();
        let Some(conn) = self.connections.get_mut(&id) else {
            return AuthOutcome::Refused;
        };
        conn.user = Some(key.clone());
        conn.token_digest = Some(digest);
        if let Some(frame) = encode(&auth_ok) {
            conn.outbox.send(frame);
        }
        conn.outbox.send(history);
        // Same step as the history snapshot: no message falls between them or comes twice.
        conn.outbox.subscribe(subscription);

        let user = self.online.entry(key).or_insert_with(|| OnlineUser {
            name: name.to_string(),
            connections: 0,
        });
        user.connections += 1;
        if user.connections == 1 {
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

    /// A refused authentication: logged, counted against the IP, answered.
    fn refuse(&mut self, id: SessionId, ip: IpAddr, code: AuthErrorCode) -> AuthOutcome {
        let message = match code {
            AuthErrorCode::UnknownUser => "no account has that name",
            AuthErrorCode::BadPassword => "wrong password",
            AuthErrorCode::NameTaken => "that name is taken",
            AuthErrorCode::InvalidToken => "the token is unknown, spent or expired",
            AuthErrorCode::InvalidName => "a name is 1 to 32 letters, digits, '_', '-' or '.'",
            AuthErrorCode::InvalidPassword => "a password is 4 to 1024 bytes",
            AuthErrorCode::RateLimited => "too many failed attempts; wait a minute",
        };
        if code == AuthErrorCode::RateLimited {
            log::warn!("session {id} from {ip}: authentication rate limit hit");
        } else {
            log::info!("session {id} from {ip}: authentication failed ({code:?})");
            if self.settings.login_rate > 0 {
                let attempts = self.login_attempts.entry(ip).or_default();
                attempts.failures.push_back(Instant::now());
                while attempts.failures.len() > self.settings.login_rate {
                    attempts.failures.pop_front();
                }
            }
        }
        self.send_auth_error(id, code, message);
        AuthOutcome::Refused
    }

    /// Whether `ip` has used up its failed authentications for now.
    fn login_rate_exceeded(&mut self, ip: IpAddr) -> bool {
        let limit = self.settings.login_rate;
        if limit == 0 {
            return false;
        }
        let Some(attempts) = self.login_attempts.get_mut(&ip) else {
            return false;
        };
        while attempts
            .failures
            .front()
            .is_some_and(|t| t.elapsed() >= LOGIN_RATE_WINDOW)
        {
            attempts.failures.pop_front();
        }
        attempts.failures.len() + attempts.in_flight >= limit
    }

    fn begin_password_check(&mut self, ip: IpAddr) {
        if self.settings.login_rate > 0 {
            self.login_attempts.entry(ip).or_default().in_flight += 1;
        }
    }

    fn end_password_check(&mut self, ip: IpAddr) {
        if let Some(attempts) = self.login_attempts.get_mut(&ip) {
            attempts.in_flight = attempts.in_flight.saturating_sub(1);
        }
    }

    /// Asks for the identity file to be saved; the receiver answers once it is on disk.
    /// Saves are grouped: requests made while one is running share the next one.
    fn request_save(
        &mut self,
        ctx: &mut Context<Self>,
    ) -> oneshot::Receiver<Result<(), PersistError>> {
        let (tx, rx) = oneshot::channel();
        self.save_waiters.push(tx);
        self.identities_dirty = true;
        self.start_save(ctx);
        rx
    }

    fn start_save(&mut self, ctx: &mut Context<Self>) {
        if self.save_in_flight || !self.identities_dirty {
            return;
        }
        self.save_in_flight = true;
        self.identities_dirty = false;
        let waiters = std::mem::take(&mut self.save_waiters);
        self.persistence
            .send(SaveIdentities(self.identities.clone()))
            .into_actor(self)
            .map(move |sent, act, ctx| {
                act.save_in_flight = false;
                let result = sent.unwrap_or_else(|e| {
                    Err(PersistError::Io {
                        path: "users.json".into(),
                        message: format!("persistence unavailable: {e}"),
                    })
                });
                if let Err(err) = &result {
                    log::error!("identity file not saved: {err}");
                    act.identities_dirty = true;
                }
                for waiter in waiters {
                    let _ = waiter.send(result.clone());
                }
                if !act.save_waiters.is_empty() {
                    act.start_save(ctx);
                }
            })
            .spawn(ctx);
    }

    fn online_names(&self) -> Vec<String> {
        let mut users: Vec<(&String, &OnlineUser)> = self.online.iter().collect();
        users.sort_by(|a, b| a.0.cmp(b.0));
        users.into_iter().map(|(_, u)| u.name.clone()).collect()
    }

    /// Once the state is on disk and every connection is gone, stop the process.
    fn finish_shutdown_if_drained(&self) {
        if self.shutdown_flushed && self.connections.is_empty() {
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
        ctx.run_interval(SAVE_INTERVAL, |act, ctx| {
            let now = unix_ms();
            if act.identities.prune_expired(now) > 0 {
                act.identities_dirty = true;
            }
            act.login_attempts.retain(|_, a| {
                a.in_flight > 0
                    || a.failures
                        .back()
                        .is_some_and(|t| t.elapsed() < LOGIN_RATE_WINDOW)
            });
            act.start_save(ctx);
        });
    }
}

/// Computes `job` on the blocking pool once a hashing slot is free.
async fn run_hashing<T: Send + 'static>(
    slots: Arc<Semaphore>,
    job: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let _permit = slots.acquire_owned().await.ok()?;
    tokio::task::spawn_blocking(job).await.ok()
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
        let refusal = if self.shutting_down {
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
            log::warn!("connection {} from {} refused: {reason}", msg.id, msg.peer);
            msg.outbox.close();
            return;
        }
        log::info!("session {} connected from {}", msg.id, msg.peer);
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

    fn handle(&mut self, msg: Disconnect, _: &mut Self::Context) {
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
        log::info!("session {} from {} disconnected", msg.id, conn.ip);
        if let Some(key) = conn.user {
            if let Some(user) = self.online.get_mut(&key) {
                user.connections -= 1;
                if user.connections == 0 {
                    if let Some(user) = self.online.remove(&key) {
                        self.broadcast_event(&ServerMessage::Left { name: user.name }, None);
                    }
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

    fn handle(&mut self, msg: Authenticate, ctx: &mut Self::Context) -> Self::Result {
        let id = msg.id;
        let Some(ip) = self.connections.get(&id).map(|c| c.ip) else {
            return Box::pin(fut::ready(AuthOutcome::Refused));
        };
        if self.shutting_down {
            return Box::pin(fut::ready(AuthOutcome::Refused));
        }
        if self.login_rate_exceeded(ip) {
            let outcome = self.refuse(id, ip, AuthErrorCode::RateLimited);
            return Box::pin(fut::ready(outcome));
        }
        match msg.credentials {
            Credentials::Resume { token } => {
                let outcome = match self.identities.take_token(&token, unix_ms()) {
                    Some(account) => {
                        let name = account.name.clone();
                        self.identities_dirty = true;
                        self.complete_login(id, &name, false)
                    }
                    None => self.refuse(id, ip, AuthErrorCode::InvalidToken),
                };
                Box::pin(fut::ready(outcome))
            }
            Credentials::Login { name, password } => self.login(id, ip, name, password),
            Credentials::Register { name, password } => self.register(id, ip, name, password, ctx),
        }
    }
}

impl ChatServer {
    fn login(
        &mut self,
        id: SessionId,
        ip: IpAddr,
        name: String,
        password: String,
    ) -> ResponseActFuture<Self, AuthOutcome> {
        let stored = self
            .identities
            .account(&name)
            .map(|a| a.password_hash.clone());
        // An unknown name is checked against a decoy so that it costs the same time.
        let hash: Arc<str> = stored.as_deref().map_or(self.decoy_hash.clone(), Arc::from);
        self.begin_password_check(ip);
        let check = run_hashing(self.hashing.clone(), move || {
            auth::verify_password(&password, &hash)
        });
        Box::pin(
            fut::wrap_future(check).map(move |verdict, act: &mut Self, _| {
                act.end_password_check(ip);
                // The account may have changed while the hash computed (clear-ids).
                let current = act.identities.account(&name).cloned();
                match (verdict, current) {
                    (_, None) => act.refuse(id, ip, AuthErrorCode::UnknownUser),
                    (Some(Ok(true)), Some(account))
                        if Some(&account.password_hash) == stored.as_ref() =>
                    {
                        act.complete_login(id, &account.name, false)
                    }
                    (Some(Ok(_)), Some(_)) => act.refuse(id, ip, AuthErrorCode::BadPassword),
                    (Some(Err(err)), Some(_)) => {
                        log::error!("password check for {name} failed: {err}");
                        act.send_to(
                            id,
                            &ServerMessage::error(
                                ErrorCode::Internal,
                                "could not check the password",
                            ),
                        );
                        AuthOutcome::Refused
                    }
                    (None, Some(_)) => {
                        log::error!("password check for {name} did not run");
                        act.send_to(
                            id,
                            &ServerMessage::error(
                                ErrorCode::Internal,
                                "could not check the password",
                            ),
                        );
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
        _: &mut Context<Self>,
    ) -> ResponseActFuture<Self, AuthOutcome> {
        let key = auth::name_key(&name);
        let refusal = if !auth::is_valid_name(&name) {
            Some(AuthErrorCode::InvalidName)
        } else if !auth::is_valid_password(&password) {
            Some(AuthErrorCode::InvalidPassword)
        } else if key == SERVER_NAME
            || self.identities.users.contains_key(&key)
            || self.pending_names.contains(&key)
        {
            Some(AuthErrorCode::NameTaken)
        } else {
            None
        };
        if let Some(code) = refusal {
            let outcome = self.refuse(id, ip, code);
            return Box::pin(fut::ready(outcome));
        }
        self.pending_names.insert(key.clone());
        let rounds = self.settings.pbkdf2_rounds;
        let hashing = run_hashing(self.hashing.clone(), move || {
            auth::hash_password(&password, rounds)
        });
        Box::pin(
            fut::wrap_future(hashing)
                .then(move |hashed, act: &mut Self, ctx| {
                    act.pending_names.remove(&key);
                    let hash = match hashed {
                        Some(Ok(hash)) => hash,
                        Some(Err(err)) => {
                            log::error!("hashing a password for {name} failed: {err}");
                            return Either::Left(fut::ready(Err(name)));
                        }
                        None => {
                            log::error!("hashing a password for {name} did not run");
                            return Either::Left(fut::ready(Err(name)));
                        }
                    };
                    act.identities.add_account(&name, hash.clone(), unix_ms());
                    let saved = act.request_save(ctx);
                    Either::Right(
                        fut::wrap_future(saved).map(move |saved, act: &mut Self, _| match saved {
                            Ok(Ok(())) => Ok((name, hash)),
                            Ok(Err(_)) | Err(_) => {
                                act.identities.remove_account_if(&name, &hash);
                                Err(name)
                            }
                        }),
                    )
                })
                .map(move |registered, act: &mut Self, _| match registered {
                    Ok((name, _)) => {
                        log::info!("registered account {name} from {ip}");
                        act.complete_login(id, &name, true)
                    }
                    Err(name) => {
                        log::error!("registration of {name} failed: identity file not saved");
                        act.send_to(
                            id,
                            &ServerMessage::error(
                                ErrorCode::Internal,
                                "the account could not be saved; try again later",
                            ),
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

    fn handle(&mut self, msg: Say, _: &mut Self::Context) {
        if self.shutting_down {
            return;
        }
        let Some(key) = self.connections.get(&msg.id).and_then(|c| c.user.clone()) else {
            return;
        };
        let Some(name) = self.online.get(&key).map(|u| u.name.clone()) else {
            return;
        };
        if !self.history_writable {
            self.send_to(
                msg.id,
                &ServerMessage::error(
                    ErrorCode::Internal,
                    "the server cannot record messages right now; not sent, try again later",
                ),
            );
            return;
        }
        self.publish_message(&name, msg.text);
    }
}

impl Handler<HistoryWritable> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: HistoryWritable, _: &mut Self::Context) {
        self.history_writable = msg.0;
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
        let users = self.online_names();
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

    fn handle(&mut self, msg: Logout, ctx: &mut Self::Context) -> Self::Result {
        let digest = self
            .connections
            .get_mut(&msg.id)
            .and_then(|c| c.token_digest.take());
        let Some(digest) = digest else {
            return Box::pin(fut::ready(()));
        };
        self.identities.revoke_digest(&digest);
        log::info!("session {} logged out", msg.id);
        let saved = self.request_save(ctx);
        Box::pin(fut::wrap_future(saved).map(|_, _, _| ()))
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
            "greeting resumed by the admin; {} waiting connections greeted",
            waiting.len()
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
            users_online: self.online.len(),
            connections: self.connections.len(),
            waiting: self.waiting.len(),
            accounts: self.identities.users.len(),
            uptime: self.started_at.elapsed(),
            next_message_id: self.next_id,
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
        self.online_names()
    }
}

/// Forget every account, IP identification and token, durably.
#[derive(Message)]
#[rtype(result = "Result<(), PersistError>")]
pub struct ClearIdentities;

impl Handler<ClearIdentities> for ChatServer {
    type Result = ResponseActFuture<Self, Result<(), PersistError>>;

    fn handle(&mut self, _: ClearIdentities, ctx: &mut Self::Context) -> Self::Result {
        self.identities.clear();
        for conn in self.connections.values_mut() {
            conn.token_digest = None;
        }
        log::warn!("identities cleared by the admin");
        let saved = self.request_save(ctx);
        Box::pin(fut::wrap_future(saved).map(|saved, _, _| {
            saved.unwrap_or_else(|_| {
                Err(PersistError::Io {
                    path: "users.json".into(),
                    message: "save abandoned".into(),
                })
            })
        }))
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
        let key = auth::name_key(&msg.name);
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
            log::warn!("{} kicked by the admin ({kicked} connections)", msg.name);
        }
        kicked
    }
}

/// A message from `server` to everyone; answers its id.
#[derive(Message)]
#[rtype(result = "u64")]
pub struct AdminSay {
    pub text: String,
}

impl Handler<AdminSay> for ChatServer {
    type Result = u64;

    fn handle(&mut self, msg: AdminSay, _: &mut Self::Context) -> u64 {
        log::info!("the admin said something");
        self.publish_message(SERVER_NAME, msg.text)
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
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        self.stop_accepting.cancel();
        log::info!("shutting down");
        let identities_saved = self.request_save(ctx);
        let history_flushed = self.persistence.send(Flush);
        async move {
            let saved = identities_saved.await;
            let flushed = history_flushed.await;
            (saved, flushed)
        }
        .into_actor(self)
        .map(|(saved, flushed), act, ctx| {
            if !matches!(saved, Ok(Ok(()))) {
                log::error!("identity file not saved at shutdown");
            }
            match flushed {
                Ok(Ok(())) => {}
                Ok(Err(err)) => log::error!("history not flushed at shutdown: {err}"),
                Err(err) => log::error!("history not flushed at shutdown: {err}"),
            }
            act.shutdown_flushed = true;
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
                        "{} connections still open after the grace period",
                        act.connections.len()
                    );
                }
                System::current().stop();
            });
        })
        // Not `wait`: the save this awaits runs as another future of this actor.
        .spawn(ctx);
    }
}
