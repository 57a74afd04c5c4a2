//! The storage seam: what `ChatServer` asks of durable state, whoever keeps it.
//!
//! [`Store`] is the one interface; `actors::persistence::FileStore` keeps everything in
//! the state folder (through the `Persistence` actor), and a store shared between nodes
//! can implement the same interface without the actors changing. The files themselves
//! are read and written by the plain modules here: [`state_files`] (how any state file
//! is touched), [`identity_file`] (`users.json` and its journal) and [`history_file`]
//! (`history.jsonl` and `ids.json`).

pub mod history_file;
pub mod history_index;
pub mod identity_file;
pub mod rooms_file;
pub mod state_files;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use self::history_index::Conversation;
use crate::codec::encode_frame;
use crate::protocol::{ChatMessage, ServerMessage};
use crate::server::identity::IdentityChange;
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
    /// Not recorded, and not to be delivered.
    Refused(StoreError),
}

/// Whether the store can record messages now; sent to `ChatServer` when it changes
/// (a disk filling up, or recovering).
#[derive(actix::Message, Debug, Clone, Copy, PartialEq, Eq)]
#[rtype(result = "()")]
pub enum StoreHealth {
    Recording,
    NotRecording,
}

/// What `ChatServer` asks of durable state.
pub trait Store {
    /// Gives a chat message its id and time and hands it to be recorded.
    fn submit(&mut self, draft: Draft) -> Submitted;

    /// Records identity changes (already applied in `ChatServer`'s memory). With
    /// `durable` the future ends once they are safe from a crash; without it they are
    /// written with the next batch and `None` is returned.
    fn record_identities(
        &mut self,
        changes: Vec<IdentityChange>,
        durable: bool,
    ) -> Option<StoreFuture<()>>;

    /// Records room changes; the future ends once they are on disk.
    fn record_rooms(&mut self, changes: Vec<RoomChange>) -> StoreFuture<()>;

    /// Reads a page of older messages, oldest first, as MESSAGE payloads.
    fn page(&mut self, request: PageRequest) -> StoreFuture<Vec<Bytes>>;

    /// The highest id given so far (0 before any).
    fn last_id(&self) -> u64;

    /// Puts everything on disk before the process ends.
    fn sync_for_shutdown(&mut self) -> StoreFuture<()>;
}
