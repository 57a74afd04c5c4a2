//! State on disk (SPEC §5): accounts, tokens and history survive a restart, ids go
//! on, secrets are never stored in clear, corrupt files stop start-up untouched, a
//! torn history line is dropped, and acknowledged accounts survive `kill -9`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::fs;
use std::io::Write;
use std::time::Duration;

const PW: &str = "a password nobody guesses";

fn read_history_file(dir: &std::path::Path) -> Vec<Value> {
    let text = fs::read_to_string(dir.join("history.jsonl")).expect("history.jsonl exists");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

#[test]
fn restart_keeps_accounts_tokens_history_and_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (token, sent) = {
        let mut server = TestServer::start_in(dir.path(), &[]);
        let (mut a, token) = registered(&server, "ann", PW);
        let sent: Vec<Value> = (0..3).map(|i| a.say(&format!("before {i}"))).collect();
        a.send(&json!({"type":"quit"}));
        a.expect_closed(RECV_TIMEOUT);
        server.stop();
        (token, sent)
    };
    let server = TestServer::start_in(dir.path(), &[]);
    let mut a = server.connect();
    let w = a.welcome();
    assert_eq!(
        w["known_name"], "ann",
        "IP identification is persisted: {w}"
    );
    let ok = a.resume_full("ann", &token);
    assert_eq!(ok.messages, sent, "history survives the restart");
    let m = a.say("after");
    assert_eq!(
        m["id"].as_u64().unwrap(),
        sent[2]["id"].as_u64().unwrap() + 1,
        "ids continue across restarts"
    );
    let mut b = server.connect_greeted();
    b.login("ann", PW);
    let mut c = server.connect_greeted();
    c.send(&json!({"type":"register","name":"ANN","password":PW}));
    assert_eq!(c.expect_auth_error(), "name_taken");
}

#[test]
fn users_json_holds_phc_hashes_never_passwords_or_tokens() {
    let mut server = TestServer::start();
    let (mut a, token) = registered(&server, "ann", PW);
    a.send(&json!({"type":"quit"}));
    a.expect_closed(RECV_TIMEOUT);
    let mut b = server.connect_greeted();
    let token2 = b.resume("ann", &token);
    server.stop();
    let text = fs::read_to_string(server.state_dir().join("users.json")).expect("users.json");
    let _: Value = serde_json::from_str(&text).expect("users.json is JSON");
    assert!(!text.contains(PW), "plaintext password in users.json");
    assert!(text.contains("$pbkdf2-sha256$"), "no PHC string: {text}");
    assert!(text.contains("i=1000"), "rounds of --pbkdf2-rounds: {text}");
    assert!(!text.contains(&token), "plaintext token in users.json");
    assert!(!text.contains(&token2), "plaintext token in users.json");
    assert!(text.contains("ann"));
}

#[test]
fn history_file_is_one_message_per_line_in_id_order() {
    let mut server = TestServer::start();
    let (mut a, _) = registered(&server, "ann", PW);
    let sent: Vec<Value> = (0..4).map(|i| a.say(&format!("line {i}"))).collect();
    server.stop();
    let lines = read_history_file(server.state_dir());
    assert_eq!(lines.len(), 4);
    for (line, msg) in lines.iter().zip(&sent) {
        for field in ["id", "from", "text", "ts"] {
            assert_eq!(line[field], msg[field], "field {field} of {line}");
        }
    }
}

#[test]
fn hashes_from_fewer_rounds_still_verify_after_raising_them() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut server = TestServer::start_in(dir.path(), &[]);
        registered(&server, "ann", PW);
        server.stop();
    }
    let server = TestServer::start_in(dir.path(), &["--pbkdf2-rounds", "2000"]);
    let mut c = server.connect_greeted();
    c.login("ann", PW);
}

#[test]
fn corrupt_users_json_stops_startup_and_is_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = b"{\"this is\": not json at all \x00\x01 ]]";
    fs::write(dir.path().join("users.json"), garbage).unwrap();
    let out = run_to_exit(dir.path(), &[], Duration::from_secs(30));
    let status = out
        .status
        .expect("server must exit on a corrupt users.json");
    assert!(!status.success(), "exit status {status:?}");
    assert!(
        out.stderr.contains("users.json"),
        "stderr must name the file: {:?}",
        out.stderr
    );
    assert!(
        !out.stdout.contains("listening on"),
        "must not start serving: {:?}",
        out.stdout
    );
    assert_eq!(
        fs::read(dir.path().join("users.json")).unwrap(),
        garbage,
        "the corrupt file must not be replaced"
    );
}

#[test]
fn corrupt_line_inside_history_stops_startup() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut server = TestServer::start_in(dir.path(), &[]);
        let (mut a, _) = registered(&server, "ann", PW);
        a.say("one");
        a.say("two");
        server.stop();
    }
    let path = dir.path().join("history.jsonl");
    let text = fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(1, "this line is not JSON");
    let broken = format!("{}\n", lines.join("\n"));
    fs::write(&path, &broken).unwrap();
    let out = run_to_exit(dir.path(), &[], Duration::from_secs(30));
    let status = out
        .status
        .expect("server must exit on a corrupt history.jsonl");
    assert!(!status.success(), "exit status {status:?}");
    assert!(
        out.stderr.contains("history.jsonl"),
        "stderr must name the file: {:?}",
        out.stderr
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), broken, "file untouched");
}

#[test]
fn torn_last_history_line_is_dropped_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let sent = {
        let mut server = TestServer::start_in(dir.path(), &[]);
        let (mut a, _) = registered(&server, "ann", PW);
        let sent: Vec<Value> = (0..2).map(|i| a.say(&format!("good {i}"))).collect();
        server.stop();
        sent
    };
    let path = dir.path().join("history.jsonl");
    let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"{\"id\":").unwrap();
    drop(f);

    let mut server = TestServer::start_in(dir.path(), &[]);
    let mut a = server.connect_greeted();
    let ok = a.login_full("ann", PW);
    assert_eq!(ok.messages, sent, "history from the good lines");
    let m = a.say("after the tear");
    assert_eq!(
        m["id"].as_u64().unwrap(),
        sent[1]["id"].as_u64().unwrap() + 1
    );
    let log = server.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("history.jsonl") || l.to_lowercase().contains("incomplete")),
        "a warning about the dropped line is logged:\n{log}"
    );
    server.stop();

    // The fragment did not glue onto the next message: the file is whole again.
    let lines = read_history_file(dir.path());
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[2]["text"], "after the tear");
    let server = TestServer::start_in(dir.path(), &[]);
    let mut b = server.connect_greeted();
    let ok = b.login_full("ann", PW);
    assert_eq!(ok.messages.len(), 3);
    assert_eq!(ok.messages[2], m);
}

#[test]
fn pbkdf2_rounds_below_1000_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_to_exit(
        dir.path(),
        &["--pbkdf2-rounds", "999"],
        Duration::from_secs(30),
    );
    let status = out.status.expect("server must refuse --pbkdf2-rounds 999");
    assert!(!status.success(), "exit status {status:?}");
    assert!(!out.stdout.contains("listening on"), "{:?}", out.stdout);
    assert!(!out.stderr.trim().is_empty(), "a one-line reason on stderr");
}

#[test]
fn missing_state_dir_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a").join("b");
    let mut server = TestServer::start_in(&nested, &[]);
    registered(&server, "ann", PW);
    server.stop();
    assert!(nested.join("users.json").is_file());
}

#[test]
fn unusable_state_dir_stops_startup() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    fs::write(&file, b"x").unwrap();
    let out = run_to_exit(&file, &[], Duration::from_secs(30));
    let status = out
        .status
        .expect("server must exit when the state dir is a file");
    assert!(!status.success(), "exit status {status:?}");
    assert!(!out.stdout.contains("listening on"), "{:?}", out.stdout);
    assert_eq!(fs::read(&file).unwrap(), b"x");
}

#[test]
fn an_acknowledged_account_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut server = TestServer::start_in(dir.path(), &[]);
        registered(&server, "ann", PW);
        server.kill_hard();
    }
    let server = TestServer::start_in(dir.path(), &[]);
    let mut c = server.connect_greeted();
    c.login("ann", PW);
}

/// Registers `w0`, `w1`, ... one connection each until the server goes away; reports
/// each acknowledged name on `acks`.
fn register_until_dead(addr: std::net::SocketAddr, acks: std::sync::mpsc::Sender<String>) {
    for i in 0.. {
        let Some(mut c) = TestClient::try_connect(addr) else {
            return;
        };
        if !matches!(c.next_event(RECV_TIMEOUT), Event::Frame(_)) {
            return;
        }
        let name = format!("w{i}");
        let msg = json!({"type":"register","name":name,"password":PW});
        if c.try_send_raw(&frame(&serde_json::to_vec(&msg).unwrap()))
            .is_err()
        {
            return;
        }
        match c.next_event(RECV_TIMEOUT) {
            Event::Frame(v) if v["type"] == "auth_ok" => {
                if acks.send(name).is_err() {
                    return;
                }
            }
            _ => return,
        }
    }
}

#[test]
fn kill_9_during_registrations_leaves_whole_state_with_every_acknowledged_account() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let mut server = TestServer::start_in(dir.path(), &[]);
        let addr = server.addr();
        let writer = std::thread::spawn(move || register_until_dead(addr, tx));
        // Kill while registrations are in full flow.
        for _ in 0..15 {
            rx.recv_timeout(RECV_TIMEOUT)
                .expect("registrations keep being acknowledged");
        }
        server.kill_hard();
        writer.join().unwrap();
    }
    let acknowledged: Vec<String> = (0..15)
        .map(|i| format!("w{i}"))
        .chain(rx.try_iter())
        .collect();
    let text = fs::read_to_string(dir.path().join("users.json")).expect("users.json exists");
    let _: Value = serde_json::from_str(&text).expect("users.json is whole JSON after kill -9");
    let server = TestServer::start_in(dir.path(), &[]);
    for name in &acknowledged {
        let mut c = server.connect_greeted();
        c.login(name, PW);
    }
}
