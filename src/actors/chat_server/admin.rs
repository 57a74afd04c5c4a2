//! What the admin console asks of `ChatServer`: pausing greeting, status, the users,
//! forgetting identities, kicking a user, and speaking as `server`.

use std::net::SocketAddr;
use std::time::Duration;

use actix::prelude::*;

use super::ChatServer;
use crate::names::{name_key, SERVER_NAME};
use crate::protocol::{ServerMessage, LOBBY};
use crate::server::identity::IdentityChange;
use crate::server::rooms::RoomChange;
use crate::server::store::StoreError;
use crate::text::plural;

/// Stop greeting new connections: they wait, ungreeted, until [`ResumeGreeting`].
#[derive(Message)]
#[rtype(result = "()")]
pub struct PauseGreeting;

impl Handler<PauseGreeting> for ChatServer {
    type Result = ();

    fn handle(&mut self, _: PauseGreeting, _: &mut Self::Context) {
        self.paused = true;
        log::info!("greeting paused by the admin");
    }
}

/// Greet the waiting connections, and new ones again; answers how many were waiting.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct ResumeGreeting;

impl Handler<ResumeGreeting> for ChatServer {
    type Result = usize;

    fn handle(&mut self, _: ResumeGreeting, _: &mut Self::Context) -> usize {
        self.paused = false;
        let waiting = self.connections.take_waiting();
        log::info!(
            "greeting resumed by the admin; {} greeted",
            plural(waiting.len(), "waiting connection", "waiting connections")
        );
        for id in &waiting {
            self.greet(*id);
        }
        waiting.len()
    }
}

/// The figures `status` prints.
#[derive(Debug, Clone, MessageResponse)]
pub struct StatusReport {
    pub address: SocketAddr,
    pub paused: bool,
    pub users_online: usize,
    pub connections: usize,
    pub waiting: usize,
    pub accounts: usize,
    pub uptime: Duration,
    /// The highest message id given so far.
    pub last_message_id: u64,
}

/// Ask for a [`StatusReport`].
#[derive(Message)]
#[rtype(result = "StatusReport")]
pub struct Status;

impl Handler<Status> for ChatServer {
    type Result = StatusReport;

    fn handle(&mut self, _: Status, _: &mut Self::Context) -> StatusReport {
        StatusReport {
            address: self.address,
            paused: self.paused,
            users_online: self.presence.len(),
            connections: self.connections.len(),
            waiting: self.connections.waiting(),
            accounts: self.identities.users.len(),
            uptime: self.started_at.elapsed(),
            last_message_id: self.store.last_id(),
        }
    }
}

/// The online users' names, sorted ignoring case.
#[derive(Message)]
#[rtype(result = "Vec<String>")]
pub struct ListUsers;

impl Handler<ListUsers> for ChatServer {
    type Result = Vec<String>;

    fn handle(&mut self, _: ListUsers, _: &mut Self::Context) -> Vec<String> {
        self.presence.names()
    }
}

/// Forget every account, IP identification and token, durably.
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct ClearIdentities;

impl Handler<ClearIdentities> for ChatServer {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, _: ClearIdentities, _: &mut Self::Context) -> Self::Result {
        for peer in self.connections.iter_mut() {
            peer.token_digest = None;
        }
        log::warn!("identities cleared by the admin");
        self.identities.apply(&IdentityChange::Clear);
        // Memberships go with the accounts (rooms and history stay), and so do their
        // direct messages: a name registered again starts afresh.
        self.rooms.apply(&RoomChange::ClearMembers);
        drop(self.store.record_rooms(vec![RoomChange::ClearMembers]));
        self.direct_history.clear();
        let rings: Vec<_> = self.room_rings.values().map(|r| r.id()).collect();
        for (_, peer) in self.connections.iter() {
            for ring in &rings {
                peer.handle.outbox.unsubscribe(*ring);
            }
        }
        let saved = self
            .store
            .record_identities(vec![IdentityChange::Clear], true);
        Box::pin(async move {
            match saved {
                Some(saved) => saved.await,
                None => Ok(()),
            }
        })
    }
}

/// Close every connection of a user after telling them; answers how many.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Kick {
    pub name: String,
}

impl Handler<Kick> for ChatServer {
    type Result = usize;

    fn handle(&mut self, msg: Kick, _: &mut Self::Context) -> usize {
        let key = name_key(&msg.name);
        let Some(frame) = super::encode(&ServerMessage::Kicked {
            message: "you were removed by the server's admin".to_string(),
        }) else {
            return 0;
        };
        let mut kicked = 0;
        for (_, peer) in self.connections.of_user(&key) {
            peer.handle.outbox.send(frame.clone());
            peer.handle.outbox.close();
            kicked += 1;
        }
        if kicked > 0 {
            log::warn!(
                "{} kicked by the admin ({})",
                msg.name,
                plural(kicked, "connection", "connections")
            );
        }
        kicked
    }
}

/// A message from `server` to everyone; answers its id, or why it was not sent.
#[derive(Message)]
#[rtype(result = "Result<u64, StoreError>")]
pub struct PostAsServer {
    pub text: String,
}

impl Handler<PostAsServer> for ChatServer {
    type Result = Result<u64, StoreError>;

    fn handle(&mut self, msg: PostAsServer, _: &mut Self::Context) -> Self::Result {
        log::info!("the admin said something");
        self.post_to_room(SERVER_NAME.to_string(), LOBBY, msg.text)
    }
}
