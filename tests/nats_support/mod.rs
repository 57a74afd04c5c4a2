//! A real NATS server for the cluster tests: `nats-server` (Debian's package
//! `nats-server`) with JetStream, on a free loopback port, its store in a temporary
//! folder (or a [`NatsCluster`] of several). It is killed and reaped when its
//! [`NatsServer`] drops, so a failing test never leaves a process behind. Without the binary the test fails, saying which
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
        let store = self.dir.path().to_string_lossy().into_owned();
        let child = spawn(&["-a", "127.0.0.1", "-p", &port, "-js", "-sd", &store]);
        self.child = Some(await_ready(child, self.port));
    }
}

/// Starts `nats-server` with `args`; panics, saying what to install, without it.
fn spawn(args: &[&str]) -> Child {
    let spawned = Command::new("nats-server")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match spawned {
        Ok(child) => child,
        Err(err) if err.kind() == ErrorKind::NotFound => panic!(
            "nats-server is not installed: the cluster tests need a real NATS server \
             (Debian package nats-server: apt-get install nats-server; .ci/run installs it)"
        ),
        Err(err) => panic!("cannot start nats-server: {err}"),
    }
}

/// Waits until `child` accepts connections on `port`; kills it and panics if it does
/// not within [`READY_TIMEOUT`].
fn await_ready(mut child: Child, port: u16) -> Child {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return child;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("nats-server exited at start ({status}) on port {port}");
        }
        if Instant::now() >= deadline {
            child.kill().ok();
            child.wait().ok();
            panic!(
                "nats-server did not accept connections on port {port} within {READY_TIMEOUT:?}"
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A NATS cluster of JetStream servers on loopback (routes between them on ports of
/// their own), each with its own store; every server is killed when it drops.
pub struct NatsCluster {
    servers: Vec<Option<Child>>,
    ports: Vec<u16>,
    dir: tempfile::TempDir,
}

impl NatsCluster {
    /// `size` servers in one NATS cluster, started together.
    pub fn start(size: usize) -> NatsCluster {
        let dir = tempfile::tempdir().expect("a temporary folder for the NATS stores");
        let ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let routes: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let monitors: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let route_list: Vec<String> = routes
            .iter()
            .map(|port| format!("nats-route://127.0.0.1:{port}"))
            .collect();
        let mut cluster = NatsCluster {
            servers: Vec::new(),
            ports: ports.clone(),
            dir,
        };
        for (i, (port, route)) in ports.iter().zip(&routes).enumerate() {
            let store = cluster.dir.path().join(format!("store{i}"));
            let config = cluster.dir.path().join(format!("nats{i}.conf"));
            let text = format!(
                "server_name: nats{i}\nlisten: 127.0.0.1:{port}\n\
                 http: 127.0.0.1:{}\n\
                 jetstream {{ store_dir: {store:?} }}\n\
                 cluster {{\n  name: test\n  listen: 127.0.0.1:{route}\n  routes: [{}]\n}}\n",
                monitors[i],
                route_list.join(", ")
            );
            std::fs::write(&config, text).expect("write a nats-server configuration");
            let config = config.to_string_lossy().into_owned();
            cluster.servers.push(Some(spawn(&["-c", &config])));
        }
        for (i, port) in ports.iter().enumerate() {
            if let Some(child) = cluster.servers[i].take() {
                cluster.servers[i] = Some(await_ready(child, *port));
            }
        }
        // Listening is not enough: JetStream answers once the servers have elected
        // its leader, which every server's health check reports.
        let deadline = Instant::now() + READY_TIMEOUT;
        for monitor in monitors {
            while !healthy(monitor) {
                assert!(
                    Instant::now() < deadline,
                    "the NATS cluster's JetStream was not ready within {READY_TIMEOUT:?}"
                );
                thread::sleep(Duration::from_millis(100));
            }
        }
        cluster
    }

    /// Every server's URL, comma-separated, starting with server `first`'s.
    pub fn urls(&self, first: usize) -> String {
        let n = self.ports.len();
        (0..n)
            .map(|i| format!("nats://127.0.0.1:{}", self.ports[(first + i) % n]))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills server `i` (SIGKILL) and waits for it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

/// Whether the server monitored on `port` answers its health check (`/healthz`) with
/// 200: up, and its JetStream current.
fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok();
    let request = format!("GET /healthz HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok();
    answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200")
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
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
