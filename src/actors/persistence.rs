//! `Persistence`: the only actor that writes the state folder's files, and
//! [`FileStore`], the `Store` that `ChatServer` reaches it through.
//!
//! It runs on its own arbiter, so a slow disk never delays chat delivery. It owns
//! [`IdentityFile`] (`users.json` and its journal) and [`HistoryFile`]
//! (`history.jsonl`), and writes `ids.json` when `ChatServer` reserves message ids.
//! Identity changes arrive as values; a durable one is answered only once it is on
//! disk, which is what lets `ChatServer` hold back an `auth_ok` until a new account is
//! safe. History is written every [`HISTORY_FLUSH_INTERVAL`]; the identity journal
//! every [`JOURNAL_WRITE_INTERVAL`], and folded into `users.json` when due.

use std::path::{Path, PathBuf};
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;

mod file_store;

pub use self::file_store::{FileStore, IdAllocator};

use crate::server::identity::IdentityChange;
use crate::server::rooms::RoomChange;
use crate::server::store::history_file::{store_reserved_ids, HistoryFile};
use crate::server::store::history_index::{Conversation, Entry, HistoryIndex};
use crate::server::store::identity_file::IdentityFile;
use crate::server::store::rooms_file::RoomsFile;
use crate::server::store::PageRequest;
use crate::server::store::StoreHealth;

/// How long appended history may sit in memory before it is written out: the most
/// chat a crash can lose.
pub const HISTORY_FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// How often batched identity changes (rotated tokens, IPs) are written: the most of
/// them a crash can lose, as the contract allows.
pub const JOURNAL_WRITE_INTERVAL: Duration = Duration::from_secs(1);

/// Buffered history beyond this is written at once rather than at the next tick.
const HISTORY_BUFFER_BYTES: usize = 256 * 1024;

/// Where each state file lives.
#[derive(Debug, Clone)]
pub struct StatePaths {
    pub dir: PathBuf,
    pub users: PathBuf,
    pub journal: PathBuf,
    pub history: PathBuf,
    pub ids: PathBuf,
    pub rooms: PathBuf,
    pub log: PathBuf,
}

impl StatePaths {
    /// The files of the state folder `dir`.
    pub fn new(dir: &Path) -> StatePaths {
        StatePaths {
            dir: dir.to_path_buf(),
            users: dir.join("users.json"),
            journal: dir.join("users.journal"),
            history: dir.join("history.jsonl"),
            ids: dir.join("ids.json"),
            rooms: dir.join("rooms.json"),
            log: dir.join("server.log"),
        }
    }
}

/// A state file that could not be written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PersistError {
    pub path: String,
    pub message: String,
}

impl PersistError {
    fn new(path: &Path, err: impl std::fmt::Display) -> PersistError {
        PersistError {
            path: path.display().to_string(),
            message: err.to_string(),
        }
    }
}

/// The actor. See the module documentation.
pub struct Persistence {
    paths: StatePaths,
    identities: IdentityFile,
    rooms: RoomsFile,
    history: HistoryFile,
    /// Where every message's line is, for paging.
    index: HistoryIndex,
    /// Told when history stops or starts being writable again.
    health_watcher: Option<Recipient<StoreHealth>>,
    /// Whether the last attempt to write history failed.
    history_failing: bool,
    /// Whether the last attempt to write the identity journal failed.
    journal_failing: bool,
}

impl Persistence {
    /// A persistence actor over the files recovered at start-up: the identities, the
    /// rooms, and the history file (`history_len` bytes long) with its index.
    pub fn new(
        paths: StatePaths,
        identities: IdentityFile,
        rooms: RoomsFile,
        history_len: u64,
        index: HistoryIndex,
    ) -> Persistence {
        let history = HistoryFile::new(&paths.history, history_len);
        Persistence {
            paths,
            identities,
            rooms,
            history,
            index,
            health_watcher: None,
            history_failing: false,
            journal_failing: false,
        }
    }

    /// Writes buffered history, logging a failure and telling the watcher when the
    /// file stops or starts taking writes.
    fn flush_history(&mut self, sync: bool) -> Result<(), PersistError> {
        let result = self
            .history
            .flush(sync)
            .map_err(|e| PersistError::new(self.history.path(), e));
        let failing = result.is_err();
        if let Err(err) = &result {
            // Once per outage, not at every retry.
            if self.history_failing {
                log::debug!("history still not written: {err}");
            } else {
                log::error!("history not written, will retry: {err}");
            }
        }
        if failing != self.history_failing {
            self.history_failing = failing;
            if !failing {
                log::info!("history is being written again");
            }
            if let Some(watcher) = &self.health_watcher {
                watcher.do_send(if failing {
                    StoreHealth::NotRecording
                } else {
                    StoreHealth::Recording
                });
            }
        }
        result
    }

    /// Writes the identity journal, and folds it into `users.json` when due.
    fn write_identities(&mut self) {
        let result = self.identities.write_journal(false).and_then(|()| {
            if self.identities.fold_due() {
                self.identities.fold()
            } else {
                Ok(())
            }
        });
        match result {
            Ok(()) if self.journal_failing => {
                self.journal_failing = false;
                log::info!("identity changes are being written again");
            }
            Ok(()) => {}
            Err(err) if !self.journal_failing => {
                self.journal_failing = true;
                log::error!(
                    "identity changes not written, will retry: {}: {err}",
                    self.identities.journal_path().display()
                );
            }
            Err(_) => {}
        }
    }
}

impl Actor for Persistence {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(HISTORY_FLUSH_INTERVAL, |act, _| {
            let _ = act.flush_history(false);
        });
        ctx.run_interval(JOURNAL_WRITE_INTERVAL, |act, _| act.write_identities());
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        if let Err(err) = self.flush_history(true) {
            log::error!("history not written at stop: {err}");
        }
        if let Err(err) = self.identities.fold() {
            log::error!("identity file not written at stop: {err}");
        }
        Running::Stop
    }
}

/// Apply identity changes to the files; with `durable`, answered once they (and every
/// change recorded before them) are on disk.
#[derive(Message)]
#[rtype(result = "Result<(), PersistError>")]
pub struct RecordIdentities {
    pub changes: Vec<IdentityChange>,
    pub durable: bool,
}

impl Handler<RecordIdentities> for Persistence {
    type Result = Result<(), PersistError>;

    fn handle(&mut self, msg: RecordIdentities, _: &mut Self::Context) -> Self::Result {
        self.identities
            .record(&msg.changes, msg.durable)
            .map_err(|e| PersistError::new(self.identities.snapshot_path(), e))
    }
}

/// Append one MESSAGE payload (JSON text, no newline) to `history.jsonl`, and index it
/// under its conversation.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AppendHistory {
    pub payload: Bytes,
    pub id: u64,
    pub conversation: Conversation,
}

impl Handler<AppendHistory> for Persistence {
    type Result = ();

    fn handle(&mut self, msg: AppendHistory, _: &mut Self::Context) {
        let offset = self.history.append(&msg.payload);
        self.index.add(
            msg.conversation,
            Entry {
                id: msg.id,
                offset,
                len: msg.payload.len() as u32,
            },
        );
        if self.history.pending_bytes() >= HISTORY_BUFFER_BYTES {
            let _ = self.flush_history(false);
        }
    }
}

/// Read a page of older messages (see [`PageRequest`]).
#[derive(Message)]
#[rtype(result = "Result<Vec<Bytes>, PersistError>")]
pub struct ReadPage(pub PageRequest);

impl Handler<ReadPage> for Persistence {
    type Result = Result<Vec<Bytes>, PersistError>;

    fn handle(&mut self, msg: ReadPage, _: &mut Self::Context) -> Self::Result {
        let request = msg.0;
        let entries = self.index.page(
            &request.conversation,
            request.before,
            request.floor,
            request.limit,
        );
        self.history
            .read_lines(entries)
            .map_err(|e| PersistError::new(self.history.path(), e))
    }
}

/// Apply room changes and write `rooms.json`; answered once it is on disk.
#[derive(Message)]
#[rtype(result = "Result<(), PersistError>")]
pub struct RecordRooms(pub Vec<RoomChange>);

impl Handler<RecordRooms> for Persistence {
    type Result = Result<(), PersistError>;

    fn handle(&mut self, msg: RecordRooms, _: &mut Self::Context) -> Self::Result {
        self.rooms
            .record(&msg.0)
            .map_err(|e| PersistError::new(self.rooms.path(), e))
    }
}

/// Record durably that message ids up to `through` may be used.
#[derive(Message)]
#[rtype(result = "Result<(), PersistError>")]
pub struct ReserveIds {
    pub through: u64,
}

impl Handler<ReserveIds> for Persistence {
    type Result = Result<(), PersistError>;

    fn handle(&mut self, msg: ReserveIds, _: &mut Self::Context) -> Self::Result {
        store_reserved_ids(&self.paths.ids, msg.through)
            .map_err(|e| PersistError::new(&self.paths.ids, e))
    }
}

/// Put everything on disk before the process ends: history fsynced, the identity
/// journal folded into `users.json`, and the id reservation lowered to `last_id`, the
/// last id used, so that the next run continues one by one.
#[derive(Message)]
#[rtype(result = "Result<(), PersistError>")]
pub struct SyncForShutdown {
    pub last_id: u64,
}

impl Handler<SyncForShutdown> for Persistence {
    type Result = Result<(), PersistError>;

    fn handle(&mut self, msg: SyncForShutdown, _: &mut Self::Context) -> Self::Result {
        let history = self.flush_history(true);
        let identities = self
            .identities
            .fold()
            .map_err(|e| PersistError::new(self.identities.snapshot_path(), e));
        // Only once the history that used them is on disk.
        let ids = match history {
            Ok(()) => store_reserved_ids(&self.paths.ids, msg.last_id)
                .map_err(|e| PersistError::new(&self.paths.ids, e)),
            Err(_) => Ok(()),
        };
        history.and(identities).and(ids)
    }
}

/// Register the actor to tell about [`StoreHealth`] changes (history stops or starts
/// taking writes).
#[derive(Message)]
#[rtype(result = "()")]
pub struct WatchHealth(pub Recipient<StoreHealth>);

impl Handler<WatchHealth> for Persistence {
    type Result = ();

    fn handle(&mut self, msg: WatchHealth, _: &mut Self::Context) {
        self.health_watcher = Some(msg.0);
    }
}
