//! The requests the user typed, in the order typed, and the says the server has not
//! echoed yet.
//!
//! A `say` is *in flight* from the moment it is sent until the server's copy from our
//! own name comes back (its acknowledgement) or an `error` refuses it; at most
//! `window` are in flight at once, so a refused one can be resent without reordering
//! the chat. `rate_limited` puts it back at the front and holds the queue a moment.
//! `quit` and `logout` wait until nothing is in flight. When the connection drops,
//! says in flight go back to the front, marked *maybe delivered*: the history replayed
//! after resuming may show that they did arrive, and then they are not sent twice.
//! Plain data: the session does the sending and asks the queue what comes next.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::protocol::{ChatMessage, ClientMessage, ErrorCode};

/// First wait before resending a `say` the server refused with `rate_limited`; the
/// server's bucket refills at a steady rate, so short waits suffice.
const RATE_LIMIT_FIRST_DELAY: Duration = Duration::from_millis(100);

/// Longest wait before resending a rate-limited `say`.
const RATE_LIMIT_MAX_DELAY: Duration = Duration::from_secs(2);

/// A request waiting its turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    Say(String),
    Who,
    Quit,
    Logout,
}

impl Outgoing {
    /// The wire request.
    pub fn request(&self) -> ClientMessage {
        match self {
            Outgoing::Say(text) => ClientMessage::Say {
                text: text.clone(),
                room: None,
                to: None,
            },
            Outgoing::Who => ClientMessage::Who { room: None },
            Outgoing::Quit => ClientMessage::Quit,
            Outgoing::Logout => ClientMessage::Logout,
        }
    }

    /// `quit` or `logout`: the last request of a session.
    pub fn is_leaving(&self) -> bool {
        matches!(self, Outgoing::Quit | Outgoing::Logout)
    }
}

/// A `say` sent and not yet echoed.
#[derive(Debug)]
struct InFlight {
    text: String,
    sent: Instant,
}

/// What an `error` frame meant for the queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `rate_limited`: the say is queued again and goes after a pause.
    WillRetry,
    /// The server refused this say for good.
    Refused(String),
    /// No say was waiting for an answer: an error about something else.
    Other,
}

/// The send queue and the says in flight.
#[derive(Debug)]
pub struct SendQueue {
    pending: VecDeque<Outgoing>,
    in_flight: VecDeque<InFlight>,
    window: usize,
    /// Says at the front of `pending` that were in flight when the connection dropped.
    maybe_delivered: usize,
    /// No sending before this instant (after `rate_limited`).
    hold_until: Option<Instant>,
    rate_limit_delay: Duration,
    /// Says refused (counted, so a script can fail at the end).
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
            hold_until: None,
            rate_limit_delay: RATE_LIMIT_FIRST_DELAY,
            refused: 0,
        }
    }

    pub fn push(&mut self, request: Outgoing) {
        self.pending.push_back(request);
    }

    /// The next request, if it may be sent at `now`: the queue is not held, a say has
    /// room in the window, `quit`/`logout` find nothing in flight.
    pub fn ready(&mut self, now: Instant) -> Option<&Outgoing> {
        if self.hold_until.is_some_and(|t| now < t) {
            return None;
        }
        self.hold_until = None;
        let next = self.pending.front()?;
        let may_go = match next {
            Outgoing::Say(_) => self.in_flight.len() < self.window,
            Outgoing::Who => true,
            Outgoing::Quit | Outgoing::Logout => self.in_flight.is_empty(),
        };
        may_go.then_some(next)
    }

    /// The request [`SendQueue::ready`] returned went out at `now`.
    pub fn sent(&mut self, now: Instant) -> Option<Outgoing> {
        let sent = self.pending.pop_front()?;
        if let Outgoing::Say(text) = &sent {
            self.in_flight.push_back(InFlight {
                text: text.clone(),
                sent: now,
            });
        }
        Some(sent)
    }

    /// With no connection: the `quit`/`logout` that may end the session now, because
    /// nothing else waits to be sent or echoed.
    pub fn leave_offline(&mut self) -> Option<Outgoing> {
        let only_leaving = self.pending.len() == 1
            && self.in_flight.is_empty()
            && self.pending.front().is_some_and(Outgoing::is_leaving);
        only_leaving.then(|| self.pending.pop_front()).flatten()
    }

    /// A live message: our own copy of the oldest say in flight acknowledges it. The
    /// text is compared too, since the same user may be online from elsewhere.
    pub fn on_message(&mut self, message: &ChatMessage, me: &str) {
        if message.from == me
            && self
                .in_flight
                .front()
                .is_some_and(|f| f.text == message.text)
        {
            self.in_flight.pop_front();
            self.rate_limit_delay = RATE_LIMIT_FIRST_DELAY;
        }
    }

    /// A replayed message after resuming: it may show that a say which was in flight
    /// when the connection dropped did arrive.
    pub fn on_replayed(&mut self, message: &ChatMessage, me: &str) {
        if self.maybe_delivered > 0
            && message.from == me
            && self.pending.front() == Some(&Outgoing::Say(message.text.clone()))
        {
            self.pending.pop_front();
            self.maybe_delivered -= 1;
        }
    }

    /// The replayed history is over: what it did not confirm is sent again.
    pub fn history_done(&mut self) {
        self.maybe_delivered = 0;
    }

    /// An `error` frame. After login only a `say` can be refused, and the server
    /// answers in order, so it concerns the oldest say in flight.
    pub fn on_error(&mut self, code: ErrorCode, now: Instant) -> Refusal {
        if !matches!(code, ErrorCode::RateLimited | ErrorCode::BadRequest) {
            return Refusal::Other;
        }
        let Some(say) = self.in_flight.pop_front() else {
            return Refusal::Other;
        };
        if code == ErrorCode::RateLimited {
            self.pending.push_front(Outgoing::Say(say.text));
            self.hold_until = Some(now + self.rate_limit_delay);
            self.rate_limit_delay = (self.rate_limit_delay * 2).min(RATE_LIMIT_MAX_DELAY);
            return Refusal::WillRetry;
        }
        self.refused += 1;
        Refusal::Refused(say.text)
    }

    /// A say refused before it was sent (too long, say).
    pub fn count_refused(&mut self) {
        self.refused += 1;
    }

    /// The connection dropped: says in flight go back to the front of the queue.
    pub fn requeue_in_flight(&mut self) {
        self.maybe_delivered = self.in_flight.len();
        while let Some(say) = self.in_flight.pop_back() {
            self.pending.push_front(Outgoing::Say(say.text));
        }
    }

    /// When the oldest say in flight went out.
    pub fn oldest_in_flight(&self) -> Option<Instant> {
        self.in_flight.front().map(|f| f.sent)
    }

    /// Gives up on the oldest say in flight (it was never echoed).
    pub fn drop_oldest(&mut self) {
        self.in_flight.pop_front();
    }

    /// When the queue may send again after `rate_limited`.
    pub fn held_until(&self) -> Option<Instant> {
        self.hold_until
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

    /// Says the server refused.
    pub fn refused(&self) -> usize {
        self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mine(text: &str) -> ChatMessage {
        ChatMessage {
            room: None,
            to: None,
            id: 1,
            from: "me".into(),
            text: text.into(),
            ts: 0,
        }
    }

    fn send_next(q: &mut SendQueue, now: Instant) -> Option<Outgoing> {
        q.ready(now)?;
        q.sent(now)
    }

    #[test]
    fn a_window_of_one_waits_for_each_echo_and_quit_waits_for_the_last() {
        let now = Instant::now();
        let mut q = SendQueue::new(1);
        for request in [
            Outgoing::Say("a".into()),
            Outgoing::Say("b".into()),
            Outgoing::Quit,
        ] {
            q.push(request);
        }
        assert_eq!(send_next(&mut q, now), Some(Outgoing::Say("a".into())));
        assert_eq!(q.ready(now), None);
        q.on_message(&mine("a"), "me");
        assert_eq!(send_next(&mut q, now), Some(Outgoing::Say("b".into())));
        assert_eq!(q.ready(now), None, "quit waits");
        q.on_message(&mine("someone else's b"), "me");
        assert_eq!(q.ready(now), None);
        q.on_message(&mine("b"), "me");
        assert_eq!(send_next(&mut q, now), Some(Outgoing::Quit));
        assert_eq!(q.unacknowledged(), 0);
    }

    #[test]
    fn rate_limited_is_resent_first_after_a_pause() {
        let now = Instant::now();
        let mut q = SendQueue::new(1);
        q.push(Outgoing::Say("a".into()));
        q.push(Outgoing::Say("b".into()));
        send_next(&mut q, now);
        assert_eq!(q.on_error(ErrorCode::RateLimited, now), Refusal::WillRetry);
        assert_eq!(q.ready(now), None, "held");
        let later = now + RATE_LIMIT_FIRST_DELAY;
        assert_eq!(send_next(&mut q, later), Some(Outgoing::Say("a".into())));
        assert_eq!(
            q.on_error(ErrorCode::BadRequest, later),
            Refusal::Refused("a".into())
        );
        assert_eq!(q.refused(), 1);
        assert_eq!(q.on_error(ErrorCode::Internal, later), Refusal::Other);
    }

    #[test]
    fn says_lost_with_the_connection_are_not_sent_twice_if_history_shows_them() {
        let now = Instant::now();
        let mut q = SendQueue::new(2);
        q.push(Outgoing::Say("a".into()));
        q.push(Outgoing::Say("b".into()));
        send_next(&mut q, now);
        send_next(&mut q, now);
        q.requeue_in_flight();
        q.on_replayed(&mine("a"), "me");
        q.history_done();
        assert_eq!(send_next(&mut q, now), Some(Outgoing::Say("b".into())));
        assert_eq!(q.unacknowledged(), 1);
    }

    #[test]
    fn leaving_offline_only_when_nothing_else_waits() {
        let mut q = SendQueue::new(1);
        q.push(Outgoing::Say("a".into()));
        q.push(Outgoing::Logout);
        assert_eq!(q.leave_offline(), None);
        let mut q = SendQueue::new(1);
        q.push(Outgoing::Quit);
        assert_eq!(q.leave_offline(), Some(Outgoing::Quit));
    }
}
