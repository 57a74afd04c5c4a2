//! Shared harness for the browser-access tests (SPEC §10): a server started with
//! `--http-port 0`, plain HTTP requests, a WebSocket client speaking the protocol as a
//! browser would (one JSON object per text message), and a real headless Chromium
//! driven over WebDriver.
//!
//! Every process started here is killed when its owner drops, so a failing test never
//! leaves a server, a chromedriver or a browser behind.

#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::protocol::WebSocket;
use tungstenite::Message;

use crate::common::{TestServer, RECV_TIMEOUT};

/// A server with its HTTP listener, on a state folder that outlives restarts.
pub struct WebServer {
    pub server: TestServer,
    /// The address of `listening on <ip>:<port> http`.
    pub http: SocketAddr,
    /// The second stdout line, exactly.
    pub http_line: String,
    args: Vec<String>,
    state: tempfile::TempDir,
}

impl WebServer {
    /// A server with the test defaults, `--http-port 0` and `args`.
    pub fn start(args: &[&str]) -> WebServer {
        let state = tempfile::tempdir().expect("temp state dir");
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (server, http, http_line) = launch(state.path(), &args, "0");
        WebServer {
            server,
            http,
            http_line,
            args,
            state,
        }
    }

    /// Shuts the server down (console `shutdown`) and starts it again on the same state
    /// folder and the same HTTP port, so that open pages find it where it was.
    pub fn restart(&mut self) {
        self.server.stop();
        self.start_again();
    }

    /// Starts the server again after it stopped, on the same state folder and HTTP port.
    pub fn start_again(&mut self) {
        let port = self.http.port().to_string();
        let (server, http, http_line) = launch(self.state.path(), &self.args, &port);
        assert_eq!(http, self.http, "the restarted server moved its HTTP port");
        self.server = server;
        self.http_line = http_line;
    }

    /// `http` or `https`, as the HTTP line says.
    pub fn scheme(&self) -> &'static str {
        if self.http_line.ends_with(" https") {
            "https"
        } else {
            "http"
        }
    }

    /// `http://IP:PORT`, the origin of the web client.
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme(), self.http)
    }

    /// The web client's address.
    pub fn url(&self) -> String {
        format!("{}://{}/", self.scheme(), self.http)
    }

    /// The server's own certificate (`<state-dir>/tls/cert.pem`).
    pub fn certificate(&self) -> PathBuf {
        self.state.path().join("tls").join("cert.pem")
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// A WebSocket to `/ws` from the page's own origin, greeted.
    pub fn ws_greeted(&self) -> WsClient {
        let mut client = self
            .ws(Some(&self.origin()), &[])
            .expect("WebSocket upgrade");
        client.welcome();
        client
    }

    /// A WebSocket to `/ws` with `origin` and extra headers.
    pub fn ws(
        &self,
        origin: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<WsClient, Box<tungstenite::Error>> {
        WsClient::connect(self.http, origin, headers)
    }
}

fn launch(state: &Path, args: &[String], http_port: &str) -> (TestServer, SocketAddr, String) {
    let mut all: Vec<&str> = vec!["--http-port", http_port];
    all.extend(args.iter().map(String::as_str));
    let mut server = TestServer::start_in(state, &all);
    let line = server
        .read_stdout_line(RECV_TIMEOUT)
        .expect("a second stdout line for the HTTP listener");
    let http = line
        .strip_prefix("listening on ")
        .and_then(|rest| rest.strip_suffix(" http").or(rest.strip_suffix(" https")))
        .and_then(|address| address.parse::<SocketAddr>().ok())
        .unwrap_or_else(|| {
            panic!("second stdout line is not `listening on IP:PORT http`: {line:?}")
        });
    (server, http, line)
}

/// An HTTP response, as read off the wire.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpReply {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpReply {
    let mut stream = TcpStream::connect_timeout(&addr, RECV_TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("send request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect();
    HttpReply {
        status,
        headers,
        body,
    }
}

pub fn http_get(addr: SocketAddr, path: &str) -> HttpReply {
    http_request(addr, "GET", path, &[])
}

/// A TLS connection to `addr` trusting exactly the certificates in `ca` (PEM).
pub fn tls_connect(
    addr: SocketAddr,
    ca: &Path,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read the certificate") {
        roots
            .add(cert.expect("a certificate"))
            .expect("a usable root");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::IpAddress(addr.ip().into());
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect_timeout(&addr, RECV_TIMEOUT).expect("connect");
    tcp.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// A GET over TLS (`Connection: close`): the status line and the body.
pub fn https_get(addr: SocketAddr, ca: &Path, path: &str) -> (String, String) {
    let mut stream = tls_connect(addr, ca);
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send over TLS");
    let mut raw = Vec::new();
    // A peer that closes without close_notify ends the read with an error; what was
    // read is kept.
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

/// What happened while waiting for a WebSocket message.
#[derive(Debug)]
pub enum WsEvent {
    Frame(Value),
    Closed,
    Timeout,
}

/// A WebSocket client of the protocol, blocking, with timeouts.
pub struct WsClient {
    socket: WebSocket<TcpStream>,
    pub name: Option<String>,
}

impl WsClient {
    /// Upgrades a fresh connection to `/ws`; the error carries the HTTP response of a
    /// refused upgrade.
    pub fn connect(
        addr: SocketAddr,
        origin: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<WsClient, Box<tungstenite::Error>> {
        let stream = TcpStream::connect_timeout(&addr, RECV_TIMEOUT).expect("connect");
        stream.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
        stream.set_nodelay(true).ok();
        let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("Origin", HeaderValue::from_str(origin).unwrap());
        }
        for (name, value) in headers {
            request.headers_mut().append(
                tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        match tungstenite::client(request, stream) {
            Ok((socket, _)) => Ok(WsClient { socket, name: None }),
            Err(tungstenite::HandshakeError::Failure(err)) => Err(Box::new(err)),
            Err(tungstenite::HandshakeError::Interrupted(_)) => {
                panic!("WebSocket handshake interrupted")
            }
        }
    }

    /// The TCP stream under the WebSocket, for raw writes.
    pub fn stream(&mut self) -> &mut TcpStream {
        self.socket.get_mut()
    }

    pub fn send(&mut self, message: &Value) {
        self.send_text(&message.to_string());
    }

    pub fn send_text(&mut self, text: &str) {
        self.socket
            .send(Message::text(text))
            .unwrap_or_else(|e| panic!("send on the WebSocket: {e}"));
    }

    pub fn send_binary(&mut self, data: &[u8]) {
        self.socket
            .send(Message::binary(data.to_vec()))
            .unwrap_or_else(|e| panic!("send on the WebSocket: {e}"));
    }

    /// Waits up to `timeout` for the next text message (pings are answered by
    /// tungstenite; a binary message fails the test).
    pub fn next_event(&mut self, timeout: Duration) -> WsEvent {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return WsEvent::Timeout;
            }
            self.socket
                .get_ref()
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match self.socket.read() {
                Ok(Message::Text(text)) => {
                    let value: Value = serde_json::from_str(text.as_str())
                        .unwrap_or_else(|e| panic!("server sent non-JSON text ({e}): {text}"));
                    return WsEvent::Frame(value);
                }
                Ok(Message::Binary(data)) => panic!("server sent a binary message: {data:?}"),
                Ok(Message::Close(_)) => return WsEvent::Closed,
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return WsEvent::Closed,
            }
        }
    }

    pub fn recv(&mut self) -> Value {
        match self.next_event(RECV_TIMEOUT) {
            WsEvent::Frame(v) => v,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    pub fn recv_type(&mut self, ty: &str) -> Value {
        let v = self.recv();
        assert_eq!(v["type"], ty, "expected a `{ty}` message, got {v}");
        v
    }

    /// Reads until a message satisfies `pred`; returns it.
    pub fn recv_matching(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + RECV_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            match self.next_event(deadline.saturating_duration_since(Instant::now())) {
                WsEvent::Frame(v) if pred(&v) => return v,
                WsEvent::Frame(v) => seen.push(v),
                other => panic!("no {what} ({other:?}); got {seen:?}"),
            }
        }
    }

    pub fn expect_silence(&mut self, timeout: Duration) {
        match self.next_event(timeout) {
            WsEvent::Timeout => {}
            other => panic!("expected nothing for {timeout:?}, got {other:?}"),
        }
    }

    /// Reads until the server closes; returns what came before.
    pub fn expect_closed(&mut self, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            match self.next_event(deadline.saturating_duration_since(Instant::now())) {
                WsEvent::Frame(v) => frames.push(v),
                WsEvent::Closed => return frames,
                WsEvent::Timeout => panic!("still open after {timeout:?}; got {frames:?}"),
            }
        }
    }

    pub fn welcome(&mut self) -> Value {
        let welcome = self.recv_type("welcome");
        assert_eq!(welcome["server"], "echochat", "{welcome}");
        welcome
    }

    /// Registers (welcome already read); returns the token.
    pub fn register(&mut self, name: &str, password: &str) -> String {
        self.send(&json!({"type":"register","name":name,"password":password}));
        self.expect_auth_ok(name)
    }

    pub fn login(&mut self, name: &str, password: &str) -> String {
        self.send(&json!({"type":"login","name":name,"password":password}));
        self.expect_auth_ok(name)
    }

    fn expect_auth_ok(&mut self, name: &str) -> String {
        let ok = self.recv_type("auth_ok");
        assert_eq!(ok["name"], name, "{ok}");
        self.name = Some(name.to_string());
        self.recv_type("history");
        ok["token"].as_str().expect("token").to_string()
    }

    /// Sends `say` and waits for our own copy.
    pub fn say(&mut self, text: &str) -> Value {
        let me = self.name.clone().expect("say before authentication");
        self.send(&json!({"type":"say","text":text}));
        let echo = self.recv_matching("our own message", |v| {
            (v["type"] == "message" && v["from"] == me.as_str() && v["text"] == text)
                || v["type"] == "error"
        });
        assert_eq!(echo["type"], "message", "say {text:?} refused: {echo}");
        echo
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; fine for a test).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Where the browser tests keep their screenshots: `target/browser-artifacts/`.
pub fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("browser-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/browser-artifacts");
    dir
}

/// The Chromium binary: `$CHROMIUM`, or Debian's.
fn chromium_binary() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

fn chromedriver_binary() -> PathBuf {
    std::env::var_os("CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromedriver"))
}

const INSTALL_HINT: &str = "the browser tests need Chromium and its WebDriver: \
    `apt-get install chromium chromium-driver` (Debian; `.ci/run` installs them), or \
    set CHROMIUM and CHROMEDRIVER to their paths";

/// A running chromedriver, in a process group of its own with the browsers it starts;
/// the whole group is killed on drop.
pub struct Chromedriver {
    child: Child,
    pub port: u16,
    /// The browsers' home folder (Chromium keeps some files there, beside the
    /// profile), so that tests never write into the real one.
    _home: tempfile::TempDir,
}

impl Chromedriver {
    /// Starts chromedriver; fails the test with what to install when it is missing.
    pub fn start() -> Chromedriver {
        let chromium = chromium_binary();
        let driver = chromedriver_binary();
        for binary in [&chromium, &driver] {
            assert!(
                binary.exists(),
                "{} not found: {INSTALL_HINT}",
                binary.display()
            );
        }
        use std::os::unix::process::CommandExt;
        let port = free_port();
        let home = tempfile::tempdir().expect("a home folder for the browsers");
        let child = Command::new(&driver)
            .env("HOME", home.path())
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}; {INSTALL_HINT}", driver.display()));
        let driver = Chromedriver {
            child,
            port,
            _home: home,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not start listening"
            );
            thread::sleep(Duration::from_millis(50));
        }
        driver
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Capabilities for a headless Chromium with a fresh profile in `profile`, its page
    /// `width`×`height` pixels (a phone's screen below 500); the flags keep it off the
    /// network (this machine has none).
    pub fn capabilities(profile: &Path, width: u32, height: u32) -> serde_json::Map<String, Value> {
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".to_string(),
            "--disable-gpu".to_string(),
            "--disable-quic".to_string(),
            "--no-first-run".to_string(),
            "--disable-background-networking".to_string(),
            "--disable-component-update".to_string(),
            "--disable-sync".to_string(),
            "--disable-dev-shm-usage".to_string(),
            "--disable-background-timer-throttling".to_string(),
            "--disable-renderer-backgrounding".to_string(),
            format!("--user-data-dir={}", profile.display()),
            format!("--window-size={width},{height}"),
        ];
        let mut options = json!({
            "binary": chromium_binary(),
            "args": args,
        });
        // A desktop window is at least 500 pixels wide; a phone's screen is emulated.
        if width < 500 {
            options["mobileEmulation"] = json!({
                "deviceMetrics": {"width": width, "height": height, "pixelRatio": 1.0, "touch": true},
            });
        }
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": options,
        });
        caps.as_object().cloned().unwrap_or_default()
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let group = -(self.child.id() as i32);
        // SAFETY: kill(2) on the process group this test created.
        unsafe {
            libc::kill(group, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        // Whatever is left of the group (browsers, their helpers) goes now.
        unsafe {
            libc::kill(group, libc::SIGKILL);
        }
        let _ = self.child.wait();
        // Chromium's crash handler leaves the group; it is known by the home folder it
        // was given, which is this driver's own.
        for pid in processes_mentioning(&self._home.path().to_string_lossy()) {
            // SAFETY: kill(2) on a process started for this test.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Processes whose command line contains `needle`.
fn processes_mentioning(needle: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmdline| String::from_utf8_lossy(&cmdline).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}
