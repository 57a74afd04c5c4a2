//! The chat itself, once logged in: the event loop both modes share.
//!
//! It reads the user's lines from a channel (fed by the line editor on a terminal, by
//! stdin in scripted mode), understands them ([`commands`](super::commands)), queues
//! the requests ([`SendQueue`]) and shows what the server sends through an
//! [`Output`]. Typed lines go to the current room ([`RoomView`]), the lobby until a
//! `/join`; a line from another room or a direct message is marked as such. It keeps
//! the promise of scripted mode, "quit only after the server echoed what it sent":
//! `/quit` and end of input wait until nothing is in flight, direct messages included
//! (their echo is the `message` with `to`).
//! When the connection drops it says so in one line and reconnects with backoff
//! ([`Backoff`]), resuming with the token as the login does; says that were in flight
//! are resent unless the replayed history shows they arrived; the rooms the account
//! is in come back with it (membership is the account's), and the current room is
//! kept. `kicked` ends the
//! session; `shutdown` ends it too in scripted mode, while a person waits for the
//! server to come back. A frame too large or malformed ends the connection, and a
//! script.
//!
//! The questions of `/password` and `/delete-account` are in [`forms`]; what the server
//! sends is handled in [`inbound`].

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::args::ServerAddr;
use super::commands::{help_lines, parse_input, Command, Input};
use super::connection::{Connection, ConnectionError, Ended};
use super::display::printable;
use super::queue::{is_lobby, Outgoing, SendQueue, Target};
use super::reconnect::{self, Attempt, Backoff};
use super::rooms::RoomView;
use super::tls::Connector;
use super::tokens::TokenStore;
use crate::protocol::{ClientMessage, ServerMessage, MAX_TEXT_CHARS};

mod forms;
mod inbound;

use forms::Form;

/// How long after sending `quit`/`logout` we keep reading for the server to close.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The history the server replays at login ends where the answer to a `ping` sent
/// after `auth_ok` arrives (the server queues the history with the `auth_ok`); a
/// server that does not answer it is waited for this long before requests go out.
const REPLAY_PATIENCE: Duration = Duration::from_secs(5);

/// After this long without sending anything, send a `ping`: the server closes
/// connections idle for `--idle-timeout` (300 s by default), and a person may read for
/// longer than that without typing.
/// A server that has not answered a `ping` within the same time is gone (a network
/// change or a sleeping laptop leaves a dead connection that only this reveals).
pub const PING_INTERVAL: Duration = Duration::from_secs(30);

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
    /// The current room changed (a prompt shows it).
    fn room_changed(&mut self, _room: &str) {}
    /// The next line answers a question (`label`); `hidden` for a password. A script
    /// is asked nothing: its next line is the answer.
    fn question(&mut self, _label: &str, _hidden: bool) {}
    /// The command asking questions is done: lines are chat again.
    fn questions_over(&mut self) {}
}

/// How the session behaves; the two modes differ only here.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Most `say`s in flight at once.
    pub window: usize,
    /// Give up after this many reconnection attempts in a row; `None` to keep trying.
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
    /// A person answers: a new password is typed twice and a deletion confirmed. A
    /// script gives each answer once, on the lines after the command.
    pub confirm: bool,
}

/// How the session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `/quit` or end of input, every message acknowledged.
    Quit,
    /// `/logout`: the token was revoked and forgotten.
    LoggedOut,
    /// `/delete-account`: the account is gone, and its token forgotten.
    AccountDeleted,
    /// `shutdown` or `kicked`.
    Ended(Ended),
    /// Something went wrong that the user must hear about; the sentence says what.
    Failed(String),
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
    /// TCP or TLS, for reconnecting.
    connector: Connector,
    tokens: TokenStore,
    /// Our name as the server spells it (from `auth_ok`), to recognise our echoes.
    name: String,
    out: O,
    policy: Policy,
    conn: Option<Connection>,
    queue: SendQueue,
    /// The current room, and what each room showed (a replayed history shows only
    /// what is new; `/history` pages back from the oldest).
    view: RoomView,
    /// The history replayed at login is taken to be over at this instant at the
    /// latest, if the `pong` that marks its end does not come.
    replay_until: Option<Instant>,
    /// The `ping` that marks the end of the replayed history is yet to be sent.
    replay_mark_due: bool,
    /// An account command reading its answers from the next lines.
    form: Option<Form>,
    input_closed: bool,
    backoff: Backoff,
    /// When to try reconnecting, while there is no connection.
    reconnect_at: Instant,
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
        connector: Connector,
        tokens: TokenStore,
        name: String,
        out: O,
        policy: Policy,
    ) -> Self {
        let now = Instant::now();
        Session {
            server,
            connector,
            tokens,
            name,
            out,
            queue: SendQueue::new(policy.window),
            policy,
            conn: Some(conn),
            view: RoomView::new(),
            replay_until: Some(now + REPLAY_PATIENCE),
            replay_mark_due: true,
            form: None,
            input_closed: false,
            backoff: Backoff::new(now),
            reconnect_at: now,
            last_sent: now,
            ping_sent: None,
        }
    }

    /// Says refused during the session (by the server, or as too long).
    pub fn refused(&self) -> usize {
        self.queue.refused()
    }

    /// Says typed but not acknowledged: queued, or sent and not yet echoed.
    pub fn unacknowledged(&self) -> usize {
        self.queue.unacknowledged()
    }

    /// The room typed lines go to.
    pub fn current_room(&self) -> &str {
        self.view.current()
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
            if self.replay_until.is_some_and(|t| Instant::now() >= t) {
                self.replay_over();
                continue;
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
                Event::Line(Some(line)) => {
                    self.on_line(&line);
                    None
                }
                Event::Line(None) => {
                    if self.form.take().is_some() {
                        self.out.questions_over();
                        self.queue.count_refused();
                        self.out.notice(
                            "The input ended before the command's answers; nothing was changed.",
                        );
                    }
                    self.leave(Outgoing::Quit);
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

    /// The earliest moment something must happen without input: a reconnection, a
    /// ping, the end of a rate-limit hold, or an acknowledgement deadline.
    fn next_deadline(&self) -> Instant {
        let mut deadline = Instant::now() + Duration::from_secs(3600);
        if self.conn.is_none() {
            deadline = deadline.min(self.reconnect_at);
        } else if let Some(ping) = self.ping_sent {
            deadline = deadline.min(ping + self.policy.ping_interval);
        } else {
            deadline = deadline.min(self.last_sent + self.policy.ping_interval);
        }
        if let Some(hold) = self.queue.held_until() {
            deadline = deadline.min(hold);
        }
        if let Some(sent) = self.queue.oldest_in_flight() {
            deadline = deadline.min(sent + self.policy.ack_timeout);
        }
        if let Some(replay) = self.replay_until {
            deadline = deadline.min(replay);
        }
        deadline
    }

    /// Handles a line the user typed.
    fn on_line(&mut self, line: &str) {
        if let Some(form) = self.form.take() {
            self.on_answer(form, line);
            if self.form.is_none() {
                self.out.questions_over();
            }
            return;
        }
        match parse_input(line) {
            Input::Say(text) => self.say(Target::Here, text),
            Input::Command(Command::Msg { to, text }) => self.say(Target::User(to), text),
            Input::Command(Command::Who) => self.queue.push(Outgoing::Who { room: None }),
            Input::Command(Command::Join(room)) => self.queue.push(Outgoing::Join(room)),
            Input::Command(Command::Part(room)) => self.queue.push(Outgoing::Part(room)),
            Input::Command(Command::Rooms) => self.queue.push(Outgoing::Rooms),
            Input::Command(Command::History) => self.queue.push(Outgoing::Page {
                room: None,
                before: None,
            }),
            Input::Command(Command::Password) => self.ask(Form::OldPassword),
            Input::Command(Command::DeleteAccount) => self.ask(Form::DeletePassword),
            Input::Command(Command::Quit) => self.leave(Outgoing::Quit),
            Input::Command(Command::Logout) => self.leave(Outgoing::Logout),
            Input::Command(Command::Help) => {
                for line in help_lines() {
                    self.out.info(&line);
                }
            }
            Input::Nothing => {}
            Input::Unknown(word) => self.out.notice(&format!(
                "Unknown command '/{}'; type /help for the commands (start with '//' to send a line beginning with '/').",
                printable(&word)
            )),
            Input::Usage(why) => self.out.notice(&printable(&why)),
            Input::TooLong(chars) => {
                self.queue.count_refused();
                self.out.notice(&format!(
                    "Not sent: the message has {chars} characters, the limit is {MAX_TEXT_CHARS}."
                ));
            }
        }
    }

    /// Queues a chat line for `target`.
    fn say(&mut self, target: Target, text: String) {
        if self.conn.is_none() {
            self.out
                .notice("(not connected: the message will be sent once the connection is back)");
        }
        self.queue.push(Outgoing::Say { text, target });
    }

    /// Queues the last request: nothing typed after it is read.
    fn leave(&mut self, how: Outgoing) {
        self.input_closed = true;
        self.queue.push(how);
    }

    /// Sends what may be sent now, in order. `quit`/`logout` end the session.
    async fn send_ready(&mut self) -> Option<Outcome> {
        loop {
            if self.conn.is_none() {
                // Leaving needs no connection, once nothing is waiting for an echo.
                return self.queue.leave_offline().map(|how| self.ended_by(&how));
            }
            if self.replay_mark_due {
                self.replay_mark_due = false;
                let conn = self.conn.as_mut()?;
                if let Err(e) = conn.send(&ClientMessage::Ping).await {
                    return self.on_lost(&e.to_string());
                }
                self.last_sent = Instant::now();
                self.ping_sent = Some(self.last_sent);
            }
            let view = &self.view;
            let next = self.queue.ready(Instant::now())?;
            next.resolve(view.current(), |room| view.oldest_in(room));
            if matches!(next, Outgoing::Part(Some(room)) if is_lobby(room)) {
                self.queue.discard();
                self.out
                    .notice("The lobby cannot be left: every account is in it.");
                continue;
            }
            let request = next.request();
            let conn = self.conn.as_mut()?;
            if let Err(e) = conn.send(&request).await {
                return self.on_lost(&e.to_string());
            }
            self.last_sent = Instant::now();
            let sent = self.queue.sent(self.last_sent)?;
            if sent.is_leaving() {
                let outcome = self.ended_by(&sent);
                return Some(self.finish(outcome).await);
            }
        }
    }

    /// The outcome of a `quit` or `logout`; a logout forgets the token here, even when
    /// it could not reach the server.
    fn ended_by(&mut self, how: &Outgoing) -> Outcome {
        if *how == Outgoing::Logout {
            self.tokens.forget(&self.name);
            Outcome::LoggedOut
        } else {
            Outcome::Quit
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
        let sent = self.queue.oldest_in_flight()?;
        if sent.elapsed() < self.policy.ack_timeout {
            return None;
        }
        let secs = self.policy.ack_timeout.as_secs();
        if self.policy.fail_on_ack_timeout {
            let what = match self.queue.awaiting() {
                Some(Outgoing::Say { .. }) => "acknowledge a message",
                _ => "answer a command",
            };
            return Some(Outcome::Failed(format!(
                "the server did not {what} within {secs} s"
            )));
        }
        let what = match self.queue.drop_oldest() {
            Some(Outgoing::Say { .. }) => {
                format!(
                    "The server did not echo a message within {secs} s; it may not have arrived."
                )
            }
            _ => format!("The server did not answer a command within {secs} s."),
        };
        self.out.notice(&what);
        None
    }

    /// The connection dropped: say so and plan a reconnection.
    fn on_lost(&mut self, why: &str) -> Option<Outcome> {
        self.on_lost_because(&format!("Lost the connection to {} ({why})", self.server))
    }

    /// [`Session::on_lost`] with the whole reason as a sentence. Says in flight go
    /// back to the front of the queue.
    fn on_lost_because(&mut self, sentence: &str) -> Option<Outcome> {
        self.conn = None;
        self.ping_sent = None;
        let delay = self.backoff.lost(Instant::now());
        self.out.notice(&format!(
            "{sentence}; reconnecting in {} s.",
            delay.as_secs()
        ));
        match self.queue.requeue_in_flight() {
            Some(Outgoing::ChangePassword { .. }) => self.out.notice(
                "The connection dropped before the server answered: your password may or may not have changed.",
            ),
            Some(Outgoing::DeleteAccount(_)) => self.out.notice(
                "The connection dropped before the server answered: the account may or may not have been deleted.",
            ),
            _ => {}
        }
        self.reconnect_at = Instant::now() + delay;
        None
    }

    /// One reconnection attempt ([`reconnect::attempt`]). On failure, schedules the
    /// next one after the backoff, or gives up.
    async fn reconnect(&mut self) -> Option<Outcome> {
        let attempts = self.backoff.attempt();
        let rules = reconnect::Rules {
            shutdown_is_temporary: self.policy.reconnect_after_shutdown,
            bad_frame_is_fatal: self.policy.fail_on_bad_frame,
        };
        let attempt = reconnect::attempt(
            &self.server,
            &self.connector,
            &mut self.tokens,
            &self.name,
            rules,
        );
        let why = match attempt.await {
            Attempt::Resumed(conn, name) => {
                self.conn = Some(conn);
                self.name = name;
                self.backoff.connected(Instant::now());
                self.last_sent = Instant::now();
                self.queue.replay_starts();
                self.replay_mark_due = true;
                self.replay_until = Some(Instant::now() + REPLAY_PATIENCE);
                self.out.notice(&format!("Reconnected to {}.", self.server));
                return None;
            }
            Attempt::Ended(ended) => return Some(Outcome::Ended(ended)),
            Attempt::GiveUp(why) => return Some(Outcome::Failed(why)),
            Attempt::Retry(why) => why,
        };
        if self
            .policy
            .max_reconnects
            .is_some_and(|max| attempts >= max)
        {
            return Some(Outcome::Failed(format!(
                "could not reconnect to {}: {why}",
                self.server
            )));
        }
        let delay = self.backoff.delay();
        self.out.notice(&format!(
            "Reconnection failed ({why}); next try in {} s.",
            delay.as_secs()
        ));
        self.reconnect_at = Instant::now() + delay;
        None
    }
}

#[cfg(test)]
mod tests;
