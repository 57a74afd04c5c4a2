//! Rooms, direct messages and paged history (SPEC §7), against the real server.

mod common;

use std::fs;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const PW: &str = "rooms-password";

/// Registers `name` and reads its `auth_ok` and its `history` frame(s).
fn user(server: &TestServer, name: &str) -> TestClient {
    let mut c = server.connect_greeted();
    c.register(name, PW);
    c
}

/// Another connection of an existing user, after its login frames.
fn device(server: &TestServer, name: &str, histories: usize) -> (TestClient, Vec<Value>) {
    let mut c = server.connect_greeted();
    c.send(&json!({"type":"login","name":name,"password":PW}));
    let ok = c.recv();
    assert_eq!(ok["type"], "auth_ok", "{ok}");
    let frames = (0..histories).map(|_| got(&mut c, "history")).collect();
    (c, frames)
}

/// Joins `room`; returns the `room` frame and the `history` frame.
fn join(c: &mut TestClient, room: &str) -> (Value, Value) {
    c.send(&json!({"type":"join","room":room}));
    let room_frame = got(c, "room");
    let history = got(c, "history");
    (room_frame, history)
}

/// Sends `say` with extra fields; returns the echo (or the error).
fn say(c: &mut TestClient, fields: Value) -> Value {
    let mut msg = json!({"type":"say"});
    for (k, v) in fields.as_object().unwrap() {
        msg[k] = v.clone();
    }
    let text = msg["text"].clone();
    c.send(&msg);
    c.recv_matching("echo or error", |v| {
        (v["type"] == "message" && v["text"] == text) || v["type"] == "error"
    })
}

fn error_code(c: &mut TestClient, msg: Value) -> String {
    c.send(&msg);
    let error = got(c, "error");
    error["code"].as_str().unwrap().to_string()
}

/// Asserts that nothing but `joined`/`left` news arrives for a while.
fn expect_nothing_but_presence(c: &mut TestClient) {
    while let Some(frame) = c.try_recv(QUIET) {
        assert!(
            frame["type"] == "joined" || frame["type"] == "left",
            "unexpected {frame}"
        );
    }
}

/// The next frame of type `ty`, setting aside others (presence news, for one).
fn got(c: &mut TestClient, ty: &str) -> Value {
    c.recv_matching(ty, |v| v["type"] == ty)
}

fn texts(history: &Value) -> Vec<String> {
    history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn join_creates_a_room_and_answers_its_members_and_history() {
    let server = TestServer::start();
    let mut ann = user(&server, "Ann");
    let (room, history) = join(&mut ann, "Rust-Fans");
    assert_eq!(
        room,
        json!({"type":"room","room":"Rust-Fans","members":["Ann"]})
    );
    assert_eq!(history["room"], "Rust-Fans");
    assert_eq!(history["messages"], json!([]));
    // Compared ignoring case, shown as first created.
    let mut bob = user(&server, "bob");
    let (room, _) = join(&mut bob, "RUST-fans");
    assert_eq!(
        room,
        json!({"type":"room","room":"Rust-Fans","members":["Ann","bob"]})
    );
    let joined = got(&mut ann, "member_joined");
    assert_eq!(
        joined,
        json!({"type":"member_joined","room":"Rust-Fans","name":"bob"})
    );
    // Joining again: the same answer, and no member_joined for the others.
    join(&mut bob, "rust-fans");
    expect_nothing_but_presence(&mut ann);
}

#[test]
fn rooms_lists_every_room_sorted_with_counts_and_membership() {
    let server = TestServer::start();
    let mut ann = user(&server, "ann");
    let mut bob = user(&server, "bob");
    join(&mut ann, "zeta");
    join(&mut ann, "Alpha");
    join(&mut bob, "alpha");
    got(&mut ann, "member_joined");
    bob.send(&json!({"type":"rooms"}));
    let rooms = got(&mut bob, "rooms");
    assert_eq!(
        rooms["rooms"],
        json!([
            {"room":"Alpha","members":2,"member":true},
            {"room":"lobby","members":2,"member":true},
            {"room":"zeta","members":1,"member":false},
        ])
    );
}

#[test]
fn room_messages_reach_every_member_connection_and_no_one_else() {
    let server = TestServer::start();
    let mut ann = user(&server, "ann");
    let mut bob = user(&server, "bob");
    let mut eve = user(&server, "eve");
    join(&mut ann, "ops");
    let (mut ann2, _) = device(&server, "ann", 2);
    join(&mut bob, "ops");
    let echo = say(&mut bob, json!({"text":"deploy at five","room":"OPS"}));
    assert_eq!(echo["type"], "message", "{echo}");
    assert_eq!(echo["room"], "ops");
    assert_eq!(echo["from"], "bob");
    assert!(echo.get("to").is_none(), "{echo}");
    for c in [&mut ann, &mut ann2] {
        let got = c.recv_matching("the room message", |v| v["type"] == "message");
        assert_eq!(got, echo);
    }
    // Not a member: nothing.
    expect_nothing_but_presence(&mut eve);
    // Lobby messages now say so.
    let lobby = say(&mut eve, json!({"text":"hello all"}));
    assert_eq!(lobby["room"], "lobby");
}

#[test]
fn saying_in_a_room_needs_it_to_exist_then_membership() {
    let server = TestServer::start();
    let mut ann = user(&server, "ann");
    let mut bob = user(&server, "bob");
    join(&mut ann, "private");
    assert_eq!(
        say(&mut bob, json!({"text":"x","room":"private"}))["code"],
        "not_member"
    );
    assert_eq!(
        say(&mut bob, json!({"text":"x","room":"nowhere"}))["code"],
        "unknown_room"
    );
    assert_eq!(
        say(&mut bob, json!({"text":"x","room":"private","to":"ann"}))["code"],
        "bad_request"
    );
    // The connection stays usable, and nothing was stored.
    bob.ping();
    expect_nothing_but_presence(&mut ann);
}

#[test]
fn join_needs_a_valid_name() {
    let server = TestServer::start();
    let mut ann = user(&server, "ann");
    for bad in ["", "two words", "a@b", "\u{200b}x"] {
        assert_eq!(
            error_code(&mut ann, json!({"type":"join","room":bad})),
            "bad_request",
            "{bad:?}"
        );
    }
    assert_eq!(
        error_code(&mut ann, json!({"type":"join","room":7})),
        "bad_request"
    );
    ann.ping();
}

#[test]
fn part_tells_every_connection_and_the_other_members() {
    let server = TestServer::start();
    let mut ann = user(&server, "ann");
    let mut bob = user(&server, "bob");
    join(&mut ann, "ops");
    join(&mut bob, "ops");
    got(&mut ann, "member_joined");
    let (mut bob2, _) = device(&server, "bob", 2);
    bob.send(&json!({"type":"part","room":"Ops"}));
    assert_eq!(
        got(&mut bob, "parted"),
        json!({"type":"parted","room":"ops"})
    );
    assert_eq!(
        got(&mut bob2, "parted"),
        json!({"type":"parted","room":"ops"})
    );
    assert_eq!(
        got(&mut ann, "member_left"),
        json!({"type":"member_left","room":"ops","name":"bob"})
    );
    // No longer a member: no more room messages, and the errors of §7.
    say(&mut ann, json!({"text":"still here","room":"ops"}));
    expect_nothing_but_presence(&mut bob);
    assert_eq!(
        error_code(&mut bob, json!({"type":"part","room":"ops"})),
        "not_member"
    );
    assert_eq!(
        error_code(&mut bob, json!({"type":"part","room":"void"})),
        "unknown_room"
    );
    assert_eq!(
        error_code(&mut bob, json!({"type":"part","room":"lobby"})),
        "bad_request"
    );
}

#[test]
fn who_in_a_room_lists_its_members_online() {
    let server = TestServer::start();
    let mut ann = user(&server, "ann");
    let mut bob = user(&server, "Bob");
    let _cy = user(&server, "cy");
    join(&mut ann, "ops");
    join(&mut bob, "ops");
    ann.send(&json!({"type":"who","room":"ops"}));
    assert_eq!(
        got(&mut ann, "who"),
        json!({"type":"who","room":"ops","users":["ann","Bob"]})
    );
    ann.send(&json!({"type":"who"}));
    let all = got(&mut ann, "who");
    assert_eq!(all["users"], json!(["ann", "Bob", "cy"]));
    assert!(all.get("room").is_none(), "{all}");
    let mut dee = user(&server, "dee");
    assert_eq!(
        error_code(&mut dee, json!({"type":"who","room":"ops"})),
        "not_member"
    );
    assert_eq!(
        error_code(&mut dee, json!({"type":"who","room":"nope"})),
        "unknown_room"
    );
}

#[test]
fn direct_messages_reach_both_users_on_every_connection() {
    let server = TestServer::start();
    let mut ann = user(&server, "ann");
    let mut bob = user(&server, "Bob");
    let (mut bob2, _) = device(&server, "bob", 1);
    let mut eve = user(&server, "eve");
    let echo = say(&mut ann, json!({"text":"psst","to":"BOB"}));
    assert_eq!(echo["type"], "message", "{echo}");
    assert_eq!(echo["to"], "Bob", "the name as registered");
    assert_eq!(echo["from"], "ann");
    assert!(echo.get("room").is_none(), "{echo}");
    for c in [&mut bob, &mut bob2] {
        assert_eq!(c.recv_matching("the dm", |v| v["type"] == "message"), echo);
    }
    expect_nothing_but_presence(&mut eve);
    // To oneself, and to nobody.
    let me = say(&mut ann, json!({"text":"note to self","to":"ann"}));
    assert_eq!(me["to"], "ann");
    assert_eq!(
        say(&mut ann, json!({"text":"x","to":"ghost"}))["code"],
        "unknown_user"
    );
}

#[test]
fn login_sends_lobby_then_rooms_sorted_then_direct_messages() {
    let server = TestServer::start();
    let mut ann = user(&server, "ann");
    let mut bob = user(&server, "bob");
    join(&mut ann, "zulu");
    join(&mut ann, "Beta");
    say(&mut ann, json!({"text":"in zulu","room":"zulu"}));
    say(&mut ann, json!({"text":"in beta","room":"beta"}));
    say(&mut ann, json!({"text":"in lobby"}));
    // Bob, offline now, gets a direct message that waits for him.
    bob.send(&json!({"type":"quit"}));
    bob.expect_closed(RECV_TIMEOUT);
    say(&mut ann, json!({"text":"while you were out","to":"bob"}));
    let (_, frames) = device(&server, "ann", 4);
    assert_eq!(frames[0]["room"], "lobby");
    assert_eq!(texts(&frames[0]), ["in lobby"]);
    assert_eq!(frames[1]["room"], "Beta");
    assert_eq!(texts(&frames[1]), ["in beta"]);
    assert_eq!(frames[2]["room"], "zulu");
    assert_eq!(frames[3]["direct"], true);
    assert_eq!(texts(&frames[3]), ["while you were out"]);
    let (mut bob, frames) = device(&server, "bob", 2);
    assert_eq!(frames[1]["direct"], true);
    assert_eq!(texts(&frames[1]), ["while you were out"]);
    // No direct messages, no direct frame.
    let (mut cy, _) = (user(&server, "cy"), ());
    expect_nothing_but_presence(&mut cy);
    bob.send(&json!({"type":"ping"}));
    got(&mut bob, "pong");
}

#[test]
fn paging_goes_back_through_the_whole_history_on_disk() {
    let server = TestServer::start_with(&["--history", "5", "--msg-rate", "0"]);
    let mut ann = user(&server, "ann");
    join(&mut ann, "log");
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(
            say(&mut ann, json!({"text":format!("m{i}"),"room":"log"}))["id"]
                .as_u64()
                .unwrap(),
        );
    }
    ann.send(&json!({"type":"history","room":"log"}));
    let latest = got(&mut ann, "history");
    assert_eq!(latest["room"], "log");
    assert_eq!(texts(&latest).len(), 30, "default limit 50");
    ann.send(&json!({"type":"history","room":"log","before":ids[20],"limit":4}));
    assert_eq!(
        texts(&got(&mut ann, "history")),
        ["m16", "m17", "m18", "m19"]
    );
    ann.send(&json!({"type":"history","room":"log","before":ids[2],"limit":10}));
    assert_eq!(texts(&got(&mut ann, "history")), ["m0", "m1"]);
    ann.send(&json!({"type":"history","room":"log","before":ids[0]}));
    assert_eq!(
        got(&mut ann, "history")["messages"],
        json!([]),
        "nothing older"
    );
    // A conversation, by the other's name.
    let _bob = user(&server, "bob");
    for i in 0..3 {
        say(&mut ann, json!({"text":format!("d{i}"),"to":"bob"}));
    }
    ann.send(&json!({"type":"history","with":"BOB","limit":2}));
    let page = got(&mut ann, "history");
    assert_eq!(page["with"], "bob");
    assert_eq!(texts(&page), ["d1", "d2"]);
}

#[test]
fn bad_paging_requests_are_refused_and_the_connection_stays() {
    let server = TestServer::start();
    let mut ann = user(&server, "ann");
    let _bob = user(&server, "bob");
    let mut cy = user(&server, "cy");
    join(&mut cy, "secret");
    for bad in [
        json!({"type":"history","room":"lobby","limit":0}),
        json!({"type":"history","room":"lobby","limit":501}),
        json!({"type":"history","room":"lobby","before":0}),
        json!({"type":"history","room":"lobby","before":-3}),
        json!({"type":"history","room":"lobby","before":"12"}),
        json!({"type":"history","room":"lobby","before":1.5}),
        json!({"type":"history","room":"lobby","with":"bob"}),
    ] {
        assert_eq!(error_code(&mut ann, bad.clone()), "bad_request", "{bad}");
    }
    assert_eq!(
        error_code(&mut ann, json!({"type":"history","room":"secret"})),
        "not_member"
    );
    assert_eq!(
        error_code(&mut ann, json!({"type":"history","room":"nowhere"})),
        "unknown_room"
    );
    assert_eq!(
        error_code(&mut ann, json!({"type":"history","with":"ghost"})),
        "unknown_user"
    );
    ann.send(&json!({"type":"history","room":"lobby","limit":500}));
    got(&mut ann, "history");
}

#[test]
fn rooms_memberships_and_history_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_in(dir.path(), &["--history", "2"]);
    let mut ann = user(&server, "ann");
    join(&mut ann, "Keep");
    for i in 0..5 {
        say(&mut ann, json!({"text":format!("k{i}"),"room":"keep"}));
    }
    drop(ann);
    server.stop();
    let mode = fs::metadata(dir.path().join("rooms.json")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    let server = TestServer::start_in(dir.path(), &["--history", "2"]);
    let (mut ann, frames) = device(&server, "ann", 2);
    assert_eq!(frames[1]["room"], "Keep");
    assert_eq!(texts(&frames[1]), ["k3", "k4"]);
    ann.send(&json!({"type":"history","room":"keep","before":frames[1]["messages"][0]["id"]}));
    assert_eq!(texts(&got(&mut ann, "history")), ["k0", "k1", "k2"]);
    ann.send(&json!({"type":"rooms"}));
    assert_eq!(
        got(&mut ann, "rooms")["rooms"][0],
        json!({"room":"Keep","members":1,"member":true})
    );
}

#[test]
fn a_history_file_from_before_rooms_loads_as_lobby() {
    let dir = tempfile::tempdir().unwrap();
    let old: String = (1..=3)
        .map(|i| {
            format!(r#"{{"type":"message","id":{i},"from":"old","text":"old {i}","ts":1}}"#) + "\n"
        })
        .collect();
    fs::write(dir.path().join("history.jsonl"), old).unwrap();
    let server = TestServer::start_in(dir.path(), &[]);
    let mut ann = server.connect_greeted();
    let ok = ann.register_full("ann", PW);
    let old_texts: Vec<&str> = ok
        .messages
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(old_texts, ["old 1", "old 2", "old 3"]);
    ann.send(&json!({"type":"history","room":"lobby","before":3}));
    assert_eq!(texts(&got(&mut ann, "history")), ["old 1", "old 2"]);
    let next = say(&mut ann, json!({"text":"new"}));
    assert_eq!(next["id"], 4);
}

#[test]
fn direct_messages_belong_to_the_account_not_the_name() {
    let mut server = TestServer::start();
    let mut ann = user(&server, "ann");
    let mut bob = user(&server, "bob");
    say(&mut ann, json!({"text":"for the first bob","to":"bob"}));
    bob.recv_matching("dm", |v| v["type"] == "message");
    server.admin_output("clear-ids");
    drop((ann, bob));
    std::thread::sleep(Duration::from_millis(200));
    let mut bob = server.connect_greeted();
    let ok = bob.register_full("bob", PW);
    assert!(ok.messages.is_empty(), "{:?}", ok.messages);
    // No direct frame follows for the new bob.
    expect_nothing_but_presence(&mut bob);
    let _ann = user(&server, "ann");
    bob.send(&json!({"type":"history","with":"ann"}));
    assert_eq!(got(&mut bob, "history")["messages"], json!([]));
}

#[test]
fn clear_ids_removes_memberships_but_rooms_and_history_stay() {
    let mut server = TestServer::start();
    let mut ann = user(&server, "ann");
    join(&mut ann, "club");
    say(&mut ann, json!({"text":"remember me","room":"club"}));
    server.admin_output("clear-ids");
    let mut bea = user(&server, "bea");
    bea.send(&json!({"type":"rooms"}));
    assert_eq!(
        got(&mut bea, "rooms")["rooms"][0],
        json!({"room":"club","members":0,"member":false})
    );
    let (_, history) = join(&mut bea, "club");
    assert_eq!(texts(&history), ["remember me"]);
}

#[test]
fn the_console_lists_rooms_and_says_in_one() {
    let mut server = TestServer::start();
    let mut ann = user(&server, "ann");
    let _bob = user(&server, "bob");
    join(&mut ann, "Ops");
    let out = server.admin_output("rooms");
    assert_eq!(
        out,
        [
            "lobby (2 members; online: ann, bob)",
            "Ops (1 member; online: ann)"
        ]
    );
    let sent = server.admin_output("say-in ops attention please");
    assert!(sent[0].starts_with("sent message #"), "{sent:?}");
    let got = ann.recv_matching("server in ops", |v| v["type"] == "message");
    assert_eq!(got["from"], "server");
    assert_eq!(got["room"], "Ops");
    assert_eq!(got["text"], "attention please");
    assert_eq!(
        server.admin_output("say-in nowhere hello"),
        ["not sent: there is no room called nowhere"]
    );
}
