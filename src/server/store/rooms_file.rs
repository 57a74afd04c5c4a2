//! `rooms.json`: the rooms and their members, written like `users.json` (atomically and
//! durably) whenever a room is created or someone joins or parts. Those are rare next to
//! chat, and each is acknowledged to the user, so each is written before the reply.

use std::path::{Path, PathBuf};

use super::identity_file::LoadError;
use super::state_files;
use crate::server::rooms::{RoomChange, Rooms};

/// Largest `rooms.json` the server reads.
pub const MAX_ROOMS_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// `rooms.json` and the mirror of what it holds.
pub struct RoomsFile {
    path: PathBuf,
    mirror: Rooms,
}

impl RoomsFile {
    /// Reads `rooms.json` (a missing file is no rooms; a corrupt one is an error naming
    /// it, and is left as it is); returns the file and the rooms.
    pub fn open(path: &Path) -> Result<(RoomsFile, Rooms), LoadError> {
        let mut rooms =
            match state_files::read_bounded(path, MAX_ROOMS_FILE_BYTES).map_err(|source| {
                LoadError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            })? {
                Some(bytes) => {
                    serde_json::from_slice::<Rooms>(&bytes).map_err(|e| LoadError::Corrupt {
                        path: path.to_path_buf(),
                        message: e.to_string(),
                    })?
                }
                None => Rooms::new(),
            };
        rooms.reindex();
        let file = RoomsFile {
            path: path.to_path_buf(),
            mirror: rooms.clone(),
        };
        Ok((file, rooms))
    }

    /// Applies `changes` and writes the file; on failure the file keeps its old
    /// content and the changes stay applied, to be written with the next ones.
    pub fn record(&mut self, changes: &[RoomChange]) -> std::io::Result<()> {
        for change in changes {
            self.mirror.apply(change);
        }
        let text = serde_json::to_vec_pretty(&self.mirror)?;
        state_files::write_atomically(&self.path, &text)
    }

    /// The file's path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_survive_a_reopen_and_a_corrupt_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rooms.json");
        let (mut file, rooms) = RoomsFile::open(&path).unwrap();
        assert!(rooms.rooms.is_empty());
        file.record(&[
            RoomChange::Create {
                name: "Ops".into(),
                created_ms: 5,
            },
            RoomChange::Join {
                room: "ops".into(),
                user: "ann".into(),
            },
        ])
        .unwrap();
        let (_, rooms) = RoomsFile::open(&path).unwrap();
        assert_eq!(rooms.rooms_of("ann"), ["ops"]);
        assert_eq!(rooms.name_of("ops"), Some("Ops"));
        std::fs::write(&path, "{broken").unwrap();
        let err = RoomsFile::open(&path).err().unwrap();
        assert!(err.to_string().contains("rooms.json"), "{err}");
    }
}
