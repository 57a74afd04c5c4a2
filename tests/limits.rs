//! Limits (SPEC §6): connection caps, the message rate, the authentication and idle
//! timeouts, and the send queue that cuts off a client that stopped reading. A
//! connection closed for a limit gets no frame, just the close.

mod common;

use common::*;
use serde_json::json;
use socket2::{Domain, Socket, Type};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PW: &str = "secret-pw";

/// Connects to `server` from the local address `from` (any of 127.0.0.0/8 works on
/// Linux), optionally with a small receive buffer.
fn connect_socket(server: SocketAddr, from: IpAddr, recv_buffer: Option<usize>) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
    }
    socket
        .bind(&SocketAddr::new(from, 0).into())
        .unwrap_or_else(|e| panic!("bind {from}: {e}"));
    socket
        .connect_timeout(&server.into(), RECV_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to {server} from {from}: {e}"));
    socket.into()
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// Waits until a new connection is greeted again (the server notices a departure
/// asynchronously), retrying refused attempts until the deadline.
fn connect_until_greeted(server: &TestServer) -> TestClient {
    let deadline = Instant::now() + RECV_TIMEOUT;
    loop {
        let mut c = server.connect();
        match c.next_event(RECV_TIMEOUT) {
            Event::Frame(v) if v["type"] == "welcome" => return c,
            Event::Frame(v) => panic!("expected welcome, got {v}"),
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            other => panic!("never greeted again: {other:?}"),
        }
    }
}

#[test]
fn max_conns_closes_further_connections_at_once() {
    let server = TestServer::start_with(&["--max-conns", "2"]);
    let (mut a, _) = registered(&server, "ann", PW);
    let _lurker = server.connect_greeted();
    let mut extra = server.connect();
    let frames = extra.expect_closed(RECV_TIMEOUT);
    assert!(frames.is_empty(), "no welcome, no frame: {frames:?}");
    // The ones inside are unaffected.
    a.ping();
    a.say("still fine");
    // When one leaves, there is room again.
    a.send(&json!({"type":"quit"}));
    a.expect_closed(RECV_TIMEOUT);
    let mut again = connect_until_greeted(&server);
    again.login("ann", PW);
}

#[test]
fn max_conns_per_ip_counts_each_address_apart() {
    let server = TestServer::start_with(&["--max-conns-per-ip", "2"]);
    let _a = server.connect_greeted();
    let _b = server.connect_greeted();
    let mut third = server.connect();
    let frames = third.expect_closed(RECV_TIMEOUT);
    assert!(frames.is_empty(), "no welcome, no frame: {frames:?}");
    // Another address still gets in.
    let mut other = TestClient::from_stream(connect_socket(server.addr(), loopback(2), None));
    other.welcome();
    other.register("fromtwo", PW);
}

#[test]
fn known_name_is_per_ip_address() {
    let server = TestServer::start();
    registered(&server, "ann", PW);
    let mut here = server.connect();
    assert_eq!(here.welcome()["known_name"], "ann");
    let mut elsewhere = TestClient::from_stream(connect_socket(server.addr(), loopback(3), None));
    let w = elsewhere.welcome();
    assert_eq!(w["known_name"], serde_json::Value::Null, "{w}");
    elsewhere.register("bea", PW);
    let mut again = TestClient::from_stream(connect_socket(server.addr(), loopback(3), None));
    assert_eq!(again.welcome()["known_name"], "bea");
    let mut here = server.connect();
    assert_eq!(here.welcome()["known_name"], "ann");
}

#[test]
fn login_rate_is_per_ip_address() {
    let server = TestServer::start_with(&["--login-rate", "2"]);
    let bogus = json!({"type":"resume","token":"bogus"});
    let mut c = server.connect_greeted();
    for _ in 0..2 {
        c.send(&bogus);
        assert_eq!(c.expect_auth_error(), "invalid_token");
    }
    c.send(&bogus);
    assert_eq!(c.expect_auth_error(), "rate_limited");
    let mut other = TestClient::from_stream(connect_socket(server.addr(), loopback(4), None));
    other.welcome();
    other.send(&bogus);
    assert_eq!(other.expect_auth_error(), "invalid_token");
}

#[test]
fn msg_rate_drops_a_burst_over_the_limit() {
    let server = TestServer::start_with(&["--msg-rate", "2"]);
    let (mut a, _) = registered(&server, "ann", PW);
    let (mut b, _) = registered(&server, "bea", PW);
    a.recv_type("joined");
    let mut burst = Vec::new();
    for i in 0..10 {
        burst.extend(frame(
            json!({"type":"say","text":format!("burst {i}")})
                .to_string()
                .as_bytes(),
        ));
    }
    a.send_raw(&burst);
    let mut delivered = Vec::new();
    let mut limited = 0;
    for _ in 0..10 {
        let f = a.recv();
        match f["type"].as_str() {
            Some("message") => delivered.push(f),
            Some("error") => {
                assert_eq!(f["code"], "rate_limited", "{f}");
                assert!(f["message"].is_string(), "{f}");
                limited += 1;
            }
            _ => panic!("unexpected frame {f}"),
        }
    }
    assert!(
        limited >= 1,
        "10 says at once with --msg-rate 2: none refused"
    );
    assert!(
        delivered.len() >= 2,
        "a burst of at least the rate goes through: {delivered:?}"
    );
    // Dropped means dropped: the others see exactly what the sender got back.
    for m in &delivered {
        assert_eq!(&b.recv(), m);
    }
    b.expect_silence(QUIET);
    // The connection stays open, and the limit refills with time.
    a.ping();
    std::thread::sleep(Duration::from_millis(1500));
    a.say("after a pause");
}

#[test]
fn msg_rate_zero_is_unlimited() {
    let server = TestServer::start_with(&["--msg-rate", "0"]);
    let (mut a, _) = registered(&server, "ann", PW);
    let mut burst = Vec::new();
    for i in 0..200 {
        burst.extend(frame(
            json!({"type":"say","text":format!("m{i}")})
                .to_string()
                .as_bytes(),
        ));
    }
    a.send_raw(&burst);
    for i in 0..200 {
        let m = a.recv();
        assert_eq!(m["type"], "message", "{m}");
        assert_eq!(m["text"], format!("m{i}"));
    }
}

#[test]
fn auth_timeout_closes_an_unauthenticated_connection() {
    let server = TestServer::start_with(&["--auth-timeout", "1"]);
    let mut c = server.connect_greeted();
    // Pings do not count as authenticating.
    c.ping();
    let frames = c.expect_closed(RECV_TIMEOUT);
    assert!(frames.is_empty(), "closed without a frame: {frames:?}");
}

#[test]
fn auth_timeout_spares_authenticated_connections() {
    let server = TestServer::start_with(&["--auth-timeout", "1"]);
    let (mut a, _) = registered(&server, "ann", PW);
    a.expect_silence(Duration::from_millis(2500));
    a.say("still here");
}

#[test]
fn idle_timeout_closes_a_stalled_half_frame() {
    let server = TestServer::start_with(&["--idle-timeout", "1"]);
    let mut c = server.connect_greeted();
    // Two bytes of a header, then nothing.
    c.send_raw(&[0, 0]);
    let frames = c.expect_closed(RECV_TIMEOUT);
    assert!(frames.is_empty(), "closed without a frame: {frames:?}");
}

#[test]
fn idle_timeout_closes_a_silent_authenticated_session() {
    let server = TestServer::start_with(&["--idle-timeout", "1"]);
    let (mut quiet, _) = registered(&server, "ann", PW);
    let (mut busy, _) = registered(&server, "wat", PW);
    // `busy` keeps pinging while `quiet` sends nothing (receiving does not count).
    let deadline = Instant::now() + RECV_TIMEOUT;
    loop {
        busy.send(&json!({"type":"ping"}));
        match quiet.next_event(Duration::from_millis(300)) {
            Event::Closed => break,
            Event::Frame(f) => assert!(
                f["type"] == "joined" || f["type"] == "message",
                "closed without an error frame: {f}"
            ),
            Event::Timeout => {}
        }
        assert!(Instant::now() < deadline, "idle session never closed");
    }
    busy.recv_matching("left ann", |f| f["type"] == "left" && f["name"] == "ann");
    assert_eq!(busy.who(), vec!["wat"]);
}

#[test]
fn pings_keep_an_idle_connection_alive() {
    let server = TestServer::start_with(&["--idle-timeout", "1"]);
    let mut c = server.connect_greeted();
    // Three seconds of pings every 300 ms: well past the timeout in total.
    for _ in 0..10 {
        c.ping();
        std::thread::sleep(Duration::from_millis(300));
    }
    c.ping();
    c.register("alive", PW);
}

#[test]
fn limits_are_off_at_zero() {
    let server = TestServer::start_with(&[
        "--max-conns",
        "0",
        "--max-conns-per-ip",
        "0",
        "--auth-timeout",
        "0",
        "--idle-timeout",
        "0",
    ]);
    let clients: Vec<TestClient> = (0..5).map(|_| server.connect_greeted()).collect();
    let mut c = server.connect_greeted();
    c.expect_silence(Duration::from_millis(1500));
    c.ping();
    drop(clients);
}

#[test]
fn a_client_that_stops_reading_is_cut_off_and_the_others_get_everything() {
    let server = TestServer::start_with(&["--send-queue", "65536", "--msg-rate", "0"]);
    // The slow reader: a tiny receive buffer, and it never reads after logging in.
    let mut slow = TestClient::from_stream(connect_socket(server.addr(), loopback(1), Some(4096)));
    slow.welcome();
    slow.register("slow", PW);

    let (mut reader, _) = registered(&server, "reader", PW);
    let (mut sender, _) = registered(&server, "sender", PW);
    reader.recv_type("joined");

    let slow_left = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&slow_left);
    let reader_thread = std::thread::spawn(move || {
        let mut texts = Vec::new();
        let mut ids = Vec::new();
        loop {
            let f = reader.recv();
            match f["type"].as_str() {
                Some("message") => {
                    let text = f["text"].as_str().unwrap().to_string();
                    ids.push(f["id"].as_u64().unwrap());
                    if text == "END" {
                        return (texts, ids);
                    }
                    texts.push(text);
                }
                Some("left") if f["name"] == "slow" => flag.store(true, Ordering::SeqCst),
                _ => panic!("reader got an unexpected frame {f}"),
            }
        }
    });

    let body = "z".repeat(990);
    let mut sent = Vec::new();
    const BATCH: usize = 50;
    const MAX: usize = 20_000;
    while sent.len() < 2000 || (!slow_left.load(Ordering::SeqCst) && sent.len() < MAX) {
        let mut wire = Vec::new();
        for _ in 0..BATCH {
            let text = format!("{:05}{body}", sent.len());
            wire.extend(frame(
                json!({"type":"say","text":text}).to_string().as_bytes(),
            ));
            sent.push(text);
        }
        sender.send_raw(&wire);
        let mut echoes = 0;
        while echoes < BATCH {
            let f = sender.recv();
            match f["type"].as_str() {
                Some("message") => echoes += 1,
                Some("left") if f["name"] == "slow" => {}
                _ => panic!("sender got an unexpected frame {f}"),
            }
        }
    }
    sender.say("END");
    let (texts, ids) = reader_thread.join().expect("reader thread");
    assert!(
        slow_left.load(Ordering::SeqCst),
        "the slow reader was never cut off after {} messages",
        sent.len()
    );
    assert_eq!(texts.len(), sent.len(), "the reader missed messages");
    assert!(texts == sent, "the reader got the messages out of order");
    for pair in ids.windows(2) {
        assert_eq!(pair[1], pair[0] + 1);
    }
    // The slow connection is closed (after whatever was already in its socket).
    slow.expect_closed(Duration::from_secs(60));
}

#[test]
fn limits_are_readable_from_environment_variables() {
    let server = TestServer::launch(Launch {
        env: &[("ECHOCHAT_MAX_CONNS", "1")],
        ..Launch::default()
    });
    let _inside = server.connect_greeted();
    let mut extra = server.connect();
    let frames = extra.expect_closed(RECV_TIMEOUT);
    assert!(frames.is_empty(), "ECHOCHAT_MAX_CONNS=1: {frames:?}");
}
