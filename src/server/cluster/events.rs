//! What a node hears from the cluster: the state found at start ([`Snapshot`]) and
//! then every change made anywhere ([`ClusterEvent`]), decoded from the buckets and the
//! message stream into plain values.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::protocol::ChatMessage;
use crate::server::identity::IdentityChange;

use super::layout::{parse_member_key, untoken, Bucket, Scope};
use super::presence::PresenceChange;
use super::records::{
    AccountRecord, AdminEnvelope, BanRecord, IpRecord, MemberRecord, RoomRecord, TokenEntry,
};

/// A chat message stored in the stream, as every node receives it, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Where it belongs: the room key, or the two account ids of a direct message.
    pub scope: Scope,
    /// The MESSAGE, its `id` the stream sequence.
    pub message: ChatMessage,
}

/// A change to one record, made by any node (this one included). `None` is a removal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateChange {
    Account {
        key: String,
        record: Option<AccountRecord>,
    },
    Token {
        digest: String,
        entry: Option<TokenEntry>,
    },
    Ip {
        ip: IpAddr,
        name: Option<String>,
    },
    Ban {
        key: String,
        ban: Option<BanRecord>,
    },
    Room {
        key: String,
        room: Option<RoomRecord>,
    },
    Member {
        room: String,
        user: String,
        member: Option<MemberRecord>,
    },
}

impl StateChange {
    /// The same change as `Identities` applies it, for accounts, tokens and IP
    /// identifications (`None` for the rest, and for an IP identification removed
    /// alone: removing an account removes its identifications with it).
    pub fn identity_change(&self) -> Option<IdentityChange> {
        match self {
            StateChange::Account {
                record: Some(record),
                ..
            } => Some(IdentityChange::AddAccount {
                account: record.account(),
            }),
            StateChange::Account { key, record: None } => {
                Some(IdentityChange::RemoveAccount { key: key.clone() })
            }
            StateChange::Token {
                digest,
                entry: Some(entry),
            } => Some(IdentityChange::IssueToken {
                digest: digest.clone(),
                record: entry.record(),
            }),
            StateChange::Token {
                digest,
                entry: None,
            } => Some(IdentityChange::RevokeToken {
                digest: digest.clone(),
            }),
            StateChange::Ip {
                ip,
                name: Some(name),
            } => Some(IdentityChange::RememberIp {
                ip: *ip,
                name: name.clone(),
            }),
            _ => None,
        }
    }
}

/// Everything a node hears after start-up, in the order it heard it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterEvent {
    /// A new chat message (this node's own included: deliver on this, not on the
    /// publish acknowledgement, so that every node delivers in one order).
    Message(NewMessage),
    /// A record changed.
    State(StateChange),
    /// `clear-ids` ran somewhere: forget every account, token, IP identification, ban
    /// and membership. What was written after it follows as [`ClusterEvent::State`].
    Cleared,
    /// Someone came or went, cluster-wide, on another node (this node's own comings
    /// and goings are answered by `Cluster::user_connected`/`user_disconnected`).
    Presence(PresenceChange),
    /// A command from another node's console.
    Admin(AdminEnvelope),
    /// NATS was lost (`false`) or is back (`true`).
    Available(bool),
}

/// The state found at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub accounts: BTreeMap<String, AccountRecord>,
    pub tokens: BTreeMap<String, TokenEntry>,
    pub ips: BTreeMap<IpAddr, String>,
    pub bans: BTreeMap<String, BanRecord>,
    pub rooms: BTreeMap<String, RoomRecord>,
    /// (room key, name key) → membership.
    pub members: BTreeMap<(String, String), MemberRecord>,
    /// The highest message id stored (0 before any).
    pub last_message_id: u64,
    /// Users online on other nodes: (name key, name).
    pub online: Vec<(String, String)>,
}

impl Snapshot {
    /// Forgets what `clear-ids` clears: accounts, tokens, IP identifications, bans and
    /// memberships.
    pub fn clear_identities(&mut self) {
        self.accounts.clear();
        self.tokens.clear();
        self.ips.clear();
        self.bans.clear();
        self.members.clear();
    }

    /// Folds in one change.
    pub fn apply(&mut self, change: StateChange) {
        match change {
            StateChange::Account { key, record } => set(&mut self.accounts, key, record),
            StateChange::Token { digest, entry } => set(&mut self.tokens, digest, entry),
            StateChange::Ip { ip, name } => set(&mut self.ips, ip, name),
            StateChange::Ban { key, ban } => set(&mut self.bans, key, ban),
            StateChange::Room { key, room } => set(&mut self.rooms, key, room),
            StateChange::Member { room, user, member } => {
                set(&mut self.members, (room, user), member)
            }
        }
    }
}

fn set<K: Ord, V>(map: &mut BTreeMap<K, V>, key: K, value: Option<V>) {
    match value {
        Some(value) => {
            map.insert(key, value);
        }
        None => {
            map.remove(&key);
        }
    }
}

/// Why a bucket entry could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{bucket}: key {key}: {reason}")]
pub struct DecodeError {
    pub bucket: &'static str,
    pub key: String,
    pub reason: String,
}

/// The change an entry of `bucket` under `key` stands for (`value` is `None` for a
/// delete or purge marker). `Ok(None)` for buckets whose entries are no
/// [`StateChange`] (names, presence, meta).
pub fn decode(
    bucket: Bucket,
    key: &str,
    value: Option<&[u8]>,
) -> Result<Option<StateChange>, DecodeError> {
    let fail = |reason: String| DecodeError {
        bucket: bucket.suffix(),
        key: crate::text::quote(key),
        reason,
    };
    fn parse<T: serde::de::DeserializeOwned>(value: Option<&[u8]>) -> Result<Option<T>, String> {
        value
            .map(|v| serde_json::from_slice(v).map_err(|e| e.to_string()))
            .transpose()
    }
    let plain = |key: &str| untoken(key).ok_or_else(|| fail("not a key".into()));
    let change = match bucket {
        Bucket::Accounts => StateChange::Account {
            key: plain(key)?,
            record: parse(value).map_err(fail)?,
        },
        Bucket::Tokens => StateChange::Token {
            digest: key.to_string(),
            entry: parse(value).map_err(fail)?,
        },
        Bucket::Ips => {
            let ip: IpAddr = plain(key)?
                .parse()
                .map_err(|_| fail("not an address".into()))?;
            let record: Option<IpRecord> = parse(value).map_err(fail)?;
            StateChange::Ip {
                ip,
                name: record.map(|r| r.name),
            }
        }
        Bucket::Bans => StateChange::Ban {
            key: plain(key)?,
            ban: parse(value).map_err(fail)?,
        },
        Bucket::Rooms => StateChange::Room {
            key: plain(key)?,
            room: parse(value).map_err(fail)?,
        },
        Bucket::Members => {
            let (room, user) =
                parse_member_key(key).ok_or_else(|| fail("not a membership key".into()))?;
            StateChange::Member {
                room,
                user,
                member: parse(value).map_err(fail)?,
            }
        }
        Bucket::Names | Bucket::Presence | Bucket::Meta => return Ok(None),
    };
    Ok(Some(change))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::cluster::layout::{ip_key, member_key, token};

    #[test]
    fn entries_decode_into_changes_and_fold_into_a_snapshot() {
        let mut snapshot = Snapshot::default();
        let account = r#"{"name":"Zoë","password_hash":"h","created_ms":1,"uid":"u"}"#.as_bytes();
        let change = decode(Bucket::Accounts, &token("zoë"), Some(account))
            .unwrap()
            .unwrap();
        snapshot.apply(change);
        assert_eq!(snapshot.accounts["zoë"].name, "Zoë");
        let ip: IpAddr = "::1".parse().unwrap();
        snapshot.apply(
            decode(
                Bucket::Ips,
                &ip_key(ip),
                Some(r#"{"name":"Zoë"}"#.as_bytes()),
            )
            .unwrap()
            .unwrap(),
        );
        assert_eq!(snapshot.ips[&ip], "Zoë");
        let member = r#"{"name":"Zoë","uid":"u","since_ms":2}"#.as_bytes();
        snapshot.apply(
            decode(Bucket::Members, &member_key("tea", "zoë"), Some(member))
                .unwrap()
                .unwrap(),
        );
        assert!(snapshot.members.contains_key(&("tea".into(), "zoë".into())));
        let issued = decode(
            Bucket::Tokens,
            "ab",
            Some(br#"{"user":"zo","uid":"u","expires_ms":9}"#),
        )
        .unwrap()
        .unwrap();
        assert!(matches!(
            issued.identity_change(),
            Some(IdentityChange::IssueToken { ref digest, .. }) if digest == "ab"
        ));
        let removal = decode(Bucket::Accounts, &token("zoë"), None)
            .unwrap()
            .unwrap();
        assert_eq!(
            removal.identity_change(),
            Some(IdentityChange::RemoveAccount { key: "zoë".into() })
        );
        snapshot.apply(removal);
        assert!(snapshot.accounts.is_empty());
        assert!(decode(Bucket::Meta, "cleared", Some(b"{}"))
            .unwrap()
            .is_none());
        let err = decode(Bucket::Bans, "bob", Some(b"not json")).unwrap_err();
        assert_eq!(err.bucket, "bans");
        assert!(decode(Bucket::Ips, "nonsense", None).is_err());
    }
}
