//! The accounts, tokens, IP identifications and bans of cluster mode: create-only
//! claims for names and their look-alikes, a compare-and-set delete to spend a token.

use super::*;

impl Cluster {
    // ----- accounts -----

    /// Registers `record` under `key` (its name key) if neither the name nor any of
    /// its look-alike keys (`confusables`, from `names::confusable_keys`) is held by
    /// another account: every key is claimed with a create-only write, then the
    /// account itself; whoever loses any of these races undoes its claims and gets
    /// [`ClusterError::Conflict`] (`name_taken`). Durable once it returns.
    pub async fn register_account(
        &self,
        key: &str,
        confusables: &[String],
        record: &AccountRecord,
    ) -> Result<u64, ClusterError> {
        let claim = ClaimRecord {
            owner: key.to_string(),
            uid: record.uid.clone(),
            at_ms: unix_ms(),
        };
        let mut held: Vec<(String, u64)> = Vec::new();
        let mut outcome = Ok(0);
        for claim_key in claim_keys(confusables) {
            match self.claim(&claim_key, &claim).await {
                Ok(revision) => held.push((claim_key, revision)),
                Err(err) => {
                    outcome = Err(err);
                    break;
                }
            }
        }
        if outcome.is_ok() {
            outcome = self.create(Bucket::Accounts, &token(key), record).await;
        }
        if outcome.is_err() {
            for (claim_key, revision) in held {
                // Best effort: a claim left behind goes stale and is taken over.
                self.delete(Bucket::Names, &claim_key, Some(revision))
                    .await
                    .ok();
            }
        }
        outcome
    }

    /// Claims `claim_key` for `claim`, taking over a stale claim.
    async fn claim(&self, claim_key: &str, claim: &ClaimRecord) -> Result<u64, ClusterError> {
        match self.create(Bucket::Names, claim_key, claim).await {
            Err(ClusterError::Conflict) => {}
            other => return other,
        }
        let Some((held, revision)) = self.entry::<ClaimRecord>(Bucket::Names, claim_key).await?
        else {
            // Deleted in between: try once more.
            return self.create(Bucket::Names, claim_key, claim).await;
        };
        if held.uid == claim.uid {
            return Ok(revision);
        }
        let young = claim.at_ms.saturating_sub(held.at_ms) < STALE_CLAIM.as_millis() as u64;
        if young || self.owner_exists(&held).await? {
            return Err(ClusterError::Conflict);
        }
        self.update(Bucket::Names, claim_key, claim, revision).await
    }

    async fn owner_exists(&self, claim: &ClaimRecord) -> Result<bool, ClusterError> {
        let account = self
            .entry::<AccountRecord>(Bucket::Accounts, &token(&claim.owner))
            .await?;
        Ok(account.is_some_and(|(a, _)| a.uid == claim.uid))
    }

    /// The account with name key `key`, read from NATS (not this node's view), with
    /// its revision.
    pub async fn account(&self, key: &str) -> Result<Revised<AccountRecord>, ClusterError> {
        self.entry(Bucket::Accounts, &token(key)).await
    }

    /// Replaces the account `key` if it is still at `revision` (compare-and-set: a
    /// password changed on two nodes at once changes once; the other gets
    /// [`ClusterError::Conflict`]). Returns the new revision.
    pub async fn update_account(
        &self,
        key: &str,
        record: &AccountRecord,
        revision: u64,
    ) -> Result<u64, ClusterError> {
        self.update(Bucket::Accounts, &token(key), record, revision)
            .await
    }

    /// Deletes the account `key` whose id is `uid`, with what it leaves behind: its
    /// tokens, memberships and IP identifications first, then the account, then its
    /// name claims (so the name is free only once the rest is gone). Durable once it
    /// returns. [`ClusterError::NotFound`] if there is no such account (already
    /// deleted, or the name now belongs to another).
    pub async fn delete_account(
        &self,
        key: &str,
        uid: &str,
        confusables: &[String],
        belongings: &Belongings,
    ) -> Result<(), ClusterError> {
        let Some((account, revision)) = self.account(key).await? else {
            return Err(ClusterError::NotFound);
        };
        if account.uid != uid {
            return Err(ClusterError::NotFound);
        }
        self.revoke_tokens(&belongings.tokens).await?;
        for room in &belongings.rooms {
            self.delete(Bucket::Members, &member_key(room, key), None)
                .await?;
        }
        for ip in &belongings.ips {
            if let Some((held, rev)) = self.entry::<IpRecord>(Bucket::Ips, &ip_key(*ip)).await? {
                if crate::names::name_key(&held.name) == key {
                    match self.delete(Bucket::Ips, &ip_key(*ip), Some(rev)).await {
                        Ok(()) | Err(ClusterError::Conflict) => {}
                        Err(err) => return Err(err),
                    }
                }
            }
        }
        self.delete(Bucket::Accounts, &token(key), Some(revision))
            .await?;
        for claim_key in claim_keys(confusables) {
            if let Some((held, rev)) = self.entry::<ClaimRecord>(Bucket::Names, &claim_key).await? {
                if held.uid == uid {
                    match self.delete(Bucket::Names, &claim_key, Some(rev)).await {
                        Ok(()) | Err(ClusterError::Conflict) => {}
                        Err(err) => return Err(err),
                    }
                }
            }
        }
        Ok(())
    }

    // ----- tokens -----

    /// Records a token (by digest). Durable once it returns.
    pub async fn issue_token(&self, digest: &str, entry: &TokenEntry) -> Result<(), ClusterError> {
        self.put(Bucket::Tokens, digest, entry).await.map(|_| ())
    }

    /// The token `digest`, read from NATS, if it is live at `now_ms`.
    pub async fn token(
        &self,
        digest: &str,
        now_ms: u64,
    ) -> Result<Option<TokenEntry>, ClusterError> {
        let entry = self.entry::<TokenEntry>(Bucket::Tokens, digest).await?;
        Ok(entry
            .map(|(token, _)| token)
            .filter(|t| t.expires_ms > now_ms))
    }

    /// Spends the token `digest` (a `resume`): deletes it naming the revision read,
    /// so of any number of nodes spending one token at once exactly one gets it back;
    /// the others get [`ClusterError::Conflict`]. [`ClusterError::NotFound`] for a
    /// token unknown, spent or expired at `now_ms`. The caller still checks that the
    /// account exists with the token's `uid`.
    pub async fn spend_token(&self, digest: &str, now_ms: u64) -> Result<TokenEntry, ClusterError> {
        let Some((token, revision)) = self.entry::<TokenEntry>(Bucket::Tokens, digest).await?
        else {
            return Err(ClusterError::NotFound);
        };
        self.delete(Bucket::Tokens, digest, Some(revision)).await?;
        if token.expires_ms <= now_ms {
            return Err(ClusterError::NotFound);
        }
        Ok(token)
    }

    /// Forgets tokens (logout, eviction, a ban, a password change). Durable once it
    /// returns.
    pub async fn revoke_tokens(&self, digests: &[String]) -> Result<(), ClusterError> {
        // Owned values in the stream, so that the future is `Send` (callers spawn it).
        futures_util::stream::iter(digests.to_vec())
            .map(|digest| {
                let cluster = self.clone();
                async move { cluster.delete(Bucket::Tokens, &digest, None).await }
            })
            .buffer_unordered(PAGE_FETCHES)
            .try_collect::<Vec<()>>()
            .await
            .map(|_| ())
    }

    // ----- IP identifications, bans -----

    /// Records that `name` last authenticated from `ip`.
    pub async fn remember_ip(&self, ip: IpAddr, name: &str) -> Result<(), ClusterError> {
        let record = IpRecord {
            name: name.to_string(),
        };
        self.put(Bucket::Ips, &ip_key(ip), &record)
            .await
            .map(|_| ())
    }

    /// Forgets the identification of `ip`.
    pub async fn forget_ip(&self, ip: IpAddr) -> Result<(), ClusterError> {
        self.delete(Bucket::Ips, &ip_key(ip), None).await
    }

    /// Bans the account `key` (every node hears it as [`StateChange::Ban`] and closes
    /// that account's connections; revoke its tokens with
    /// [`revoke_tokens`](Self::revoke_tokens)).
    pub async fn ban(&self, key: &str, ban: &BanRecord) -> Result<(), ClusterError> {
        self.put(Bucket::Bans, &token(key), ban).await.map(|_| ())
    }

    /// Lifts the ban of `key`; [`ClusterError::NotFound`] if there is none.
    pub async fn unban(&self, key: &str) -> Result<(), ClusterError> {
        let Some((_, revision)) = self.entry::<BanRecord>(Bucket::Bans, &token(key)).await? else {
            return Err(ClusterError::NotFound);
        };
        match self.delete(Bucket::Bans, &token(key), Some(revision)).await {
            Err(ClusterError::Conflict) => Err(ClusterError::NotFound),
            other => other,
        }
    }

    /// `clear-ids`: forgets every account, name claim, token, IP identification, ban
    /// and membership (rooms and history stay). Every node hears
    /// [`ClusterEvent::Cleared`], this one included. Durable once it returns.
    pub async fn clear_identities(&self) -> Result<(), ClusterError> {
        self.ensure_available()?;
        for bucket in Bucket::CLEARED {
            self.bucket(bucket)?
                .stream
                .purge()
                .await
                .map_err(unavailable)?;
        }
        let record = ClearedRecord {
            at_ms: unix_ms(),
            by: self.inner.node.clone(),
        };
        self.put(Bucket::Meta, "cleared", &record).await.map(|_| ())
    }
}
