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

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::args::ServerAddr;
use super::commands::{help_lines, parse_input, Command, Input};
use super::connection::{Connection, ConnectionError, Ended};
use super::display::{self, printable};
use super::login;
use super::queue::{is_lobby, same_room, Outgoing, Refusal, Secret, SendQueue, Stream, Target};
use super::reconnect::{self, Attempt, Backoff};
use super::rooms::RoomView;
use super::tls::Connector;
use super::tokens::TokenStore;
use crate::protocol::{
    ChatMessage, ClientMessage, ErrorCode, HistoryEntry, ServerMessage, LOBBY, MAX_TEXT_CHARS,
};
use crate::text::plural;

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

/// An account command waiting for the next typed line, which is never chat.
#[derive(Debug)]
enum Form {
    /// `/password`: the current password.
    OldPassword,
    NewPassword {
        old: Secret,
    },
    RepeatPassword {
        old: Secret,
        new: Secret,
    },
    /// `/delete-account`: the password, then (a person) the confirmation.
    DeletePassword,
    ConfirmDelete {
        password: Secret,
    },
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

    /// Asks what `form` needs next; the next line is its answer.
    fn ask(&mut self, form: Form) {
        let (label, hidden) = match &form {
            Form::OldPassword => ("Current password (Enter alone cancels): ".to_string(), true),
            Form::NewPassword { .. } => ("New password: ".to_string(), true),
            Form::RepeatPassword { .. } => ("Repeat the new password: ".to_string(), true),
            Form::DeletePassword => (
                "Password to delete your account (Enter alone cancels): ".to_string(),
                true,
            ),
            Form::ConfirmDelete { .. } => (
                format!(
                    "Delete the account '{}' and its saved session for good? Type yes to confirm: ",
                    printable(&self.name)
                ),
                false,
            ),
        };
        self.out.question(&label, hidden);
        self.form = Some(form);
    }

    /// A line answering `form`. An empty one cancels; a password change or a deletion
    /// that is not sent counts as refused (a script fails at the end).
    fn on_answer(&mut self, form: Form, line: &str) {
        let cancelled = |what: &str| format!("Cancelled: {what}.");
        if line.is_empty() {
            self.queue.count_refused();
            let what = match form {
                Form::DeletePassword | Form::ConfirmDelete { .. } => "the account was not deleted",
                _ => "your password was not changed",
            };
            self.out.notice(&cancelled(what));
            return;
        }
        let answer = Secret(line.to_string());
        match form {
            Form::OldPassword => self.ask(Form::NewPassword { old: answer }),
            Form::NewPassword { old } => match login::password_problem(line) {
                Some(problem) if self.policy.confirm => {
                    self.out.notice(&problem);
                    self.ask(Form::NewPassword { old });
                }
                Some(problem) => {
                    self.queue.count_refused();
                    self.out
                        .notice(&format!("{problem} Your password was not changed."));
                }
                None if self.policy.confirm => self.ask(Form::RepeatPassword { old, new: answer }),
                None => self
                    .queue
                    .push(Outgoing::ChangePassword { old, new: answer }),
            },
            Form::RepeatPassword { old, new } => {
                if new == answer {
                    self.queue.push(Outgoing::ChangePassword { old, new });
                } else {
                    self.out
                        .notice("The two passwords differ; type the new one again.");
                    self.ask(Form::NewPassword { old });
                }
            }
            Form::DeletePassword if self.policy.confirm => {
                self.ask(Form::ConfirmDelete { password: answer })
            }
            Form::DeletePassword => self.queue.push(Outgoing::DeleteAccount(answer)),
            Form::ConfirmDelete { password } => {
                if matches!(line.trim().to_lowercase().as_str(), "yes" | "y") {
                    self.queue.push(Outgoing::DeleteAccount(password));
                } else {
                    self.queue.count_refused();
                    self.out.notice(&cancelled("the account was not deleted"));
                }
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

    /// Handles one message from the server.
    fn on_server(&mut self, message: ServerMessage) -> Option<Outcome> {
        match message {
            ServerMessage::History {
                room,
                direct,
                with,
                messages,
            } => {
                let messages = messages.into_iter().map(|HistoryEntry::Message(m)| m);
                let stream = match (&room, direct, &with) {
                    (_, Some(true), _) | (_, _, Some(_)) => Stream::Direct,
                    (room, _, _) => Stream::room(room.as_deref().unwrap_or(LOBBY)),
                };
                self.on_history(stream, with.is_some(), messages.collect());
            }
            ServerMessage::Message(m) => {
                // Our echo is shown whatever its id: it is the line we typed.
                let ours = self.queue.on_message(&m, &self.name);
                if ours || self.view.is_new(&m) {
                    self.show(&m);
                }
            }
            ServerMessage::Joined { name } => self.out.chat(&display::presence_line(&name, true)),
            ServerMessage::Left { name } => self.out.chat(&display::presence_line(&name, false)),
            ServerMessage::Who { room, users } => {
                if matches!(self.queue.awaiting(), Some(Outgoing::Who { .. })) {
                    self.queue.answered();
                }
                self.out.info(&display::who_line(room.as_deref(), &users));
            }
            ServerMessage::Room { room, members } => self.on_room(&room, &members),
            ServerMessage::Parted { room } => self.on_parted(&room),
            ServerMessage::MemberJoined { room, name } => {
                self.out.chat(&display::member_line(&room, &name, true))
            }
            ServerMessage::MemberLeft { room, name } => {
                self.out.chat(&display::member_line(&room, &name, false))
            }
            ServerMessage::Rooms { rooms } => {
                if self.queue.awaiting() == Some(&Outgoing::Rooms) {
                    self.queue.answered();
                }
                for line in display::rooms_lines(&rooms, self.view.current()) {
                    self.out.info(&line);
                }
            }
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
            ServerMessage::PasswordChanged { token } => self.on_password_changed(&token),
            ServerMessage::AccountDeleted => {
                if matches!(self.queue.awaiting(), Some(Outgoing::DeleteAccount(_))) {
                    self.queue.answered();
                }
                self.tokens.forget(&self.name);
                self.conn = None;
                return Some(Outcome::AccountDeleted);
            }
            // Only the login's.
            ServerMessage::Welcome { .. }
            | ServerMessage::AuthOk { .. }
            | ServerMessage::AuthError { .. } => {}
            ServerMessage::Pong => {
                if self.queue.replaying() {
                    self.replay_over();
                }
            }
        }
        None
    }

    /// A `history` frame: the page `/history` asked for, the history of a room just
    /// joined, or one replayed at login (after a reconnection, only what is new).
    fn on_history(&mut self, stream: Stream, conversation: bool, messages: Vec<ChatMessage>) {
        match self.queue.awaiting() {
            Some(Outgoing::Page {
                room: Some(room), ..
            }) if !conversation && Stream::room(room) == stream => {
                let room = room.clone();
                self.queue.answered();
                self.show_page(&room, &messages);
                return;
            }
            Some(Outgoing::Join(room)) if Stream::room(room) == stream => {
                self.queue.answered();
            }
            _ => {}
        }
        for m in &messages {
            if self.view.is_new(m) {
                self.queue.on_replayed(m, &self.name);
                self.show(m);
            }
        }
        self.view.opened(stream);
    }

    /// The history replayed at login is over: requests go out again.
    fn replay_over(&mut self) {
        self.replay_until = None;
        self.queue.replay_over();
    }

    /// `password_changed`: its token replaces the session's, saved with the check of
    /// the new password.
    fn on_password_changed(&mut self, token: &str) {
        let new = match self.queue.awaiting() {
            Some(Outgoing::ChangePassword { new, .. }) => Some(new.0.clone()),
            _ => None,
        };
        if new.is_some() {
            self.queue.answered();
        }
        self.tokens.save(&self.name, token, new.as_deref(), false);
        self.out.notice(
            "Your password was changed; your other sessions were logged out, and this one goes on.",
        );
    }

    /// One page of older messages of `room`, under a line that says so.
    fn show_page(&mut self, room: &str, messages: &[ChatMessage]) {
        let label = display::room_label(room);
        if messages.is_empty() {
            self.out.info(&format!("* no earlier messages in {label}"));
            return;
        }
        self.out.info(&format!(
            "* {} in {label}:",
            plural(messages.len(), "earlier message", "earlier messages")
        ));
        for m in messages {
            self.show(m);
        }
    }

    /// A `room` frame: our join was accepted (the room becomes the current one), or
    /// another connection of ours joined.
    fn on_room(&mut self, room: &str, members: &[String]) {
        let label = display::room_label(room);
        let ours = matches!(self.queue.awaiting(), Some(Outgoing::Join(r)) if Stream::room(r) == Stream::room(room));
        if !ours {
            self.out
                .info(&format!("* you joined {label} (from another connection)"));
            return;
        }
        let names: Vec<String> = members.iter().map(|n| printable(n)).collect();
        self.out.info(&format!(
            "* you joined {label} ({}: {}); what you type now goes there",
            plural(names.len(), "member", "members"),
            names.join(", ")
        ));
        if self.view.enter(room) {
            self.out.room_changed(room);
        }
    }

    /// A `parted` frame: we left a room, here or from another connection. Leaving the
    /// current room brings typed lines back to the lobby.
    fn on_parted(&mut self, room: &str) {
        let label = display::room_label(room);
        let ours = matches!(self.queue.awaiting(), Some(Outgoing::Part(r)) if same_room(r, room));
        if ours {
            self.queue.answered();
            self.out.info(&format!("* you left {label}"));
        } else {
            self.out
                .info(&format!("* you left {label} (from another connection)"));
        }
        if self.view.is_current(room) {
            self.back_to_the_lobby();
        }
    }

    /// Makes the lobby the current room again, and says so.
    fn back_to_the_lobby(&mut self) {
        self.view.enter(LOBBY);
        self.out.room_changed(LOBBY);
        self.out.notice(&format!(
            "What you type now goes to {}.",
            display::room_label(LOBBY)
        ));
    }

    fn show(&mut self, m: &ChatMessage) {
        self.view.record(m);
        self.out
            .chat(&display::chat_line(m, &self.name, self.view.current()));
    }

    /// An `error` frame: it answers the oldest request in flight. A rate-limited say
    /// is resent; anything else refused is reported in a sentence.
    fn on_error(&mut self, code: ErrorCode, message: &str) {
        match self.queue.on_error(code, Instant::now()) {
            Refusal::WillRetry => {}
            Refusal::Refused(request) => {
                self.out
                    .notice(&display::refusal_sentence(&request, code, message));
                // Our room membership ended elsewhere (while we were away, say).
                if let Outgoing::Say {
                    target: Target::Room(room),
                    ..
                } = &request
                {
                    if matches!(code, ErrorCode::NotMember | ErrorCode::UnknownRoom)
                        && self.view.is_current(room)
                        && !is_lobby(room)
                    {
                        self.back_to_the_lobby();
                    }
                }
            }
            Refusal::Other => self
                .out
                .notice(&format!("Server error: {}", printable(message))),
        }
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
mod tests {
    use super::*;
    use crate::client::fake_server::{self, FakeServer, Recorder};

    fn policy(window: usize, ping_interval: Duration) -> Policy {
        Policy {
            window,
            max_reconnects: Some(1),
            ack_timeout: Duration::from_secs(10),
            fail_on_ack_timeout: true,
            ping_interval,
            reconnect_after_shutdown: false,
            fail_on_bad_frame: true,
            confirm: false,
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
        let (conn, fake, server) = fake_server::pair().await;
        let tokens = TokenStore::in_memory(&server.token_key());
        let out = Recorder::default();
        let session = Session::new(
            conn,
            server,
            Connector::plain(),
            tokens,
            "me".into(),
            out.clone(),
            policy,
        );
        let (tx, rx) = mpsc::channel(16);
        (session, fake, tx, rx, out)
    }

    /// Answers the `ping` that marks the end of the replayed history.
    async fn end_replay(server: &mut FakeServer) {
        assert_eq!(server.recv().await, ClientMessage::Ping);
        server.send(ServerMessage::Pong).await;
    }

    fn echo(id: u64, text: &str) -> ServerMessage {
        ServerMessage::Message(ChatMessage {
            id,
            room: None,
            to: None,
            from: "me".into(),
            text: text.into(),
            ts: 0,
        })
    }

    #[tokio::test]
    async fn says_go_one_at_a_time_and_quit_waits_for_the_last_echo() {
        let (mut session, mut server, tx, mut rx, out) = session(policy(1, PING_INTERVAL)).await;
        let client = tokio::spawn(async move { (session.run(&mut rx).await, session) });
        for line in ["one", "two"] {
            tx.send(line.into()).await.unwrap();
        }
        drop(tx);
        server
            .send(ServerMessage::History {
                room: None,
                direct: None,
                with: None,
                messages: vec![],
            })
            .await;
        end_replay(&mut server).await;
        assert_eq!(
            server.recv().await,
            ClientMessage::Say {
                text: "one".into(),
                room: None,
                to: None
            }
        );
        assert_eq!(
            server.recv_within(Duration::from_millis(300)).await,
            None,
            "the second say waits for the first echo"
        );
        server.send(echo(1, "one")).await;
        assert_eq!(
            server.recv().await,
            ClientMessage::Say {
                text: "two".into(),
                room: None,
                to: None
            }
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
    async fn a_quiet_session_pings_and_a_silent_server_counts_as_gone() {
        let (mut session, mut server, _tx, mut rx, out) =
            session(policy(4, Duration::from_millis(200))).await;
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

    fn room_message(id: u64, room: &str, from: &str, text: &str) -> ServerMessage {
        ServerMessage::Message(ChatMessage {
            id,
            room: Some(room.into()),
            to: None,
            from: from.into(),
            text: text.into(),
            ts: 0,
        })
    }

    fn history(room: &str, ids: &[u64]) -> ServerMessage {
        ServerMessage::History {
            room: Some(room.into()),
            direct: None,
            with: None,
            messages: ids
                .iter()
                .map(|&id| {
                    HistoryEntry::Message(ChatMessage {
                        id,
                        room: Some(room.into()),
                        to: None,
                        from: "bob".into(),
                        text: format!("old {id}"),
                        ts: 0,
                    })
                })
                .collect(),
        }
    }

    fn say_to(text: &str, room: Option<&str>, to: Option<&str>) -> ClientMessage {
        ClientMessage::Say {
            text: text.into(),
            room: room.map(str::to_string),
            to: to.map(str::to_string),
        }
    }

    /// The lines shown after the `skip` first.
    fn shown_after(out: &Recorder, skip: usize) -> Vec<String> {
        out.0.lock().unwrap().iter().skip(skip).cloned().collect()
    }

    #[tokio::test]
    async fn a_joined_room_takes_the_typed_lines_and_other_rooms_are_marked() {
        let (mut session, mut server, tx, mut rx, out) = session(policy(1, PING_INTERVAL)).await;
        let client = tokio::spawn(async move { (session.run(&mut rx).await, session) });
        server.send(history("lobby", &[1])).await;
        end_replay(&mut server).await;
        tx.send("/join Rust".into()).await.unwrap();
        assert_eq!(
            server.recv().await,
            ClientMessage::Join {
                room: "Rust".into()
            }
        );
        tx.send("in rust".into()).await.unwrap();
        assert_eq!(
            server.recv_within(Duration::from_millis(300)).await,
            None,
            "the line waits for the join's answer"
        );
        server
            .send(ServerMessage::Room {
                room: "rust".into(),
                members: vec!["bob".into(), "me".into()],
            })
            .await;
        server.send(history("rust", &[2, 3])).await;
        assert_eq!(server.recv().await, say_to("in rust", Some("rust"), None));
        server.send(room_message(4, "rust", "me", "in rust")).await;
        server
            .send(room_message(5, "lobby", "bob", "in the lobby"))
            .await;
        tx.send("/msg Bob psst".into()).await.unwrap();
        assert_eq!(server.recv().await, say_to("psst", None, Some("Bob")));
        drop(tx);
        assert_eq!(
            server.recv_within(Duration::from_millis(300)).await,
            None,
            "quit waits for the direct message's echo"
        );
        server
            .send(ServerMessage::Message(ChatMessage {
                id: 6,
                room: None,
                to: Some("bob".into()),
                from: "me".into(),
                text: "psst".into(),
                ts: 0,
            }))
            .await;
        assert_eq!(server.recv().await, ClientMessage::Quit);
        let (outcome, session) = client.await.unwrap();
        assert_eq!(outcome, Outcome::Quit);
        assert_eq!(session.current_room(), "rust");
        let shown = shown_after(&out, 0);
        let tail: Vec<&str> = shown
            .iter()
            .map(|l| &l[l.find("] ").map_or(0, |i| i + 2)..])
            .collect();
        assert_eq!(
            tail,
            [
                "bob: old 1",
                "* you joined #rust (2 members: bob, me); what you type now goes there",
                "room: rust",
                "bob: old 2",
                "bob: old 3",
                "me: in rust",
                "#lobby bob: in the lobby",
                "(direct to bob) me: psst",
            ],
            "{shown:#?}"
        );
    }

    #[tokio::test]
    async fn history_pages_back_from_the_oldest_message_shown() {
        let (mut session, mut server, tx, mut rx, out) = session(policy(1, PING_INTERVAL)).await;
        let client = tokio::spawn(async move { session.run(&mut rx).await });
        server.send(history("lobby", &[40, 41])).await;
        end_replay(&mut server).await;
        while out.0.lock().unwrap().len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tx.send("/history".into()).await.unwrap();
        let page = |before| ClientMessage::History {
            room: Some("lobby".into()),
            with: None,
            before,
            limit: None,
        };
        assert_eq!(server.recv().await, page(Some(40)));
        tx.send("/history".into()).await.unwrap();
        assert_eq!(
            server.recv_within(Duration::from_millis(300)).await,
            None,
            "the next page waits for this one"
        );
        server.send(history("lobby", &[38, 39])).await;
        assert_eq!(server.recv().await, page(Some(38)));
        server.send(history("lobby", &[])).await;
        drop(tx);
        assert_eq!(server.recv().await, ClientMessage::Quit);
        assert_eq!(client.await.unwrap(), Outcome::Quit);
        let shown = shown_after(&out, 2);
        assert!(
            shown[0].ends_with("* 2 earlier messages in #lobby:"),
            "{shown:#?}"
        );
        assert!(shown[1].ends_with("] bob: old 38"), "{shown:#?}");
        assert!(shown[2].ends_with("] bob: old 39"), "{shown:#?}");
        assert_eq!(shown[3], "* no earlier messages in #lobby", "{shown:#?}");
    }

    #[tokio::test]
    async fn leaving_the_current_room_brings_lines_back_to_the_lobby() {
        let (mut session, mut server, tx, mut rx, out) = session(policy(1, PING_INTERVAL)).await;
        let client = tokio::spawn(async move { (session.run(&mut rx).await, session) });
        server.send(history("lobby", &[])).await;
        end_replay(&mut server).await;
        tx.send("/join go".into()).await.unwrap();
        server.recv().await;
        server
            .send(ServerMessage::Room {
                room: "go".into(),
                members: vec!["me".into()],
            })
            .await;
        server.send(history("go", &[])).await;
        tx.send("/part".into()).await.unwrap();
        assert_eq!(
            server.recv().await,
            ClientMessage::Part { room: "go".into() }
        );
        server
            .send(ServerMessage::Parted { room: "go".into() })
            .await;
        tx.send("/part".into()).await.unwrap();
        tx.send("back".into()).await.unwrap();
        assert_eq!(server.recv().await, say_to("back", None, None));
        server.send(echo(1, "back")).await;
        tx.send("/part nowhere".into()).await.unwrap();
        assert_eq!(
            server.recv().await,
            ClientMessage::Part {
                room: "nowhere".into()
            }
        );
        server
            .send(ServerMessage::error(ErrorCode::UnknownRoom, "no such room"))
            .await;
        drop(tx);
        assert_eq!(server.recv().await, ClientMessage::Quit);
        let (outcome, session) = client.await.unwrap();
        assert_eq!(outcome, Outcome::Quit);
        assert_eq!(session.current_room(), "lobby");
        assert_eq!(session.refused(), 0, "a refused part is no lost message");
        let shown = shown_after(&out, 0).join("\n");
        for expected in [
            "* you left #go",
            "room: lobby",
            "notice: The lobby cannot be left",
            "notice: There is no room #nowhere.",
        ] {
            assert!(shown.contains(expected), "{expected:?} in {shown}");
        }
    }

    #[tokio::test]
    async fn our_echo_acknowledges_even_with_an_id_already_shown() {
        let (mut session, mut server, tx, mut rx, out) = session(policy(1, PING_INTERVAL)).await;
        let client = tokio::spawn(async move { session.run(&mut rx).await });
        server.send(history("lobby", &[1])).await;
        end_replay(&mut server).await;
        tx.send("mine".into()).await.unwrap();
        drop(tx);
        assert_eq!(server.recv().await, say_to("mine", None, None));
        server.send(echo(1, "mine")).await;
        assert_eq!(server.recv().await, ClientMessage::Quit);
        assert_eq!(client.await.unwrap(), Outcome::Quit);
        assert!(shown_after(&out, 1)[0].ends_with("] me: mine"));
    }

    #[tokio::test]
    async fn kicked_ends_the_session() {
        let (mut session, mut server, _tx, mut rx, _out) = session(policy(4, PING_INTERVAL)).await;
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
}
