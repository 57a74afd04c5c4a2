//! Who is online in the whole cluster, from this node's point of view: its own users
//! (told by the server as connections come and go) and every other node's, from their
//! heartbeats in the presence bucket.
//!
//! A node that stops beating (killed, cut off) is judged gone after the timeout and
//! its users go offline with it, unless they are online elsewhere. While this node
//! cannot hear NATS at all it judges nobody: when it hears again, every node gets a
//! fresh timeout, so a NATS outage does not look like every other node dying.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use super::records::{NodeBeat, OnlineUser};

/// A change of who is online, cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceChange {
    /// The user's first connection anywhere: announce `joined`.
    Online { key: String, name: String },
    /// The user's last connection anywhere closed (or its node died): announce `left`.
    Offline { key: String, name: String },
    /// A node began beating.
    NodeUp { node: String, label: String },
    /// A node stopped (said goodbye or timed out).
    NodeDown { node: String, label: String },
}

/// A node alive, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub node: String,
    pub label: String,
    pub started_ms: u64,
    /// Users online there.
    pub users: usize,
    /// Connections of those users there.
    pub connections: u64,
    /// Whether it is this node.
    pub this_node: bool,
}

struct Remote {
    beat: NodeBeat,
    last_seen: Instant,
}

/// See the module documentation.
pub struct PresenceBoard {
    node: String,
    label: String,
    started_ms: u64,
    local: BTreeMap<String, OnlineUser>,
    remote: HashMap<String, Remote>,
    timeout: Duration,
}

impl PresenceBoard {
    /// The board of node `node`; other nodes are gone after `timeout` without a beat.
    pub fn new(node: &str, label: &str, started_ms: u64, timeout: Duration) -> PresenceBoard {
        PresenceBoard {
            node: node.to_string(),
            label: label.to_string(),
            started_ms,
            local: BTreeMap::new(),
            remote: HashMap::new(),
            timeout,
        }
    }

    /// This node's beat.
    pub fn beat(&self) -> NodeBeat {
        NodeBeat {
            label: self.label.clone(),
            started_ms: self.started_ms,
            users: self.local.clone(),
        }
    }

    fn total(&self, key: &str) -> u64 {
        let local = self.local.get(key).map_or(0, |u| u64::from(u.conns));
        let remote: u64 = self
            .remote
            .values()
            .filter_map(|r| r.beat.users.get(key))
            .map(|u| u64::from(u.conns))
            .sum();
        local + remote
    }

    fn name_of(&self, key: &str) -> Option<String> {
        self.local
            .get(key)
            .or_else(|| self.remote.values().find_map(|r| r.beat.users.get(key)))
            .map(|u| u.name.clone())
    }

    /// Runs `change` and reports the users whose being online anywhere changed among
    /// `keys`.
    fn diff<F: FnOnce(&mut Self)>(
        &mut self,
        keys: BTreeSet<String>,
        change: F,
    ) -> Vec<PresenceChange> {
        let before: Vec<(String, Option<String>, bool)> = keys
            .into_iter()
            .map(|k| {
                let name = self.name_of(&k);
                let online = self.total(&k) > 0;
                (k, name, online)
            })
            .collect();
        change(self);
        let mut changes = Vec::new();
        for (key, old_name, was) in before {
            let is = self.total(&key) > 0;
            match (was, is) {
                (false, true) => {
                    let name = self.name_of(&key).unwrap_or_else(|| key.clone());
                    changes.push(PresenceChange::Online { key, name });
                }
                (true, false) => {
                    let name = old_name.unwrap_or_else(|| key.clone());
                    changes.push(PresenceChange::Offline { key, name });
                }
                _ => {}
            }
        }
        changes
    }

    /// One more connection of `key` on this node.
    pub fn connected(&mut self, key: &str, name: &str) -> Option<PresenceChange> {
        let keys = BTreeSet::from([key.to_string()]);
        self.diff(keys, |board| {
            let user = board.local.entry(key.to_string()).or_insert(OnlineUser {
                name: name.to_string(),
                conns: 0,
            });
            user.conns = user.conns.saturating_add(1);
        })
        .pop()
    }

    /// One connection fewer of `key` on this node.
    pub fn disconnected(&mut self, key: &str) -> Option<PresenceChange> {
        let keys = BTreeSet::from([key.to_string()]);
        self.diff(keys, |board| {
            if let Some(user) = board.local.get_mut(key) {
                user.conns = user.conns.saturating_sub(1);
                if user.conns == 0 {
                    board.local.remove(key);
                }
            }
        })
        .pop()
    }

    /// A beat of another node, written at `written`, read at `now`. A beat already
    /// older than the timeout when read (a node that died shortly before this one
    /// started, or while this one could not hear) says the node is gone.
    pub fn remote_beat(
        &mut self,
        node: &str,
        beat: NodeBeat,
        written: Instant,
        now: Instant,
    ) -> Vec<PresenceChange> {
        if node == self.node {
            return Vec::new();
        }
        if now.saturating_duration_since(written) >= self.timeout {
            return self.remote_gone(node);
        }
        let mut keys: BTreeSet<String> = beat.users.keys().cloned().collect();
        let new_node = match self.remote.get(node) {
            Some(old) => {
                keys.extend(old.beat.users.keys().cloned());
                None
            }
            None => Some(PresenceChange::NodeUp {
                node: node.to_string(),
                label: beat.label.clone(),
            }),
        };
        let mut changes: Vec<PresenceChange> = new_node.into_iter().collect();
        changes.extend(self.diff(keys, |board| {
            board.remote.insert(
                node.to_string(),
                Remote {
                    beat,
                    last_seen: written,
                },
            );
        }));
        changes
    }

    /// Another node is gone (its entry was deleted, or it timed out).
    pub fn remote_gone(&mut self, node: &str) -> Vec<PresenceChange> {
        let Some(old) = self.remote.get(node) else {
            return Vec::new();
        };
        let label = old.beat.label.clone();
        let keys: BTreeSet<String> = old.beat.users.keys().cloned().collect();
        let mut changes = self.diff(keys, |board| {
            board.remote.remove(node);
        });
        changes.push(PresenceChange::NodeDown {
            node: node.to_string(),
            label,
        });
        changes
    }

    /// Every other node not heard from within the timeout is gone.
    pub fn expire(&mut self, now: Instant) -> Vec<PresenceChange> {
        let dead: Vec<String> = self
            .remote
            .iter()
            .filter(|(_, r)| now.saturating_duration_since(r.last_seen) >= self.timeout)
            .map(|(node, _)| node.clone())
            .collect();
        dead.iter()
            .flat_map(|node| self.remote_gone(node))
            .collect()
    }

    /// This node hears NATS again: every node gets a fresh timeout.
    pub fn heard_again(&mut self, now: Instant) {
        for remote in self.remote.values_mut() {
            remote.last_seen = now;
        }
    }

    /// Everyone online anywhere: (name key, name), by name key.
    pub fn online(&self) -> Vec<(String, String)> {
        let mut all: BTreeMap<String, String> = BTreeMap::new();
        for (key, user) in self
            .local
            .iter()
            .chain(self.remote.values().flat_map(|r| r.beat.users.iter()))
        {
            all.entry(key.clone()).or_insert_with(|| user.name.clone());
        }
        all.into_iter().collect()
    }

    /// Everyone online on other nodes: (name key, name), by name key.
    pub fn online_elsewhere(&self) -> Vec<(String, String)> {
        let mut all: BTreeMap<String, String> = BTreeMap::new();
        for (key, user) in self.remote.values().flat_map(|r| r.beat.users.iter()) {
            all.entry(key.clone()).or_insert_with(|| user.name.clone());
        }
        all.into_iter().collect()
    }

    /// On how many nodes `key` is online (this one included); at least 1.
    pub fn nodes_with(&self, key: &str) -> usize {
        let local = usize::from(self.local.contains_key(key));
        let remote = self
            .remote
            .values()
            .filter(|r| r.beat.users.contains_key(key))
            .count();
        (local + remote).max(1)
    }

    /// Whether `key` is online anywhere.
    pub fn is_online(&self, key: &str) -> bool {
        self.total(key) > 0
    }

    /// The nodes alive, this one first, then by id.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let info = |node: &str, beat: &NodeBeat, this_node: bool| NodeInfo {
            node: node.to_string(),
            label: beat.label.clone(),
            started_ms: beat.started_ms,
            users: beat.users.len(),
            connections: beat.users.values().map(|u| u64::from(u.conns)).sum(),
            this_node,
        };
        let mut nodes = vec![info(&self.node, &self.beat(), true)];
        let mut others: Vec<NodeInfo> = self
            .remote
            .iter()
            .map(|(node, r)| info(node, &r.beat, false))
            .collect();
        others.sort_by(|a, b| a.node.cmp(&b.node));
        nodes.extend(others);
        nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(users: &[(&str, u32)]) -> NodeBeat {
        NodeBeat {
            label: "other".into(),
            started_ms: 1,
            users: users
                .iter()
                .map(|(k, c)| {
                    (
                        k.to_string(),
                        OnlineUser {
                            name: k.to_uppercase(),
                            conns: *c,
                        },
                    )
                })
                .collect(),
        }
    }

    fn online(key: &str) -> PresenceChange {
        PresenceChange::Online {
            key: key.into(),
            name: key.to_uppercase(),
        }
    }

    fn offline(key: &str) -> PresenceChange {
        PresenceChange::Offline {
            key: key.into(),
            name: key.to_uppercase(),
        }
    }

    #[test]
    fn joined_on_the_first_connection_anywhere_left_on_the_last() {
        let t0 = Instant::now();
        let mut board = PresenceBoard::new("me", "here", 0, Duration::from_secs(20));
        assert_eq!(board.connected("ann", "ANN"), Some(online("ann")));
        assert_eq!(board.connected("ann", "ANN"), None);
        let changes = board.remote_beat("n2", beat(&[("ann", 1), ("bob", 2)]), t0, t0);
        assert_eq!(
            changes,
            vec![
                PresenceChange::NodeUp {
                    node: "n2".into(),
                    label: "other".into()
                },
                online("bob")
            ]
        );
        assert_eq!(board.disconnected("ann"), None);
        assert_eq!(board.disconnected("ann"), None, "still on n2");
        assert!(board.is_online("ann"));
        assert_eq!(
            board.remote_beat("n2", beat(&[("bob", 1)]), t0, t0),
            vec![offline("ann")]
        );
        assert_eq!(board.online(), vec![("bob".into(), "BOB".into())]);
        assert_eq!(board.online_elsewhere(), board.online());
        board.connected("cy", "CY");
        assert_eq!(board.online().len(), 2);
        assert_eq!(board.online_elsewhere(), vec![("bob".into(), "BOB".into())]);
        assert!(board
            .remote_beat("me", beat(&[("zed", 1)]), t0, t0)
            .is_empty());
    }

    #[test]
    fn a_silent_node_takes_its_users_with_it_but_not_while_we_are_deaf() {
        let t0 = Instant::now();
        let mut board = PresenceBoard::new("me", "here", 0, Duration::from_secs(20));
        board.connected("ann", "ANN");
        board.remote_beat("n2", beat(&[("ann", 1), ("bob", 1)]), t0, t0);
        assert!(board.expire(t0 + Duration::from_secs(19)).is_empty());
        board.heard_again(t0 + Duration::from_secs(15));
        assert!(board.expire(t0 + Duration::from_secs(30)).is_empty());
        let changes = board.expire(t0 + Duration::from_secs(35));
        assert_eq!(
            changes,
            vec![
                offline("bob"),
                PresenceChange::NodeDown {
                    node: "n2".into(),
                    label: "other".into()
                }
            ]
        );
        assert!(board.is_online("ann"), "ann is still here");
        // A beat already stale when read: the node is not counted.
        let late = t0 + Duration::from_secs(60);
        let stale = late - Duration::from_secs(21);
        assert!(board
            .remote_beat("n3", beat(&[("cy", 1)]), stale, late)
            .is_empty());
        assert!(!board.is_online("cy"));
        let nodes = board.nodes();
        assert_eq!(nodes.len(), 1);
        assert!(nodes[0].this_node);
        assert_eq!((nodes[0].users, nodes[0].connections), (1, 1));
    }
}
