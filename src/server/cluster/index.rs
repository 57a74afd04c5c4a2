//! The per-node index of the message stream: for every room, every conversation and
//! every account's direct messages, the stream sequences (= message ids) of its
//! messages, ascending; and the newest messages themselves.
//!
//! JetStream reads a stream forwards only; paging backwards through one room among
//! millions of messages needs to know where that room's messages are. Each node builds
//! this index once, reading the stream at start, and keeps it current from its one
//! subscription; a page is then a binary search and a direct get per message that is
//! not cached, whatever the stream holds. It costs 8 bytes per room message and 24 per
//! direct message (one entry in the conversation, one for each of the two accounts).

use std::collections::{BTreeMap, HashMap};

use crate::protocol::ChatMessage;

use super::layout::Scope;

/// Whose messages a history page is taken from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HistoryOf {
    /// A room, by room key.
    Room(String),
    /// The direct messages between two accounts (by account id, either order).
    Conversation(String, String),
    /// Every direct message an account (by id) sent or received.
    Direct(String),
}

/// See the module documentation.
#[derive(Debug)]
pub struct MessageIndex {
    rooms: HashMap<String, Vec<u64>>,
    conversations: HashMap<(String, String), Vec<u64>>,
    accounts: HashMap<String, Vec<u64>>,
    /// The newest messages, by id, at most `cache_limit`.
    cache: BTreeMap<u64, ChatMessage>,
    cache_limit: usize,
    last: u64,
    count: u64,
}

impl MessageIndex {
    /// An empty index that keeps the newest `cache_limit` messages.
    pub fn new(cache_limit: usize) -> MessageIndex {
        MessageIndex {
            rooms: HashMap::new(),
            conversations: HashMap::new(),
            accounts: HashMap::new(),
            cache: BTreeMap::new(),
            cache_limit,
            last: 0,
            count: 0,
        }
    }

    /// Adds the message `id` of `scope` (ids come in ascending order; an id not above
    /// the last one is ignored, so a message read twice is indexed once). Returns
    /// whether it was new.
    pub fn record(&mut self, id: u64, scope: &Scope, message: Option<ChatMessage>) -> bool {
        if id <= self.last {
            return false;
        }
        self.last = id;
        self.count += 1;
        match scope {
            Scope::Room(room) => self.rooms.entry(room.clone()).or_default().push(id),
            Scope::Direct(a, b) => {
                self.conversations
                    .entry((a.clone(), b.clone()))
                    .or_default()
                    .push(id);
                self.accounts.entry(a.clone()).or_default().push(id);
                if a != b {
                    self.accounts.entry(b.clone()).or_default().push(id);
                }
            }
        }
        if let Some(message) = message {
            if self.cache_limit > 0 {
                self.cache.insert(id, message);
                while self.cache.len() > self.cache_limit {
                    self.cache.pop_first();
                }
            }
        }
        true
    }

    /// Moves the last id seen without indexing anything (a message that could not be
    /// read still takes its place in the sequence).
    pub fn skip(&mut self, id: u64) {
        self.last = self.last.max(id);
    }

    /// The ids of up to `limit` messages of `of` below `before` (all when `None`), the
    /// newest of them, ascending.
    pub fn page(&self, of: &HistoryOf, before: Option<u64>, limit: usize) -> Vec<u64> {
        let ids: &[u64] = match of {
            HistoryOf::Room(room) => self.rooms.get(room).map_or(&[], Vec::as_slice),
            HistoryOf::Conversation(a, b) => {
                let key = if a <= b {
                    (a.clone(), b.clone())
                } else {
                    (b.clone(), a.clone())
                };
                self.conversations.get(&key).map_or(&[], Vec::as_slice)
            }
            HistoryOf::Direct(uid) => self.accounts.get(uid).map_or(&[], Vec::as_slice),
        };
        let end = match before {
            Some(before) => ids.partition_point(|&id| id < before),
            None => ids.len(),
        };
        ids[end.saturating_sub(limit)..end].to_vec()
    }

    /// A cached message.
    pub fn cached(&self, id: u64) -> Option<&ChatMessage> {
        self.cache.get(&id)
    }

    /// The highest id seen (0 before any).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Messages indexed.
    pub fn count(&self) -> u64 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: u64) -> ChatMessage {
        ChatMessage {
            id,
            room: None,
            to: None,
            from: "a".into(),
            text: format!("m{id}"),
            ts: 0,
        }
    }

    #[test]
    fn pages_come_from_the_right_scope_newest_last() {
        let mut index = MessageIndex::new(2);
        let lobby = Scope::Room("lobby".into());
        let dm = Scope::direct("u2", "u1");
        for id in 1..=10 {
            let scope = if id % 3 == 0 { &dm } else { &lobby };
            assert!(index.record(id, scope, Some(message(id))));
        }
        assert!(!index.record(10, &lobby, None), "seen");
        let room = HistoryOf::Room("lobby".into());
        assert_eq!(index.page(&room, None, 3), vec![7, 8, 10]);
        assert_eq!(index.page(&room, Some(7), 3), vec![2, 4, 5]);
        assert_eq!(index.page(&room, Some(4), 50), vec![1, 2]);
        assert_eq!(index.page(&room, Some(1), 50), Vec::<u64>::new());
        let conv = HistoryOf::Conversation("u1".into(), "u2".into());
        assert_eq!(index.page(&conv, None, 50), vec![3, 6, 9]);
        let reversed = HistoryOf::Conversation("u2".into(), "u1".into());
        assert_eq!(index.page(&reversed, Some(9), 1), vec![6]);
        assert_eq!(
            index.page(&HistoryOf::Direct("u1".into()), None, 2),
            vec![6, 9]
        );
        assert!(index
            .page(&HistoryOf::Room("other".into()), None, 5)
            .is_empty());
        assert_eq!(index.cached(10).map(|m| m.id), Some(10));
        assert!(index.cached(8).is_none(), "only the newest two are kept");
        assert_eq!((index.last(), index.count()), (10, 10));
    }

    #[test]
    fn a_message_to_oneself_is_listed_once() {
        let mut index = MessageIndex::new(0);
        index.record(1, &Scope::direct("u1", "u1"), None);
        assert_eq!(
            index.page(&HistoryOf::Direct("u1".into()), None, 9),
            vec![1]
        );
        index.skip(5);
        assert_eq!(index.last(), 5);
        assert!(!index.record(4, &Scope::Room("r".into()), None));
    }
}
