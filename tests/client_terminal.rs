//! The terminal client as a person meets it: on a pseudo-terminal, with keys that
//! arrive in bursts (a paste, tmux send-keys, a slow link), checked on an emulated
//! screen as well as in the raw output.

mod client_support;
mod common;

use std::thread;
use std::time::Duration;

use client_support::{client_args, run_script, Tty};
use common::{registered, unique_name, TestServer};

/// A token file in a fresh temporary folder.
struct Tokens {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

fn tokens() -> Tokens {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    Tokens { _dir: dir, path }
}

/// Registers `name` with a scripted run, so the token file holds its token.
fn register_by_script(server: &TestServer, tokens: &Tokens, name: &str) {
    run_script(
        &client_args(server.port(), &tokens.path, &[]),
        &[],
        &format!("{name}\npassword1\n"),
    )
    .assert_success();
}

/// The client logged in as a freshly registered `name` (through its token), at the
/// chat prompt.
fn chatting(server: &TestServer, tokens: &Tokens, name: &str) -> Tty {
    register_by_script(server, tokens, name);
    let mut tty = Tty::spawn(&client_args(server.port(), &tokens.path, &[]), &[]);
    tty.expect(&format!("{name}> "));
    tty
}

/// The texts of the server's history, as a new observer sees it.
fn history_texts(server: &TestServer) -> Vec<String> {
    let mut observer = server.connect_greeted();
    observer
        .register_full(&unique_name("obs"), "password1")
        .messages
        .iter()
        .map(|m| m["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn occurrences(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn keys_typed_in_one_burst_are_all_handled() {
    let server = TestServer::start();
    let t = tokens();
    let name = unique_name("burst");
    let mut tty = chatting(&server, &t, &name);
    tty.send("first line\rsecond line\r");
    tty.wait_screen("both echoes", |s| {
        s.contains(&format!("{name}: first line")) && s.contains(&format!("{name}: second line"))
    });
    tty.send("/quit\r");
    assert_eq!(tty.wait_exit(), 0);
    assert_eq!(history_texts(&server), ["first line", "second line"]);
}

#[test]
fn a_multi_line_paste_sends_one_message_per_line() {
    let server = TestServer::start();
    let t = tokens();
    let name = unique_name("paste");
    let mut tty = chatting(&server, &t, &name);
    // Bracketed paste (as a terminal sends it), then a plain burst with line feeds.
    tty.send("\x1b[200~one\ntwo\r\nthree\x1b[201~\r");
    tty.wait_screen("three echoes", |s| s.contains(&format!("{name}: three")));
    tty.send("four\nfive\n");
    tty.wait_screen("five", |s| s.contains(&format!("{name}: five")));
    tty.send("/quit\r");
    assert_eq!(tty.wait_exit(), 0);
    assert_eq!(
        history_texts(&server),
        ["one", "two", "three", "four", "five"]
    );
}

#[test]
fn ctrl_d_on_an_empty_line_quits_and_restores_the_terminal() {
    let server = TestServer::start();
    let t = tokens();
    let name = unique_name("eof");
    let mut tty = chatting(&server, &t, &name);
    let (mut watcher, _) = registered(&server, &unique_name("watch"), "password1");
    tty.send("\x04");
    assert_eq!(tty.wait_exit(), 0);
    assert_eq!(tty.line_mode(), (true, true), "terminal left in raw mode");
    let left = watcher.recv_matching("left", |v| v["type"] == "left");
    assert_eq!(left["name"], name.as_str());
}

#[test]
fn ctrl_d_at_the_name_prompt_exits_with_a_word() {
    let server = TestServer::start();
    let t = tokens();
    let mut tty = Tty::spawn(&client_args(server.port(), &t.path, &[]), &[]);
    tty.expect("Name: ");
    tty.send("\x04");
    assert_eq!(tty.wait_exit(), 0);
    // The word may still be on its way from the pty when the exit is seen.
    tty.expect("echochat: ");
    assert_eq!(tty.line_mode(), (true, true));
}

#[test]
fn a_slow_registration_outlasts_the_auth_timeout() {
    let server = TestServer::start_with(&["--auth-timeout", "1"]);
    let t = tokens();
    let name = unique_name("slow");
    let mut tty = Tty::spawn(&client_args(server.port(), &t.path, &[]), &[]);
    let pause = || thread::sleep(Duration::from_millis(1500));
    tty.expect("Name: ");
    pause();
    tty.send(&format!("{name}\r"));
    tty.expect("Password: ");
    pause();
    tty.send("password1\r");
    tty.expect("Register it? [Y/n] ");
    pause();
    tty.send("y\r");
    tty.expect("Choose a password: ");
    pause();
    tty.send("password1\r");
    tty.expect("Repeat the password: ");
    pause();
    tty.send("password1\r");
    tty.expect(&format!("Welcome, {name}!"));
    tty.expect(&format!("{name}> "));
    tty.send("/quit\r");
    assert_eq!(tty.wait_exit(), 0);
    assert!(!tty.text().contains("Lost"), "{}", tty.text());
}

#[test]
fn a_bad_name_or_password_is_asked_again_before_reaching_the_server() {
    // Two failures a minute: the two bad names alone would lock the newcomer out if
    // they reached the server. (The one `unknown_user` before registering may count.)
    let server = TestServer::start_with(&["--login-rate", "2"]);
    let t = tokens();
    let name = unique_name("newbie");
    let mut tty = Tty::spawn(&client_args(server.port(), &t.path, &[]), &[]);
    tty.expect("Name: ");
    tty.send("not a name\r");
    let shown = tty.expect("A name is 1 to 32");
    assert!(!shown.contains("Password"), "{shown:?}");
    tty.expect("Name: ");
    tty.send(&format!("{}\r", "x".repeat(33)));
    let shown = tty.expect("A name is 1 to 32");
    assert!(!shown.contains("Password"), "{shown:?}");
    tty.expect("Name: ");
    tty.send(&format!("{name}\r"));
    tty.expect("Password: ");
    tty.send("abc\r");
    let shown = tty.expect("A password is 4 to 1024 bytes");
    assert!(!shown.contains("Register"), "{shown:?}");
    tty.expect("Password: ");
    tty.send("password1\r");
    tty.expect("Register it? [Y/n] ");
    tty.send("\r");
    tty.expect("Choose a password: ");
    tty.send("abc\r");
    tty.expect("A password is 4 to 1024 bytes");
    tty.expect("Choose a password: ");
    tty.send("password1\r");
    tty.expect("Repeat the password: ");
    tty.send("password1\r");
    tty.expect(&format!("Welcome, {name}!"));
    tty.send("/quit\r");
    assert_eq!(tty.wait_exit(), 0);
}

#[test]
fn the_name_remembered_for_the_address_can_be_changed_at_the_prompt() {
    let server = TestServer::start();
    let alice = unique_name("alice");
    let bob = unique_name("bob");
    drop(registered(&server, &alice, "password1"));
    let t = tokens();
    let mut tty = Tty::spawn(&client_args(server.port(), &t.path, &[]), &[]);
    let shown = tty.expect(&format!("Name [{alice}]: "));
    assert!(!shown.contains("Welcome back"), "{shown:?}");
    tty.send(&format!("{bob}\r"));
    tty.expect("Password: ");
    tty.send("password2\r");
    tty.expect("Register it? [Y/n] ");
    tty.send("y\r");
    tty.expect("Choose a password: ");
    tty.send("password2\r");
    tty.expect("Repeat the password: ");
    tty.send("password2\r");
    tty.expect(&format!("Welcome, {bob}!"));
    tty.send("/quit\r");
    assert_eq!(tty.wait_exit(), 0);
}

#[test]
fn after_a_server_shutdown_the_client_waits_and_comes_back() {
    let state = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_in(state.path(), &[]);
    let port = server.port().to_string();
    let t = tokens();
    let name = unique_name("stay");
    let mut tty = chatting(&server, &t, &name);
    server.stop();
    tty.expect("the server is shutting down");
    tty.expect("reconnect");
    thread::sleep(Duration::from_millis(500));
    assert!(tty.running(), "the client gave up: {}", tty.text());
    assert_eq!(
        occurrences(&tty.text(), "shutting down"),
        1,
        "said once: {}",
        tty.text()
    );
    let _restarted = TestServer::start_in(state.path(), &["--port", &port]);
    tty.expect("Reconnected");
    tty.send("back again\r");
    tty.wait_screen("the echo", |s| s.contains(&format!("{name}: back again")));
    tty.send("/quit\r");
    assert_eq!(tty.wait_exit(), 0);
}

#[test]
fn a_shutdown_while_at_a_prompt_is_shown_at_once() {
    let mut server = TestServer::start();
    let t = tokens();
    let mut tty = Tty::spawn(&client_args(server.port(), &t.path, &[]), &[]);
    tty.expect("Name: ");
    server.stop();
    tty.expect("the server is shutting down");
}

#[test]
fn widening_the_terminal_keeps_every_chat_line() {
    let server = TestServer::start();
    let t = tokens();
    let name = unique_name("wide");
    let mut tty = chatting(&server, &t, &name);
    for i in 0..5 {
        tty.send(&format!("line number {i}\r"));
        tty.wait_screen("the echo", |s| s.contains(&format!("line number {i}")));
    }
    tty.send(&"a long draft that is still being typed ".repeat(2));
    tty.wait_screen("the draft", |s| s.contains("still being typed"));
    tty.resize(client_support::ROWS, 160);
    thread::sleep(Duration::from_millis(500));
    tty.resize(client_support::ROWS, 200);
    thread::sleep(Duration::from_millis(500));
    let screen = tty.screen();
    for i in 0..5 {
        assert!(
            screen.contains(&format!("{name}: line number {i}")),
            "line {i} erased:\n{screen}"
        );
    }
    tty.send("\r");
    tty.wait_screen("the draft sent", |s| s.contains("typed a long draft"));
    tty.send("/quit\r");
    assert_eq!(tty.wait_exit(), 0);
}

#[test]
fn your_own_line_shows_once() {
    let server = TestServer::start();
    let t = tokens();
    let name = unique_name("once");
    let mut tty = chatting(&server, &t, &name);
    tty.send("only once please\r");
    tty.wait_screen("the echo", |s| {
        s.contains(&format!("{name}: only once please"))
    });
    thread::sleep(Duration::from_millis(300));
    let screen = tty.screen();
    assert_eq!(occurrences(&screen, "only once please"), 1, "{screen}");
    tty.send("/quit\r");
    assert_eq!(tty.wait_exit(), 0);
}

#[test]
fn help_lists_every_command() {
    let server = TestServer::start();
    let t = tokens();
    let name = unique_name("helpme");
    let mut tty = chatting(&server, &t, &name);
    tty.send("/help\r");
    let screen = tty.wait_screen("the help", |s| s.contains("/logout"));
    for command in ["/who", "/quit", "/exit", "/logout", "/help"] {
        assert!(screen.contains(command), "{command} missing:\n{screen}");
    }
    tty.send("/exit\r");
    assert_eq!(tty.wait_exit(), 0);
}

#[test]
fn history_keys_bring_back_earlier_lines() {
    let server = TestServer::start();
    let t = tokens();
    let name = unique_name("hist");
    let mut tty = chatting(&server, &t, &name);
    tty.send("older line\r");
    tty.wait_screen("the echo", |s| s.contains(&format!("{name}: older line")));
    // Up brings it back; Left, Backspace and typing edit it; Home and End move.
    tty.send("\x1b[A\x1b[D\x7fN\x1b[H>\x1b[F<\r");
    tty.wait_screen("the edited echo", |s| {
        s.contains(&format!("{name}: >older liNe<"))
    });
    tty.send("/quit\r");
    assert_eq!(tty.wait_exit(), 0);
}

#[test]
fn keys_typed_while_the_token_logs_in_are_not_sent() {
    // A person who types name and password from habit while the saved token logs
    // them in must not broadcast the password.
    let server = TestServer::start();
    let t = tokens();
    let name = unique_name("habit");
    register_by_script(&server, &t, &name);
    let mut tty = Tty::spawn(&client_args(server.port(), &t.path, &[]), &[]);
    tty.send(&format!("{name}\rpassword1\r"));
    tty.expect(&format!("{name}> "));
    tty.send("typed at the prompt\r");
    tty.wait_screen("the echo", |s| s.contains("typed at the prompt"));
    tty.send("/quit\r");
    assert_eq!(tty.wait_exit(), 0);
    assert_eq!(history_texts(&server), ["typed at the prompt"]);
}
