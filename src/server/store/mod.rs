//! The storage seam: what `ChatServer` asks of durable state, whoever keeps it.
//!
//! [`Store`] is the one interface; `actors::persistence::FileStore` keeps everything in
//! the state folder (through the `Persistence` actor), and `server::cluster_store`'s
//! `ClusterStore` keeps it in NATS JetStream, shared between nodes (SPEC §11), without
//! the actors knowing which one they talk to. The files themselves
//! are read and written by the plain modules here: [`state_files`] (how any state file
//! is touched), [`identity_file`] (`users.json` and its journal) and [`history_file`]
//! (`history.jsonl` and `ids.json`).

pub mod history_file;
pub mod history_index;
pub mod identity_file;
pub mod rooms_file;
pub mod state_files;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;

use self::history_index::Conversation;
use crate::codec::encode_frame;
use crate::protocol::{ChatMessage, ServerMessage};
use crate::server::identity::{Account, IdentityChange};
use crate::server::outbound::SessionId;
use crate::server::rooms::RoomChange;

/// A store operation that finishes later.
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>>>>;

/// Why the store could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A file could not be written (a full disk, an unwritable folder).
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    /// No message id can be given right now (the reservation could not be written).
    #[error("no message id is reserved")]
    NoIds,
    /// The part of the server that keeps state did not answer.
    #[error("the store did not answer: {0}")]
    NotAnswering(String),
    /// The shared state cannot be reached now (cluster mode: NATS is down or slow).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Another node changed it first.
    #[error("changed elsewhere meanwhile")]
    Conflict,
    /// Handed to the shared state, but its confirmation was lost with the connection
    /// (or late): it may still be stored, and then delivered like any other.
    #[error("not confirmed: {0}")]
    Unconfirmed(String),
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A room: its name (as first created) and its key.
    Room { name: String, key: String },
    /// A user: the recipient's registered name, and both accounts' keys.
    Direct {
        to: String,
        to_key: String,
        from_key: String,
    },
}

impl Target {
    /// The conversation a message to this target belongs to.
    pub fn conversation(&self) -> Conversation {
        match self {
            Target::Room { key, .. } => Conversation::Room(key.clone()),
            Target::Direct {
                to_key, from_key, ..
            } => Conversation::direct(from_key, to_key),
        }
    }
}

/// A chat message before the store has given it an id.
#[derive(Debug, Clone)]
pub struct Draft {
    pub from: String,
    pub text: String,
    pub target: Target,
}

/// A page of older messages to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub conversation: Conversation,
    /// Only messages with a lower id (the latest without it).
    pub before: Option<u64>,
    /// Only messages with this id or higher (what an account may see of a
    /// conversation: not what a deleted account of the same name wrote).
    pub floor: u64,
    pub limit: usize,
}

/// A message ready to deliver: its MESSAGE frame, serialised once.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: u64,
    pub frame: Bytes,
}

impl Delivery {
    /// Serialises `message` into its frame.
    pub fn new(message: ChatMessage) -> Result<Delivery, serde_json::Error> {
        let id = message.id;
        let frame = encode_frame(&ServerMessage::Message(message))?;
        Ok(Delivery { id, frame })
    }
}

/// What became of a [`Draft`].
pub enum Submitted {
    /// Recorded (or on its way to the disk): deliver it now.
    Delivered(Delivery),
    /// Handed to a store shared between nodes: the future ends with its id once it is
    /// stored, and the message itself comes back as [`StoreEvent::Message`], in the
    /// one order every node delivers in. Deliver it then, not now.
    Pending(StoreFuture<u64>),
    /// Not recorded, and not to be delivered.
    Refused(StoreError),
}

/// An answer the store may give at once (from memory) or later (after asking
/// elsewhere). A store answering at once keeps the caller on its synchronous path.
pub enum Answer<T> {
    Now(T),
    Later(StoreFuture<T>),
}

/// A token spent by a `resume`: the account it logs in as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spent {
    /// The account's name key.
    pub user: String,
    /// The account, when the store had to read it because the caller's view lacked it
    /// (registered on another node a moment ago): apply it before using it.
    pub account: Option<Account>,
}

/// A `join` the caller's view says changes something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomJoin {
    /// The room's name as the user typed it (used if the room is created).
    pub name: String,
    pub key: String,
    /// The member's name key and name as registered.
    pub user: String,
    pub user_name: String,
    /// Whether the view lacks the room (create it first).
    pub create: bool,
}

/// What a [`RoomJoin`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The changes to apply to the view (the room as created, wherever that was; the
    /// membership).
    pub changes: Vec<RoomChange>,
    /// Whether the user was not a member before (announce `member_joined`).
    pub newly: bool,
}

/// An account being deleted, with what it leaves behind (as the view knows it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountDeletion {
    pub key: String,
    pub account: Account,
    /// Digests of its tokens.
    pub tokens: Vec<String>,
    /// Addresses identified as it.
    pub ips: Vec<IpAddr>,
    /// Keys of its rooms (not `lobby`).
    pub rooms: Vec<String>,
}

/// A node of the service, for the console's `status` (a single server has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSummary {
    pub label: String,
    pub started_ms: u64,
    pub users: usize,
    pub connections: u64,
    pub this_node: bool,
}

/// What a store shared between nodes tells `ChatServer` about the others: their
/// messages and changes, in the order it hears them.
#[derive(Debug, Clone)]
pub enum StoreEvent {
    /// A stored message, this node's own included: deliver it (in this order).
    Message(Delivery, Target),
    /// An identity changed (an account, a token, an IP identification, a ban).
    Identity(IdentityChange),
    /// A room or a membership changed.
    Room(RoomChange),
    /// `clear-ids` ran somewhere; later changes follow as events.
    Cleared,
    /// A user's first connection anywhere (`joined`).
    Online { key: String, name: String },
    /// A user's last connection anywhere closed, or their node died (`left`).
    Offline { key: String, name: String },
    /// Close the connections of `key` here (but `except`), telling them `message`.
    Kick {
        key: String,
        message: String,
        except: Option<SessionId>,
    },
    /// The shared state can be reached (`true`) or not.
    Available(bool),
}

/// The events of a store shared between nodes.
pub type StoreEvents = Pin<Box<dyn Stream<Item = StoreEvent>>>;

/// Whether the store can record messages now; sent to `ChatServer` when it changes
/// (a disk filling up, or recovering).
#[derive(actix::Message, Debug, Clone, Copy, PartialEq, Eq)]
#[rtype(result = "()")]
pub enum StoreHealth {
    Recording,
    NotRecording,
}

/// What `ChatServer` asks of durable state.
///
/// `ChatServer` keeps a view of the identities and rooms in memory and answers from
/// it. Unconditional changes are applied to the view and then recorded; what must be
/// decided first, where another node may race (a name, a token, a room), is a store
/// operation with an outcome, which a store on local files answers from memory at
/// once. A store shared between nodes also tells `ChatServer` what the others did
/// ([`take_events`](Store::take_events)).
pub trait Store {
    /// Gives a chat message its id and time and hands it to be recorded.
    fn submit(&mut self, draft: Draft) -> Submitted;

    /// Records identity changes (already applied to the view). A future is returned
    /// when the caller must wait for it before acting on the changes: always with
    /// `durable` (it ends once they are safe from a crash), and for every change in a
    /// store where nothing is batched. `None`: written with the next batch.
    fn record_identities(
        &mut self,
        changes: Vec<IdentityChange>,
        durable: bool,
    ) -> Option<StoreFuture<()>>;

    /// Creates an account, durably, unless its name or a look-alike is taken
    /// (`false`). The view is not changed: apply it once created.
    fn create_account(&mut self, account: Account) -> StoreFuture<bool>;

    /// Spends the token `digest` (a `resume`), once for all: `known` is the account
    /// the view says it logs in as, if the view has it live. `None`: no such token
    /// (unknown, spent, expired). The view is not changed: revoke it there.
    fn spend_token(&mut self, digest: &str, known: Option<&str>) -> Answer<Option<Spent>>;

    /// An account the view lacks (registered elsewhere a moment ago), by name key.
    fn lookup_account(&mut self, key: &str) -> Answer<Option<Account>>;

    /// Deletes an account with what it leaves behind, durably (the view already
    /// forgot it; on failure the store has undone what it could).
    fn delete_account(&mut self, deletion: AccountDeletion) -> StoreFuture<()>;

    /// Joins a room (creating it if asked), durably.
    fn join_room(&mut self, join: RoomJoin) -> StoreFuture<Joined>;

    /// Ends a membership, durably: whether there was one.
    fn part_room(&mut self, room: &str, user: &str) -> StoreFuture<bool>;

    /// Records room changes (already applied to the view); the future ends once they
    /// are on disk.
    fn record_rooms(&mut self, changes: Vec<RoomChange>) -> StoreFuture<()>;

    /// Reads a page of older messages, oldest first, as MESSAGE payloads.
    fn page(&mut self, request: PageRequest) -> StoreFuture<Vec<Bytes>>;

    /// The highest id given so far (0 before any).
    fn last_id(&self) -> u64;

    /// One more connection of `key` here: whether it is the user's first anywhere
    /// (as far as the store knows; `ChatServer` still judges its own connections).
    fn user_connected(&mut self, key: &str, name: &str) -> bool;

    /// One connection of `key` fewer here: whether it was the user's last anywhere.
    fn user_disconnected(&mut self, key: &str) -> bool;

    /// Users online on other nodes: (name key, name).
    fn online_elsewhere(&self) -> Vec<(String, String)>;

    /// On how many nodes the user `key` has connections, this one included (at least
    /// 1): each takes that share of the account's `--msg-rate`, so that together they
    /// allow the rate once.
    fn nodes_with(&self, _key: &str) -> usize {
        1
    }

    /// The nodes alive, this one first (none for a single server).
    fn nodes(&self) -> Vec<NodeSummary>;

    /// Asks the other nodes to close the connections of `key` (but `except`, one of
    /// this node's), telling them `message`. This node closes its own.
    fn broadcast_kick(&mut self, key: &str, message: &str, except: Option<SessionId>);

    /// Whether the store can be reached now; while it cannot, every request but
    /// `ping`, `quit` and `who` is answered `unavailable`.
    fn is_available(&self) -> bool;

    /// The events of the other nodes, taken once at start (`None` for a store no one
    /// else writes).
    fn take_events(&mut self) -> Option<StoreEvents>;

    /// Puts everything on disk (or leaves the cluster) before the process ends.
    fn sync_for_shutdown(&mut self) -> StoreFuture<()>;
}
