//! How the server touches the files of its state folder, whoever writes them.
//!
//! The folder holds password hashes and private chat, so it is created owner-only
//! (0700) and every file in it owner-only (0600), also when an older version left it
//! readable. A state file must be a regular file: a FIFO would hang start-up and a
//! link to `/dev/zero` would eat memory, so both are refused with a clear reason, and
//! reads are bounded. Replacing a file is atomic and durable ([`write_atomically`]).
//! The folder is locked for the life of the process ([`lock_folder`]), so two servers
//! never write the same files.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Mode of every file the server creates in its state folder.
pub const FILE_MODE: u32 = 0o600;

/// Mode of a state folder the server creates.
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` (and missing parents) owner-only; an existing folder is left as it is.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Whether `path` exists; an error if it exists but is not a regular file.
pub fn check_regular(path: &Path) -> io::Result<bool> {
    match fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(true),
        Ok(meta) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a regular file ({})", describe_type(&meta)),
        )),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err),
    }
}

fn describe_type(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let kind = meta.file_type();
    if kind.is_dir() {
        "a folder"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// Makes an existing file owner-only if it is not already.
pub fn make_private(file: &File) -> io::Result<()> {
    let mode = file.metadata()?.permissions().mode() & 0o777;
    if mode != FILE_MODE {
        file.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
    }
    Ok(())
}

/// Opens `path` for appending, creating it owner-only; an existing file is made
/// owner-only. Refuses anything but a regular file.
pub fn open_private_append(path: &Path) -> io::Result<File> {
    open_appending(path, false)
}

/// [`open_private_append`], and readable too (a journal is replayed, then appended to).
pub fn open_private_read_append(path: &Path) -> io::Result<File> {
    open_appending(path, true)
}

fn open_appending(path: &Path, read: bool) -> io::Result<File> {
    check_regular(path)?;
    let file = OpenOptions::new()
        .read(read)
        .create(true)
        .append(true)
        // Never block on a FIFO that appeared after the check.
        .custom_flags(libc::O_NONBLOCK)
        .mode(FILE_MODE)
        .open(path)?;
    make_private(&file)?;
    Ok(file)
}

/// Opens an existing state file for reading and writing (owner-only from now on);
/// `None` if it does not exist. Refuses anything but a regular file.
pub fn open_private_existing(path: &Path) -> io::Result<Option<File>> {
    if !check_regular(path)? {
        return Ok(None);
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    make_private(&file)?;
    Ok(Some(file))
}

/// Reads a whole state file of at most `max_bytes`; `None` if it does not exist.
pub fn read_bounded(path: &Path, max_bytes: u64) -> io::Result<Option<Vec<u8>>> {
    let Some(file) = open_private_existing(path)? else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    file.take(max_bytes + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than the {max_bytes} bytes a state file may have"),
        ));
    }
    Ok(Some(bytes))
}

/// Replaces `path` with `contents` so that a crash at any moment leaves either the old
/// or the new file: write an owner-only temporary file in the same folder, fsync it,
/// rename it over `path`, fsync the folder.
pub fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp"));
    let result = (|| -> io::Result<()> {
        // A temporary file left by a crash is truncated, never appended to.
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        if file.metadata()?.is_file() {
            make_private(&file)?;
        }
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        sync_folder(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Makes a rename or a new file in `dir` durable.
pub fn sync_folder(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// An exclusive lock on a state folder, held until it is dropped (or the process ends,
/// even by `kill -9`: the kernel releases it).
#[derive(Debug)]
pub struct FolderLock {
    /// The open folder the lock is on; closing it releases the lock.
    _folder: File,
}

/// Locks `dir` for this process, or says that another process holds it.
pub fn lock_folder(dir: &Path) -> io::Result<FolderLock> {
    let folder = File::open(dir)?;
    // SAFETY: flock on a descriptor we own; it touches no memory.
    let locked = unsafe { libc::flock(folder.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked == 0 {
        return Ok(FolderLock { _folder: folder });
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "in use by another running echochat-server",
        ));
    }
    Err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_and_folders_are_created_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/b");
        create_private_dir(&state).unwrap();
        assert_eq!(mode_of(&state), DIR_MODE);
        let log = state.join("server.log");
        open_private_append(&log).unwrap();
        assert_eq!(mode_of(&log), FILE_MODE);
        let users = state.join("users.json");
        write_atomically(&users, b"{}").unwrap();
        assert_eq!(mode_of(&users), FILE_MODE);
        assert_eq!(fs::read(&users).unwrap(), b"{}");
    }

    #[test]
    fn a_readable_file_is_made_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.json");
        fs::write(&path, b"{}").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(read_bounded(&path, 10).unwrap().unwrap(), b"{}");
        assert_eq!(mode_of(&path), FILE_MODE);
    }

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_bounded(&dir.path().join("missing"), 10)
            .unwrap()
            .is_none());
        let err = read_bounded(dir.path(), 10).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let fifo = dir.path().join("fifo");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let err = read_bounded(&fifo, 10).unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
        let err = read_bounded(Path::new("/dev/zero"), 10).unwrap_err();
        assert!(err.to_string().contains("device"), "{err}");
        let big = dir.path().join("big");
        fs::write(&big, vec![b'x'; 11]).unwrap();
        assert!(read_bounded(&big, 10).is_err());
        assert!(read_bounded(&big, 11).is_ok());
    }

    #[test]
    fn a_folder_is_locked_once() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_folder(dir.path()).unwrap();
        let err = lock_folder(dir.path()).unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
        drop(first);
        lock_folder(dir.path()).unwrap();
    }
}
