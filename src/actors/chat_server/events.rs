//! What the other nodes did, as a store shared between them tells it
//! ([`StoreEvent`]): messages to deliver (this node's own too, in the one order every
//! node delivers in), identity and room changes to apply to the view, with what they
//! mean for the connections here (a ban or a deleted account closes them, a
//! membership made elsewhere joins them to the room), `clear-ids`, who came and went,
//! kicks, and the store coming and going. A single server's store has no events, and
//! none of this runs.
//!
//! Changes this node made itself come back too: each is applied again (every change
//! sets or removes what it names, so that is harmless), and announced only when the
//! view did not have it yet.

use actix::prelude::*;

use super::accounts::ban_sentence;
use super::ChatServer;
use crate::protocol::ServerMessage;
use crate::server::identity::IdentityChange;
use crate::server::rooms::{Membership, RoomChange};
use crate::server::store::StoreEvent;

impl StreamHandler<StoreEvent> for ChatServer {
    fn handle(&mut self, event: StoreEvent, _: &mut Self::Context) {
        match event {
            StoreEvent::Message(delivery, target) => self.deliver(delivery, &target),
            StoreEvent::Identity(change) => self.identity_changed(change),
            StoreEvent::Room(change) => self.room_changed(change),
            StoreEvent::Cleared => {
                log::warn!("identities cleared on another node (or this one)");
                self.forget_identities();
            }
            StoreEvent::Online { key, name } => {
                // Back elsewhere while their `left` was held here: nobody here was
                // told they left, so nobody is told they came.
                let held = self.presence.settle_elsewhere(&key);
                if !held && self.presence.name_of(&key).is_none() {
                    self.broadcast_event(&ServerMessage::Joined { name }, None);
                }
            }
            StoreEvent::Offline { key, name } => {
                self.presence.settle_elsewhere(&key);
                // Connected here meanwhile: they did not leave.
                if self.presence.name_of(&key).is_none() {
                    self.broadcast_event(&ServerMessage::Left { name }, None);
                }
            }
            StoreEvent::Kick {
                key,
                message,
                except,
            } => {
                let kicked = self.kick_local(&key, &message, except);
                if kicked > 0 {
                    log::warn!("{key}: {kicked} connections closed at another node's request");
                }
            }
            StoreEvent::Available(true) => log::info!("shared state reachable again"),
            StoreEvent::Available(false) => {
                log::warn!("shared state unreachable: answering unavailable until it is back")
            }
        }
    }

    fn finished(&mut self, _: &mut Self::Context) {
        // The store stopped telling (it is shutting down): the server goes on.
        log::info!("no more events from the shared state");
    }
}

impl ChatServer {
    fn identity_changed(&mut self, change: IdentityChange) {
        match &change {
            IdentityChange::RemoveAccount { key } => {
                if self.identities.account_by_key(key).is_some() {
                    let key = key.clone();
                    self.identities.apply(&change);
                    self.kick_local(&key, "the account was deleted", None);
                    self.rooms
                        .apply(&RoomChange::RemoveUser { user: key.clone() });
                    self.direct_history.remove(&key);
                    log::info!("account {key} deleted on another node");
                }
            }
            IdentityChange::Ban { key, ban } => {
                let new = self.identities.ban_of(key).is_none();
                let (key, reason) = (key.clone(), ban.reason.clone());
                self.identities.apply(&change);
                if new {
                    let closed = self.kick_local(&key, &ban_sentence(&reason), None);
                    log::warn!("{key} banned on another node ({closed} connections closed here)");
                }
            }
            _ => self.identities.apply(&change),
        }
    }

    fn room_changed(&mut self, change: RoomChange) {
        match &change {
            RoomChange::Join { room, user } if self.room_op_pending(room, user) => {
                // This node's own join, answered when the store says it is done.
                self.rooms.apply(&change);
            }
            RoomChange::Part { room, user } if self.room_op_pending(room, user) => {
                self.rooms.apply(&change);
            }
            RoomChange::Join { room, user } => {
                let before = self.rooms.membership(room, user);
                self.rooms.apply(&change);
                let after = self.rooms.membership(room, user);
                if before != Membership::Member && after == Membership::Member {
                    let (room, user) = (room.clone(), user.clone());
                    // Joined on another node (or another connection's join, already
                    // answered): this node's connections of the user take the room,
                    // its members here hear of it.
                    self.answer_join(None, &room, &user, true);
                }
            }
            RoomChange::Part { room, user } => {
                let was = self.rooms.membership(room, user) == Membership::Member;
                let (room, user) = (room.clone(), user.clone());
                self.rooms.apply(&change);
                if was {
                    self.answer_part(&room, &user);
                }
            }
            _ => self.rooms.apply(&change),
        }
    }
}
