//! Chatting (SPEC §3.3): `say` fans out to everyone online including the sender with
//! one server-wide id sequence, `who`, `joined`/`left` on first/last connection, and
//! the history replayed after `auth_ok`.

mod common;

use common::*;
use serde_json::{json, Value};

const PW: &str = "secret-pw";

/// Asserts the frame is a MESSAGE from `from` with `text`, and a plausible timestamp.
fn assert_message(m: &Value, from: &str, text: &str) -> u64 {
    assert_eq!(m["type"], "message", "{m}");
    assert_eq!(m["from"], from, "{m}");
    assert_eq!(m["text"], text, "{m}");
    let ts = m["ts"]
        .as_u64()
        .unwrap_or_else(|| panic!("ts not an integer: {m}"));
    let now = now_ms();
    assert!(
        ts + 60_000 > now && ts < now + 60_000,
        "ts {ts} is not unix milliseconds near now ({now}): {m}"
    );
    m["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("id not an integer: {m}"))
}

#[test]
fn say_reaches_every_online_user_including_the_sender() {
    let server = TestServer::start();
    let (mut a, _) = registered(&server, "ann", PW);
    let (mut b, _) = registered(&server, "bea", PW);
    assert_eq!(a.recv(), json!({"type":"joined","name":"bea"}));
    let (mut c, _) = registered(&server, "cid", PW);
    assert_eq!(a.recv(), json!({"type":"joined","name":"cid"}));
    assert_eq!(b.recv(), json!({"type":"joined","name":"cid"}));

    a.send(&json!({"type":"say","text":"hello all"}));
    let ma = a.recv();
    let mb = b.recv();
    let mc = c.recv();
    let id = assert_message(&ma, "ann", "hello all");
    assert_eq!(ma, mb, "everyone gets the same MESSAGE");
    assert_eq!(ma, mc, "everyone gets the same MESSAGE");

    b.send(&json!({"type":"say","text":"hi ann"}));
    for client in [&mut a, &mut b, &mut c] {
        let m = client.recv();
        let id2 = assert_message(&m, "bea", "hi ann");
        assert_eq!(id2, id + 1, "ids grow by one: {m}");
    }
    let m = c.say("third");
    assert_eq!(m["id"], id + 2);
    assert_message(&a.recv(), "cid", "third");
    assert_message(&b.recv(), "cid", "third");
}

#[test]
fn message_text_round_trips_exactly() {
    let server = TestServer::start();
    let (mut a, _) = registered(&server, "ann", PW);
    let (mut b, _) = registered(&server, "bea", PW);
    a.recv_type("joined");
    let text =
        "quote \" backslash \\ newline \n tab \t unicode é日😀 <b>&amp;</b> {\"type\":\"x\"}";
    let m = a.say(text);
    assert_message(&m, "ann", text);
    assert_eq!(b.recv(), m);
}

#[test]
fn empty_and_too_long_text_are_bad_request() {
    let server = TestServer::start();
    let (mut a, _) = registered(&server, "ann", PW);
    let (mut b, _) = registered(&server, "bea", PW);
    a.recv_type("joined");
    a.send(&json!({"type":"say","text":""}));
    assert_eq!(a.expect_error(), "bad_request");
    a.send(&json!({"type":"say","text":"x".repeat(4097)}));
    assert_eq!(a.expect_error(), "bad_request");
    a.send(&json!({"type":"say","text":"日".repeat(4097)}));
    assert_eq!(a.expect_error(), "bad_request");
    // Nothing was broadcast.
    b.expect_silence(QUIET);
    // The longest text is 4096 characters, not bytes.
    let longest = "日".repeat(4096);
    let m = a.say(&longest);
    assert_message(&m, "ann", &longest);
    assert_eq!(b.recv(), m);
    let ascii = "y".repeat(4096);
    a.say(&ascii);
    assert_message(&b.recv(), "ann", &ascii);
}

#[test]
fn refused_say_does_not_use_an_id() {
    let server = TestServer::start();
    let (mut a, _) = registered(&server, "ann", PW);
    let first = a.say("one")["id"].as_u64().unwrap();
    a.send(&json!({"type":"say","text":""}));
    assert_eq!(a.expect_error(), "bad_request");
    let second = a.say("two")["id"].as_u64().unwrap();
    assert_eq!(second, first + 1);
}

#[test]
fn all_users_see_one_order_of_concurrent_messages() {
    let server = TestServer::start();
    let (mut a, _) = registered(&server, "ann", PW);
    let (mut b, _) = registered(&server, "bea", PW);
    a.recv_type("joined");
    let (mut c, _) = registered(&server, "cid", PW);
    a.recv_type("joined");
    b.recv_type("joined");
    const N: usize = 30;
    for i in 0..N {
        a.send(&json!({"type":"say","text":format!("a{i}")}));
        b.send(&json!({"type":"say","text":format!("b{i}")}));
    }
    let mut seen: Vec<Vec<(u64, String)>> = Vec::new();
    for client in [&mut a, &mut b, &mut c] {
        let mut got = Vec::new();
        for _ in 0..2 * N {
            let m = client.recv();
            assert_eq!(m["type"], "message", "{m}");
            got.push((
                m["id"].as_u64().unwrap(),
                m["text"].as_str().unwrap().to_string(),
            ));
        }
        seen.push(got);
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0], seen[2]);
    for pair in seen[0].windows(2) {
        assert_eq!(pair[1].0, pair[0].0 + 1, "ids grow by one: {pair:?}");
    }
    // Each sender's messages keep their order.
    let a_texts: Vec<_> = seen[0]
        .iter()
        .filter(|m| m.1.starts_with('a'))
        .map(|m| m.1.clone())
        .collect();
    let expected: Vec<_> = (0..N).map(|i| format!("a{i}")).collect();
    assert_eq!(a_texts, expected);
}

#[test]
fn who_lists_online_users_once_sorted_ignoring_case() {
    let server = TestServer::start();
    let (mut bob, _) = registered(&server, "bob", PW);
    let (_alice, _) = registered(&server, "Alice", PW);
    let (_dave, _) = registered(&server, "Dave", PW);
    let (_carol, _) = registered(&server, "carol", PW);
    // A second connection of bob.
    let mut bob2 = server.connect_greeted();
    bob2.login("bob", PW);
    assert_eq!(bob.who(), vec!["Alice", "bob", "carol", "Dave"]);
    assert_eq!(bob2.who(), vec!["Alice", "bob", "carol", "Dave"]);
}

#[test]
fn who_drops_users_who_left() {
    let server = TestServer::start();
    let (mut a, _) = registered(&server, "ann", PW);
    let (mut b, _) = registered(&server, "bea", PW);
    assert_eq!(a.who(), vec!["ann", "bea"]);
    b.send(&json!({"type":"quit"}));
    b.expect_closed(RECV_TIMEOUT);
    a.recv_matching("left", |v| v["type"] == "left");
    assert_eq!(a.who(), vec!["ann"]);
}

#[test]
fn joined_and_left_only_on_first_and_last_connection() {
    let server = TestServer::start();
    let (mut a, _) = registered(&server, "ann", PW);

    let (mut b1, token) = registered(&server, "bea", PW);
    assert_eq!(a.recv(), json!({"type":"joined","name":"bea"}));

    let mut b2 = server.connect_greeted();
    b2.resume("bea", &token);
    a.expect_silence(QUIET);

    // Neither connection of bea is told about herself.
    b1.expect_silence(QUIET);

    b1.send(&json!({"type":"quit"}));
    b1.expect_closed(RECV_TIMEOUT);
    a.expect_silence(QUIET);
    assert_eq!(a.who(), vec!["ann", "bea"]);

    // The last connection drops without a goodbye.
    drop(b2);
    assert_eq!(a.recv(), json!({"type":"left","name":"bea"}));
}

#[test]
fn left_is_sent_on_logout_and_on_abrupt_close() {
    let server = TestServer::start();
    let (mut a, _) = registered(&server, "ann", PW);
    let (mut b, _) = registered(&server, "bea", PW);
    a.recv_type("joined");
    b.send(&json!({"type":"logout"}));
    b.expect_closed(RECV_TIMEOUT);
    assert_eq!(a.recv(), json!({"type":"left","name":"bea"}));

    let (c, _) = registered(&server, "cid", PW);
    assert_eq!(a.recv(), json!({"type":"joined","name":"cid"}));
    c.stream().shutdown(std::net::Shutdown::Both).unwrap();
    assert_eq!(a.recv(), json!({"type":"left","name":"cid"}));
}

#[test]
fn unauthenticated_connections_get_no_broadcasts() {
    let server = TestServer::start();
    let mut lurker = server.connect_greeted();
    let (mut a, _) = registered(&server, "ann", PW);
    a.say("not for lurkers");
    lurker.expect_silence(QUIET);
    // And they do not count as online.
    assert_eq!(a.who(), vec!["ann"]);
}

#[test]
fn every_connection_of_a_user_gets_messages() {
    let server = TestServer::start();
    let (mut a, _) = registered(&server, "ann", PW);
    let (mut b1, _) = registered(&server, "bea", PW);
    a.recv_type("joined");
    let mut b2 = server.connect_greeted();
    b2.login("bea", PW);
    let m = a.say("to both");
    assert_eq!(b1.recv(), m);
    assert_eq!(b2.recv(), m);
    // A message from one of bea's connections reaches her other one too.
    let m = b1.say("from b1");
    assert_eq!(b2.recv(), m);
    assert_eq!(a.recv(), m);
}

#[test]
fn history_after_auth_holds_the_last_n_messages_oldest_first() {
    let server = TestServer::start_with(&["--history", "3"]);
    let (mut a, _) = registered(&server, "ann", PW);
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(a.say(&format!("msg {i}")));
    }
    let mut b = server.connect_greeted();
    let ok = b.register_full("bea", PW);
    assert_eq!(ok.messages.len(), 3, "history: {:?}", ok.messages);
    for (got, want) in ok.messages.iter().zip(&sent[2..]) {
        assert_eq!(
            got, want,
            "history entries are MESSAGE objects as sent live"
        );
    }
    // Login and resume get it too.
    let mut c = server.connect_greeted();
    let ok = c.login_full("ann", PW);
    assert_eq!(ok.messages, sent[2..].to_vec());
}

#[test]
fn history_holds_fewer_when_fewer_were_sent() {
    let server = TestServer::start();
    let (mut a, token) = registered(&server, "ann", PW);
    let m1 = a.say("first");
    let m2 = a.say("second");
    let mut b = server.connect_greeted();
    let ok = b.resume_full("ann", &token);
    assert_eq!(ok.messages, vec![m1, m2]);
}

#[test]
fn default_history_is_50() {
    // No message rate limit: 55 messages are sent in one burst.
    let server = TestServer::start_with(&["--msg-rate", "0"]);
    let (mut a, _) = registered(&server, "ann", PW);
    for i in 0..55 {
        a.send(&json!({"type":"say","text":format!("m{i}")}));
    }
    let mut last = Value::Null;
    for _ in 0..55 {
        last = a.recv_type("message");
    }
    assert_eq!(last["text"], "m54");
    let mut b = server.connect_greeted();
    let ok = b.register_full("bea", PW);
    assert_eq!(ok.messages.len(), 50);
    assert_eq!(ok.messages[0]["text"], "m5");
    assert_eq!(ok.messages[49], last);
}
