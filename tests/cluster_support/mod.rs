//! Nodes of a cluster for the black-box cluster tests: the real `echochat-server`
//! binary started with `--nats` against a real `nats-server -js`
//! ([`nats_support`](super::nats_support)), each with its own state folder.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::common::{Event, TestClient, TestServer};
use super::nats_support::NatsServer;

/// A node of the cluster on `nats`, with the test defaults, `--msg-rate 0` (the tests
/// pipeline) and `extra`.
pub fn node(nats: &NatsServer, extra: &[&str]) -> TestServer {
    let url = nats.url();
    let mut args = vec!["--nats", url.as_str(), "--msg-rate", "0"];
    args.extend_from_slice(extra);
    TestServer::start_with(&args)
}

/// Waits up to `timeout` for a frame `pred` accepts, dropping the others; panics if
/// none comes (or the connection closes).
pub fn wait_for(
    client: &mut TestClient,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next_event(left) {
            Event::Frame(v) if pred(&v) => return v,
            Event::Frame(v) => seen.push(v),
            Event::Closed => panic!("connection closed while waiting for {what}; got {seen:?}"),
            Event::Timeout => panic!("no {what} within {timeout:?}; got {seen:?}"),
        }
    }
}

/// Registers `name` on `server`: the client, its token.
pub fn registered(server: &TestServer, name: &str) -> (TestClient, String) {
    let mut client = server.connect_greeted();
    let token = client.register(name, "password");
    (client, token)
}

/// Logs `name` in on `server`, once the node knows the account (it may have been
/// registered on another node a moment ago).
pub fn logged_in(server: &TestServer, name: &str) -> TestClient {
    let mut client = server.connect_greeted();
    client.login(name, "password");
    client
}

/// Tries `attempt` every 200 ms until it gives `Some`, for up to `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut attempt: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = attempt() {
            return found;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The ids of a `history` frame's messages.
pub fn ids(history: &Value) -> Vec<u64> {
    history["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("not a history frame: {history}"))
        .iter()
        .map(|m| m["id"].as_u64().expect("message id"))
        .collect()
}

/// Sends a `history` request and returns the answer.
pub fn page(client: &mut TestClient, request: Value) -> Value {
    let mut request = request;
    request["type"] = json!("history");
    client.send(&request);
    client.recv_matching("a history page", |v| {
        v["type"] == "history" || v["type"] == "error"
    })
}
