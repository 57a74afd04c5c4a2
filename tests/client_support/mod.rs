//! Helpers for the client's black-box tests: the `echochat` binary on a
//! pseudo-terminal whose output is kept both as raw bytes and as a screen (a vt100
//! emulator, so a test sees what a person would), and a fake server that writes
//! whatever frames a test wants, hostile ones included, over TCP or TLS (with
//! certificates made for the test).
//!
//! Every process is killed when its handle drops.

#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rexpect::process::{PtyProcess, WaitStatus};
use serde_json::Value;

/// How long a test waits for something the client should show.
pub const SHOW_TIMEOUT: Duration = Duration::from_secs(30);

/// Rows and columns of the test terminal: tall, so nothing a test looks for scrolls off.
pub const ROWS: u16 = 50;
pub const COLS: u16 = 100;

pub fn client_bin() -> &'static str {
    env!("CARGO_BIN_EXE_echochat")
}

/// Removes every `ECHOCHAT_*` variable inherited from the test run.
pub fn scrub_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ECHOCHAT_") {
            cmd.env_remove(key);
        }
    }
}

/// `--host 127.0.0.1 --port PORT --token-file FILE` and `extra`.
pub fn client_args(port: u16, tokens: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string(),
        "--token-file".into(),
        tokens.to_string_lossy().into_owned(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Removes escape sequences (CSI, OSC, two-byte ESC x) and carriage returns, leaving the
/// text a person would read in order.
pub fn strip_escapes(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&c) {
                            break;
                        }
                    }
                }
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' {
                            break;
                        }
                        if c == '\u{1b}' {
                            chars.next();
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// The client on a pseudo-terminal.
pub struct Tty {
    process: PtyProcess,
    writer: File,
    raw: Arc<Mutex<Vec<u8>>>,
    screen: Arc<Mutex<vt100::Parser>>,
    /// How much of the stripped output `expect` has consumed.
    consumed: usize,
    /// The exit code, once reaped (waitpid answers only once).
    exit_code: Option<i32>,
}

impl Tty {
    /// Runs the client with `args` on a fresh pseudo-terminal of [`ROWS`]×[`COLS`],
    /// echo on as a real terminal has it, no `ECHOCHAT_*` variable but `env`.
    pub fn spawn(args: &[String], env: &[(&str, &str)]) -> Tty {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!(
                "stty rows {ROWS} cols {COLS} echo; exec \"$0\" \"$@\""
            ))
            .arg(client_bin())
            .args(args)
            .env("TERM", "xterm");
        scrub_env(&mut cmd);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut process = PtyProcess::new(cmd).expect("spawn echochat on a pty");
        process.set_kill_timeout(Some(2000));
        let mut reader = process.get_file_handle().expect("pty handle");
        let writer = process.get_file_handle().expect("pty handle");
        let raw = Arc::new(Mutex::new(Vec::new()));
        let screen = Arc::new(Mutex::new(vt100::Parser::new(nz(ROWS), nz(COLS), 1000)));
        let (raw_sink, screen_sink) = (Arc::clone(&raw), Arc::clone(&screen));
        thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            loop {
                match reader.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        raw_sink.lock().unwrap().extend_from_slice(&chunk[..n]);
                        screen_sink.lock().unwrap().process(&chunk[..n]);
                    }
                }
            }
        });
        Tty {
            process,
            writer,
            raw,
            screen,
            consumed: 0,
            exit_code: None,
        }
    }

    /// Writes bytes as they are, in one write: a burst, as a paste or tmux send-keys.
    pub fn send(&mut self, bytes: &str) {
        self.writer
            .write_all(bytes.as_bytes())
            .and_then(|_| self.writer.flush())
            .expect("write to the pty");
    }

    /// Everything the client wrote, as bytes turned to text.
    pub fn raw(&self) -> String {
        String::from_utf8_lossy(&self.raw.lock().unwrap()).into_owned()
    }

    /// Everything the client wrote, escape sequences removed.
    pub fn text(&self) -> String {
        strip_escapes(&self.raw())
    }

    /// The visible screen, one line per row, trailing blanks trimmed.
    pub fn screen(&self) -> String {
        self.screen.lock().unwrap().screen().contents()
    }

    /// Waits until the output after what earlier `expect`s consumed contains `needle`,
    /// and consumes up to its end. Returns the text before it.
    pub fn expect(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + SHOW_TIMEOUT;
        loop {
            let text = self.text();
            if let Some(at) = text.get(self.consumed..).and_then(|t| t.find(needle)) {
                let before = text[self.consumed..self.consumed + at].to_string();
                self.consumed += at + needle.len();
                return before;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no {needle:?} within {SHOW_TIMEOUT:?}; output after the last match:\n{}\n--- screen ---\n{}",
                    text.get(self.consumed..).unwrap_or(""),
                    self.screen()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the screen satisfies `pred`.
    pub fn wait_screen(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + SHOW_TIMEOUT;
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            if Instant::now() >= deadline {
                panic!("screen never showed {what}; screen:\n{screen}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Changes the terminal's size, as a person resizing the window (the client gets
    /// SIGWINCH from the kernel), and the emulated screen's with it.
    pub fn resize(&mut self, rows: u16, cols: u16) {
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads the winsize we pass.
        let rc = unsafe { libc::ioctl(self.writer.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        assert_eq!(rc, 0, "TIOCSWINSZ failed");
        self.screen.lock().unwrap().set_size(nz(rows), nz(cols));
    }

    /// The exit code (128+N for a signal) if the client has exited.
    fn poll_exit(&mut self) -> Option<i32> {
        if self.exit_code.is_none() {
            self.exit_code = match self.process.status() {
                Some(WaitStatus::Exited(_, code)) => Some(code),
                Some(WaitStatus::Signaled(_, sig, _)) => Some(128 + sig as i32),
                _ => None,
            };
        }
        self.exit_code
    }

    /// Waits for the client to exit; its exit code (128+N for a signal).
    pub fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + SHOW_TIMEOUT;
        loop {
            if let Some(code) = self.poll_exit() {
                return code;
            }
            if Instant::now() >= deadline {
                panic!(
                    "client still running after {SHOW_TIMEOUT:?}; output:\n{}\n--- screen ---\n{}",
                    self.text(),
                    self.screen()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the client is still running.
    pub fn running(&mut self) -> bool {
        self.poll_exit().is_none()
    }

    /// The pty's line settings: (canonical mode on, echo on).
    pub fn line_mode(&self) -> (bool, bool) {
        // SAFETY: tcgetattr writes only into the termios we own.
        let mut termios: libc::termios = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::tcgetattr(self.writer.as_raw_fd(), &mut termios) };
        assert_eq!(rc, 0);
        (
            termios.c_lflag & libc::ICANON != 0,
            termios.c_lflag & libc::ECHO != 0,
        )
    }
}

/// A certificate for a TLS fake server: its chain, its key, the fingerprint of its
/// leaf as the server prints it, and (when a test CA signed it) that CA in PEM.
#[derive(Clone)]
pub struct TestCert {
    pub chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub key_der: Vec<u8>,
    pub fingerprint: String,
    pub ca_pem: Option<String>,
}

impl TestCert {
    /// Self-signed, for `127.0.0.1` and `localhost`, as the server makes its own.
    pub fn self_signed() -> TestCert {
        let made = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
        ])
        .expect("a self-signed certificate");
        TestCert::new(
            made.cert.der().clone(),
            made.signing_key.serialize_der(),
            None,
        )
    }

    /// Signed by a CA made for the test (its PEM in `ca_pem`).
    pub fn signed_by_a_ca() -> TestCert {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "echochat test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        TestCert::new(leaf.der().clone(), key.serialize_der(), Some(ca.pem()))
    }

    fn new(
        leaf: rustls::pki_types::CertificateDer<'static>,
        key_der: Vec<u8>,
        ca_pem: Option<String>,
    ) -> TestCert {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(leaf.as_ref());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        TestCert {
            chain: vec![leaf],
            key_der,
            fingerprint: format!("sha256:{hex}"),
            ca_pem,
        }
    }

    /// A rustls server configuration presenting this certificate.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), key)
            .expect("a usable test certificate");
        Arc::new(config)
    }
}

/// A server that speaks whatever a test makes it speak. Each connection runs
/// `handler(index, conn)` on its own thread; connection times are recorded.
pub struct FakeServer {
    port: u16,
    accepted: Arc<Mutex<Vec<Instant>>>,
}

impl FakeServer {
    pub fn start(handler: impl Fn(usize, FakeConn) + Send + Sync + 'static) -> FakeServer {
        FakeServer::start_with(|_| None, handler)
    }

    /// Every connection over TLS with `cert`.
    pub fn start_tls(
        cert: &TestCert,
        handler: impl Fn(usize, FakeConn) + Send + Sync + 'static,
    ) -> FakeServer {
        let config = cert.server_config();
        FakeServer::start_with(move |_| Some(Arc::clone(&config)), handler)
    }

    /// Connection `index` over TLS with `tls(index)`'s configuration, or plain TCP
    /// when it gives none (a server whose certificate changes, or that stops TLS).
    pub fn start_with(
        tls: impl Fn(usize) -> Option<Arc<rustls::ServerConfig>> + Send + 'static,
        handler: impl Fn(usize, FakeConn) + Send + Sync + 'static,
    ) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a fake server");
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let times = Arc::clone(&accepted);
        let handler = Arc::new(handler);
        thread::spawn(move || {
            for (index, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { continue };
                times.lock().unwrap().push(Instant::now());
                let handler = Arc::clone(&handler);
                let conn = match tls(index) {
                    None => FakeConn::new(stream),
                    Some(config) => FakeConn::tls(stream, config),
                };
                thread::spawn(move || handler(index, conn));
            }
        });
        FakeServer { port, accepted }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// When each connection was accepted, in order.
    pub fn accepted(&self) -> Vec<Instant> {
        self.accepted.lock().unwrap().clone()
    }
}

/// The byte stream of a fake connection: TCP, or TLS over it (the handshake happens
/// at the first read or write).
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Stream {
    fn socket(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.socket().set_read_timeout(timeout)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// The server's end of one connection.
pub struct FakeConn {
    stream: Stream,
    buf: Vec<u8>,
}

impl FakeConn {
    fn new(stream: TcpStream) -> FakeConn {
        stream.set_nodelay(true).ok();
        FakeConn {
            stream: Stream::Plain(stream),
            buf: Vec::new(),
        }
    }

    fn tls(stream: TcpStream, config: Arc<rustls::ServerConfig>) -> FakeConn {
        stream.set_nodelay(true).ok();
        let session = rustls::ServerConnection::new(config).expect("a TLS session");
        FakeConn {
            stream: Stream::Tls(Box::new(rustls::StreamOwned::new(session, stream))),
            buf: Vec::new(),
        }
    }

    /// Sends a JSON value as one frame; a write error (the client left) is ignored.
    pub fn send(&mut self, value: &Value) {
        let payload = serde_json::to_vec(value).unwrap();
        self.send_frame(&payload);
    }

    /// Sends `payload` behind a correct length header.
    pub fn send_frame(&mut self, payload: &[u8]) {
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(payload);
        self.send_raw(&frame);
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
        let _ = self.stream.flush();
    }

    /// `welcome` with `known_name`.
    pub fn welcome(&mut self, known_name: Option<&str>) {
        self.send(&serde_json::json!({
            "type": "welcome", "server": "echochat", "version": "0", "known_name": known_name
        }));
    }

    /// The next request, or `None` when the client closed or `timeout` passed.
    pub fn recv_within(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes(self.buf[..4].try_into().unwrap()) as usize;
                if self.buf.len() >= 4 + len {
                    let payload: Vec<u8> = self.buf.drain(..4 + len).skip(4).collect();
                    return serde_json::from_slice(&payload).ok();
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).ok();
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return None,
            }
        }
    }

    pub fn recv(&mut self) -> Option<Value> {
        self.recv_within(SHOW_TIMEOUT)
    }

    /// Answers requests until the client closes: `resume`, `login` and `register`
    /// succeed as `name`, `say` is echoed, `who` and `ping` answered.
    pub fn serve_as(&mut self, name: &str) {
        let mut id = 0;
        while let Some(request) = self.recv() {
            match request["type"].as_str().unwrap_or("") {
                "resume" | "login" | "register" => {
                    self.auth_ok(name);
                    self.send(&serde_json::json!({"type":"history","messages":[]}));
                }
                "say" => {
                    id += 1;
                    self.send(&serde_json::json!({
                        "type":"message","id":id,"from":name,"text":request["text"],"ts":now_ms()
                    }));
                }
                "who" => self.send(&serde_json::json!({"type":"who","users":[name]})),
                "ping" => self.send(&serde_json::json!({"type":"pong"})),
                "quit" | "logout" => return,
                _ => {}
            }
        }
    }

    pub fn auth_ok(&mut self, name: &str) {
        self.send(&serde_json::json!({
            "type":"auth_ok","name":name,"token":format!("token-{}", now_ms()),"new_user":false
        }));
    }

    /// Keeps the connection open until the client closes it (or a minute passes).
    pub fn hold(&mut self) {
        while self.recv_within(Duration::from_secs(60)).is_some() {}
    }
}

fn nz(n: u16) -> std::num::NonZeroU16 {
    std::num::NonZeroU16::new(n).expect("a size above zero")
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How a scripted run ended.
#[derive(Debug)]
pub struct ScriptRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl ScriptRun {
    pub fn assert_success(&self) -> &Self {
        assert_eq!(self.code, Some(0), "{self:#?}");
        self
    }
}

/// Runs the client with `input` on a pipe as stdin, to its end (killed after a minute).
pub fn run_script(args: &[String], env: &[(&str, &str)], input: &str) -> ScriptRun {
    use std::process::Stdio;
    let mut cmd = Command::new(client_bin());
    cmd.args(args);
    scrub_env(&mut cmd);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn echochat");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_string();
    thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "scripted client still running after a minute; stderr: {}",
                String::from_utf8_lossy(&stderr.lock().unwrap())
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    thread::sleep(Duration::from_millis(100));
    let text = |b: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&b.lock().unwrap()).into_owned();
    ScriptRun {
        code: status.code(),
        stdout: text(&stdout),
        stderr: text(&stderr),
    }
}

fn collect(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&buf);
    thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut chunk) {
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buf
}
