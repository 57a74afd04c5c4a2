//! The server's log: every service event goes through the `log` facade into
//! `<state-dir>/server.log`, one line per event with a UTC timestamp and level, and
//! never to the console. `RUST_LOG` selects the level (default `info`).
//!
//! The file is opened in append mode, and each record is written with one `write`, so
//! lines from different threads never interleave and the admin's `clear-logs`
//! (a truncation) leaves no gap of zero bytes: the next line lands at the new end.
//!
//! Two things keep what clients send from taking the log over:
//! - every record is [escaped](crate::text::escape) and bounded by the formatter, so a
//!   string quoted into a line can never start a second one;
//! - lines an address can cause in bulk (refusals, connections) go through
//!   [`noise_allowed`]: the first few per minute and per address are written, the rest
//!   are counted and summed up in one line when the minute is over.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use env_logger::{Builder, Env, Target, WriteStyle};

use crate::server::store::state_files;
use crate::text;

/// Longest message a log line carries, in characters; a longer one is cut and says so.
pub const MAX_LOG_MESSAGE_CHARS: usize = 2000;

/// Lines of one [`Noise`] kind one address may cause per [`NOISE_WINDOW`] before the
/// rest are only counted.
pub const NOISE_LINES_PER_WINDOW: u32 = 10;

/// The period over which an address's noisy lines are budgeted and then summed up.
pub const NOISE_WINDOW: Duration = Duration::from_secs(60);

/// Addresses tracked at once; beyond this (an attacker rotating addresses) the others
/// share one budget, so the tracking itself stays small.
const MAX_TRACKED_ADDRESSES: usize = 10_000;

/// Sends log records to `path` (created owner-only if missing). Fails if the file
/// cannot be opened or is not a regular file.
pub fn init(path: &Path) -> io::Result<()> {
    let file = state_files::open_private_append(path)?;
    let mut builder = Builder::new();
    // The HTTP listener's start-up chatter (workers, services) says nothing our own
    // lines do not; its warnings and errors still come through. `RUST_LOG` overrides.
    builder
        .filter_level(log::LevelFilter::Info)
        .filter_module("actix_server", log::LevelFilter::Warn)
        .parse_env(Env::default());
    builder
        .target(Target::Pipe(Box::new(LogFile(file))))
        // A file never wants colour, and skipping it skips stripping it per line.
        .write_style(WriteStyle::Never)
        .format(|buf, record| {
            let message = record.args().to_string();
            writeln!(
                buf,
                "{} {:<5} {}",
                buf.timestamp_millis(),
                record.level(),
                text::excerpt(&message, MAX_LOG_MESSAGE_CHARS)
            )
        })
        .try_init()
        .map_err(io::Error::other)?;
    std::thread::Builder::new()
        .name("log-summary".into())
        .spawn(|| loop {
            std::thread::sleep(Duration::from_secs(1));
            report_suppressed(Instant::now());
        })?;
    Ok(())
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

/// Longest line [`print_log`] shows, in characters: lines written by an older version
/// (or by hand) may be of any length.
pub const MAX_PRINTED_LINE_CHARS: usize = 4096;

/// Writes the log at `path`, or its last `last` lines, to `out`, each line escaped and
/// bounded; returns how many lines. The whole log is streamed, never held in memory,
/// and `last` reads only the tail of the file.
pub fn print_log(path: &Path, last: Option<usize>, out: &mut impl Write) -> io::Result<usize> {
    if !crate::server::store::state_files::check_regular(path)? {
        return Ok(0);
    }
    let file = File::open(path)?;
    let start = match last {
        Some(0) => return Ok(0),
        Some(n) => start_of_last_lines(&file, n)?,
        None => 0,
    };
    let mut reader = io::BufReader::with_capacity(64 * 1024, &file);
    io::Seek::seek(&mut reader, io::SeekFrom::Start(start))?;
    let mut line = Vec::new();
    let mut printed = 0;
    loop {
        line.clear();
        // A line longer than what is shown is read in pieces and only its start shown.
        let n = (&mut reader)
            .take(MAX_PRINTED_LINE_CHARS as u64 * 4)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        let whole = line.last() == Some(&b'\n');
        let text = String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(&line));
        writeln!(out, "{}", text::excerpt(&text, MAX_PRINTED_LINE_CHARS))?;
        printed += 1;
        if !whole {
            // Skip the rest of an over-long line.
            let mut rest = Vec::new();
            reader.read_until(b'\n', &mut rest)?;
        }
        if last.is_some_and(|n| printed >= n) {
            break;
        }
    }
    Ok(printed)
}

/// The offset where the last `n` lines of `file` begin, found by reading backwards.
fn start_of_last_lines(file: &File, n: usize) -> io::Result<u64> {
    const CHUNK: u64 = 64 * 1024;
    let len = file.metadata()?.len();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut end = len;
    let mut newlines = 0usize;
    while end > 0 {
        let size = CHUNK.min(end);
        let begin = end - size;
        let chunk = &mut buf[..size as usize];
        file.read_exact_at(chunk, begin)?;
        for (i, byte) in chunk.iter().enumerate().rev() {
            let offset = begin + i as u64;
            // The newline ending the file closes the last line; it starts none.
            if *byte == b'\n' && offset + 1 < len {
                newlines += 1;
                if newlines == n {
                    return Ok(offset + 1);
                }
            }
        }
        end = begin;
    }
    Ok(0)
}

/// Kinds of log lines that one address can cause in bulk, each budgeted on its own so
/// that a flood of one kind does not hide the first lines of another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Noise {
    /// Connections opening, closing, timing out.
    Connection,
    /// Malformed or oversized frames, requests out of place.
    BadInput,
    /// Limits hit: message rate, connection caps, authentication rates.
    Limit,
    /// Failed authentications.
    AuthFailure,
}

impl Noise {
    fn describe(self) -> &'static str {
        match self {
            Noise::Connection => "connection",
            Noise::BadInput => "bad-input",
            Noise::Limit => "limit",
            Noise::AuthFailure => "authentication-failure",
        }
    }
}

/// One address's budget for one kind of line.
#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

/// Budgets per address and kind; plain data, see [`noise_allowed`].
#[derive(Debug, Default)]
pub struct NoiseBudget {
    windows: HashMap<(Option<IpAddr>, Noise), Window>,
}

impl NoiseBudget {
    /// Whether a line of `kind` caused by `ip` may be written now; if not, it is counted.
    pub fn allow(&mut self, ip: IpAddr, kind: Noise, now: Instant) -> bool {
        let tracked = self.windows.len() < MAX_TRACKED_ADDRESSES
            || self.windows.contains_key(&(Some(ip), kind));
        let key = (tracked.then_some(ip), kind);
        let window = self.windows.entry(key).or_insert(Window {
            started: now,
            logged: 0,
            suppressed: 0,
        });
        if window.logged < NOISE_LINES_PER_WINDOW {
            window.logged += 1;
            true
        } else {
            window.suppressed += 1;
            false
        }
    }

    /// Ends the windows older than [`NOISE_WINDOW`]; returns, for those that had lines
    /// counted instead of written, the address (`None`: the shared overflow budget), the
    /// kind and the count.
    pub fn end_windows(&mut self, now: Instant) -> Vec<(Option<IpAddr>, Noise, u64)> {
        let mut ended = Vec::new();
        self.windows.retain(|&(ip, kind), window| {
            if now.saturating_duration_since(window.started) < NOISE_WINDOW {
                return true;
            }
            if window.suppressed > 0 {
                ended.push((ip, kind, window.suppressed));
            }
            false
        });
        ended
    }
}

fn budget() -> &'static Mutex<NoiseBudget> {
    static BUDGET: OnceLock<Mutex<NoiseBudget>> = OnceLock::new();
    BUDGET.get_or_init(|| Mutex::new(NoiseBudget::default()))
}

/// Whether a line of `kind` caused by `ip` should be written: the first
/// [`NOISE_LINES_PER_WINDOW`] per minute are, the rest are counted and summed up once
/// the minute is over. Use it through [`log_noise!`](crate::log_noise).
pub fn noise_allowed(ip: IpAddr, kind: Noise) -> bool {
    match budget().lock() {
        Ok(mut budget) => budget.allow(ip, kind, Instant::now()),
        // A panic elsewhere while holding the lock: log rather than lose lines.
        Err(_) => true,
    }
}

/// Writes the summary line of every budget window that ended with lines left out.
fn report_suppressed(now: Instant) {
    let ended = match budget().lock() {
        Ok(mut budget) => budget.end_windows(now),
        Err(_) => return,
    };
    for (ip, kind, count) in ended {
        let from = ip.map_or_else(|| "other addresses".to_string(), |ip| ip.to_string());
        log::warn!(
            "{count} more {} lines from {from} were not logged in the last {}s",
            kind.describe(),
            NOISE_WINDOW.as_secs()
        );
    }
}

/// `log::log!` for a line an address can cause in bulk: written only while that
/// address's budget for this [`Noise`](crate::server::logging::Noise) kind lasts.
#[macro_export]
macro_rules! log_noise {
    ($ip:expr, $kind:expr, $level:expr, $($arg:tt)+) => {
        if log::log_enabled!($level) && $crate::server::logging::noise_allowed($ip, $kind) {
            log::log!($level, $($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_a_few_lines_then_a_count() {
        let mut budget = NoiseBudget::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let start = Instant::now();
        let allowed = (0..25)
            .filter(|_| budget.allow(ip, Noise::BadInput, start))
            .count();
        assert_eq!(allowed, NOISE_LINES_PER_WINDOW as usize);
        // Another kind and another address have budgets of their own.
        assert!(budget.allow(ip, Noise::Connection, start));
        assert!(budget.allow(other, Noise::BadInput, start));
        assert!(
            budget.end_windows(start).is_empty(),
            "the minute is not over"
        );
        let later = start + NOISE_WINDOW;
        assert_eq!(
            budget.end_windows(later),
            vec![(Some(ip), Noise::BadInput, 15)]
        );
        assert!(budget.allow(ip, Noise::BadInput, later), "a new window");
    }

    #[test]
    fn printing_reads_the_tail_and_escapes_every_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.log");
        let mut text = String::new();
        for i in 0..20_000 {
            text.push_str(&format!("line {i}\n"));
        }
        text.push_str("evil\rline\u{1b}[2J\n");
        std::fs::write(&path, &text).unwrap();
        let mut out = Vec::new();
        assert_eq!(print_log(&path, Some(3), &mut out).unwrap(), 3);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "line 19998\nline 19999\nevil\\u{000d}line\\u{001b}[2J\n"
        );
        let mut out = Vec::new();
        assert_eq!(print_log(&path, None, &mut out).unwrap(), 20_001);
        let mut out = Vec::new();
        assert_eq!(print_log(&path, Some(0), &mut out).unwrap(), 0);
        assert_eq!(print_log(&path, Some(50_000), &mut out).unwrap(), 20_001);
        let missing = dir.path().join("missing.log");
        assert_eq!(print_log(&missing, None, &mut Vec::new()).unwrap(), 0);
    }

    #[test]
    fn an_over_long_line_is_shown_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.log");
        std::fs::write(&path, format!("{}\nnext\n", "x".repeat(100_000))).unwrap();
        let mut out = Vec::new();
        assert_eq!(print_log(&path, None, &mut out).unwrap(), 2);
        let out = String::from_utf8(out).unwrap();
        assert!(out.len() < MAX_PRINTED_LINE_CHARS + 100, "{}", out.len());
        assert!(out.ends_with("\nnext\n"));
    }

    #[test]
    fn untracked_addresses_share_one_budget() {
        let mut budget = NoiseBudget::default();
        let now = Instant::now();
        for i in 0..MAX_TRACKED_ADDRESSES as u32 {
            budget.allow(IpAddr::from(i.to_be_bytes()), Noise::Connection, now);
        }
        let newcomer: IpAddr = "192.0.2.1".parse().unwrap();
        let allowed = (0..50)
            .filter(|_| budget.allow(newcomer, Noise::Connection, now))
            .count();
        assert_eq!(allowed, NOISE_LINES_PER_WINDOW as usize);
        assert!(budget.windows.len() <= MAX_TRACKED_ADDRESSES + 1);
    }
}
