//! `Persistence`: the only code that touches the state folder's files.
//!
//! It runs on its own arbiter, so a slow disk never delays chat delivery. It writes
//! `users.json` atomically and durably (temporary file, fsync, rename, fsync of the
//! folder) and answers only when the file is on disk, which is what lets `ChatServer`
//! hold back an `auth_ok` until the new account is safe. It appends chat messages to
//! `history.jsonl` through a buffer flushed every [`HISTORY_FLUSH_INTERVAL`], and
//! reads or empties `server.log` for the admin console. The loaders at the bottom run
//! once at start-up, before any actor, and refuse a corrupt file instead of replacing it.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;

use crate::identity::Identities;
use crate::protocol::ChatMessage;

/// How long appended history may sit in memory before it is written out: the most
/// chat a crash can lose.
pub const HISTORY_FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Buffered history beyond this is written at once rather than at the next tick.
const HISTORY_BUFFER_BYTES: usize = 256 * 1024;

/// Where each state file lives.
#[derive(Debug, Clone)]
pub struct StatePaths {
    pub dir: PathBuf,
    pub users: PathBuf,
    pub history: PathBuf,
    pub log: PathBuf,
}

impl StatePaths {
    /// The files of the state folder `dir`.
    pub fn new(dir: &Path) -> StatePaths {
        StatePaths {
            dir: dir.to_path_buf(),
            users: dir.join("users.json"),
            history: dir.join("history.jsonl"),
            log: dir.join("server.log"),
        }
    }
}

/// A state file that could not be read, written or understood.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PersistError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{path} is corrupt: {message}")]
    Corrupt { path: String, message: String },
}

impl PersistError {
    fn io(path: &Path, err: impl std::fmt::Display) -> PersistError {
        PersistError::Io {
            path: path.display().to_string(),
            message: err.to_string(),
        }
    }

    fn corrupt(path: &Path, message: impl Into<String>) -> PersistError {
        PersistError::Corrupt {
            path: path.display().to_string(),
            message: message.into(),
        }
    }
}

/// The actor. See the module documentation.
pub struct Persistence {
    paths: StatePaths,
    /// Append handle on `history.jsonl`, opened lazily (and again after an error).
    history: Option<BufWriter<File>>,
    /// History lines accepted but not yet handed to the file.
    pending_history: Vec<u8>,
    /// Told when history stops or starts being writable again.
    history_watcher: Option<Recipient<HistoryWritable>>,
    /// Whether the last attempt to write history failed.
    history_failing: bool,
}

impl Persistence {
    /// A persistence actor for the files in `paths`; the loaders have already run.
    pub fn new(paths: StatePaths) -> Persistence {
        Persistence {
            paths,
            history: None,
            pending_history: Vec::new(),
            history_watcher: None,
            history_failing: false,
        }
    }

    /// Writes buffered history, logging a failure and telling the watcher when the
    /// file stops or starts taking writes.
    fn flush_history_and_report(&mut self, sync: bool) -> Result<(), PersistError> {
        let result = self.flush_history(sync);
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
            if let Some(watcher) = &self.history_watcher {
                watcher.do_send(HistoryWritable(!failing));
            }
        }
        result
    }

    /// Whether the open history file is still the one at `path`. If the file was moved,
    /// deleted or replaced while the server runs, appending to the old handle would
    /// put chat where nobody looks; the caller reopens instead.
    fn history_file_is_current(&self, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Some(writer) = self.history.as_ref() else {
            return false;
        };
        match (writer.get_ref().metadata(), fs::metadata(path)) {
            (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
            _ => false,
        }
    }

    /// Writes buffered history to the file; on failure keeps it for the next try.
    fn flush_history(&mut self, sync: bool) -> Result<(), PersistError> {
        if self.pending_history.is_empty() && !sync {
            return Ok(());
        }
        let path = self.paths.history.clone();
        let result = (|| -> io::Result<()> {
            if !self.history_file_is_current(&path) {
                self.history = None;
            }
            if self.history.is_none() {
                let file = OpenOptions::new().create(true).append(true).open(&path)?;
                self.history = Some(BufWriter::new(file));
            }
            if let Some(writer) = self.history.as_mut() {
                writer.write_all(&self.pending_history)?;
                writer.flush()?;
                if sync {
                    writer.get_ref().sync_data()?;
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.pending_history.clear();
                Ok(())
            }
            Err(err) => {
                // Reopen next time. A partial write may have left a torn line; the
                // next successful write starts on a fresh line so that only that
                // one line is lost to the loader, never the file.
                self.history = None;
                if !self.pending_history.starts_with(b"\n") {
                    self.pending_history.insert(0, b'\n');
                }
                Err(PersistError::io(&path, err))
            }
        }
    }
}

impl Actor for Persistence {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(HISTORY_FLUSH_INTERVAL, |act, _| {
            let _ = act.flush_history_and_report(false);
        });
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        if let Err(err) = self.flush_history(true) {
            log::error!("history not written at stop: {err}");
        }
        Running::Stop
    }
}

/// Write this snapshot of the identity file durably; answered once it is on disk.
#[derive(Message)]
#[rtype(result = "Result<(), PersistError>")]
pub struct SaveIdentities(pub Identities);

impl Handler<SaveIdentities> for Persistence {
    type Result = Result<(), PersistError>;

    fn handle(&mut self, msg: SaveIdentities, _: &mut Self::Context) -> Self::Result {
        let text = serde_json::to_vec_pretty(&msg.0)
            .map_err(|e| PersistError::io(&self.paths.users, e))?;
        write_atomically(&self.paths.users, &text)
    }
}

/// Append one MESSAGE payload (JSON text, no newline) to `history.jsonl`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AppendHistory(pub Bytes);

impl Handler<AppendHistory> for Persistence {
    type Result = ();

    fn handle(&mut self, msg: AppendHistory, _: &mut Self::Context) {
        self.pending_history.extend_from_slice(&msg.0);
        self.pending_history.push(b'\n');
        if self.pending_history.len() >= HISTORY_BUFFER_BYTES {
            let _ = self.flush_history_and_report(false);
        }
    }
}

/// Write and fsync everything buffered (used at shutdown).
#[derive(Message)]
#[rtype(result = "Result<(), PersistError>")]
pub struct Flush;

impl Handler<Flush> for Persistence {
    type Result = Result<(), PersistError>;

    fn handle(&mut self, _: Flush, _: &mut Self::Context) -> Self::Result {
        self.flush_history_and_report(true)
    }
}

/// Whether `history.jsonl` takes writes (`false` after a failed write, `true` once a
/// retry succeeds); sent to the watcher registered with [`WatchHistory`].
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct HistoryWritable(pub bool);

/// Register the actor to tell about [`HistoryWritable`] changes.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WatchHistory(pub Recipient<HistoryWritable>);

impl Handler<WatchHistory> for Persistence {
    type Result = ();

    fn handle(&mut self, msg: WatchHistory, _: &mut Self::Context) {
        self.history_watcher = Some(msg.0);
    }
}

/// The log file's text, or its last `last` lines.
#[derive(Message)]
#[rtype(result = "Result<String, PersistError>")]
pub struct ReadLog {
    pub last: Option<usize>,
}

impl Handler<ReadLog> for Persistence {
    type Result = Result<String, PersistError>;

    fn handle(&mut self, msg: ReadLog, _: &mut Self::Context) -> Self::Result {
        let path = &self.paths.log;
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut file) => {
                file.read_to_end(&mut bytes)
                    .map_err(|e| PersistError::io(path, e))?;
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(PersistError::io(path, err)),
        }
        let text = String::from_utf8_lossy(&bytes);
        Ok(match msg.last {
            None => text.into_owned(),
            Some(n) => last_lines(&text, n),
        })
    }
}

/// Empty the log file. The logger appends (`O_APPEND`), so its next line lands at the
/// new end of the file: no gap of zero bytes, no lost later line.
#[derive(Message)]
#[rtype(result = "Result<(), PersistError>")]
pub struct ClearLog;

impl Handler<ClearLog> for Persistence {
    type Result = Result<(), PersistError>;

    fn handle(&mut self, _: ClearLog, _: &mut Self::Context) -> Self::Result {
        let path = &self.paths.log;
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .and_then(|file| file.set_len(0))
            .map_err(|e| PersistError::io(path, e))
    }
}

/// The last `n` lines of `text`, each ending in a newline.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].iter().map(|l| format!("{l}\n")).collect()
}

/// Replaces `path` with `contents` so that a crash at any moment leaves either the old
/// or the new file: write a temporary file in the same folder, fsync it, rename it over
/// `path`, fsync the folder.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), PersistError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp"));
    let result = (|| -> io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| PersistError::io(path, e))
}

/// Reads the identity file; a missing file is an empty one, an unreadable or corrupt
/// one is an error naming it (and the file is left as it is).
pub fn load_identities(path: &Path) -> Result<Identities, PersistError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Identities::new()),
        Err(err) => return Err(PersistError::io(path, err)),
    };
    serde_json::from_slice(&bytes).map_err(|e| PersistError::corrupt(path, e.to_string()))
}

/// What start-up recovers from `history.jsonl`.
#[derive(Debug, Default)]
pub struct LoadedHistory {
    /// The last messages (at most the number asked for), as MESSAGE payloads.
    pub recent: VecDeque<Bytes>,
    /// The id the next message gets.
    pub next_id: u64,
    /// Set when an incomplete last line was cut off (a crash mid-append).
    pub dropped_torn_line: bool,
}

/// Reads the chat history, keeping the last `keep` messages.
///
/// A last line without its newline is the trace of a crash mid-append: it is cut off
/// the file (so that the next append starts a fresh line) and reported. Any other line
/// that is not a message makes the file corrupt.
pub fn load_history(path: &Path, keep: usize) -> Result<LoadedHistory, PersistError> {
    let mut loaded = LoadedHistory {
        next_id: 1,
        ..LoadedHistory::default()
    };
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(loaded),
        Err(err) => return Err(PersistError::io(path, err)),
    };
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    let mut good_len: u64 = 0;
    let mut line_no = 0usize;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| PersistError::io(path, e))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if line.last() != Some(&b'\n') {
            loaded.dropped_torn_line = true;
            break;
        }
        let body = &line[..line.len() - 1];
        if body.iter().all(u8::is_ascii_whitespace) {
            good_len += n as u64;
            continue;
        }
        let message: ChatMessage = serde_json::from_slice(body).map_err(|e| {
            PersistError::corrupt(path, format!("line {line_no} is not a message: {e}"))
        })?;
        loaded.next_id = loaded.next_id.max(message.id.saturating_add(1));
        if keep > 0 {
            if loaded.recent.len() == keep {
                loaded.recent.pop_front();
            }
            loaded.recent.push_back(Bytes::copy_from_slice(body));
        }
        good_len += n as u64;
    }
    if loaded.dropped_torn_line {
        let mut file = reader.into_inner();
        file.set_len(good_len)
            .and_then(|_| file.seek(SeekFrom::End(0)).map(|_| ()))
            .and_then(|_| file.sync_all())
            .map_err(|e| PersistError::io(path, e))?;
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message_line(id: u64) -> String {
        format!(r#"{{"type":"message","id":{id},"from":"a","text":"t{id}","ts":1}}"#)
    }

    #[test]
    fn atomic_write_replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.json");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn identities_missing_is_empty_and_corrupt_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.json");
        assert_eq!(load_identities(&path).unwrap(), Identities::new());
        fs::write(&path, b"{not json").unwrap();
        let err = load_identities(&path).unwrap_err();
        assert!(err.to_string().contains("users.json"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"{not json");
    }

    #[test]
    fn history_keeps_the_last_messages_and_the_next_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let text: String = (1..=5).map(|i| message_line(i) + "\n").collect();
        fs::write(&path, text).unwrap();
        let loaded = load_history(&path, 2).unwrap();
        assert_eq!(loaded.next_id, 6);
        assert_eq!(loaded.recent.len(), 2);
        assert_eq!(loaded.recent[0], message_line(4).as_bytes());
        assert!(!loaded.dropped_torn_line);
    }

    #[test]
    fn a_torn_last_line_is_cut_off_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let good = message_line(1) + "\n";
        fs::write(&path, format!("{good}{{\"type\":\"mess")).unwrap();
        let loaded = load_history(&path, 10).unwrap();
        assert!(loaded.dropped_torn_line);
        assert_eq!(loaded.next_id, 2);
        assert_eq!(fs::read_to_string(&path).unwrap(), good);
    }

    #[test]
    fn a_bad_complete_line_makes_history_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let text = format!("{}\ngarbage\n{}\n", message_line(1), message_line(2));
        fs::write(&path, &text).unwrap();
        let err = load_history(&path, 10).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
    }

    #[test]
    fn last_lines_takes_the_tail() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(last_lines("a\nb\n", 5), "a\nb\n");
        assert_eq!(last_lines("a\n", 0), "");
    }
}
