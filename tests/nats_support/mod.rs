//! A real NATS server for the cluster tests: `nats-server` (Debian's package
//! `nats-server`) with JetStream, on a free loopback port, its store in a temporary
//! folder. It is killed and reaped when its [`NatsServer`] drops, so a failing test
//! never leaves a process behind. Without the binary the test fails, saying which
//! package to install: it never passes silently.

#![allow(dead_code)]

use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long the server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running (or stopped) `nats-server -js`.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts one on a free port with an empty store.
    pub fn start() -> NatsServer {
        let dir = tempfile::tempdir().expect("a temporary folder for the NATS store");
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            dir,
        };
        server.launch();
        server
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port it listens on (also while stopped: a restart takes it again).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where JetStream keeps its files.
    pub fn store_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills it (SIGKILL: nothing is flushed on the way out) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// Starts it again on the same port with the same store.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    fn launch(&mut self) {
        let port = self.port.to_string();
        let spawned = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(err) if err.kind() == ErrorKind::NotFound => panic!(
                "nats-server is not installed: the cluster tests need a real NATS server \
                 (Debian package nats-server: apt-get install nats-server; .ci/run installs it)"
            ),
            Err(err) => panic!("cannot start nats-server: {err}"),
        };
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!(
                        "nats-server exited at start ({status}) on port {}",
                        self.port
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not accept connections on port {} within {READY_TIMEOUT:?}",
                self.port
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port nobody listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
