//! `ChatServer`: the one owner of accounts, online sessions, history and the pause flag.
//!
//! Sessions send it typed requests; it answers by queueing frames on the session's
//! [`Outbox`] and publishes chat on the shared [`Broadcaster`] ring, serialising each
//! MESSAGE once. Its state is plain data, each piece in a file of its own and tested
//! there: [`Connections`], [`Presence`], a [`History`] per room and per account's
//! direct messages, the [`Identities`], the [`Rooms`] and the [`Limits`]. Its handlers
//! are grouped by what they are about: connecting and greeting (here), [`accounts`]
//! (authentication, logout), [`account`] (a user's password and deletion), [`rooms`] (join, part, rooms, who), [`chat`] (messages to
//! rooms and users, pages of history), [`admin`] (the console's commands) and
//! [`shutdown`].
//!
//! Slow work never runs on its thread: PBKDF2 goes to the [`HashingPool`] (one
//! computation per core, taking turns between addresses, so a login storm queues
//! instead of starving chat), and durable state goes to the [`Store`].

mod account;
mod accounts;
mod admin;
mod chat;
mod connections;
mod events;
mod history;
mod presence;
mod register;
mod rooms;
mod shutdown;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

pub use self::account::{ChangePassword, DeleteAccount};
pub use self::accounts::{AuthOutcome, Authenticate, Credentials, Logout};
pub use self::admin::{
    BanAccount, BanError, BanSummary, ClearIdentities, Kick, Kicked, ListBans, ListUsers,
    PauseGreeting, PostAsServer, ResumeGreeting, Status, StatusReport, UnbanAccount,
};
pub use self::chat::{Page, PostMessage};
pub use self::connections::{Connections, Peer, Refusal};
pub use self::history::{history_frame, Heading, History, MAX_REPLAY_BYTES};
pub use self::presence::{Departure, Presence, FLAP_WINDOW, LEFT_GRACE};
use self::rooms::RoomOp;
pub use self::rooms::{
    AnnounceError, JoinRoom, ListRooms, PartRoom, PostInRoom, RoomSummary, RoomsSummary, Who,
};
pub use self::shutdown::Shutdown;
use crate::codec::encode_frame;
use crate::log_noise;
use crate::protocol::{ErrorCode, ServerMessage};
use crate::server::config::ServerConfig;
use crate::server::hashing::HashingPool;
use crate::server::identity::{Identities, IdentityChange};
use crate::server::limits::{KeyedBuckets, WindowLimiter};
use crate::server::logging::Noise;
use crate::server::outbound::{Broadcaster, Outbox, SessionId, Skip};
use crate::server::rooms::Rooms;
use crate::server::store::{Store, StoreError, StoreHealth};
use crate::server::unix_ms;

/// How often expired tokens and idle limiter entries are dropped.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

/// The window over which wrong guesses are counted (`--login-rate` is per minute).
const GUESS_WINDOW: Duration = Duration::from_secs(60);

/// The window over which new accounts are counted (`--register-rate` is per hour).
const REGISTER_WINDOW: Duration = Duration::from_secs(3600);

/// An address's authentications may burst to this many times `--auth-rate`.
const AUTH_BURST_FACTOR: u32 = 5;

/// The settings `ChatServer` needs, taken from the command line.
#[derive(Debug, Clone)]
pub struct ChatSettings {
    /// Messages replayed per room (and of direct messages) at login (`--history`).
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

/// How `ChatServer` reaches one connection.
pub struct PeerHandle {
    /// Frames for the connection's writer.
    pub outbox: Outbox,
    /// Told when the connection has been greeted and may be read.
    pub greeter: Recipient<Greeted>,
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

/// The rate limits `ChatServer` keeps (see `server::limits`).
pub struct Limits {
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
    store: Box<dyn Store>,
    /// Cancelled at shutdown: the accept loop stops.
    stop_accepting: CancellationToken,
    address: SocketAddr,
    started_at: Instant,
    lifecycle: Lifecycle,
    /// Whether greeting is paused by the admin.
    paused: bool,
    /// Whether the store records messages now (a full disk stops it).
    store_health: StoreHealth,

    identities: Identities,
    rooms: Rooms,
    connections: Connections<PeerHandle>,
    presence: Presence,
    /// Whether the one timer for the presence's held departures is set.
    held_departures_timer: bool,
    /// The recent messages of each room (`lobby` included), by room key.
    room_history: HashMap<String, History>,
    /// The recent direct messages of each account, by name key.
    direct_history: HashMap<String, History>,
    limits: Limits,
    /// Keys (name and look-alike) of registrations whose hash is being computed.
    pending_names: std::collections::HashSet<String>,
    /// Joins and parts with the store, by (room key, user key).
    room_ops: HashMap<(String, String), RoomOp>,

    /// The lobby's ring: every authenticated connection takes it.
    ring: Broadcaster,
    /// The rings of the rooms with a member online, by room key.
    room_rings: HashMap<String, Broadcaster>,
    hashing: HashingPool,
}

/// What start-up recovered for `ChatServer`.
pub struct Recovered {
    pub identities: Identities,
    pub rooms: Rooms,
    /// The last messages of each room, by room key, oldest first.
    pub room_history: HashMap<String, VecDeque<Bytes>>,
    /// The last direct messages of each account, by name key, with their ids.
    pub direct_history: HashMap<String, VecDeque<(u64, Bytes)>>,
}

impl ChatServer {
    /// A server over the state recovered at start-up. Must be called within the actor
    /// system (it starts the hashing pool).
    pub fn new(
        settings: ChatSettings,
        recovered: Recovered,
        store: Box<dyn Store>,
        stop_accepting: CancellationToken,
        address: SocketAddr,
    ) -> ChatServer {
        let Recovered {
            identities,
            rooms,
            room_history,
            direct_history,
        } = recovered;
        let limit = settings.history;
        let room_history = room_history
            .into_iter()
            .map(|(key, recent)| {
                let name = rooms.name_of(&key).unwrap_or(&key).to_string();
                (key, History::new(Heading::Room(name), limit, recent))
            })
            .collect();
        // An account sees the direct messages of its own time only: not those of an
        // earlier account of the same name.
        let direct_history = direct_history
            .into_iter()
            .filter_map(|(key, recent)| {
                let since = identities.account_by_key(&key)?.since_id;
                let recent = recent
                    .into_iter()
                    .filter(|(id, _)| *id >= since)
                    .map(|(_, payload)| payload)
                    .collect();
                Some((key, History::new(Heading::Direct, limit, recent)))
            })
            .collect();
        ChatServer {
            hashing: HashingPool::start(settings.hashing_slots),
            limits: Limits::new(&settings),
            connections: Connections::new(settings.max_conns, settings.max_conns_per_ip),
            settings,
            store,
            stop_accepting,
            address,
            started_at: Instant::now(),
            held_departures_timer: false,
            lifecycle: Lifecycle::Serving,
            paused: false,
            store_health: StoreHealth::Recording,
            identities,
            rooms,
            presence: Presence::default(),
            room_history,
            direct_history,
            pending_names: Default::default(),
            room_ops: HashMap::new(),
            ring: Broadcaster::default(),
            room_rings: HashMap::new(),
        }
    }

    /// Queues `message` for one connection.
    fn send_to(&self, id: SessionId, message: &ServerMessage) {
        if let Some(peer) = self.connections.get(id) {
            if let Some(frame) = encode(message) {
                peer.handle.outbox.send(frame);
            }
        }
    }

    fn send_error(&self, id: SessionId, code: ErrorCode, message: &str) {
        self.send_to(id, &ServerMessage::error(code, message));
    }

    fn send_unavailable(&self, id: SessionId) {
        self.send_error(
            id,
            ErrorCode::Unavailable,
            "the server cannot reach its shared state right now; try again in a moment",
        );
    }

    /// Answers `unavailable` when the store cannot be reached (cluster mode, NATS
    /// lost); whether it did. Every request but `ping`, `quit` and `who` asks this.
    fn refuse_if_unavailable(&self, id: SessionId) -> bool {
        if self.store.is_available() {
            return false;
        }
        self.send_unavailable(id);
        true
    }

    /// A store failure answered to a connection: `unavailable` when the shared state
    /// cannot be reached, else `internal` with `what` (and a log line).
    fn send_store_error(&self, id: SessionId, err: &StoreError, what: &str) {
        if let StoreError::Unavailable(_) = err {
            self.send_unavailable(id);
            return;
        }
        log::error!("session {id}: {what}: {err}");
        self.send_error(id, ErrorCode::Internal, &format!("{what}; try again later"));
    }

    /// The names of the users online (here or on any other node), sorted by key.
    fn online_names(&self) -> Vec<String> {
        let elsewhere = self.store.online_elsewhere();
        if elsewhere.is_empty() {
            return self.presence.names();
        }
        self.online_by_key().into_values().collect()
    }

    /// The users online (here or on any other node), name by key.
    fn online_by_key(&self) -> std::collections::BTreeMap<String, String> {
        let mut online: std::collections::BTreeMap<String, String> = self
            .presence
            .iter()
            .map(|(key, name)| (key.to_string(), name.to_string()))
            .collect();
        for (key, name) in self.store.online_elsewhere() {
            online.entry(key).or_insert(name);
        }
        online
    }

    /// Closes every connection of `key` here but `except`, telling it `message`;
    /// answers how many.
    fn kick_local(&mut self, key: &str, message: &str, except: Option<SessionId>) -> usize {
        let Some(frame) = encode(&ServerMessage::Kicked {
            message: message.to_string(),
        }) else {
            return 0;
        };
        let kicked: Vec<SessionId> = self
            .connections
            .of_user(key)
            .map(|(id, _)| id)
            .filter(|id| Some(*id) != except)
            .collect();
        for id in &kicked {
            if let Some(peer) = self.connections.get_mut(*id) {
                peer.token_digest = None;
                peer.handle.outbox.send(frame.clone());
                peer.handle.outbox.close();
            }
        }
        kicked.len()
    }

    fn greet(&mut self, id: SessionId) {
        let Some(peer) = self.connections.get(id) else {
            return;
        };
        let welcome = ServerMessage::Welcome {
            server: "echochat".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            known_name: self.identities.known_name(peer.ip),
        };
        if let Some(frame) = encode(&welcome) {
            peer.handle.outbox.send(frame);
        }
        peer.handle.greeter.do_send(Greeted);
    }

    /// Applies identity changes here and hands them to the store, to be written with
    /// the next batch.
    fn note_identities(&mut self, changes: Vec<IdentityChange>) {
        if changes.is_empty() {
            return;
        }
        for change in &changes {
            self.identities.apply(change);
        }
        self.store.record_identities(changes, false);
    }

    /// Whether the user `key` is online on another node.
    fn online_elsewhere(&self, key: &str) -> bool {
        self.store.online_elsewhere().iter().any(|(k, _)| k == key)
    }

    fn broadcast_event(&self, message: &ServerMessage, skip: Option<Skip>) {
        if let Some(frame) = encode(message) {
            self.ring.publish(frame, skip);
        }
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
        // What the other nodes do, when the store is shared with them.
        if let Some(events) = self.store.take_events() {
            ctx.add_stream(events);
        }
        ctx.run_interval(HOUSEKEEPING_INTERVAL, |act, _| {
            let now = unix_ms();
            if act.identities.has_expired_tokens(now) {
                act.note_identities(vec![IdentityChange::PruneExpired { now_ms: now }]);
            }
            act.limits.prune(Instant::now());
            act.presence.prune(Instant::now());
            act.prune_room_rings();
        });
    }
}

impl ChatServer {
    /// Sets the one timer for the earliest held departure, unless it is set: when it
    /// fires, the departures due are announced as `left` and the timer is set for the
    /// next. One timer, not one per departure: actix looks at every pending timer of the
    /// actor each time the actor is woken, so thousands would slow every message.
    fn watch_held_departures(&mut self, ctx: &mut Context<Self>) {
        if self.held_departures_timer {
            return;
        }
        let Some(due) = self.presence.next_due() else {
            return;
        };
        self.held_departures_timer = true;
        ctx.run_later(due.saturating_duration_since(Instant::now()), |act, ctx| {
            act.held_departures_timer = false;
            for (key, name) in act.presence.due_departures(Instant::now()) {
                if !act.online_elsewhere(&key) {
                    act.broadcast_event(&ServerMessage::Left { name }, None);
                }
            }
            act.watch_held_departures(ctx);
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

// ---------------------------------------------------------------------------------
// Connecting and greeting

/// A new connection (sent by its session once started).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Connect {
    pub id: SessionId,
    pub peer: SocketAddr,
    pub handle: PeerHandle,
}

/// The server has sent the connection its `welcome`: it may now be read, and its
/// timers start.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Greeted;

impl Handler<Connect> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: Connect, _: &mut Self::Context) {
        let ip = msg.peer.ip();
        if self.lifecycle != Lifecycle::Serving {
            msg.handle.outbox.close();
            return;
        }
        let outbox = msg.handle.outbox.clone();
        if let Err(refusal) = self.connections.admit(msg.id, ip, msg.handle, self.paused) {
            log_noise!(
                ip,
                Noise::Limit,
                log::Level::Warn,
                "connection {} from {} refused: {}",
                msg.id,
                msg.peer,
                refusal.describe()
            );
            outbox.close();
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
        if !self.paused {
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
        let Some(peer) = self.connections.remove(msg.id) else {
            return;
        };
        log_noise!(
            peer.ip,
            Noise::Connection,
            log::Level::Info,
            "session {} from {} disconnected",
            msg.id,
            peer.ip
        );
        if let Some(key) = peer.user {
            // The last connection anywhere, as far as the store knows (another node
            // may still have the user).
            let last_anywhere = self.store.user_disconnected(&key);
            match self.presence.depart(&key, Instant::now()) {
                Departure::Stayed => {}
                Departure::Left(name) if last_anywhere => {
                    self.broadcast_event(&ServerMessage::Left { name }, None)
                }
                Departure::Left(_) => {}
                Departure::Held(_) => self.watch_held_departures(ctx),
            }
        }
        self.finish_shutdown_if_drained();
    }
}
