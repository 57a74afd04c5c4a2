//! The token file: session tokens remembered per server, so the next start logs in
//! without a password.
//!
//! The file is a JSON object `{"host:port": "token", ...}`, readable by its owner only
//! (a token is as good as a password until it is spent or expires). Tokens rotate: every
//! `auth_ok` carries a new one and a resumed token is spent, so the file is rewritten
//! after every login. Each change re-reads the file first and touches only its own
//! server's entry, so clients talking to different servers do not undo each other.
//! Writes go to a temporary file in the same folder that is then renamed over the old
//! one, so a crash never leaves half a file. A file that cannot be read or parsed is
//! reported and treated as empty: losing a token only costs a password prompt.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Tokens by `host:port`.
type TokenMap = BTreeMap<String, String>;

/// Why the token file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot write the token file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot encode the token file: {0}")]
    Encode(#[from] serde_json::Error),
}

/// One server's entry in the token file.
///
/// With no file (no data folder could be found) tokens live in memory only, which
/// still lets a session resume after the connection drops.
#[derive(Debug)]
pub struct TokenStore {
    path: Option<PathBuf>,
    server: String,
    token: Option<String>,
}

/// The default token file: `DATA_DIR/echochat/tokens.json` (on Linux
/// `$XDG_DATA_HOME/echochat/tokens.json`, else `~/.local/share/...`).
pub fn default_path() -> Option<PathBuf> {
    dirs::data_dir().map(|dir| dir.join("echochat").join("tokens.json"))
}

impl TokenStore {
    /// Opens the store for `server` (a [`super::args::ServerAddr::token_key`]), reading
    /// its token if the file has one. Problems reading the file are returned as a
    /// warning to show, never as an error.
    pub fn open(path: Option<PathBuf>, server: String) -> (TokenStore, Option<String>) {
        let (map, warning) = match &path {
            Some(path) => read_map(path),
            None => (TokenMap::new(), None),
        };
        let token = map.get(&server).cloned();
        (
            TokenStore {
                path,
                server,
                token,
            },
            warning,
        )
    }

    /// The token to resume with, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Remembers the token of a fresh `auth_ok`. The in-memory copy is updated even if
    /// the file cannot be written, so a reconnect can still resume.
    pub fn save(&mut self, token: &str) -> Result<(), TokenFileError> {
        self.token = Some(token.to_string());
        self.update(|map, server| {
            map.insert(server.to_string(), token.to_string());
        })
    }

    /// Forgets this server's token (after `/logout`, or when the server refused it).
    pub fn forget(&mut self) -> Result<(), TokenFileError> {
        self.token = None;
        self.update(|map, server| {
            map.remove(server);
        })
    }

    /// Re-reads the file, applies `change` to it and writes it back atomically.
    fn update(&self, change: impl FnOnce(&mut TokenMap, &str)) -> Result<(), TokenFileError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let (mut map, _) = read_map(path);
        let before = map.clone();
        change(&mut map, &self.server);
        if map == before && path.exists() {
            return Ok(());
        }
        write_map(path, &map)
    }
}

/// Reads the token map; a missing file is empty, an unreadable or corrupt one is empty
/// with a warning.
fn read_map(path: &Path) -> (TokenMap, Option<String>) {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return (TokenMap::new(), None),
        Err(e) => {
            return (
                TokenMap::new(),
                Some(format!(
                    "cannot read the token file {}: {e}; logging in without saved tokens",
                    path.display()
                )),
            )
        }
    };
    match serde_json::from_str::<TokenMap>(&text) {
        Ok(map) => (map, None),
        Err(e) => (
            TokenMap::new(),
            Some(format!(
                "the token file {} is corrupt ({e}); ignoring it, it will be rewritten",
                path.display()
            )),
        ),
    }
}

/// Writes the map to a temporary owner-only file beside `path`, syncs it and renames it
/// over `path`. The folder is created owner-only if missing.
fn write_map(path: &Path, map: &TokenMap) -> Result<(), TokenFileError> {
    let wrap = |source: io::Error| TokenFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let body = serde_json::to_vec_pretty(map)?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(wrap)?;
    }
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "tokens.json".to_string());
    let temp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        // `mode` only applies to a new file; a leftover temp file must not keep wider rights.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(&body)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map_err(wrap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(path: &Path, server: &str) -> (TokenStore, Option<String>) {
        TokenStore::open(Some(path.to_path_buf()), server.to_string())
    }

    #[test]
    fn a_saved_token_is_read_back_and_the_file_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/tokens.json");
        let (mut s, warning) = store(&path, "127.0.0.1:9090");
        assert_eq!(warning, None);
        assert_eq!(s.token(), None);
        s.save("tok1").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let folder_mode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(folder_mode & 0o077, 0, "folder is private too");
        let (again, _) = store(&path, "127.0.0.1:9090");
        assert_eq!(again.token(), Some("tok1"));
        let (other, _) = store(&path, "127.0.0.1:9091");
        assert_eq!(other.token(), None);
    }

    #[test]
    fn servers_keep_their_own_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let (mut a, _) = store(&path, "a:1");
        let (mut b, _) = store(&path, "b:2");
        a.save("ta").unwrap();
        b.save("tb").unwrap();
        a.save("ta2").unwrap();
        assert_eq!(store(&path, "a:1").0.token(), Some("ta2"));
        assert_eq!(store(&path, "b:2").0.token(), Some("tb"));
        a.forget().unwrap();
        assert_eq!(a.token(), None);
        assert_eq!(store(&path, "a:1").0.token(), None);
        assert_eq!(store(&path, "b:2").0.token(), Some("tb"));
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "no temp files left: {leftovers:?}");
    }

    #[test]
    fn a_corrupt_file_is_a_warning_and_gets_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        for junk in ["{not json", "[1,2]", "{\"a:1\": 5}", "\u{0}"] {
            fs::write(&path, junk).unwrap();
            let (mut s, warning) = store(&path, "a:1");
            assert_eq!(s.token(), None);
            assert!(warning.unwrap().contains("corrupt"));
            s.save("fresh").unwrap();
            assert_eq!(store(&path, "a:1").0.token(), Some("fresh"));
        }
    }

    #[test]
    fn an_existing_file_with_wide_rights_becomes_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        fs::write(&path, "{}").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let (mut s, _) = store(&path, "a:1");
        s.save("t").unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn an_unwritable_place_is_an_error_but_the_token_is_kept_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        fs::write(&blocker, "x").unwrap();
        let (mut s, _) = store(&blocker.join("tokens.json"), "a:1");
        assert!(s.save("t").is_err());
        assert_eq!(s.token(), Some("t"));
    }

    #[test]
    fn without_a_file_tokens_live_in_memory() {
        let (mut s, warning) = TokenStore::open(None, "a:1".into());
        assert_eq!(warning, None);
        s.save("t").unwrap();
        assert_eq!(s.token(), Some("t"));
        s.forget().unwrap();
        assert_eq!(s.token(), None);
    }
}
