//! Cluster mode's durable state and fan-out on NATS JetStream (SPEC §11), as a plain
//! async layer with no actors: [`Cluster::connect`] sets up the stream and buckets
//! and starts this node's followers; its methods are the operations a node needs; and
//! the node hears every change made anywhere as a [`ClusterEvent`].
//!
//! - Every chat message is one message of the stream `<name>_messages` (subjects
//!   `<name>.msg.r.<room>` and `<name>.msg.d.<uid>.<uid>`); its stream sequence is its
//!   `id`, so ids are one increasing sequence across the cluster, and a publish is
//!   acknowledged only once JetStream has stored it. Each node reads the stream with
//!   one ordered consumer, indexes it ([`index`]) and passes every new message on in
//!   stream order.
//! - Accounts, look-alike claims, tokens, IP identifications, bans, rooms and
//!   memberships are key-value buckets ([`layout::Bucket`]); registration, room
//!   creation and joining are create-only writes, spending a token is a delete that
//!   names the revision it read (compare-and-set), so two nodes racing never both win.
//!   Each node follows every bucket and hears every change ([`StateChange`]).
//! - Presence: each node beats its users online into `<name>_presence` every few
//!   seconds; a node that stops is judged gone after a timeout ([`presence`]).
//! - `<name>.admin` (core NATS) carries what concerns connections only (`kick`).
//!
//! See `docs/cluster.md` for the design and what each guarantee rests on.

mod accounts;
mod chat;
mod connect;
mod follow;

pub mod events;
pub mod index;
pub mod layout;
pub mod presence;
pub mod records;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::protocol::ChatMessage;
use crate::server::unix_ms;
use crate::text;

pub use self::events::{ClusterEvent, NewMessage, Snapshot, StateChange};
pub use self::index::{HistoryOf, Recent};
pub use self::layout::{BadClusterName, Bucket, Layout, Scope};
pub use self::presence::{NodeInfo, PresenceChange};
pub use self::records::{
    AccountRecord, AdminCommand, AdminEnvelope, BanRecord, ClaimRecord, ConnectionRef,
    MemberRecord, RoomRecord, StoredBody, TokenEntry,
};

use self::index::MessageIndex;
use self::layout::{claim_keys, ip_key, member_key, token};
use self::presence::PresenceBoard;
use self::records::{ClearedRecord, IpRecord};

/// The default `--cluster-name`.
pub const DEFAULT_CLUSTER_NAME: &str = "echochat";

/// A claim on a name older than this whose account does not exist was left by a
/// registration that never finished (a node died between the two writes): it may be
/// taken over.
const STALE_CLAIM: Duration = Duration::from_secs(30);

/// Direct gets in flight for one history page.
const PAGE_FETCHES: usize = 32;

/// How a node joins a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS server URL(s), comma-separated (`--nats`).
    pub url: String,
    /// `--cluster-name`: prefixes every stream, bucket and subject.
    pub name: String,
    /// What this node is called in `status` (e.g. host and process id).
    pub label: String,
    /// How often this node beats its presence.
    pub heartbeat: Duration,
    /// A node not heard from for this long is gone, and its users with it.
    pub node_timeout: Duration,
    /// How long one NATS operation may take before it fails as unavailable.
    pub op_timeout: Duration,
    /// Newest messages kept in memory for history.
    pub cache: usize,
    /// Replicas of the stream and buckets (1 for a single NATS server; 3 for a NATS
    /// cluster, so that losing a NATS server loses nothing).
    pub replicas: usize,
    /// Messages of each room and account kept from the start-up read for the
    /// snapshot's [`Recent`] (`--history`).
    pub recent: usize,
    /// How long a token lives (`--token-ttl`): the tokens bucket, when this node
    /// creates it, drops entries older than this by itself, so expired tokens do not
    /// pile up. `None`: kept until deleted.
    pub token_ttl: Option<Duration>,
}

impl ClusterConfig {
    /// The defaults, for the NATS at `url` and the cluster `name`: beats every 5 s,
    /// nodes gone after 20 s of silence (so a dead node's users are `left` within
    /// 30 s), operations failing after 5 s.
    pub fn new(url: &str, name: &str) -> ClusterConfig {
        ClusterConfig {
            url: url.to_string(),
            name: name.to_string(),
            label: format!("pid {}", std::process::id()),
            heartbeat: Duration::from_secs(5),
            node_timeout: Duration::from_secs(20),
            op_timeout: Duration::from_secs(5),
            cache: 8192,
            replicas: 1,
            recent: 0,
            token_ttl: None,
        }
    }
}

/// Why a node could not join the cluster; each is one line.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("--cluster-name: {0}")]
    Name(#[from] BadClusterName),
    #[error("cannot reach NATS at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "NATS at {url}: cannot set up {what}: {reason} (is JetStream enabled, nats-server -js?)"
    )]
    Setup {
        url: String,
        what: String,
        reason: String,
    },
}

/// Why an operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// Another write came first: the name is taken, the token was spent, the record
    /// changed since it was read.
    #[error("another node changed it first")]
    Conflict,
    /// There is no such record.
    #[error("not found")]
    NotFound,
    /// NATS cannot be reached now (or did not answer in time): answer `unavailable`.
    #[error("NATS unavailable: {0}")]
    Unavailable(String),
    /// NATS refused the write itself (a value too large, a key it does not take).
    #[error("refused by NATS: {0}")]
    Refused(String),
    /// A stored value could not be read.
    #[error("unreadable record: {0}")]
    Corrupt(String),
}

/// A chat message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Where it goes: a room key, or the two account ids of a direct message.
    pub scope: Scope,
    /// The MESSAGE without its id (`room` or `to` as shown to users).
    pub body: StoredBody,
}

/// What a deleted account leaves behind, as this node knows it (its view may miss a
/// token issued elsewhere in the last moment: tokens name their account's id, so one
/// left behind never logs anyone in).
#[derive(Debug, Clone, Default)]
pub struct Belongings {
    /// Digests of its tokens.
    pub tokens: Vec<String>,
    /// Addresses identified as it.
    pub ips: Vec<IpAddr>,
    /// Keys of the rooms it is a member of.
    pub rooms: Vec<String>,
}

/// A node's handle on the cluster; cheap to clone. See the module documentation.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    layout: Layout,
    config: ClusterConfig,
    node: String,
    client: async_nats::Client,
    js: jetstream::Context,
    messages: stream::Stream,
    buckets: HashMap<Bucket, kv::Store>,
    index: Mutex<MessageIndex>,
    presence: Mutex<PresenceBoard>,
    /// Wakes the heartbeat to beat now (this node's users changed, NATS came back).
    beat_now: Notify,
    available: watch::Receiver<bool>,
    stop: CancellationToken,
    /// The oldest message id known to be stored (acknowledged to this node, or seen
    /// in the stream's state) and not yet delivered by the message follower, and
    /// since when: it must come soon ([`follow::messages`]).
    expected: Mutex<(u64, Option<std::time::Instant>)>,
}

impl Inner {
    /// Whether NATS is reachable now.
    fn is_up(&self) -> bool {
        *self.available.borrow()
    }

    /// The message `id` is stored in the stream: the message follower should deliver
    /// it soon. Only the oldest such id is watched.
    fn expect_delivery(&self, id: u64) {
        let last = lock(&self.index).last();
        let mut expected = lock(&self.expected);
        if id > last && expected.0 <= last {
            *expected = (id, Some(std::time::Instant::now()));
        }
    }
}

/// What [`Cluster::connect`] gives: the handle, the state found, and the events that
/// follow it.
pub struct Joined {
    pub cluster: Cluster,
    pub snapshot: Snapshot,
    pub events: mpsc::Receiver<ClusterEvent>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unavailable(err: impl std::fmt::Display) -> ClusterError {
    ClusterError::Unavailable(err.to_string())
}

fn from_create(err: kv::CreateError) -> ClusterError {
    match err.kind() {
        kv::CreateErrorKind::AlreadyExists => ClusterError::Conflict,
        kv::CreateErrorKind::InvalidKey => ClusterError::Refused(err.to_string()),
        _ => unavailable(err),
    }
}

fn from_update(err: kv::UpdateError) -> ClusterError {
    match err.kind() {
        kv::UpdateErrorKind::WrongLastRevision => ClusterError::Conflict,
        kv::UpdateErrorKind::InvalidKey => ClusterError::Refused(err.to_string()),
        _ => unavailable(err),
    }
}

fn from_put(err: kv::PutError) -> ClusterError {
    match err.kind() {
        kv::PutErrorKind::InvalidKey => ClusterError::Refused(err.to_string()),
        _ => unavailable(err),
    }
}

fn from_entry(err: kv::EntryError) -> ClusterError {
    match err.kind() {
        kv::EntryErrorKind::InvalidKey => ClusterError::Refused(err.to_string()),
        _ => unavailable(err),
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Bytes, ClusterError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| ClusterError::Refused(e.to_string()))
}

fn decode_value<T: serde::de::DeserializeOwned>(
    what: &str,
    value: &[u8],
) -> Result<T, ClusterError> {
    serde_json::from_slice(value).map_err(|e| ClusterError::Corrupt(format!("{what}: {e}")))
}

/// A live value and its revision.
type Revised<T> = Option<(T, u64)>;

impl Cluster {
    /// This node's id (random, new at every start).
    pub fn node_id(&self) -> &str {
        &self.inner.node
    }

    /// The cluster's names.
    pub fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    /// Whether NATS is connected now.
    pub fn is_available(&self) -> bool {
        *self.inner.available.borrow()
    }

    /// Follows [`is_available`](Self::is_available).
    pub fn availability(&self) -> watch::Receiver<bool> {
        self.inner.available.clone()
    }

    fn ensure_available(&self) -> Result<(), ClusterError> {
        if self.is_available() {
            Ok(())
        } else {
            Err(ClusterError::Unavailable("not connected to NATS".into()))
        }
    }

    fn bucket(&self, bucket: Bucket) -> Result<&kv::Store, ClusterError> {
        self.inner
            .buckets
            .get(&bucket)
            .ok_or_else(|| ClusterError::Unavailable(format!("no bucket {}", bucket.suffix())))
    }

    /// The live value under `key` and its revision (`None` if absent or deleted).
    async fn entry<T: serde::de::DeserializeOwned>(
        &self,
        bucket: Bucket,
        key: &str,
    ) -> Result<Revised<T>, ClusterError> {
        self.ensure_available()?;
        let entry = self.bucket(bucket)?.entry(key).await.map_err(from_entry)?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let what = format!("{} {}", bucket.suffix(), text::quote(key));
                Ok(Some((decode_value(&what, &entry.value)?, entry.revision)))
            }
            _ => Ok(None),
        }
    }

    async fn create<T: Serialize>(
        &self,
        bucket: Bucket,
        key: &str,
        value: &T,
    ) -> Result<u64, ClusterError> {
        self.ensure_available()?;
        let value = encode(value)?;
        self.bucket(bucket)?
            .create(key, value)
            .await
            .map_err(from_create)
    }

    async fn update<T: Serialize>(
        &self,
        bucket: Bucket,
        key: &str,
        value: &T,
        revision: u64,
    ) -> Result<u64, ClusterError> {
        self.ensure_available()?;
        let value = encode(value)?;
        self.bucket(bucket)?
            .update(key, value, revision)
            .await
            .map_err(from_update)
    }

    async fn put<T: Serialize>(
        &self,
        bucket: Bucket,
        key: &str,
        value: &T,
    ) -> Result<u64, ClusterError> {
        self.ensure_available()?;
        let value = encode(value)?;
        self.bucket(bucket)?.put(key, value).await.map_err(from_put)
    }

    async fn delete(
        &self,
        bucket: Bucket,
        key: &str,
        revision: Option<u64>,
    ) -> Result<(), ClusterError> {
        self.ensure_available()?;
        self.bucket(bucket)?
            .delete_expect_revision(key, revision)
            .await
            .map_err(from_update)
    }

    // ----- presence -----

    /// One more connection of the user `key` on this node; `Some(Online)` if this is
    /// their first anywhere (announce `joined`). Never waits: the heartbeat tells the
    /// other nodes.
    pub fn user_connected(&self, key: &str, name: &str) -> Option<PresenceChange> {
        let change = lock(&self.inner.presence).connected(key, name);
        self.inner.beat_now.notify_one();
        change
    }

    /// One connection fewer of `key` on this node; `Some(Offline)` if it was their
    /// last anywhere (announce `left`).
    pub fn user_disconnected(&self, key: &str) -> Option<PresenceChange> {
        let change = lock(&self.inner.presence).disconnected(key);
        self.inner.beat_now.notify_one();
        change
    }

    /// Everyone online anywhere: (name key, name), by name key.
    pub fn online(&self) -> Vec<(String, String)> {
        lock(&self.inner.presence).online()
    }

    /// Everyone online on other nodes: (name key, name), by name key.
    pub fn online_elsewhere(&self) -> Vec<(String, String)> {
        lock(&self.inner.presence).online_elsewhere()
    }

    /// Whether `key` is online anywhere.
    pub fn is_online(&self, key: &str) -> bool {
        lock(&self.inner.presence).is_online(key)
    }

    /// On how many nodes the user `key` is online (this one included); at least 1.
    pub fn nodes_with(&self, key: &str) -> usize {
        lock(&self.inner.presence).nodes_with(key)
    }

    /// The nodes alive, this one first.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        lock(&self.inner.presence).nodes()
    }

    // ----- admin -----

    /// Sends `command` to every other node (core NATS: nodes cut off from NATS right
    /// now miss it; what must not be missed is in the buckets). Carry it out on this
    /// node yourself.
    pub async fn broadcast(&self, command: AdminCommand) -> Result<(), ClusterError> {
        self.ensure_available()?;
        let envelope = AdminEnvelope {
            origin: self.inner.node.clone(),
            command,
        };
        self.inner
            .client
            .publish(self.inner.layout.admin_subject(), encode(&envelope)?)
            .await
            .map_err(unavailable)?;
        self.inner.client.flush().await.map_err(unavailable)
    }

    /// The message index's size: messages indexed and the highest id (for `status`
    /// and measurements).
    pub fn indexed(&self) -> (u64, u64) {
        let index = lock(&self.inner.index);
        (index.count(), index.last())
    }

    /// Leaves the cluster: removes this node's presence (its users are `left` at once
    /// on the other nodes) and stops the followers.
    pub async fn close(&self) {
        if let Some(store) = self.inner.buckets.get(&Bucket::Presence) {
            if self.is_available() {
                store.delete(&self.inner.node).await.ok();
            }
        }
        self.inner.stop.cancel();
        self.inner.client.flush().await.ok();
    }
}
