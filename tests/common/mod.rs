//! Shared harness for the black-box tests: start the real `echochat-server` binary on
//! port 0 with a temporary `--state-dir`, drive its admin console through stdin, and
//! talk to it over TCP with raw frames whose payloads are checked as
//! `serde_json::Value`, so the tests assert the wire shape and not our own types.
//!
//! Every server is killed and reaped when its [`TestServer`] drops, so a failing test
//! never leaves a process behind.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// How long a frame the test expects may take to arrive. Generous: CI is a noisy
/// two-core machine.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the server may take to print its first line.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long "nothing arrives" checks wait.
pub const QUIET: Duration = Duration::from_secs(1);

/// Path of the server binary under test.
pub fn server_bin() -> &'static str {
    env!("CARGO_BIN_EXE_echochat-server")
}

/// A name no other call in this test process returns, `prefix` followed by a counter.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{n}");
    assert!(name.chars().count() <= 32, "test name too long: {name}");
    name
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// The default arguments every test server gets, unless the test gives the same flag.
fn default_args(state_dir: &Path) -> Vec<(String, Option<String>)> {
    vec![
        ("--host".into(), Some("127.0.0.1".into())),
        ("--port".into(), Some("0".into())),
        ("--pbkdf2-rounds".into(), Some("1000".into())),
        (
            "--state-dir".into(),
            Some(state_dir.to_string_lossy().into_owned()),
        ),
    ]
}

/// Builds the full command line: defaults not overridden by `args`, then `args`.
/// (clap refuses a flag given twice, so a test's flag replaces the default.)
fn command_line(state_dir: &Path, args: &[&str], omit: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for (flag, value) in default_args(state_dir) {
        let overridden = args
            .iter()
            .any(|a| *a == flag || a.starts_with(&format!("{flag}=")));
        if overridden || omit.contains(&flag.as_str()) {
            continue;
        }
        out.push(flag);
        out.extend(value);
    }
    out.extend(args.iter().map(|a| a.to_string()));
    out
}

/// A command for the server binary with no `ECHOCHAT_*` variable inherited.
fn server_command(argv: &[String]) -> Command {
    let mut cmd = Command::new(server_bin());
    cmd.args(argv);
    without_echochat_env(&mut cmd);
    cmd
}

/// Removes every `ECHOCHAT_*` variable of the test run from a child's environment, so
/// that only the flags a test passes configure it.
pub fn without_echochat_env(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ECHOCHAT_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Collects everything a child writes on a pipe into a shared buffer.
pub fn collect_pipe(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&buf);
    thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => sink.lock().unwrap().extend_from_slice(&chunk[..n]),
            }
        }
    });
    buf
}

/// Options for [`TestServer::launch`], for the few tests that need more control than
/// [`TestServer::start_with`].
#[derive(Default)]
pub struct Launch<'a> {
    /// State folder to use; a fresh temporary one when `None`.
    pub state_dir: Option<&'a Path>,
    /// Extra arguments; a flag given here replaces its default.
    pub args: &'a [&'a str],
    /// Default flags to leave out entirely (e.g. `--port`).
    pub omit: &'a [&'a str],
    /// Environment variables to set for the server.
    pub env: &'a [(&'a str, &'a str)],
    /// Open-file limit (soft and hard) to start the server with.
    pub open_files: Option<u64>,
}

/// A running `echochat-server` process.
pub struct TestServer {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout_lines: Receiver<String>,
    stderr: Arc<Mutex<Vec<u8>>>,
    addr: SocketAddr,
    first_line: String,
    state_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    sync_counter: usize,
}

impl TestServer {
    /// A server with the test defaults and a fresh temporary state folder.
    pub fn start() -> TestServer {
        TestServer::start_with(&[])
    }

    /// A server with the test defaults plus `args`, and a fresh temporary state folder.
    pub fn start_with(args: &[&str]) -> TestServer {
        TestServer::launch(Launch {
            args,
            ..Launch::default()
        })
    }

    /// A server on an existing state folder (to restart on the same state).
    pub fn start_in(state_dir: &Path, args: &[&str]) -> TestServer {
        TestServer::launch(Launch {
            state_dir: Some(state_dir),
            args,
            ..Launch::default()
        })
    }

    /// Spawns the server and waits for its first stdout line, `listening on IP:PORT`.
    pub fn launch(opts: Launch<'_>) -> TestServer {
        let (temp, state_dir) = match opts.state_dir {
            Some(dir) => (None, dir.to_path_buf()),
            None => {
                let temp = tempfile::tempdir().expect("create temp state dir");
                let dir = temp.path().to_path_buf();
                (Some(temp), dir)
            }
        };
        let argv = command_line(&state_dir, opts.args, opts.omit);
        let mut cmd = server_command(&argv);
        for (k, v) in opts.env {
            cmd.env(k, v);
        }
        if let Some(limit) = opts.open_files {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and touches only our struct.
            unsafe {
                cmd.pre_exec(move || {
                    let rlimit = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", server_bin()));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout piped");
        let stderr = collect_pipe(child.stderr.take().expect("stderr piped"));
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = TestServer {
            child,
            stdin,
            stdout_lines: rx,
            stderr,
            addr: "127.0.0.1:0".parse().unwrap(),
            first_line: String::new(),
            state_dir,
            _temp: temp,
            sync_counter: 0,
        };
        let Some(line) = server.read_stdout_line(START_TIMEOUT) else {
            let status = server.wait_exit(Duration::from_secs(2));
            panic!(
                "server printed no first line (argv {argv:?}, exit {status:?}); stderr:\n{}",
                server.stderr_text()
            );
        };
        // `listening on IP:PORT`, or with `--tls-only` the TLS line
        // `listening on IP:PORT tls sha256:HEX`.
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|rest| {
                let (address, suffix) = rest.split_once(' ').unwrap_or((rest, ""));
                let well_formed = suffix.is_empty() || suffix.starts_with("tls sha256:");
                address.parse::<SocketAddr>().ok().filter(|_| well_formed)
            })
            .unwrap_or_else(|| panic!("first stdout line is not `listening on IP:PORT`: {line:?}"));
        server.addr = addr;
        server.first_line = line;
        server
    }

    /// The address the server said it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The exact first line the server wrote on stdout.
    pub fn first_line(&self) -> &str {
        &self.first_line
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// `<state-dir>/server.log`.
    pub fn log_path(&self) -> PathBuf {
        self.state_dir.join("server.log")
    }

    /// The log file's content (empty if it does not exist yet).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Waits until the log contains a line for which `pred` holds; returns that line.
    pub fn wait_log_line(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.log_text().lines().find(|l| pred(l)) {
                return line.to_string();
            }
            if Instant::now() >= deadline {
                panic!(
                    "no matching line in {} within {timeout:?}; log:\n{}",
                    self.log_path().display(),
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal (e.g. `libc::SIGTERM`) to the server.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with the pid of our own, not yet reaped, child.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid());
    }

    /// Writes one admin command (a newline is added) to the server's stdin.
    pub fn admin(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| stdin.flush())
            .unwrap_or_else(|e| panic!("write admin command {line:?}: {e}"));
    }

    /// Closes the server's stdin (end of input on the console).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next stdout line, or `None` after `timeout` (or at end of stdout).
    pub fn read_stdout_line(&mut self, timeout: Duration) -> Option<String> {
        match self.stdout_lines.recv_timeout(timeout) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Reads stdout lines until one satisfies `pred`; returns it. Panics after
    /// `RECV_TIMEOUT`, listing what was read.
    pub fn expect_stdout(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + RECV_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_stdout_line(left) {
                Some(line) if pred(&line) => return line,
                Some(line) => seen.push(line),
                None => panic!("no stdout line {what} within {RECV_TIMEOUT:?}; read: {seen:?}"),
            }
        }
    }

    /// Runs an admin command and returns every stdout line it printed.
    ///
    /// The end of the output is found by sending a junk command right after and
    /// reading up to its `unknown command: ...` answer (the console answers commands
    /// in order).
    pub fn admin_output(&mut self, line: &str) -> Vec<String> {
        self.sync_counter += 1;
        let marker = format!("zz-sync-{}", self.sync_counter);
        let answer = format!("unknown command: {marker} (try 'help')");
        self.admin(line);
        self.admin(&marker);
        let deadline = Instant::now() + RECV_TIMEOUT;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_stdout_line(left) {
                Some(l) if l.trim() == answer => return out,
                Some(l) => out.push(l),
                None => panic!(
                    "admin command {line:?}: no `{answer}` within {RECV_TIMEOUT:?}; read: {out:?}"
                ),
            }
        }
    }

    /// Everything the server wrote on stderr so far.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Connects a client (does not read the welcome).
    pub fn connect(&self) -> TestClient {
        TestClient::connect(self.addr)
    }

    /// Connects a client from another loopback address, e.g. `127.0.0.7` (does not
    /// read the welcome).
    pub fn connect_from(&self, from: std::net::IpAddr) -> TestClient {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(self.addr),
            socket2::Type::STREAM,
            None,
        )
        .expect("socket");
        socket
            .bind(&SocketAddr::new(from, 0).into())
            .unwrap_or_else(|e| panic!("bind {from}: {e}"));
        socket
            .connect(&self.addr.into())
            .unwrap_or_else(|e| panic!("connect from {from}: {e}"));
        TestClient::from_stream(socket.into())
    }

    /// The server's peak resident memory so far, in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }

    /// Connects a client and reads its `welcome`.
    pub fn connect_greeted(&self) -> TestClient {
        let mut c = self.connect();
        c.welcome();
        c
    }

    /// SIGKILL, then reap.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Graceful shutdown through the console; asserts exit code 0 and returns.
    pub fn stop(&mut self) {
        self.admin("shutdown");
        let status = self
            .wait_exit(Duration::from_secs(20))
            .expect("server did not exit within 20 s of `shutdown`");
        assert!(status.success(), "shutdown exit status {status:?}");
    }

    /// Waits up to `timeout` for the server to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => return None,
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "--- server stderr ---\n{}\n--- server.log ---\n{}",
                self.stderr_text(),
                self.log_text()
            );
        }
    }
}

/// How a server run that was expected to stop by itself ended.
pub struct ServerExit {
    /// `None` when it was still running at the deadline (it was then killed).
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the server (test defaults plus `args`) on `state_dir` and waits for it to
/// exit, e.g. because start-up must fail. Kills it after `timeout`.
pub fn run_to_exit(state_dir: &Path, args: &[&str], timeout: Duration) -> ServerExit {
    let argv = command_line(state_dir, args, &[]);
    let mut child = server_command(&argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", server_bin()));
    let _stdin = child.stdin.take();
    let stdout = collect_pipe(child.stdout.take().expect("stdout piped"));
    let stderr = collect_pipe(child.stderr.take().expect("stderr piped"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    // Let the pipe threads see end of file.
    thread::sleep(Duration::from_millis(100));
    let text = |b: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&b.lock().unwrap()).into_owned();
    ServerExit {
        status,
        stdout: text(&stdout),
        stderr: text(&stderr),
    }
}

/// What happened while waiting for the next frame.
#[derive(Debug)]
pub enum Event {
    Frame(Value),
    Closed,
    Timeout,
}

/// A raw protocol client over a blocking `TcpStream`.
///
/// Reads are buffered so that a timeout in the middle of a frame loses nothing. Frames
/// set aside by helpers that wait for one particular frame (e.g. [`TestClient::say`])
/// are returned first by the next [`TestClient::recv`].
pub struct TestClient {
    stream: TcpStream,
    buf: Vec<u8>,
    pending: VecDeque<Value>,
    closed: bool,
    /// The name this client authenticated as, once it did.
    pub name: Option<String>,
}

/// Builds a frame (4-byte big-endian length + payload).
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

impl TestClient {
    pub fn connect(addr: SocketAddr) -> TestClient {
        let stream = TcpStream::connect_timeout(&addr, RECV_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        TestClient::from_stream(stream)
    }

    /// Wraps a stream connected some other way (e.g. from another local address).
    pub fn from_stream(stream: TcpStream) -> TestClient {
        stream.set_nodelay(true).ok();
        TestClient {
            stream,
            buf: Vec::new(),
            pending: VecDeque::new(),
            closed: false,
            name: None,
        }
    }

    /// Connects, or `None` when the server does not accept.
    pub fn try_connect(addr: SocketAddr) -> Option<TestClient> {
        let stream = TcpStream::connect_timeout(&addr, RECV_TIMEOUT).ok()?;
        Some(TestClient::from_stream(stream))
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Sends one JSON message as a frame.
    pub fn send(&mut self, msg: &Value) {
        let payload = serde_json::to_vec(msg).unwrap();
        self.send_raw(&frame(&payload));
    }

    /// Sends one frame around an arbitrary payload.
    pub fn send_payload(&mut self, payload: &[u8]) {
        self.send_raw(&frame(payload));
    }

    /// Writes bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .and_then(|_| self.stream.flush())
            .unwrap_or_else(|e| panic!("write to server: {e}"));
    }

    /// Like [`send_raw`](Self::send_raw) but reports failure (the server may have
    /// closed the connection).
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Takes one complete frame out of the read buffer, if there is one.
    fn take_buffered_frame(&mut self) -> Option<Value> {
        if self.buf.len() < 4 {
            return None;
        }
        let len = u32::from_be_bytes(self.buf[..4].try_into().unwrap()) as usize;
        if self.buf.len() < 4 + len {
            return None;
        }
        let payload: Vec<u8> = self.buf.drain(..4 + len).skip(4).collect();
        let value = serde_json::from_slice(&payload).unwrap_or_else(|e| {
            panic!(
                "server sent a payload that is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&payload)
            )
        });
        Some(value)
    }

    /// Waits up to `timeout` for the next frame or the end of the connection.
    pub fn next_event(&mut self, timeout: Duration) -> Event {
        if let Some(v) = self.pending.pop_front() {
            return Event::Frame(v);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.take_buffered_frame() {
                return Event::Frame(v);
            }
            if self.closed {
                // A partial frame left at the close (a connection cut while its
                // output was queued) is dropped.
                return Event::Closed;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Event::Timeout;
            }
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => self.closed = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.closed = true, // reset: the server is gone
            }
        }
    }

    /// The next frame; panics if none arrives within [`RECV_TIMEOUT`] or the
    /// connection closes.
    pub fn recv(&mut self) -> Value {
        match self.next_event(RECV_TIMEOUT) {
            Event::Frame(v) => v,
            Event::Closed => panic!("connection closed while waiting for a frame"),
            Event::Timeout => panic!("no frame within {RECV_TIMEOUT:?}"),
        }
    }

    /// The next frame, which must have the given `type`.
    pub fn recv_type(&mut self, ty: &str) -> Value {
        let v = self.recv();
        assert_eq!(v["type"], ty, "expected a `{ty}` frame, got {v}");
        v
    }

    /// The next frame within `timeout`, or `None`. Panics if the connection closes.
    pub fn try_recv(&mut self, timeout: Duration) -> Option<Value> {
        match self.next_event(timeout) {
            Event::Frame(v) => Some(v),
            Event::Closed => panic!("connection closed while waiting for a frame"),
            Event::Timeout => None,
        }
    }

    /// Asserts that nothing arrives (and the connection stays open) for `timeout`.
    pub fn expect_silence(&mut self, timeout: Duration) {
        match self.next_event(timeout) {
            Event::Timeout => {}
            other => panic!("expected nothing for {timeout:?}, got {other:?}"),
        }
    }

    /// Reads frames, keeping those that do not match aside for later `recv`s, until
    /// one satisfies `pred`; returns it.
    pub fn recv_matching(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + RECV_TIMEOUT;
        let mut skipped = VecDeque::new();
        // Look at what was already set aside first.
        while let Some(v) = self.pending.pop_front() {
            if pred(&v) {
                skipped.append(&mut self.pending);
                self.pending = skipped;
                return v;
            }
            skipped.push_back(v);
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left) {
                Event::Frame(v) if pred(&v) => {
                    self.pending = skipped;
                    return v;
                }
                Event::Frame(v) => skipped.push_back(v),
                Event::Closed => {
                    panic!("connection closed while waiting for {what}; got {skipped:?}")
                }
                Event::Timeout => panic!("no {what} within {RECV_TIMEOUT:?}; got {skipped:?}"),
            }
        }
    }

    /// Waits for the server to close the connection; returns the frames that came
    /// before the close. Panics if it is still open after `timeout`.
    pub fn expect_closed(&mut self, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left) {
                Event::Frame(v) => frames.push(v),
                Event::Closed => return frames,
                Event::Timeout => {
                    panic!("connection still open after {timeout:?}; frames: {frames:?}")
                }
            }
        }
    }

    /// Half-closes our side (the server sees end of input).
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Reads the `welcome` and checks its shape; returns it.
    pub fn welcome(&mut self) -> Value {
        let w = self.recv_type("welcome");
        assert_eq!(w["server"], "echochat", "welcome: {w}");
        assert!(w["version"].is_string(), "welcome.version: {w}");
        assert!(
            w["known_name"].is_null() || w["known_name"].is_string(),
            "welcome.known_name: {w}"
        );
        w
    }

    /// Reads `auth_ok` and the `history` after it; checks their shape.
    pub fn expect_auth_ok(&mut self, name: &str, new_user: bool) -> AuthOk {
        let ok = self.recv();
        assert_eq!(
            ok["type"], "auth_ok",
            "expected auth_ok for {name}, got {ok}"
        );
        assert_eq!(ok["name"], name, "auth_ok: {ok}");
        assert_eq!(ok["new_user"], new_user, "auth_ok.new_user: {ok}");
        let token = ok["token"]
            .as_str()
            .unwrap_or_else(|| panic!("auth_ok.token not a string: {ok}"))
            .to_string();
        assert!(!token.is_empty(), "empty token: {ok}");
        let history = self.recv_type("history");
        let messages = history["messages"]
            .as_array()
            .unwrap_or_else(|| panic!("history.messages not an array: {history}"))
            .clone();
        self.name = Some(name.to_string());
        AuthOk { token, messages }
    }

    /// Reads an `auth_error` and returns its code.
    pub fn expect_auth_error(&mut self) -> String {
        let e = self.recv();
        assert_eq!(e["type"], "auth_error", "expected auth_error, got {e}");
        assert!(e["message"].is_string(), "auth_error.message: {e}");
        e["code"]
            .as_str()
            .expect("auth_error.code string")
            .to_string()
    }

    /// Reads an `error` frame and returns its code.
    pub fn expect_error(&mut self) -> String {
        let e = self.recv();
        assert_eq!(e["type"], "error", "expected error, got {e}");
        assert!(e["message"].is_string(), "error.message: {e}");
        e["code"].as_str().expect("error.code string").to_string()
    }

    /// Registers (welcome already read); returns the token.
    pub fn register(&mut self, name: &str, password: &str) -> String {
        self.register_full(name, password).token
    }

    pub fn register_full(&mut self, name: &str, password: &str) -> AuthOk {
        self.send(&json!({"type":"register","name":name,"password":password}));
        self.expect_auth_ok(name, true)
    }

    /// Logs in (welcome already read); returns the token.
    pub fn login(&mut self, name: &str, password: &str) -> String {
        self.login_full(name, password).token
    }

    pub fn login_full(&mut self, name: &str, password: &str) -> AuthOk {
        self.send(&json!({"type":"login","name":name,"password":password}));
        self.expect_auth_ok(name, false)
    }

    /// Resumes with a token as `name` (welcome already read); returns the new token.
    pub fn resume(&mut self, name: &str, token: &str) -> String {
        self.resume_full(name, token).token
    }

    pub fn resume_full(&mut self, name: &str, token: &str) -> AuthOk {
        self.send(&json!({"type":"resume","token":token}));
        self.expect_auth_ok(name, false)
    }

    /// Sends `say` and waits for our own copy (the acknowledgement), setting other
    /// frames aside for later `recv`s. Returns the MESSAGE.
    pub fn say(&mut self, text: &str) -> Value {
        let me = self.name.clone().expect("say before authentication");
        self.send(&json!({"type":"say","text":text}));
        let msg = self.recv_matching("our own message", |v| {
            (v["type"] == "message" && v["from"] == me.as_str() && v["text"] == text)
                || v["type"] == "error"
        });
        assert_eq!(msg["type"], "message", "say {text:?} refused: {msg}");
        msg
    }

    /// Sends `who` and returns the list, setting other frames aside.
    pub fn who(&mut self) -> Vec<String> {
        self.send(&json!({"type":"who"}));
        let w = self.recv_matching("who", |v| v["type"] == "who");
        w["users"]
            .as_array()
            .unwrap_or_else(|| panic!("who.users not an array: {w}"))
            .iter()
            .map(|u| u.as_str().expect("who user is a string").to_string())
            .collect()
    }

    /// Sends `ping` and waits for the `pong`, which must be the next frame.
    pub fn ping(&mut self) {
        self.send(&json!({"type":"ping"}));
        self.recv_type("pong");
    }
}

/// What a successful authentication returned.
#[derive(Debug, Clone)]
pub struct AuthOk {
    pub token: String,
    /// The `history` frame's messages.
    pub messages: Vec<Value>,
}

/// A greeted and registered client; returns it with its token.
pub fn registered(server: &TestServer, name: &str, password: &str) -> (TestClient, String) {
    let mut c = server.connect_greeted();
    let token = c.register(name, password);
    (c, token)
}
