//! Who a connection is: `resume`, `login` and `register`, and `logout`.
//!
//! A valid token always logs in; only wrong guesses (`bad_password`, `invalid_token`)
//! count against `--login-rate`, per address and per account. Password hashes are
//! computed on the [`HashingPool`](crate::server::hashing::HashingPool), never here, and
//! a new account's `auth_ok` waits until the store has it safe.

use std::net::IpAddr;
use std::time::Instant;

use actix::prelude::*;

use super::{ChatServer, Lifecycle};
use crate::auth;
use crate::log_noise;
use crate::names::{self, name_key};
use crate::protocol::{AuthErrorCode, ErrorCode, ServerMessage, LOBBY};
use crate::server::identity::{Account, IdentityChange};
use crate::server::logging::Noise;
use crate::server::outbound::{SessionId, Skip};
use crate::server::store::{Answer, Spent, StoreError};
use crate::server::unix_ms;

/// A token issued to a connection, waiting to be sent in its `auth_ok`.
pub(super) struct Issued {
    pub(super) key: String,
    pub(super) name: String,
    pub(super) new_user: bool,
    pub(super) token: String,
    pub(super) digest: String,
}

/// An answer known now, as the actor future a handler returns.
pub(super) fn ready<T: 'static>(value: T) -> ResponseActFuture<ChatServer, T> {
    Box::pin(fut::ready(value))
}

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
        if !self.store.is_available() {
            return ready(self.refuse(id, ip, AuthErrorCode::Unavailable));
        }
        match credentials {
            Credentials::Resume { token } => self.resume(id, ip, &token),
            Credentials::Login { name, password } => self.login(id, ip, name, password),
            Credentials::Register { name, password } => self.register(id, ip, name, password),
        }
    }

    /// A valid token always logs in: checking one is cheap, so the guess limiter is
    /// asked only about tokens that fail. The store spends the token (once for all,
    /// where several nodes could race for it).
    fn resume(
        &mut self,
        id: SessionId,
        ip: IpAddr,
        token: &str,
    ) -> ResponseActFuture<Self, AuthOutcome> {
        if let Some(ban) = self.identities.ban_of_token(token) {
            let message = ban_sentence(&ban.reason);
            return ready(self.refuse_with(id, ip, AuthErrorCode::Banned, message));
        }
        let digest = auth::token_digest(token);
        let known = self
            .identities
            .check_token(token, unix_ms())
            .map(|(key, _, _)| key.to_string());
        if let Some(ban) = known.as_deref().and_then(|key| self.identities.ban_of(key)) {
            let message = ban_sentence(&ban.reason);
            return ready(self.refuse_with(id, ip, AuthErrorCode::Banned, message));
        }
        match self.store.spend_token(&digest, known.as_deref()) {
            Answer::Now(spent) => self.resumed(id, ip, digest, Ok(spent)),
            Answer::Later(spending) => Box::pin(
                fut::wrap_future(spending)
                    .then(move |spent, act: &mut Self, _| act.resumed(id, ip, digest, spent)),
            ),
        }
    }

    /// A `resume` once the store has spent the token (or found none).
    fn resumed(
        &mut self,
        id: SessionId,
        ip: IpAddr,
        digest: String,
        spent: Result<Option<Spent>, StoreError>,
    ) -> ResponseActFuture<Self, AuthOutcome> {
        let spent = match spent {
            Ok(spent) => spent,
            Err(err) => return ready(self.refuse_for_store(id, ip, &err)),
        };
        if let Some(Spent { user, account }) = spent {
            if let Some(account) = account {
                self.identities
                    .apply(&IdentityChange::AddAccount { account });
            }
            // Spent by this use.
            self.identities
                .apply(&IdentityChange::RevokeToken { digest });
            if let Some(ban) = self.identities.ban_of(&user) {
                let message = ban_sentence(&ban.reason);
                return ready(self.refuse_with(id, ip, AuthErrorCode::Banned, message));
            }
            if let Some(name) = self
                .identities
                .account_by_key(&user)
                .map(|a| a.name.clone())
            {
                return self.complete_login(id, &user, &name, false);
            }
        }
        let now = Instant::now();
        if self.limits.guesses_by_ip.exceeded(&ip, now) {
            return ready(self.refuse(id, ip, AuthErrorCode::RateLimited));
        }
        self.limits.guesses_by_ip.record(&ip, now);
        ready(self.refuse(id, ip, AuthErrorCode::InvalidToken))
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
        let Some(key) = self.identities.find(&name).map(|(key, _)| key.clone()) else {
            // Registered on another node a moment ago? (A single server's view has
            // every account.)
            return match self.store.lookup_account(&name_key(&name)) {
                Answer::Now(found) => self.login_found(id, ip, password, Ok(found)),
                Answer::Later(lookup) => Box::pin(fut::wrap_future(lookup).then(
                    move |found, act: &mut Self, _| act.login_found(id, ip, password, found),
                )),
            };
        };
        self.login_account(id, ip, key, password)
    }

    /// A login whose account the view lacked, once the store has looked for it.
    fn login_found(
        &mut self,
        id: SessionId,
        ip: IpAddr,
        password: String,
        found: Result<Option<Account>, StoreError>,
    ) -> ResponseActFuture<Self, AuthOutcome> {
        match found {
            Ok(Some(account)) => {
                let key = name_key(&account.name);
                if self.identities.account_by_key(&key).is_none() {
                    self.identities
                        .apply(&IdentityChange::AddAccount { account });
                }
                self.login_account(id, ip, key, password)
            }
            Ok(None) => ready(self.refuse(id, ip, AuthErrorCode::UnknownUser)),
            Err(err) => ready(self.refuse_for_store(id, ip, &err)),
        }
    }

    /// A login of the account `key` (in the view): the password is checked on the
    /// hashing pool.
    fn login_account(
        &mut self,
        id: SessionId,
        ip: IpAddr,
        key: String,
        password: String,
    ) -> ResponseActFuture<Self, AuthOutcome> {
        let now = Instant::now();
        let Some(stored) = self
            .identities
            .account_by_key(&key)
            .map(|a| a.password_hash.clone())
        else {
            return ready(self.refuse(id, ip, AuthErrorCode::UnknownUser));
        };
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
            fut::wrap_future(check).then(move |verdict, act: &mut Self, _| {
                act.limits.guesses_by_ip.end(&ip);
                act.limits.guesses_by_account.end(&key);
                // The account may have changed while the hash computed (clear-ids).
                let current = act.identities.account_by_key(&key).cloned();
                match (verdict, current) {
                    (_, None) => ready(act.refuse(id, ip, AuthErrorCode::UnknownUser)),
                    (Some(Ok(true)), Some(account)) if account.password_hash == stored => {
                        if let Some(ban) = act.identities.ban_of(&key) {
                            let message = ban_sentence(&ban.reason);
                            return ready(act.refuse_with(id, ip, AuthErrorCode::Banned, message));
                        }
                        act.complete_login(id, &key, &account.name, false)
                    }
                    (Some(Ok(_)), Some(_)) => {
                        let now = Instant::now();
                        act.limits.guesses_by_ip.record(&ip, now);
                        act.limits.guesses_by_account.record(&key, now);
                        ready(act.refuse(id, ip, AuthErrorCode::BadPassword))
                    }
                    (verdict, Some(account)) => {
                        let reason = match verdict {
                            Some(Err(err)) => err.to_string(),
                            _ => "it did not run".to_string(),
                        };
                        log::error!("password check for {} failed: {reason}", account.name);
                        act.send_error(id, ErrorCode::Internal, "could not check the password");
                        ready(AuthOutcome::Refused)
                    }
                }
            }),
        )
    }

    /// `auth_ok`, history, rings and `joined`, once the token is issued.
    pub(super) fn finish_login(&mut self, id: SessionId, issued: Issued) -> AuthOutcome {
        let Issued {
            key,
            name,
            new_user,
            token,
            digest,
        } = issued;
        let key = key.as_str();
        let Some(ip) = self.connections.get(id).map(|p| p.ip) else {
            return AuthOutcome::Refused;
        };
        let auth_ok = ServerMessage::AuthOk {
            name: name.clone(),
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

        // The first connection here, and (as far as the store knows) anywhere.
        let first_here = self.presence.arrive(key, &name);
        let first_anywhere = self.store.user_connected(key, &name);
        if first_here && first_anywhere {
            self.broadcast_event(
                &ServerMessage::Joined { name: name.clone() },
                Some(Skip::Session(id)),
            );
        }
        AuthOutcome::Authenticated { name }
    }

    /// Refuses an authentication the store could not serve: `unavailable` when the
    /// shared state cannot be reached, else `internal`.
    pub(super) fn refuse_for_store(
        &mut self,
        id: SessionId,
        ip: IpAddr,
        err: &StoreError,
    ) -> AuthOutcome {
        if let StoreError::Unavailable(_) = err {
            return self.refuse(id, ip, AuthErrorCode::Unavailable);
        }
        log::error!("session {id} from {ip}: authentication failed in the store: {err}");
        self.send_error(
            id,
            ErrorCode::Internal,
            "the server could not complete this; try again later",
        );
        AuthOutcome::Refused
    }

    /// A refused authentication: logged and answered. (Whether it counts against a
    /// limit is for the caller to say.)
    pub(super) fn refuse(&mut self, id: SessionId, ip: IpAddr, code: AuthErrorCode) -> AuthOutcome {
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

/// Revoke the connection's token (durably); answered once done (`true`: the session
/// closes; `false`: it was refused, and the connection stays).
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Logout {
    pub id: SessionId,
}

impl Handler<Logout> for ChatServer {
    type Result = ResponseActFuture<Self, bool>;

    fn handle(&mut self, msg: Logout, _: &mut Self::Context) -> Self::Result {
        let id = msg.id;
        if self.refuse_if_unavailable(id) {
            return Box::pin(fut::ready(false));
        }
        let digest = self
            .connections
            .get_mut(id)
            .and_then(|p| p.token_digest.take());
        let Some(digest) = digest else {
            return Box::pin(fut::ready(true));
        };
        log::info!("session {id} logged out");
        let change = IdentityChange::RevokeToken {
            digest: digest.clone(),
        };
        self.identities.apply(&change);
        let saved = self.store.record_identities(vec![change], true);
        Box::pin(
            fut::wrap_future(async move {
                match saved {
                    Some(saved) => saved.await,
                    None => Ok(()),
                }
            })
            .map(move |saved, act: &mut Self, _| match saved {
                Ok(()) => true,
                Err(StoreError::Unavailable(_)) => {
                    // Not revoked: the connection keeps its token, and says so.
                    if let Some(peer) = act.connections.get_mut(id) {
                        peer.token_digest = Some(digest);
                    }
                    act.send_unavailable(id);
                    false
                }
                Err(err) => {
                    log::error!("a logout's token revocation was not saved: {err}");
                    true
                }
            }),
        )
    }
}
