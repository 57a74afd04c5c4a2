//! What the user looks at: the current room (where typed lines go, shown in the
//! prompt) and, for each room and for the direct messages, which messages were shown.
//!
//! Ids are one sequence for the whole server, so the newest id shown in a stream tells
//! which messages of a history replayed after a reconnection are new, and the oldest
//! one is where `/history` pages further back from. Membership itself is the
//! server's: this remembers only what the user was shown. Plain data, no I/O.

use std::collections::HashMap;

use super::queue::Stream;
use crate::protocol::{ChatMessage, LOBBY};

/// How far one stream was shown: ids are above 0, so `newest` 0 is nothing yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Shown {
    newest: u64,
    oldest: Option<u64>,
}

/// The current room and what each stream showed.
#[derive(Debug)]
pub struct RoomView {
    /// As the server spells it (after the `room` frame of a join), else as typed.
    current: String,
    shown: HashMap<Stream, Shown>,
}

impl Default for RoomView {
    fn default() -> Self {
        RoomView::new()
    }
}

impl RoomView {
    /// In the lobby, nothing shown yet.
    pub fn new() -> Self {
        RoomView {
            current: LOBBY.to_string(),
            shown: HashMap::new(),
        }
    }

    /// Where typed lines go.
    pub fn current(&self) -> &str {
        &self.current
    }

    /// Makes `room` the current room; `true` when that changed it.
    pub fn enter(&mut self, room: &str) -> bool {
        let changed = self.current != room;
        self.current = room.to_string();
        changed
    }

    /// Whether `room` is the current room (ignoring case, as the server compares).
    pub fn is_current(&self, room: &str) -> bool {
        Stream::room(room) == Stream::room(&self.current)
    }

    /// Whether `message` is newer than everything its stream showed, so it is shown
    /// now (a history replayed after a reconnection repeats what was).
    pub fn is_new(&self, message: &ChatMessage) -> bool {
        self.shown
            .get(&Stream::of(message))
            .is_none_or(|s| message.id > s.newest)
    }

    /// `message` was shown.
    pub fn record(&mut self, message: &ChatMessage) {
        let shown = self.shown.entry(Stream::of(message)).or_default();
        shown.newest = shown.newest.max(message.id);
        shown.oldest = Some(shown.oldest.map_or(message.id, |o| o.min(message.id)));
    }

    /// `stream` was opened (a join's history, even an empty one): a later replay of
    /// it shows only what is newer.
    pub fn opened(&mut self, stream: Stream) {
        self.shown.entry(stream).or_default();
    }

    /// The oldest id shown in `room`, which the next page of history is older than.
    pub fn oldest_in(&self, room: &str) -> Option<u64> {
        self.shown.get(&Stream::room(room))?.oldest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: u64, room: Option<&str>, to: Option<&str>) -> ChatMessage {
        ChatMessage {
            id,
            room: room.map(str::to_string),
            to: to.map(str::to_string),
            from: "bob".into(),
            text: "x".into(),
            ts: 0,
        }
    }

    #[test]
    fn each_stream_has_its_own_newest_and_oldest() {
        let mut view = RoomView::new();
        for m in [message(5, None, None), message(9, Some("lobby"), None)] {
            assert!(view.is_new(&m));
            view.record(&m);
        }
        assert!(!view.is_new(&message(9, None, None)), "a replay repeats it");
        assert!(
            view.is_new(&message(3, Some("rust"), None)),
            "a room joined later shows its older history"
        );
        view.record(&message(3, Some("Rust"), None));
        assert!(!view.is_new(&message(3, Some("rust"), None)));
        assert!(view.is_new(&message(4, None, Some("me"))));
        assert_eq!(view.oldest_in("LOBBY"), Some(5));
        assert_eq!(view.oldest_in("rust"), Some(3));
        assert_eq!(view.oldest_in("go"), None);
        view.opened(Stream::room("go"));
        assert_eq!(view.oldest_in("go"), None, "nothing shown yet");
        view.record(&message(12, Some("go"), None));
        assert_eq!(
            view.oldest_in("go"),
            Some(12),
            "a room opened empty pages back from its first live message"
        );
        assert!(!view.is_new(&message(11, Some("go"), None)));
    }

    #[test]
    fn the_current_room_starts_in_the_lobby() {
        let mut view = RoomView::new();
        assert_eq!(view.current(), "lobby");
        assert!(view.is_current("Lobby"));
        assert!(view.enter("Rust"));
        assert!(!view.enter("Rust"));
        assert!(view.is_current("rust"));
    }
}
