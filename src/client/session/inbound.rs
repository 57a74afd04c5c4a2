//! What the server sends, once logged in: messages and their echoes, histories and
//! pages, rooms joined and left, answers to requests, errors, and the endings.

use tokio::time::Instant;

use super::{Outcome, Output, Session};
use crate::client::connection::Ended;
use crate::client::display::{self, printable};
use crate::client::queue::{is_lobby, same_room, Outgoing, Refusal, Stream, Target};
use crate::protocol::{ChatMessage, ErrorCode, HistoryEntry, ServerMessage, LOBBY};
use crate::text::plural;

impl<O: Output> Session<O> {
    /// Handles one message from the server.
    pub(super) fn on_server(&mut self, message: ServerMessage) -> Option<Outcome> {
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
    pub(super) fn on_history(
        &mut self,
        stream: Stream,
        conversation: bool,
        messages: Vec<ChatMessage>,
    ) {
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
    pub(super) fn replay_over(&mut self) {
        self.replay_until = None;
        self.queue.replay_over();
    }

    /// `password_changed`: its token replaces the session's, saved with the check of
    /// the new password.
    pub(super) fn on_password_changed(&mut self, token: &str) {
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
    pub(super) fn show_page(&mut self, room: &str, messages: &[ChatMessage]) {
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
    pub(super) fn on_room(&mut self, room: &str, members: &[String]) {
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
    pub(super) fn on_parted(&mut self, room: &str) {
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
    pub(super) fn back_to_the_lobby(&mut self) {
        self.view.enter(LOBBY);
        self.out.room_changed(LOBBY);
        self.out.notice(&format!(
            "What you type now goes to {}.",
            display::room_label(LOBBY)
        ));
    }

    pub(super) fn show(&mut self, m: &ChatMessage) {
        self.view.record(m);
        self.out
            .chat(&display::chat_line(m, &self.name, self.view.current()));
    }

    /// An `error` frame: it answers the oldest request in flight. A rate-limited say
    /// is resent; anything else refused is reported in a sentence.
    pub(super) fn on_error(&mut self, code: ErrorCode, message: &str) {
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
}
