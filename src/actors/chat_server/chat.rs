//! Chat: a message from a user to everyone, and who is online.
//!
//! A message is given its id by the [`Store`](crate::server::store::Store), serialised
//! once, kept for the next logins and published on the ring; the sender's own copy is
//! its acknowledgement. `--msg-rate` holds per account here (each session holds it per
//! connection).

use std::time::Instant;

use actix::prelude::*;

use super::{ChatServer, Lifecycle};
use crate::log_noise;
use crate::protocol::{ErrorCode, ServerMessage};
use crate::server::logging::Noise;
use crate::server::outbound::SessionId;
use crate::server::store::{Draft, StoreError, StoreHealth, Submitted};

/// A chat message from an authenticated connection (its text already checked).
#[derive(Message)]
#[rtype(result = "()")]
pub struct PostMessage {
    pub id: SessionId,
    pub text: String,
}

impl Handler<PostMessage> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: PostMessage, _: &mut Self::Context) {
        if self.lifecycle != Lifecycle::Serving {
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
        if self.store_health == StoreHealth::NotRecording {
            self.send_error(
                msg.id,
                ErrorCode::Internal,
                "the server cannot record messages right now; not sent, try again later",
            );
            return;
        }
        if !self.limits.messages.take(&key, Instant::now()) {
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
        if let Err(err) = self.post(name, msg.text) {
            log::error!("a message from session {} was not recorded: {err}", msg.id);
            self.send_error(
                msg.id,
                ErrorCode::Internal,
                "the server cannot record messages right now; not sent, try again later",
            );
        }
    }
}

impl ChatServer {
    /// Records a message from `from` and delivers it; its id, or why it was refused.
    pub(super) fn post(&mut self, from: String, text: String) -> Result<u64, StoreError> {
        match self.store.submit(Draft { from, text }) {
            Submitted::Delivered(delivery) => {
                let id = delivery.id;
                self.deliver(delivery);
                Ok(id)
            }
            Submitted::Refused(err) => Err(err),
        }
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

/// Who is online, answered to the asking connection.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Who {
    pub id: SessionId,
}

impl Handler<Who> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: Who, _: &mut Self::Context) {
        let users = self.presence.names();
        self.send_to(msg.id, &ServerMessage::Who { room: None, users });
    }
}
