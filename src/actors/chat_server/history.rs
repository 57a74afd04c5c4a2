//! `History`: the recent chat `ChatServer` replays at login.
//!
//! Plain data with no actor code. It keeps the last `--history` MESSAGE payloads (the
//! `history` frame is assembled from them without re-serialising, and cached until the
//! next message), bounded in bytes as well as in count so that a login cannot pull an
//! unbounded frame.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::codec::frame_from_payload;

/// Most bytes of messages a `history` frame replays: the newest messages that fit.
/// A login (or a resume loop) then costs a bounded amount of output.
pub const MAX_REPLAY_BYTES: usize = 256 * 1024;

/// The recent messages.
#[derive(Debug)]
pub struct History {
    /// How many messages are replayed (`--history`).
    limit: usize,
    /// The last `limit` MESSAGE payloads, oldest first.
    recent: VecDeque<Bytes>,
    /// The `history` frame for `recent`, built on first use.
    frame: Option<Bytes>,
}

impl History {
    /// History of at most `limit` messages over `recent` (oldest first).
    pub fn new(limit: usize, mut recent: VecDeque<Bytes>) -> History {
        while recent.len() > limit {
            recent.pop_front();
        }
        History {
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
        let mut payload = BytesMut::with_capacity(size.min(MAX_REPLAY_BYTES) + 32);
        payload.extend_from_slice(br#"{"type":"history","messages":["#);
        for (i, message) in self.recent.iter().skip(start).enumerate() {
            if i > 0 {
                payload.extend_from_slice(b",");
            }
            payload.extend_from_slice(message);
        }
        payload.extend_from_slice(b"]}");
        let frame = frame_from_payload(&payload);
        self.frame = Some(frame.clone());
        frame
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
        let mut history = History::new(2, VecDeque::new());
        for text in ["1", "2", "3"] {
            history.record(Bytes::from(format!(r#"{{"text":"{text}"}}"#)));
        }
        let json = frame_json(&mut history);
        assert_eq!(
            json,
            serde_json::json!({"type":"history","messages":[{"text":"2"},{"text":"3"}]})
        );
        let again = history.frame();
        assert_eq!(again.as_ptr(), history.frame().as_ptr(), "cached");
    }

    #[test]
    fn the_frame_is_bounded_in_bytes() {
        let mut history = History::new(1000, VecDeque::new());
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
    fn nothing_is_kept_with_a_zero_limit() {
        let mut history = History::new(0, VecDeque::from([Bytes::from_static(b"{}")]));
        history.record(Bytes::from_static(b"{}"));
        assert_eq!(frame_json(&mut history)["messages"], serde_json::json!([]));
    }
}
