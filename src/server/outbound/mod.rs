//! How frames leave the server: broadcast rings that sessions subscribe to, a small
//! direct queue per session, and one writer task per connection.
//!
//! `ChatServer` serialises a message once and publishes the frame on a [`Broadcaster`]:
//! the lobby's ring (every authenticated session is subscribed, since every account is
//! in `lobby`) or a room's ring (the sessions of its members). Nobody sends one mailbox
//! message per recipient, and a room message costs nothing per online user who is not
//! a member. Each writer drains its rings and its direct queue (welcome, auth results,
//! replies, errors, direct messages), copies whatever is waiting into one buffer and
//! writes it with one call. Writers run on the I/O runtime ([`runtime`]).
//!
//! Memory stays bounded whatever the clients do: a ring has a fixed number of slots (a
//! writer that falls a whole ring behind is dropped), the direct queue has a fixed
//! number of entries (a session that lets it fill is dropped), and a writer whose
//! unsent bytes pass `--send-queue` while its socket is blocked is dropped. The
//! broadcaster never waits for anyone.

pub mod runtime;
mod writer;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

pub use self::writer::{run_writer, WriterEnd};

/// Identifies one connection for the life of the server process.
pub type SessionId = u64;

/// Slots in the lobby's ring: how many frames a writer may fall behind before it is
/// dropped. At ~150 bytes a chat frame that is about 1 MiB, in line with the default
/// `--send-queue`, and the ring's own memory stays a few MiB.
pub const RING_CAPACITY: usize = 8192;

/// Slots in a room's ring. Rooms are many and mostly quieter than the lobby; a ring
/// exists only while the room has a member online.
pub const ROOM_RING_CAPACITY: usize = 2048;

/// Entries in a session's direct queue. Direct frames are replies to the session's
/// own requests (which it sends one at a time), direct messages and rare events, so a
/// full queue means the client stopped reading.
pub const DIRECT_QUEUE: usize = 256;

/// Identifies one ring for the life of the process.
pub type RingId = u64;

/// Who must not get a frame published on a ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// One connection (the one whose `joined` it announces).
    Session(SessionId),
    /// Every connection of one user, by name key (the one a room event is about).
    User(Arc<str>),
}

/// One frame on a ring.
#[derive(Debug, Clone)]
pub struct RingItem {
    frame: Bytes,
    skip: Option<Skip>,
}

/// The publishing end of a ring; owned by `ChatServer`.
pub struct Broadcaster {
    id: RingId,
    sender: broadcast::Sender<RingItem>,
    published_bytes: Arc<AtomicU64>,
}

impl Default for Broadcaster {
    fn default() -> Self {
        Broadcaster::new(RING_CAPACITY)
    }
}

impl Broadcaster {
    /// A ring with `capacity` slots.
    pub fn new(capacity: usize) -> Broadcaster {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let (sender, _) = broadcast::channel(capacity.max(1));
        Broadcaster {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            sender,
            published_bytes: Arc::new(AtomicU64::new(0)),
        }
    }

    /// This ring's id (for [`Outbox::unsubscribe`]).
    pub fn id(&self) -> RingId {
        self.id
    }

    /// How many subscriptions take this ring's frames now.
    pub fn subscribers(&self) -> usize {
        self.sender.receiver_count()
    }

    /// Hands `frame` to every subscriber but those `skip` names. Never waits.
    pub fn publish(&self, frame: Bytes, skip: Option<Skip>) {
        self.published_bytes
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        // No subscriber is not an error: nobody is listening.
        let _ = self.sender.send(RingItem { frame, skip });
    }

    /// A subscription that receives every frame published from now on, for a
    /// connection of the user `user` (name key), who may be skipped by name.
    pub fn subscribe(&self, user: Option<Arc<str>>) -> Subscription {
        Subscription {
            ring: self.id,
            receiver: self.sender.subscribe(),
            user,
            published_bytes: self.published_bytes.clone(),
            consumed_bytes: self.published_bytes.load(Ordering::Relaxed),
        }
    }
}

/// A session's place on one ring.
pub struct Subscription {
    ring: RingId,
    receiver: broadcast::Receiver<RingItem>,
    /// The subscriber's user (name key), for [`Skip::User`].
    user: Option<Arc<str>>,
    published_bytes: Arc<AtomicU64>,
    consumed_bytes: u64,
}

impl Subscription {
    /// Bytes published on the ring that this subscriber has not taken yet.
    fn lag_bytes(&self) -> u64 {
        self.published_bytes
            .load(Ordering::Relaxed)
            .saturating_sub(self.consumed_bytes)
    }

    /// Whether `item` is meant for this subscriber's connection `session`.
    fn wants(&self, item: &RingItem, session: SessionId) -> bool {
        match &item.skip {
            None => true,
            Some(Skip::Session(skipped)) => *skipped != session,
            Some(Skip::User(skipped)) => self.user.as_ref() != Some(skipped),
        }
    }
}

/// What goes through a session's direct queue, in order.
pub enum Outbound {
    /// A complete frame for this connection only.
    Frame(Bytes),
    /// Start taking a ring's frames (sent right after the frames that snapshot what
    /// came before, e.g. `auth_ok` and `history`). Boxed: every slot of the queue is
    /// as large as its largest variant, and the queue's first block of slots is
    /// allocated with it, for every connection, idle or not.
    Subscribe(Box<Subscription>),
    /// Stop taking a ring's frames.
    Unsubscribe(RingId),
    /// Deliver what is queued, then close the connection.
    Close,
}

/// The sending side of a session's direct queue; cheap to clone, held by the session
/// and by `ChatServer`.
#[derive(Clone)]
pub struct Outbox {
    sender: mpsc::Sender<Outbound>,
    abort: CancellationToken,
    /// Raised with [`Outbox::close`]: a writer blocked on a reader that stopped
    /// reading sees it without reaching the `Close` in its queue.
    close_requested: CancellationToken,
}

impl Outbox {
    /// Queues a frame. A session whose queue is full is not reading: it is aborted.
    pub fn send(&self, frame: Bytes) {
        self.push(Outbound::Frame(frame));
    }

    /// Starts delivery from a ring.
    pub fn subscribe(&self, subscription: Subscription) {
        self.push(Outbound::Subscribe(Box::new(subscription)));
    }

    /// Stops delivery from a ring.
    pub fn unsubscribe(&self, ring: RingId) {
        self.push(Outbound::Unsubscribe(ring));
    }

    /// Delivers what is queued, then closes; a connection that cannot take its last
    /// frames within the close deadline is cut.
    pub fn close(&self) {
        self.close_requested.cancel();
        self.push(Outbound::Close);
    }

    /// Closes at once, dropping whatever is queued.
    pub fn abort(&self) {
        self.abort.cancel();
    }

    fn push(&self, item: Outbound) {
        match self.sender.try_send(item) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.abort.is_cancelled() {
                    log::warn!("dropping a connection whose output queue is full");
                }
                self.abort.cancel();
            }
            // The writer has finished; the session is going away.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// Creates a session's direct queue: the [`Outbox`] for producers and the receiving
/// half for [`run_writer`].
pub fn direct_queue() -> (Outbox, WriterQueue) {
    let (sender, receiver) = mpsc::channel(DIRECT_QUEUE);
    let abort = CancellationToken::new();
    let close_requested = CancellationToken::new();
    (
        Outbox {
            sender,
            abort: abort.clone(),
            close_requested: close_requested.clone(),
        },
        WriterQueue {
            receiver,
            abort,
            close_requested,
        },
    )
}

/// The writer's end of a session's direct queue, with the signals that go with it.
pub struct WriterQueue {
    receiver: mpsc::Receiver<Outbound>,
    abort: CancellationToken,
    close_requested: CancellationToken,
}
