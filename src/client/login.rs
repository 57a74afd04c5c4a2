//! Logging in, written once for both modes: resume with the saved token of the right
//! account, else log in by name and password, else register the name.
//!
//! The two front ends differ only in where credentials come from, which is the
//! [`Credentials`] trait: a person answers questions on the terminal, a script's
//! lines are read in order. The name and password rules of [`crate::auth`] are checked
//! here before anything is sent, so a typo costs no round trip and never counts
//! against the server's limit on failed logins; the front end is told what was wrong
//! and asks again for just that field, or gives up.
//!
//! The connection lives in a [`Link`] that keeps watching the server while the front
//! end waits for input: a connection the server closes meanwhile (its
//! `--auth-timeout` runs while a person types) is replaced without a word before the
//! next request, and a `shutdown` is shown at once.

use std::time::Duration;

use super::args::ServerAddr;
use super::connection::{AuthReply, Connection, ConnectionError, Ended};
use super::display::{auth_error_sentence, name_rule, password_rule, printable};
use super::tls::Connector;
use super::tokens::{Saved, TokenStore};
use super::{Exit, Notify};
use crate::auth::{is_valid_name, MAX_PASSWORD_BYTES, MIN_PASSWORD_BYTES};
use crate::protocol::{AuthErrorCode, ClientMessage, ServerMessage};

/// After this long without a greeting, say why nothing happens (a paused server).
const WELCOME_PATIENCE: Duration = Duration::from_secs(2);

/// Waits between attempts to reach the server again while logging in (it may be
/// restarting); after the last one, give up.
const RECONNECT_DELAYS: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(16),
];

/// Where names and passwords come from.
#[allow(async_fn_in_trait)]
pub trait Credentials {
    /// The name to log in as; `suggested` is the one to offer (the last one tried, or
    /// the one the server remembers for this address).
    async fn name(&mut self, suggested: Option<&str>) -> Result<String, Exit>;
    /// The password for `name`.
    async fn password(&mut self, name: &str) -> Result<String, Exit>;
    /// `name` has no account: the password to register it with (`typed` is the one
    /// given for the login), or `None` to choose another name.
    async fn new_account(&mut self, name: &str, typed: &str) -> Result<Option<String>, Exit>;
    /// Something was refused (a sentence for the person): `Ok` to ask again, or the
    /// exit that ends the run.
    fn refused(&mut self, sentence: &str) -> Result<(), Exit>;
}

/// How the login went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// With the saved token.
    Resumed,
    LoggedIn,
    Registered,
}

/// A logged-in connection, whose `history` comes next.
#[derive(Debug)]
pub struct LoggedIn {
    pub conn: Connection,
    /// Our name as the server spells it.
    pub name: String,
    pub how: How,
}

/// Why a name cannot be an account name, as a sentence; `None` when it can.
pub fn name_problem(name: &str) -> Option<String> {
    (!is_valid_name(name)).then(name_rule)
}

/// Why a password cannot be one, as a sentence; `None` when it can.
pub fn password_problem(password: &str) -> Option<String> {
    (!(MIN_PASSWORD_BYTES..=MAX_PASSWORD_BYTES).contains(&password.len())).then(password_rule)
}

/// Logs in as `fixed` (from `--name`) or as whoever the credentials name.
pub async fn log_in<C: Credentials>(
    link: &mut Link,
    tokens: &mut TokenStore,
    fixed: Option<&str>,
    creds: &mut C,
) -> Result<LoggedIn, Exit> {
    if let Some(saved) = tokens.saved(fixed) {
        let reply = link.authenticate(&resume_request(&saved)).await?;
        match settle_resume(reply, tokens, &saved) {
            Ok(name) => return link.logged_in(name, How::Resumed),
            Err((code, message)) => {
                let who = saved.name.as_deref().or(fixed).unwrap_or("");
                let sentence = auth_error_sentence(code, who, &message);
                if code == AuthErrorCode::InvalidToken {
                    // An old token is no failure: the password is the way in now.
                    (link.notify)(&sentence);
                } else {
                    creds.refused(&sentence)?;
                }
            }
        }
    }

    let mut suggested = link.known_name.clone();
    loop {
        let name = match fixed {
            Some(name) => name.to_string(),
            None => link.while_waiting(creds.name(suggested.as_deref())).await?,
        };
        if let Some(problem) = name_problem(&name) {
            if fixed.is_some() {
                return Err(Exit::failure(format!(
                    "the name given with --name cannot be used: {problem}"
                )));
            }
            creds.refused(&problem)?;
            continue;
        }
        suggested = Some(name.clone());
        let password = loop {
            let password = link.while_waiting(creds.password(&name)).await?;
            match password_problem(&password) {
                None => break password,
                Some(problem) => creds.refused(&problem)?,
            }
        };
        let login = ClientMessage::Login {
            name: name.clone(),
            password: password.clone(),
        };
        let (code, message) = match link.authenticate(&login).await? {
            AuthReply::Accepted { name, token, .. } => {
                tokens.save(&name, &token, Some(&password), false);
                return link.logged_in(name, How::LoggedIn);
            }
            AuthReply::Refused {
                code: AuthErrorCode::UnknownUser,
                ..
            } => {
                let Some(chosen) = link
                    .while_waiting(creds.new_account(&name, &password))
                    .await?
                else {
                    if fixed.is_some() {
                        return Err(Exit::success_with(format!(
                            "There is no account named '{}'; nothing done.",
                            printable(&name)
                        )));
                    }
                    continue;
                };
                let register = ClientMessage::Register {
                    name: name.clone(),
                    password: chosen.clone(),
                };
                match link.authenticate(&register).await? {
                    AuthReply::Accepted { name, token, .. } => {
                        tokens.save(&name, &token, Some(&chosen), false);
                        return link.logged_in(name, How::Registered);
                    }
                    AuthReply::Refused { code, message } => (code, message),
                }
            }
            AuthReply::Refused { code, message } => (code, message),
        };
        creds.refused(&auth_error_sentence(code, &name, &message))?;
        if fixed.is_some() && matches!(code, AuthErrorCode::InvalidName | AuthErrorCode::NameTaken)
        {
            return Err(Exit::failure("the name given with --name cannot be used"));
        }
    }
}

/// The request that resumes a saved session.
pub fn resume_request(saved: &Saved) -> ClientMessage {
    ClientMessage::Resume {
        token: saved.token.clone(),
    }
}

/// Files the answer to a `resume` in the token file, the same at login and after a
/// reconnection: the fresh token is saved under the account's name (a token of the
/// earlier format is filed under it now), a refused one is forgotten. `Ok` with our
/// name when the session resumed, else the refusal's code and message.
pub fn settle_resume(
    reply: AuthReply,
    tokens: &mut TokenStore,
    saved: &Saved,
) -> Result<String, (AuthErrorCode, String)> {
    match reply {
        AuthReply::Accepted { name, token, .. } => {
            tokens.save(&name, &token, None, saved.name.is_none());
            Ok(name)
        }
        AuthReply::Refused { code, message } => {
            if code == AuthErrorCode::InvalidToken {
                match &saved.name {
                    Some(name) => tokens.forget(name),
                    None => tokens.forget_unnamed(),
                }
            }
            Err((code, message))
        }
    }
}

/// The connection while logging in, replaced when the server drops it.
pub struct Link {
    server: ServerAddr,
    connector: Connector,
    conn: Option<Connection>,
    /// The name the server remembers for this address, from the first greeting.
    known_name: Option<String>,
    notify: Notify,
}

impl Link {
    /// Connects and waits for the greeting. A server that cannot be reached is the
    /// end of the run.
    pub async fn open(
        server: &ServerAddr,
        connector: Connector,
        mut notify: Notify,
    ) -> Result<Link, Exit> {
        let (conn, known_name) = greet(server, &connector, &mut notify)
            .await
            .map_err(|e| Exit::failure(e.to_string()))?;
        Ok(Link {
            server: server.clone(),
            connector,
            conn: Some(conn),
            known_name,
            notify,
        })
    }

    /// The connection that just got `auth_ok`, handed over with our name.
    fn logged_in(&mut self, name: String, how: How) -> Result<LoggedIn, Exit> {
        match self.conn.take() {
            Some(conn) => Ok(LoggedIn { conn, name, how }),
            None => Err(Exit::failure(
                "the connection was lost right after logging in",
            )),
        }
    }

    /// Runs `input` (a question, a line to read) while watching the connection: one
    /// the server closes is dropped quietly, a `shutdown` is shown at once.
    pub async fn while_waiting<T>(&mut self, input: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(input);
        loop {
            let Some(conn) = &mut self.conn else {
                return input.await;
            };
            tokio::select! {
                value = &mut input => return value,
                event = conn.recv() => match event {
                    Ok(Some(ServerMessage::Shutdown { message })) => {
                        self.conn = None;
                        let ended = Ended::Shutdown(message);
                        (self.notify)(&format!("{ended}; logging in will wait for it to come back."));
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => self.conn = None,
                    Err(e) => {
                        self.conn = None;
                        if e.is_protocol_violation() {
                            (self.notify)(&format!("{e}; closing the connection."));
                        }
                    }
                },
            }
        }
    }

    /// Sends an authentication request and waits for its answer, on a fresh
    /// connection if the server dropped the last one. A server that shuts down or
    /// drops the connection meanwhile is tried again a few times.
    pub async fn authenticate(&mut self, request: &ClientMessage) -> Result<AuthReply, Exit> {
        let mut delays = RECONNECT_DELAYS.iter();
        loop {
            let error = match self.connection().await {
                Ok(conn) => match conn.authenticate(request).await {
                    Ok(reply) => return Ok(reply),
                    Err(ConnectionError::Refused(why)) => {
                        // The server could not do it (`internal`: a full disk, say).
                        return Err(Exit::failure(format!(
                            "the server could not log you in: {}",
                            printable(&why)
                        )));
                    }
                    Err(e) => e,
                },
                Err(e) => e,
            };
            self.conn = None;
            if error.is_final() {
                return Err(Exit::failure(error.to_string()));
            }
            let Some(delay) = delays.next() else {
                return Err(Exit::failure(format!(
                    "could not log in to {}: {error}",
                    self.server
                )));
            };
            match &error {
                // The server closed a connection that waited too long: no news.
                ConnectionError::Closed | ConnectionError::Io(_)
                    if delay == &RECONNECT_DELAYS[0] =>
                {
                    continue
                }
                ConnectionError::Ended(ended) => {
                    (self.notify)(&format!("{ended}; trying again in {} s.", delay.as_secs()))
                }
                _ => (self.notify)(&format!(
                    "Cannot reach {} ({error}); trying again in {} s.",
                    self.server,
                    delay.as_secs()
                )),
            }
            tokio::time::sleep(*delay).await;
        }
    }

    /// The connection, opened again if the server dropped it.
    async fn connection(&mut self) -> Result<&mut Connection, ConnectionError> {
        if self.conn.is_none() {
            let (conn, _) = greet(&self.server, &self.connector, &mut self.notify).await?;
            self.conn = Some(conn);
        }
        self.conn.as_mut().ok_or(ConnectionError::Closed)
    }
}

/// Connects and waits for the greeting, explaining a long wait (a paused server).
async fn greet(
    server: &ServerAddr,
    connector: &Connector,
    notify: &mut Notify,
) -> Result<(Connection, Option<String>), ConnectionError> {
    let mut conn = connector.connect(server).await?;
    let welcome = match tokio::time::timeout(WELCOME_PATIENCE, conn.welcome(None)).await {
        Ok(welcome) => welcome?,
        Err(_) => {
            notify(&format!(
                "Connected to {server}; waiting for the server to let us in (it may be paused)..."
            ));
            conn.welcome(None).await?
        }
    };
    Ok((conn, welcome.known_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_checked_before_sending() {
        assert_eq!(name_problem("alice"), None);
        assert!(name_problem("a b").unwrap().contains("1 to 32"));
        assert!(name_problem(&"x".repeat(33)).is_some());
        assert_eq!(password_problem("abcd"), None);
        assert!(password_problem("abc").unwrap().contains("4 to 1024"));
        assert!(password_problem(&"x".repeat(1025)).is_some());
    }
}
