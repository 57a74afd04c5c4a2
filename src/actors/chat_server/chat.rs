//! Chat: messages to a room or to a user, and pages of older ones.
//!
//! A message is given its id by the [`Store`](crate::server::store::Store), serialised
//! once, kept for the next logins and published on its room's ring, or queued for every
//! connection of the two users of a direct message; the sender's own copy is its
//! acknowledgement. `--msg-rate` holds per account here (each session holds it per
//! connection). Pages are read from the whole history on disk, through its index.

use std::time::Instant;

use actix::prelude::*;

use super::{history_frame, ChatServer, Heading, History, Lifecycle};
use crate::codec::payload_of;
use crate::log_noise;
use crate::protocol::{ErrorCode, DEFAULT_PAGE, LOBBY};
use crate::server::logging::Noise;
use crate::server::outbound::SessionId;
use crate::server::store::history_index::Conversation;
use crate::server::store::{
    Answer, Delivery, Draft, PageRequest, StoreError, StoreHealth, Submitted, Target,
};

/// A chat message from an authenticated connection (its text already checked; at most
/// one of `room` and `to`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct PostMessage {
    pub id: SessionId,
    pub text: String,
    pub room: Option<String>,
    pub to: Option<String>,
}

impl Handler<PostMessage> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: PostMessage, ctx: &mut Self::Context) {
        if self.lifecycle != Lifecycle::Serving || self.refuse_if_unavailable(msg.id) {
            return;
        }
        let Some(peer) = self.connections.get(msg.id) else {
            return;
        };
        let (ip, Some(key)) = (peer.ip, peer.user.clone()) else {
            return;
        };
        let Some(name) = self.presence.name_of(&key).map(str::to_string) else {
            return;
        };
        let target = match (msg.room, msg.to) {
            (_, Some(to)) => match self.identities.find(&to) {
                Some((to_key, account)) => Target::Direct {
                    to: account.name.clone(),
                    to_key: to_key.clone(),
                    from_key: key.clone(),
                },
                None => {
                    self.send_error(msg.id, ErrorCode::UnknownUser, "no account has that name");
                    return;
                }
            },
            (Some(room), None) => match self.room_for_member(&room, &key) {
                Ok(room_key) => self.room_target(&room_key),
                Err(refusal) => {
                    self.refuse_room(msg.id, &refusal);
                    return;
                }
            },
            (None, None) => self.room_target(LOBBY),
        };
        if self.store_health == StoreHealth::NotRecording {
            self.send_error(
                msg.id,
                ErrorCode::Internal,
                "the server cannot record messages right now; not sent, try again later",
            );
            return;
        }
        // In a cluster each node where the account is online takes its share.
        let share = u32::try_from(self.store.nodes_with(&key)).unwrap_or(u32::MAX);
        if !self.limits.messages.take_n(&key, share, Instant::now()) {
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
        let id = msg.id;
        match self.post(name, msg.text, target) {
            Ok(Answer::Now(_)) => {}
            // Delivered when it comes back from the store; only a failure is answered
            // here.
            Ok(Answer::Later(storing)) => {
                fut::wrap_future::<_, Self>(storing)
                    .map(move |stored, act, _| {
                        if let Err(err) = stored {
                            act.message_not_recorded(id, &err);
                        }
                    })
                    .spawn(ctx);
            }
            Err(err) => self.message_not_recorded(id, &err),
        }
    }
}

/// The id of a posted message, once it is known.
pub(super) async fn posted_id(posted: Result<Answer<u64>, StoreError>) -> Result<u64, StoreError> {
    match posted? {
        Answer::Now(id) => Ok(id),
        Answer::Later(storing) => storing.await,
    }
}

impl ChatServer {
    /// Where a message to the room `key` goes.
    fn room_target(&self, key: &str) -> Target {
        Target::Room {
            name: self.rooms.name_of(key).unwrap_or(key).to_string(),
            key: key.to_string(),
        }
    }

    /// A message the store did not take, answered to its sender.
    fn message_not_recorded(&self, id: SessionId, err: &StoreError) {
        match err {
            StoreError::Unavailable(_) => {
                self.send_error(
                    id,
                    ErrorCode::Unavailable,
                    "the server cannot reach its shared state right now; not sent, try again later",
                );
                return;
            }
            StoreError::Unconfirmed(_) => {
                self.send_error(
                    id,
                    ErrorCode::Unavailable,
                    "the shared state did not confirm this message in time; it may still be \
                     delivered (you will see it if it is)",
                );
                return;
            }
            _ => {}
        }
        log::error!("a message from session {id} was not recorded: {err}");
        self.send_error(
            id,
            ErrorCode::Internal,
            "the server cannot record messages right now; not sent, try again later",
        );
    }

    /// Records a message from `from` in the room `key` and delivers it.
    pub(super) fn post_to_room(
        &mut self,
        from: String,
        key: &str,
        text: String,
    ) -> Result<Answer<u64>, StoreError> {
        let target = self.room_target(key);
        self.post(from, text, target)
    }

    /// Records a message and delivers it (now, or when it comes back from a store
    /// shared between nodes): its id, or why it was refused.
    fn post(
        &mut self,
        from: String,
        text: String,
        target: Target,
    ) -> Result<Answer<u64>, StoreError> {
        match self.store.submit(Draft {
            from,
            text,
            target: target.clone(),
        }) {
            Submitted::Delivered(delivery) => {
                let id = delivery.id;
                self.deliver(delivery, &target);
                Ok(Answer::Now(id))
            }
            Submitted::Pending(storing) => Ok(Answer::Later(storing)),
            Submitted::Refused(err) => Err(err),
        }
    }

    /// Delivers a recorded message to whoever it is for, and keeps it for the next
    /// logins.
    pub(super) fn deliver(&mut self, delivery: Delivery, target: &Target) {
        let payload = payload_of(&delivery.frame);
        match target {
            Target::Room { key, name } => {
                if !self.room_history.contains_key(key) {
                    let limit = self.settings.history;
                    let heading = Heading::Room(name.clone());
                    let history = History::new(heading, limit, Default::default());
                    self.room_history.insert(key.clone(), history);
                }
                self.room_history(key).record(payload);
                if key == LOBBY {
                    self.ring.publish(delivery.frame, None);
                } else if let Some(ring) = self.room_rings.get(key) {
                    ring.publish(delivery.frame, None);
                }
            }
            Target::Direct {
                to_key, from_key, ..
            } => {
                let mut users = vec![from_key.as_str()];
                if to_key != from_key {
                    users.push(to_key);
                }
                for user in users {
                    self.direct_history(user).record(payload.clone());
                    for (_, peer) in self.connections.of_user(user) {
                        peer.handle.outbox.send(delivery.frame.clone());
                    }
                }
            }
        }
    }

    /// The recent direct messages of an account, made on first use.
    pub(super) fn direct_history(&mut self, user: &str) -> &mut History {
        let limit = self.settings.history;
        self.direct_history
            .entry(user.to_string())
            .or_insert_with(|| History::new(Heading::Direct, limit, Default::default()))
    }
}

impl Handler<StoreHealth> for ChatServer {
    type Result = ();

    fn handle(&mut self, health: StoreHealth, _: &mut Self::Context) {
        self.store_health = health;
        if health == StoreHealth::NotRecording {
            log::error!("history cannot be written: refusing chat messages until it can");
        }
    }
}

/// A page of older messages of a room (`room`) or of a conversation (`with`), answered
/// to the asking connection (the request already checked: one of the two at most,
/// `limit` in range, `before` positive).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Page {
    pub id: SessionId,
    pub room: Option<String>,
    pub with: Option<String>,
    pub before: Option<u64>,
    pub limit: Option<u64>,
}

impl Handler<Page> for ChatServer {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Page, _: &mut Self::Context) -> Self::Result {
        let id = msg.id;
        let Some(user) = self.user_of(id) else {
            return Box::pin(fut::ready(()));
        };
        if self.refuse_if_unavailable(id) {
            return Box::pin(fut::ready(()));
        }
        let limit = msg.limit.unwrap_or(DEFAULT_PAGE) as usize;
        let (conversation, floor, heading) = match (msg.room, msg.with) {
            (_, Some(with)) => {
                let Some((other_key, other)) = self.identities.find(&with) else {
                    self.send_error(id, ErrorCode::UnknownUser, "no account has that name");
                    return Box::pin(fut::ready(()));
                };
                let mine = self
                    .identities
                    .account_by_key(&user)
                    .map_or(0, |a| a.since_id);
                (
                    Conversation::direct(&user, other_key),
                    mine.max(other.since_id),
                    Heading::With(other.name.clone()),
                )
            }
            (room, None) => {
                let room = room.unwrap_or_else(|| LOBBY.to_string());
                match self.room_for_member(&room, &user) {
                    Ok(key) => {
                        let name = self.rooms.name_of(&key).unwrap_or(&key).to_string();
                        (Conversation::Room(key), 0, Heading::Room(name))
                    }
                    Err(refusal) => {
                        self.refuse_room(id, &refusal);
                        return Box::pin(fut::ready(()));
                    }
                }
            }
        };
        let page = self.store.page(PageRequest {
            conversation,
            before: msg.before,
            floor,
            limit,
        });
        Box::pin(
            fut::wrap_future(page).map(move |page, act: &mut Self, _| match page {
                Ok(payloads) => {
                    let frame = history_frame(&heading, payloads.iter());
                    if let Some(peer) = act.connections.get(id) {
                        peer.handle.outbox.send(frame);
                    }
                }
                Err(err) => act.send_store_error(id, &err, "history could not be read right now"),
            }),
        )
    }
}
