//! Hostile and heavy traffic (issue: hardening): random bytes, connection churn and
//! thousands of simultaneous connections must neither kill the server nor disturb the
//! users chatting meanwhile.

mod common;

use common::*;
use rand::Rng;
use serde_json::json;
use std::time::Duration;

const PW: &str = "garbage-proof";

/// Raises this process's open-file limit to its hard limit (children inherit it).
fn raise_fd_limit(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < wanted {
            limit.rlim_cur = wanted.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Two users who can check that chat still flows.
fn chatting_pair(server: &TestServer) -> (TestClient, TestClient) {
    let (a, _) = registered(server, &unique_name("ann"), PW);
    let (mut b, _) = registered(server, &unique_name("bob"), PW);
    // b's own `joined` went to a.
    let _ = b.try_recv(Duration::from_millis(200));
    (a, b)
}

fn assert_chat_flows(a: &mut TestClient, b: &mut TestClient, text: &str) {
    let sent = a.say(text);
    let got = b.recv_matching("the message", |v| v["type"] == "message");
    assert_eq!(got["id"], sent["id"], "{got}");
    assert_eq!(got["text"], text);
}

#[test]
fn a_megabyte_of_random_bytes_harms_nobody_else() {
    let server = TestServer::start_with(&["--msg-rate", "0"]);
    let (mut a, mut b) = chatting_pair(&server);
    for round in 0..4 {
        let mut junk = vec![0u8; 1 << 20];
        rand::rng().fill_bytes(&mut junk);
        if round % 2 == 1 {
            // A small first header, so that the decoder reads on into the junk.
            junk[..4].copy_from_slice(&100u32.to_be_bytes());
        }
        let mut attacker = server.connect_greeted();
        for chunk in junk.chunks(64 * 1024) {
            if attacker.try_send_raw(chunk).is_err() {
                break; // closed on us: frame_too_large
            }
        }
        let frames = attacker.expect_closed(RECV_TIMEOUT);
        assert!(
            frames
                .iter()
                .all(|f| f["type"] == "error" || f["type"] == "pong"),
            "only errors come back: {frames:?}"
        );
        assert_chat_flows(&mut a, &mut b, &format!("still here {round}"));
    }
    let mut late = server.connect_greeted();
    late.send(&json!({"type":"ping"}));
    late.recv_type("pong");
}

#[test]
fn thousands_of_connections_coming_and_going() {
    let mut server = TestServer::start_with(&["--max-conns-per-ip", "0", "--msg-rate", "0"]);
    let (mut a, mut b) = chatting_pair(&server);
    for i in 0..3000 {
        let mut c = server.connect();
        if i % 3 == 0 {
            c.welcome();
        }
        if i % 500 == 0 {
            assert_chat_flows(&mut a, &mut b, &format!("churn {i}"));
        }
    }
    assert_chat_flows(&mut a, &mut b, "after the churn");
    // Every closed connection is forgotten: only a and b remain.
    let deadline = std::time::Instant::now() + RECV_TIMEOUT;
    loop {
        let status = server.admin_output("status").join("\n");
        if status.contains("connections: 2") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "connections not released: {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn two_thousand_simultaneous_connections_are_greeted() {
    raise_fd_limit(8192);
    let server = TestServer::start_with(&["--max-conns-per-ip", "0", "--msg-rate", "0"]);
    let (mut a, mut b) = chatting_pair(&server);
    let mut crowd: Vec<TestClient> = (0..2000).map(|_| server.connect()).collect();
    for (i, c) in crowd.iter_mut().enumerate() {
        let w = c.welcome();
        assert_eq!(w["server"], "echochat", "connection {i}: {w}");
    }
    assert_chat_flows(&mut a, &mut b, "with a crowd watching");
    for c in crowd.iter_mut().step_by(97) {
        c.send(&json!({"type":"ping"}));
        c.recv_type("pong");
    }
}
