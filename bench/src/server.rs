//! The server under test: either one this process starts and owns, or one already
//! running at `--target`.
//!
//! A started server gets a fresh state folder, port 0 on loopback and every limit off,
//! and is stopped when the [`ServerProcess`] is dropped, which also happens on an error
//! or a panic. Its stdin stays open (it is the admin console; end of input would only
//! close the console) and is how it is asked to shut down.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::{BenchError, Result};

/// How long a server may take to print its `listening on` line.
const STARTUP_LIMIT: Duration = Duration::from_secs(60);
/// How long a graceful `shutdown` may take before the server is killed.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(2);

/// Which kind of server a launch starts: it decides the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// `echochat-server`: fresh state folder, port 0, limits off.
    Echochat,
    /// The reference fan-out server (`refserver [PORT]`): no accounts, no state, no
    /// console; it answers `register` and `login` with `auth_ok` and broadcasts `say`.
    Reference,
}

/// How to start a server.
#[derive(Debug, Clone)]
pub struct ServerLaunch {
    pub kind: ServerKind,
    pub binary: PathBuf,
    /// `Some(n)` passes `--pbkdf2-rounds n`; `None` keeps the server's default.
    pub pbkdf2_rounds: Option<u32>,
    /// Extra arguments from `--server-arg`.
    pub extra_args: Vec<String>,
    /// Also listen with TLS (`--tls-port 0`, a self-signed certificate created in the
    /// state folder); echochat only.
    pub tls: bool,
}

/// A server this process started; dropping it stops the server and removes its state.
pub struct ServerProcess {
    kind: ServerKind,
    child: Child,
    stdin: Option<ChildStdin>,
    pub addr: SocketAddr,
    /// From the spawn to the server's first stdout line (`listening on ...`): its
    /// start-up, state loading included.
    pub started_in: Duration,
    /// The TLS listener and its certificate's fingerprint (`sha256:<hex>`), when the
    /// launch asked for one.
    pub tls: Option<(SocketAddr, String)>,
    state_dir: PathBuf,
}

impl ServerProcess {
    /// Starts the server on a fresh state folder and waits for its first stdout line.
    pub fn start(launch: &ServerLaunch, label: &str) -> Result<ServerProcess> {
        check_binary(launch)?;
        let state_dir = fresh_state_dir(label)?;
        ServerProcess::start_in(launch, state_dir)
    }

    /// Starts the server on `state_dir`, a folder the caller prepared (see
    /// [`fresh_state_dir`]); it is removed when the server is dropped, or at once if the
    /// server cannot be started.
    pub fn start_in(launch: &ServerLaunch, state_dir: PathBuf) -> Result<ServerProcess> {
        if let Err(e) = check_binary(launch) {
            let _ = std::fs::remove_dir_all(&state_dir);
            return Err(e);
        }
        let mut command = Command::new(&launch.binary);
        if launch.kind == ServerKind::Reference {
            command.arg("0");
        } else {
            command
                .args(["--port", "0", "--host", "127.0.0.1"])
                .args([
                    "--msg-rate",
                    "0",
                    "--max-conns",
                    "0",
                    "--max-conns-per-ip",
                    "0",
                ])
                // One address plays thousands of users: no per-address
                // authentication, registration or guess limits.
                .args([
                    "--login-rate",
                    "0",
                    "--register-rate",
                    "0",
                    "--auth-rate",
                    "0",
                ])
                .arg("--state-dir")
                .arg(&state_dir);
            if let Some(rounds) = launch.pbkdf2_rounds {
                command.args(["--pbkdf2-rounds", &rounds.to_string()]);
            }
            if launch.tls {
                command.args(["--tls-port", "0"]);
            }
            command.args(&launch.extra_args);
        }
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        die_with_parent(&mut command);
        let spawned = Instant::now();
        let mut child = command.spawn().map_err(|e| {
            let _ = std::fs::remove_dir_all(&state_dir);
            BenchError::io(format!("start {}", launch.binary.display()), e)
        })?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let mut server = ServerProcess {
            kind: launch.kind,
            child,
            stdin,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            started_in: Duration::ZERO,
            tls: None,
            state_dir,
        };
        let Some(stdout) = stdout else {
            return Err(BenchError::Server("no stdout pipe".into()));
        };
        let tls = launch.tls && launch.kind == ServerKind::Echochat;
        let lines = read_listening_lines(stdout, &mut server.child, 1 + usize::from(tls), spawned)?;
        server.started_in = lines.first_after;
        server.addr = parse_plain_line(&lines.lines[0])?;
        if let Some(line) = lines.lines.get(1) {
            server.tls = Some(parse_tls_line(line)?);
        }
        Ok(server)
    }

    /// The server's process id, for reading its memory use.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.kind == ServerKind::Reference {
            // No console and no state to save: stop it at once.
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.state_dir);
            return;
        }
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"shutdown\n");
            let _ = stdin.flush();
        }
        let deadline = Instant::now() + SHUTDOWN_LIMIT;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// The first `count` stdout lines of a server, and how long after the spawn the first
/// came.
struct ListeningLines {
    lines: Vec<String>,
    first_after: Duration,
}

/// Reads the first `count` stdout lines (`listening on ...`), then keeps draining
/// stdout on a thread so the server never blocks on a full pipe.
fn read_listening_lines(
    stdout: impl Read + Send + 'static,
    child: &mut Child,
    count: usize,
    spawned: Instant,
) -> Result<ListeningLines> {
    let (line_sent, receive) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        for _ in 0..count {
            match lines.next() {
                Some(Ok(line)) => {
                    if line_sent.send(line).is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
        drop(line_sent);
        for _ in lines.by_ref() {}
    });
    let deadline = Instant::now() + STARTUP_LIMIT;
    let mut lines = Vec::with_capacity(count);
    let mut first_after = Duration::ZERO;
    while lines.len() < count {
        match receive.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                if lines.is_empty() {
                    first_after = spawned.elapsed();
                }
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child
                    .wait()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string());
                return Err(BenchError::Server(format!(
                    "exited before listening ({status})"
                )));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(BenchError::Server(format!(
                    "no `listening on` line within {} s",
                    STARTUP_LIMIT.as_secs()
                )))
            }
        }
    }
    Ok(ListeningLines { lines, first_after })
}

/// The address of `listening on <ip>:<port>`.
fn parse_plain_line(line: &str) -> Result<SocketAddr> {
    line.trim()
        .strip_prefix("listening on ")
        .and_then(|addr| addr.parse().ok())
        .ok_or_else(|| BenchError::Server(format!("unexpected first line: {line:?}")))
}

/// The address and fingerprint of `listening on <ip>:<port> tls sha256:<hex>`.
fn parse_tls_line(line: &str) -> Result<(SocketAddr, String)> {
    let unexpected = || BenchError::Server(format!("unexpected TLS line: {line:?}"));
    let rest = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or_else(unexpected)?;
    let (addr, rest) = rest.split_once(" tls ").ok_or_else(unexpected)?;
    let addr = addr.parse().map_err(|_| unexpected())?;
    let hex = rest.strip_prefix("sha256:").ok_or_else(unexpected)?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(unexpected());
    }
    Ok((addr, rest.to_string()))
}

/// An error unless the launch's binary exists.
fn check_binary(launch: &ServerLaunch) -> Result<()> {
    if launch.binary.is_file() {
        return Ok(());
    }
    Err(BenchError::Server(format!(
        "no server binary at {} (build it with `cargo build --release --workspace`, \
         or pass --server-bin or --target)",
        launch.binary.display()
    )))
}

/// A new empty folder under the system temp dir for one server's state.
pub fn fresh_state_dir(label: &str) -> Result<PathBuf> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let dir = std::env::temp_dir().join(format!(
        "echochat-bench-{label}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)
        .map_err(|e| BenchError::io(format!("create {}", dir.display()), e))?;
    Ok(dir)
}

/// Asks the kernel to kill the server if this process dies without dropping it (a
/// SIGKILL of the benchmark must not leave a server behind).
pub fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Raises this process's open-file soft limit to its hard limit, so the benchmark (and
/// the server it starts, which inherits it) can hold tens of thousands of sockets.
/// Returns the new soft limit.
pub fn raise_fd_limit() -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(BenchError::io("getrlimit", std::io::Error::last_os_error()));
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(BenchError::io("setrlimit", std::io::Error::last_os_error()));
            }
        }
    }
    Ok(limit.rlim_cur)
}

/// Resident memory of a process in KiB, from `/proc/<pid>/status` (`VmRSS`).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&path).map_err(|e| BenchError::io(format!("read {path}"), e))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| BenchError::Server(format!("no VmRSS line in {path}")))
}

/// The server binary next to this executable (`cargo build --release --workspace` puts both
/// in `target/release`).
pub fn sibling_server_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| BenchError::io("find own executable", e))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    Ok(dir.join("echochat-server"))
}

/// CPU time (user + system) a process has used, in seconds, from `/proc/<pid>/stat`;
/// `None` for this process. `None` back when it cannot be read (a `--target` server
/// of another user, say), since CPU shares are context, not a figure.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) / ticks as f64)
}

/// Context switches of every thread of a process so far (voluntary: a thread went to
/// sleep waiting for something; involuntary: it was preempted), from
/// `/proc/<pid>/task/*/status`. Threads that already exited are not counted, so read it
/// while the process's threads are stable (the measured window of a phase).
pub fn context_switches(pid: u32) -> Option<(u64, u64)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut voluntary = 0u64;
    let mut involuntary = 0u64;
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        for line in status.lines() {
            let field = |prefix: &str| {
                line.strip_prefix(prefix)
                    .and_then(|rest| rest.trim().parse::<u64>().ok())
            };
            if let Some(n) = field("voluntary_ctxt_switches:") {
                voluntary += n;
            } else if let Some(n) = field("nonvoluntary_ctxt_switches:") {
                involuntary += n;
            }
        }
    }
    Some((voluntary, involuntary))
}

/// CPU used by the server and by the benchmark from one moment on, and the server's
/// context switches (how often its threads slept and woke).
pub struct CpuMark {
    at: Instant,
    server_pid: Option<u32>,
    server: Option<f64>,
    bench: Option<f64>,
    switches: Option<(u64, u64)>,
    machine: Option<f64>,
}

/// Busy CPU seconds of the whole machine since boot, from the first line of
/// `/proc/stat` (user, nice, system, irq, softirq, steal).
fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .map(|field| field.parse().unwrap_or(0))
        .collect();
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| fields.get(i))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| busy as f64 / ticks as f64)
}

/// What a [`CpuMark`] measured up to [`CpuMark::usage`].
#[derive(Debug, Clone, Copy)]
pub struct CpuUsage {
    /// Seconds of wall time since the mark.
    pub wall: f64,
    /// Server CPU seconds (user + system), if readable.
    pub server: Option<f64>,
    /// This process's CPU seconds, if readable.
    pub bench: Option<f64>,
    /// The server's voluntary and involuntary context switches, if readable.
    pub switches: Option<(u64, u64)>,
    /// CPU seconds the rest of the machine used (every core's busy time less the
    /// server's and this process's): other work that competed for the cores.
    pub others: Option<f64>,
}

impl CpuMark {
    /// Starts counting for the server `server_pid` (if known) and this process.
    pub fn now(server_pid: Option<u32>) -> CpuMark {
        CpuMark {
            at: Instant::now(),
            server_pid,
            server: server_pid.and_then(|pid| cpu_seconds(Some(pid))),
            bench: cpu_seconds(None),
            switches: server_pid.and_then(context_switches),
            machine: machine_busy_seconds(),
        }
    }

    /// What was used since the mark.
    pub fn usage(&self) -> CpuUsage {
        let wall = self.at.elapsed().as_secs_f64().max(1e-9);
        let server_now = self.server_pid.and_then(|pid| cpu_seconds(Some(pid)));
        let switches_now = self.server_pid.and_then(context_switches);
        let server = self.server.zip(server_now).map(|(a, b)| b - a);
        let bench = self.bench.zip(cpu_seconds(None)).map(|(a, b)| b - a);
        let machine = self.machine.zip(machine_busy_seconds()).map(|(a, b)| b - a);
        CpuUsage {
            wall,
            server,
            bench,
            others: machine.map(|m| (m - server.unwrap_or(0.0) - bench.unwrap_or(0.0)).max(0.0)),
            switches: self
                .switches
                .zip(switches_now)
                .map(|((v0, i0), (v1, i1))| (v1.saturating_sub(v0), i1.saturating_sub(i0))),
        }
    }

    /// `CPU: server 1.52 cores, bench 0.47 cores` since the mark: who was busy, so a
    /// figure limited by the load generator is recognisable as such.
    pub fn report(&self) -> String {
        self.usage().to_string()
    }
}

impl std::fmt::Display for CpuUsage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let share = |seconds: Option<f64>| match seconds {
            Some(seconds) => format!("{:.2} cores", seconds / self.wall),
            None => "unknown".to_string(),
        };
        write!(
            f,
            "CPU: server {}, bench {}, everything else {}",
            share(self.server),
            share(self.bench),
            share(self.others)
        )?;
        if let Some((voluntary, involuntary)) = self.switches {
            write!(
                f,
                "; server context switches {:.0}/s voluntary, {:.0}/s involuntary",
                voluntary as f64 / self.wall,
                involuntary as f64 / self.wall
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_plain_line, parse_tls_line};

    #[test]
    fn reads_the_listening_lines() {
        let hex = "0123456789abcdef".repeat(4);
        let (addr, fingerprint) =
            parse_tls_line(&format!("listening on 127.0.0.1:4433 tls sha256:{hex}\n"))
                .expect("a TLS line");
        assert_eq!(addr.to_string(), "127.0.0.1:4433");
        assert_eq!(fingerprint, format!("sha256:{hex}"));
        assert!(parse_tls_line("listening on 127.0.0.1:4433 tls sha256:abc").is_err());
        assert!(parse_tls_line("listening on 127.0.0.1:4433 http").is_err());
        assert_eq!(
            parse_plain_line("listening on 127.0.0.1:9000")
                .expect("a plain line")
                .port(),
            9000
        );
    }
}
