//! What the cluster stores: the JSON values of the buckets, the body of a stored chat
//! message, and the commands sent to every node. Each is a plain serde type, so a
//! value written by one node is read the same by every other.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::protocol::ChatMessage;
use crate::server::identity::{Account, TokenRecord};

/// An account, in [`Bucket::Accounts`](super::layout::Bucket::Accounts) under its name
/// key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRecord {
    /// The name as registered (case preserved).
    pub name: String,
    /// PBKDF2-HMAC-SHA256 PHC string; never the password.
    pub password_hash: String,
    /// Unix milliseconds of registration.
    pub created_ms: u64,
    /// Given at registration and never again: a name registered anew after the
    /// account was deleted (or after `clear-ids`) is another account, with its own
    /// direct messages, memberships and tokens.
    pub uid: String,
}

impl AccountRecord {
    /// A new account with a fresh id.
    pub fn new(name: &str, password_hash: &str, created_ms: u64) -> AccountRecord {
        AccountRecord {
            name: name.to_string(),
            password_hash: password_hash.to_string(),
            created_ms,
            uid: new_uid(),
        }
    }

    /// The account as `Identities` keeps it.
    pub fn account(&self) -> Account {
        Account {
            name: self.name.clone(),
            password_hash: self.password_hash.clone(),
            created_ms: self.created_ms,
            // In a cluster, direct messages carry the accounts' uids instead.
            since_id: 0,
        }
    }
}

/// A fresh random id (128 bits, hex).
pub fn new_uid() -> String {
    use rand::Rng;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A claim on a name or a look-alike key, in
/// [`Bucket::Names`](super::layout::Bucket::Names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRecord {
    /// Name key of the account that holds it.
    pub owner: String,
    /// That account's id.
    pub uid: String,
    /// Unix milliseconds of the claim.
    pub at_ms: u64,
}

/// A session token, in [`Bucket::Tokens`](super::layout::Bucket::Tokens) under its
/// digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEntry {
    /// Name key of the account it logs in as.
    pub user: String,
    /// That account's id: a token of a deleted account never logs in as a new account
    /// of the same name.
    pub uid: String,
    /// Unix milliseconds after which it is refused.
    pub expires_ms: u64,
}

impl TokenEntry {
    /// The token as `Identities` keeps it.
    pub fn record(&self) -> TokenRecord {
        TokenRecord {
            user: self.user.clone(),
            expires_ms: self.expires_ms,
        }
    }
}

/// The name last authenticated from an address, in
/// [`Bucket::Ips`](super::layout::Bucket::Ips).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpRecord {
    pub name: String,
}

/// A ban, in [`Bucket::Bans`](super::layout::Bucket::Bans) under the name key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanRecord {
    /// The account's name as registered.
    pub name: String,
    pub reason: String,
    /// Unix milliseconds of the ban.
    pub at_ms: u64,
}

/// A room, in [`Bucket::Rooms`](super::layout::Bucket::Rooms) under its room key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomRecord {
    /// The name as first created.
    pub name: String,
    pub created_ms: u64,
}

/// A membership, in [`Bucket::Members`](super::layout::Bucket::Members) under
/// `<room key>.<name key>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The member's name as registered.
    pub name: String,
    /// The member's account id.
    pub uid: String,
    pub since_ms: u64,
}

/// A node's heartbeat, in [`Bucket::Presence`](super::layout::Bucket::Presence) under
/// its node id: the users online there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeBeat {
    /// What the node calls itself in `status` (host and process id).
    pub label: String,
    pub started_ms: u64,
    /// Name key → the user online on that node.
    pub users: BTreeMap<String, OnlineUser>,
}

/// A user online on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnlineUser {
    pub name: String,
    /// Connections on that node.
    pub conns: u32,
}

/// The last `clear-ids`, in [`Bucket::Meta`](super::layout::Bucket::Meta) under
/// `cleared`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClearedRecord {
    pub at_ms: u64,
    /// Node id of the node whose console cleared.
    pub by: String,
}

/// The body of a chat message as stored in the message stream: a MESSAGE without its
/// `id`, which is the stream sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "message")]
pub struct StoredBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    pub from: String,
    pub text: String,
    pub ts: u64,
}

impl StoredBody {
    /// The MESSAGE with its id.
    pub fn with_id(self, id: u64) -> ChatMessage {
        ChatMessage {
            id,
            room: self.room,
            to: self.to,
            from: self.from,
            text: self.text,
            ts: self.ts,
        }
    }
}

/// Identifies one connection in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionRef {
    pub node: String,
    pub session: u64,
}

/// A command every node carries out for its own connections, sent on the admin
/// subject. What is durable (bans, deleted accounts, revoked tokens, `clear-ids`) is
/// not sent this way: every node sees it in the buckets. This is for what only
/// concerns connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AdminCommand {
    /// Send `kicked` with `message` to every connection of the account `key` (but
    /// `except`), then close them.
    Kick {
        key: String,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        except: Option<ConnectionRef>,
    },
}

/// An [`AdminCommand`] with the node that sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminEnvelope {
    pub origin: String,
    pub command: AdminCommand,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_body_is_a_message_without_id() {
        let body = StoredBody {
            room: Some("lobby".into()),
            to: None,
            from: "ann".into(),
            text: "hi".into(),
            ts: 5,
        };
        let json = serde_json::to_string(&body).unwrap();
        assert_eq!(
            json,
            r#"{"type":"message","room":"lobby","from":"ann","text":"hi","ts":5}"#
        );
        let back: StoredBody = serde_json::from_str(&json).unwrap();
        let message = back.with_id(7);
        assert_eq!(message.id, 7);
        assert_eq!(message.room.as_deref(), Some("lobby"));
    }

    #[test]
    fn uids_are_fresh() {
        let (a, b) = (new_uid(), new_uid());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }

    #[test]
    fn admin_commands_are_tagged() {
        let cmd = AdminEnvelope {
            origin: "n1".into(),
            command: AdminCommand::Kick {
                key: "bob".into(),
                message: "bye".into(),
                except: None,
            },
        };
        let json = serde_json::to_string(&cmd).unwrap();
        assert_eq!(
            json,
            r#"{"origin":"n1","command":{"op":"kick","key":"bob","message":"bye"}}"#
        );
        assert_eq!(serde_json::from_str::<AdminEnvelope>(&json).unwrap(), cmd);
    }
}
