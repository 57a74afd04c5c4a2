//! The token file: session tokens remembered per server *and account name*, so the
//! next start logs in without a password, and never as somebody else.
//!
//! The file is a JSON object readable by its owner only (a token is as good as a
//! password until it is spent or expires):
//!
//! ```json
//! {"version": 2, "servers": {"127.0.0.1:9090": {
//!     "last": "alice",
//!     "accounts": {"alice": {"token": "…", "password_check": "$pbkdf2-sha256$…"}}}}}
//! ```
//!
//! `last` is the account that logged in last, used when no `--name` is given.
//! `password_check` is a PBKDF2 hash of the password the account last logged in with:
//! with it a script's password line can be recognised, and left unsent, even when the
//! token makes the password unnecessary. The file of earlier versions,
//! `{"host:port": "token"}`, is read too: such a token belongs to no known name, is
//! used only when no `--name` is given, and is filed under its name once the server
//! says whose it is.
//!
//! Tokens rotate: every `auth_ok` carries a new one and a resumed token is spent, so
//! the file is rewritten after every login. Each change re-reads the file first and
//! touches only its own server's entry, so clients talking to different servers do not
//! undo each other. Writes go to a temporary file in the same folder that is then
//! renamed over the old one, so a crash never leaves half a file. A file that cannot
//! be read or parsed is reported and treated as empty: losing a token only costs a
//! password prompt. Every such trouble, reading or writing, is reported the same way,
//! as a warning through the store's [`Notify`], never as an error: the chat goes on.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::display::printable;
use super::Notify;
use crate::auth::{hash_password, name_key, verify_password};

/// The version written in the file's `version` field.
const FILE_VERSION: u32 = 2;

/// PBKDF2 rounds of a password check. It is compared once per run at most (against a
/// script's first line), so it can afford to be slow for an attacker holding the file.
const PASSWORD_CHECK_ROUNDS: u32 = 20_000;

/// Why the token file could not be written.
#[derive(Debug, thiserror::Error)]
enum TokenFileError {
    #[error("cannot write the token file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot encode the token file: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct TokenFile {
    version: u32,
    #[serde(default)]
    servers: BTreeMap<String, ServerEntry>,
}

/// What is remembered for one server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ServerEntry {
    /// The account that logged in last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last: Option<String>,
    /// By account name, as the server spells it.
    #[serde(default)]
    accounts: BTreeMap<String, Account>,
    /// A token from a file of the earlier format, whose name is not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unnamed: Option<String>,
}

impl ServerEntry {
    /// The key under which `name` is filed, ignoring case as the server does.
    fn key_of(&self, name: &str) -> Option<String> {
        let wanted = name_key(name);
        self.accounts
            .keys()
            .find(|k| name_key(k) == wanted)
            .cloned()
    }

    fn account(&self, name: &str) -> Option<&Account> {
        self.key_of(name).and_then(|k| self.accounts.get(&k))
    }

    fn is_empty(&self) -> bool {
        self.accounts.is_empty() && self.unnamed.is_none()
    }
}

/// One account on one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Account {
    token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password_check: Option<String>,
}

/// A saved session to resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// Whose it is; `None` for a token of the earlier file format.
    pub name: Option<String>,
    pub token: String,
}

/// One server's entries in the token file.
///
/// With no file (no data folder could be found) tokens live in memory only, which
/// still lets a session resume after the connection drops.
pub struct TokenStore {
    path: Option<PathBuf>,
    server: String,
    entry: ServerEntry,
    /// Where trouble with the file is reported.
    report: Notify,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("path", &self.path)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// The default token file: `DATA_DIR/echochat/tokens.json` (on Linux
/// `$XDG_DATA_HOME/echochat/tokens.json`, else `~/.local/share/...`).
pub fn default_path() -> Option<PathBuf> {
    dirs::data_dir().map(|dir| dir.join("echochat").join("tokens.json"))
}

impl TokenStore {
    /// The store for `server` (a [`super::args::ServerAddr::token_key`]) in the file
    /// given with `--token-file`, or else the default one. Trouble goes to `report`.
    pub fn for_server(flag: Option<PathBuf>, server: String, mut report: Notify) -> TokenStore {
        let path = flag.or_else(default_path);
        if path.is_none() {
            report(
                "no data folder found: session tokens will not be remembered (see --token-file).",
            );
        }
        TokenStore::open(path, server, report)
    }

    /// The store for `server` in `path` (in memory only when `None`). Trouble reading
    /// the file is reported at once.
    pub fn open(path: Option<PathBuf>, server: String, report: Notify) -> TokenStore {
        let (file, warning) = match &path {
            Some(path) => read_file(path),
            None => (TokenFile::default(), None),
        };
        let entry = file.servers.get(&server).cloned().unwrap_or_default();
        let mut store = TokenStore {
            path,
            server,
            entry,
            report,
        };
        if let Some(warning) = warning {
            store.trouble(&warning);
        }
        store
    }

    /// A store with no file, whose trouble goes nowhere (for tests).
    pub fn in_memory(server: &str) -> TokenStore {
        TokenStore::open(None, server.to_string(), Box::new(|_| {}))
    }

    /// Reports trouble with the file: the one place its warning is worded.
    fn trouble(&mut self, problem: &str) {
        (self.report)(&format!("warning: {}", printable(problem)));
    }

    /// The session to resume: `name`'s when a name is given, and only then; otherwise
    /// the last account's, or a token of the earlier format.
    pub fn saved(&self, name: Option<&str>) -> Option<Saved> {
        let named = |name: &str| {
            let key = self.entry.key_of(name)?;
            let account = self.entry.accounts.get(&key)?;
            Some(Saved {
                name: Some(key),
                token: account.token.clone(),
            })
        };
        match name {
            Some(name) => named(name),
            None => self.entry.last.as_deref().and_then(named).or_else(|| {
                self.entry
                    .unnamed
                    .clone()
                    .map(|token| Saved { name: None, token })
            }),
        }
    }

    /// `name`'s token, to resume with after the connection drops.
    pub fn token_for(&self, name: &str) -> Option<&str> {
        self.entry.account(name).map(|a| a.token.as_str())
    }

    /// The accounts with an entry for this server.
    pub fn known_names(&self) -> Vec<String> {
        self.entry.accounts.keys().cloned().collect()
    }

    /// The stored password check of `name`, if any (see [`is_password`]).
    pub fn password_check(&self, name: &str) -> Option<String> {
        self.entry.account(name)?.password_check.clone()
    }

    /// Remembers the token of a fresh `auth_ok` for `name`, who becomes the last
    /// account. `password`, when the login used one, replaces the password check;
    /// otherwise the check is kept. A token of the earlier format that was just
    /// resumed is dropped with `spent_unnamed`. The in-memory copy is updated even if
    /// the file cannot be written, so a reconnect can still resume.
    pub fn save(&mut self, name: &str, token: &str, password: Option<&str>, spent_unnamed: bool) {
        let check = password.and_then(|p| hash_password(p, PASSWORD_CHECK_ROUNDS).ok());
        let change = |entry: &mut ServerEntry| {
            let previous = entry.key_of(name).and_then(|k| entry.accounts.remove(&k));
            let password_check = match &check {
                Some(check) => Some(check.clone()),
                None => previous.and_then(|a| a.password_check),
            };
            entry.accounts.insert(
                name.to_string(),
                Account {
                    token: token.to_string(),
                    password_check,
                },
            );
            entry.last = Some(name.to_string());
            if spent_unnamed {
                entry.unnamed = None;
            }
        };
        change(&mut self.entry);
        self.update(change)
    }

    /// Forgets `name`'s token (after `/logout`, or when the server refused it).
    pub fn forget(&mut self, name: &str) {
        let change = |entry: &mut ServerEntry| {
            if let Some(key) = entry.key_of(name) {
                entry.accounts.remove(&key);
            }
            if entry
                .last
                .as_deref()
                .is_some_and(|l| name_key(l) == name_key(name))
            {
                entry.last = None;
            }
        };
        change(&mut self.entry);
        self.update(change)
    }

    /// Forgets the token of the earlier format (the server refused it).
    pub fn forget_unnamed(&mut self) {
        let change = |entry: &mut ServerEntry| entry.unnamed = None;
        change(&mut self.entry);
        self.update(change)
    }

    /// Re-reads the file, applies `change` to this server's entry and writes the file
    /// back atomically; trouble is reported.
    fn update(&mut self, change: impl FnOnce(&mut ServerEntry)) {
        if let Err(e) = self.write_change(change) {
            self.trouble(&e.to_string());
        }
    }

    fn write_change(&self, change: impl FnOnce(&mut ServerEntry)) -> Result<(), TokenFileError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let (mut file, _) = read_file(path);
        let before = file.clone();
        let mut entry = file.servers.remove(&self.server).unwrap_or_default();
        change(&mut entry);
        if !entry.is_empty() {
            file.servers.insert(self.server.clone(), entry);
        }
        if file == before && path.exists() {
            return Ok(());
        }
        write_file(path, &file)
    }
}

/// Whether `line` is the password whose check is `check` (a PHC string from the file).
/// Slow on purpose (PBKDF2): call it off the async threads.
pub fn is_password(check: &str, line: &str) -> bool {
    verify_password(line, check).unwrap_or(false)
}

/// Reads the token file; a missing file is empty, an unreadable or corrupt one is empty
/// with a warning. A file of the earlier format is converted.
fn read_file(path: &Path) -> (TokenFile, Option<String>) {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return (TokenFile::default(), None),
        Err(e) => {
            return (
                TokenFile::default(),
                Some(format!(
                    "cannot read the token file {}: {e}; logging in without saved tokens",
                    path.display()
                )),
            )
        }
    };
    match parse(&text) {
        Ok(file) => (file, None),
        Err(why) => (
            TokenFile::default(),
            Some(format!(
                "the token file {} is corrupt ({why}); ignoring it, it will be rewritten",
                path.display()
            )),
        ),
    }
}

/// Parses either format.
fn parse(text: &str) -> Result<TokenFile, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let Some(object) = value.as_object() else {
        return Err("not a JSON object".into());
    };
    if object.contains_key("version") {
        let file: TokenFile = serde_json::from_value(value).map_err(|e| e.to_string())?;
        return Ok(file);
    }
    // The earlier format: `{"host:port": "token"}`.
    let mut file = TokenFile {
        version: FILE_VERSION,
        servers: BTreeMap::new(),
    };
    for (server, token) in object {
        let token = token
            .as_str()
            .ok_or_else(|| format!("the entry for {server} is not a token"))?;
        file.servers.insert(
            server.clone(),
            ServerEntry {
                unnamed: Some(token.to_string()),
                ..ServerEntry::default()
            },
        );
    }
    Ok(file)
}

/// Writes the token file (see [`write_private`]).
fn write_file(path: &Path, file: &TokenFile) -> Result<(), TokenFileError> {
    let file = TokenFile {
        version: FILE_VERSION,
        servers: file.servers.clone(),
    };
    let body = serde_json::to_vec_pretty(&file)?;
    write_private(path, &body).map_err(|source| TokenFileError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `body` and a newline to a temporary owner-only file beside `path`, syncs it
/// and renames it over `path`, so a crash never leaves half a file. The folder is
/// created owner-only if missing. The known-servers file is written the same way.
pub fn write_private(path: &Path, body: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
    }
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "echochat.json".to_string());
    let temp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        // `mode` only applies to a new file; a leftover temp file must not keep wider rights.
        out.set_permissions(fs::Permissions::from_mode(0o600))?;
        out.write_all(body)?;
        out.write_all(b"\n")?;
        out.sync_all()?;
        fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests;
