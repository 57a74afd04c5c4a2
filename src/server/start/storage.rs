//! Where the state lives, as start-up sees it: the state folder's files (a single
//! server) or a NATS cluster (`--nats`, SPEC §11). Each is opened before the server
//! says it listens (a corrupt file or an unreachable NATS ends start-up with one
//! line), and becomes the [`Store`](crate::server::store::Store) `ChatServer` is
//! built over; nothing after that knows which one it is.

use std::net::SocketAddr;
use std::time::Duration;

use actix::prelude::*;
use tokio_util::sync::CancellationToken;

use super::StartError;
use crate::actors::chat_server::{ChatServer, ChatSettings, Recovered};
use crate::actors::persistence::{FileStore, IdAllocator, Persistence, StatePaths, WatchHealth};
use crate::server::cluster::{Cluster, ClusterConfig, Joined};
use crate::server::cluster_store::ClusterStore;
use crate::server::config::ServerConfig;
use crate::server::store::history_file::{
    load_history, load_reserved_ids, store_reserved_ids, ID_BLOCK, MAX_MESSAGE_ID,
};
use crate::server::store::history_index::HistoryIndex;
use crate::server::store::identity_file::IdentityFile;
use crate::server::store::rooms_file::RoomsFile;

/// How long start-up waits for NATS to answer and the cluster's state to be read.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// The state, opened.
pub enum Storage {
    Files(Box<Files>),
    Cluster(Box<Joined>),
}

/// The state folder's files, recovered.
pub struct Files {
    recovered: Recovered,
    identity_file: IdentityFile,
    rooms_file: RoomsFile,
    history_len: u64,
    index: HistoryIndex,
    ids: IdAllocator,
    next_id: u64,
}

/// Reads `users.json` (with its journal), `history.jsonl`, `ids.json` and
/// `rooms.json`, and reserves the first block of message ids.
pub fn open_files(paths: &StatePaths, config: &ServerConfig) -> Result<Files, StartError> {
    let recovered = IdentityFile::open(&paths.users, &paths.journal)?;
    if recovered.replayed > 0 {
        log::info!(
            "{} identity changes replayed from {}",
            recovered.replayed,
            paths.journal.display()
        );
    }
    if recovered.dropped_torn_line {
        log::warn!(
            "{}: an incomplete last line (interrupted write) was dropped",
            paths.journal.display()
        );
    }
    for name in &recovered.key_clashes {
        log::warn!("account {name} now compares equal to another account's name; kept apart");
    }
    let loaded = load_history(&paths.history, config.history)?;
    if loaded.dropped_torn_line {
        log::warn!(
            "{}: an incomplete last line (interrupted write) was dropped",
            paths.history.display()
        );
    }
    // Ids a crashed run may have sent are skipped, never given again.
    let reserved = load_reserved_ids(&paths.ids)?;
    let next_id = loaded.last_id.max(reserved) + 1;
    let reserved_through = (next_id - 1 + ID_BLOCK).min(MAX_MESSAGE_ID);
    store_reserved_ids(&paths.ids, reserved_through).map_err(|source| StartError::IdFile {
        path: paths.ids.clone(),
        source,
    })?;
    let (rooms_file, rooms) = RoomsFile::open(&paths.rooms)?;
    Ok(Files {
        recovered: Recovered {
            identities: recovered.identities,
            rooms,
            room_history: loaded.rooms,
            direct_history: loaded.direct,
        },
        identity_file: recovered.file,
        rooms_file,
        history_len: loaded.len,
        index: loaded.index,
        ids: IdAllocator::new(next_id, reserved_through),
        next_id,
    })
}

/// Joins the cluster at `--nats`: connects, sets up (or binds to) its stream and
/// buckets, and reads its state, on an arbiter of its own (the followers run there).
/// The node calls itself by its host name, `address` and process id.
pub fn connect(
    system: &SystemRunner,
    config: &ServerConfig,
    url: &str,
    address: SocketAddr,
) -> Result<Joined, StartError> {
    let host = crate::server::tls::host_name().unwrap_or_else(|| address.ip().to_string());
    let mut cluster = ClusterConfig::new(url, &config.cluster_name);
    cluster.label = format!("{host}:{} pid {}", address.port(), std::process::id());
    cluster.recent = config.history;
    cluster.token_ttl = Some(Duration::from_secs(config.token_ttl));
    cluster.replicas = config.nats_replicas;
    let arbiter = Arbiter::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    arbiter.spawn(async move {
        tx.send(Cluster::connect(cluster).await).ok();
    });
    let url = crate::text::quote(url);
    let joined = system.block_on(async move {
        match tokio::time::timeout(CONNECT_TIMEOUT, rx).await {
            Ok(Ok(joined)) => joined.map_err(StartError::from),
            Ok(Err(_)) => Err(StartError::ClusterStopped),
            Err(_) => Err(StartError::ClusterTimeout { url }),
        }
    })?;
    // Dropping the handle leaves the arbiter running: its thread keeps the followers
    // until the process ends.
    drop(arbiter);
    Ok(joined)
}

impl Storage {
    /// One line for the log: where the state is and how much of it there is.
    pub fn describe(&self, paths: &StatePaths) -> String {
        match self {
            Storage::Files(files) => format!(
                "state in {}, {} accounts, next message id {}",
                paths.dir.display(),
                files.recovered.identities.users.len(),
                files.next_id
            ),
            Storage::Cluster(joined) => format!(
                "state in NATS (cluster {}, node {}), {} accounts, {} rooms, last message id {}",
                joined.cluster.layout().name(),
                joined.cluster.node_id(),
                joined.snapshot.accounts.len(),
                joined.snapshot.rooms.len(),
                joined.snapshot.last_message_id
            ),
        }
    }

    /// Starts `ChatServer` over this state, on an arbiter of its own (the file
    /// store's `Persistence` on another).
    pub fn start_chat_server(
        self,
        paths: &StatePaths,
        settings: ChatSettings,
        stop_accepting: CancellationToken,
        address: SocketAddr,
    ) -> Addr<ChatServer> {
        match self {
            Storage::Files(files) => {
                let Files {
                    recovered,
                    identity_file,
                    rooms_file,
                    history_len,
                    index,
                    ids,
                    ..
                } = *files;
                let persistence = Persistence::start_in_arbiter(&Arbiter::new().handle(), {
                    let paths = paths.clone();
                    move |_| Persistence::new(paths, identity_file, rooms_file, history_len, index)
                });
                let server = ChatServer::start_in_arbiter(&Arbiter::new().handle(), {
                    let persistence = persistence.clone();
                    move |_| {
                        // Built on its own arbiter: the store's replies arrive on that
                        // thread.
                        let store = FileStore::new(persistence, ids);
                        ChatServer::new(
                            settings,
                            recovered,
                            Box::new(store),
                            stop_accepting,
                            address,
                        )
                    }
                });
                persistence.do_send(WatchHealth(server.clone().recipient()));
                server
            }
            Storage::Cluster(joined) => {
                let Joined {
                    cluster,
                    snapshot,
                    events,
                } = *joined;
                ChatServer::start_in_arbiter(&Arbiter::new().handle(), move |_| {
                    // Built on its own arbiter: the store's writes run on that thread.
                    let (store, recovered) = ClusterStore::new(cluster, &snapshot, events);
                    drop(snapshot);
                    ChatServer::new(
                        settings,
                        recovered,
                        Box::new(store),
                        stop_accepting,
                        address,
                    )
                })
            }
        }
    }
}
