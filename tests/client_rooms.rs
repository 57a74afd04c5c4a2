//! The client's rooms, direct messages and paging (SPEC §7): first against a fake
//! server that speaks the frames of §7 (so these run whatever the real server does
//! yet), then end to end against the real server.

mod client_support;
mod common;

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use client_support::{client_args, now_ms, run_script, FakeConn, FakeServer, Tty};
use serde_json::{json, Value};

/// A token file in a fresh temporary folder.
fn token_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    (dir, path)
}

/// Answers like a server with rooms, for `me`, until the client leaves: `join`
/// (`room` then the room's `history`), `part`, `rooms`, `who`, `history` pages (ids
/// 1-3 before anything else), and `say` echoed with its `room` or `to`. Every request
/// is recorded.
fn serve_rooms(conn: &mut FakeConn, me: &str, requests: &Mutex<Vec<Value>>) {
    let mut id = 100;
    while let Some(request) = conn.recv() {
        requests.lock().unwrap().push(request.clone());
        match request["type"].as_str().unwrap_or("") {
            "resume" | "login" | "register" => {
                conn.auth_ok(me);
                conn.send(&json!({"type":"history","room":"lobby","messages":[]}));
            }
            "join" => {
                let room = request["room"].as_str().unwrap_or("").to_lowercase();
                conn.send(&json!({"type":"room","room":room,"members":["bob",me]}));
                conn.send(&json!({"type":"history","room":room,"messages":[
                    {"type":"message","id":7,"room":room,"from":"bob","text":"earlier","ts":now_ms()}
                ]}));
            }
            "part" => conn.send(&json!({"type":"parted","room":request["room"]})),
            "rooms" => conn.send(&json!({"type":"rooms","rooms":[
                {"room":"lobby","members":2,"member":true},
                {"room":"rust","members":1,"member":false}
            ]})),
            "who" => conn.send(&json!({"type":"who","room":request["room"],"users":[me]})),
            "history" => {
                let before = request["before"].as_u64().unwrap_or(u64::MAX);
                let page: Vec<Value> = (1..4u64)
                    .filter(|&i| i < before)
                    .map(|i| json!({"type":"message","id":i,"room":request["room"],"from":"bob","text":format!("page {i}"),"ts":now_ms()}))
                    .collect();
                conn.send(&json!({"type":"history","room":request["room"],"messages":page}));
            }
            "say" => {
                id += 1;
                // A slow echo: the client must wait for it before quitting.
                thread::sleep(Duration::from_millis(200));
                let mut echo = json!({"type":"message","id":id,"from":me,"text":request["text"],"ts":now_ms()});
                if let Some(to) = request["to"].as_str() {
                    if to.eq_ignore_ascii_case("nobody") {
                        conn.send(
                            &json!({"type":"error","code":"unknown_user","message":"no such user"}),
                        );
                        continue;
                    }
                    echo["to"] = json!(to.to_lowercase());
                } else {
                    echo["room"] = request.get("room").cloned().unwrap_or(json!("lobby"));
                }
                conn.send(&echo);
            }
            "ping" => conn.send(&json!({"type":"pong"})),
            "quit" | "logout" => return,
            _ => {}
        }
    }
}

/// A fake server with rooms; the requests it got.
fn rooms_server(me: &'static str) -> (FakeServer, Arc<Mutex<Vec<Value>>>) {
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&requests);
    let server = FakeServer::start(move |_, mut conn| {
        conn.welcome(None);
        serve_rooms(&mut conn, me, &seen);
    });
    (server, requests)
}

fn of_type(requests: &Mutex<Vec<Value>>, kind: &str) -> Vec<Value> {
    requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r["type"] == kind)
        .cloned()
        .collect()
}

#[test]
fn scripted_lines_go_to_the_lobby_until_a_join_then_to_the_room() {
    let (server, requests) = rooms_server("zed");
    let (_dir, tokens) = token_file();
    let run = run_script(
        &client_args(server.port(), &tokens, &[]),
        &[],
        "zed\npassword1\nin the lobby\n/join Rust\nin rust\n/msg Bob psst\n",
    );
    run.assert_success();
    let says = of_type(&requests, "say");
    assert_eq!(says.len(), 3, "{says:?}");
    assert_eq!(says[0], json!({"type":"say","text":"in the lobby"}));
    assert_eq!(
        says[1],
        json!({"type":"say","text":"in rust","room":"rust"})
    );
    assert_eq!(says[2], json!({"type":"say","text":"psst","to":"Bob"}));
    assert_eq!(
        of_type(&requests, "join"),
        [json!({"type":"join","room":"Rust"})]
    );
    // Every echo came before the quit, and stdout has only chat lines.
    let stdout: Vec<&str> = run
        .stdout
        .lines()
        .map(|l| &l[l.find("] ").unwrap() + 2..])
        .collect();
    assert_eq!(
        stdout,
        [
            "zed: in the lobby",
            "bob: earlier",
            "zed: in rust",
            "(direct to bob) zed: psst"
        ],
        "{run:#?}"
    );
    assert!(run.stderr.contains("you joined #rust"), "{run:#?}");
}

#[test]
fn scripted_room_commands_answer_on_stderr() {
    let (server, requests) = rooms_server("zed");
    let (_dir, tokens) = token_file();
    let run = run_script(
        &client_args(server.port(), &tokens, &["--name", "zed"]),
        &[],
        "password1\n/rooms\n/join rust\n/who\n/history\n/history\n/part\n/part\n/who\nback\n",
    );
    run.assert_success();
    let stderr = &run.stderr;
    for expected in [
        "* rooms (2):",
        "#rust  1 member",
        "* online in #rust (1): zed",
        "* 3 earlier messages in #rust:",
        "* no earlier messages in #rust",
        "* you left #rust",
        "The lobby cannot be left",
        "* online (1): zed",
    ] {
        assert!(stderr.contains(expected), "{expected:?}: {run:#?}");
    }
    let pages = of_type(&requests, "history");
    assert_eq!(pages[0], json!({"type":"history","room":"rust","before":7}));
    assert_eq!(pages[1], json!({"type":"history","room":"rust","before":1}));
    assert_eq!(
        of_type(&requests, "part"),
        [json!({"type":"part","room":"rust"})]
    );
    assert_eq!(
        of_type(&requests, "who"),
        [json!({"type":"who","room":"rust"}), json!({"type":"who"})]
    );
    assert_eq!(
        of_type(&requests, "say"),
        [json!({"type":"say","text":"back"})]
    );
    let texts: Vec<&str> = run
        .stdout
        .lines()
        .map(|l| &l[l.find("] ").unwrap() + 2..])
        .collect();
    assert_eq!(
        texts,
        [
            "bob: earlier",
            "bob: page 1",
            "bob: page 2",
            "bob: page 3",
            "zed: back"
        ]
    );
}

#[test]
fn scripted_direct_message_to_nobody_fails_the_run_with_a_sentence() {
    let (server, _) = rooms_server("zed");
    let (_dir, tokens) = token_file();
    let run = run_script(
        &client_args(server.port(), &tokens, &["--name", "zed"]),
        &[],
        "password1\n/msg nobody hello\nstill here\n",
    );
    assert_ne!(run.code, Some(0), "{run:#?}");
    assert!(
        run.stderr
            .contains("Not sent ('hello'): there is no account named 'nobody'."),
        "{run:#?}"
    );
    assert!(run.stdout.contains("zed: still here"), "{run:#?}");
}

#[test]
fn lines_from_other_rooms_and_direct_messages_are_marked_on_stdout() {
    let server = FakeServer::start(|_, mut conn| {
        conn.welcome(None);
        if conn.recv().is_none() {
            return;
        }
        conn.auth_ok("zed");
        let ts = now_ms();
        conn.send(&json!({"type":"history","room":"lobby","messages":[
            {"type":"message","id":1,"from":"bob","text":"old lobby","ts":ts}]}));
        conn.send(&json!({"type":"history","room":"Rust","messages":[
            {"type":"message","id":2,"room":"Rust","from":"bob","text":"old rust","ts":ts}]}));
        conn.send(&json!({"type":"history","direct":true,"messages":[
            {"type":"message","id":3,"to":"zed","from":"bob","text":"old dm","ts":ts}]}));
        conn.send(&json!({"type":"member_joined","room":"Rust","name":"amy"}));
        conn.send(&json!({"type":"member_left","room":"Rust","name":"amy"}));
        conn.send(
            &json!({"type":"message","id":4,"room":"Rust","from":"amy","text":"hi rust","ts":ts}),
        );
        conn.send(
            &json!({"type":"message","id":5,"to":"zed","from":"amy","text":"hi zed","ts":ts}),
        );
        conn.serve_as("zed");
    });
    let (_dir, tokens) = token_file();
    // The `/who` is answered after the frames above, and the run ends only then.
    let run = run_script(
        &client_args(server.port(), &tokens, &["--name", "zed"]),
        &[],
        "password1\n/who\n",
    );
    run.assert_success();
    let texts: Vec<&str> = run
        .stdout
        .lines()
        .map(|l| &l[l.find("] ").unwrap() + 2..])
        .collect();
    assert_eq!(
        texts,
        [
            "bob: old lobby",
            "#Rust bob: old rust",
            "(direct) bob: old dm",
            "* amy joined #Rust",
            "* amy left #Rust",
            "#Rust amy: hi rust",
            "(direct) amy: hi zed",
        ],
        "{run:#?}"
    );
}

/// Lets `zed` in on `conn` (any authentication) and replays the lobby and `rust`,
/// whose history holds `rust_history` (texts of zed's, ids from 10).
fn let_in_with_rust(conn: &mut FakeConn, rust_history: &[&str]) -> Option<()> {
    conn.welcome(None);
    conn.recv()?;
    conn.auth_ok("zed");
    conn.send(&json!({"type":"history","room":"lobby","messages":[]}));
    let messages: Vec<Value> = rust_history
        .iter()
        .enumerate()
        .map(|(i, text)| json!({"type":"message","id":10 + i,"room":"rust","from":"zed","text":text,"ts":now_ms()}))
        .collect();
    conn.send(&json!({"type":"history","room":"rust","messages":messages}));
    Some(())
}

/// A script that joins `rust` and says `one`, `two`, `three` there, against a server
/// that drops the first connection when `two` arrives (after storing it when
/// `stored`); the says the second connection got.
fn reconnect_in_a_room(stored: bool) -> (client_support::ScriptRun, Vec<Value>) {
    let later = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&later);
    let server = FakeServer::start(move |index, mut conn| {
        if index == 0 {
            if let_in_with_rust(&mut conn, &[]).is_none() {
                return;
            }
            while let Some(request) = conn.recv() {
                match request["type"].as_str().unwrap_or("") {
                    "join" => {
                        conn.send(&json!({"type":"room","room":"rust","members":["zed"]}));
                        conn.send(&json!({"type":"history","room":"rust","messages":[]}));
                    }
                    "ping" => conn.send(&json!({"type":"pong"})),
                    "say" if request["text"] == "two" => return,
                    "say" => conn.send(&json!({"type":"message","id":10,"room":"rust","from":"zed","text":request["text"],"ts":now_ms()})),
                    _ => {}
                }
            }
            return;
        }
        let history: &[&str] = if stored { &["one", "two"] } else { &["one"] };
        if let_in_with_rust(&mut conn, history).is_none() {
            return;
        }
        let mut id = 20;
        while let Some(request) = conn.recv() {
            match request["type"].as_str().unwrap_or("") {
                "say" => {
                    seen.lock().unwrap().push(request.clone());
                    id += 1;
                    let room = request.get("room").cloned().unwrap_or(json!("lobby"));
                    conn.send(&json!({"type":"message","id":id,"room":room,"from":"zed","text":request["text"],"ts":now_ms()}));
                }
                "ping" => conn.send(&json!({"type":"pong"})),
                "quit" => return,
                _ => {}
            }
        }
    });
    let (_dir, tokens) = token_file();
    let run = run_script(
        &client_args(server.port(), &tokens, &["--name", "zed"]),
        &[],
        "password1\n/join rust\none\ntwo\nthree\n",
    );
    let says = later.lock().unwrap().clone();
    (run, says)
}

#[test]
fn after_a_reconnection_the_current_room_is_kept_and_a_lost_say_resent_there() {
    let (run, says) = reconnect_in_a_room(false);
    run.assert_success();
    assert_eq!(
        says,
        [
            json!({"type":"say","text":"two","room":"rust"}),
            json!({"type":"say","text":"three","room":"rust"})
        ],
        "{run:#?}"
    );
    assert!(run.stderr.contains("Reconnected"), "{run:#?}");
}

#[test]
fn after_a_reconnection_a_say_the_rooms_history_shows_is_not_sent_twice() {
    let (run, says) = reconnect_in_a_room(true);
    run.assert_success();
    assert_eq!(
        says,
        [json!({"type":"say","text":"three","room":"rust"})],
        "{run:#?}"
    );
    let texts: Vec<&str> = run
        .stdout
        .lines()
        .map(|l| &l[l.find("] ").unwrap() + 2..])
        .collect();
    assert_eq!(texts, ["zed: one", "zed: two", "zed: three"], "{run:#?}");
}

#[test]
fn the_terminal_prompt_shows_the_current_room() {
    let (server, _) = rooms_server("zed");
    let (_dir, tokens) = token_file();
    let mut tty = Tty::spawn(
        &client_args(server.port(), &tokens, &["--name", "zed"]),
        &[],
    );
    tty.expect("Password: ");
    tty.send("password1\r");
    tty.expect("#lobby zed> ");
    // A burst: the join and a line typed before its answer came back.
    tty.send("/join rust\rhello rust\r/msg bob psst\r");
    tty.wait_screen("the room in the prompt", |s| s.contains("#rust zed> "));
    tty.wait_screen("the echo in the room", |s| s.contains("] zed: hello rust"));
    tty.wait_screen("the direct message", |s| {
        s.contains("] (direct to bob) zed: psst")
    });
    tty.send("/part\r");
    tty.wait_screen("back in the lobby", |s| {
        s.contains("* you left #rust") && s.contains("#lobby zed> ") && !s.contains("#rust zed> ")
    });
    tty.send("/quit\r");
    assert_eq!(tty.wait_exit(), 0);
}

// ---- Against the real server --------------------------------------------------

/// A scripted run of the real client against `server`.
fn script(
    server: &common::TestServer,
    tokens: &std::path::Path,
    input: &str,
) -> client_support::ScriptRun {
    run_script(&client_args(server.port(), tokens, &[]), &[], input)
}

/// The `from: text` part of each stdout line.
fn chat_of(run: &client_support::ScriptRun) -> Vec<String> {
    run.stdout
        .lines()
        .filter_map(|l| l.find("] ").map(|i| l[i + 2..].to_string()))
        .collect()
}

#[test]
fn real_server_rooms_and_direct_messages_end_to_end() {
    let server = common::TestServer::start();
    let (_a, alice_tokens) = token_file();
    let (_b, bob_tokens) = token_file();
    let alice = common::unique_name("alice");
    let bob = common::unique_name("bob");
    script(&server, &bob_tokens, &format!("{bob}\npassword1\n")).assert_success();
    let run = script(
        &server,
        &alice_tokens,
        &format!("{alice}\npassword1\nin the lobby\n/join rust\nin rust\n/msg {bob} psst\n"),
    );
    run.assert_success();
    assert_eq!(
        chat_of(&run),
        [
            format!("{alice}: in the lobby"),
            format!("{alice}: in rust"),
            format!("(direct to {bob}) {alice}: psst"),
        ],
        "{run:#?}"
    );
    // Bob sees the lobby line, then (after joining) the room's, and the direct message.
    let run = script(&server, &bob_tokens, "/join rust\n/who\n");
    run.assert_success();
    let chat = chat_of(&run);
    for expected in [
        format!("{alice}: in the lobby"),
        format!("(direct) {alice}: psst"),
        format!("{alice}: in rust"),
    ] {
        assert!(chat.contains(&expected), "{expected:?}: {run:#?}");
    }
    assert!(
        run.stderr
            .contains(&format!("* online in #rust (1): {bob}")),
        "{run:#?}"
    );
    // Membership is the account's: the next start replays the room, marked.
    let run = script(&server, &alice_tokens, "/rooms\n");
    run.assert_success();
    assert!(
        chat_of(&run).contains(&format!("#rust {alice}: in rust")),
        "{run:#?}"
    );
    assert!(
        run.stderr.contains("#rust  2 members, you are in it"),
        "{run:#?}"
    );
}

#[test]
fn real_server_history_pages_back_through_the_room() {
    let server = common::TestServer::start_with(&["--history", "3", "--msg-rate", "0"]);
    let (_dir, tokens) = token_file();
    let name = common::unique_name("pat");
    let lines: Vec<String> = (1..=60).map(|i| format!("line {i}")).collect();
    script(
        &server,
        &tokens,
        &format!("{name}\npassword1\n{}\n", lines.join("\n")),
    )
    .assert_success();
    let run = script(&server, &tokens, "/history\n/history\n/history\n");
    run.assert_success();
    let texts: Vec<String> = chat_of(&run)
        .into_iter()
        .map(|l| l.split_once(": ").map(|(_, t)| t.to_string()).unwrap_or(l))
        .collect();
    // The login shows the last 3; each page is the 50 before the oldest shown.
    let expected: Vec<&str> = (58..=60)
        .chain(8..=57)
        .chain(1..=7)
        .map(|i| lines[i - 1].as_str())
        .collect();
    assert_eq!(texts, expected, "{run:#?}");
    assert!(
        run.stderr.contains("* 50 earlier messages in #lobby:"),
        "{run:#?}"
    );
    assert!(
        run.stderr.contains("* 7 earlier messages in #lobby:"),
        "{run:#?}"
    );
    assert!(
        run.stderr.contains("no earlier messages in #lobby"),
        "{run:#?}"
    );
}

#[test]
fn real_server_refusals_read_as_sentences() {
    let server = common::TestServer::start();
    let (_dir, tokens) = token_file();
    let name = common::unique_name("ref");
    let run = script(
        &server,
        &tokens,
        &format!("{name}\npassword1\n/part nowhere\n/msg nobody{name} hi\n"),
    );
    assert_ne!(run.code, Some(0), "a message was refused: {run:#?}");
    assert!(
        run.stderr.contains("There is no room #nowhere."),
        "{run:#?}"
    );
    assert!(
        run.stderr
            .contains(&format!("there is no account named 'nobody{name}'")),
        "{run:#?}"
    );
}
