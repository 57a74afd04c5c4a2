//! The identity file's content (`users.json`): accounts, the IP → name map used to
//! greet a returning client, and session tokens (stored only as digests).
//!
//! Plain data owned by the `ChatServer` actor. It changes only through
//! [`Identities::apply`] of an [`IdentityChange`]: the same changes, in the same order,
//! are written to the journal beside `users.json` and replayed from it, so the copy in
//! memory, the journal and the file always agree. Derived indexes (tokens per account,
//! tokens by expiry, look-alike keys) are rebuilt on load and kept by `apply`, so that
//! registering, issuing a token and pruning cost the same with a hundred accounts or a
//! hundred thousand.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::auth::{new_token, token_digest};
use crate::names::{confusable_keys, name_key};

/// Format version written into the file, so that a later layout can migrate it.
pub const IDENTITY_FORMAT: u32 = 1;

/// Live tokens one account may hold; a new one beyond this revokes the oldest. A user
/// has a token per device, and a hundred devices is generous; without a cap, a login
/// loop would grow the identity file without end.
pub const MAX_TOKENS_PER_ACCOUNT: usize = 100;

/// Everything the server knows about who is who.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identities {
    #[serde(default = "format_version")]
    pub version: u32,
    /// Accounts by [`name_key`].
    #[serde(default)]
    pub users: BTreeMap<String, Account>,
    /// The name last authenticated from each client IP address.
    #[serde(default)]
    pub ips: BTreeMap<IpAddr, String>,
    /// Live tokens by the hex SHA-256 digest of the token.
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenRecord>,
    /// Banned accounts by name key.
    #[serde(default)]
    pub bans: BTreeMap<String, Ban>,
    /// The sequence number of the last journal entry this content includes.
    #[serde(default)]
    pub journal_seq: u64,
    #[serde(skip)]
    index: Index,
}

fn format_version() -> u32 {
    IDENTITY_FORMAT
}

/// Lookups derived from the content, never stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Index {
    /// Look-alike key → name keys of the accounts that have it.
    confusables: HashMap<String, BTreeSet<String>>,
    /// Name key → (expiry, digest) of its live tokens, oldest first.
    tokens_by_user: HashMap<String, BTreeSet<(u64, String)>>,
    /// (expiry, digest) of every token, soonest first.
    expiry: BTreeSet<(u64, String)>,
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
    /// The first message id this account may see of direct messages: a name registered
    /// again (after deletion or `clear-ids`) does not see the earlier account's.
    #[serde(default)]
    pub since_id: u64,
}

/// A ban of one account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    /// The account's name as registered.
    pub name: String,
    /// Why, as the admin typed it (may be empty).
    #[serde(default)]
    pub reason: String,
    pub since_ms: u64,
    /// The digests of the tokens the ban revoked: a client that still holds one is told
    /// it is banned rather than that its token is unknown.
    #[serde(default)]
    pub revoked: BTreeSet<String>,
}

/// What is kept of an issued token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Name key of the account the token logs in as.
    pub user: String,
    /// Unix milliseconds after which the token is refused.
    pub expires_ms: u64,
}

/// One change to the identities: the unit that is applied, journaled and replayed.
/// Each one sets or removes what it names, whatever was there, so replaying a journal
/// gives the same result every time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum IdentityChange {
    /// Adds (or replaces) the account with this name.
    AddAccount { account: Account },
    /// Removes the account with this name key, its tokens and its IP identifications.
    RemoveAccount { key: String },
    /// Records a token's digest.
    IssueToken { digest: String, record: TokenRecord },
    /// Forgets a token (spent, logged out, evicted).
    RevokeToken { digest: String },
    /// Records the name last authenticated from an address.
    RememberIp { ip: IpAddr, name: String },
    /// Forgets every token that expired by this time.
    PruneExpired { now_ms: u64 },
    /// Replaces an account's password hash.
    SetPassword { key: String, password_hash: String },
    /// Bans an account (its tokens are revoked with separate changes).
    Ban { key: String, ban: Ban },
    /// Lifts a ban.
    Unban { key: String },
    /// Forgets everything.
    Clear,
}

impl Identities {
    /// An empty identity file.
    pub fn new() -> Identities {
        Identities {
            version: IDENTITY_FORMAT,
            ..Identities::default()
        }
    }

    /// Rebuilds what is derived after loading: accounts are keyed by today's
    /// [`name_key`] (an older version keyed them by lower case) and the indexes are
    /// filled. Returns the names whose key clashed with another account's, which keep
    /// their old key so that nothing is lost.
    pub fn reindex(&mut self) -> Vec<String> {
        let mut clashes = Vec::new();
        let old = std::mem::take(&mut self.users);
        let mut renamed: HashMap<String, String> = HashMap::new();
        for (old_key, account) in old {
            let key = name_key(&account.name);
            let key = if self.users.contains_key(&key) {
                clashes.push(account.name.clone());
                old_key.clone()
            } else {
                key
            };
            if key != old_key {
                renamed.insert(old_key, key.clone());
            }
            self.users.insert(key, account);
        }
        for record in self.tokens.values_mut() {
            if let Some(key) = renamed.get(&record.user) {
                record.user = key.clone();
            }
        }
        self.index = Index::default();
        let keys: Vec<(String, String)> = self
            .users
            .iter()
            .map(|(k, a)| (k.clone(), a.name.clone()))
            .collect();
        for (key, name) in keys {
            self.index_account(&key, &name);
        }
        let tokens: Vec<(String, TokenRecord)> = self
            .tokens
            .iter()
            .map(|(d, r)| (d.clone(), r.clone()))
            .collect();
        for (digest, record) in tokens {
            self.index_token(&digest, &record);
        }
        clashes
    }

    /// Applies one change.
    pub fn apply(&mut self, change: &IdentityChange) {
        match change {
            IdentityChange::AddAccount { account } => {
                let key = name_key(&account.name);
                if let Some(old) = self.users.insert(key.clone(), account.clone()) {
                    self.unindex_account(&key, &old.name);
                }
                self.index_account(&key, &account.name);
            }
            IdentityChange::RemoveAccount { key } => {
                if let Some(account) = self.users.remove(key) {
                    self.unindex_account(key, &account.name);
                }
                let digests: Vec<String> = self
                    .index
                    .tokens_by_user
                    .get(key)
                    .map(|set| set.iter().map(|(_, d)| d.clone()).collect())
                    .unwrap_or_default();
                for digest in digests {
                    self.remove_token(&digest);
                }
                self.ips.retain(|_, name| name_key(name) != *key);
                self.bans.remove(key);
            }
            IdentityChange::SetPassword { key, password_hash } => {
                if let Some(account) = self.users.get_mut(key) {
                    account.password_hash = password_hash.clone();
                }
            }
            IdentityChange::Ban { key, ban } => {
                self.bans.insert(key.clone(), ban.clone());
            }
            IdentityChange::Unban { key } => {
                self.bans.remove(key);
            }
            IdentityChange::IssueToken { digest, record } => {
                self.remove_token(digest);
                self.tokens.insert(digest.clone(), record.clone());
                self.index_token(digest, record);
            }
            IdentityChange::RevokeToken { digest } => self.remove_token(digest),
            IdentityChange::RememberIp { ip, name } => {
                self.ips.insert(*ip, name.clone());
            }
            IdentityChange::PruneExpired { now_ms } => {
                while let Some((expires, digest)) = self.index.expiry.first().cloned() {
                    if expires > *now_ms {
                        break;
                    }
                    self.remove_token(&digest);
                }
            }
            IdentityChange::Clear => {
                let seq = self.journal_seq;
                *self = Identities::new();
                self.journal_seq = seq;
            }
        }
    }

    fn index_account(&mut self, key: &str, name: &str) {
        for skeleton in confusable_keys(name) {
            self.index
                .confusables
                .entry(skeleton)
                .or_default()
                .insert(key.to_string());
        }
    }

    fn unindex_account(&mut self, key: &str, name: &str) {
        for skeleton in confusable_keys(name) {
            if let Some(owners) = self.index.confusables.get_mut(&skeleton) {
                owners.remove(key);
                if owners.is_empty() {
                    self.index.confusables.remove(&skeleton);
                }
            }
        }
    }

    fn index_token(&mut self, digest: &str, record: &TokenRecord) {
        let entry = (record.expires_ms, digest.to_string());
        self.index
            .tokens_by_user
            .entry(record.user.clone())
            .or_default()
            .insert(entry.clone());
        self.index.expiry.insert(entry);
    }

    fn remove_token(&mut self, digest: &str) {
        let Some(record) = self.tokens.remove(digest) else {
            return;
        };
        let entry = (record.expires_ms, digest.to_string());
        self.index.expiry.remove(&entry);
        if let Some(set) = self.index.tokens_by_user.get_mut(&record.user) {
            set.remove(&entry);
            if set.is_empty() {
                self.index.tokens_by_user.remove(&record.user);
            }
        }
    }

    /// The account registered under `name` (compared by [`name_key`]).
    pub fn account(&self, name: &str) -> Option<&Account> {
        self.users.get(&name_key(name))
    }

    /// The account registered under `name`, with its key.
    pub fn find(&self, name: &str) -> Option<(&String, &Account)> {
        self.users.get_key_value(&name_key(name))
    }

    /// The account with this name key.
    pub fn account_by_key(&self, key: &str) -> Option<&Account> {
        self.users.get(key)
    }

    /// Whether `name` is taken: the same name, or one that looks like it.
    pub fn is_taken(&self, name: &str) -> bool {
        self.users.contains_key(&name_key(name))
            || confusable_keys(name)
                .iter()
                .any(|k| self.index.confusables.contains_key(k))
    }

    /// The changes that issue a new token for the account `key`, valid for `ttl_ms`,
    /// revoking the oldest beyond [`MAX_TOKENS_PER_ACCOUNT`]; with the token (shown to
    /// the client once) and its digest (kept).
    pub fn new_token_for(
        &self,
        key: &str,
        now_ms: u64,
        ttl_ms: u64,
    ) -> (String, String, Vec<IdentityChange>) {
        let token = new_token();
        let digest = token_digest(&token);
        let mut changes = Vec::new();
        if let Some(live) = self.index.tokens_by_user.get(key) {
            let excess = (live.len() + 1).saturating_sub(MAX_TOKENS_PER_ACCOUNT);
            for (_, old) in live.iter().take(excess) {
                changes.push(IdentityChange::RevokeToken {
                    digest: old.clone(),
                });
            }
        }
        changes.push(IdentityChange::IssueToken {
            digest: digest.clone(),
            record: TokenRecord {
                user: key.to_string(),
                expires_ms: now_ms.saturating_add(ttl_ms),
            },
        });
        (token, digest, changes)
    }

    /// The account a live `token` logs in as (its key and itself), with the token's
    /// digest; `None` if the token is unknown, spent or expired, or its account is gone.
    pub fn check_token(&self, token: &str, now_ms: u64) -> Option<(&str, &Account, String)> {
        let digest = token_digest(token);
        let record = self.tokens.get(&digest)?;
        if record.expires_ms <= now_ms {
            return None;
        }
        let (key, account) = self.users.get_key_value(&record.user)?;
        Some((key.as_str(), account, digest))
    }

    /// The digests of the live tokens of the account `key`.
    pub fn tokens_of(&self, key: &str) -> Vec<String> {
        self.index
            .tokens_by_user
            .get(key)
            .map(|set| set.iter().map(|(_, d)| d.clone()).collect())
            .unwrap_or_default()
    }

    /// The ban of the account `key`, if it is banned.
    pub fn ban_of(&self, key: &str) -> Option<&Ban> {
        self.bans.get(key)
    }

    /// The ban that revoked `token`, if one did.
    pub fn ban_of_token(&self, token: &str) -> Option<&Ban> {
        let digest = token_digest(token);
        self.bans.values().find(|ban| ban.revoked.contains(&digest))
    }

    /// The live tokens of the account `key`.
    pub fn token_count(&self, key: &str) -> usize {
        self.index.tokens_by_user.get(key).map_or(0, BTreeSet::len)
    }

    /// Whether any token expired by `now_ms`.
    pub fn has_expired_tokens(&self, now_ms: u64) -> bool {
        self.index
            .expiry
            .first()
            .is_some_and(|(expires, _)| *expires <= now_ms)
    }

    /// The name last authenticated from `ip`, if its account still exists.
    pub fn known_name(&self, ip: IpAddr) -> Option<String> {
        let name = self.ips.get(&ip)?;
        self.account(name).map(|a| a.name.clone())
    }

    /// Whether `ip` is already known as `name`.
    pub fn ip_is_known_as(&self, ip: IpAddr, name: &str) -> bool {
        self.ips.get(&ip).map(String::as_str) == Some(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(name: &str) -> IdentityChange {
        IdentityChange::AddAccount {
            account: Account {
                name: name.to_string(),
                password_hash: "hash".into(),
                created_ms: 0,
                since_id: 0,
            },
        }
    }

    fn issue(ids: &mut Identities, key: &str, now: u64, ttl: u64) -> (String, String) {
        let (token, digest, changes) = ids.new_token_for(key, now, ttl);
        for change in &changes {
            ids.apply(change);
        }
        (token, digest)
    }

    #[test]
    fn tokens_check_expire_and_prune() {
        let mut ids = Identities::new();
        ids.apply(&account("Alice"));
        let (token, digest) = issue(&mut ids, "alice", 1000, 500);
        assert!(ids.tokens.contains_key(&digest));
        assert!(!ids.tokens.contains_key(&token), "only the digest is kept");
        let (key, found, d) = ids.check_token(&token, 1200).unwrap();
        assert_eq!(
            (key, found.name.as_str(), d.as_str()),
            ("alice", "Alice", digest.as_str())
        );
        assert!(ids.check_token(&token, 1500).is_none(), "expired");
        assert!(ids.has_expired_tokens(1500));
        ids.apply(&IdentityChange::PruneExpired { now_ms: 1500 });
        assert!(ids.tokens.is_empty());
        assert_eq!(ids.token_count("alice"), 0);
        assert!(!ids.has_expired_tokens(1500));
    }

    #[test]
    fn an_account_keeps_its_newest_tokens_only() {
        let mut ids = Identities::new();
        ids.apply(&account("Bob"));
        let (first, _) = issue(&mut ids, "bob", 0, 1_000_000);
        for i in 1..=MAX_TOKENS_PER_ACCOUNT as u64 {
            issue(&mut ids, "bob", i, 1_000_000);
        }
        assert_eq!(ids.token_count("bob"), MAX_TOKENS_PER_ACCOUNT);
        assert_eq!(ids.tokens.len(), MAX_TOKENS_PER_ACCOUNT);
        assert!(ids.check_token(&first, 10).is_none(), "the oldest went");
    }

    #[test]
    fn look_alikes_are_taken_and_names_compare_folded() {
        let mut ids = Identities::new();
        ids.apply(&account("Alice"));
        assert!(ids.is_taken("ALICE"));
        assert!(ids.is_taken("Аlice"), "Cyrillic A");
        assert!(ids.is_taken("AIice"), "capital I");
        assert!(!ids.is_taken("Alicia"));
        assert_eq!(ids.account("ａｌｉｃｅ").unwrap().name, "Alice");
        ids.apply(&IdentityChange::RemoveAccount {
            key: "alice".into(),
        });
        assert!(!ids.is_taken("Аlice"), "free again with the account gone");
    }

    #[test]
    fn removing_an_account_takes_its_tokens_and_addresses() {
        let mut ids = Identities::new();
        ids.apply(&account("Eve"));
        ids.apply(&account("Zed"));
        issue(&mut ids, "eve", 0, 10);
        let (zed_token, _) = issue(&mut ids, "zed", 0, 10);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        ids.apply(&IdentityChange::RememberIp {
            ip,
            name: "Eve".into(),
        });
        assert_eq!(ids.known_name(ip).as_deref(), Some("Eve"));
        ids.apply(&IdentityChange::RemoveAccount { key: "eve".into() });
        assert!(ids.account("eve").is_none());
        assert_eq!(ids.tokens.len(), 1);
        assert!(ids.check_token(&zed_token, 1).is_some());
        assert!(ids.ips.is_empty());
    }

    #[test]
    fn replaying_changes_gives_the_same_identities() {
        let mut live = Identities::new();
        let mut log = Vec::new();
        let mut record = |ids: &mut Identities, change: IdentityChange| {
            ids.apply(&change);
            log.push(change);
        };
        record(&mut live, account("Ann"));
        let (_, _, changes) = live.new_token_for("ann", 0, 100);
        for change in changes {
            record(&mut live, change);
        }
        record(
            &mut live,
            IdentityChange::RememberIp {
                ip: "::1".parse().unwrap(),
                name: "Ann".into(),
            },
        );
        record(&mut live, IdentityChange::Clear);
        record(&mut live, account("Ann"));
        let mut replayed = Identities::new();
        for change in &log {
            replayed.apply(change);
        }
        assert_eq!(replayed, live);
        // Twice over is the same again: every change sets or removes what it names.
        for change in &log {
            replayed.apply(change);
        }
        assert_eq!(replayed, live);
    }

    #[test]
    fn round_trips_through_json_and_reindexes_old_keys() {
        let mut ids = Identities::new();
        ids.apply(&account("Zoë"));
        ids.apply(&IdentityChange::RememberIp {
            ip: "::1".parse().unwrap(),
            name: "Zoë".into(),
        });
        issue(&mut ids, "zoë", 0, 10);
        let text = serde_json::to_string_pretty(&ids).unwrap();
        let mut back: Identities = serde_json::from_str(&text).unwrap();
        back.reindex();
        assert_eq!(back, ids);

        // A file from before folding: keyed by lower case.
        let old = r#"{"version":1,"users":{"straße":{"name":"Straße","password_hash":"h","created_ms":0}},
            "tokens":{"d":{"user":"straße","expires_ms":99}}}"#;
        let mut old: Identities = serde_json::from_str(old).unwrap();
        assert!(old.reindex().is_empty());
        assert!(old.account("STRASSE").is_some());
        assert_eq!(old.tokens["d"].user, "strasse");
        assert_eq!(old.token_count("strasse"), 1);
    }

    #[test]
    fn bans_passwords_and_their_tokens() {
        let mut ids = Identities::new();
        ids.apply(&account("Mal"));
        let (token, digest) = issue(&mut ids, "mal", 0, 1000);
        ids.apply(&IdentityChange::RevokeToken {
            digest: digest.clone(),
        });
        ids.apply(&IdentityChange::Ban {
            key: "mal".into(),
            ban: Ban {
                name: "Mal".into(),
                reason: "spam".into(),
                since_ms: 5,
                revoked: [digest].into(),
            },
        });
        assert_eq!(ids.ban_of("mal").unwrap().reason, "spam");
        assert!(ids.check_token(&token, 1).is_none(), "revoked");
        assert_eq!(ids.ban_of_token(&token).unwrap().name, "Mal");
        ids.apply(&IdentityChange::Unban { key: "mal".into() });
        assert!(ids.ban_of("mal").is_none());
        assert!(ids.ban_of_token(&token).is_none());
        ids.apply(&IdentityChange::SetPassword {
            key: "mal".into(),
            password_hash: "new".into(),
        });
        assert_eq!(ids.account("mal").unwrap().password_hash, "new");
        issue(&mut ids, "mal", 0, 1000);
        assert_eq!(ids.tokens_of("mal").len(), 1);
        ids.apply(&IdentityChange::Clear);
        assert!(ids.bans.is_empty());
    }

    #[test]
    fn changes_serialise_as_tagged_lines() {
        let change = IdentityChange::RevokeToken {
            digest: "ab".into(),
        };
        assert_eq!(
            serde_json::to_string(&change).unwrap(),
            r#"{"op":"revoke_token","digest":"ab"}"#
        );
    }
}
