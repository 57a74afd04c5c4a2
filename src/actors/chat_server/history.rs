//! `History`: the recent chat `ChatServer` replays at login, and the ids it may give.
//!
//! Plain data with no actor code. It keeps the last `--history` MESSAGE payloads (the
//! `history` frame is assembled from them without re-serialising, and cached until the
//! next message), bounded in bytes as well as in count so that a login cannot pull an
//! unbounded frame. It hands out ids only within the durable reservation (see
//! `history_file`), and says when to ask for the next block: half a block ahead, so
//! chat never waits for the disk.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::codec::frame_from_payload;
use crate::server::store::history_file::{ID_BLOCK, MAX_MESSAGE_ID};

/// Most bytes of messages a `history` frame replays: the newest messages that fit.
/// A login (or a resume loop) then costs a bounded amount of output.
pub const MAX_REPLAY_BYTES: usize = 256 * 1024;

/// The recent messages and the id sequence.
#[derive(Debug)]
pub struct History {
    /// How many messages are replayed (`--history`).
    limit: usize,
    /// The last `limit` MESSAGE payloads, oldest first.
    recent: VecDeque<Bytes>,
    /// The `history` frame for `recent`, built on first use.
    frame: Option<Bytes>,
    next_id: u64,
    /// The highest id on disk as reserved.
    reserved_through: u64,
    /// A reservation asked for and not yet answered.
    reserving: bool,
    /// False while `history.jsonl` refuses writes (a full disk).
    writable: bool,
}

impl History {
    /// History over `recent` (oldest first), giving ids from `next_id`, with ids up to
    /// `reserved_through` already reserved.
    pub fn new(
        limit: usize,
        mut recent: VecDeque<Bytes>,
        next_id: u64,
        reserved_through: u64,
    ) -> History {
        while recent.len() > limit {
            recent.pop_front();
        }
        History {
            limit,
            recent,
            frame: None,
            next_id,
            reserved_through,
            reserving: false,
            writable: true,
        }
    }

    /// The id the next message gets.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// The last id given (0 before any).
    pub fn last_id(&self) -> u64 {
        self.next_id.saturating_sub(1)
    }

    /// Takes the next id, if it is within the reservation.
    pub fn take_id(&mut self) -> Option<u64> {
        if self.next_id > self.reserved_through || self.next_id > MAX_MESSAGE_ID {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        Some(id)
    }

    /// The reservation to write now, if one is due (less than half a block left and
    /// none on its way); it is then on its way until [`reserved`](Self::reserved) or
    /// [`reservation_failed`](Self::reservation_failed).
    pub fn reservation_due(&mut self) -> Option<u64> {
        if self.reserving || self.reserved_through.saturating_sub(self.next_id) >= ID_BLOCK / 2 {
            return None;
        }
        self.reserving = true;
        Some((self.next_id + ID_BLOCK).min(MAX_MESSAGE_ID))
    }

    /// A reservation up to `through` is on disk.
    pub fn reserved(&mut self, through: u64) {
        self.reserving = false;
        self.reserved_through = self.reserved_through.max(through);
    }

    /// A reservation could not be written; the next message asks again.
    pub fn reservation_failed(&mut self) {
        self.reserving = false;
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

    /// Whether messages can be recorded on disk now.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// `history.jsonl` started or stopped taking writes.
    pub fn set_writable(&mut self, writable: bool) {
        self.writable = writable;
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
        let mut history = History::new(2, VecDeque::new(), 1, 100);
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
        let mut history = History::new(1000, VecDeque::new(), 1, 100);
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
    fn ids_are_given_only_within_the_reservation() {
        let mut history = History::new(10, VecDeque::new(), 1, 0);
        assert_eq!(history.take_id(), None, "nothing reserved yet");
        let through = history.reservation_due().unwrap();
        assert_eq!(through, 1 + ID_BLOCK);
        assert_eq!(history.reservation_due(), None, "one on its way");
        history.reserved(through);
        assert_eq!(history.take_id(), Some(1));
        assert_eq!(history.reservation_due(), None, "plenty left");
        while history.next_id() < ID_BLOCK / 2 + 2 {
            history.take_id().unwrap();
        }
        let next = history.reservation_due().unwrap();
        assert!(next > through);
        history.reservation_failed();
        assert!(history.reservation_due().is_some(), "asked again");
        while history.take_id().is_some() {}
        assert_eq!(history.last_id(), through);
    }
}
