//! Rooms, memberships and messages in cluster mode: rooms and joins as create-only
//! writes, messages published to the stream (its sequence is their id), and pages read
//! back through the index.

use super::*;

impl Cluster {
    // ----- rooms -----

    /// Creates the room `key`; [`ClusterError::Conflict`] if it exists (created first
    /// elsewhere: use that one's name).
    pub async fn create_room(&self, key: &str, room: &RoomRecord) -> Result<(), ClusterError> {
        self.create(Bucket::Rooms, &token(key), room)
            .await
            .map(|_| ())
    }

    /// The room `key`, read from NATS.
    pub async fn room(&self, key: &str) -> Result<Option<RoomRecord>, ClusterError> {
        Ok(self
            .entry::<RoomRecord>(Bucket::Rooms, &token(key))
            .await?
            .map(|(room, _)| room))
    }

    /// Makes `member` (name key `user`) a member of room `room`: `true` if it was not
    /// one (announce `member_joined`), `false` if it already was. A membership left
    /// by a deleted account of the same name is replaced.
    pub async fn join(
        &self,
        room: &str,
        user: &str,
        member: &MemberRecord,
    ) -> Result<bool, ClusterError> {
        let key = member_key(room, user);
        match self.create(Bucket::Members, &key, member).await {
            Ok(_) => return Ok(true),
            Err(ClusterError::Conflict) => {}
            Err(err) => return Err(err),
        }
        match self.entry::<MemberRecord>(Bucket::Members, &key).await? {
            Some((held, _)) if held.uid == member.uid => Ok(false),
            Some((_, revision)) => self
                .update(Bucket::Members, &key, member, revision)
                .await
                .map(|_| true),
            None => self
                .create(Bucket::Members, &key, member)
                .await
                .map(|_| true),
        }
    }

    /// Ends the membership of `user` in `room`: `true` if there was one.
    pub async fn part(&self, room: &str, user: &str) -> Result<bool, ClusterError> {
        let key = member_key(room, user);
        let Some((_, revision)) = self.entry::<MemberRecord>(Bucket::Members, &key).await? else {
            return Ok(false);
        };
        match self.delete(Bucket::Members, &key, Some(revision)).await {
            Ok(()) => Ok(true),
            Err(ClusterError::Conflict) => Ok(false),
            Err(err) => Err(err),
        }
    }

    // ----- messages -----

    /// Stores a chat message; returns its id (the stream sequence) once JetStream has
    /// stored it. Deliver it when it comes back as [`ClusterEvent::Message`] (every
    /// node, this one too, delivers in stream order). An error means it may or may
    /// not have been stored (an acknowledgement lost with the connection): if it was,
    /// it arrives as an event like any other.
    pub async fn publish(&self, message: &Outgoing) -> Result<u64, ClusterError> {
        self.send(message).await?.await
    }

    /// [`publish`](Self::publish) in two steps: this ends once the message is on its
    /// way to NATS (so messages sent one after another are stored in that order), and
    /// the future it gives ends with the id once JetStream has stored it.
    pub async fn send(
        &self,
        message: &Outgoing,
    ) -> Result<impl std::future::Future<Output = Result<u64, ClusterError>> + Send, ClusterError>
    {
        self.ensure_available()?;
        let subject = match &message.scope {
            Scope::Room(room) => self.inner.layout.room_subject(room),
            Scope::Direct(a, b) => self.inner.layout.direct_subject(a, b),
        };
        let payload = encode(&message.body)?;
        let refused = |err: jetstream::context::PublishError| match err.kind() {
            jetstream::context::PublishErrorKind::MaxPayloadExceeded => {
                ClusterError::Refused(err.to_string())
            }
            _ => unavailable(err),
        };
        let ack = self
            .inner
            .js
            .publish(subject, payload)
            .await
            .map_err(refused)?;
        let inner = Arc::clone(&self.inner);
        Ok(async move {
            let id = ack.await.map(|ack| ack.sequence).map_err(refused)?;
            inner.expect_delivery(id);
            Ok(id)
        })
    }

    /// Up to `limit` messages of `of` with ids below `before` (the latest without it),
    /// oldest first: the ids come from this node's index, the messages from its cache
    /// or one direct get each, so a page costs the same however long the history is.
    /// The index holds what this node has received, so a page never shows a message
    /// before it was delivered here.
    pub async fn history(
        &self,
        of: &HistoryOf,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, ClusterError> {
        let (ids, mut found) = {
            let index = lock(&self.inner.index);
            let ids = index.page(of, before, limit);
            let found: HashMap<u64, ChatMessage> = ids
                .iter()
                .filter_map(|id| index.cached(*id).map(|m| (*id, m.clone())))
                .collect();
            (ids, found)
        };
        let missing: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| !found.contains_key(id))
            .collect();
        if !missing.is_empty() {
            self.ensure_available()?;
            let fetched: Vec<Option<ChatMessage>> = futures_util::stream::iter(missing)
                .map(|id| self.fetch(id))
                .buffered(PAGE_FETCHES)
                .try_collect()
                .await?;
            for message in fetched.into_iter().flatten() {
                found.insert(message.id, message);
            }
        }
        Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
    }

    /// The stored message `id` (`None` if it is gone or unreadable).
    async fn fetch(&self, id: u64) -> Result<Option<ChatMessage>, ClusterError> {
        let stream = &self.inner.messages;
        let got = if stream.cached_info().config.allow_direct {
            stream.direct_get(id).await.map_err(|err| {
                if err.kind() == stream::DirectGetErrorKind::NotFound {
                    None
                } else {
                    Some(unavailable(err))
                }
            })
        } else {
            stream.get_raw_message(id).await.map_err(|err| {
                if err.kind() == stream::RawMessageErrorKind::NoMessageFound {
                    None
                } else {
                    Some(unavailable(err))
                }
            })
        };
        let message = match got {
            Ok(message) => message,
            Err(None) => return Ok(None),
            Err(Some(err)) => return Err(err),
        };
        match serde_json::from_slice::<StoredBody>(&message.payload) {
            Ok(body) => Ok(Some(body.with_id(id))),
            Err(err) => {
                log::warn!("message {id} in the stream is unreadable: {err}");
                Ok(None)
            }
        }
    }

    /// The highest message id this node has received.
    pub fn last_message_id(&self) -> u64 {
        lock(&self.inner.index).last()
    }
}
