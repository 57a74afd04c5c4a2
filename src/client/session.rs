//! The chat itself, once logged in: the loop both modes share.
//!
//! It reads the user's lines from a channel (fed by the line editor on a terminal, by
//! stdin in scripted mode), turns them into requests, and shows what the server sends
//! through an [`Output`]. It keeps the promise of scripted mode, "quit only after the
//! server echoed what it sent": every `say` stays *in flight* until the server's copy
//! from our own name comes back (or an `error` refuses it), and `/quit` or end of input
//! waits for that. When the connection drops it says so in one line and reconnects with
//! backoff (never faster than once a second, and not starting over for a connection
//! that drops right after it came back), resuming with the token; says that were in
//! flight are resent unless the replayed history shows they arrived. `kicked` ends the
//! session; `shutdown` ends it too in scripted mode, while a person waits for the
//! server to come back. A frame too large or malformed ends the connection, and a
//! script.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::args::ServerAddr;
use super::connection::{AuthReply, Connection, ConnectionError, Ended};
use super::display::{self, auth_error_sentence, HELP};
use super::tokens::TokenStore;
use crate::protocol::{
    AuthErrorCode, ChatMessage, ClientMessage, ErrorCode, ServerMessage, MAX_TEXT_CHARS,
};

/// How long after sending `quit`/`logout` we keep reading for the server to close.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// First pause before reconnecting; doubled after each attempt that does not last.
const RECONNECT_FIRST_DELAY: Duration = Duration::from_secs(1);

/// A connection that stayed up this long was a good one: the next loss starts the
/// backoff over. One dropped sooner (a server that lets us in and fails again at once)
/// keeps the delay growing.
const STABLE_CONNECTION: Duration = Duration::from_secs(30);

/// Longest pause between reconnection attempts.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(30);

/// How long a reconnection waits for the server's greeting. A paused server does not
/// greet; we try again later rather than hang while the user may want to `/quit`.
const RECONNECT_WELCOME_TIMEOUT: Duration = Duration::from_secs(30);

/// After this long without sending anything, send a `ping`: the server closes
/// connections idle for `--idle-timeout` (300 s by default), and a person may read for
/// longer than that without typing.
/// A server that has not answered a `ping` within the same time is gone (a network
/// change or a sleeping laptop leaves a dead connection that only this reveals).
pub const PING_INTERVAL: Duration = Duration::from_secs(30);

/// First wait before resending a `say` the server refused with `rate_limited`; the
/// server's bucket refills at a steady rate, so short waits suffice.
const RATE_LIMIT_FIRST_DELAY: Duration = Duration::from_millis(100);

/// Where the session's lines go. Every line is already printable (escaped).
pub trait Output: Send {
    /// Chat content: history, messages, joins, leaves.
    fn chat(&mut self, line: &str);
    /// Answers to commands: `/who`, `/help`.
    fn info(&mut self, line: &str) {
        self.chat(line);
    }
    /// The client's own status and error reports.
    fn notice(&mut self, line: &str);
}

/// How the session behaves; the two modes differ only here.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Most `say`s in flight at once; `None` for no limit. Scripted mode sends one at a
    /// time, so a refused message can be resent without reordering the chat.
    pub window: Option<usize>,
    /// Resend a `say` refused with `rate_limited` (scripted) instead of dropping it
    /// with a notice (terminal: the person sees it and decides).
    pub retry_rate_limited: bool,
    /// Give up after this many failed reconnection attempts; `None` to keep trying.
    pub max_reconnects: Option<u32>,
    /// A `say` not echoed within this time counts as lost.
    pub ack_timeout: Duration,
    /// A lost `say` ends the session as a failure (scripted) rather than with a notice.
    pub fail_on_ack_timeout: bool,
    /// Quiet time before a `ping`, and how long its answer may take.
    pub ping_interval: Duration,
    /// After `shutdown`, wait for the server to come back (a person) rather than end
    /// the session (a script).
    pub reconnect_after_shutdown: bool,
    /// A frame too large or malformed ends the session as a failure (scripted) rather
    /// than the connection only.
    pub fail_on_bad_frame: bool,
}

/// How the session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `/quit` or end of input, every message acknowledged.
    Quit,
    /// `/logout`: the token was revoked and forgotten.
    LoggedOut,
    /// `shutdown` or `kicked`.
    Ended(Ended),
    /// Something went wrong that the user must hear about; the sentence says what.
    Failed(String),
}

/// One line the user typed, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Say(String),
    Who,
    Quit,
    Logout,
    Help,
    /// Nothing to send (an empty line).
    Nothing,
    /// `/x` that is no command: the word, for the hint.
    Unknown(String),
    /// A message over the server's limit: its length in characters.
    TooLong(usize),
}

/// Parses one line. `/cmd` is a command (case-insensitive, extra words ignored); `//x`
/// sends `/x`; a blank line is nothing.
pub fn parse_input(line: &str) -> Input {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Input::Nothing;
    }
    if let Some(rest) = line.strip_prefix('/') {
        if !rest.starts_with('/') {
            let word = rest.split_whitespace().next().unwrap_or("").to_lowercase();
            return match word.as_str() {
                "who" => Input::Who,
                "quit" | "exit" => Input::Quit,
                "logout" => Input::Logout,
                "help" | "?" => Input::Help,
                _ => Input::Unknown(word),
            };
        }
        return say(rest);
    }
    say(line)
}

fn say(text: &str) -> Input {
    let chars = text.chars().count();
    if chars > MAX_TEXT_CHARS {
        Input::TooLong(chars)
    } else {
        Input::Say(text.to_string())
    }
}

/// A request waiting its turn, in the order the user typed it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outgoing {
    Say(String),
    Who,
    Quit,
    Logout,
}

/// A `say` sent and not yet echoed.
#[derive(Debug)]
struct InFlight {
    text: String,
    sent: Instant,
}

/// What woke the loop up.
enum Event {
    Server(Result<Option<ServerMessage>, ConnectionError>),
    Line(Option<String>),
    Timer,
}

/// A logged-in session and everything it tracks.
pub struct Session<O: Output> {
    server: ServerAddr,
    tokens: TokenStore,
    /// Our name as the server spells it (from `auth_ok`), to recognise our echoes.
    name: String,
    out: O,
    policy: Policy,
    conn: Option<Connection>,
    pending: VecDeque<Outgoing>,
    in_flight: VecDeque<InFlight>,
    /// Says at the front of `pending` that were in flight when the connection dropped:
    /// the replayed history may show they arrived.
    maybe_delivered: usize,
    /// Highest message id shown, so a replayed history shows only what is new.
    last_id: u64,
    input_closed: bool,
    /// Says refused by the server (counted, so scripted mode can fail at the end).
    refused: usize,
    /// No sending before this instant (after `rate_limited`).
    hold_until: Option<Instant>,
    rate_limit_delay: Duration,
    reconnect_at: Instant,
    /// Connections lost in a row without one lasting [`STABLE_CONNECTION`].
    reconnect_attempts: u32,
    /// When the current connection came up.
    connected_at: Instant,
    /// When we last sent anything, to know when a `ping` is due.
    last_sent: Instant,
    /// When the `ping` we are waiting on went out; any frame from the server clears it.
    ping_sent: Option<Instant>,
}

impl<O: Output> Session<O> {
    /// A session on a freshly authenticated connection whose `history` is next.
    pub fn new(
        conn: Connection,
        server: ServerAddr,
        tokens: TokenStore,
        name: String,
        out: O,
        policy: Policy,
    ) -> Self {
        Session {
            server,
            tokens,
            name,
            out,
            policy,
            conn: Some(conn),
            pending: VecDeque::new(),
            in_flight: VecDeque::new(),
            maybe_delivered: 0,
            last_id: 0,
            input_closed: false,
            refused: 0,
            hold_until: None,
            rate_limit_delay: RATE_LIMIT_FIRST_DELAY,
            reconnect_at: Instant::now(),
            reconnect_attempts: 0,
            connected_at: Instant::now(),
            last_sent: Instant::now(),
            ping_sent: None,
        }
    }

    /// The name the session is logged in as.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Says the server refused during the session.
    pub fn refused(&self) -> usize {
        self.refused
    }

    /// Says typed but not acknowledged: queued, or sent and not yet echoed.
    pub fn unacknowledged(&self) -> usize {
        let queued = self
            .pending
            .iter()
            .filter(|o| matches!(o, Outgoing::Say(_)))
            .count();
        queued + self.in_flight.len()
    }

    /// Runs the chat until the user leaves, the server ends it, or it fails. `lines`
    /// ending counts as `/quit`.
    pub async fn run(&mut self, lines: &mut mpsc::Receiver<String>) -> Outcome {
        loop {
            if let Some(outcome) = self.send_ready().await {
                return outcome;
            }
            if self.conn.is_none() && Instant::now() >= self.reconnect_at {
                if let Some(outcome) = self.reconnect().await {
                    return outcome;
                }
                continue;
            }
            if let Some(outcome) = self.check_ack_timeout() {
                return outcome;
            }
            if let Some(outcome) = self.keep_alive().await {
                return outcome;
            }
            let event = self.next_event(lines).await;
            if matches!(event, Event::Server(Ok(Some(_)))) {
                self.ping_sent = None;
            }
            let outcome = match event {
                Event::Server(Ok(Some(message))) => self.on_server(message),
                Event::Server(Ok(None)) => self.on_lost("the server closed the connection"),
                Event::Server(Err(e))
                    if e.is_protocol_violation() && self.policy.fail_on_bad_frame =>
                {
                    Some(Outcome::Failed(e.to_string()))
                }
                Event::Server(Err(e)) => self.on_lost(&e.to_string()),
                Event::Line(Some(line)) => self.on_line(&line),
                Event::Line(None) => {
                    self.input_closed = true;
                    self.pending.push_back(Outgoing::Quit);
                    None
                }
                Event::Timer => None,
            };
            if let Some(outcome) = outcome {
                return outcome;
            }
        }
    }

    /// Waits for the server, the user, or the next deadline.
    async fn next_event(&mut self, lines: &mut mpsc::Receiver<String>) -> Event {
        let deadline = self.next_deadline();
        let input_open = !self.input_closed;
        match &mut self.conn {
            Some(conn) => tokio::select! {
                message = conn.recv() => Event::Server(message),
                line = lines.recv(), if input_open => Event::Line(line),
                _ = tokio::time::sleep_until(deadline) => Event::Timer,
            },
            None => tokio::select! {
                line = lines.recv(), if input_open => Event::Line(line),
                _ = tokio::time::sleep_until(deadline) => Event::Timer,
            },
        }
    }

    /// The earliest moment something must happen without input: a reconnection, the
    /// end of a rate-limit hold, or an acknowledgement deadline.
    fn next_deadline(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let mut deadline = far;
        if self.conn.is_none() {
            deadline = deadline.min(self.reconnect_at);
        } else if let Some(ping) = self.ping_sent {
            deadline = deadline.min(ping + self.policy.ping_interval);
        } else {
            deadline = deadline.min(self.last_sent + self.policy.ping_interval);
        }
        if let Some(hold) = self.hold_until {
            deadline = deadline.min(hold);
        }
        if let Some(first) = self.in_flight.front() {
            deadline = deadline.min(first.sent + self.policy.ack_timeout);
        }
        deadline
    }

    /// Handles a line the user typed.
    fn on_line(&mut self, line: &str) -> Option<Outcome> {
        match parse_input(line) {
            Input::Say(text) => {
                if self.conn.is_none() {
                    self.out
                        .notice("(not connected: the message will be sent once the connection is back)");
                }
                self.pending.push_back(Outgoing::Say(text));
            }
            Input::Who => self.pending.push_back(Outgoing::Who),
            Input::Quit => {
                self.input_closed = true;
                self.pending.push_back(Outgoing::Quit);
            }
            Input::Logout => {
                self.input_closed = true;
                self.pending.push_back(Outgoing::Logout);
            }
            Input::Help => {
                for line in HELP.lines() {
                    self.out.info(line);
                }
            }
            Input::Nothing => {}
            Input::Unknown(word) => self.out.notice(&format!(
                "Unknown command '/{}'; type /help for the commands (start with '//' to send a line beginning with '/').",
                display::printable(&word)
            )),
            Input::TooLong(chars) => {
                self.refused += 1;
                self.out.notice(&format!(
                    "Not sent: the message has {chars} characters, the limit is {MAX_TEXT_CHARS}."
                ));
            }
        }
        None
    }

    /// Sends what may be sent now: queued requests in order, while the window has room.
    /// `quit`/`logout` wait until every say is acknowledged, then end the session.
    async fn send_ready(&mut self) -> Option<Outcome> {
        if self.hold_until.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        self.hold_until = None;
        loop {
            let next = self.pending.front()?;
            let closing = matches!(next, Outgoing::Quit | Outgoing::Logout);
            if self.conn.is_none() {
                // Leaving needs no connection, once nothing is waiting for an echo.
                if closing && self.in_flight.is_empty() && self.pending.len() == 1 {
                    return Some(self.leave_offline());
                }
                return None;
            }
            let request = match next {
                Outgoing::Say(text) => {
                    if self
                        .policy
                        .window
                        .is_some_and(|w| self.in_flight.len() >= w)
                    {
                        return None;
                    }
                    ClientMessage::Say { text: text.clone() }
                }
                Outgoing::Who => ClientMessage::Who,
                Outgoing::Quit if self.in_flight.is_empty() => ClientMessage::Quit,
                Outgoing::Logout if self.in_flight.is_empty() => ClientMessage::Logout,
                Outgoing::Quit | Outgoing::Logout => return None,
            };
            let conn = self.conn.as_mut()?;
            if let Err(e) = conn.send(&request).await {
                return self.on_lost(&e.to_string());
            }
            self.last_sent = Instant::now();
            let sent = self.pending.pop_front()?;
            match sent {
                Outgoing::Say(text) => self.in_flight.push_back(InFlight {
                    text,
                    sent: Instant::now(),
                }),
                Outgoing::Who => {}
                Outgoing::Quit => return Some(self.finish(Outcome::Quit).await),
                Outgoing::Logout => {
                    self.forget_token();
                    return Some(self.finish(Outcome::LoggedOut).await);
                }
            }
        }
    }

    /// After `quit`/`logout` went out: show what the server still sends until it closes.
    async fn finish(&mut self, outcome: Outcome) -> Outcome {
        if let Some(mut conn) = self.conn.take() {
            let mut late = Vec::new();
            conn.drain(CLOSE_GRACE, |message| late.push(message)).await;
            for message in late {
                // A `shutdown` racing our `quit` changes nothing: we were leaving anyway.
                let _ = self.on_server(message);
            }
        }
        outcome
    }

    /// `/quit` or `/logout` while disconnected. A logout cannot revoke the token on the
    /// server now, but the client forgets it.
    fn leave_offline(&mut self) -> Outcome {
        match self.pending.pop_front() {
            Some(Outgoing::Logout) => {
                self.forget_token();
                Outcome::LoggedOut
            }
            _ => Outcome::Quit,
        }
    }

    /// Pings the server when we have been quiet a while, and calls the connection lost
    /// when a ping goes unanswered.
    async fn keep_alive(&mut self) -> Option<Outcome> {
        let conn = self.conn.as_mut()?;
        if let Some(ping) = self.ping_sent {
            if ping.elapsed() >= self.policy.ping_interval {
                return self.on_lost("the server stopped answering");
            }
            return None;
        }
        if self.last_sent.elapsed() < self.policy.ping_interval {
            return None;
        }
        if let Err(e) = conn.send(&ClientMessage::Ping).await {
            return self.on_lost(&e.to_string());
        }
        self.last_sent = Instant::now();
        self.ping_sent = Some(self.last_sent);
        None
    }

    /// Fails (scripted) or gives up on (terminal) a say the server has not echoed in time.
    fn check_ack_timeout(&mut self) -> Option<Outcome> {
        let first = self.in_flight.front()?;
        if first.sent.elapsed() < self.policy.ack_timeout {
            return None;
        }
        let secs = self.policy.ack_timeout.as_secs();
        if self.policy.fail_on_ack_timeout {
            return Some(Outcome::Failed(format!(
                "the server did not acknowledge a message within {secs} s"
            )));
        }
        self.in_flight.pop_front();
        self.out.notice(&format!(
            "The server did not echo a message within {secs} s; it may not have arrived."
        ));
        None
    }

    /// Handles one message from the server.
    fn on_server(&mut self, message: ServerMessage) -> Option<Outcome> {
        match message {
            ServerMessage::History { messages } => {
                for entry in messages {
                    let crate::protocol::HistoryEntry::Message(m) = entry;
                    self.on_history_message(m);
                }
                self.maybe_delivered = 0;
            }
            ServerMessage::Message(m) => self.on_message(m),
            ServerMessage::Joined { name } => self.out.chat(&display::presence_line(&name, true)),
            ServerMessage::Left { name } => self.out.chat(&display::presence_line(&name, false)),
            ServerMessage::Who { users } => self.out.info(&display::who_line(&users)),
            ServerMessage::Error { code, message } => self.on_error(code, &message),
            ServerMessage::Shutdown { message } => {
                let ended = Ended::Shutdown(message);
                if self.policy.reconnect_after_shutdown {
                    return self.on_lost_because(&ended.to_string());
                }
                self.conn = None;
                return Some(Outcome::Ended(ended));
            }
            ServerMessage::Kicked { message } => {
                self.conn = None;
                return Some(Outcome::Ended(Ended::Kicked(message)));
            }
            ServerMessage::Welcome { .. }
            | ServerMessage::AuthOk { .. }
            | ServerMessage::AuthError { .. }
            | ServerMessage::Pong => {}
        }
        None
    }

    /// A replayed message: shown if new; after a reconnection it may confirm a say
    /// that was in flight when the connection dropped.
    fn on_history_message(&mut self, m: ChatMessage) {
        if m.id <= self.last_id && self.last_id != 0 {
            return;
        }
        if self.maybe_delivered > 0
            && m.from == self.name
            && self.pending.front() == Some(&Outgoing::Say(m.text.clone()))
        {
            self.pending.pop_front();
            self.maybe_delivered -= 1;
        }
        self.show(&m);
    }

    /// A live message; our own acknowledges the oldest say in flight.
    fn on_message(&mut self, m: ChatMessage) {
        if m.id <= self.last_id && self.last_id != 0 {
            return;
        }
        // Compare the text too: the same user may also be online from elsewhere.
        if m.from == self.name && self.in_flight.front().is_some_and(|f| f.text == m.text) {
            self.in_flight.pop_front();
            self.rate_limit_delay = RATE_LIMIT_FIRST_DELAY;
        }
        self.show(&m);
    }

    fn show(&mut self, m: &ChatMessage) {
        self.last_id = self.last_id.max(m.id);
        self.out.chat(&display::message_line(m));
    }

    /// An `error` frame. After login only a `say` can be refused, and the server
    /// answers in order, so it concerns the oldest say in flight.
    fn on_error(&mut self, code: ErrorCode, message: &str) {
        let refused_say = matches!(code, ErrorCode::RateLimited | ErrorCode::BadRequest)
            .then(|| self.in_flight.pop_front())
            .flatten();
        match (code, refused_say) {
            (ErrorCode::RateLimited, Some(say)) if self.policy.retry_rate_limited => {
                self.pending.push_front(Outgoing::Say(say.text));
                self.hold_until = Some(Instant::now() + self.rate_limit_delay);
                self.rate_limit_delay = (self.rate_limit_delay * 2).min(Duration::from_secs(2));
            }
            (ErrorCode::RateLimited, Some(say)) => {
                self.refused += 1;
                self.out.notice(&format!(
                    "Not sent, you are sending too fast: {}",
                    display::printable(&say.text)
                ));
            }
            (_, Some(say)) => {
                self.refused += 1;
                self.out.notice(&format!(
                    "The server refused the message '{}': {}",
                    display::printable(&say.text),
                    display::printable(message)
                ));
            }
            (_, None) => self
                .out
                .notice(&format!("Server error: {}", display::printable(message))),
        }
    }

    /// The connection dropped: say so and plan a reconnection. Says in flight go back
    /// to the front of the queue.
    fn on_lost(&mut self, why: &str) -> Option<Outcome> {
        self.on_lost_because(&format!("Lost the connection to {} ({why})", self.server))
    }

    /// [`Session::on_lost`] with the whole reason as a sentence.
    fn on_lost_because(&mut self, sentence: &str) -> Option<Outcome> {
        self.conn = None;
        self.ping_sent = None;
        if self.connected_at.elapsed() >= STABLE_CONNECTION {
            self.reconnect_attempts = 0;
        }
        let delay = self.backoff();
        self.out.notice(&format!(
            "{sentence}; reconnecting in {} s.",
            delay.as_secs()
        ));
        let unconfirmed = self.in_flight.len();
        while let Some(say) = self.in_flight.pop_back() {
            self.pending.push_front(Outgoing::Say(say.text));
        }
        self.maybe_delivered = unconfirmed;
        self.reconnect_at = Instant::now() + delay;
        None
    }

    /// The pause before the next attempt: [`RECONNECT_FIRST_DELAY`] doubled for every
    /// attempt in a row so far, at most [`RECONNECT_MAX_DELAY`].
    fn backoff(&self) -> Duration {
        RECONNECT_FIRST_DELAY
            .saturating_mul(1 << self.reconnect_attempts.min(8))
            .min(RECONNECT_MAX_DELAY)
    }

    /// Forgets our token (after `/logout`); a file that cannot be written is a warning.
    fn forget_token(&mut self) {
        if let Err(e) = self.tokens.forget(&self.name) {
            self.out.notice(&format!("warning: {e}"));
        }
    }

    /// One reconnection attempt: connect, wait for the greeting, resume with the
    /// token. On failure, schedules the next attempt with a doubled delay, or gives up.
    async fn reconnect(&mut self) -> Option<Outcome> {
        self.reconnect_attempts += 1;
        let Some(token) = self.tokens.token_for(&self.name).map(str::to_string) else {
            return Some(Outcome::Failed(
                "the connection was lost and there is no session token to resume with; start echochat again to log in".into(),
            ));
        };
        let error = match self.try_resume(&token).await {
            Ok(conn) => {
                self.conn = Some(conn);
                self.connected_at = Instant::now();
                self.last_sent = Instant::now();
                self.out.notice(&format!("Reconnected to {}.", self.server));
                return None;
            }
            Err(ResumeError::Ended(Ended::Shutdown(_))) if self.policy.reconnect_after_shutdown => {
                "the server is shutting down".to_string()
            }
            Err(ResumeError::Ended(ended)) => return Some(Outcome::Ended(ended)),
            Err(ResumeError::Refused(code)) if code != AuthErrorCode::RateLimited => {
                if code == AuthErrorCode::InvalidToken {
                    self.forget_token();
                }
                return Some(Outcome::Failed(format!(
                    "could not resume the session: {} Start echochat again to log in.",
                    auth_error_sentence(code, &self.name)
                )));
            }
            Err(ResumeError::Refused(code)) => auth_error_sentence(code, &self.name),
            Err(ResumeError::Connection(e))
                if e.is_protocol_violation() && self.policy.fail_on_bad_frame =>
            {
                return Some(Outcome::Failed(e.to_string()));
            }
            Err(ResumeError::Connection(e)) => e.to_string(),
        };
        if self
            .policy
            .max_reconnects
            .is_some_and(|max| self.reconnect_attempts >= max)
        {
            return Some(Outcome::Failed(format!(
                "could not reconnect to {}: {error}",
                self.server
            )));
        }
        let delay = self.backoff();
        self.out.notice(&format!(
            "Reconnection failed ({error}); next try in {} s.",
            delay.as_secs()
        ));
        self.reconnect_at = Instant::now() + delay;
        None
    }

    async fn try_resume(&mut self, token: &str) -> Result<Connection, ResumeError> {
        let mut conn = Connection::connect(&self.server).await?;
        conn.welcome(Some(RECONNECT_WELCOME_TIMEOUT)).await?;
        let request = ClientMessage::Resume {
            token: token.to_string(),
        };
        match conn.authenticate(&request).await? {
            AuthReply::Accepted { name, token, .. } => {
                if let Err(e) = self.tokens.save(&name, &token, None, false) {
                    self.out.notice(&format!("warning: {e}"));
                }
                self.name = name;
                Ok(conn)
            }
            AuthReply::Refused { code, .. } => Err(ResumeError::Refused(code)),
        }
    }
}

/// Why a reconnection did not resume the session.
enum ResumeError {
    Connection(ConnectionError),
    Refused(AuthErrorCode),
    Ended(Ended),
}

impl From<ConnectionError> for ResumeError {
    fn from(e: ConnectionError) -> Self {
        match e {
            ConnectionError::Ended(ended) => ResumeError::Ended(ended),
            other => ResumeError::Connection(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{encode_frame, FrameCodec};
    use bytes::Bytes;
    use futures_util::{SinkExt, StreamExt};
    use std::sync::{Arc, Mutex};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::codec::Framed;

    /// Collects what the session shows.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<String>>>);

    impl Output for Recorder {
        fn chat(&mut self, line: &str) {
            self.0.lock().unwrap().push(line.to_string());
        }
        fn notice(&mut self, line: &str) {
            self.0.lock().unwrap().push(format!("notice: {line}"));
        }
    }

    /// The server's end of a connection, speaking raw protocol messages.
    struct FakeServer(Framed<TcpStream, FrameCodec>);

    impl FakeServer {
        async fn send(&mut self, message: ServerMessage) {
            self.0.send(encode_frame(&message).unwrap()).await.unwrap();
        }

        /// The next request, or `None` if none comes within `limit`.
        async fn recv_within(&mut self, limit: Duration) -> Option<ClientMessage> {
            let frame: Bytes = tokio::time::timeout(limit, self.0.next())
                .await
                .ok()??
                .ok()?;
            Some(ClientMessage::parse(&frame).unwrap())
        }

        async fn recv(&mut self) -> ClientMessage {
            self.recv_within(Duration::from_secs(10))
                .await
                .expect("a request from the client")
        }
    }

    fn policy(window: Option<usize>, ping_interval: Duration) -> Policy {
        Policy {
            window,
            retry_rate_limited: window.is_some(),
            max_reconnects: Some(1),
            ack_timeout: Duration::from_secs(10),
            fail_on_ack_timeout: true,
            ping_interval,
            reconnect_after_shutdown: false,
            fail_on_bad_frame: true,
        }
    }

    /// A session for "me" connected to a fake server, its line sender and what it shows.
    async fn session(
        policy: Policy,
    ) -> (
        Session<Recorder>,
        FakeServer,
        mpsc::Sender<String>,
        mpsc::Receiver<String>,
        Recorder,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = ServerAddr {
            host: "127.0.0.1".into(),
            port,
        };
        let conn = Connection::connect(&server).await.unwrap();
        let (socket, _) = listener.accept().await.unwrap();
        let fake = FakeServer(Framed::new(socket, FrameCodec::new(1 << 20)));
        let (tokens, _) = TokenStore::open(None, server.token_key());
        let out = Recorder::default();
        let session = Session::new(conn, server, tokens, "me".into(), out.clone(), policy);
        let (tx, rx) = mpsc::channel(16);
        (session, fake, tx, rx, out)
    }

    fn echo(id: u64, text: &str) -> ServerMessage {
        ServerMessage::Message(ChatMessage {
            id,
            from: "me".into(),
            text: text.into(),
            ts: 0,
        })
    }

    #[tokio::test]
    async fn says_go_one_at_a_time_and_quit_waits_for_the_last_echo() {
        let (mut session, mut server, tx, mut rx, out) =
            session(policy(Some(1), PING_INTERVAL)).await;
        let client = tokio::spawn(async move { (session.run(&mut rx).await, session) });
        for line in ["one", "two"] {
            tx.send(line.into()).await.unwrap();
        }
        drop(tx);
        server
            .send(ServerMessage::History { messages: vec![] })
            .await;
        assert_eq!(
            server.recv().await,
            ClientMessage::Say { text: "one".into() }
        );
        assert_eq!(
            server.recv_within(Duration::from_millis(300)).await,
            None,
            "the second say waits for the first echo"
        );
        server.send(echo(1, "one")).await;
        assert_eq!(
            server.recv().await,
            ClientMessage::Say { text: "two".into() }
        );
        assert_eq!(
            server.recv_within(Duration::from_millis(300)).await,
            None,
            "quit waits for the last echo"
        );
        server.send(echo(2, "two")).await;
        assert_eq!(server.recv().await, ClientMessage::Quit);
        drop(server);
        let (outcome, session) = client.await.unwrap();
        assert_eq!(outcome, Outcome::Quit);
        assert_eq!(session.unacknowledged(), 0);
        let shown = out.0.lock().unwrap().clone();
        assert!(shown[0].ends_with("] me: one"), "{shown:?}");
        assert!(shown[1].ends_with("] me: two"), "{shown:?}");
    }

    #[tokio::test]
    async fn a_rate_limited_say_is_resent_in_scripted_mode() {
        let (mut session, mut server, tx, mut rx, _out) =
            session(policy(Some(1), PING_INTERVAL)).await;
        let client = tokio::spawn(async move { session.run(&mut rx).await });
        tx.send("again".into()).await.unwrap();
        drop(tx);
        assert_eq!(
            server.recv().await,
            ClientMessage::Say {
                text: "again".into()
            }
        );
        server
            .send(ServerMessage::error(ErrorCode::RateLimited, "slow down"))
            .await;
        assert_eq!(
            server.recv().await,
            ClientMessage::Say {
                text: "again".into()
            }
        );
        server.send(echo(1, "again")).await;
        assert_eq!(server.recv().await, ClientMessage::Quit);
        drop(server);
        assert_eq!(client.await.unwrap(), Outcome::Quit);
    }

    #[tokio::test]
    async fn a_quiet_session_pings_and_a_silent_server_counts_as_gone() {
        let (mut session, mut server, _tx, mut rx, out) =
            session(policy(None, Duration::from_millis(200))).await;
        let client = tokio::spawn(async move { session.run(&mut rx).await });
        assert_eq!(server.recv().await, ClientMessage::Ping);
        server.send(ServerMessage::Pong).await;
        assert_eq!(
            server.recv().await,
            ClientMessage::Ping,
            "pings go on while quiet"
        );
        // No answer this time: the connection is given up; with no token to resume
        // with, the session fails.
        let outcome = tokio::time::timeout(Duration::from_secs(10), client)
            .await
            .expect("session ends")
            .unwrap();
        assert!(
            matches!(&outcome, Outcome::Failed(why) if why.contains("no session token")),
            "{outcome:?}"
        );
        let shown = out.0.lock().unwrap().clone();
        assert!(
            shown.iter().any(|l| l.contains("stopped answering")),
            "{shown:?}"
        );
        drop(server);
    }

    #[tokio::test]
    async fn kicked_ends_the_session() {
        let (mut session, mut server, _tx, mut rx, _out) =
            session(policy(None, PING_INTERVAL)).await;
        let client = tokio::spawn(async move { session.run(&mut rx).await });
        server
            .send(ServerMessage::Kicked {
                message: "bye".into(),
            })
            .await;
        assert_eq!(
            client.await.unwrap(),
            Outcome::Ended(Ended::Kicked("bye".into()))
        );
    }

    #[test]
    fn lines_become_inputs() {
        assert_eq!(parse_input("hello"), Input::Say("hello".into()));
        assert_eq!(parse_input("  spaced  "), Input::Say("  spaced  ".into()));
        assert_eq!(parse_input(""), Input::Nothing);
        assert_eq!(parse_input("   "), Input::Nothing);
        assert_eq!(parse_input("/who"), Input::Who);
        assert_eq!(parse_input("/WHO now"), Input::Who);
        assert_eq!(parse_input("/quit"), Input::Quit);
        assert_eq!(parse_input("/logout"), Input::Logout);
        assert_eq!(parse_input("/help"), Input::Help);
        assert_eq!(parse_input("/dance"), Input::Unknown("dance".into()));
        assert_eq!(parse_input("/"), Input::Unknown(String::new()));
        assert_eq!(parse_input("//who"), Input::Say("/who".into()));
        assert_eq!(parse_input("hi\r\n"), Input::Say("hi".into()));
        assert_eq!(
            parse_input(&"x".repeat(MAX_TEXT_CHARS)),
            Input::Say("x".repeat(MAX_TEXT_CHARS))
        );
        assert_eq!(
            parse_input(&"é".repeat(MAX_TEXT_CHARS + 1)),
            Input::TooLong(MAX_TEXT_CHARS + 1)
        );
    }
}
