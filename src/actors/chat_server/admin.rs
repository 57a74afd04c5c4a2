//! What the admin console asks of `ChatServer`: pausing greeting, status, the users,
//! forgetting identities, kicking a user, and speaking as `server`.

use std::net::SocketAddr;
use std::time::Duration;

use actix::prelude::*;

use super::ChatServer;
use crate::names::{name_key, SERVER_NAME};
use crate::protocol::{ServerMessage, LOBBY};
use crate::server::identity::{Ban, IdentityChange};
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

/// Why a console `ban` or `unban` changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum BanError {
    #[error("no account is called {0}")]
    UnknownAccount(String),
    #[error("{0} is not banned")]
    NotBanned(String),
    #[error("{0} is already banned")]
    AlreadyBanned(String),
    #[error("banned in memory but not saved: {0}")]
    NotSaved(#[from] StoreError),
}

/// Ban an account: it can no longer authenticate, its tokens are revoked, its
/// connections are told `kicked` and closed. Answers the account's name as registered
/// and how many connections were closed.
#[derive(Message)]
#[rtype(result = "Result<(String, usize), BanError>")]
pub struct BanAccount {
    pub name: String,
    pub reason: String,
}

impl Handler<BanAccount> for ChatServer {
    type Result = ResponseFuture<Result<(String, usize), BanError>>;

    fn handle(&mut self, msg: BanAccount, _: &mut Self::Context) -> Self::Result {
        let shown = crate::text::quote(&msg.name);
        let Some((key, account)) = self.identities.find(&msg.name) else {
            return Box::pin(async move { Err(BanError::UnknownAccount(shown)) });
        };
        let (key, name) = (key.clone(), account.name.clone());
        if self.identities.ban_of(&key).is_some() {
            return Box::pin(async move { Err(BanError::AlreadyBanned(shown)) });
        }
        let revoked = self.identities.tokens_of(&key);
        let mut changes: Vec<IdentityChange> = revoked
            .iter()
            .map(|digest| IdentityChange::RevokeToken {
                digest: digest.clone(),
            })
            .collect();
        changes.push(IdentityChange::Ban {
            key: key.clone(),
            ban: Ban {
                name: name.clone(),
                reason: msg.reason.clone(),
                since_ms: crate::server::unix_ms(),
                revoked: revoked.into_iter().collect(),
            },
        });
        for change in &changes {
            self.identities.apply(change);
        }
        let saved = self.store.record_identities(changes, true);
        let frame = super::encode(&ServerMessage::Kicked {
            message: super::accounts::ban_sentence(&msg.reason),
        });
        let mut closed = 0;
        for (_, peer) in self.connections.of_user(&key) {
            if let Some(frame) = &frame {
                peer.handle.outbox.send(frame.clone());
            }
            peer.handle.outbox.close();
            closed += 1;
        }
        log::warn!(
            "{} banned by the admin ({}): {}",
            name,
            plural(closed, "connection closed", "connections closed"),
            crate::text::quote(&msg.reason)
        );
        Box::pin(async move {
            if let Some(saved) = saved {
                saved.await?;
            }
            Ok((name, closed))
        })
    }
}

/// Lift a ban.
#[derive(Message)]
#[rtype(result = "Result<(), BanError>")]
pub struct UnbanAccount {
    pub name: String,
}

impl Handler<UnbanAccount> for ChatServer {
    type Result = ResponseFuture<Result<(), BanError>>;

    fn handle(&mut self, msg: UnbanAccount, _: &mut Self::Context) -> Self::Result {
        let shown = crate::text::quote(&msg.name);
        let Some(key) = self.identities.find(&msg.name).map(|(k, _)| k.clone()) else {
            return Box::pin(async move { Err(BanError::UnknownAccount(shown)) });
        };
        if self.identities.ban_of(&key).is_none() {
            return Box::pin(async move { Err(BanError::NotBanned(shown)) });
        }
        let change = IdentityChange::Unban { key: key.clone() };
        self.identities.apply(&change);
        let saved = self.store.record_identities(vec![change], true);
        log::warn!("{key} unbanned by the admin");
        Box::pin(async move {
            if let Some(saved) = saved {
                saved.await?;
            }
            Ok(())
        })
    }
}

/// One line of the console's `bans`.
#[derive(Debug, Clone)]
pub struct BanSummary {
    pub name: String,
    pub reason: String,
    pub since_ms: u64,
}

/// The bans, sorted by name key.
#[derive(Message)]
#[rtype(result = "Vec<BanSummary>")]
pub struct ListBans;

impl Handler<ListBans> for ChatServer {
    type Result = Vec<BanSummary>;

    fn handle(&mut self, _: ListBans, _: &mut Self::Context) -> Vec<BanSummary> {
        self.identities
            .bans
            .values()
            .map(|ban| BanSummary {
                name: ban.name.clone(),
                reason: ban.reason.clone(),
                since_ms: ban.since_ms,
            })
            .collect()
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
