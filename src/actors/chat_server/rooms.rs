//! Rooms: `join`, `part`, `rooms`, `who` in a room, and the rings that carry each
//! room's messages.
//!
//! Membership belongs to the account and is on disk (`rooms.json`) before it is
//! answered. Every connection of a member takes the room's ring (created while the room
//! has a member online), so a room message costs nothing per online user who is not a
//! member. `lobby` is the lobby's ring, which every authenticated connection takes.

use actix::prelude::*;

use super::{ChatServer, History};
use crate::names::{self, name_key};
use crate::protocol::{ErrorCode, RoomInfo, ServerMessage, LOBBY};
use crate::server::outbound::{Broadcaster, SessionId, Skip, ROOM_RING_CAPACITY};
use crate::server::rooms::{Membership, RoomChange};
use crate::server::store::{Joined, RoomJoin, StoreError};

/// Why a room request cannot be answered; the `error` frame it becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomRefusal {
    BadName,
    Lobby,
    Unknown,
    NotMember,
}

impl RoomRefusal {
    /// The error code and message sent back.
    pub fn error(&self) -> (ErrorCode, String) {
        match self {
            RoomRefusal::BadName => (
                ErrorCode::BadRequest,
                format!(
                    "a room name follows the rules of names: {}",
                    names::name_rule()
                ),
            ),
            RoomRefusal::Lobby => (
                ErrorCode::BadRequest,
                "everyone is in lobby; it cannot be left".to_string(),
            ),
            RoomRefusal::Unknown => (ErrorCode::UnknownRoom, "there is no such room".to_string()),
            RoomRefusal::NotMember => (
                ErrorCode::NotMember,
                "you are not a member of that room (join it first)".to_string(),
            ),
        }
    }
}

/// Joins and parts of one user in one room that the store is still carrying out. A
/// store shared between nodes may tell of the change (as an event) before it answers
/// the request: the event then only updates the view, and the answer announces it.
#[derive(Debug, Default)]
pub struct RoomOp {
    /// Requests in flight.
    in_flight: usize,
    /// Whether an event applied the change meanwhile.
    applied: bool,
}

impl ChatServer {
    /// A join or part of `user` in `room` goes to the store.
    fn room_op_started(&mut self, room: &str, user: &str) {
        self.room_ops
            .entry((room.to_string(), user.to_string()))
            .or_default()
            .in_flight += 1;
    }

    /// One came back: whether an event applied a change meanwhile (told once).
    fn room_op_finished(&mut self, room: &str, user: &str) -> bool {
        let key = (room.to_string(), user.to_string());
        let Some(op) = self.room_ops.get_mut(&key) else {
            return false;
        };
        op.in_flight -= 1;
        let applied = std::mem::take(&mut op.applied);
        if op.in_flight == 0 {
            self.room_ops.remove(&key);
        }
        applied
    }

    /// An event changes the membership of `user` in `room`: whether a request of this
    /// node is in flight for it (the event then only updates the view).
    pub(super) fn room_op_pending(&mut self, room: &str, user: &str) -> bool {
        match self.room_ops.get_mut(&(room.to_string(), user.to_string())) {
            Some(op) => {
                op.applied = true;
                true
            }
            None => false,
        }
    }

    /// The user (name key) a connection is authenticated as.
    pub(super) fn user_of(&self, id: SessionId) -> Option<String> {
        self.connections.get(id).and_then(|p| p.user.clone())
    }

    /// The key of a room `user` may use: it exists (checked first) and `user` is a member.
    pub(super) fn room_for_member(&self, room: &str, user: &str) -> Result<String, RoomRefusal> {
        let key = self.rooms.find(room).ok_or(RoomRefusal::Unknown)?;
        match self.rooms.membership(&key, user) {
            Membership::Member => Ok(key),
            Membership::NotMember => Err(RoomRefusal::NotMember),
            Membership::Unknown => Err(RoomRefusal::Unknown),
        }
    }

    pub(super) fn refuse_room(&self, id: SessionId, refusal: &RoomRefusal) {
        let (code, message) = refusal.error();
        self.send_error(id, code, &message);
    }

    /// The recent messages of a room, made on first use.
    pub(super) fn room_history(&mut self, key: &str) -> &mut History {
        let name = self.rooms.name_of(key).unwrap_or(key).to_string();
        let limit = self.settings.history;
        self.room_history
            .entry(key.to_string())
            .or_insert_with(|| History::new(super::Heading::Room(name), limit, Default::default()))
    }

    /// The ring of a room (not `lobby`), made while the room has a member online.
    fn room_ring(&mut self, key: &str) -> &Broadcaster {
        self.room_rings
            .entry(key.to_string())
            .or_insert_with(|| Broadcaster::new(ROOM_RING_CAPACITY))
    }

    /// Subscribes connection `id` of `user` to the room `key`'s ring.
    pub(super) fn subscribe_to_room(&mut self, id: SessionId, key: &str, user: &str) {
        if key == LOBBY {
            return;
        }
        let subscription = self.room_ring(key).subscribe(Some(user.into()));
        if let Some(peer) = self.connections.get(id) {
            peer.handle.outbox.subscribe(subscription);
        }
    }

    /// The display names of a room's members, sorted by their keys.
    fn member_names(&self, key: &str) -> Vec<String> {
        if key == LOBBY {
            return self
                .identities
                .users
                .values()
                .map(|a| a.name.clone())
                .collect();
        }
        self.rooms
            .members(key)
            .filter_map(|user| self.identities.account_by_key(user))
            .map(|a| a.name.clone())
            .collect()
    }

    /// The names of a room's members online now (here or on another node), sorted by
    /// key.
    fn members_online(&self, key: &str) -> Vec<String> {
        if key == LOBBY {
            return self.online_names();
        }
        let elsewhere = self.store.online_elsewhere();
        if elsewhere.is_empty() {
            return self
                .rooms
                .members(key)
                .filter_map(|user| self.presence.name_of(user).map(str::to_string))
                .collect();
        }
        let online = self.online_by_key();
        self.rooms
            .members(key)
            .filter_map(|user| online.get(user).cloned())
            .collect()
    }

    /// Answers a `join` once the membership is on disk: the `room` frame to every
    /// connection of the user, the room's history to the one that asked (if it is
    /// here: a join made on another node has none), the room's ring to all of them,
    /// and `member_joined` to the other members.
    pub(super) fn answer_join(
        &mut self,
        id: Option<SessionId>,
        key: &str,
        user: &str,
        newly: bool,
    ) {
        let name = self.rooms.name_of(key).unwrap_or(key).to_string();
        let frame = super::encode(&ServerMessage::Room {
            room: name.clone(),
            members: self.member_names(key),
        });
        if newly && key != LOBBY {
            if let Some(joiner) = self.identities.account_by_key(user).map(|a| a.name.clone()) {
                if let Some(event) = super::encode(&ServerMessage::MemberJoined {
                    room: name,
                    name: joiner,
                }) {
                    self.room_ring(key)
                        .publish(event, Some(Skip::User(user.into())));
                }
            }
        }
        let history = self.room_history(key).frame();
        let sessions: Vec<SessionId> = self.connections.of_user(user).map(|(s, _)| s).collect();
        for session in sessions {
            let Some(peer) = self.connections.get(session) else {
                continue;
            };
            if let Some(frame) = &frame {
                peer.handle.outbox.send(frame.clone());
            }
            if Some(session) == id {
                peer.handle.outbox.send(history.clone());
            }
            // Same step as the history snapshot: nothing falls between them.
            if newly {
                self.subscribe_to_room(session, key, user);
            }
        }
    }

    /// Answers a `part` once it is on disk: `parted` to every connection of the user,
    /// which leave the room's ring, and `member_left` to the other members.
    pub(super) fn answer_part(&mut self, key: &str, user: &str) {
        let name = self.rooms.name_of(key).unwrap_or(key).to_string();
        let parted = super::encode(&ServerMessage::Parted { room: name.clone() });
        let ring = self.room_rings.get(key).map(Broadcaster::id);
        for (_, peer) in self.connections.of_user(user) {
            if let Some(frame) = &parted {
                peer.handle.outbox.send(frame.clone());
            }
            if let Some(ring) = ring {
                peer.handle.outbox.unsubscribe(ring);
            }
        }
        let leaver = self.identities.account_by_key(user).map(|a| a.name.clone());
        if let (Some(ring), Some(leaver)) = (self.room_rings.get(key), leaver) {
            if let Some(event) = super::encode(&ServerMessage::MemberLeft {
                room: name,
                name: leaver,
            }) {
                ring.publish(event, Some(Skip::User(user.into())));
            }
        }
    }

    /// Forgets the rings of rooms nobody online takes any more.
    pub(super) fn prune_room_rings(&mut self) {
        self.room_rings.retain(|_, ring| ring.subscribers() > 0);
    }
}

/// Become a member of a room, creating it if it does not exist.
#[derive(Message)]
#[rtype(result = "()")]
pub struct JoinRoom {
    pub id: SessionId,
    pub room: String,
}

impl Handler<JoinRoom> for ChatServer {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: JoinRoom, _: &mut Self::Context) -> Self::Result {
        let id = msg.id;
        let Some(user) = self.user_of(id) else {
            return Box::pin(fut::ready(()));
        };
        if self.refuse_if_unavailable(id) {
            return Box::pin(fut::ready(()));
        }
        if names::check_name(&msg.room).is_err() {
            self.refuse_room(id, &RoomRefusal::BadName);
            return Box::pin(fut::ready(()));
        }
        let key = name_key(&msg.room);
        if key == LOBBY || self.rooms.membership(&key, &user) == Membership::Member {
            self.answer_join(Some(id), &key, &user, false);
            return Box::pin(fut::ready(()));
        }
        let Some(user_name) = self
            .identities
            .account_by_key(&user)
            .map(|a| a.name.clone())
        else {
            return Box::pin(fut::ready(()));
        };
        self.room_op_started(&key, &user);
        let joining = self.store.join_room(RoomJoin {
            name: msg.room,
            key: key.clone(),
            user: user.clone(),
            user_name,
            create: self.rooms.find(&key).is_none(),
        });
        Box::pin(fut::wrap_future(joining).map(
            move |joined: Result<Joined, StoreError>, act: &mut Self, _| match joined {
                Ok(joined) => {
                    // Joined meanwhile on another connection: announced once. (A
                    // member by this join's own event is not one "meanwhile".)
                    let by_event = act.room_op_finished(&key, &user);
                    let was_member =
                        act.rooms.membership(&key, &user) == Membership::Member && !by_event;
                    for change in &joined.changes {
                        act.rooms.apply(change);
                    }
                    log::info!("{user} joined room {key}");
                    act.answer_join(Some(id), &key, &user, joined.newly && !was_member);
                }
                Err(err) => {
                    act.room_op_finished(&key, &user);
                    log::warn!("{user} joining room {key} failed: {err}");
                    act.send_store_error(id, &err, "the room could not be joined");
                }
            },
        ))
    }
}

/// Stop being a member of a room.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PartRoom {
    pub id: SessionId,
    pub room: String,
}

impl Handler<PartRoom> for ChatServer {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: PartRoom, _: &mut Self::Context) -> Self::Result {
        let id = msg.id;
        let Some(user) = self.user_of(id) else {
            return Box::pin(fut::ready(()));
        };
        if self.refuse_if_unavailable(id) {
            return Box::pin(fut::ready(()));
        }
        let refusal = if name_key(&msg.room) == LOBBY {
            Err(RoomRefusal::Lobby)
        } else {
            self.room_for_member(&msg.room, &user)
        };
        let key = match refusal {
            Ok(key) => key,
            Err(refusal) => {
                self.refuse_room(id, &refusal);
                return Box::pin(fut::ready(()));
            }
        };
        self.room_op_started(&key, &user);
        let parting = self.store.part_room(&key, &user);
        Box::pin(fut::wrap_future(parting).map(
            move |parted: Result<bool, StoreError>, act: &mut Self, _| {
                let by_event = act.room_op_finished(&key, &user);
                match parted {
                    Err(err @ StoreError::Unavailable(_)) => {
                        act.send_store_error(id, &err, "the room could not be left");
                        return;
                    }
                    // Not on disk yet: the next room change writes it. The user asked
                    // to leave, and leaves.
                    Err(err) => log::error!("{user} leaving room {key} was not saved yet: {err}"),
                    Ok(_) => {}
                }
                // Parted meanwhile on another connection: answered, announced once.
                // (Not a member by this part's own event is no such case.)
                let was_member =
                    act.rooms.membership(&key, &user) == Membership::Member || by_event;
                act.rooms.apply(&RoomChange::Part {
                    room: key.clone(),
                    user: user.clone(),
                });
                log::info!("{user} left room {key}");
                if was_member {
                    act.answer_part(&key, &user);
                } else if let Some(frame) = super::encode(&ServerMessage::Parted {
                    room: act.rooms.name_of(&key).unwrap_or(&key).to_string(),
                }) {
                    if let Some(peer) = act.connections.get(id) {
                        peer.handle.outbox.send(frame);
                    }
                }
            },
        ))
    }
}

/// List every room, answered to the asking connection.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ListRooms {
    pub id: SessionId,
}

impl Handler<ListRooms> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: ListRooms, _: &mut Self::Context) {
        let Some(user) = self.user_of(msg.id) else {
            return;
        };
        if self.refuse_if_unavailable(msg.id) {
            return;
        }
        let mut rooms = vec![(
            LOBBY.to_string(),
            RoomInfo {
                room: LOBBY.to_string(),
                members: self.identities.users.len(),
                member: true,
            },
        )];
        for (key, room) in &self.rooms.rooms {
            rooms.push((
                key.clone(),
                RoomInfo {
                    room: room.name.clone(),
                    members: room.members.len(),
                    member: room.members.contains(&user),
                },
            ));
        }
        rooms.sort_by(|a, b| a.0.cmp(&b.0));
        let rooms = rooms.into_iter().map(|(_, info)| info).collect();
        self.send_to(msg.id, &ServerMessage::Rooms { rooms });
    }
}

/// Who is online (in a room, with `room`), answered to the asking connection.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Who {
    pub id: SessionId,
    pub room: Option<String>,
}

impl Handler<Who> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: Who, _: &mut Self::Context) {
        let Some(room) = msg.room else {
            let users = self.online_names();
            self.send_to(msg.id, &ServerMessage::Who { room: None, users });
            return;
        };
        let Some(user) = self.user_of(msg.id) else {
            return;
        };
        match self.room_for_member(&room, &user) {
            Ok(key) => {
                let users = self.members_online(&key);
                let room = self.rooms.name_of(&key).unwrap_or(&key).to_string();
                self.send_to(
                    msg.id,
                    &ServerMessage::Who {
                        room: Some(room),
                        users,
                    },
                );
            }
            Err(refusal) => self.refuse_room(msg.id, &refusal),
        }
    }
}

/// Post a message as `server` in a room (console `say-in`); answers its id.
#[derive(Message)]
#[rtype(result = "Result<u64, AnnounceError>")]
pub struct PostInRoom {
    pub room: String,
    pub text: String,
}

/// Why the console's `say-in` did not post.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error("there is no room called {0}")]
    UnknownRoom(String),
    #[error("{0}")]
    NotRecorded(#[from] StoreError),
}

impl Handler<PostInRoom> for ChatServer {
    type Result = ResponseFuture<Result<u64, AnnounceError>>;

    fn handle(&mut self, msg: PostInRoom, _: &mut Self::Context) -> Self::Result {
        let Some(key) = self.rooms.find(&msg.room) else {
            let err = AnnounceError::UnknownRoom(crate::text::quote(&msg.room));
            return Box::pin(async move { Err(err) });
        };
        log::info!("the admin said something in room {key}");
        let posted = self.post_to_room(names::SERVER_NAME.to_string(), &key, msg.text);
        Box::pin(async move { Ok(super::chat::posted_id(posted).await?) })
    }
}

/// The rooms, for the console: name, member count and the members online.
#[derive(Message)]
#[rtype(result = "Vec<RoomSummary>")]
pub struct RoomsSummary;

/// One line of the console's `rooms`.
#[derive(Debug, Clone)]
pub struct RoomSummary {
    pub name: String,
    pub members: usize,
    pub online: Vec<String>,
}

impl Handler<RoomsSummary> for ChatServer {
    type Result = Vec<RoomSummary>;

    fn handle(&mut self, _: RoomsSummary, _: &mut Self::Context) -> Vec<RoomSummary> {
        let mut keys: Vec<String> = self.rooms.rooms.keys().cloned().collect();
        keys.push(LOBBY.to_string());
        keys.sort();
        keys.iter()
            .map(|key| RoomSummary {
                name: self.rooms.name_of(key).unwrap_or(key).to_string(),
                members: if key == LOBBY {
                    self.identities.users.len()
                } else {
                    self.rooms.members(key).count()
                },
                online: self.members_online(key),
            })
            .collect()
    }
}
