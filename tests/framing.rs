//! Frames (SPEC §2): a 4-byte big-endian length, then a UTF-8 JSON object payload.
//! Oversize frames close the connection; every other malformed payload gets
//! `error` `bad_request` and the connection goes on.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

/// Sends `payload` as a frame and expects `error` `bad_request`, then a working `ping`.
fn assert_bad_request_then_alive(c: &mut TestClient, payload: &[u8]) {
    c.send_payload(payload);
    let e = c.recv();
    assert_eq!(
        e["type"],
        "error",
        "payload {:?}: expected error, got {e}",
        String::from_utf8_lossy(payload)
    );
    assert_eq!(
        e["code"],
        "bad_request",
        "payload {:?}: {e}",
        String::from_utf8_lossy(payload)
    );
    assert!(
        e["message"].is_string(),
        "error.message must be a string: {e}"
    );
    c.ping();
}

#[test]
fn oversize_frame_gets_frame_too_large_then_close() {
    let server = TestServer::start_with(&["--max-frame", "1024"]);
    let mut c = server.connect_greeted();
    // Only the header: the server must refuse from the announced length alone.
    c.send_raw(&1025u32.to_be_bytes());
    let frames = c.expect_closed(RECV_TIMEOUT);
    assert_eq!(
        frames.len(),
        1,
        "expected exactly one error frame: {frames:?}"
    );
    assert_eq!(frames[0]["type"], "error", "{frames:?}");
    assert_eq!(frames[0]["code"], "frame_too_large", "{frames:?}");
    assert!(frames[0]["message"].is_string(), "{frames:?}");
}

#[test]
fn oversize_frame_is_refused_after_authentication_too() {
    let server = TestServer::start_with(&["--max-frame", "1024"]);
    let (mut c, _) = registered(&server, &unique_name("big"), "secret-pw");
    c.send_raw(&u32::MAX.to_be_bytes());
    let frames = c.expect_closed(RECV_TIMEOUT);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["code"], "frame_too_large", "{frames:?}");
    // The server itself is fine.
    let mut other = server.connect_greeted();
    other.ping();
}

#[test]
fn frame_of_exactly_max_frame_is_accepted() {
    let server = TestServer::start_with(&["--max-frame", "1024"]);
    let mut c = server.connect_greeted();
    // A ping padded with an ignored field to exactly 1024 bytes.
    let base = r#"{"type":"ping","pad":""}"#;
    let pad = "x".repeat(1024 - base.len());
    let payload = format!(r#"{{"type":"ping","pad":"{pad}"}}"#);
    assert_eq!(payload.len(), 1024);
    c.send_payload(payload.as_bytes());
    c.recv_type("pong");
}

#[test]
fn default_max_frame_is_64_kib() {
    let server = TestServer::start();
    let mut c = server.connect_greeted();
    c.send_raw(&(64 * 1024 + 1u32).to_be_bytes());
    let frames = c.expect_closed(RECV_TIMEOUT);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["code"], "frame_too_large", "{frames:?}");
}

#[test]
fn payload_not_utf8_is_bad_request() {
    let server = TestServer::start();
    let mut c = server.connect_greeted();
    assert_bad_request_then_alive(&mut c, b"{\"type\":\"ping\",\"x\":\"\xff\xfe\"}");
}

#[test]
fn payload_not_json_is_bad_request() {
    let server = TestServer::start();
    let mut c = server.connect_greeted();
    assert_bad_request_then_alive(&mut c, b"{nope");
    assert_bad_request_then_alive(&mut c, b"hello");
}

#[test]
fn payload_not_an_object_is_bad_request() {
    let server = TestServer::start();
    let mut c = server.connect_greeted();
    assert_bad_request_then_alive(&mut c, br#"["ping"]"#);
    assert_bad_request_then_alive(&mut c, b"42");
    assert_bad_request_then_alive(&mut c, br#""ping""#);
    assert_bad_request_then_alive(&mut c, b"null");
}

#[test]
fn unknown_or_missing_type_is_bad_request() {
    let server = TestServer::start();
    let mut c = server.connect_greeted();
    assert_bad_request_then_alive(&mut c, br#"{"type":"dance"}"#);
    assert_bad_request_then_alive(&mut c, br#"{"text":"no type"}"#);
    assert_bad_request_then_alive(&mut c, br#"{"type":7}"#);
}

#[test]
fn wrong_field_types_are_bad_request() {
    let server = TestServer::start();
    let mut c = server.connect_greeted();
    assert_bad_request_then_alive(&mut c, br#"{"type":"login","name":5,"password":"pw12"}"#);
    assert_bad_request_then_alive(&mut c, br#"{"type":"register","name":"a"}"#);
    assert_bad_request_then_alive(&mut c, br#"{"type":"resume","token":null}"#);
    c.register(&unique_name("typ"), "secret-pw");
    assert_bad_request_then_alive(&mut c, br#"{"type":"say","text":5}"#);
    assert_bad_request_then_alive(&mut c, br#"{"type":"say"}"#);
    assert_bad_request_then_alive(&mut c, br#"{"type":"say","text":["a"]}"#);
}

#[test]
fn empty_payload_is_bad_request() {
    let server = TestServer::start();
    let mut c = server.connect_greeted();
    assert_bad_request_then_alive(&mut c, b"");
}

#[test]
fn unknown_fields_are_ignored() {
    let server = TestServer::start();
    let mut c = server.connect_greeted();
    c.send(&json!({"type":"ping","extra":{"nested":[1,2,3]},"more":null}));
    c.recv_type("pong");
    let name = unique_name("extra");
    c.send(&json!({"x":1,"type":"register","name":name,"password":"secret-pw","y":"z"}));
    c.expect_auth_ok(&name, true);
    c.send(&json!({"type":"say","text":"hello","colour":"red"}));
    let m = c.recv_type("message");
    assert_eq!(m["text"], "hello");
}

#[test]
fn a_frame_split_over_several_writes_is_reassembled() {
    let server = TestServer::start();
    let mut c = server.connect_greeted();
    let wire = frame(br#"{"type":"ping"}"#);
    // Header split in two, then the body byte by byte, with pauses so the server
    // sees separate reads.
    c.send_raw(&wire[..2]);
    std::thread::sleep(Duration::from_millis(50));
    c.send_raw(&wire[2..4]);
    std::thread::sleep(Duration::from_millis(50));
    for b in &wire[4..] {
        c.send_raw(std::slice::from_ref(b));
        std::thread::sleep(Duration::from_millis(5));
    }
    c.recv_type("pong");
}

#[test]
fn two_frames_in_one_write_are_both_answered() {
    let server = TestServer::start();
    let mut c = server.connect_greeted();
    let mut wire = frame(br#"{"type":"ping"}"#);
    wire.extend(frame(br#"{"type":"ping"}"#));
    wire.extend(frame(b"42"));
    wire.extend(frame(br#"{"type":"ping"}"#));
    c.send_raw(&wire);
    c.recv_type("pong");
    c.recv_type("pong");
    assert_eq!(c.expect_error(), "bad_request");
    c.recv_type("pong");
}

#[test]
fn server_frames_are_length_prefixed_json_objects() {
    // Reads the welcome by hand to check the header counts payload bytes only.
    use std::io::Read;
    let server = TestServer::start();
    let c = server.connect();
    let mut s = c.stream();
    s.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
    let mut header = [0u8; 4];
    s.read_exact(&mut header).expect("read header");
    let len = u32::from_be_bytes(header) as usize;
    assert!(len > 0 && len < 4096, "implausible welcome length {len}");
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).expect("read payload");
    let v: serde_json::Value = serde_json::from_slice(&payload).expect("payload is JSON");
    assert!(v.is_object());
    assert_eq!(v["type"], "welcome");
}
