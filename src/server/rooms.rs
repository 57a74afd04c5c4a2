//! The content of `rooms.json`: the rooms, and which accounts are members of which.
//!
//! Plain data owned by `ChatServer`, changed only through [`Rooms::apply`] of a
//! [`RoomChange`], the same values the store writes, so memory and disk agree. A room's
//! name follows the rules of account names and is compared by [`name_key`] (shown as it
//! was first created). `lobby` always exists and every account is a member of it; it is
//! not stored. Membership belongs to the account, not to a connection. A room is never
//! deleted: an empty room keeps its history.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::names::name_key;
use crate::protocol::LOBBY;

/// Format version written into the file.
pub const ROOMS_FORMAT: u32 = 1;

/// One room other than `lobby`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Room {
    /// The name as first created.
    pub name: String,
    pub created_ms: u64,
    /// Name keys of the member accounts.
    #[serde(default)]
    pub members: BTreeSet<String>,
}

/// Every room but `lobby`, by name key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rooms {
    #[serde(default = "format_version")]
    pub version: u32,
    #[serde(default)]
    pub rooms: BTreeMap<String, Room>,
    /// Account key → keys of its rooms (not `lobby`); derived, never stored.
    #[serde(skip)]
    by_user: BTreeMap<String, BTreeSet<String>>,
}

fn format_version() -> u32 {
    ROOMS_FORMAT
}

/// One change to the rooms: applied, stored, replayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RoomChange {
    /// Creates the room with this name (no-op if it exists).
    Create { name: String, created_ms: u64 },
    /// Makes the account `user` a member of the room `room` (keys).
    Join { room: String, user: String },
    /// Ends the account's membership of the room.
    Part { room: String, user: String },
    /// Ends every membership of one account (it was deleted).
    RemoveUser { user: String },
    /// Ends every membership (the identities were cleared); rooms stay.
    ClearMembers,
}

/// What a room means for one account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// No such room.
    Unknown,
    NotMember,
    Member,
}

impl Rooms {
    /// No rooms but `lobby`.
    pub fn new() -> Rooms {
        Rooms {
            version: ROOMS_FORMAT,
            ..Rooms::default()
        }
    }

    /// Rebuilds what is derived, after loading.
    pub fn reindex(&mut self) {
        self.by_user.clear();
        for (key, room) in &self.rooms {
            for user in &room.members {
                self.by_user
                    .entry(user.clone())
                    .or_default()
                    .insert(key.clone());
            }
        }
    }

    /// Applies one change.
    pub fn apply(&mut self, change: &RoomChange) {
        match change {
            RoomChange::Create { name, created_ms } => {
                let key = name_key(name);
                if key != LOBBY {
                    self.rooms.entry(key).or_insert_with(|| Room {
                        name: name.clone(),
                        created_ms: *created_ms,
                        members: BTreeSet::new(),
                    });
                }
            }
            RoomChange::Join { room, user } => {
                if let Some(entry) = self.rooms.get_mut(room) {
                    entry.members.insert(user.clone());
                    self.by_user
                        .entry(user.clone())
                        .or_default()
                        .insert(room.clone());
                }
            }
            RoomChange::Part { room, user } => {
                if let Some(entry) = self.rooms.get_mut(room) {
                    entry.members.remove(user);
                }
                if let Some(rooms) = self.by_user.get_mut(user) {
                    rooms.remove(room);
                    if rooms.is_empty() {
                        self.by_user.remove(user);
                    }
                }
            }
            RoomChange::RemoveUser { user } => {
                for room in self.by_user.remove(user).unwrap_or_default() {
                    if let Some(entry) = self.rooms.get_mut(&room) {
                        entry.members.remove(user);
                    }
                }
            }
            RoomChange::ClearMembers => {
                for room in self.rooms.values_mut() {
                    room.members.clear();
                }
                self.by_user.clear();
            }
        }
    }

    /// The key of the room called `name` if it exists (`lobby` always does).
    pub fn find(&self, name: &str) -> Option<String> {
        let key = name_key(name);
        (key == LOBBY || self.rooms.contains_key(&key)).then_some(key)
    }

    /// The name of the room with this key, as first created.
    pub fn name_of<'a>(&'a self, key: &'a str) -> Option<&'a str> {
        if key == LOBBY {
            return Some(LOBBY);
        }
        self.rooms.get(key).map(|r| r.name.as_str())
    }

    /// What the room `key` is for the account `user`.
    pub fn membership(&self, key: &str, user: &str) -> Membership {
        if key == LOBBY {
            return Membership::Member;
        }
        match self.rooms.get(key) {
            None => Membership::Unknown,
            Some(room) if room.members.contains(user) => Membership::Member,
            Some(_) => Membership::NotMember,
        }
    }

    /// The account's rooms other than `lobby`, by key (sorted).
    pub fn rooms_of(&self, user: &str) -> Vec<String> {
        self.by_user
            .get(user)
            .map(|rooms| rooms.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The member keys of a room other than `lobby`.
    pub fn members(&self, key: &str) -> impl Iterator<Item = &String> {
        self.rooms
            .get(key)
            .into_iter()
            .flat_map(|r| r.members.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(name: &str) -> RoomChange {
        RoomChange::Create {
            name: name.into(),
            created_ms: 1,
        }
    }

    fn join(room: &str, user: &str) -> RoomChange {
        RoomChange::Join {
            room: room.into(),
            user: user.into(),
        }
    }

    #[test]
    fn rooms_are_found_ignoring_case_and_keep_their_first_name() {
        let mut rooms = Rooms::new();
        rooms.apply(&create("Rust-Fans"));
        rooms.apply(&create("RUST-fans"));
        assert_eq!(rooms.find("rust-FANS").as_deref(), Some("rust-fans"));
        assert_eq!(rooms.name_of("rust-fans"), Some("Rust-Fans"));
        assert_eq!(rooms.find("Lobby").as_deref(), Some("lobby"));
        assert!(rooms.find("nowhere").is_none());
        rooms.apply(&create("LOBBY"));
        assert!(rooms.rooms.is_empty() || !rooms.rooms.contains_key("lobby"));
    }

    #[test]
    fn membership_belongs_to_the_account() {
        let mut rooms = Rooms::new();
        rooms.apply(&create("a"));
        rooms.apply(&create("b"));
        rooms.apply(&join("a", "ann"));
        rooms.apply(&join("b", "ann"));
        rooms.apply(&join("a", "bob"));
        assert_eq!(rooms.membership("a", "ann"), Membership::Member);
        assert_eq!(rooms.membership("b", "bob"), Membership::NotMember);
        assert_eq!(rooms.membership("c", "bob"), Membership::Unknown);
        assert_eq!(rooms.membership("lobby", "anyone"), Membership::Member);
        assert_eq!(rooms.rooms_of("ann"), ["a", "b"]);
        rooms.apply(&RoomChange::Part {
            room: "a".into(),
            user: "ann".into(),
        });
        assert_eq!(rooms.rooms_of("ann"), ["b"]);
        assert_eq!(rooms.members("a").collect::<Vec<_>>(), ["bob"]);
        rooms.apply(&RoomChange::RemoveUser { user: "ann".into() });
        assert!(rooms.rooms_of("ann").is_empty());
        assert_eq!(rooms.members("b").count(), 0);
        rooms.apply(&RoomChange::ClearMembers);
        assert!(rooms.rooms_of("bob").is_empty());
        assert_eq!(rooms.rooms.len(), 2, "rooms stay");
    }

    #[test]
    fn round_trips_and_reindexes() {
        let mut rooms = Rooms::new();
        rooms.apply(&create("Zoë-room"));
        rooms.apply(&create("ops"));
        rooms.apply(&join("ops", "ann"));
        let text = serde_json::to_string(&rooms).unwrap();
        let mut back: Rooms = serde_json::from_str(&text).unwrap();
        back.reindex();
        assert_eq!(back, rooms);
        assert_eq!(back.rooms_of("ann"), ["ops"]);
    }
}
