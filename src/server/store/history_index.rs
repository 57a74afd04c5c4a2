//! The index that makes paging through the whole history cheap: for each conversation
//! (a room, or the direct messages between two accounts), where each of its lines sits
//! in `history.jsonl`, in id order.
//!
//! Built once at start-up while the file is read, and kept up to date as messages are
//! appended. A page is a binary search for `before` and at most `limit` positioned
//! reads: about the same cost with a thousand messages or ten million. It costs 24
//! bytes per message in memory (24 MB for a million).

use std::borrow::Cow;
use std::collections::HashMap;

use crate::names::name_key;
use crate::protocol::LOBBY;

/// Whose messages: a room's, or two accounts' direct messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Conversation {
    /// A room, by name key.
    Room(String),
    /// The direct messages between two accounts, by name keys in order.
    Direct(String, String),
}

impl Conversation {
    /// The direct messages between `a` and `b` (name keys), whichever wrote.
    pub fn direct(a: &str, b: &str) -> Conversation {
        if a <= b {
            Conversation::Direct(a.to_string(), b.to_string())
        } else {
            Conversation::Direct(b.to_string(), a.to_string())
        }
    }

    /// Where a stored message belongs: its `to` (with its `from`), else its `room`,
    /// else `lobby` (lines written before rooms existed).
    pub fn of_line(room: Option<&str>, to: Option<&str>, from: &str) -> Conversation {
        match (to, room) {
            (Some(to), _) => Conversation::direct(&name_key(from), &name_key(to)),
            (None, Some(room)) => Conversation::Room(name_key(room)),
            (None, None) => Conversation::Room(LOBBY.to_string()),
        }
    }
}

/// Names as stored, by the conversation or key they stand for, so that reading a long
/// history normalises each distinct name once rather than once per line (NFKC and case
/// folding were a third of the start-up with a million lines).
#[derive(Debug, Default)]
pub struct ConversationCache {
    rooms: HashMap<String, Conversation>,
    names: HashMap<String, String>,
}

/// Distinct names a [`ConversationCache`] keeps; beyond it the others are normalised
/// line by line (still right, only slower).
const MAX_CACHED_NAMES: usize = 100_000;

impl ConversationCache {
    /// Where a stored message belongs, as [`Conversation::of_line`] says.
    pub fn of_line(
        &mut self,
        room: Option<&str>,
        to: Option<&str>,
        from: &str,
    ) -> Cow<'_, Conversation> {
        match (to, room) {
            (Some(to), _) => {
                let (from, to) = (self.key(from), self.key(to));
                Cow::Owned(Conversation::direct(&from, &to))
            }
            (None, room) => {
                let room = room.unwrap_or(LOBBY);
                if !self.rooms.contains_key(room) {
                    let conversation = Conversation::Room(name_key(room));
                    if self.rooms.len() >= MAX_CACHED_NAMES {
                        return Cow::Owned(conversation);
                    }
                    self.rooms.insert(room.to_string(), conversation);
                }
                match self.rooms.get(room) {
                    Some(conversation) => Cow::Borrowed(conversation),
                    None => Cow::Owned(Conversation::Room(name_key(room))),
                }
            }
        }
    }

    /// The name key of `name`.
    fn key(&mut self, name: &str) -> String {
        if let Some(key) = self.names.get(name) {
            return key.clone();
        }
        let key = name_key(name);
        if self.names.len() < MAX_CACHED_NAMES {
            self.names.insert(name.to_string(), key.clone());
        }
        key
    }
}

/// Where one message's line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub id: u64,
    /// Byte offset of the line in `history.jsonl`.
    pub offset: u64,
    /// Length of the line without its newline.
    pub len: u32,
}

/// The index. See the module documentation.
#[derive(Debug, Default)]
pub struct HistoryIndex {
    conversations: HashMap<Conversation, Vec<Entry>>,
}

impl HistoryIndex {
    /// Records a message (ids must grow, as they do in the file).
    pub fn add(&mut self, conversation: Conversation, entry: Entry) {
        self.conversations
            .entry(conversation)
            .or_default()
            .push(entry);
    }

    /// Records a message like [`add`](Self::add), copying the conversation only when it
    /// is new to the index.
    pub fn add_to(&mut self, conversation: &Conversation, entry: Entry) {
        match self.conversations.get_mut(conversation) {
            Some(entries) => entries.push(entry),
            None => {
                self.conversations.insert(conversation.clone(), vec![entry]);
            }
        }
    }

    /// The last `limit` messages of `conversation` with an id below `before` (no bound
    /// without it) and not below `floor`, oldest first.
    pub fn page(
        &self,
        conversation: &Conversation,
        before: Option<u64>,
        floor: u64,
        limit: usize,
    ) -> &[Entry] {
        let Some(entries) = self.conversations.get(conversation) else {
            return &[];
        };
        let end = match before {
            Some(before) => entries.partition_point(|e| e.id < before),
            None => entries.len(),
        };
        let lowest = entries.partition_point(|e| e.id < floor);
        let start = end.saturating_sub(limit).max(lowest);
        if start >= end {
            return &[];
        }
        &entries[start..end]
    }

    /// How many messages are indexed in all.
    pub fn len(&self) -> usize {
        self.conversations.values().map(Vec::len).sum()
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.conversations.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64) -> Entry {
        Entry {
            id,
            offset: id * 100,
            len: 99,
        }
    }

    fn ids(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.id).collect()
    }

    #[test]
    fn pages_go_back_from_before() {
        let mut index = HistoryIndex::default();
        let room = Conversation::Room("ops".into());
        for id in [2, 5, 9, 10, 14, 20] {
            index.add(room.clone(), entry(id));
        }
        index.add(Conversation::Room("other".into()), entry(11));
        assert_eq!(ids(index.page(&room, None, 0, 3)), [10, 14, 20]);
        assert_eq!(ids(index.page(&room, Some(10), 0, 3)), [2, 5, 9]);
        assert_eq!(ids(index.page(&room, Some(9), 0, 50)), [2, 5]);
        assert_eq!(ids(index.page(&room, Some(2), 0, 50)), Vec::<u64>::new());
        assert_eq!(ids(index.page(&room, Some(1000), 0, 2)), [14, 20]);
        assert_eq!(
            ids(index.page(&room, None, 9, 50)),
            [9, 10, 14, 20],
            "floor"
        );
        let nowhere = Conversation::Room("nowhere".into());
        assert!(index.page(&nowhere, None, 0, 5).is_empty());
        assert_eq!(index.len(), 7);
    }

    #[test]
    fn conversations_of_lines() {
        assert_eq!(
            Conversation::of_line(None, None, "ann"),
            Conversation::Room("lobby".into())
        );
        assert_eq!(
            Conversation::of_line(Some("Ops"), None, "ann"),
            Conversation::Room("ops".into())
        );
        assert_eq!(
            Conversation::of_line(None, Some("Bob"), "Ann"),
            Conversation::of_line(None, Some("ann"), "BOB")
        );
    }

    #[test]
    fn the_cache_gives_the_conversations_of_lines() {
        let mut cache = ConversationCache::default();
        for (room, to, from) in [
            (None, None, "ann"),
            (Some("Ops"), None, "ann"),
            (Some("ops"), None, "Bob"),
            (Some("OPS"), None, "Bob"),
            (None, Some("Bob"), "Ann"),
            (None, Some("ann"), "BOB"),
            (Some("Ｏｐｓ"), None, "x"),
        ] {
            for _ in 0..2 {
                assert_eq!(
                    *cache.of_line(room, to, from),
                    Conversation::of_line(room, to, from),
                    "{room:?} {to:?} {from}"
                );
            }
        }
    }

    #[test]
    fn a_page_of_a_million_is_a_search() {
        let mut index = HistoryIndex::default();
        let room = Conversation::Room("big".into());
        for id in 1..=1_000_000 {
            index.add(room.clone(), entry(id));
        }
        assert_eq!(
            ids(index.page(&room, Some(500_001), 0, 3)),
            [499_998, 499_999, 500_000]
        );
    }
}
