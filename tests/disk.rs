//! Disk trouble: when a state file cannot be written (simulated with a symlink to
//! `/dev/full`, which fails every write with ENOSPC), the affected request fails with an
//! `error` frame and a log line, the server keeps serving, and nothing it acknowledged
//! is lost once the disk recovers.

mod common;

use common::*;
use serde_json::json;
use std::fs;
use std::os::unix::fs::symlink;
use std::time::{Duration, Instant};

const PW: &str = "disk-trouble";

/// Sends `say` until the server refuses one (it learns of the failure from its first
/// failed write); returns the messages it acknowledged meanwhile.
fn say_until_refused(c: &mut TestClient) -> Vec<String> {
    let mut acknowledged = Vec::new();
    let deadline = Instant::now() + RECV_TIMEOUT;
    for i in 0.. {
        assert!(Instant::now() < deadline, "never refused a message");
        let text = format!("during {i}");
        c.send(&json!({"type":"say","text":text}));
        let reply = c.recv_matching("echo or error", |v| {
            v["type"] == "error" || (v["type"] == "message" && v["text"] == text.as_str())
        });
        if reply["type"] == "error" {
            assert_eq!(reply["code"], "internal", "{reply}");
            return acknowledged;
        }
        acknowledged.push(text);
        std::thread::sleep(Duration::from_millis(50));
    }
    unreachable!()
}

#[test]
fn a_full_disk_refuses_chat_keeps_what_was_acknowledged_and_recovers() {
    let server = TestServer::start_with(&["--msg-rate", "0"]);
    let (mut a, _) = registered(&server, "ann", PW);
    a.say("before");

    let history = server.state_dir().join("history.jsonl");
    // Let "before" reach the file, then make the file refuse writes.
    server.wait_log_line(RECV_TIMEOUT, |l| l.contains("authenticated as ann"));
    let deadline = Instant::now() + RECV_TIMEOUT;
    while !fs::read_to_string(&history)
        .unwrap_or_default()
        .contains("before")
    {
        assert!(Instant::now() < deadline, "history never written");
        std::thread::sleep(Duration::from_millis(20));
    }
    fs::remove_file(&history).unwrap();
    symlink("/dev/full", &history).unwrap();

    let acknowledged = say_until_refused(&mut a);
    server.wait_log_line(RECV_TIMEOUT, |l| {
        l.contains("ERROR") && l.contains("history")
    });
    // Still serving: a new connection is greeted and answered.
    let mut b = server.connect_greeted();
    b.send(&json!({"type":"ping"}));
    b.recv_type("pong");

    // The disk recovers: what was acknowledged is written, and chat works again.
    fs::remove_file(&history).unwrap();
    let deadline = Instant::now() + RECV_TIMEOUT;
    let after = loop {
        let text = "after recovery";
        a.send(&json!({"type":"say","text":text}));
        let reply = a.recv_matching("echo or error", |v| {
            v["type"] == "error" || (v["type"] == "message" && v["text"] == text)
        });
        if reply["type"] == "message" {
            break reply;
        }
        assert!(Instant::now() < deadline, "chat never recovered");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(after["from"], "ann");
    let deadline = Instant::now() + RECV_TIMEOUT;
    loop {
        let text = fs::read_to_string(&history).unwrap_or_default();
        if text.contains("after recovery") {
            for said in &acknowledged {
                assert!(text.contains(said.as_str()), "{said:?} lost:\n{text}");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "history not written after recovery"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_registration_that_cannot_be_saved_fails_and_can_be_retried() {
    let server = TestServer::start();
    let tmp = server.state_dir().join(".users.json.tmp");
    symlink("/dev/full", &tmp).unwrap();
    let mut c = server.connect_greeted();
    c.send(&json!({"type":"register","name":"bea","password":PW}));
    let reply = c.recv();
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "internal", "{reply}");
    server.wait_log_line(RECV_TIMEOUT, |l| l.contains("ERROR") && l.contains("bea"));
    let _ = fs::remove_file(&tmp);
    // Not half-registered: the same name registers now.
    c.register("bea", PW);
}
