//! Getting the session back after the connection dropped: one attempt
//! ([`attempt`]), and how long to wait between attempts ([`Backoff`]).
//!
//! An attempt connects, waits for the greeting and resumes with the account's token,
//! filing the answer in the token file exactly as the login does. The first wait is a
//! second and each attempt in a row doubles it, up to half a minute. A resume that
//! succeeds does not start the count over: only a connection that then *lasts* does,
//! so a server that lets the client in and fails again at once (a bad frame every
//! time, a crash loop) is not hammered twice a second forever.

use std::time::Duration;

use tokio::time::Instant;

use super::args::ServerAddr;
use super::connection::{Connection, ConnectionError, Ended};
use super::display::auth_error_sentence;
use super::login::{resume_request, settle_resume};
use super::tls::Connector;
use super::tokens::{Saved, TokenStore};
use crate::protocol::AuthErrorCode;

/// How long an attempt waits for the server's greeting. A paused server does not
/// greet; we try again later rather than hang while the user may want to `/quit`.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(30);

/// First pause before reconnecting; doubled after each attempt that does not last.
pub const FIRST_DELAY: Duration = Duration::from_secs(1);

/// Longest pause between reconnection attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(30);

/// A connection that stayed up this long was a good one: the next loss starts the
/// backoff over.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(30);

/// The reconnection count and the current connection's age.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Attempts in a row without a connection lasting [`STABLE_CONNECTION`].
    attempts: u32,
    /// When the current connection came up.
    connected_at: Instant,
}

impl Backoff {
    /// For a connection that came up at `now`.
    pub fn new(now: Instant) -> Self {
        Backoff {
            attempts: 0,
            connected_at: now,
        }
    }

    /// The connection was lost at `now`: the pause before the first attempt.
    pub fn lost(&mut self, now: Instant) -> Duration {
        if now.duration_since(self.connected_at) >= STABLE_CONNECTION {
            self.attempts = 0;
        }
        self.delay()
    }

    /// An attempt starts; returns how many were made in a row, this one included.
    pub fn attempt(&mut self) -> u32 {
        self.attempts += 1;
        self.attempts
    }

    /// The attempt succeeded at `now`.
    pub fn connected(&mut self, now: Instant) {
        self.connected_at = now;
    }

    /// The pause before the next attempt.
    pub fn delay(&self) -> Duration {
        FIRST_DELAY
            .saturating_mul(1 << self.attempts.min(8))
            .min(MAX_DELAY)
    }
}

/// How one attempt went.
pub enum Attempt {
    /// Back in: the new connection, and our name as the server spells it.
    Resumed(Connection, String),
    /// The server ended the session (`kicked`, or `shutdown` for a script).
    Ended(Ended),
    /// Trying again cannot help; the sentence says why.
    GiveUp(String),
    /// Try again after the backoff; why this one failed.
    Retry(String),
}

/// What an attempt needs to know of the session's policy.
pub struct Rules {
    /// A `shutdown` means "later" (a person waits), not the end (a script).
    pub shutdown_is_temporary: bool,
    /// A frame too large or malformed ends the session (a script).
    pub bad_frame_is_fatal: bool,
}

/// Connects to `server`, waits for the greeting and resumes `name`'s session.
pub async fn attempt(
    server: &ServerAddr,
    connector: &Connector,
    tokens: &mut TokenStore,
    name: &str,
    rules: Rules,
) -> Attempt {
    let Some(token) = tokens.token_for(name).map(str::to_string) else {
        return Attempt::GiveUp(
            "the connection was lost and there is no session token to resume with; start echochat again to log in".into(),
        );
    };
    let saved = Saved {
        name: Some(name.to_string()),
        token,
    };
    let error = match resume(server, connector, tokens, &saved).await {
        Ok(Ok((conn, name))) => return Attempt::Resumed(conn, name),
        // Passing trouble: a limit, or the server's storage out of reach.
        Ok(Err((code @ (AuthErrorCode::RateLimited | AuthErrorCode::Unavailable), message))) => {
            return Attempt::Retry(auth_error_sentence(code, name, &message))
        }
        Ok(Err((code, message))) => {
            return Attempt::GiveUp(format!(
                "could not resume the session: {} Start echochat again to log in.",
                auth_error_sentence(code, name, &message)
            ))
        }
        Err(error) => error,
    };
    match error {
        ConnectionError::Ended(Ended::Shutdown(_)) if rules.shutdown_is_temporary => {
            Attempt::Retry("the server is shutting down".into())
        }
        ConnectionError::Ended(ended) => Attempt::Ended(ended),
        // The certificate changed, or TLS cannot work: the same again would fail.
        ConnectionError::Untrusted(why) => Attempt::GiveUp(why),
        e @ ConnectionError::Tls { .. } => Attempt::GiveUp(e.to_string()),
        e if e.is_protocol_violation() && rules.bad_frame_is_fatal => {
            Attempt::GiveUp(e.to_string())
        }
        e => Attempt::Retry(e.to_string()),
    }
}

/// The connection and the resume; the inner error is the server's refusal.
async fn resume(
    server: &ServerAddr,
    connector: &Connector,
    tokens: &mut TokenStore,
    saved: &Saved,
) -> Result<Result<(Connection, String), (AuthErrorCode, String)>, ConnectionError> {
    let mut conn = connector.connect(server).await?;
    conn.welcome(Some(WELCOME_TIMEOUT)).await?;
    let reply = conn.authenticate(&resume_request(saved)).await?;
    Ok(settle_resume(reply, tokens, saved).map(|name| (conn, name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_double_the_wait_up_to_the_limit() {
        let start = Instant::now();
        let mut b = Backoff::new(start);
        assert_eq!(b.lost(start), FIRST_DELAY);
        let waits: Vec<u64> = (0..7)
            .map(|_| {
                b.attempt();
                b.delay().as_secs()
            })
            .collect();
        assert_eq!(waits, [2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn a_connection_dropped_at_once_does_not_start_over() {
        let start = Instant::now();
        let mut b = Backoff::new(start);
        assert_eq!(b.lost(start), Duration::from_secs(1));
        b.attempt();
        b.connected(start);
        assert_eq!(
            b.lost(start + Duration::from_secs(1)),
            Duration::from_secs(2)
        );
        b.attempt();
        b.connected(start);
        assert_eq!(
            b.lost(start + STABLE_CONNECTION),
            FIRST_DELAY,
            "one that lasted does"
        );
    }
}
