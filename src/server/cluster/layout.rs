//! Where everything lives in NATS: the names of the stream, the buckets and the
//! subjects of one cluster, and how names, addresses and ids become keys and subject
//! tokens.
//!
//! Everything is prefixed by the cluster name (`--cluster-name`), so several chats can
//! share one NATS server. NATS keys and subject tokens allow only a few characters,
//! while names are Unicode: [`token`] keeps a plain ASCII key readable and hex-encodes
//! anything else behind a `=`, which no plain key contains, so two different names
//! never share a key.

use std::net::IpAddr;

/// Longest cluster name: it prefixes every stream, bucket and subject.
pub const MAX_CLUSTER_NAME: usize = 32;

/// Why a cluster name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a cluster name is 1 to {MAX_CLUSTER_NAME} ASCII letters, digits, '_' or '-'")]
pub struct BadClusterName;

/// The buckets of a cluster, one per kind of record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Bucket {
    /// Name key → account.
    Accounts,
    /// Look-alike claims: `s.<skeleton>` → the account that holds it.
    Names,
    /// Token digest → token record.
    Tokens,
    /// Client address → the name last authenticated from it.
    Ips,
    /// Name key → ban.
    Bans,
    /// Room key → room.
    Rooms,
    /// `<room key>.<name key>` → membership.
    Members,
    /// Node id → the node's heartbeat with its users online (entries expire).
    Presence,
    /// Cluster-wide facts: `cleared` (the last `clear-ids`).
    Meta,
}

impl Bucket {
    /// Every bucket, in the order they are created.
    pub const ALL: [Bucket; 9] = [
        Bucket::Accounts,
        Bucket::Names,
        Bucket::Tokens,
        Bucket::Ips,
        Bucket::Bans,
        Bucket::Rooms,
        Bucket::Members,
        Bucket::Presence,
        Bucket::Meta,
    ];

    /// The buckets `clear-ids` empties (rooms, presence and history stay).
    pub const CLEARED: [Bucket; 6] = [
        Bucket::Accounts,
        Bucket::Names,
        Bucket::Tokens,
        Bucket::Ips,
        Bucket::Bans,
        Bucket::Members,
    ];

    /// The bucket's suffix after `<cluster>_`.
    pub fn suffix(self) -> &'static str {
        match self {
            Bucket::Accounts => "accounts",
            Bucket::Names => "names",
            Bucket::Tokens => "tokens",
            Bucket::Ips => "ips",
            Bucket::Bans => "bans",
            Bucket::Rooms => "rooms",
            Bucket::Members => "members",
            Bucket::Presence => "presence",
            Bucket::Meta => "meta",
        }
    }
}

/// The names of one cluster's stream, buckets and subjects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    name: String,
}

impl Layout {
    /// The layout of the cluster `name`.
    pub fn new(name: &str) -> Result<Layout, BadClusterName> {
        let ok = !name.is_empty()
            && name.len() <= MAX_CLUSTER_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Layout {
                name: name.to_string(),
            })
        } else {
            Err(BadClusterName)
        }
    }

    /// The cluster name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The stream of every chat message: `<name>_messages`.
    pub fn message_stream(&self) -> String {
        format!("{}_messages", self.name)
    }

    /// The subjects the message stream holds: `<name>.msg.>`.
    pub fn message_subjects(&self) -> String {
        format!("{}.msg.>", self.name)
    }

    /// The subject of a message in a room: `<name>.msg.r.<room key>`.
    pub fn room_subject(&self, room_key: &str) -> String {
        format!("{}.msg.r.{}", self.name, token(room_key))
    }

    /// The subject of a direct message between two accounts (by account id, the
    /// smaller first, so both directions share it): `<name>.msg.d.<uid>.<uid>`.
    pub fn direct_subject(&self, a: &str, b: &str) -> String {
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        format!("{}.msg.d.{}.{}", self.name, token(low), token(high))
    }

    /// What a message subject says about where the message belongs.
    pub fn parse_message_subject(&self, subject: &str) -> Option<Scope> {
        let rest = subject
            .strip_prefix(self.name.as_str())?
            .strip_prefix(".msg.")?;
        let mut parts = rest.split('.');
        let scope = match (parts.next()?, parts.next(), parts.next()) {
            ("r", Some(room), None) => Scope::Room(untoken(room)?),
            ("d", Some(a), Some(b)) => Scope::Direct(untoken(a)?, untoken(b)?),
            _ => return None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(scope)
    }

    /// A bucket's name: `<name>_<suffix>`.
    pub fn bucket(&self, bucket: Bucket) -> String {
        format!("{}_{}", self.name, bucket.suffix())
    }

    /// The core-NATS subject of commands every node carries out: `<name>.admin`.
    pub fn admin_subject(&self) -> String {
        format!("{}.admin", self.name)
    }
}

/// Where a message belongs: a room (by room key) or a conversation between two
/// accounts (by account id, the smaller first).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Room(String),
    Direct(String, String),
}

impl Scope {
    /// The conversation between accounts `a` and `b`, in either order.
    pub fn direct(a: &str, b: &str) -> Scope {
        if a <= b {
            Scope::Direct(a.to_string(), b.to_string())
        } else {
            Scope::Direct(b.to_string(), a.to_string())
        }
    }
}

/// `text` as one key or subject token: itself when it is made only of ASCII lower-case
/// letters, digits, `_` and `-`; otherwise `=` and the hex of its UTF-8 bytes.
pub fn token(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if plain {
        return text.to_string();
    }
    let mut out = String::with_capacity(1 + 2 * text.len());
    out.push('=');
    for byte in text.bytes() {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// The text a [`token`] stands for; `None` if it is no token.
pub fn untoken(token: &str) -> Option<String> {
    let Some(hex) = token.strip_prefix('=') else {
        let plain = !token.is_empty()
            && token
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        return plain.then(|| token.to_string());
    };
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// The key of a client address.
pub fn ip_key(ip: IpAddr) -> String {
    token(&ip.to_string())
}

/// The key of a membership: `<room key>.<name key>`.
pub fn member_key(room_key: &str, user_key: &str) -> String {
    format!("{}.{}", token(room_key), token(user_key))
}

/// The room key and name key of a membership key.
pub fn parse_member_key(key: &str) -> Option<(String, String)> {
    let (room, user) = key.split_once('.')?;
    Some((untoken(room)?, untoken(user)?))
}

/// The claim keys a name holds in [`Bucket::Names`]: `s.` and each of its look-alike
/// keys (deduplicated). The name key itself needs none: the account is created under
/// it, create-only.
pub fn claim_keys(confusables: &[String]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for skeleton in confusables {
        let key = format!("s.{}", token(skeleton));
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_never_collide() {
        for text in [
            "alice", "a-b_c9", "Alice", "zoë", "a.b", "=61", "名前", "::1",
        ] {
            let t = token(text);
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'='),
                "{t}"
            );
            assert_eq!(untoken(&t).as_deref(), Some(text));
        }
        assert_eq!(token("alice"), "alice");
        assert_ne!(token("=61"), token("a"));
        assert_eq!(untoken("Alice"), None, "upper case is never plain");
        assert_eq!(untoken("=6"), None);
        assert_eq!(untoken(""), None);
    }

    #[test]
    fn subjects_name_their_scope() {
        let layout = Layout::new("chat").unwrap();
        assert_eq!(layout.room_subject("lobby"), "chat.msg.r.lobby");
        assert_eq!(
            layout.parse_message_subject(&layout.room_subject("zoë.x")),
            Some(Scope::Room("zoë.x".into()))
        );
        let dm = layout.direct_subject("u2", "u1");
        assert_eq!(dm, "chat.msg.d.u1.u2");
        assert_eq!(dm, layout.direct_subject("u1", "u2"));
        assert_eq!(
            layout.parse_message_subject(&dm),
            Some(Scope::direct("u2", "u1"))
        );
        assert_eq!(layout.parse_message_subject("chat.msg.x.y"), None);
        assert_eq!(layout.parse_message_subject("other.msg.r.lobby"), None);
        assert_eq!(layout.parse_message_subject("chat.msg.r.a.b"), None);
        assert_eq!(layout.bucket(Bucket::Tokens), "chat_tokens");
        assert_eq!(layout.message_stream(), "chat_messages");
    }

    #[test]
    fn cluster_names_are_checked() {
        assert!(Layout::new("echochat").is_ok());
        assert!(Layout::new("a-b_1").is_ok());
        for bad in ["", "a.b", "a b", "a>", "*", &"x".repeat(33), "é"] {
            assert_eq!(Layout::new(bad), Err(BadClusterName), "{bad}");
        }
    }

    #[test]
    fn member_and_claim_keys() {
        let key = member_key("zoë", "bob");
        assert_eq!(parse_member_key(&key), Some(("zoë".into(), "bob".into())));
        let claims = claim_keys(&["alice".into(), "alice".into(), "aiice".into()]);
        assert_eq!(claims, vec!["s.alice".to_string(), "s.aiice".to_string()]);
        assert_eq!(ip_key("127.0.0.1".parse().unwrap()), token("127.0.0.1"));
    }
}
