//! The identity file's content (`users.json`): accounts, the IP → name map used to
//! greet a returning client, and session tokens (stored only as digests).
//!
//! Plain data owned by the `ChatServer` actor; `Persistence` writes snapshots of it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::auth::{name_key, new_token, token_digest};

/// Format version written into the file, so that a later layout can migrate it.
pub const IDENTITY_FORMAT: u32 = 1;

/// Everything the server knows about who is who.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identities {
    #[serde(default = "format_version")]
    pub version: u32,
    /// Accounts by lower-cased name.
    #[serde(default)]
    pub users: BTreeMap<String, Account>,
    /// The name last authenticated from each client IP address.
    #[serde(default)]
    pub ips: BTreeMap<IpAddr, String>,
    /// Live tokens by the hex SHA-256 digest of the token.
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenRecord>,
}

fn format_version() -> u32 {
    IDENTITY_FORMAT
}

/// One account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The name as registered (case preserved).
    pub name: String,
    /// PBKDF2-HMAC-SHA256 PHC string; never the password.
    pub password_hash: String,
    /// Unix milliseconds of registration.
    pub created_ms: u64,
}

/// What is kept of an issued token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Lower-cased account name the token logs in as.
    pub user: String,
    /// Unix milliseconds after which the token is refused.
    pub expires_ms: u64,
}

impl Identities {
    /// An empty identity file.
    pub fn new() -> Identities {
        Identities {
            version: IDENTITY_FORMAT,
            ..Identities::default()
        }
    }

    /// The account registered under `name`, ignoring case.
    pub fn account(&self, name: &str) -> Option<&Account> {
        self.users.get(&name_key(name))
    }

    /// Adds an account; the caller has checked that the name is free.
    pub fn add_account(&mut self, name: &str, password_hash: String, now_ms: u64) {
        self.users.insert(
            name_key(name),
            Account {
                name: name.to_string(),
                password_hash,
                created_ms: now_ms,
            },
        );
    }

    /// Removes the account `name` if it still has `password_hash` (undoing an
    /// [`add_account`](Self::add_account) whose save failed), with its tokens.
    pub fn remove_account_if(&mut self, name: &str, password_hash: &str) {
        let key = name_key(name);
        if self
            .users
            .get(&key)
            .is_some_and(|a| a.password_hash == password_hash)
        {
            self.users.remove(&key);
            self.tokens.retain(|_, t| t.user != key);
        }
    }

    /// Issues a token for the account `name`, valid for `ttl_ms`; returns the token
    /// (shown to the client once) and its digest (kept).
    pub fn issue_token(&mut self, name: &str, now_ms: u64, ttl_ms: u64) -> (String, String) {
        let token = new_token();
        let digest = token_digest(&token);
        self.tokens.insert(
            digest.clone(),
            TokenRecord {
                user: name_key(name),
                expires_ms: now_ms.saturating_add(ttl_ms),
            },
        );
        (token, digest)
    }

    /// Spends `token`: removes it and returns the account it logs in as, if it was
    /// live and the account still exists.
    pub fn take_token(&mut self, token: &str, now_ms: u64) -> Option<&Account> {
        let record = self.tokens.remove(&token_digest(token))?;
        if record.expires_ms <= now_ms {
            return None;
        }
        self.users.get(&record.user)
    }

    /// Revokes the token with this digest.
    pub fn revoke_digest(&mut self, digest: &str) -> bool {
        self.tokens.remove(digest).is_some()
    }

    /// Records that `name` authenticated from `ip`.
    pub fn remember_ip(&mut self, ip: IpAddr, name: &str) -> bool {
        if self.ips.get(&ip).map(String::as_str) == Some(name) {
            return false;
        }
        self.ips.insert(ip, name.to_string());
        true
    }

    /// The name last authenticated from `ip`, if its account still exists.
    pub fn known_name(&self, ip: IpAddr) -> Option<String> {
        let name = self.ips.get(&ip)?;
        self.account(name).map(|a| a.name.clone())
    }

    /// Drops expired tokens; returns how many.
    pub fn prune_expired(&mut self, now_ms: u64) -> usize {
        let before = self.tokens.len();
        self.tokens.retain(|_, t| t.expires_ms > now_ms);
        before - self.tokens.len()
    }

    /// Forgets every account, IP identification and token.
    pub fn clear(&mut self) {
        *self = Identities::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_spent_once_and_expire() {
        let mut ids = Identities::new();
        ids.add_account("Alice", "hash".into(), 0);
        let (token, digest) = ids.issue_token("alice", 1000, 500);
        assert!(ids.tokens.contains_key(&digest));
        assert!(
            !ids.tokens.contains_key(&token),
            "only the digest is stored"
        );
        assert_eq!(
            ids.take_token(&token, 1200).map(|a| a.name.as_str()),
            Some("Alice")
        );
        assert!(ids.take_token(&token, 1200).is_none(), "spent");

        let (token, _) = ids.issue_token("alice", 1000, 500);
        assert!(ids.take_token(&token, 1500).is_none(), "expired");

        ids.issue_token("alice", 1000, 500);
        assert_eq!(ids.prune_expired(2000), 1);
    }

    #[test]
    fn names_are_unique_ignoring_case_and_known_by_ip() {
        let mut ids = Identities::new();
        ids.add_account("Bob", "h".into(), 0);
        assert!(ids.account("BOB").is_some());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(ids.known_name(ip).is_none());
        assert!(ids.remember_ip(ip, "Bob"));
        assert!(!ids.remember_ip(ip, "Bob"));
        assert_eq!(ids.known_name(ip).as_deref(), Some("Bob"));
        ids.clear();
        assert!(ids.known_name(ip).is_none());
        assert!(ids.account("bob").is_none());
    }

    #[test]
    fn failed_registration_is_rolled_back_only_if_unchanged() {
        let mut ids = Identities::new();
        ids.add_account("Eve", "h1".into(), 0);
        ids.issue_token("eve", 0, 10);
        ids.remove_account_if("eve", "other");
        assert!(ids.account("eve").is_some());
        ids.remove_account_if("eve", "h1");
        assert!(ids.account("eve").is_none());
        assert!(ids.tokens.is_empty());
    }

    #[test]
    fn round_trips_through_json() {
        let mut ids = Identities::new();
        ids.add_account("Zoë", "$pbkdf2-sha256$x".into(), 5);
        ids.remember_ip("::1".parse().unwrap(), "Zoë");
        ids.issue_token("zoë", 0, 10);
        let text = serde_json::to_string_pretty(&ids).unwrap();
        assert_eq!(serde_json::from_str::<Identities>(&text).unwrap(), ids);
    }
}
