//! Hostile input, crashes and growth: each test here is one way the server was broken
//! from outside, driven against the real binary.

mod common;

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const PW: &str = "hardening-pw";

fn loopback(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

fn auth_error_for(c: &mut TestClient, msg: Value) -> String {
    c.send(&msg);
    c.expect_auth_error()
}

/// Every line of the log starts with a timestamp and a level: nothing a client sent
/// started a line of its own.
fn assert_one_event_per_line(log: &str) {
    for line in log.lines() {
        let well_formed = line.len() > 25
            && line.as_bytes()[4] == b'-'
            && line.as_bytes()[10] == b'T'
            && ["INFO", "WARN", "ERROR", "DEBUG", "TRACE"]
                .iter()
                .any(|level| line[24..].trim_start().starts_with(level));
        assert!(well_formed, "a line that is not an event: {line:?}");
        for bad in ['\r', '\u{85}', '\u{2028}', '\u{2029}', '\u{202e}', '\u{1b}'] {
            assert!(!line.contains(bad), "raw {bad:?} in log line {line:?}");
        }
    }
}

// ---------------------------------------------------------------------------------
// The log

#[test]
fn a_client_cannot_forge_log_lines() {
    let mut server = TestServer::start();
    let forged = "x\n2026-11-21T05:10:59.435Z INFO  registered account admin2 from 10.0.0.1";
    let mut c = server.connect_greeted();
    for ty in [
        forged.to_string(),
        "a\rb".to_string(),
        "line\u{85}next\u{2028}sep\u{2029}".to_string(),
        "admin\u{202e}nimda\u{1b}[2J".to_string(),
    ] {
        c.send(&json!({"type": ty}));
        assert_eq!(c.expect_error(), "bad_request");
    }
    // A name is quoted too when a login fails.
    c.send(&json!({"type":"login","name":"ghost\nregistered account root","password":PW}));
    assert_eq!(c.expect_auth_error(), "unknown_user");
    c.ping();
    let log = server.log_text();
    assert!(log.contains("bad request"), "{log}");
    assert_one_event_per_line(&log);
    assert!(
        !log.lines()
            .any(|l| l.contains("INFO  registered account admin2")),
        "{log}"
    );
    // And `logs` shows the admin no raw control character either.
    let shown = server.admin_output("logs");
    assert!(!shown.is_empty());
    for line in shown {
        assert!(!line.contains('\r') && !line.contains('\u{1b}'), "{line:?}");
    }
}

#[test]
fn garbage_fills_neither_the_log_nor_the_connection_s_patience() {
    let server = TestServer::start();
    let mut c = server.connect_greeted();
    let junk = format!(r#"{{"type":"{}"}}"#, "z".repeat(60_000));
    let mut closed = false;
    let mut answered = 0;
    for _ in 0..200 {
        if c.try_send_raw(&frame(junk.as_bytes())).is_err() {
            closed = true;
            break;
        }
    }
    loop {
        match c.next_event(RECV_TIMEOUT) {
            Event::Frame(f) => {
                assert_eq!(f["type"], "error", "{f}");
                assert!(f["message"].as_str().unwrap().chars().count() <= 300, "{f}");
                answered += 1;
            }
            Event::Closed => {
                closed = true;
                break;
            }
            Event::Timeout => break,
        }
    }
    assert!(closed, "a connection sending only garbage is closed");
    assert!(
        answered >= 20,
        "a few bad requests are answered first ({answered})"
    );
    // 200 × 60 KB was sent; the log holds a few bounded lines about it.
    let log = server.log_text();
    assert!(log.len() < 20_000, "log grew to {} bytes", log.len());
    assert_one_event_per_line(&log);
    // Other clients are not affected.
    let mut other = server.connect_greeted();
    other.ping();
}

#[test]
fn logs_n_reads_only_the_tail_of_a_huge_log() {
    let dir = tempfile::tempdir().unwrap();
    let line = format!("2026-11-21T00:00:00.000Z INFO  {}\n", "padding ".repeat(12));
    let huge: String = line.repeat(64 * 1024 * 1024 / line.len());
    fs::write(dir.path().join("server.log"), huge).unwrap();
    let mut server = TestServer::start_in(dir.path(), &[]);
    let before = server.peak_rss_kib();
    let out = server.admin_output("logs 3");
    assert_eq!(out.len(), 3, "{out:?}");
    assert!(out.iter().any(|l| l.contains("listening on")), "{out:?}");
    let after = server.peak_rss_kib();
    assert!(
        after < before + 16 * 1024,
        "reading 3 lines of a 64 MiB log took the server from {before} KiB to {after} KiB"
    );
}

#[test]
fn an_empty_log_says_so() {
    let mut server = TestServer::start();
    server.admin_output("clear-logs");
    assert_eq!(server.admin_output("logs"), ["(the log is empty)"]);
}

// ---------------------------------------------------------------------------------
// Names

#[test]
fn look_alike_and_invisible_names_are_refused() {
    let server = TestServer::start();
    let (_alice, _) = registered(&server, "Alice", PW);
    let mut c = server.connect_greeted();
    for fake in [
        "Аlice",      // Cyrillic А
        "Alicе",      // Cyrillic е
        "AIice",      // capital I for l
        "A1ice",      // one for l
        "Ａｌｉｃｅ", // fullwidth
        "ALICE",
        "Αlice", // Greek Alpha
    ] {
        assert_eq!(
            auth_error_for(&mut c, json!({"type":"register","name":fake,"password":PW})),
            "name_taken",
            "{fake}"
        );
    }
    for fake in ["ѕerver", "SERVER", "Ѕerver", "Ｓｅｒｖｅｒ"] {
        assert_eq!(
            auth_error_for(&mut c, json!({"type":"register","name":fake,"password":PW})),
            "name_taken",
            "{fake}"
        );
    }
    for invisible in [
        "\u{3164}",
        "al\u{200b}ice",
        "bob\u{202e}",
        "\u{2066}x",
        "e\u{ad}ve",
    ] {
        assert_eq!(
            auth_error_for(
                &mut c,
                json!({"type":"register","name":invisible,"password":PW})
            ),
            "invalid_name",
            "{invisible:?}"
        );
    }
    // Folding is sameness too: the fullwidth name logs in as Alice.
    c.send(&json!({"type":"login","name":"Ａｌｉｃｅ","password":PW}));
    assert_eq!(c.recv_type("auth_ok")["name"], "Alice");
}

// ---------------------------------------------------------------------------------
// Ids

#[test]
fn ids_are_never_given_twice_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_in(dir.path(), &[]);
    let (mut a, _) = registered(&server, "ida", PW);
    let mut last = 0;
    for i in 0..3 {
        last = a.say(&format!("before the crash {i}"))["id"]
            .as_u64()
            .unwrap();
    }
    server.kill_hard();
    // The crash lost the last moments of chat (allowed): here, all of it.
    let _ = fs::remove_file(dir.path().join("history.jsonl"));
    let server = TestServer::start_in(dir.path(), &[]);
    let mut a = server.connect_greeted();
    // (The token may have been lost with the crash's last second: allowed.)
    a.login("ida", PW);
    let id = a.say("after the crash")["id"].as_u64().unwrap();
    assert!(
        id > last,
        "id {id} was already given (last before the crash: {last})"
    );
}

#[test]
fn ids_continue_one_by_one_after_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_in(dir.path(), &[]);
    let (mut a, token) = registered(&server, "idb", PW);
    let last = a.say("one")["id"].as_u64().unwrap();
    server.stop();
    let server = TestServer::start_in(dir.path(), &[]);
    let mut a = server.connect_greeted();
    a.resume("idb", &token);
    assert_eq!(a.say("two")["id"].as_u64().unwrap(), last + 1);
}

#[test]
fn ids_in_history_are_checked_at_start() {
    for (lines, why) in [
        (
            vec![format!(
                r#"{{"type":"message","id":{},"from":"a","text":"x","ts":1}}"#,
                u64::MAX
            )],
            "largest id",
        ),
        (
            vec![
                r#"{"type":"message","id":5,"from":"a","text":"x","ts":1}"#.to_string(),
                r#"{"type":"message","id":4,"from":"a","text":"y","ts":1}"#.to_string(),
            ],
            "does not follow",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        fs::write(dir.path().join("history.jsonl"), &text).unwrap();
        let exit = run_to_exit(dir.path(), &[], START_TIMEOUT);
        assert!(matches!(exit.status, Some(s) if !s.success()), "{why}");
        assert!(exit.stdout.is_empty(), "{}", exit.stdout);
        let stderr = exit.stderr.trim();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("history.jsonl") && stderr.contains(why),
            "{stderr}"
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("history.jsonl")).unwrap(),
            text
        );
    }
}

// ---------------------------------------------------------------------------------
// Accounts and tokens

/// A `users.json` with `n` accounts sharing one (valid) hash of `PW`.
fn write_accounts(dir: &std::path::Path, n: usize) {
    let hash = {
        // A real hash from a throwaway server run.
        let server = TestServer::start();
        let _ = registered(&server, "seed", PW);
        server.stop_and_read_users()["users"]["seed"]["password_hash"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let mut users = serde_json::Map::new();
    for i in 0..n {
        let name = format!("user{i}");
        users.insert(
            name.clone(),
            json!({"name": name, "password_hash": hash, "created_ms": 0}),
        );
    }
    fs::write(
        dir.join("users.json"),
        serde_json::to_vec(&json!({"version":1,"users":users})).unwrap(),
    )
    .unwrap();
}

trait StopAndRead {
    fn stop_and_read_users(self) -> Value;
}

impl StopAndRead for TestServer {
    fn stop_and_read_users(mut self) -> Value {
        self.stop();
        serde_json::from_slice(&fs::read(self.state_dir().join("users.json")).unwrap()).unwrap()
    }
}

#[test]
fn with_many_accounts_a_registration_is_journaled_and_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    write_accounts(dir.path(), 3000);
    let users = dir.path().join("users.json");
    let mut server = TestServer::start_in(dir.path(), &[]);
    let before = fs::metadata(&users).unwrap().modified().unwrap();
    let (_c, _) = registered(&server, "newcomer", PW);
    // Not rewritten for one account; the journal holds it.
    assert_eq!(fs::metadata(&users).unwrap().modified().unwrap(), before);
    let journal = fs::read_to_string(dir.path().join("users.journal")).unwrap();
    assert!(journal.contains("newcomer"), "{journal}");
    server.kill_hard();
    let mut server = TestServer::start_in(dir.path(), &[]);
    server.connect_greeted().login("newcomer", PW);
    server.connect_greeted().login("user2999", PW);
    // Folded into the file a person reads, within a second or two.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !fs::read_to_string(&users).unwrap().contains("newcomer") {
        assert!(
            Instant::now() < deadline,
            "users.json never got the account"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    server.stop();
}

#[test]
fn register_rate_limits_new_accounts_per_address() {
    let server = TestServer::start_with(&["--register-rate", "2"]);
    let mut c = server.connect_greeted();
    c.register("reg1", PW);
    let mut c = server.connect_greeted();
    c.register("reg2", PW);
    let mut c = server.connect_greeted();
    assert_eq!(
        auth_error_for(
            &mut c,
            json!({"type":"register","name":"reg3","password":PW})
        ),
        "rate_limited"
    );
    // Another address may still register, and logging in is not affected.
    let mut other = server.connect_from(loopback(9));
    other.welcome();
    other.register("reg3", PW);
    c.login("reg1", PW);
}

#[test]
fn an_account_keeps_at_most_a_hundred_tokens() {
    let server = TestServer::start_with(&["--auth-rate", "0"]);
    let (_c, first) = registered(&server, "many", PW);
    for _ in 0..110 {
        let mut c = server.connect_greeted();
        c.login("many", PW);
    }
    let mut c = server.connect_greeted();
    assert_eq!(
        auth_error_for(&mut c, json!({"type":"resume","token":first})),
        "invalid_token",
        "the oldest token was revoked"
    );
    let users = server.stop_and_read_users();
    let tokens = users["tokens"].as_object().unwrap();
    assert_eq!(tokens.len(), 100, "{} live tokens", tokens.len());
}

// ---------------------------------------------------------------------------------
// Guessing and lockouts

#[test]
fn a_valid_token_is_never_refused_by_the_limiter() {
    let server = TestServer::start_with(&["--login-rate", "2"]);
    let (mut owner, token) = registered(&server, "victim", PW);
    owner.send(&json!({"type":"quit"}));
    owner.expect_closed(RECV_TIMEOUT);
    let mut attacker = server.connect_greeted();
    for _ in 0..2 {
        assert_eq!(
            auth_error_for(
                &mut attacker,
                json!({"type":"login","name":"victim","password":"guess"})
            ),
            "bad_password"
        );
    }
    assert_eq!(
        auth_error_for(
            &mut attacker,
            json!({"type":"login","name":"victim","password":PW})
        ),
        "rate_limited"
    );
    // Same address, the real user with a token.
    let mut back = server.connect_greeted();
    back.resume("victim", &token);
}

#[test]
fn unknown_names_are_not_guesses() {
    let server = TestServer::start_with(&["--login-rate", "2"]);
    let mut c = server.connect_greeted();
    for i in 0..10 {
        assert_eq!(
            auth_error_for(
                &mut c,
                json!({"type":"login","name":format!("nobody{i}"),"password":PW})
            ),
            "unknown_user"
        );
    }
}

#[test]
fn guesses_at_one_account_are_limited_across_addresses() {
    let server = TestServer::start_with(&["--login-rate", "3"]);
    let _ = registered(&server, "target", PW);
    for last in 20..23 {
        let mut c = server.connect_from(loopback(last));
        c.welcome();
        assert_eq!(
            auth_error_for(
                &mut c,
                json!({"type":"login","name":"target","password":"nope"})
            ),
            "bad_password"
        );
    }
    let mut c = server.connect_from(loopback(30));
    c.welcome();
    assert_eq!(
        auth_error_for(
            &mut c,
            json!({"type":"login","name":"target","password":"nope"})
        ),
        "rate_limited"
    );
    // Other accounts are not locked by it.
    c.register("bystander", PW);
}

#[test]
fn a_login_storm_from_one_address_does_not_starve_another() {
    let server = TestServer::start_with(&[
        "--pbkdf2-rounds",
        "1000000",
        "--auth-rate",
        "0",
        "--login-rate",
        "0",
    ]);
    let _ = registered(&server, "stormy", PW);
    let _ = registered(&server, "honest", PW);
    let mut storm: Vec<TestClient> = (0..24)
        .map(|_| {
            let mut c = server.connect_from(loopback(41));
            c.welcome();
            c
        })
        .collect();
    for c in storm.iter_mut() {
        c.send(&json!({"type":"login","name":"stormy","password":PW}));
    }
    let mut honest = server.connect_from(loopback(42));
    honest.welcome();
    honest.send(&json!({"type":"login","name":"honest","password":PW}));
    honest.recv_type("auth_ok");
    // When the honest login is in, most of the storm is still waiting.
    let mut done = 0;
    for c in storm.iter_mut() {
        if c.try_recv(Duration::from_millis(1))
            .is_some_and(|f| f["type"] == "auth_ok")
        {
            done += 1;
        }
    }
    assert!(
        done <= 8,
        "{done} of 24 storm logins finished before the honest one"
    );
}

// ---------------------------------------------------------------------------------
// Amplification

#[test]
fn a_resume_loop_does_not_flood_others_with_joined_and_left() {
    let server = TestServer::start_with(&["--auth-rate", "0"]);
    let (mut watcher, _) = registered(&server, "watcher", PW);
    let (mut looper, mut token) = registered(&server, "looper", PW);
    watcher.recv_matching("looper joined", |v| v["type"] == "joined");
    looper.send(&json!({"type":"quit"}));
    looper.expect_closed(RECV_TIMEOUT);
    for _ in 0..20 {
        let mut c = server.connect_greeted();
        token = c.resume("looper", &token);
        c.send(&json!({"type":"quit"}));
        c.expect_closed(RECV_TIMEOUT);
    }
    let mut presence = 0;
    let deadline = Instant::now() + Duration::from_secs(4);
    while let Some(f) = watcher.try_recv(deadline.saturating_duration_since(Instant::now())) {
        if f["type"] == "joined" || f["type"] == "left" {
            presence += 1;
        }
    }
    // Told once that the user left and came back, then once that they left for good.
    assert!(
        presence <= 3,
        "{presence} joined/left frames for one flapping user"
    );
}

#[test]
fn the_history_replayed_at_login_is_bounded_in_bytes() {
    let server = TestServer::start_with(&["--history", "200", "--msg-rate", "0"]);
    let (mut a, _) = registered(&server, "writer", PW);
    let long = "w".repeat(4000);
    for _ in 0..100 {
        a.send(&json!({"type":"say","text":long}));
    }
    // Its echo comes after the others': all are recorded when it arrives.
    a.say("the last one");
    let mut b = server.connect_greeted();
    b.send(&json!({"type":"register","name":"reader","password":PW}));
    b.recv_type("auth_ok");
    let history = b.recv_type("history");
    let size = history.to_string().len();
    assert!(size <= 256 * 1024 + 1024, "history frame of {size} bytes");
    let messages = history["messages"].as_array().unwrap();
    assert!(
        messages.len() >= 50,
        "the newest that fit: {}",
        messages.len()
    );
    assert_eq!(messages.last().unwrap()["text"], "the last one");
    assert_eq!(messages[messages.len() - 2]["text"], long.as_str());
}

#[test]
fn an_address_authenticating_in_a_loop_is_slowed() {
    let server = TestServer::start_with(&["--auth-rate", "10"]);
    let (_c, mut token) = registered(&server, "pacer", PW);
    let started = Instant::now();
    // 50 burst, then 10 a second: 70 take at least two seconds.
    for _ in 0..69 {
        let mut c = server.connect_greeted();
        token = c.resume("pacer", &token);
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "70 authentications in {:?}",
        started.elapsed()
    );
}

#[test]
fn msg_rate_holds_per_account_across_connections() {
    let server = TestServer::start_with(&["--msg-rate", "5"]);
    let (mut a, token) = registered(&server, "chatty", PW);
    let mut b = server.connect_greeted();
    b.resume("chatty", &token);
    for i in 0..10 {
        a.send(&json!({"type":"say","text":format!("a{i}")}));
        b.send(&json!({"type":"say","text":format!("b{i}")}));
    }
    // Each connection learns the fate of its own ten: its echo, or an error.
    let mut accepted = 0;
    for (c, prefix) in [(&mut a, 'a'), (&mut b, 'b')] {
        for _ in 0..10 {
            let f = c.recv_matching("echo or error", |v| {
                (v["type"] == "message" && v["text"].as_str().unwrap().starts_with(prefix))
                    || v["type"] == "error"
            });
            if f["type"] == "message" {
                accepted += 1;
            } else {
                assert_eq!(f["code"], "rate_limited", "{f}");
            }
        }
    }
    // A burst of twice the rate for the account, not for each connection.
    assert!(accepted <= 12, "{accepted} of 20 accepted");
}

// ---------------------------------------------------------------------------------
// Descriptors

#[test]
fn with_few_descriptors_the_users_in_keep_chatting() {
    let server = TestServer::launch(Launch {
        open_files: Some(256),
        ..Launch::default()
    });
    let line = server.wait_log_line(RECV_TIMEOUT, |l| l.contains("--max-conns lowered"));
    assert!(line.contains("open-file limit"), "{line}");
    let (mut a, _) = registered(&server, "inside", PW);
    // Far more connections than descriptors (about 150 are left for connections).
    let flood: Vec<_> = (0..300)
        .filter_map(|_| TestClient::try_connect(server.addr()))
        .collect();
    a.say("still here");
    drop(flood);
    // Once the flood is gone, newcomers are greeted again.
    let deadline = Instant::now() + RECV_TIMEOUT;
    loop {
        let mut c = server.connect();
        match c.next_event(Duration::from_secs(2)) {
            Event::Frame(f) if f["type"] == "welcome" => break,
            other => assert!(Instant::now() < deadline, "no welcome: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    a.say("and after");
}

// ---------------------------------------------------------------------------------
// State files

#[test]
fn the_state_folder_and_its_files_are_owner_only() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("fresh");
    let mut server = TestServer::start_in(&dir, &[]);
    let (mut a, _) = registered(&server, "private", PW);
    a.say("a secret");
    server.stop();
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    for name in ["users.json", "history.jsonl", "server.log"] {
        assert!(dir.join(name).exists(), "{name}");
    }

    // Files an older version left readable are made owner-only.
    fs::set_permissions(dir.join("users.json"), fs::Permissions::from_mode(0o644)).unwrap();
    let _server = TestServer::start_in(&dir, &[]);
    assert_eq!(mode(&dir.join("users.json")), 0o600);
}

#[test]
fn a_state_file_that_is_not_a_regular_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("users.json");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let exit = run_to_exit(dir.path(), &[], Duration::from_secs(10));
    assert!(
        matches!(exit.status, Some(s) if !s.success()),
        "a FIFO hangs start-up"
    );
    let stderr = exit.stderr.trim();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("users.json") && stderr.contains("FIFO"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("history.jsonl")).unwrap();
    let exit = run_to_exit(dir.path(), &[], Duration::from_secs(10));
    assert!(matches!(exit.status, Some(s) if !s.success()));
    let stderr = exit.stderr.trim();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("history.jsonl"), "{stderr}");
}

#[test]
fn a_second_server_on_one_state_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = TestServer::start_in(dir.path(), &[]);
    let exit = run_to_exit(dir.path(), &[], Duration::from_secs(10));
    assert!(matches!(exit.status, Some(s) if !s.success()));
    assert!(exit.stdout.is_empty(), "{}", exit.stdout);
    let stderr = exit.stderr.trim();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&dir.path().display().to_string()) && stderr.contains("in use"),
        "{stderr}"
    );
    // The first one is untouched.
    let _ = registered(&first, "stillfine", PW);
}
