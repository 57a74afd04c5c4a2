//! The node's followers: the tasks that read the message stream and the buckets as
//! they change and pass everything on as [`ClusterEvent`]s, and the presence
//! heartbeat.
//!
//! Each stream is read by an ordered consumer (push, no acks, recreated by the client
//! from the last sequence seen after a gap or a reconnection). The followers keep the
//! last sequence of each stream themselves and drop anything at or below it, so a
//! consumer recreated from an earlier point never delivers a message twice, and a
//! follower that must start over (an error, `clear-ids`) resumes where it was.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{push, DeliverPolicy};
use async_nats::jetstream::{kv, stream};
use futures_util::stream::{select_all, BoxStream};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};

use super::events::{decode, ClusterEvent, NewMessage, Snapshot};
use super::index::Recent;
use super::layout::{untoken, Bucket};
use super::records::{AdminEnvelope, NodeBeat, StoredBody};
use super::{lock, Inner};
use crate::server::unix_ms;
use crate::text;

/// The buckets a node follows (name claims are only ever read where they are
/// written).
pub(super) const FOLLOWED: [Bucket; 8] = [
    Bucket::Accounts,
    Bucket::Tokens,
    Bucket::Ips,
    Bucket::Bans,
    Bucket::Rooms,
    Bucket::Members,
    Bucket::Presence,
    Bucket::Meta,
];

/// How long a follower waits before trying again after NATS refused to start it.
const RETRY: Duration = Duration::from_secs(1);

/// How often dead nodes are looked for.
const EXPIRY_CHECK: Duration = Duration::from_secs(1);

/// How long a message known to be stored may take to come through the message
/// follower before the follower's consumer is made again. After a NATS server of a
/// cluster is lost, a consumer can be left where it delivers nothing while its
/// heartbeats still come, so the client never replaces it; what shows it is a message
/// stored (acknowledged to this node, or counted in the stream's state) that does not
/// arrive.
const DELIVERY_STALL: Duration = Duration::from_secs(5);

/// How often the message follower looks for a stall, and the stream's state is asked.
const STALL_CHECK: Duration = Duration::from_secs(2);

/// Whether a message known to be stored has waited more than [`DELIVERY_STALL`] to be
/// delivered (`last` is the last id delivered). A stall found is noted as seen now, so
/// that a consumer made again has its own time to deliver.
fn delivery_stalled(inner: &Inner, last: u64) -> Option<u64> {
    let mut expected = lock(&inner.expected);
    let (id, since) = *expected;
    let stalled = id > last && since.is_some_and(|at| at.elapsed() >= DELIVERY_STALL);
    if stalled {
        expected.1 = Some(Instant::now());
    }
    stalled.then_some(id)
}

/// Asks the message stream's state every [`STALL_CHECK`]: its last sequence is a
/// message the follower should deliver (messages other nodes publish included).
pub(super) async fn probe_messages(inner: Arc<Inner>) {
    loop {
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = tokio::time::sleep(STALL_CHECK) => {}
        }
        if !inner.is_up() {
            continue;
        }
        let asked = tokio::time::timeout(STALL_CHECK, inner.messages.get_info()).await;
        if let Ok(Ok(info)) = asked {
            inner.expect_delivery(info.state.last_sequence);
        }
    }
}

type Delivered = Result<async_nats::jetstream::Message, String>;

/// An ordered consumer on `stream` delivering what comes after `after` (everything
/// when 0). It starts *at* `after`, not after it, so that the client's own count of
/// what it delivered is primed at once: were it still 0 at a reconnection, the client
/// would recreate the consumer from the start of the stream. The caller drops what it
/// has seen.
async fn ordered(
    inner: &Inner,
    stream: &stream::Stream,
    filter: String,
    after: u64,
) -> Result<BoxStream<'static, Delivered>, String> {
    let deliver_policy = if after == 0 {
        DeliverPolicy::All
    } else {
        DeliverPolicy::ByStartSequence {
            start_sequence: after,
        }
    };
    let consumer = stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: inner.client.new_inbox(),
            filter_subject: filter,
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let messages = consumer.messages().await.map_err(|e| e.to_string())?;
    Ok(messages.map(|m| m.map_err(|e| e.to_string())).boxed())
}

/// Waits `RETRY`, or less if the node stops; `false` if it stopped.
async fn pause(inner: &Inner) -> bool {
    tokio::select! {
        _ = inner.stop.cancelled() => false,
        _ = tokio::time::sleep(RETRY) => true,
    }
}

fn sequence(message: &async_nats::jetstream::Message) -> Option<u64> {
    message.info().ok().map(|info| info.stream_sequence)
}

/// Reads the message stream: everything up to `known` (the last id at start) goes
/// into the index only, and `indexed` is told when it is in; everything after goes
/// into the index and out as [`ClusterEvent::Message`], in stream order.
pub(super) async fn messages(
    inner: Arc<Inner>,
    known: u64,
    indexed: oneshot::Sender<Recent>,
    events: mpsc::Sender<ClusterEvent>,
) {
    let mut indexed = Some(indexed);
    let mut recent = Recent::new(inner.config.recent);
    if known == 0 {
        indexed.take().map(|tx| tx.send(Recent::default()));
    }
    let started = Instant::now();
    loop {
        let after = lock(&inner.index).last();
        let mut stream = match ordered(&inner, &inner.messages, String::new(), after).await {
            Ok(stream) => stream,
            Err(err) => {
                log::warn!("cannot read the message stream (retrying): {err}");
                if pause(&inner).await {
                    continue;
                }
                return;
            }
        };
        let mut stall_check = tokio::time::interval(STALL_CHECK);
        loop {
            let item = tokio::select! {
                _ = inner.stop.cancelled() => return,
                item = stream.next() => item,
                _ = stall_check.tick() => {
                    let last = lock(&inner.index).last();
                    // The start-up read is judged by its own progress, not this.
                    let stalled = match indexed {
                        Some(_) => None,
                        None => delivery_stalled(&inner, last),
                    };
                    if let Some(id) = stalled {
                        log::warn!(
                            "message {id} was stored {} s ago and has not come back (last \
                             delivered: {last}); reading the message stream again",
                            DELIVERY_STALL.as_secs()
                        );
                        break;
                    }
                    continue;
                }
            };
            let message = match item {
                None => return,
                Some(Err(err)) => {
                    log::warn!("message stream interrupted (resuming): {err}");
                    break;
                }
                Some(Ok(message)) => message,
            };
            let Some(id) = sequence(&message) else {
                continue;
            };
            let subject = message.subject.as_str();
            let scope = inner.layout.parse_message_subject(subject);
            let body = serde_json::from_slice::<StoredBody>(&message.payload);
            let new = match (scope, body) {
                (Some(scope), Ok(body)) => {
                    let chat = body.with_id(id);
                    let fresh = lock(&inner.index).record(id, &scope, Some(chat.clone()));
                    if fresh && id <= known {
                        // Read at start: what logins replay until this node delivers
                        // messages of its own (those after come as events).
                        recent.record(&scope, &chat);
                    }
                    fresh.then_some(NewMessage {
                        scope,
                        message: chat,
                    })
                }
                _ => {
                    log::warn!(
                        "message {id} on {} is not a chat message; skipped",
                        text::quote(subject)
                    );
                    lock(&inner.index).skip(id);
                    None
                }
            };
            if let Some(new) = new {
                if id > known {
                    // Nobody listening (the receiver dropped): the index is still kept
                    // current, for history.
                    events.send(ClusterEvent::Message(new)).await.ok();
                }
            }
            if id >= known {
                if let Some(tx) = indexed.take() {
                    let count = lock(&inner.index).count();
                    log::info!(
                        "message stream read: {count} messages indexed in {} ms",
                        started.elapsed().as_millis()
                    );
                    tx.send(std::mem::take(&mut recent)).ok();
                }
            }
        }
        if !pause(&inner).await {
            return;
        }
    }
}

/// The follower of the buckets, the admin subject and presence.
struct StateFollower {
    inner: Arc<Inner>,
    events: mpsc::Sender<ClusterEvent>,
    /// The last sequence handled, per bucket.
    last: HashMap<Bucket, u64>,
    /// While the start-up snapshot is being read: what it still waits for, per bucket.
    targets: HashMap<Bucket, u64>,
    snapshot: Option<(Snapshot, oneshot::Sender<Snapshot>)>,
    /// The meta bucket's last sequence at start: a `clear-ids` at or below it happened
    /// before this node read the buckets.
    meta_at_start: u64,
}

/// What handling one entry asks of the follower.
enum Next {
    Go,
    /// `clear-ids` ran: read the cleared buckets again from their start.
    Reread,
    Stop,
}

/// Follows the buckets: the snapshot first (sent on `snapshot` once every bucket has
/// been read up to `targets`, its last sequence at start), then every change as an
/// event; with the admin subject, presence expiry and NATS coming and going.
pub(super) async fn state(
    inner: Arc<Inner>,
    targets: HashMap<Bucket, u64>,
    snapshot: oneshot::Sender<Snapshot>,
    events: mpsc::Sender<ClusterEvent>,
) {
    let meta_at_start = targets.get(&Bucket::Meta).copied().unwrap_or(0);
    let targets: HashMap<Bucket, u64> = targets.into_iter().filter(|(_, t)| *t > 0).collect();
    let mut follower = StateFollower {
        inner: Arc::clone(&inner),
        events,
        last: HashMap::new(),
        targets,
        snapshot: Some((Snapshot::default(), snapshot)),
        meta_at_start,
    };
    follower.snapshot_if_read();
    let mut admin = loop {
        match inner.client.subscribe(inner.layout.admin_subject()).await {
            Ok(subscriber) => break subscriber,
            Err(err) => {
                log::warn!("cannot subscribe to the admin subject (retrying): {err}");
                if !pause(&inner).await {
                    return;
                }
            }
        }
    };
    let mut available = inner.available.clone();
    // Connected at start: only later changes are news.
    available.borrow_and_update();
    let mut expiry = tokio::time::interval(EXPIRY_CHECK);
    loop {
        let mut merged = match follower.open().await {
            Ok(merged) => merged,
            Err(err) => {
                log::warn!("cannot follow the buckets (retrying): {err}");
                if pause(&inner).await {
                    continue;
                }
                return;
            }
        };
        loop {
            let next = tokio::select! {
                _ = inner.stop.cancelled() => Next::Stop,
                item = merged.next() => match item {
                    None => Next::Stop,
                    Some((bucket, Err(err))) => {
                        log::warn!("bucket {} interrupted (resuming): {err}", bucket.suffix());
                        break;
                    }
                    Some((bucket, Ok(message))) => follower.entry(bucket, &message).await,
                },
                message = admin.next() => match message {
                    Some(message) => follower.admin(&message.payload).await,
                    None => Next::Stop,
                },
                changed = available.changed() => match changed {
                    Ok(()) => {
                        let up = *available.borrow_and_update();
                        follower.availability(up).await
                    }
                    Err(_) => Next::Stop,
                },
                _ = expiry.tick() => follower.expire().await,
            };
            match next {
                Next::Go => {}
                Next::Reread => break,
                Next::Stop => return,
            }
        }
    }
}

impl StateFollower {
    /// One ordered consumer per followed bucket, merged, each from where it was.
    async fn open(
        &self,
    ) -> Result<futures_util::stream::SelectAll<BoxStream<'static, (Bucket, Delivered)>>, String>
    {
        let mut streams = Vec::new();
        for bucket in FOLLOWED {
            let Some(store) = self.inner.buckets.get(&bucket) else {
                continue;
            };
            let after = self.last.get(&bucket).copied().unwrap_or(0);
            let filter = format!("$KV.{}.>", store.name);
            let stream = ordered(&self.inner, &store.stream, filter, after).await?;
            streams.push(stream.map(move |item| (bucket, item)).boxed());
        }
        Ok(select_all(streams))
    }

    /// Sends the snapshot if every bucket has been read up to its target.
    fn snapshot_if_read(&mut self) {
        if !self.targets.is_empty() {
            return;
        }
        if let Some((mut snapshot, tx)) = self.snapshot.take() {
            snapshot.online = lock(&self.inner.presence).online();
            tx.send(snapshot).ok();
        }
    }

    async fn emit(&self, event: ClusterEvent) -> Next {
        if self.snapshot.is_some() {
            return Next::Go;
        }
        // Nobody listening (the receiver dropped): presence is still followed.
        self.events.send(event).await.ok();
        Next::Go
    }

    async fn entry(&mut self, bucket: Bucket, message: &async_nats::jetstream::Message) -> Next {
        let Ok(info) = message.info() else {
            return Next::Go;
        };
        let seq = info.stream_sequence;
        let published_ms = (info.published.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
        let last = self.last.entry(bucket).or_insert(0);
        if seq <= *last {
            return Next::Go;
        }
        *last = seq;
        if self.targets.get(&bucket).is_some_and(|t| seq >= *t) {
            self.targets.remove(&bucket);
        }
        let next = self.handle(bucket, message, seq, published_ms).await;
        self.snapshot_if_read();
        next
    }

    async fn handle(
        &mut self,
        bucket: Bucket,
        message: &async_nats::jetstream::Message,
        seq: u64,
        published_ms: u64,
    ) -> Next {
        let Some(store) = self.inner.buckets.get(&bucket) else {
            return Next::Go;
        };
        let prefix = format!("$KV.{}.", store.name);
        let Some(key) = message.subject.as_str().strip_prefix(prefix.as_str()) else {
            return Next::Go;
        };
        let removed = message
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
        let value = (!removed).then_some(&message.payload[..]);
        match bucket {
            Bucket::Presence => self.presence(key, value, published_ms).await,
            Bucket::Meta => {
                if key != "cleared" || removed || seq <= self.meta_at_start {
                    // What was cleared before this node started is not in the buckets.
                    return Next::Go;
                }
                log::info!("identities cleared on the cluster");
                for bucket in Bucket::CLEARED {
                    self.last.remove(&bucket);
                    // What is left is read again; it may come after the snapshot.
                    self.targets.remove(&bucket);
                }
                if let Some((snapshot, _)) = &mut self.snapshot {
                    snapshot.clear_identities();
                    self.snapshot_if_read();
                    return Next::Reread;
                }
                match self.emit(ClusterEvent::Cleared).await {
                    Next::Go => Next::Reread,
                    other => other,
                }
            }
            _ => match decode(bucket, key, value) {
                Ok(Some(change)) => match &mut self.snapshot {
                    Some((snapshot, _)) => {
                        snapshot.apply(change);
                        Next::Go
                    }
                    None => self.emit(ClusterEvent::State(change)).await,
                },
                Ok(None) => Next::Go,
                Err(err) => {
                    log::warn!("skipped an unreadable entry: {err}");
                    Next::Go
                }
            },
        }
    }

    async fn presence(&mut self, key: &str, value: Option<&[u8]>, published_ms: u64) -> Next {
        let Some(node) = untoken(key) else {
            return Next::Go;
        };
        let changes = match value {
            None => lock(&self.inner.presence).remote_gone(&node),
            Some(value) => match serde_json::from_slice::<NodeBeat>(value) {
                Ok(beat) => {
                    // Heard when it was written, as far as clocks agree.
                    let age = Duration::from_millis(unix_ms().saturating_sub(published_ms));
                    let now = Instant::now();
                    let seen = now.checked_sub(age).unwrap_or(now);
                    lock(&self.inner.presence).remote_beat(&node, beat, seen, now)
                }
                Err(err) => {
                    log::warn!("node {} beat unreadable: {err}", text::quote(&node));
                    return Next::Go;
                }
            },
        };
        self.presence_changes(changes).await
    }

    async fn presence_changes(&self, changes: Vec<super::PresenceChange>) -> Next {
        for change in changes {
            if let Next::Stop = self.emit(ClusterEvent::Presence(change)).await {
                return Next::Stop;
            }
        }
        Next::Go
    }

    async fn admin(&self, payload: &[u8]) -> Next {
        match serde_json::from_slice::<AdminEnvelope>(payload) {
            Ok(envelope) if envelope.origin == self.inner.node => Next::Go,
            Ok(envelope) => self.emit(ClusterEvent::Admin(envelope)).await,
            Err(err) => {
                log::warn!("unreadable admin command: {err}");
                Next::Go
            }
        }
    }

    async fn availability(&self, up: bool) -> Next {
        if up {
            log::info!("NATS connection back");
            lock(&self.inner.presence).heard_again(Instant::now());
            self.inner.beat_now.notify_one();
        } else {
            log::warn!("NATS connection lost; reconnecting");
        }
        self.emit(ClusterEvent::Available(up)).await
    }

    async fn expire(&self) -> Next {
        if !*self.inner.available.borrow() {
            return Next::Go;
        }
        let changes = lock(&self.inner.presence).expire(Instant::now());
        self.presence_changes(changes).await
    }
}

/// Beats this node's presence every `heartbeat`, and at once when woken (its users
/// changed, NATS came back).
pub(super) async fn heartbeat(inner: Arc<Inner>) {
    let Some(store) = inner.buckets.get(&Bucket::Presence).cloned() else {
        return;
    };
    let key = super::layout::token(&inner.node);
    let mut ticks = tokio::time::interval(inner.config.heartbeat);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = ticks.tick() => {}
            _ = inner.beat_now.notified() => {}
        }
        if !*inner.available.borrow() {
            continue;
        }
        let beat = lock(&inner.presence).beat();
        let Ok(value) = serde_json::to_vec(&beat) else {
            continue;
        };
        match put_beat(&store, &key, value).await {
            Ok(()) => failing = false,
            Err(err) if !failing => {
                failing = true;
                log::warn!("presence beat not written: {err}");
            }
            Err(_) => {}
        }
    }
}

async fn put_beat(store: &kv::Store, key: &str, value: Vec<u8>) -> Result<(), kv::PutError> {
    store.put(key, value.into()).await.map(|_| ())
}
