//! What the cluster store keeps beside the [`Cluster`](crate::server::cluster::Cluster)
//! handle, and how the cluster's news becomes `ChatServer`'s: the account ids (direct
//! messages, tokens and memberships name accounts by id, `ChatServer` by name key),
//! the translation of [`ClusterEvent`]s into [`StoreEvent`]s, and the state
//! `ChatServer` starts from ([`recovered`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::actors::chat_server::Recovered;
use crate::codec::payload_of;
use crate::names::name_key;
use crate::protocol::ChatMessage;
use crate::server::cluster::{
    AdminCommand, BanRecord, ClusterEvent, NewMessage, PresenceChange, Scope, Snapshot, StateChange,
};
use crate::server::identity::{Ban, Identities, IdentityChange};
use crate::server::rooms::{RoomChange, Rooms};
use crate::server::store::{Delivery, StoreEvent, Target};
use crate::text;

/// The account ids this node knows, by name key; shared with the tasks that write
/// to NATS.
#[derive(Debug, Clone, Default)]
pub struct Uids(Arc<Mutex<HashMap<String, String>>>);

impl Uids {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, String>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The id of the account `key`.
    pub fn get(&self, key: &str) -> Option<String> {
        self.lock().get(key).cloned()
    }

    pub fn set(&self, key: &str, uid: &str) {
        self.lock().insert(key.to_string(), uid.to_string());
    }

    /// Forgets `key`, if it still has the id `uid` (`None`: whatever it has).
    pub fn forget(&self, key: &str, uid: Option<&str>) {
        let mut uids = self.lock();
        if uid.is_none() || uids.get(key).map(String::as_str) == uid {
            uids.remove(key);
        }
    }

    pub fn clear(&self) {
        self.lock().clear();
    }
}

/// A ban as `Identities` keeps it.
pub fn ban_of(record: BanRecord) -> Ban {
    Ban {
        name: record.name,
        reason: record.reason,
        since_ms: record.at_ms,
        revoked: record.revoked,
    }
}

/// The MESSAGE payload of a stored message.
pub fn payload(message: ChatMessage) -> Option<Bytes> {
    match Delivery::new(message) {
        Ok(delivery) => Some(payload_of(&delivery.frame)),
        Err(err) => {
            log::warn!("a stored message could not be serialised: {err}");
            None
        }
    }
}

/// Where a stored message goes, as `ChatServer` names it.
fn target(scope: &Scope, message: &ChatMessage) -> Option<Target> {
    match scope {
        Scope::Room(key) => Some(Target::Room {
            name: message.room.clone().unwrap_or_else(|| key.clone()),
            key: key.clone(),
        }),
        Scope::Direct(_, _) => {
            let to = message.to.clone()?;
            Some(Target::Direct {
                to_key: name_key(&to),
                to,
                from_key: name_key(&message.from),
            })
        }
    }
}

/// What `ChatServer` hears of one cluster event (nothing for some: a node coming or
/// going is only logged). `node` is this node's id.
pub fn translate(event: ClusterEvent, uids: &Uids, node: &str) -> Option<StoreEvent> {
    let event = match event {
        ClusterEvent::Message(NewMessage { scope, message }) => {
            let Some(target) = target(&scope, &message) else {
                log::warn!("message {} has no recipient; skipped", message.id);
                return None;
            };
            // Serialised once per node, here.
            match Delivery::new(message) {
                Ok(delivery) => StoreEvent::Message(delivery, target),
                Err(err) => {
                    log::warn!("a stored message could not be serialised: {err}");
                    return None;
                }
            }
        }
        ClusterEvent::State(change) => return state(change, uids),
        ClusterEvent::Cleared => {
            uids.clear();
            StoreEvent::Cleared
        }
        ClusterEvent::Presence(change) => match change {
            PresenceChange::Online { key, name } => StoreEvent::Online { key, name },
            PresenceChange::Offline { key, name } => StoreEvent::Offline { key, name },
            PresenceChange::NodeUp { node, label } => {
                log::info!("node {node} ({}) joined the cluster", text::quote(&label));
                return None;
            }
            PresenceChange::NodeDown { node, label } => {
                log::warn!("node {node} ({}) left the cluster", text::quote(&label));
                return None;
            }
        },
        ClusterEvent::Admin(envelope) => match envelope.command {
            AdminCommand::Kick {
                key,
                message,
                except,
            } => StoreEvent::Kick {
                key,
                message,
                except: except
                    .filter(|connection| connection.node == node)
                    .map(|connection| connection.session),
            },
        },
        ClusterEvent::Available(up) => StoreEvent::Available(up),
    };
    Some(event)
}

fn state(change: StateChange, uids: &Uids) -> Option<StoreEvent> {
    let event = match change {
        StateChange::Account {
            key,
            record: Some(record),
        } => {
            uids.set(&key, &record.uid);
            StoreEvent::Identity(IdentityChange::AddAccount {
                account: record.account(),
            })
        }
        StateChange::Account { key, record: None } => {
            uids.forget(&key, None);
            StoreEvent::Identity(IdentityChange::RemoveAccount { key })
        }
        StateChange::Ban {
            key,
            ban: Some(ban),
        } => StoreEvent::Identity(IdentityChange::Ban {
            key,
            ban: ban_of(ban),
        }),
        StateChange::Ban { key, ban: None } => StoreEvent::Identity(IdentityChange::Unban { key }),
        StateChange::Room {
            room: Some(room), ..
        } => StoreEvent::Room(RoomChange::Create {
            name: room.name,
            created_ms: room.created_ms,
        }),
        // Rooms are never deleted.
        StateChange::Room { room: None, .. } => return None,
        StateChange::Member {
            room,
            user,
            member: Some(_),
        } => StoreEvent::Room(RoomChange::Join { room, user }),
        StateChange::Member {
            room,
            user,
            member: None,
        } => StoreEvent::Room(RoomChange::Part { room, user }),
        // Tokens and IP identifications (an identification removed alone is nothing
        // `Identities` has a change for: it goes with its account).
        other => StoreEvent::Identity(other.identity_change()?),
    };
    Some(event)
}

/// The state `ChatServer` starts from, and the account ids, from the snapshot read at
/// start.
pub fn recovered(snapshot: &Snapshot, uids: &Uids) -> Recovered {
    let mut identities = Identities::new();
    for (key, record) in &snapshot.accounts {
        uids.set(key, &record.uid);
        identities.apply(&IdentityChange::AddAccount {
            account: record.account(),
        });
    }
    for (digest, entry) in &snapshot.tokens {
        identities.apply(&IdentityChange::IssueToken {
            digest: digest.clone(),
            record: entry.record(),
        });
    }
    for (ip, name) in &snapshot.ips {
        identities.apply(&IdentityChange::RememberIp {
            ip: *ip,
            name: name.clone(),
        });
    }
    for (key, ban) in &snapshot.bans {
        identities.apply(&IdentityChange::Ban {
            key: key.clone(),
            ban: ban_of(ban.clone()),
        });
    }
    let mut rooms = Rooms::new();
    for room in snapshot.rooms.values() {
        rooms.apply(&RoomChange::Create {
            name: room.name.clone(),
            created_ms: room.created_ms,
        });
    }
    for (room, user) in snapshot.members.keys() {
        rooms.apply(&RoomChange::Join {
            room: room.clone(),
            user: user.clone(),
        });
    }
    let room_history = snapshot
        .recent
        .rooms
        .iter()
        .map(|(key, messages)| {
            let recent: VecDeque<Bytes> = messages.iter().cloned().filter_map(payload).collect();
            (key.clone(), recent)
        })
        .collect();
    let direct_history = snapshot
        .accounts
        .iter()
        .filter_map(|(key, record)| {
            let messages = snapshot.recent.direct.get(&record.uid)?;
            let recent: VecDeque<(u64, Bytes)> = messages
                .iter()
                .cloned()
                .filter_map(|m| Some((m.id, payload(m)?)))
                .collect();
            Some((key.clone(), recent))
        })
        .collect();
    Recovered {
        identities,
        rooms,
        room_history,
        direct_history,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::cluster::{
        AccountRecord, AdminEnvelope, ConnectionRef, MemberRecord, Recent, RoomRecord,
    };

    fn chat(id: u64, room: Option<&str>, to: Option<&str>, from: &str) -> ChatMessage {
        ChatMessage {
            id,
            room: room.map(str::to_string),
            to: to.map(str::to_string),
            from: from.to_string(),
            text: "hi".into(),
            ts: 1,
        }
    }

    #[test]
    fn events_become_what_chat_server_applies() {
        let uids = Uids::default();
        let record = AccountRecord::new("Zoë", "h", 1);
        let added = translate(
            ClusterEvent::State(StateChange::Account {
                key: "zoë".into(),
                record: Some(record.clone()),
            }),
            &uids,
            "me",
        );
        assert!(matches!(
            added,
            Some(StoreEvent::Identity(IdentityChange::AddAccount { .. }))
        ));
        assert_eq!(uids.get("zoë"), Some(record.uid.clone()));

        let direct = translate(
            ClusterEvent::Message(NewMessage {
                scope: Scope::direct("u1", "u2"),
                message: chat(7, None, Some("Zoë"), "Ann"),
            }),
            &uids,
            "me",
        );
        let Some(StoreEvent::Message(delivery, target)) = direct else {
            panic!("not a message: {direct:?}");
        };
        assert_eq!(delivery.id, 7);
        assert_eq!(
            target,
            Target::Direct {
                to: "Zoë".into(),
                to_key: "zoë".into(),
                from_key: "ann".into()
            }
        );

        let kick = |node: &str| {
            translate(
                ClusterEvent::Admin(AdminEnvelope {
                    origin: "other".into(),
                    command: AdminCommand::Kick {
                        key: "zoë".into(),
                        message: "bye".into(),
                        except: Some(ConnectionRef {
                            node: node.into(),
                            session: 4,
                        }),
                    },
                }),
                &uids,
                "me",
            )
        };
        assert!(matches!(
            kick("me"),
            Some(StoreEvent::Kick {
                except: Some(4),
                ..
            })
        ));
        assert!(matches!(
            kick("other"),
            Some(StoreEvent::Kick { except: None, .. })
        ));

        let member = translate(
            ClusterEvent::State(StateChange::Member {
                room: "tea".into(),
                user: "zoë".into(),
                member: Some(MemberRecord {
                    name: "Zoë".into(),
                    uid: record.uid.clone(),
                    since_ms: 1,
                }),
            }),
            &uids,
            "me",
        );
        assert!(matches!(
            member,
            Some(StoreEvent::Room(RoomChange::Join { .. }))
        ));
        assert!(translate(ClusterEvent::Cleared, &uids, "me").is_some());
        assert_eq!(uids.get("zoë"), None);
    }

    #[test]
    fn the_snapshot_seeds_the_view_and_recent_histories() {
        let mut snapshot = Snapshot::default();
        let ann = AccountRecord::new("Ann", "h", 1);
        snapshot.accounts.insert("ann".into(), ann.clone());
        snapshot.rooms.insert(
            "tea".into(),
            RoomRecord {
                name: "Tea".into(),
                created_ms: 1,
            },
        );
        snapshot.members.insert(
            ("tea".into(), "ann".into()),
            MemberRecord {
                name: "Ann".into(),
                uid: ann.uid.clone(),
                since_ms: 1,
            },
        );
        let mut recent = Recent::new(10);
        recent.record(
            &Scope::Room("tea".into()),
            &chat(1, Some("Tea"), None, "Ann"),
        );
        recent.record(
            &Scope::direct(&ann.uid, "other"),
            &chat(2, None, Some("Bob"), "Ann"),
        );
        snapshot.recent = recent;
        let uids = Uids::default();
        let recovered = recovered(&snapshot, &uids);
        assert_eq!(uids.get("ann"), Some(ann.uid));
        assert!(recovered.identities.account("ANN").is_some());
        assert_eq!(recovered.rooms.rooms_of("ann"), ["tea"]);
        assert_eq!(recovered.room_history["tea"].len(), 1);
        assert_eq!(recovered.direct_history["ann"][0].0, 2);
    }
}
