//! [`ClusterStore`]: the [`Store`] of cluster mode (SPEC §11), over
//! [`Cluster`](crate::server::cluster::Cluster): accounts, tokens, IP
//! identifications, bans, rooms, memberships and every message live in NATS
//! JetStream, shared by every node started with the same `--nats` and
//! `--cluster-name`.
//!
//! It lives inside `ChatServer`, like the file store. What a single server decides
//! from memory is decided by NATS here: a name is created only if no node has it
//! (create-only writes), a token is spent by one node only (a delete naming the
//! revision read), a room is created once. Nothing is batched: every write is done
//! (and acknowledged) before `ChatServer` acts on it, so an account or a token is
//! visible on every node before its `auth_ok` goes out. A message is delivered when it
//! comes back from the stream (`Submitted::Pending`), in the one order every node
//! delivers in. Every write runs as a task of its own: a caller that stops waiting
//! does not undo it.
//!
//! Messages are handed to NATS one at a time, in the order `ChatServer` submitted
//! them (a session's pipelined `say`s stay in order), and their acknowledgements are
//! awaited together.

mod view;

use std::future::Future;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};

use self::view::{payload, translate, Uids};
use crate::actors::chat_server::Recovered;
use crate::names::confusable_keys;
use crate::server::cluster::{
    AccountRecord, AdminCommand, BanRecord, Belongings, Cluster, ClusterError, ClusterEvent,
    ConnectionRef, HistoryOf, MemberRecord, Outgoing, PresenceChange, RoomRecord, Scope, Snapshot,
    StoredBody, TokenEntry,
};
use crate::server::identity::{Account, IdentityChange};
use crate::server::outbound::SessionId;
use crate::server::rooms::RoomChange;
use crate::server::store::history_index::Conversation;
use crate::server::store::{
    AccountDeletion, Answer, Draft, Joined, NodeSummary, PageRequest, RoomJoin, Spent, Store,
    StoreError, StoreEvents, StoreFuture, Submitted, Target,
};
use crate::server::unix_ms;

/// A message waiting to be handed to NATS, and who wants its id.
type Queued = (Outgoing, oneshot::Sender<Result<u64, StoreError>>);

/// See the module documentation.
pub struct ClusterStore {
    cluster: Cluster,
    uids: Uids,
    /// Messages to hand to NATS, in order.
    outgoing: mpsc::UnboundedSender<Queued>,
    /// The cluster's events, until `ChatServer` takes them.
    events: Option<mpsc::Receiver<ClusterEvent>>,
}

impl ClusterStore {
    /// A store over `cluster`, seeded from its `snapshot`; `ChatServer` starts from
    /// the state this returns beside it. Must be called where `ChatServer` runs (its
    /// writers are spawned there).
    pub fn new(
        cluster: Cluster,
        snapshot: &Snapshot,
        events: mpsc::Receiver<ClusterEvent>,
    ) -> (ClusterStore, Recovered) {
        let uids = Uids::default();
        let recovered = view::recovered(snapshot, &uids);
        let (outgoing, queue) = mpsc::unbounded_channel();
        tokio::spawn(hand_over(cluster.clone(), queue));
        let store = ClusterStore {
            cluster,
            uids,
            outgoing,
            events: Some(events),
        };
        (store, recovered)
    }

    fn uid(&self, key: &str) -> Result<String, StoreError> {
        self.uids
            .get(key)
            .ok_or_else(|| StoreError::Unavailable(format!("account {key} not known here yet")))
    }
}

/// Hands queued messages to NATS one after the other, and answers each with its id
/// once stored (acknowledgements awaited concurrently).
async fn hand_over(cluster: Cluster, mut queue: mpsc::UnboundedReceiver<Queued>) {
    while let Some((message, reply)) = queue.recv().await {
        match cluster.send(&message).await {
            Ok(acknowledged) => {
                tokio::spawn(async move {
                    // On its way: a failure now may still end in NATS storing it.
                    let stored = acknowledged.await.map_err(|err| match err {
                        ClusterError::Unavailable(reason) => StoreError::Unconfirmed(reason),
                        other => store_error(other),
                    });
                    reply.send(stored).ok();
                });
            }
            Err(err) => {
                reply.send(Err(store_error(err))).ok();
            }
        }
    }
}

/// A cluster failure as `ChatServer` understands it.
fn store_error(err: ClusterError) -> StoreError {
    match err {
        ClusterError::Unavailable(reason) => StoreError::Unavailable(reason),
        ClusterError::Conflict => StoreError::Conflict,
        other => StoreError::Io {
            path: "NATS".to_string(),
            message: other.to_string(),
        },
    }
}

/// Runs `work` as a task of its own (a caller that stops waiting does not stop it)
/// and gives its outcome.
fn run<T, F>(work: F) -> StoreFuture<T>
where
    T: Send + 'static,
    F: Future<Output = Result<T, StoreError>> + Send + 'static,
{
    let task = tokio::spawn(work);
    Box::pin(async move {
        task.await
            .map_err(|err| StoreError::NotAnswering(err.to_string()))?
    })
}

/// Writes identity changes to NATS, in order (consecutive token revocations
/// together).
async fn write_identities(
    cluster: Cluster,
    uids: Uids,
    changes: Vec<IdentityChange>,
) -> Result<(), StoreError> {
    let mut revoked = Vec::new();
    for change in changes {
        if let IdentityChange::RevokeToken { digest } = change {
            revoked.push(digest);
            continue;
        }
        if !revoked.is_empty() {
            cluster
                .revoke_tokens(&std::mem::take(&mut revoked))
                .await
                .map_err(store_error)?;
        }
        write_identity(&cluster, &uids, change).await?;
    }
    if !revoked.is_empty() {
        cluster.revoke_tokens(&revoked).await.map_err(store_error)?;
    }
    Ok(())
}

async fn write_identity(
    cluster: &Cluster,
    uids: &Uids,
    change: IdentityChange,
) -> Result<(), StoreError> {
    let written = match change {
        IdentityChange::IssueToken { digest, record } => {
            let uid = uids.get(&record.user).ok_or_else(|| {
                StoreError::Unavailable(format!("account {} not known here yet", record.user))
            })?;
            let entry = TokenEntry {
                user: record.user,
                uid,
                expires_ms: record.expires_ms,
            };
            cluster.issue_token(&digest, &entry).await
        }
        IdentityChange::RevokeToken { digest } => cluster.revoke_tokens(&[digest]).await,
        IdentityChange::RememberIp { ip, name } => cluster.remember_ip(ip, &name).await,
        IdentityChange::SetPassword { key, password_hash } => {
            match cluster.account(&key).await.map_err(store_error)? {
                Some((mut record, revision)) => {
                    record.password_hash = password_hash;
                    cluster
                        .update_account(&key, &record, revision)
                        .await
                        .map(|_| ())
                }
                None => Err(ClusterError::Conflict),
            }
        }
        IdentityChange::Ban { key, ban } => {
            let record = BanRecord {
                name: ban.name,
                reason: ban.reason,
                at_ms: ban.since_ms,
                revoked: ban.revoked,
            };
            cluster.ban(&key, &record).await
        }
        IdentityChange::Unban { key } => match cluster.unban(&key).await {
            Err(ClusterError::NotFound) => Ok(()),
            other => other,
        },
        IdentityChange::Clear => cluster.clear_identities().await,
        // Tokens expire in NATS by themselves (the bucket's age limit); accounts are
        // created and deleted by their own operations.
        IdentityChange::PruneExpired { .. }
        | IdentityChange::AddAccount { .. }
        | IdentityChange::RemoveAccount { .. } => Ok(()),
    };
    written.map_err(store_error)
}

impl Store for ClusterStore {
    fn submit(&mut self, draft: Draft) -> Submitted {
        let (scope, room, to) = match draft.target {
            Target::Room { name, key } => (Scope::Room(key), Some(name), None),
            Target::Direct {
                to,
                to_key,
                from_key,
            } => {
                let uids = (self.uid(&from_key), self.uid(&to_key));
                let (Ok(from_uid), Ok(to_uid)) = uids else {
                    return Submitted::Refused(StoreError::Unavailable(
                        "an account of this conversation is not known here yet".into(),
                    ));
                };
                (Scope::direct(&from_uid, &to_uid), None, Some(to))
            }
        };
        let message = Outgoing {
            scope,
            body: StoredBody {
                room,
                to,
                from: draft.from,
                text: draft.text,
                ts: unix_ms(),
            },
        };
        let (reply, id) = oneshot::channel();
        if self.outgoing.send((message, reply)).is_err() {
            return Submitted::Refused(StoreError::NotAnswering("the cluster is closed".into()));
        }
        Submitted::Pending(Box::pin(async move {
            id.await
                .map_err(|_| StoreError::NotAnswering("the cluster is closed".into()))?
        }))
    }

    fn record_identities(
        &mut self,
        changes: Vec<IdentityChange>,
        _durable: bool,
    ) -> Option<StoreFuture<()>> {
        let local_only = changes
            .iter()
            .all(|c| matches!(c, IdentityChange::PruneExpired { .. }));
        if local_only {
            return None;
        }
        // Nothing is batched: every node must see a token before its `auth_ok`.
        let (cluster, uids) = (self.cluster.clone(), self.uids.clone());
        Some(run(write_identities(cluster, uids, changes)))
    }

    fn create_account(&mut self, account: Account) -> StoreFuture<bool> {
        let cluster = self.cluster.clone();
        let uids = self.uids.clone();
        run(async move {
            let key = crate::names::name_key(&account.name);
            let record =
                AccountRecord::new(&account.name, &account.password_hash, account.created_ms);
            match cluster
                .register_account(&key, &confusable_keys(&account.name), &record)
                .await
            {
                Ok(_) => {
                    uids.set(&key, &record.uid);
                    Ok(true)
                }
                Err(ClusterError::Conflict) => Ok(false),
                Err(err) => Err(store_error(err)),
            }
        })
    }

    fn spend_token(&mut self, digest: &str, _known: Option<&str>) -> Answer<Option<Spent>> {
        let (cluster, uids) = (self.cluster.clone(), self.uids.clone());
        let digest = digest.to_string();
        Answer::Later(run(async move {
            let token = match cluster.spend_token(&digest, unix_ms()).await {
                Ok(token) => token,
                Err(ClusterError::NotFound | ClusterError::Conflict) => return Ok(None),
                Err(err) => return Err(store_error(err)),
            };
            // The account it names, with the same id (not a new account of that name).
            if uids.get(&token.user).as_deref() == Some(token.uid.as_str()) {
                return Ok(Some(Spent {
                    user: token.user,
                    account: None,
                }));
            }
            match cluster.account(&token.user).await.map_err(store_error)? {
                Some((record, _)) if record.uid == token.uid => {
                    uids.set(&token.user, &record.uid);
                    Ok(Some(Spent {
                        user: token.user,
                        account: Some(record.account()),
                    }))
                }
                _ => Ok(None),
            }
        }))
    }

    fn lookup_account(&mut self, key: &str) -> Answer<Option<Account>> {
        let (cluster, uids) = (self.cluster.clone(), self.uids.clone());
        let key = key.to_string();
        Answer::Later(run(async move {
            match cluster.account(&key).await.map_err(store_error)? {
                Some((record, _)) => {
                    uids.set(&key, &record.uid);
                    Ok(Some(record.account()))
                }
                None => Ok(None),
            }
        }))
    }

    fn delete_account(&mut self, deletion: AccountDeletion) -> StoreFuture<()> {
        let (cluster, uids) = (self.cluster.clone(), self.uids.clone());
        let uid = self.uid(&deletion.key);
        run(async move {
            let uid = uid?;
            let AccountDeletion {
                key,
                account,
                tokens,
                ips,
                rooms,
            } = deletion;
            let belongings = Belongings { tokens, ips, rooms };
            let confusables = confusable_keys(&account.name);
            match cluster
                .delete_account(&key, &uid, &confusables, &belongings)
                .await
            {
                Ok(()) | Err(ClusterError::NotFound) => {
                    uids.forget(&key, Some(&uid));
                    Ok(())
                }
                Err(err) => Err(store_error(err)),
            }
        })
    }

    fn join_room(&mut self, join: RoomJoin) -> StoreFuture<Joined> {
        let cluster = self.cluster.clone();
        let uid = self.uid(&join.user);
        run(async move {
            let uid = uid?;
            let mut changes = Vec::new();
            if join.create {
                let now = unix_ms();
                let record = RoomRecord {
                    name: join.name.clone(),
                    created_ms: now,
                };
                let created = match cluster.create_room(&join.key, &record).await {
                    Ok(()) => record,
                    // Created first elsewhere: that one's name stands.
                    Err(ClusterError::Conflict) => cluster
                        .room(&join.key)
                        .await
                        .map_err(store_error)?
                        .unwrap_or(record),
                    Err(err) => return Err(store_error(err)),
                };
                changes.push(RoomChange::Create {
                    name: created.name,
                    created_ms: created.created_ms,
                });
            }
            let member = MemberRecord {
                name: join.user_name,
                uid,
                since_ms: unix_ms(),
            };
            let newly = cluster
                .join(&join.key, &join.user, &member)
                .await
                .map_err(store_error)?;
            changes.push(RoomChange::Join {
                room: join.key,
                user: join.user,
            });
            Ok(Joined { changes, newly })
        })
    }

    fn part_room(&mut self, room: &str, user: &str) -> StoreFuture<bool> {
        let cluster = self.cluster.clone();
        let (room, user) = (room.to_string(), user.to_string());
        run(async move { cluster.part(&room, &user).await.map_err(store_error) })
    }

    fn record_rooms(&mut self, changes: Vec<RoomChange>) -> StoreFuture<()> {
        // `clear-ids` and account deletion take memberships with them in NATS; joins
        // and parts are operations of their own.
        for change in &changes {
            if !matches!(
                change,
                RoomChange::ClearMembers | RoomChange::RemoveUser { .. }
            ) {
                log::warn!("a room change outside a join or part was not written: {change:?}");
            }
        }
        Box::pin(async { Ok(()) })
    }

    fn page(&mut self, request: PageRequest) -> StoreFuture<Vec<Bytes>> {
        let of = match &request.conversation {
            Conversation::Room(key) => Ok(HistoryOf::Room(key.clone())),
            Conversation::Direct(a, b) => match (self.uid(a), self.uid(b)) {
                (Ok(a), Ok(b)) => Ok(HistoryOf::Conversation(a, b)),
                // An account gone: nothing to show.
                _ => Err(()),
            },
        };
        let cluster = self.cluster.clone();
        run(async move {
            let Ok(of) = of else {
                return Ok(Vec::new());
            };
            // The floor is a single server's way to tell accounts of one name apart;
            // here conversations are between account ids already.
            let page = cluster
                .history(&of, request.before, request.limit)
                .await
                .map_err(store_error)?;
            Ok(page.into_iter().filter_map(payload).collect())
        })
    }

    fn last_id(&self) -> u64 {
        self.cluster.last_message_id()
    }

    fn user_connected(&mut self, key: &str, name: &str) -> bool {
        matches!(
            self.cluster.user_connected(key, name),
            Some(PresenceChange::Online { .. })
        )
    }

    fn user_disconnected(&mut self, key: &str) -> bool {
        matches!(
            self.cluster.user_disconnected(key),
            Some(PresenceChange::Offline { .. })
        )
    }

    fn online_elsewhere(&self) -> Vec<(String, String)> {
        self.cluster.online_elsewhere()
    }

    fn nodes_with(&self, key: &str) -> usize {
        self.cluster.nodes_with(key)
    }

    fn nodes(&self) -> Vec<NodeSummary> {
        self.cluster
            .nodes()
            .into_iter()
            .map(|node| NodeSummary {
                label: node.label,
                started_ms: node.started_ms,
                users: node.users,
                connections: node.connections,
                this_node: node.this_node,
            })
            .collect()
    }

    fn broadcast_kick(&mut self, key: &str, message: &str, except: Option<SessionId>) {
        let command = AdminCommand::Kick {
            key: key.to_string(),
            message: message.to_string(),
            except: except.map(|session| ConnectionRef {
                node: self.cluster.node_id().to_string(),
                session,
            }),
        };
        let cluster = self.cluster.clone();
        tokio::spawn(async move {
            if let Err(err) = cluster.broadcast(command).await {
                log::warn!("a kick was not sent to the other nodes: {err}");
            }
        });
    }

    fn is_available(&self) -> bool {
        self.cluster.is_available()
    }

    fn take_events(&mut self) -> Option<StoreEvents> {
        let mut events = self.events.take()?;
        let uids = self.uids.clone();
        let node = self.cluster.node_id().to_string();
        let stream = futures_util::stream::poll_fn(move |cx| events.poll_recv(cx))
            .filter_map(move |event| std::future::ready(translate(event, &uids, &node)));
        Some(Box::pin(stream))
    }

    fn sync_for_shutdown(&mut self) -> StoreFuture<()> {
        // Everything is in NATS already: leave, so that the others see this node's
        // users go at once.
        let cluster = self.cluster.clone();
        run(async move {
            cluster.close().await;
            Ok(())
        })
    }
}
