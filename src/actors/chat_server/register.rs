//! `register`: the checks in order (the name's form, the password's, whether the name
//! or a look-alike is free or being registered), the hash on the pool, then the account
//! in the store before its `auth_ok`.

use std::net::IpAddr;
use std::time::Instant;

use actix::prelude::*;
use futures_util::future::Either;

use super::accounts::{ready, AuthOutcome, Issued};
use super::ChatServer;
use crate::auth;
use crate::log_noise;
use crate::names::{self, confusable_keys, name_key};
use crate::protocol::{AuthErrorCode, ErrorCode};
use crate::server::identity::{Account, IdentityChange};
use crate::server::logging::Noise;
use crate::server::outbound::SessionId;
use crate::server::store::StoreError;
use crate::server::unix_ms;

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

impl ChatServer {
    /// `register`: refused at once when a check fails; otherwise the password is hashed
    /// on the pool and the account stored, and only then is `auth_ok` sent.
    pub(super) fn register(
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
                    let created = match hashed {
                        Some(Ok(password_hash)) => {
                            let account = Account {
                                name: name.clone(),
                                password_hash,
                                created_ms: unix_ms(),
                                // Direct messages from here on are this account's.
                                since_id: act.store.last_id() + 1,
                            };
                            // The name stays pending until the store has decided: no
                            // other registration of it starts meanwhile.
                            let creating = act.store.create_account(account.clone());
                            Either::Left(fut::wrap_future(async move {
                                match creating.await {
                                    Ok(true) => Ok(Some(account)),
                                    Ok(false) => Ok(None),
                                    Err(err) => Err(RegisterError::NotSaved(err)),
                                }
                            }))
                        }
                        Some(Err(err)) => Either::Right(fut::ready(Err(err.into()))),
                        None => Either::Right(fut::ready(Err(RegisterError::NotHashed))),
                    };
                    created.map(move |created, act: &mut Self, _| {
                        for key in &pending {
                            act.pending_names.remove(key);
                        }
                        act.limits.registrations.end(&ip);
                        (name, created)
                    })
                })
                .then(move |(name, created), act: &mut Self, _| match created {
                    Ok(Some(account)) => {
                        let key = name_key(&account.name);
                        act.identities
                            .apply(&IdentityChange::AddAccount { account });
                        act.limits.registrations.record(&ip, Instant::now());
                        log::info!("registered account {name} from {ip}");
                        act.complete_login(id, &key, &name, true)
                    }
                    // Taken on another node meanwhile.
                    Ok(None) => ready(act.refuse(id, ip, AuthErrorCode::NameTaken)),
                    Err(RegisterError::NotSaved(err @ StoreError::Unavailable(_))) => {
                        ready(act.refuse_for_store(id, ip, &err))
                    }
                    Err(err) => {
                        log::error!("registration of {name} failed: {err}");
                        act.send_error(
                            id,
                            ErrorCode::Internal,
                            "the account could not be saved; try again later",
                        );
                        ready(AuthOutcome::Refused)
                    }
                }),
        )
    }

    /// Finishes a successful authentication: a token (on its way to the store; a store
    /// shared between nodes has it before the `auth_ok` goes out), then `auth_ok`,
    /// history, rings and `joined`.
    pub(super) fn complete_login(
        &mut self,
        id: SessionId,
        key: &str,
        name: &str,
        new_user: bool,
    ) -> ResponseActFuture<Self, AuthOutcome> {
        let Some(ip) = self.connections.get(id).map(|p| p.ip) else {
            return ready(AuthOutcome::Refused);
        };
        let ttl_ms = self.settings.token_ttl.as_millis() as u64;
        let (token, digest, mut changes) = self.identities.new_token_for(key, unix_ms(), ttl_ms);
        if !self.identities.ip_is_known_as(ip, name) {
            changes.push(IdentityChange::RememberIp {
                ip,
                name: name.to_string(),
            });
        }
        for change in &changes {
            self.identities.apply(change);
        }
        let issued = Issued {
            key: key.to_string(),
            name: name.to_string(),
            new_user,
            token,
            digest,
        };
        match self.store.record_identities(changes, false) {
            None => ready(self.finish_login(id, issued)),
            Some(saving) => Box::pin(fut::wrap_future(saving).map(
                move |saved, act: &mut Self, _| match saved {
                    Ok(()) => act.finish_login(id, issued),
                    Err(err) => {
                        act.identities.apply(&IdentityChange::RevokeToken {
                            digest: issued.digest,
                        });
                        act.refuse_for_store(id, ip, &err)
                    }
                },
            )),
        }
    }

    /// Whether a registration of `name` is waiting for its hash: the name, or one that
    /// looks like it.
    pub(super) fn name_pending(&self, name: &str) -> bool {
        pending_keys(name)
            .iter()
            .any(|k| self.pending_names.contains(k))
    }
}

/// The keys a pending registration of `name` holds: its name key and look-alike keys.
fn pending_keys(name: &str) -> Vec<String> {
    let mut keys = vec![name_key(name)];
    keys.extend(confusable_keys(name));
    keys
}
