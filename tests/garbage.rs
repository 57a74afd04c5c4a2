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

#[test]
fn a_reader_stuck_below_the_send_queue_is_still_closed_by_its_idle_timeout() {
    // No byte limit: only the idle timeout can end this connection.
    let mut server = TestServer::start_with(&[
        "--msg-rate",
        "0",
        "--send-queue",
        "0",
        "--idle-timeout",
        "2",
    ]);
    let (stuck, _) = registered(&server, &unique_name("stuck"), PW);
    socket2::SockRef::from(stuck.stream())
        .set_recv_buffer_size(4096)
        .expect("small receive buffer");
    let (mut flooder, _) = registered(&server, &unique_name("flood"), PW);
    // More than the kernel buffers between them hold, well within the ring: the writer
    // towards `stuck`, which never reads, blocks with output pending.
    let text = "x".repeat(4000);
    for _ in 0..4000 {
        flooder.send(&json!({"type":"say","text":text}));
        flooder.recv_matching("echo", |v| v["type"] == "message");
    }
    // `stuck` sends nothing and reads nothing. Once its idle timeout and the close
    // grace have passed, the server holds only the flooder's connection.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        flooder.send(&json!({"type":"ping"}));
        flooder.recv_matching("pong", |v| v["type"] == "pong");
        let status = server.admin_output("status").join("\n");
        if status.contains("connections: 1 ") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stuck reader was never closed: {status}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(stuck);
}
