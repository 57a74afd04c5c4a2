//! `users.json` and its journal: how identity changes reach the disk.
//!
//! `users.json` is the identity file a person can read. Rewriting it whole for every
//! change would make a registration cost grow with the number of accounts, so changes
//! are appended to a journal beside it (`users.journal`, one
//! [`JournalEntry`] per line), and the journal is folded into `users.json` within a
//! second or two ([`IdentityFile::fold_due`]). A change that must survive a crash (a
//! new account before its `auth_ok`) is fsynced before it is acknowledged
//! ([`IdentityFile::record`] with `durable`); while the file is small it is simply
//! folded at once, so a small server's `users.json` is always current.
//!
//! The file keeps its own copy of the identities (the mirror), to which it applies the
//! same changes as `ChatServer`: folding never asks the chat thread for a snapshot.
//! Entries carry sequence numbers and `users.json` records the last one it includes,
//! so a crash between writing `users.json` and emptying the journal replays nothing
//! twice.

use std::fs::File;
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::server::identity::{Identities, IdentityChange};
use crate::server::store::state_files;

/// Largest `users.json` or journal the server reads (a hundred thousand accounts take
/// about 20 MB).
pub const MAX_IDENTITY_FILE_BYTES: u64 = 512 * 1024 * 1024;

/// Below this size `users.json` is rewritten for every durable change instead of
/// journaling it: it costs about the same as a journal fsync, and the file a person
/// reads is then always current.
pub const FOLD_AT_ONCE_BYTES: usize = 64 * 1024;

/// Shortest time between two folds of the journal.
pub const FOLD_INTERVAL: Duration = Duration::from_secs(1);

/// One journal line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub seq: u64,
    #[serde(flatten)]
    pub change: IdentityChange,
}

/// A state file that could not be read or understood at start-up.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
}

impl LoadError {
    fn io(path: &Path, source: io::Error) -> LoadError {
        LoadError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn corrupt(path: &Path, message: impl Into<String>) -> LoadError {
        LoadError::Corrupt {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// `users.json`, its journal, and the mirror of what they hold.
pub struct IdentityFile {
    snapshot_path: PathBuf,
    journal_path: PathBuf,
    mirror: Identities,
    journal: File,
    /// Journal bytes known to be whole lines on disk; a failed write is cut back to it.
    journal_len: u64,
    /// Whether a failed write may have left bytes beyond `journal_len`.
    journal_torn: bool,
    /// Lines recorded and not yet written.
    pending: Vec<u8>,
    /// Whether the journal holds entries not yet folded into `users.json`.
    unfolded: bool,
    last_fold: Instant,
    /// How long the last fold took, which spaces the next one.
    last_fold_cost: Duration,
    snapshot_bytes: usize,
}

/// What [`IdentityFile::open`] recovered.
pub struct Recovered {
    pub file: IdentityFile,
    pub identities: Identities,
    /// Journal entries replayed on top of `users.json`.
    pub replayed: usize,
    /// Whether an incomplete last journal line (never acknowledged) was dropped.
    pub dropped_torn_line: bool,
    /// Accounts whose names now compare equal to another's, kept under their old key.
    pub key_clashes: Vec<String>,
}

impl IdentityFile {
    /// Reads `users.json` and replays its journal, then folds so that the journal
    /// starts empty. A missing file is an empty one; an unreadable or corrupt one is an
    /// error naming it (and is left as it is).
    pub fn open(snapshot_path: &Path, journal_path: &Path) -> Result<Recovered, LoadError> {
        let mut mirror = match state_files::read_bounded(snapshot_path, MAX_IDENTITY_FILE_BYTES)
            .map_err(|e| LoadError::io(snapshot_path, e))?
        {
            Some(bytes) => serde_json::from_slice::<Identities>(&bytes)
                .map_err(|e| LoadError::corrupt(snapshot_path, e.to_string()))?,
            None => Identities::new(),
        };
        let key_clashes = mirror.reindex();
        let journal = state_files::open_private_read_append(journal_path)
            .map_err(|e| LoadError::io(journal_path, e))?;
        let (replayed, good_len, torn) = replay(journal_path, &journal, &mut mirror)?;
        if torn {
            journal
                .set_len(good_len)
                .and_then(|_| journal.sync_all())
                .map_err(|e| LoadError::io(journal_path, e))?;
        }
        let mut file = IdentityFile {
            snapshot_path: snapshot_path.to_path_buf(),
            journal_path: journal_path.to_path_buf(),
            mirror: mirror.clone(),
            journal,
            journal_len: good_len,
            journal_torn: false,
            pending: Vec::new(),
            unfolded: good_len > 0,
            last_fold: Instant::now(),
            last_fold_cost: Duration::ZERO,
            snapshot_bytes: 0,
        };
        file.fold().map_err(|e| LoadError::io(snapshot_path, e))?;
        let mut identities = mirror;
        identities.journal_seq = file.mirror.journal_seq;
        Ok(Recovered {
            file,
            identities,
            replayed,
            dropped_torn_line: torn,
            key_clashes,
        })
    }

    /// Applies `changes` to the mirror and queues them for the journal. With `durable`,
    /// they (and everything queued before) are on disk when this returns `Ok`.
    pub fn record(&mut self, changes: &[IdentityChange], durable: bool) -> io::Result<()> {
        for change in changes {
            self.mirror.apply(change);
            self.mirror.journal_seq += 1;
            let entry = JournalEntry {
                seq: self.mirror.journal_seq,
                change: change.clone(),
            };
            serde_json::to_writer(&mut self.pending, &entry)?;
            self.pending.push(b'\n');
        }
        if !durable {
            return Ok(());
        }
        if self.snapshot_bytes < FOLD_AT_ONCE_BYTES {
            self.fold()
        } else {
            self.write_journal(true)
        }
    }

    /// Writes queued journal lines (fsynced with `sync`). On failure they stay queued
    /// and whatever part reached the file is cut off before the next try, so the
    /// journal never holds a broken line before a good one.
    pub fn write_journal(&mut self, sync: bool) -> io::Result<()> {
        if self.pending.is_empty() && !sync {
            return Ok(());
        }
        let result = (|| -> io::Result<()> {
            if self.journal_torn {
                self.journal.set_len(self.journal_len)?;
                self.journal_torn = false;
            }
            if !self.pending.is_empty() {
                self.journal_torn = true;
                self.journal.write_all(&self.pending)?;
                self.journal_torn = false;
                self.journal_len += self.pending.len() as u64;
                self.pending.clear();
                self.unfolded = true;
            }
            if sync {
                self.journal.sync_data()?;
            }
            Ok(())
        })();
        if result.is_err() {
            // The lines may or may not be there; cut back to what is known.
            self.journal_torn = true;
        }
        result
    }

    /// Whether the journal should be folded now.
    pub fn fold_due(&self) -> bool {
        (self.unfolded || !self.pending.is_empty())
            && self.last_fold.elapsed() >= FOLD_INTERVAL.max(self.last_fold_cost * 20)
    }

    /// Rewrites `users.json` from the mirror (atomically, durably) and empties the
    /// journal. On failure the journal keeps everything and the old file stays.
    pub fn fold(&mut self) -> io::Result<()> {
        let started = Instant::now();
        let text = serde_json::to_vec_pretty(&self.mirror)?;
        state_files::write_atomically(&self.snapshot_path, &text)?;
        self.snapshot_bytes = text.len();
        self.pending.clear();
        // users.json now holds every entry; an emptying that fails (or a crash before
        // it) leaves entries that the next start skips by their sequence numbers.
        if self.journal_len > 0 || self.journal_torn {
            self.journal.set_len(0)?;
            self.journal_len = 0;
            self.journal_torn = false;
        }
        self.unfolded = false;
        self.last_fold = Instant::now();
        self.last_fold_cost = started.elapsed();
        Ok(())
    }

    /// The journal's path (for messages).
    pub fn journal_path(&self) -> &Path {
        &self.journal_path
    }

    /// `users.json`'s path (for messages).
    pub fn snapshot_path(&self) -> &Path {
        &self.snapshot_path
    }
}

/// Applies the journal's entries newer than the mirror; returns how many, the length of
/// its whole lines, and whether an incomplete last line was found.
fn replay(
    path: &Path,
    journal: &File,
    mirror: &mut Identities,
) -> Result<(usize, u64, bool), LoadError> {
    let mut reader = io::BufReader::new(journal);
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|e| LoadError::io(path, e))?;
    let mut line = Vec::new();
    let mut good_len = 0u64;
    let mut replayed = 0usize;
    let mut line_no = 0usize;
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_IDENTITY_FILE_BYTES)
            .read_until(b'\n', &mut line)
            .map_err(|e| LoadError::io(path, e))?;
        if n == 0 {
            return Ok((replayed, good_len, false));
        }
        line_no += 1;
        if line.last() != Some(&b'\n') {
            return Ok((replayed, good_len, true));
        }
        let entry: JournalEntry = serde_json::from_slice(&line).map_err(|e| {
            LoadError::corrupt(path, format!("line {line_no} is not a journal entry: {e}"))
        })?;
        if entry.seq > mirror.journal_seq {
            mirror.apply(&entry.change);
            mirror.journal_seq = entry.seq;
            replayed += 1;
        }
        good_len += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::identity::Account;

    fn add(name: &str) -> IdentityChange {
        IdentityChange::AddAccount {
            account: Account {
                name: name.into(),
                password_hash: "h".into(),
                created_ms: 0,
                since_id: 0,
            },
        }
    }

    fn paths(dir: &Path) -> (PathBuf, PathBuf) {
        (dir.join("users.json"), dir.join("users.journal"))
    }

    #[test]
    fn durable_changes_of_a_small_file_are_folded_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (users, journal) = paths(dir.path());
        let mut file = IdentityFile::open(&users, &journal).unwrap().file;
        file.record(&[add("Ann")], true).unwrap();
        let text = std::fs::read_to_string(&users).unwrap();
        assert!(text.contains("\"Ann\""), "{text}");
        assert_eq!(std::fs::metadata(&journal).unwrap().len(), 0);
    }

    #[test]
    fn a_large_file_journals_durable_changes_and_replays_them() {
        let dir = tempfile::tempdir().unwrap();
        let (users, journal) = paths(dir.path());
        let mut file = IdentityFile::open(&users, &journal).unwrap().file;
        file.snapshot_bytes = FOLD_AT_ONCE_BYTES; // as if large
        file.record(&[add("Bob")], true).unwrap();
        file.record(&[add("Cy")], false).unwrap();
        file.write_journal(false).unwrap();
        assert!(!std::fs::read_to_string(&users).unwrap().contains("Bob"));
        assert!(std::fs::read_to_string(&journal).unwrap().contains("Bob"));
        drop(file); // a crash: nothing folded

        let recovered = IdentityFile::open(&users, &journal).unwrap();
        assert_eq!(recovered.replayed, 2);
        assert!(recovered.identities.account("bob").is_some());
        assert!(recovered.identities.account("cy").is_some());
        // Opening folded: the file holds both and the journal is empty.
        assert!(std::fs::read_to_string(&users).unwrap().contains("Cy"));
        assert_eq!(std::fs::metadata(&journal).unwrap().len(), 0);
    }

    #[test]
    fn entries_already_in_the_file_are_not_replayed_twice() {
        let dir = tempfile::tempdir().unwrap();
        let (users, journal) = paths(dir.path());
        let mut file = IdentityFile::open(&users, &journal).unwrap().file;
        file.snapshot_bytes = FOLD_AT_ONCE_BYTES;
        file.record(&[add("Dee")], true).unwrap();
        let journal_text = std::fs::read(&journal).unwrap();
        file.record(&[IdentityChange::RemoveAccount { key: "dee".into() }], true)
            .unwrap();
        file.fold().unwrap();
        // A crash after the fold and before the journal was emptied.
        std::fs::write(&journal, journal_text).unwrap();
        let recovered = IdentityFile::open(&users, &journal).unwrap();
        assert_eq!(recovered.replayed, 0);
        assert!(recovered.identities.account("dee").is_none());
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_a_bad_whole_line_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let (users, journal) = paths(dir.path());
        let entry = serde_json::to_string(&JournalEntry {
            seq: 1,
            change: add("Eve"),
        })
        .unwrap();
        std::fs::write(&journal, format!("{entry}\n{{\"seq\":2,\"op")).unwrap();
        let recovered = IdentityFile::open(&users, &journal).unwrap();
        assert!(recovered.dropped_torn_line);
        assert!(recovered.identities.account("eve").is_some());
        drop(recovered);

        std::fs::write(&journal, "garbage\n").unwrap();
        let err = IdentityFile::open(&users, &journal).err().unwrap();
        assert!(err.to_string().contains("users.journal"), "{err}");
        assert!(err.to_string().contains("line 1"), "{err}");
        assert_eq!(std::fs::read(&journal).unwrap(), b"garbage\n");
    }

    #[test]
    fn a_corrupt_identity_file_is_reported_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (users, journal) = paths(dir.path());
        std::fs::write(&users, b"{not json").unwrap();
        let err = IdentityFile::open(&users, &journal).err().unwrap();
        assert!(err.to_string().contains("users.json"), "{err}");
        assert_eq!(std::fs::read(&users).unwrap(), b"{not json");
    }
}
