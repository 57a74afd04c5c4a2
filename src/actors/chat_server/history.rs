//! `History`: the recent messages of one conversation (a room, or an account's direct
//! messages) that `ChatServer` replays at login.
//!
//! Plain data with no actor code. It keeps the last `--history` MESSAGE payloads (the
//! `history` frame is assembled from them without re-serialising, and cached until the
//! next message), bounded in bytes as well as in count so that a login cannot pull an
//! unbounded frame. [`history_frame`] builds the same frame for a page read from disk.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::codec::frame_from_payload;

/// Most bytes of messages a `history` frame replays: the newest messages that fit.
/// A login (or a resume loop) then costs a bounded amount of output.
pub const MAX_REPLAY_BYTES: usize = 256 * 1024;

/// What a `history` frame is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heading {
    /// A room, by its name.
    Room(String),
    /// The direct messages between the requester and this user (a page).
    With(String),
    /// The requester's direct messages (at login).
    Direct,
}

impl Heading {
    /// The start of the frame's payload, up to the opening of `messages`.
    fn prefix(&self) -> Vec<u8> {
        let quoted = |name: &str| serde_json::to_string(name).unwrap_or_else(|_| "\"\"".into());
        match self {
            Heading::Room(room) => {
                format!(r#"{{"type":"history","room":{},"messages":["#, quoted(room))
            }
            Heading::With(name) => {
                format!(r#"{{"type":"history","with":{},"messages":["#, quoted(name))
            }
            Heading::Direct => r#"{"type":"history","direct":true,"messages":["#.to_string(),
        }
        .into_bytes()
    }
}

/// A `history` frame of `payloads` (MESSAGE payloads, oldest first), without
/// re-serialising them.
pub fn history_frame<'a>(heading: &Heading, payloads: impl Iterator<Item = &'a Bytes>) -> Bytes {
    let mut payload = BytesMut::from(&heading.prefix()[..]);
    for (i, message) in payloads.enumerate() {
        if i > 0 {
            payload.extend_from_slice(b",");
        }
        payload.extend_from_slice(message);
    }
    payload.extend_from_slice(b"]}");
    frame_from_payload(&payload)
}

/// The recent messages of one conversation.
#[derive(Debug)]
pub struct History {
    heading: Heading,
    /// How many messages are replayed (`--history`).
    limit: usize,
    /// The last `limit` MESSAGE payloads, oldest first.
    recent: VecDeque<Bytes>,
    /// The `history` frame for `recent`, built on first use.
    frame: Option<Bytes>,
}

impl History {
    /// History of at most `limit` messages over `recent` (oldest first).
    pub fn new(heading: Heading, limit: usize, mut recent: VecDeque<Bytes>) -> History {
        while recent.len() > limit {
            recent.pop_front();
        }
        History {
            heading,
            limit,
            recent,
            frame: None,
        }
    }

    /// Records a message's payload as the newest.
    pub fn record(&mut self, payload: Bytes) {
        if self.limit == 0 {
            return;
        }
        if self.recent.len() == self.limit {
            self.recent.pop_front();
        }
        self.recent.push_back(payload);
        self.frame = None;
    }

    /// The `history` frame: the newest recorded messages that fit in
    /// [`MAX_REPLAY_BYTES`], oldest first.
    pub fn frame(&mut self) -> Bytes {
        if let Some(frame) = &self.frame {
            return frame.clone();
        }
        let mut size = 0;
        let fitting = self
            .recent
            .iter()
            .rev()
            .take_while(|p| {
                size += p.len() + 1;
                size <= MAX_REPLAY_BYTES
            })
            .count();
        let start = self.recent.len() - fitting;
        let frame = history_frame(&self.heading, self.recent.iter().skip(start));
        self.frame = Some(frame.clone());
        frame
    }

    /// Whether there is nothing to replay.
    pub fn is_empty(&self) -> bool {
        self.recent.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::payload_of;

    fn frame_json(history: &mut History) -> serde_json::Value {
        serde_json::from_slice(&payload_of(&history.frame())).unwrap()
    }

    #[test]
    fn keeps_the_last_messages_and_caches_the_frame() {
        let mut history = History::new(Heading::Room("lobby".into()), 2, VecDeque::new());
        for text in ["1", "2", "3"] {
            history.record(Bytes::from(format!(r#"{{"text":"{text}"}}"#)));
        }
        let json = frame_json(&mut history);
        assert_eq!(
            json,
            serde_json::json!({"type":"history","room":"lobby","messages":[{"text":"2"},{"text":"3"}]})
        );
        let again = history.frame();
        assert_eq!(again.as_ptr(), history.frame().as_ptr(), "cached");
    }

    #[test]
    fn the_frame_is_bounded_in_bytes() {
        let mut history = History::new(Heading::Direct, 1000, VecDeque::new());
        let big = format!(r#"{{"text":"{}"}}"#, "x".repeat(10_000));
        for _ in 0..100 {
            history.record(Bytes::from(big.clone()));
        }
        let frame = history.frame();
        assert!(frame.len() <= MAX_REPLAY_BYTES + 64, "{}", frame.len());
        let json = frame_json(&mut history);
        let fits = MAX_REPLAY_BYTES / (big.len() + 1);
        assert_eq!(json["messages"].as_array().unwrap().len(), fits);
    }

    #[test]
    fn headings_name_what_the_frame_is_about() {
        let one = [Bytes::from_static(br#"{"id":1}"#)];
        for (heading, expected) in [
            (
                Heading::Room("Zoë \"ops\"".into()),
                serde_json::json!({"type":"history","room":"Zoë \"ops\"","messages":[{"id":1}]}),
            ),
            (
                Heading::With("bob".into()),
                serde_json::json!({"type":"history","with":"bob","messages":[{"id":1}]}),
            ),
            (
                Heading::Direct,
                serde_json::json!({"type":"history","direct":true,"messages":[{"id":1}]}),
            ),
        ] {
            let frame = history_frame(&heading, one.iter());
            let json: serde_json::Value = serde_json::from_slice(&payload_of(&frame)).unwrap();
            assert_eq!(json, expected);
        }
    }

    #[test]
    fn nothing_is_kept_with_a_zero_limit() {
        let mut history = History::new(
            Heading::Direct,
            0,
            VecDeque::from([Bytes::from_static(b"{}")]),
        );
        history.record(Bytes::from_static(b"{}"));
        assert_eq!(frame_json(&mut history)["messages"], serde_json::json!([]));
    }
}
