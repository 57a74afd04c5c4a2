//! `history.jsonl` and `ids.json`: the chat's record on disk, and the ids it may use.
//!
//! History is appended through a buffer ([`HistoryFile`]); a write that fails (a full
//! disk) keeps its lines for the next try and cuts off whatever part reached the file,
//! so the file never holds a broken line before a good one. A file moved or deleted
//! while the server runs is recreated rather than written into the void.
//!
//! Ids are never given twice, even after `kill -9`: a crash may lose the last moments
//! of chat, and with them the last ids that clients were sent, so the file alone cannot
//! say which ids are spent. `ids.json` holds the highest id the server may have used;
//! it is raised durably, a block at a time, before those ids are given
//! ([`store_reserved_ids`]), and lowered back to the last id used at a clean shutdown,
//! so that a restart continues one by one.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::io::{self, BufRead, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::history_index::{Conversation, ConversationCache, Entry, HistoryIndex};
use crate::server::store::identity_file::LoadError;
use crate::server::store::state_files;

/// The largest id: JSON numbers are exact up to 2^53 − 1 in every client.
pub const MAX_MESSAGE_ID: u64 = (1 << 53) - 1;

/// Longest history line read at start-up: a 4096-character message with every
/// character escaped is about 25 KB.
pub const MAX_HISTORY_LINE_BYTES: usize = 256 * 1024;

/// Ids reserved at a time, at least. At thousands of messages a second a block lasts
/// seconds, so the reservation's fsync is rare; a crash skips at most one block.
pub const ID_BLOCK: u64 = 10_000;

/// Ids reserved at a time, at most: blocks grow while messages come fast, so that half
/// a block outlasts a slow `fsync` of `ids.json`.
pub const MAX_ID_BLOCK: u64 = 1_000_000;

/// What start-up recovers from `history.jsonl`.
#[derive(Debug, Default)]
pub struct LoadedHistory {
    /// The last messages (at most the number asked for) of each room, by room key, as
    /// MESSAGE payloads, oldest first.
    pub rooms: HashMap<String, VecDeque<Bytes>>,
    /// The last direct messages (sent and received) of each account, by name key, with
    /// their ids, oldest first.
    pub direct: HashMap<String, VecDeque<(u64, Bytes)>>,
    /// Where every message is, for paging.
    pub index: HistoryIndex,
    /// The file's length in whole lines.
    pub len: u64,
    /// The highest id in the file (0 when empty).
    pub last_id: u64,
    /// Set when an incomplete last line was cut off (a crash mid-append).
    pub dropped_torn_line: bool,
}

/// The fields of a stored message that say where it belongs (the text is skipped).
#[derive(Deserialize)]
struct LineHead<'a> {
    id: u64,
    #[serde(borrow, default)]
    room: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    to: Option<Cow<'a, str>>,
    #[serde(borrow)]
    from: Cow<'a, str>,
    #[serde(borrow)]
    #[allow(dead_code)]
    text: Cow<'a, str>,
}

/// The queue of `key` in `map`, made if missing (the key is copied only then).
fn queue_of<'a, T>(map: &'a mut HashMap<String, VecDeque<T>>, key: &str) -> &'a mut VecDeque<T> {
    if !map.contains_key(key) {
        map.insert(key.to_string(), VecDeque::new());
    }
    map.get_mut(key).expect("inserted above")
}

/// Keeps the last `keep` items.
fn keep_last<T>(queue: &mut VecDeque<T>, item: T, keep: usize) {
    if keep == 0 {
        return;
    }
    if queue.len() == keep {
        queue.pop_front();
    }
    queue.push_back(item);
}

/// Reads the chat history: the last `keep` messages of each room and of each
/// account's direct messages, and the index of every message.
///
/// A last line without its newline is the trace of a crash mid-append: it is cut off
/// the file (so that the next append starts a fresh line) and reported. Any other line
/// that is not a message, an id that does not grow or is over [`MAX_MESSAGE_ID`], makes
/// the file corrupt.
pub fn load_history(path: &Path, keep: usize) -> Result<LoadedHistory, LoadError> {
    let io_err = |e| LoadError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let corrupt = |message: String| LoadError::Corrupt {
        path: path.to_path_buf(),
        message,
    };
    let mut loaded = LoadedHistory::default();
    let Some(file) = state_files::open_private_existing(path).map_err(io_err)? else {
        return Ok(loaded);
    };
    let mut reader = io::BufReader::with_capacity(256 * 1024, &file);
    let mut line = Vec::new();
    let mut good_len: u64 = 0;
    let mut line_no = 0usize;
    let mut conversations = ConversationCache::default();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_HISTORY_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(io_err)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if line.last() != Some(&b'\n') {
            if n > MAX_HISTORY_LINE_BYTES {
                return Err(corrupt(format!(
                    "line {line_no} is longer than {MAX_HISTORY_LINE_BYTES} bytes"
                )));
            }
            loaded.dropped_torn_line = true;
            break;
        }
        let body = &line[..line.len() - 1];
        if body.iter().all(u8::is_ascii_whitespace) {
            good_len += n as u64;
            continue;
        }
        let head: LineHead = serde_json::from_slice(body)
            .map_err(|e| corrupt(format!("line {line_no} is not a message: {e}")))?;
        if head.id > MAX_MESSAGE_ID {
            return Err(corrupt(format!(
                "line {line_no}: id {} is over the largest id {MAX_MESSAGE_ID}",
                head.id
            )));
        }
        if head.id <= loaded.last_id {
            return Err(corrupt(format!(
                "line {line_no}: id {} does not follow id {}",
                head.id, loaded.last_id
            )));
        }
        loaded.last_id = head.id;
        let conversation =
            conversations.of_line(head.room.as_deref(), head.to.as_deref(), &head.from);
        loaded.index.add_to(
            &conversation,
            Entry {
                id: head.id,
                offset: good_len,
                len: body.len() as u32,
            },
        );
        let payload = Bytes::copy_from_slice(body);
        match &*conversation {
            Conversation::Room(room) => keep_last(queue_of(&mut loaded.rooms, room), payload, keep),
            Conversation::Direct(a, b) => {
                if a != b {
                    let entry = queue_of(&mut loaded.direct, b);
                    keep_last(entry, (head.id, payload.clone()), keep);
                }
                keep_last(queue_of(&mut loaded.direct, a), (head.id, payload), keep);
            }
        }
        good_len += n as u64;
    }
    if loaded.dropped_torn_line {
        file.set_len(good_len)
            .and_then(|_| file.sync_all())
            .map_err(io_err)?;
    }
    loaded.len = good_len;
    Ok(loaded)
}

/// The content of `ids.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct IdReservation {
    /// The highest id that may have been given to a message.
    reserved_through: u64,
}

/// The highest id reserved by an earlier run (0 when there is no `ids.json`).
pub fn load_reserved_ids(path: &Path) -> Result<u64, LoadError> {
    let Some(bytes) = state_files::read_bounded(path, 4096).map_err(|e| LoadError::Io {
        path: path.to_path_buf(),
        source: e,
    })?
    else {
        return Ok(0);
    };
    let corrupt = |message: String| LoadError::Corrupt {
        path: path.to_path_buf(),
        message,
    };
    let reservation: IdReservation =
        serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if reservation.reserved_through > MAX_MESSAGE_ID {
        return Err(corrupt(format!(
            "reserved id {} is over the largest id {MAX_MESSAGE_ID}",
            reservation.reserved_through
        )));
    }
    Ok(reservation.reserved_through)
}

/// Records durably that ids up to `through` may be used.
pub fn store_reserved_ids(path: &Path, through: u64) -> io::Result<()> {
    let text = serde_json::to_vec(&IdReservation {
        reserved_through: through,
    })?;
    state_files::write_atomically(path, &text)
}

/// `history.jsonl` open for appending.
pub struct HistoryFile {
    path: PathBuf,
    file: Option<File>,
    /// Bytes of the open file known to be whole lines.
    len: u64,
    /// Whether a failed write may have left bytes beyond `len`.
    torn: bool,
    /// Lines accepted and not yet written.
    pending: Vec<u8>,
}

impl HistoryFile {
    /// The history file at `path`, `len` bytes long as loaded; opened on first use.
    pub fn new(path: &Path, len: u64) -> HistoryFile {
        HistoryFile {
            path: path.to_path_buf(),
            file: None,
            len,
            torn: false,
            pending: Vec::new(),
        }
    }

    /// Queues one MESSAGE payload (JSON text, no newline); returns the offset its line
    /// will have in the file.
    pub fn append(&mut self, payload: &[u8]) -> u64 {
        let offset = self.len + self.pending.len() as u64;
        self.pending.extend_from_slice(payload);
        self.pending.push(b'\n');
        offset
    }

    /// The lines at `entries` (a page), each from the file or from what is queued,
    /// read into one buffer and cut into lines. Whether the file is still the one at
    /// the path is checked once for the page, not once per line: those two `statx`
    /// calls per line cost more than the reads themselves.
    pub fn read_lines(&mut self, entries: &[Entry]) -> io::Result<Vec<Bytes>> {
        let total: usize = entries.iter().map(|e| e.len as usize).sum();
        let mut buf = vec![0u8; total];
        // Lines at or past the file's length are still queued.
        let written = self.len;
        if entries.iter().any(|e| e.offset < written) {
            self.open()?;
        }
        let mut cuts = Vec::with_capacity(entries.len());
        let mut at = 0;
        for entry in entries {
            let len = entry.len as usize;
            let line = &mut buf[at..at + len];
            if entry.offset >= written {
                let start = (entry.offset - written) as usize;
                let queued = self.pending.get(start..start + len).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::UnexpectedEof, "not in the file")
                })?;
                line.copy_from_slice(queued);
            } else {
                let file = self
                    .file
                    .as_ref()
                    .ok_or_else(|| io::Error::other("history file not open"))?;
                file.read_exact_at(line, entry.offset)?;
            }
            cuts.push(at..at + len);
            at += len;
        }
        let buf = Bytes::from(buf);
        Ok(cuts.into_iter().map(|cut| buf.slice(cut)).collect())
    }

    /// The open file, opened (for reading and appending) if it is not.
    fn open(&mut self) -> io::Result<&mut File> {
        if !self.file_is_current() {
            self.file = None;
        }
        if self.file.is_none() {
            let file = state_files::open_private_read_append(&self.path)?;
            let len = file.metadata()?.len();
            if len != self.len {
                // The file was replaced while the server ran: lines go to its end.
                self.len = len;
            }
            self.torn = false;
            self.file = Some(file);
        }
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("history file not open"))
    }

    /// Bytes queued and not yet written.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the open file is still the one at the path. If the file was moved,
    /// deleted or replaced while the server runs, appending to the old handle would
    /// put chat where nobody looks; it is reopened instead.
    fn file_is_current(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Some(file) = self.file.as_ref() else {
            return false;
        };
        match (file.metadata(), fs::metadata(&self.path)) {
            (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
            _ => false,
        }
    }

    /// Writes queued lines (fsynced with `sync`); on failure they stay queued.
    pub fn flush(&mut self, sync: bool) -> io::Result<()> {
        if self.pending.is_empty() && !sync {
            return Ok(());
        }
        let result = (|| -> io::Result<()> {
            self.open()?;
            let file = self
                .file
                .as_mut()
                .ok_or_else(|| io::Error::other("history file not open"))?;
            if self.torn {
                file.set_len(self.len)?;
                self.torn = false;
            }
            if !self.pending.is_empty() {
                self.torn = true;
                file.write_all(&self.pending)?;
                self.torn = false;
                self.len += self.pending.len() as u64;
                self.pending.clear();
            }
            if sync {
                file.sync_data()?;
            }
            Ok(())
        })();
        if result.is_err() {
            self.torn = true;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message_line(id: u64) -> String {
        format!(r#"{{"type":"message","id":{id},"from":"a","text":"t{id}","ts":1}}"#)
    }

    #[test]
    fn keeps_the_last_messages_and_the_last_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let text: String = (1..=5).map(|i| message_line(i) + "\n").collect();
        fs::write(&path, text).unwrap();
        let loaded = load_history(&path, 2).unwrap();
        assert_eq!(loaded.last_id, 5);
        let lobby = &loaded.rooms["lobby"];
        assert_eq!(lobby.len(), 2);
        assert_eq!(lobby[0], message_line(4).as_bytes());
        assert!(!loaded.dropped_torn_line);
        assert_eq!(loaded.index.len(), 5);
    }

    #[test]
    fn rooms_and_direct_messages_are_kept_apart_and_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let lines = [
            r#"{"type":"message","id":1,"from":"ann","text":"old lobby","ts":1}"#,
            r#"{"type":"message","id":2,"room":"Ops","from":"ann","text":"in ops","ts":1}"#,
            r#"{"type":"message","id":3,"to":"Bob","from":"Ann","text":"psst","ts":1}"#,
            r#"{"type":"message","id":4,"room":"lobby","from":"bob","text":"new lobby","ts":1}"#,
        ];
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        fs::write(&path, &text).unwrap();
        let mut loaded = load_history(&path, 10).unwrap();
        assert_eq!(loaded.rooms["lobby"].len(), 2);
        assert_eq!(loaded.rooms["ops"].len(), 1);
        assert_eq!(loaded.direct["ann"].len(), 1);
        assert_eq!(loaded.direct["bob"][0].0, 3);
        let page = loaded
            .index
            .page(&Conversation::direct("bob", "ann"), None, 0, 10);
        assert_eq!(page.len(), 1);
        let mut file = HistoryFile::new(&path, loaded.len);
        let read = file.read_lines(page).unwrap();
        assert_eq!(read, [lines[2].as_bytes()]);
        // What is queued and not yet written reads too, in the same page.
        let offset = file.append(lines[0].as_bytes());
        assert_eq!(offset, text.len() as u64);
        loaded.index.add(
            Conversation::Room("lobby".into()),
            Entry {
                id: 5,
                offset,
                len: lines[0].len() as u32,
            },
        );
        let lobby = loaded
            .index
            .page(&Conversation::Room("lobby".into()), None, 0, 10);
        let read = file.read_lines(lobby).unwrap();
        assert_eq!(read, [lines[0], lines[3], lines[0]].map(str::as_bytes));
        // And once written, from the file.
        file.flush(false).unwrap();
        assert_eq!(file.read_lines(lobby).unwrap(), read);
    }

    #[test]
    fn a_torn_last_line_is_cut_off_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let good = message_line(1) + "\n";
        fs::write(&path, format!("{good}{{\"type\":\"mess")).unwrap();
        let loaded = load_history(&path, 10).unwrap();
        assert!(loaded.dropped_torn_line);
        assert_eq!(loaded.last_id, 1);
        assert_eq!(fs::read_to_string(&path).unwrap(), good);
    }

    #[test]
    fn bad_lines_and_bad_ids_make_history_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        for (text, expect) in [
            (
                format!("{}\ngarbage\n{}\n", message_line(1), message_line(2)),
                "line 2",
            ),
            (
                format!("{}\n{}\n", message_line(2), message_line(2)),
                "does not follow",
            ),
            (
                format!("{}\n{}\n", message_line(5), message_line(3)),
                "does not follow",
            ),
            (format!("{}\n", message_line(u64::MAX)), "largest id"),
            (
                format!("{}\n", message_line(MAX_MESSAGE_ID + 1)),
                "largest id",
            ),
        ] {
            fs::write(&path, &text).unwrap();
            let err = load_history(&path, 10).unwrap_err();
            assert!(err.to_string().contains(expect), "{err}");
            assert_eq!(fs::read_to_string(&path).unwrap(), text, "left as it was");
        }
        fs::write(&path, format!("{}\n", message_line(MAX_MESSAGE_ID))).unwrap();
        assert_eq!(load_history(&path, 1).unwrap().last_id, MAX_MESSAGE_ID);
    }

    #[test]
    fn reservations_round_trip_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids.json");
        assert_eq!(load_reserved_ids(&path).unwrap(), 0);
        store_reserved_ids(&path, 20_000).unwrap();
        assert_eq!(load_reserved_ids(&path).unwrap(), 20_000);
        fs::write(&path, format!("{{\"reserved_through\":{}}}", u64::MAX)).unwrap();
        assert!(load_reserved_ids(&path).is_err());
        fs::write(&path, "nonsense").unwrap();
        assert!(load_reserved_ids(&path)
            .unwrap_err()
            .to_string()
            .contains("ids.json"));
    }

    #[test]
    fn appends_survive_a_replaced_file_and_a_failed_write_leaves_no_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let mut history = HistoryFile::new(&path, 0);
        history.append(message_line(1).as_bytes());
        history.flush(false).unwrap();
        fs::remove_file(&path).unwrap();
        history.append(message_line(2).as_bytes());
        history.flush(true).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), message_line(2) + "\n");

        // A failed write: simulate bytes that landed before the failure.
        fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"type\":\"mes")
            .unwrap();
        history.torn = true;
        history.append(message_line(3).as_bytes());
        history.flush(false).unwrap();
        let loaded = load_history(&path, 10).unwrap();
        assert_eq!(loaded.last_id, 3);
        assert!(!loaded.dropped_torn_line);
    }
}
