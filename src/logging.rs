//! The server's log: every service event goes through the `log` facade into
//! `<state-dir>/server.log`, one line per event with a UTC timestamp and level, and
//! never to the console. `RUST_LOG` selects the level (default `info`).
//!
//! The file is opened in append mode, and each record is written with one `write`, so
//! lines from different threads never interleave and the admin's `clear-logs`
//! (a truncation) leaves no gap of zero bytes: the next line lands at the new end.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use env_logger::{Builder, Env, Target, WriteStyle};

/// Sends log records to `path` (created if missing). Fails if the file cannot be opened.
pub fn init(path: &Path) -> io::Result<()> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    Builder::from_env(Env::default().default_filter_or("info"))
        .target(Target::Pipe(Box::new(LogFile(file))))
        // A file never wants colour, and skipping it skips stripping it per line.
        .write_style(WriteStyle::Never)
        .format(|buf, record| {
            writeln!(
                buf,
                "{} {:<5} {}",
                buf.timestamp_millis(),
                record.level(),
                record.args()
            )
        })
        .try_init()
        .map_err(io::Error::other)
}

/// The log file. A failed write (a full disk) is dropped rather than reported: there is
/// nowhere left to report it, and the server must keep serving.
struct LogFile(File);

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = self.0.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
