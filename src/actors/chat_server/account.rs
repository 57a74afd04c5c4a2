//! What a user does to their own account: change its password, delete it.
//!
//! Both need the password, checked on the hashing pool like a login and counted like a
//! guess when wrong; both are on disk before they are answered, so a crash right after
//! `password_changed` or `account_deleted` never brings back the old password or the
//! deleted account. The account's other connections are told `kicked` and closed.

use std::net::IpAddr;
use std::time::Instant;

use actix::prelude::*;
use futures_util::future::Either;

use super::{ChatServer, Lifecycle};
use crate::auth;
use crate::names::name_key;
use crate::protocol::{ErrorCode, ServerMessage};
use crate::server::identity::IdentityChange;
use crate::server::outbound::SessionId;
use crate::server::rooms::RoomChange;
use crate::server::store::{AccountDeletion, StoreError};
use crate::server::unix_ms;

/// Change the password of the connection's account: `old` must be right, `new` valid
/// (checked by the session already).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ChangePassword {
    pub id: SessionId,
    pub old: String,
    pub new: String,
}

/// Delete the connection's account; `password` must be right.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeleteAccount {
    pub id: SessionId,
    pub password: String,
}

/// The outcome of checking (and maybe hashing) off the actor thread.
enum Checked {
    Right(Option<String>),
    Wrong,
    Failed(String),
}

impl ChatServer {
    /// What a request that checks the account's password starts from: the account key,
    /// address and stored hash of the connection; `None` once the request has been
    /// answered (the store unreachable, or over a guess limit) or there is no account.
    fn account_to_check(&mut self, id: SessionId) -> Option<(String, IpAddr, String)> {
        if self.refuse_if_unavailable(id) {
            return None;
        }
        let (key, ip, stored) = self.own_account(id)?;
        if self.guesses_exceeded(id, ip, &key) {
            return None;
        }
        Some((key, ip, stored))
    }

    /// The account key, address and stored hash of an authenticated connection.
    fn own_account(&self, id: SessionId) -> Option<(String, IpAddr, String)> {
        let peer = self.connections.get(id)?;
        let key = peer.user.clone()?;
        let hash = self.identities.account_by_key(&key)?.password_hash.clone();
        Some((key, peer.ip, hash))
    }

    /// Refuses a password check that is over a guess limit; whether it did.
    fn guesses_exceeded(&mut self, id: SessionId, ip: IpAddr, key: &str) -> bool {
        let now = Instant::now();
        if self.limits.guesses_by_ip.exceeded(&ip, now)
            || self
                .limits
                .guesses_by_account
                .exceeded(&key.to_string(), now)
        {
            self.send_error(
                id,
                ErrorCode::RateLimited,
                "too many wrong passwords; wait a while",
            );
            return true;
        }
        false
    }

    /// Checks `password` against `stored` (and hashes `new` when given) on the hashing
    /// pool, counting a wrong password as a guess.
    fn check_password(
        &mut self,
        ip: IpAddr,
        key: String,
        password: String,
        stored: String,
        new: Option<String>,
    ) -> impl ActorFuture<Self, Output = Checked> {
        self.limits.guesses_by_ip.begin(&ip);
        self.limits.guesses_by_account.begin(&key);
        let rounds = self.settings.pbkdf2_rounds;
        let job = self.hashing.run(
            ip,
            move || -> Result<Option<Option<String>>, auth::HashError> {
                if !auth::verify_password(&password, &stored)? {
                    return Ok(None);
                }
                match new {
                    Some(new) => Ok(Some(Some(auth::hash_password(&new, rounds)?))),
                    None => Ok(Some(None)),
                }
            },
        );
        fut::wrap_future(job).map(move |result, act: &mut Self, _| {
            act.limits.guesses_by_ip.end(&ip);
            act.limits.guesses_by_account.end(&key);
            match result {
                Some(Ok(Some(hash))) => Checked::Right(hash),
                Some(Ok(None)) => {
                    let now = Instant::now();
                    act.limits.guesses_by_ip.record(&ip, now);
                    act.limits.guesses_by_account.record(&key, now);
                    Checked::Wrong
                }
                Some(Err(err)) => Checked::Failed(err.to_string()),
                None => Checked::Failed("the check did not run".to_string()),
            }
        })
    }

    /// Tells every connection of `key` but `keep` that it was removed, and closes them,
    /// here and on the other nodes.
    fn kick_other_connections(&mut self, key: &str, keep: SessionId, why: &str) {
        self.kick_local(key, why, Some(keep));
        self.store.broadcast_kick(key, why, Some(keep));
    }
}

impl Handler<ChangePassword> for ChatServer {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: ChangePassword, _: &mut Self::Context) -> Self::Result {
        let id = msg.id;
        let Some((key, ip, stored)) = self.account_to_check(id) else {
            return Box::pin(fut::ready(()));
        };
        let checked = self.check_password(ip, key.clone(), msg.old, stored.clone(), Some(msg.new));
        Box::pin(checked.then(move |checked, act: &mut Self, _| {
            let hash = match checked {
                Checked::Right(Some(hash)) => hash,
                Checked::Wrong => {
                    act.send_error(id, ErrorCode::BadPassword, "wrong password");
                    return Either::Left(fut::ready(()));
                }
                Checked::Right(None) | Checked::Failed(_) => {
                    log::error!("a password change for {key} could not be checked");
                    act.send_error(id, ErrorCode::Internal, "the password could not be changed");
                    return Either::Left(fut::ready(()));
                }
            };
            // Changed meanwhile (another device, clear-ids): this change is stale.
            if act
                .identities
                .account_by_key(&key)
                .map(|a| &a.password_hash)
                != Some(&stored)
                || act.lifecycle != Lifecycle::Serving
            {
                act.send_error(id, ErrorCode::BadPassword, "the password changed meanwhile");
                return Either::Left(fut::ready(()));
            }
            // Every token of the account goes; this connection gets a new one.
            let mut changes: Vec<IdentityChange> = act
                .identities
                .tokens_of(&key)
                .into_iter()
                .map(|digest| IdentityChange::RevokeToken { digest })
                .collect();
            changes.push(IdentityChange::SetPassword {
                key: key.clone(),
                password_hash: hash,
            });
            let ttl_ms = act.settings.token_ttl.as_millis() as u64;
            let (token, digest, issued) = act.identities.new_token_for(&key, unix_ms(), ttl_ms);
            changes.extend(issued);
            for change in &changes {
                act.identities.apply(change);
            }
            let saved = act.store.record_identities(changes, true);
            Either::Right(
                fut::wrap_future(async move {
                    match saved {
                        Some(saved) => saved.await,
                        None => Ok(()),
                    }
                })
                .map(move |saved, act: &mut Self, _| {
                    if let Err(err) = saved {
                        match err {
                            StoreError::Conflict => act.send_error(
                                id,
                                ErrorCode::BadPassword,
                                "the password changed meanwhile",
                            ),
                            err => {
                                act.send_store_error(id, &err, "the password could not be changed")
                            }
                        }
                        return;
                    }
                    log::info!("session {id}: the password of {key} was changed");
                    if let Some(peer) = act.connections.get_mut(id) {
                        peer.token_digest = Some(digest);
                    }
                    act.send_to(id, &ServerMessage::PasswordChanged { token });
                    act.kick_other_connections(
                        &key,
                        id,
                        "the account's password was changed on another connection",
                    );
                }),
            )
        }))
    }
}

impl Handler<DeleteAccount> for ChatServer {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: DeleteAccount, _: &mut Self::Context) -> Self::Result {
        let id = msg.id;
        let Some((key, ip, stored)) = self.account_to_check(id) else {
            return Box::pin(fut::ready(()));
        };
        let checked = self.check_password(ip, key.clone(), msg.password, stored, None);
        Box::pin(checked.then(move |checked, act: &mut Self, _| {
            match checked {
                Checked::Right(_) => {}
                Checked::Wrong => {
                    act.send_error(id, ErrorCode::BadPassword, "wrong password");
                    return Either::Left(fut::ready(()));
                }
                Checked::Failed(err) => {
                    log::error!("deleting {key}: the password could not be checked: {err}");
                    act.send_error(id, ErrorCode::Internal, "the account could not be deleted");
                    return Either::Left(fut::ready(()));
                }
            }
            let Some(account) = act.identities.account_by_key(&key).cloned() else {
                return Either::Left(fut::ready(()));
            };
            let rooms = act.rooms.rooms_of(&key);
            let deletion = AccountDeletion {
                key: key.clone(),
                account: account.clone(),
                tokens: act.identities.tokens_of(&key),
                ips: act
                    .identities
                    .ips
                    .iter()
                    .filter(|(_, name)| name_key(name) == key)
                    .map(|(ip, _)| *ip)
                    .collect(),
                rooms: rooms.clone(),
            };
            act.identities
                .apply(&IdentityChange::RemoveAccount { key: key.clone() });
            act.rooms
                .apply(&RoomChange::RemoveUser { user: key.clone() });
            let direct = act.direct_history.remove(&key);
            let deleting = act.store.delete_account(deletion);
            Either::Right(
                fut::wrap_future(deleting).map(move |saved, act: &mut Self, _| {
                    if let Err(err) = saved {
                        // Undone here too (the store undid what it wrote), so that
                        // what the user is told holds.
                        act.identities
                            .apply(&IdentityChange::AddAccount { account });
                        for room in rooms {
                            act.rooms.apply(&RoomChange::Join {
                                room,
                                user: key.clone(),
                            });
                        }
                        if let Some(direct) = direct {
                            act.direct_history.insert(key.clone(), direct);
                        }
                        act.send_store_error(id, &err, "the account could not be deleted");
                        return;
                    }
                    log::info!("session {id}: account {key} deleted by its user");
                    act.kick_other_connections(&key, id, "the account was deleted");
                    if let Some(peer) = act.connections.get_mut(id) {
                        peer.token_digest = None;
                    }
                    act.send_to(id, &ServerMessage::AccountDeleted);
                    if let Some(peer) = act.connections.get(id) {
                        peer.handle.outbox.close();
                    }
                }),
            )
        }))
    }
}
