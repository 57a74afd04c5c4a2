//! Who a connection is: `resume`, `login` and `register`, and `logout`.
//!
//! A valid token always logs in; only wrong guesses (`bad_password`, `invalid_token`)
//! count against `--login-rate`, per address and per account. Password hashes are
//! computed on the [`HashingPool`](crate::server::hashing::HashingPool), never here, and
//! a new account's `auth_ok` waits until the store has it safe.

use std::net::IpAddr;
use std::time::Instant;

use actix::prelude::*;
use futures_util::future::Either;

use super::{ChatServer, Lifecycle};
use crate::auth;
use crate::log_noise;
use crate::names::{self, confusable_keys, name_key};
use crate::protocol::{AuthErrorCode, ErrorCode, ServerMessage, LOBBY};
use crate::server::identity::{Account, IdentityChange};
use crate::server::logging::Noise;
use crate::server::outbound::{SessionId, Skip};
use crate::server::store::StoreError;
use crate::server::unix_ms;

/// What a client offers to authenticate.
#[derive(Debug)]
pub enum Credentials {
    Resume { token: String },
    Login { name: String, password: String },
    Register { name: String, password: String },
}

/// Authenticate a connection. The frames (`auth_ok` + `history`, or `auth_error`) are
/// queued on its outbox; the session learns the outcome from the reply.
#[derive(Message)]
#[rtype(result = "AuthOutcome")]
pub struct Authenticate {
    pub id: SessionId,
    pub credentials: Credentials,
}

/// How an [`Authenticate`] ended.
#[derive(Debug, Clone, PartialEq, Eq, MessageResponse)]
pub enum AuthOutcome {
    Authenticated { name: String },
    Refused,
}

/// Why a registration that passed every check did not complete.
#[derive(Debug, thiserror::Error)]
enum RegisterError {
    #[error("hashing the password failed: {0}")]
    Hash(#[from] auth::HashError),
    #[error("hashing the password did not run")]
    NotHashed,
    #[error("the account was not saved: {0}")]
    NotSaved(#[from] StoreError),
}

impl Handler<Authenticate> for ChatServer {
    type Result = ResponseActFuture<Self, AuthOutcome>;

    fn handle(&mut self, msg: Authenticate, _: &mut Self::Context) -> Self::Result {
        let id = msg.id;
        let Some(ip) = self.connections.get(id).map(|p| p.ip) else {
            return Box::pin(fut::ready(AuthOutcome::Refused));
        };
        if self.lifecycle != Lifecycle::Serving {
            return Box::pin(fut::ready(AuthOutcome::Refused));
        }
        // An address authenticating in a tight loop is answered late, not refused: the
        // session waits for this answer before it reads anything more.
        let wait = self.limits.auth_pace.take_or_wait(&ip, Instant::now());
        if wait.is_zero() {
            return self.authenticate(id, ip, msg.credentials);
        }
        log_noise!(
            ip,
            Noise::Limit,
            log::Level::Info,
            "session {id} from {ip}: authentications paced, answering in {wait:?}"
        );
        let credentials = msg.credentials;
        Box::pin(
            fut::wrap_future(tokio::time::sleep(wait))
                .then(move |_, act: &mut Self, _| act.authenticate(id, ip, credentials)),
        )
    }
}

impl ChatServer {
    fn authenticate(
        &mut self,
        id: SessionId,
        ip: IpAddr,
        credentials: Credentials,
    ) -> ResponseActFuture<Self, AuthOutcome> {
        if self.connections.get(id).is_none() || self.lifecycle != Lifecycle::Serving {
            return Box::pin(fut::ready(AuthOutcome::Refused));
        }
        match credentials {
            Credentials::Resume { token } => Box::pin(fut::ready(self.resume(id, ip, &token))),
            Credentials::Login { name, password } => self.login(id, ip, name, password),
            Credentials::Register { name, password } => self.register(id, ip, name, password),
        }
    }

    /// A valid token always logs in: checking one is cheap, so the guess limiter is
    /// asked only about tokens that fail.
    fn resume(&mut self, id: SessionId, ip: IpAddr, token: &str) -> AuthOutcome {
        if let Some(ban) = self.identities.ban_of_token(token) {
            let message = ban_sentence(&ban.reason);
            return self.refuse_with(id, ip, AuthErrorCode::Banned, message);
        }
        if let Some((key, account, digest)) = self.identities.check_token(token, unix_ms()) {
            let (key, name) = (key.to_string(), account.name.clone());
            if let Some(ban) = self.identities.ban_of(&key) {
                let message = ban_sentence(&ban.reason);
                return self.refuse_with(id, ip, AuthErrorCode::Banned, message);
            }
            // Spent by this use.
            self.note_identities(vec![IdentityChange::RevokeToken { digest }]);
            return self.complete_login(id, &key, &name, false);
        }
        let now = Instant::now();
        if self.limits.guesses_by_ip.exceeded(&ip, now) {
            return self.refuse(id, ip, AuthErrorCode::RateLimited);
        }
        self.limits.guesses_by_ip.record(&ip, now);
        self.refuse(id, ip, AuthErrorCode::InvalidToken)
    }

    fn login(
        &mut self,
        id: SessionId,
        ip: IpAddr,
        name: String,
        password: String,
    ) -> ResponseActFuture<Self, AuthOutcome> {
        let now = Instant::now();
        if self.limits.guesses_by_ip.exceeded(&ip, now) {
            return Box::pin(fut::ready(self.refuse(id, ip, AuthErrorCode::RateLimited)));
        }
        // The code already says the name is unknown, so there is nothing to hide by
        // hashing, and nothing to count: it is not a guess at a password.
        let Some((key, account)) = self.identities.find(&name) else {
            return Box::pin(fut::ready(self.refuse(id, ip, AuthErrorCode::UnknownUser)));
        };
        let (key, stored) = (key.clone(), account.password_hash.clone());
        // Banned whatever the password: nothing to check, nothing to count.
        if let Some(ban) = self.identities.ban_of(&key) {
            let message = ban_sentence(&ban.reason);
            return Box::pin(fut::ready(self.refuse_with(
                id,
                ip,
                AuthErrorCode::Banned,
                message,
            )));
        }
        if self.limits.guesses_by_account.exceeded(&key, now) {
            log_noise!(
                ip,
                Noise::Limit,
                log::Level::Warn,
                "session {id} from {ip}: too many wrong passwords for one account lately"
            );
            return Box::pin(fut::ready(self.refuse(id, ip, AuthErrorCode::RateLimited)));
        }
        self.limits.guesses_by_ip.begin(&ip);
        self.limits.guesses_by_account.begin(&key);
        let hash = stored.clone();
        let check = self
            .hashing
            .run(ip, move || auth::verify_password(&password, &hash));
        Box::pin(
            fut::wrap_future(check).map(move |verdict, act: &mut Self, _| {
                act.limits.guesses_by_ip.end(&ip);
                act.limits.guesses_by_account.end(&key);
                // The account may have changed while the hash computed (clear-ids).
                let current = act.identities.account_by_key(&key).cloned();
                match (verdict, current) {
                    (_, None) => act.refuse(id, ip, AuthErrorCode::UnknownUser),
                    (Some(Ok(true)), Some(account)) if account.password_hash == stored => {
                        if let Some(ban) = act.identities.ban_of(&key) {
                            let message = ban_sentence(&ban.reason);
                            return act.refuse_with(id, ip, AuthErrorCode::Banned, message);
                        }
                        act.complete_login(id, &key, &account.name, false)
                    }
                    (Some(Ok(_)), Some(_)) => {
                        let now = Instant::now();
                        act.limits.guesses_by_ip.record(&ip, now);
                        act.limits.guesses_by_account.record(&key, now);
                        act.refuse(id, ip, AuthErrorCode::BadPassword)
                    }
                    (verdict, Some(account)) => {
                        let reason = match verdict {
                            Some(Err(err)) => err.to_string(),
                            _ => "it did not run".to_string(),
                        };
                        log::error!("password check for {} failed: {reason}", account.name);
                        act.send_error(id, ErrorCode::Internal, "could not check the password");
                        AuthOutcome::Refused
                    }
                }
            }),
        )
    }

    fn register(
        &mut self,
        id: SessionId,
        ip: IpAddr,
        name: String,
        password: String,
    ) -> ResponseActFuture<Self, AuthOutcome> {
        let refusal = if let Err(err) = names::check_name(&name) {
            log_noise!(
                ip,
                Noise::AuthFailure,
                log::Level::Info,
                "session {id} from {ip}: invalid name: {err}"
            );
            Some(AuthErrorCode::InvalidName)
        } else if !auth::is_valid_password(&password) {
            Some(AuthErrorCode::InvalidPassword)
        } else if names::is_server_name(&name)
            || self.identities.is_taken(&name)
            || self.name_pending(&name)
        {
            Some(AuthErrorCode::NameTaken)
        } else if self.limits.registrations.exceeded(&ip, Instant::now()) {
            log_noise!(
                ip,
                Noise::Limit,
                log::Level::Warn,
                "session {id} from {ip}: --register-rate reached"
            );
            Some(AuthErrorCode::RateLimited)
        } else {
            None
        };
        if let Some(code) = refusal {
            return Box::pin(fut::ready(self.refuse(id, ip, code)));
        }
        let pending = pending_keys(&name);
        self.pending_names.extend(pending.iter().cloned());
        self.limits.registrations.begin(&ip);
        let rounds = self.settings.pbkdf2_rounds;
        let hashing = self
            .hashing
            .run(ip, move || auth::hash_password(&password, rounds));
        Box::pin(
            fut::wrap_future(hashing)
                .then(move |hashed, act: &mut Self, _| {
                    for key in &pending {
                        act.pending_names.remove(key);
                    }
                    act.limits.registrations.end(&ip);
                    let saved = match hashed {
                        Some(Ok(password_hash)) => {
                            let account = Account {
                                name: name.clone(),
                                password_hash,
                                created_ms: unix_ms(),
                                // Direct messages from here on are this account's.
                                since_id: act.store.last_id() + 1,
                            };
                            Either::Left(act.save_account(account))
                        }
                        Some(Err(err)) => Either::Right(fut::ready(Err(err.into()))),
                        None => Either::Right(fut::ready(Err(RegisterError::NotHashed))),
                    };
                    saved.map(move |saved, _: &mut Self, _| (name, saved))
                })
                .map(move |(name, saved), act: &mut Self, _| match saved {
                    Ok(key) => {
                        act.limits.registrations.record(&ip, Instant::now());
                        log::info!("registered account {name} from {ip}");
                        act.complete_login(id, &key, &name, true)
                    }
                    Err(err) => {
                        log::error!("registration of {name} failed: {err}");
                        act.send_error(
                            id,
                            ErrorCode::Internal,
                            "the account could not be saved; try again later",
                        );
                        AuthOutcome::Refused
                    }
                }),
        )
    }

    /// Adds `account` and waits until the store has it safe; undone (so that it can be
    /// retried) if it could not be saved. Ends with the account's key.
    fn save_account(
        &mut self,
        account: Account,
    ) -> impl ActorFuture<Self, Output = Result<String, RegisterError>> {
        let key = name_key(&account.name);
        let change = IdentityChange::AddAccount { account };
        self.identities.apply(&change);
        let saved = self.store.record_identities(vec![change], true);
        fut::wrap_future(async move {
            match saved {
                Some(saved) => saved.await,
                None => Ok(()),
            }
        })
        .map(move |saved, act: &mut Self, _| match saved {
            Ok(()) => Ok(key),
            Err(err) => {
                act.note_identities(vec![IdentityChange::RemoveAccount { key }]);
                Err(RegisterError::NotSaved(err))
            }
        })
    }

    /// Finishes a successful authentication: token, `auth_ok`, history, ring, `joined`.
    pub(super) fn complete_login(
        &mut self,
        id: SessionId,
        key: &str,
        name: &str,
        new_user: bool,
    ) -> AuthOutcome {
        let Some(ip) = self.connections.get(id).map(|p| p.ip) else {
            return AuthOutcome::Refused;
        };
        let ttl_ms = self.settings.token_ttl.as_millis() as u64;
        let (token, digest, mut changes) = self.identities.new_token_for(key, unix_ms(), ttl_ms);
        if !self.identities.ip_is_known_as(ip, name) {
            changes.push(IdentityChange::RememberIp {
                ip,
                name: name.to_string(),
            });
        }
        self.note_identities(changes);

        let auth_ok = ServerMessage::AuthOk {
            name: name.to_string(),
            token,
            new_user,
        };
        // Logged before anything is sent, so the log never lags what the client saw.
        log::info!("session {id} from {ip} authenticated as {name} (new user: {new_user})");
        self.connections.authenticate(id, key, digest);
        // The history of lobby, then of each of the account's rooms (sorted), then its
        // direct messages if it has any; and in the same step, every ring, so that no
        // message falls between a snapshot and its ring, or comes twice.
        let rooms = self.rooms.rooms_of(key);
        let mut frames = vec![self.room_history(LOBBY).frame()];
        for room in &rooms {
            frames.push(self.room_history(room).frame());
        }
        if let Some(direct) = self.direct_history.get_mut(key) {
            if !direct.is_empty() {
                frames.push(direct.frame());
            }
        }
        let subscription = self.ring.subscribe(Some(key.into()));
        let Some(peer) = self.connections.get(id) else {
            return AuthOutcome::Refused;
        };
        if let Some(frame) = super::encode(&auth_ok) {
            peer.handle.outbox.send(frame);
        }
        for frame in frames {
            peer.handle.outbox.send(frame);
        }
        peer.handle.outbox.subscribe(subscription);
        for room in &rooms {
            self.subscribe_to_room(id, room, key);
        }

        if self.presence.arrive(key, name) {
            self.broadcast_event(
                &ServerMessage::Joined {
                    name: name.to_string(),
                },
                Some(Skip::Session(id)),
            );
        }
        AuthOutcome::Authenticated {
            name: name.to_string(),
        }
    }

    /// A refused authentication: logged and answered. (Whether it counts against a
    /// limit is for the caller to say.)
    fn refuse(&mut self, id: SessionId, ip: IpAddr, code: AuthErrorCode) -> AuthOutcome {
        let message = refusal_sentence(code);
        self.refuse_with(id, ip, code, message)
    }

    /// [`refuse`](Self::refuse) with a message of its own.
    fn refuse_with(
        &mut self,
        id: SessionId,
        ip: IpAddr,
        code: AuthErrorCode,
        message: String,
    ) -> AuthOutcome {
        if code == AuthErrorCode::RateLimited {
            log_noise!(
                ip,
                Noise::Limit,
                log::Level::Warn,
                "session {id} from {ip}: authentication rate limit hit"
            );
        } else {
            log_noise!(
                ip,
                Noise::AuthFailure,
                log::Level::Info,
                "session {id} from {ip}: authentication failed ({code:?})"
            );
        }
        self.send_to(id, &ServerMessage::auth_error(code, message));
        AuthOutcome::Refused
    }

    /// Whether a registration of `name` is waiting for its hash: the name, or one that
    /// looks like it.
    fn name_pending(&self, name: &str) -> bool {
        pending_keys(name)
            .iter()
            .any(|k| self.pending_names.contains(k))
    }
}

/// The message of an `auth_error` of `code`.
fn refusal_sentence(code: AuthErrorCode) -> String {
    match code {
        AuthErrorCode::UnknownUser => "no account has that name".to_string(),
        AuthErrorCode::BadPassword => "wrong password".to_string(),
        AuthErrorCode::NameTaken => "that name (or one that looks like it) is taken".to_string(),
        AuthErrorCode::InvalidToken => "the token is unknown, spent or expired".to_string(),
        AuthErrorCode::InvalidName => names::name_rule(),
        AuthErrorCode::InvalidPassword => auth::password_rule(),
        AuthErrorCode::RateLimited => "too many attempts; wait a while and try again".to_string(),
        AuthErrorCode::Banned => "this account is banned".to_string(),
        AuthErrorCode::Unavailable => "accounts cannot be checked right now".to_string(),
    }
}

/// What a banned account is told.
pub(super) fn ban_sentence(reason: &str) -> String {
    if reason.is_empty() {
        "this account is banned from this server".to_string()
    } else {
        format!("this account is banned from this server: {reason}")
    }
}

/// The keys a pending registration of `name` holds: its name key and look-alike keys.
fn pending_keys(name: &str) -> Vec<String> {
    let mut keys = vec![name_key(name)];
    keys.extend(confusable_keys(name));
    keys
}

/// Revoke the connection's token (durably); answered once done, then the session closes.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Logout {
    pub id: SessionId,
}

impl Handler<Logout> for ChatServer {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Logout, _: &mut Self::Context) -> Self::Result {
        let digest = self
            .connections
            .get_mut(msg.id)
            .and_then(|p| p.token_digest.take());
        let Some(digest) = digest else {
            return Box::pin(fut::ready(()));
        };
        log::info!("session {} logged out", msg.id);
        let change = IdentityChange::RevokeToken { digest };
        self.identities.apply(&change);
        let saved = self.store.record_identities(vec![change], true);
        Box::pin(fut::wrap_future(async move {
            if let Some(Err(err)) = match saved {
                Some(saved) => Some(saved.await),
                None => None,
            } {
                log::error!("a logout's token revocation was not saved: {err}");
            }
        }))
    }
}
