//! The requests the user typed, in the order typed, and the ones the server has not
//! answered yet.
//!
//! A request is *in flight* from the moment it is sent until the server answers it:
//! a `say` by our own copy of the message coming back (its acknowledgement), the
//! others by their reply frame (`who`, `room` and its `history`, `parted`, `rooms`, a
//! page of `history`, `password_changed`, `account_deleted`), or any of them by an
//! `error`. At most `window` says are in flight at once, and any other request goes
//! alone, so every `error` frame belongs to the oldest request in flight: the server
//! answers in order. A refused say can then be resent without reordering the chat:
//! `rate_limited` puts it back at the front and holds the queue a moment. `quit` and
//! `logout` wait until nothing is in flight.
//!
//! Nothing is sent while the history replayed at login comes in (the session marks
//! its end): an answer to a `/join` or `/history` could not be told from it. When the
//! connection drops, says in flight go back to the front, marked *maybe delivered*,
//! and the replayed history may show that they did arrive: then they are not sent
//! twice. Room requests in flight are simply sent again; a password change or an
//! account deletion is not (it may have taken effect), and the session says so.
//!
//! Plain data: the session does the sending and asks the queue what comes next.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::auth::name_key;
use crate::protocol::{ChatMessage, ClientMessage, ErrorCode, LOBBY};

/// First wait before resending a `say` the server refused with `rate_limited`; the
/// server's bucket refills at a steady rate, so short waits suffice.
const RATE_LIMIT_FIRST_DELAY: Duration = Duration::from_millis(100);

/// Longest wait before resending a rate-limited `say`.
const RATE_LIMIT_MAX_DELAY: Duration = Duration::from_secs(2);

/// A password typed by the user, kept out of `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Where a chat line goes: a room, or one user (a direct message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The current room when the line goes out (a `/join` typed before it may not
    /// have taken effect yet when it is typed); see [`Outgoing::resolve`].
    Here,
    Room(String),
    User(String),
}

impl Target {
    /// The stream a message to this target shows up in.
    pub fn stream(&self) -> Option<Stream> {
        match self {
            Target::Here => None,
            Target::Room(room) => Some(Stream::room(room)),
            Target::User(_) => Some(Stream::Direct),
        }
    }

    /// Whether `message` is a copy of a line sent to this target.
    fn matches(&self, message: &ChatMessage) -> bool {
        match (self, &message.to) {
            (Target::User(user), Some(to)) => name_key(user) == name_key(to),
            (Target::Room(room), None) => {
                name_key(room) == name_key(message.room.as_deref().unwrap_or(LOBBY))
            }
            _ => false,
        }
    }
}

/// Whether `room` (a resolved `Option`: `None` never matches) is `other`.
pub fn same_room(room: &Option<String>, other: &str) -> bool {
    room.as_deref()
        .is_some_and(|room| Stream::room(room) == Stream::room(other))
}

/// One line of conversation the client tracks: a room (by its name compared ignoring
/// case), or the user's direct messages, all conversations together (as the server
/// replays them at login).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stream {
    Room(String),
    Direct,
}

impl Stream {
    /// The stream of room `name`.
    pub fn room(name: &str) -> Stream {
        Stream::Room(name_key(name))
    }

    /// The stream a message belongs to: its room (`lobby` when it names none), or the
    /// direct messages.
    pub fn of(message: &ChatMessage) -> Stream {
        match (&message.to, &message.room) {
            (Some(_), _) => Stream::Direct,
            (None, Some(room)) => Stream::room(room),
            (None, None) => Stream::room(LOBBY),
        }
    }
}

/// Whether `room` is the lobby, which every account is in and none can leave.
pub fn is_lobby(room: &str) -> bool {
    name_key(room) == name_key(LOBBY)
}

/// A request waiting its turn. A room left out (`None`) is the current room when the
/// request goes out; [`Outgoing::resolve`] fills it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    Say {
        text: String,
        target: Target,
    },
    /// Who is online in a room (the lobby: everyone).
    Who {
        room: Option<String>,
    },
    Join(String),
    Part(Option<String>),
    Rooms,
    /// One page of a room's history, older than `before`.
    Page {
        room: Option<String>,
        before: Option<u64>,
    },
    ChangePassword {
        old: Secret,
        new: Secret,
    },
    DeleteAccount(Secret),
    Quit,
    Logout,
}

impl Outgoing {
    /// A line for the room `room`.
    pub fn say_in(room: &str, text: impl Into<String>) -> Outgoing {
        Outgoing::Say {
            text: text.into(),
            target: Target::Room(room.to_string()),
        }
    }

    /// Fills in what was left to the moment the request goes out: the current room
    /// `here`, and for a page of history, the oldest message `oldest` says was shown
    /// in its room.
    pub fn resolve(&mut self, here: &str, oldest: impl Fn(&str) -> Option<u64>) {
        match self {
            Outgoing::Say { target, .. } if *target == Target::Here => {
                *target = Target::Room(here.to_string())
            }
            Outgoing::Who { room } | Outgoing::Part(room) if room.is_none() => {
                *room = Some(here.to_string())
            }
            Outgoing::Page { room, before } => {
                let room = room.get_or_insert_with(|| here.to_string());
                *before = oldest(room);
            }
            _ => {}
        }
    }

    /// The wire request, once [resolved](Outgoing::resolve). The lobby is named by
    /// no room, as before rooms existed.
    pub fn request(&self) -> ClientMessage {
        let room_or_lobby = |room: &Option<String>| room.clone().unwrap_or_else(|| LOBBY.into());
        let beyond_lobby = |room: &Option<String>| room.clone().filter(|r| !is_lobby(r));
        match self {
            Outgoing::Say { text, target } => {
                let (room, to) = match target {
                    Target::Here => (None, None),
                    Target::Room(room) => (beyond_lobby(&Some(room.clone())), None),
                    Target::User(user) => (None, Some(user.clone())),
                };
                ClientMessage::Say {
                    text: text.clone(),
                    room,
                    to,
                }
            }
            Outgoing::Who { room } => ClientMessage::Who {
                room: beyond_lobby(room),
            },
            Outgoing::Join(room) => ClientMessage::Join { room: room.clone() },
            Outgoing::Part(room) => ClientMessage::Part {
                room: room_or_lobby(room),
            },
            Outgoing::Rooms => ClientMessage::Rooms,
            Outgoing::Page { room, before } => ClientMessage::History {
                room: Some(room_or_lobby(room)),
                with: None,
                before: *before,
                limit: None,
            },
            Outgoing::ChangePassword { old, new } => ClientMessage::ChangePassword {
                old: old.0.clone(),
                new: new.0.clone(),
            },
            Outgoing::DeleteAccount(password) => ClientMessage::DeleteAccount {
                password: password.0.clone(),
            },
            Outgoing::Quit => ClientMessage::Quit,
            Outgoing::Logout => ClientMessage::Logout,
        }
    }

    /// `quit` or `logout`: the last request of a session.
    pub fn is_leaving(&self) -> bool {
        matches!(self, Outgoing::Quit | Outgoing::Logout)
    }

    fn is_say(&self) -> bool {
        matches!(self, Outgoing::Say { .. })
    }

    /// A request that must not be repeated blindly after the connection dropped: it
    /// may have taken effect.
    fn is_account_change(&self) -> bool {
        matches!(
            self,
            Outgoing::ChangePassword { .. } | Outgoing::DeleteAccount(_)
        )
    }
}

/// A request sent and not yet answered.
#[derive(Debug)]
struct InFlight {
    request: Outgoing,
    sent: Instant,
}

/// What an `error` frame meant for the queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `rate_limited` for a say: it is queued again and goes after a pause.
    WillRetry,
    /// The server refused this request for good.
    Refused(Outgoing),
    /// Nothing was waiting for an answer: an error about something else.
    Other,
}

/// The send queue and the requests in flight.
#[derive(Debug)]
pub struct SendQueue {
    pending: VecDeque<Outgoing>,
    in_flight: VecDeque<InFlight>,
    window: usize,
    /// Says at the front of `pending` that were in flight when the connection dropped.
    maybe_delivered: usize,
    /// The history replayed at login is coming in: nothing is sent.
    replaying: bool,
    /// No sending before this instant (after `rate_limited`).
    hold_until: Option<Instant>,
    rate_limit_delay: Duration,
    /// Says and account requests refused (counted, so a script can fail at the end).
    refused: usize,
}

impl SendQueue {
    /// A queue that keeps at most `window` says in flight (at least one).
    pub fn new(window: usize) -> Self {
        SendQueue {
            pending: VecDeque::new(),
            in_flight: VecDeque::new(),
            window: window.max(1),
            maybe_delivered: 0,
            replaying: true,
            hold_until: None,
            rate_limit_delay: RATE_LIMIT_FIRST_DELAY,
            refused: 0,
        }
    }

    pub fn push(&mut self, request: Outgoing) {
        self.pending.push_back(request);
    }

    /// The next request, if it may be sent at `now`: the queue is not held nor waiting
    /// for a replayed history, a say has room in the window, any other request finds
    /// nothing in flight. It may still be [resolved](Outgoing::resolve) in place.
    pub fn ready(&mut self, now: Instant) -> Option<&mut Outgoing> {
        if self.replaying || self.hold_until.is_some_and(|t| now < t) {
            return None;
        }
        self.hold_until = None;
        let next = self.pending.front()?;
        let may_go = if next.is_say() {
            self.in_flight.len() < self.window && self.in_flight.iter().all(|f| f.request.is_say())
        } else {
            self.in_flight.is_empty()
        };
        if may_go {
            self.pending.front_mut()
        } else {
            None
        }
    }

    /// Drops the request [`SendQueue::ready`] returned, unsent (it cannot go).
    pub fn discard(&mut self) {
        self.pending.pop_front();
    }

    /// The request [`SendQueue::ready`] returned went out at `now`. `quit` and
    /// `logout` wait for no answer.
    pub fn sent(&mut self, now: Instant) -> Option<Outgoing> {
        let sent = self.pending.pop_front()?;
        if !sent.is_leaving() {
            self.in_flight.push_back(InFlight {
                request: sent.clone(),
                sent: now,
            });
        }
        Some(sent)
    }

    /// With no connection: the `quit`/`logout` that may end the session now, because
    /// nothing else waits to be sent or answered.
    pub fn leave_offline(&mut self) -> Option<Outgoing> {
        let only_leaving = self.pending.len() == 1
            && self.in_flight.is_empty()
            && self.pending.front().is_some_and(Outgoing::is_leaving);
        only_leaving.then(|| self.pending.pop_front()).flatten()
    }

    /// The oldest request in flight, whose answer comes next.
    pub fn awaiting(&self) -> Option<&Outgoing> {
        self.in_flight.front().map(|f| &f.request)
    }

    /// The oldest request in flight was answered: it is done.
    pub fn answered(&mut self) -> Option<Outgoing> {
        self.in_flight.pop_front().map(|f| f.request)
    }

    /// A live message: our own copy of the oldest say in flight acknowledges it. The
    /// text and the room or recipient are compared too, since the same user may be
    /// online from elsewhere. `true` when it did.
    pub fn on_message(&mut self, message: &ChatMessage, me: &str) -> bool {
        let acknowledges = |f: &InFlight| match &f.request {
            Outgoing::Say { text, target } => is_copy(message, me, text, target),
            _ => false,
        };
        if self.in_flight.front().is_some_and(acknowledges) {
            self.in_flight.pop_front();
            self.rate_limit_delay = RATE_LIMIT_FIRST_DELAY;
            return true;
        }
        false
    }

    /// A replayed message after resuming: it may show that a say which was in flight
    /// when the connection dropped did arrive.
    pub fn on_replayed(&mut self, message: &ChatMessage, me: &str) {
        if self.maybe_delivered == 0 {
            return;
        }
        if let Some(Outgoing::Say { text, target }) = self.pending.front() {
            if is_copy(message, me, text, target) {
                self.pending.pop_front();
                self.maybe_delivered -= 1;
            }
        }
    }

    /// A new connection is logged in: its replayed history comes first.
    pub fn replay_starts(&mut self) {
        self.replaying = true;
    }

    /// The replayed history is over: what it did not confirm is sent again, and
    /// everything else in order.
    pub fn replay_over(&mut self) {
        self.replaying = false;
        self.maybe_delivered = 0;
    }

    /// Whether the history replayed at login is still coming in.
    pub fn replaying(&self) -> bool {
        self.replaying
    }

    /// An `error` frame, which answers the oldest request in flight (the server
    /// answers in order).
    pub fn on_error(&mut self, code: ErrorCode, now: Instant) -> Refusal {
        let Some(front) = self.in_flight.pop_front() else {
            return Refusal::Other;
        };
        if code == ErrorCode::RateLimited && front.request.is_say() {
            self.pending.push_front(front.request);
            self.hold_until = Some(now + self.rate_limit_delay);
            self.rate_limit_delay = (self.rate_limit_delay * 2).min(RATE_LIMIT_MAX_DELAY);
            return Refusal::WillRetry;
        }
        if front.request.is_say() || front.request.is_account_change() {
            self.refused += 1;
        }
        Refusal::Refused(front.request)
    }

    /// A say or request refused before it was sent (too long, say).
    pub fn count_refused(&mut self) {
        self.refused += 1;
    }

    /// The connection dropped: says in flight go back to the front of the queue,
    /// marked maybe delivered, and other requests are sent again, except a password
    /// change or account deletion, which is returned: it may have taken effect.
    pub fn requeue_in_flight(&mut self) -> Option<Outgoing> {
        let mut dropped = None;
        while let Some(f) = self.in_flight.pop_back() {
            if f.request.is_account_change() {
                dropped = Some(f.request);
                continue;
            }
            if f.request.is_say() {
                self.maybe_delivered += 1;
            }
            self.pending.push_front(f.request);
        }
        dropped
    }

    /// When the oldest request in flight went out.
    pub fn oldest_in_flight(&self) -> Option<Instant> {
        self.in_flight.front().map(|f| f.sent)
    }

    /// Gives up on the oldest request in flight (it was never answered).
    pub fn drop_oldest(&mut self) -> Option<Outgoing> {
        self.in_flight.pop_front().map(|f| f.request)
    }

    /// When the queue may send again after `rate_limited`.
    pub fn held_until(&self) -> Option<Instant> {
        self.hold_until
    }

    /// Says typed but not acknowledged: queued, or sent and not yet echoed.
    pub fn unacknowledged(&self) -> usize {
        let queued = self.pending.iter().filter(|o| o.is_say()).count();
        let in_flight = self.in_flight.iter().filter(|f| f.request.is_say()).count();
        queued + in_flight
    }

    /// Says and account requests the server refused.
    pub fn refused(&self) -> usize {
        self.refused
    }
}

/// Whether `message` is our copy of `text` sent to `target`.
fn is_copy(message: &ChatMessage, me: &str, text: &str, target: &Target) -> bool {
    name_key(&message.from) == name_key(me) && message.text == text && target.matches(message)
}

#[cfg(test)]
mod tests;
