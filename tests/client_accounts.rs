//! The client's account commands (SPEC §8): `/password`, `/delete-account`, and how
//! a ban or a refusal reads. First against a fake server speaking the frames of §8,
//! then end to end against the real server.

mod client_support;
mod common;

use std::sync::{Arc, Mutex};

use client_support::{client_args, run_script, FakeConn, FakeServer, Tty};
use serde_json::{json, Value};

/// A token file in a fresh temporary folder.
fn token_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    (dir, path)
}

/// The token the file holds for `name` on 127.0.0.1:`port`.
fn saved_token(path: &std::path::Path, port: u16, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let file: Value = serde_json::from_str(&text).ok()?;
    file["servers"][format!("127.0.0.1:{port}")]["accounts"][name]["token"]
        .as_str()
        .map(str::to_string)
}

/// Serves `zed` with password `old-pass`: `change_password` and `delete_account`
/// check it (`new` must be 4 bytes or more), `say` is echoed, `ping` answered. Every
/// request is recorded.
fn serve_accounts(conn: &mut FakeConn, requests: &Mutex<Vec<Value>>) {
    conn.welcome(None);
    let mut password = "old-pass".to_string();
    let mut id = 0;
    while let Some(request) = conn.recv() {
        requests.lock().unwrap().push(request.clone());
        match request["type"].as_str().unwrap_or("") {
            "login" | "resume" | "register" => {
                conn.auth_ok("zed");
                conn.send(&json!({"type":"history","room":"lobby","messages":[]}));
            }
            "change_password" if request["old"] != password.as_str() => {
                conn.send(&json!({"type":"error","code":"bad_password","message":"wrong password"}))
            }
            "change_password" if request["new"].as_str().unwrap_or("").len() < 4 => {
                conn.send(&json!({"type":"error","code":"invalid_password","message":"too short"}))
            }
            "change_password" => {
                password = request["new"].as_str().unwrap_or("").to_string();
                conn.send(&json!({"type":"password_changed","token":"token-after-change"}));
            }
            "delete_account" if request["password"] != password.as_str() => {
                conn.send(&json!({"type":"error","code":"bad_password","message":"wrong password"}))
            }
            "delete_account" => {
                conn.send(&json!({"type":"account_deleted"}));
                return;
            }
            "say" => {
                id += 1;
                conn.send(&json!({"type":"message","id":id,"room":"lobby","from":"zed","text":request["text"],"ts":client_support::now_ms()}));
            }
            "ping" => conn.send(&json!({"type":"pong"})),
            "quit" | "logout" => return,
            _ => {}
        }
    }
}

fn accounts_server() -> (FakeServer, Arc<Mutex<Vec<Value>>>) {
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&requests);
    let server = FakeServer::start(move |_, mut conn| serve_accounts(&mut conn, &seen));
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

/// Whether any say carried `secret`.
fn said(requests: &Mutex<Vec<Value>>, secret: &str) -> bool {
    of_type(requests, "say")
        .iter()
        .any(|s| s["text"].as_str().unwrap_or("").contains(secret))
}

#[test]
fn scripted_password_change_takes_the_next_two_lines_and_saves_the_new_token() {
    let (server, requests) = accounts_server();
    let (_dir, tokens) = token_file();
    let run = run_script(
        &client_args(server.port(), &tokens, &["--name", "zed"]),
        &[],
        "old-pass\n/password\nold-pass\nnew-pass\nafter\n",
    );
    run.assert_success();
    assert_eq!(
        of_type(&requests, "change_password"),
        [json!({"type":"change_password","old":"old-pass","new":"new-pass"})]
    );
    assert!(!said(&requests, "pass"), "a password went out as chat");
    assert!(run.stderr.contains("Your password was changed"), "{run:#?}");
    assert!(run.stdout.contains("zed: after"), "{run:#?}");
    assert!(!run.stdout.contains("pass"), "{run:#?}");
    assert_eq!(
        saved_token(&tokens, server.port(), "zed").as_deref(),
        Some("token-after-change")
    );
}

#[test]
fn scripted_wrong_current_password_is_a_sentence_and_a_failed_run() {
    let (server, requests) = accounts_server();
    let (_dir, tokens) = token_file();
    let run = run_script(
        &client_args(server.port(), &tokens, &["--name", "zed"]),
        &[],
        "old-pass\n/password\nnot-it\nnew-pass\n/password\nold-pass\nx\n",
    );
    assert_ne!(run.code, Some(0), "{run:#?}");
    assert!(
        run.stderr
            .contains("Wrong current password; your password was not changed."),
        "{run:#?}"
    );
    assert!(
        run.stderr.contains("A password is 4 to 1024 bytes long."),
        "checked before sending: {run:#?}"
    );
    assert_eq!(of_type(&requests, "change_password").len(), 1);
    assert!(!said(&requests, "pass") && !said(&requests, "not-it"));
}

#[test]
fn scripted_input_ending_inside_a_password_change_sends_nothing() {
    let (server, requests) = accounts_server();
    let (_dir, tokens) = token_file();
    let run = run_script(
        &client_args(server.port(), &tokens, &["--name", "zed"]),
        &[],
        "old-pass\n/password\nold-pass\n",
    );
    assert_ne!(run.code, Some(0), "{run:#?}");
    assert!(of_type(&requests, "change_password").is_empty());
    assert!(!said(&requests, "old-pass"));
}

#[test]
fn scripted_delete_account_forgets_the_token_and_exits_cleanly() {
    let (server, requests) = accounts_server();
    let (_dir, tokens) = token_file();
    // A first run leaves a token behind.
    run_script(
        &client_args(server.port(), &tokens, &["--name", "zed"]),
        &[],
        "old-pass\n",
    )
    .assert_success();
    assert!(saved_token(&tokens, server.port(), "zed").is_some());
    let run = run_script(
        &client_args(server.port(), &tokens, &["--name", "zed"]),
        &[],
        "/delete-account\nold-pass\nnever sent\n",
    );
    run.assert_success();
    assert_eq!(
        of_type(&requests, "delete_account"),
        [json!({"type":"delete_account","password":"old-pass"})]
    );
    assert!(
        run.stderr.contains("the account 'zed' was deleted"),
        "{run:#?}"
    );
    assert!(!said(&requests, "never sent"));
    assert_eq!(saved_token(&tokens, server.port(), "zed"), None);
}

#[test]
fn a_ban_reads_as_a_sentence_with_its_reason_escaped() {
    let server = FakeServer::start(|_, mut conn| {
        conn.welcome(None);
        while conn.recv().is_some() {
            conn.send(
                &json!({"type":"auth_error","code":"banned","message":"spam\u{1b}[2J links"}),
            );
        }
    });
    let (_dir, tokens) = token_file();
    let run = run_script(
        &client_args(server.port(), &tokens, &[]),
        &[],
        "zed\nold-pass\n",
    );
    assert_ne!(run.code, Some(0), "{run:#?}");
    assert!(
        run.stderr.contains(
            "The account 'zed' is banned from this server; the reason given: spam\\u{1b}[2J links"
        ),
        "{run:#?}"
    );
    assert!(!run.stderr.contains('\u{1b}'));
}

#[test]
fn a_terminal_password_change_asks_unseen_twice() {
    let (server, requests) = accounts_server();
    let (_dir, tokens) = token_file();
    let mut tty = Tty::spawn(
        &client_args(server.port(), &tokens, &["--name", "zed"]),
        &[],
    );
    tty.expect("Password: ");
    tty.send("old-pass\r");
    tty.expect("zed> ");
    tty.send("/password\r");
    tty.expect("Current password");
    // A burst: the current password, then two different new ones, then the right pair.
    tty.send("old-pass\rsecret-one\rsecret-two\r");
    tty.expect("The two passwords differ");
    tty.send("secret-one\rsecret-one\r");
    tty.expect("Your password was changed");
    tty.send("/quit\r");
    assert_eq!(tty.wait_exit(), 0);
    assert!(
        !tty.raw().contains("secret-"),
        "a password was shown: {}",
        tty.text()
    );
    assert!(!tty.raw().contains("old-pass"), "{}", tty.text());
    assert_eq!(
        of_type(&requests, "change_password"),
        [json!({"type":"change_password","old":"old-pass","new":"secret-one"})]
    );
    assert!(!said(&requests, "secret") && !said(&requests, "old-pass"));
    assert_eq!(
        saved_token(&tokens, server.port(), "zed").as_deref(),
        Some("token-after-change")
    );
}

#[test]
fn a_terminal_delete_account_needs_the_confirmation() {
    let (server, requests) = accounts_server();
    let (_dir, tokens) = token_file();
    let mut tty = Tty::spawn(
        &client_args(server.port(), &tokens, &["--name", "zed"]),
        &[],
    );
    tty.expect("Password: ");
    tty.send("old-pass\r");
    tty.expect("zed> ");
    tty.send("/delete-account\r");
    tty.expect("Password to delete your account");
    tty.send("old-pass\rno\r");
    tty.expect("Cancelled: the account was not deleted.");
    assert!(of_type(&requests, "delete_account").is_empty());
    // Ctrl-C at the question cancels, and the chat goes on.
    tty.send("/delete-account\r");
    tty.expect("Password to delete your account");
    tty.send("\x03");
    tty.expect("Cancelled: the account was not deleted.");
    assert!(tty.running());
    tty.send("/delete-account\r");
    tty.expect("Password to delete your account");
    tty.send("old-pass\ryes\r");
    tty.expect("was deleted");
    assert_eq!(tty.wait_exit(), 0);
    assert_eq!(of_type(&requests, "delete_account").len(), 1);
    assert_eq!(saved_token(&tokens, server.port(), "zed"), None);
    assert!(!tty.raw().contains("old-pass"));
}

#[test]
fn kicked_after_a_password_change_elsewhere_ends_the_session_with_its_words() {
    let server = FakeServer::start(|_, mut conn| {
        conn.welcome(None);
        if conn.recv().is_none() {
            return;
        }
        conn.auth_ok("zed");
        conn.send(&json!({"type":"history","room":"lobby","messages":[]}));
        conn.send(&json!({"type":"kicked","message":"the password of this account was changed"}));
    });
    let (_dir, tokens) = token_file();
    let run = run_script(
        &client_args(server.port(), &tokens, &["--name", "zed"]),
        &[],
        "old-pass\n",
    );
    run.assert_success();
    assert!(
        run.stderr.contains(
            "The server ended your session, saying: the password of this account was changed"
        ),
        "{run:#?}"
    );
}

// ---- Against the real server --------------------------------------------------

fn script(
    server: &common::TestServer,
    tokens: &std::path::Path,
    input: &str,
) -> client_support::ScriptRun {
    run_script(&client_args(server.port(), tokens, &[]), &[], input)
}

#[test]
fn real_server_password_change_end_to_end() {
    let server = common::TestServer::start();
    let (_dir, tokens) = token_file();
    let name = common::unique_name("pwd");
    script(&server, &tokens, &format!("{name}\nold-pass\n")).assert_success();
    let old_token = saved_token(&tokens, server.port(), &name).unwrap();
    let run = script(&server, &tokens, "/password\nold-pass\nnew-pass\nafter\n");
    run.assert_success();
    let new_token = saved_token(&tokens, server.port(), &name).unwrap();
    assert_ne!(old_token, new_token);
    // The saved token still works, and the new password logs in.
    script(&server, &tokens, "again\n").assert_success();
    let (_other, other_tokens) = token_file();
    script(&server, &other_tokens, &format!("{name}\nnew-pass\nhi\n")).assert_success();
    let (_third, third_tokens) = token_file();
    let run = script(&server, &third_tokens, &format!("{name}\nold-pass\n"));
    assert_ne!(run.code, Some(0), "the old password is refused: {run:#?}");
}

#[test]
fn real_server_delete_account_frees_the_name() {
    let server = common::TestServer::start();
    let (_dir, tokens) = token_file();
    let name = common::unique_name("del");
    script(&server, &tokens, &format!("{name}\nold-pass\n")).assert_success();
    let run = script(&server, &tokens, "/delete-account\nold-pass\n");
    run.assert_success();
    assert_eq!(saved_token(&tokens, server.port(), &name), None);
    // The name is free: registering it again makes a new account.
    let (_other, other_tokens) = token_file();
    script(&server, &other_tokens, &format!("{name}\nanother-pass\n")).assert_success();
}

#[test]
fn real_server_ban_is_refused_with_its_reason() {
    let mut server = common::TestServer::start();
    let (_dir, tokens) = token_file();
    let name = common::unique_name("ban");
    script(&server, &tokens, &format!("{name}\nold-pass\n")).assert_success();
    server.admin(&format!("ban {name} flooding the lobby"));
    let (_other, other_tokens) = token_file();
    let run = script(&server, &other_tokens, &format!("{name}\nold-pass\n"));
    assert_ne!(run.code, Some(0), "{run:#?}");
    assert!(run.stderr.contains("banned"), "{run:#?}");
    assert!(run.stderr.contains("flooding the lobby"), "{run:#?}");
}
