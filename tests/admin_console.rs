//! The admin console (SPEC §4): commands on the server's stdin, output on stdout.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

const PW: &str = "secret-pw";

/// The number after `label` in the first output line containing it.
fn number_after(lines: &[String], label: &str) -> u64 {
    let line = lines
        .iter()
        .find(|l| l.contains(label))
        .unwrap_or_else(|| panic!("no `{label}` line in {lines:?}"));
    let rest = &line[line.find(label).unwrap() + label.len()..];
    rest.trim()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after `{label}` in {line:?}"))
}

fn trimmed(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn help_lists_every_command() {
    let mut server = TestServer::start();
    let out = server.admin_output("help").join("\n");
    for cmd in [
        "help",
        "status",
        "users",
        "pause",
        "resume",
        "logs",
        "clear-logs",
        "clear-ids",
        "kick",
        "say",
        "shutdown",
    ] {
        assert!(out.contains(cmd), "help does not mention {cmd}:\n{out}");
    }
}

#[test]
fn unknown_and_malformed_commands_are_reported() {
    let mut server = TestServer::start();
    server.admin("frobnicate now please");
    let line = server.expect_stdout("for frobnicate", |l| l.contains("frobnicate"));
    assert_eq!(line.trim(), "unknown command: frobnicate (try 'help')");
    // Known words with a missing or bad argument get a usage line saying what is wrong.
    for (command, expected) in [
        ("kick", "usage: kick NAME (the name is missing)"),
        ("say", "usage: say TEXT (the text is missing)"),
        (
            "logs many",
            "usage: logs [N] (N is how many last lines to show, a whole number; got 'many')",
        ),
        (
            "pause now",
            "usage: pause (it takes no argument, got 'now')",
        ),
    ] {
        server.admin(command);
        let line = server.expect_stdout(command, |l| l.starts_with("usage:"));
        assert_eq!(line.trim(), expected);
    }
    // Nothing changed: still serving, not paused.
    server.connect_greeted().ping();
    let status = server.admin_output("status").join("\n");
    assert!(status.contains("paused: no"), "{status}");
}

#[test]
fn status_reports_address_pause_users_connections_uptime() {
    let mut server = TestServer::start();
    let out = server.admin_output("status");
    let text = out.join("\n");
    assert!(text.contains("address:"), "{text}");
    assert!(
        text.contains(&server.port().to_string()),
        "address shows the port: {text}"
    );
    assert!(text.contains("paused: no"), "{text}");
    assert_eq!(number_after(&out, "users online:"), 0, "{text}");
    assert_eq!(number_after(&out, "connections:"), 0, "{text}");
    assert!(text.contains("uptime:"), "{text}");

    let (_a, _) = registered(&server, "ann", PW);
    let (_b1, _) = registered(&server, "bea", PW);
    let mut b2 = server.connect_greeted();
    b2.login("bea", PW);
    let _lurker = server.connect_greeted();
    let out = server.admin_output("status");
    assert_eq!(number_after(&out, "users online:"), 2, "{out:?}");
    assert_eq!(number_after(&out, "connections:"), 4, "{out:?}");

    server.admin_output("pause");
    let out = server.admin_output("status");
    assert!(out.join("\n").contains("paused: yes"), "{out:?}");
}

#[test]
fn users_lists_online_users() {
    let mut server = TestServer::start();
    let out = trimmed(&server.admin_output("users"));
    assert_eq!(out, vec!["(no users online)"]);
    let (_a, _) = registered(&server, "ann", PW);
    let (_b1, _) = registered(&server, "Bea", PW);
    let mut b2 = server.connect_greeted();
    b2.login("Bea", PW);
    let _lurker = server.connect_greeted();
    let mut out = trimmed(&server.admin_output("users"));
    out.sort();
    assert_eq!(out, vec!["Bea", "ann"], "each online user once");
}

#[test]
fn pause_holds_new_connections_until_resume() {
    let mut server = TestServer::start();
    let (mut a, _) = registered(&server, "ann", PW);
    server.admin("pause");
    server.expect_stdout("greeting paused", |l| l.trim() == "greeting paused");

    let mut waiting1 = server.connect();
    let mut waiting2 = server.connect();
    waiting1.expect_silence(QUIET);
    waiting2.expect_silence(Duration::from_millis(200));

    // Sessions already in go on.
    let m = a.say("still chatting");
    assert_eq!(m["from"], "ann");
    assert_eq!(a.who(), vec!["ann"]);

    server.admin("resume");
    server.expect_stdout("greeting resumed", |l| {
        l.trim() == "greeting resumed (2 waiting)"
    });
    waiting1.welcome();
    waiting2.welcome();
    waiting1.register("bea", PW);
    // New connections are greeted again.
    server.connect_greeted().ping();
}

#[test]
fn resume_with_nobody_waiting() {
    let mut server = TestServer::start();
    server.admin("pause");
    server.expect_stdout("greeting paused", |l| l.trim() == "greeting paused");
    server.admin("resume");
    server.expect_stdout("greeting resumed", |l| {
        l.trim() == "greeting resumed (0 waiting)"
    });
    server.connect_greeted();
}

#[test]
fn logs_prints_the_log_file_and_its_last_lines() {
    let mut server = TestServer::start();
    registered(&server, "ann", PW);
    registered(&server, "bea", PW);
    server.wait_log_line(RECV_TIMEOUT, |l| l.contains("bea"));
    let all = server.admin_output("logs");
    let text = all.join("\n");
    assert!(text.contains("ann") && text.contains("bea"), "{text}");
    assert!(all.len() >= 3, "{all:?}");

    let last = server.admin_output("logs 2");
    assert!(
        !last.is_empty() && last.len() <= 2,
        "`logs 2` prints at most 2 lines: {last:?}"
    );
    let file = server.log_text();
    for line in &last {
        assert!(file.contains(line.trim()), "{line:?} is not from the log");
    }
}

#[test]
fn clear_logs_empties_the_log_and_logging_goes_on() {
    let mut server = TestServer::start();
    // Kept connected: its disconnection would be a (correct) new line after the clear.
    let _ann = registered(&server, "ann", PW);
    server.wait_log_line(RECV_TIMEOUT, |l| l.contains("ann"));
    server.admin("clear-logs");
    server.expect_stdout("log cleared", |l| l.trim() == "log cleared");
    let after = server.log_text();
    assert!(
        !after.contains("ann"),
        "log still has the old lines after clear-logs:\n{after}"
    );
    assert_eq!(
        std::fs::metadata(server.log_path()).unwrap().len(),
        0,
        "{after}"
    );
    registered(&server, "bea", PW);
    server.wait_log_line(RECV_TIMEOUT, |l| l.contains("bea"));
    assert!(!server.log_text().contains("ann"));
}

#[test]
fn clear_ids_forgets_accounts_tokens_and_ips_durably() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_in(dir.path(), &[]);
    let (mut a, token) = registered(&server, "ann", PW);
    server.admin("clear-ids");
    server.expect_stdout("identities cleared", |l| l.trim() == "identities cleared");

    // The online user stays connected and can chat.
    a.ping();
    a.say("still here");

    let mut b = server.connect();
    let w = b.welcome();
    assert_eq!(w["known_name"], serde_json::Value::Null, "{w}");
    b.send(&json!({"type":"resume","token":token}));
    assert_eq!(b.expect_auth_error(), "invalid_token");
    b.send(&json!({"type":"login","name":"ann","password":PW}));
    assert_eq!(b.expect_auth_error(), "unknown_user");
    // The name can be registered again.
    b.register("ann", "another-password");
    drop(b);
    drop(a);
    server.stop();

    // Durable: after a restart the old password is gone, the new one works.
    let text = std::fs::read_to_string(dir.path().join("users.json")).unwrap();
    let server = TestServer::start_in(dir.path(), &[]);
    let mut c = server.connect_greeted();
    c.send(&json!({"type":"login","name":"ann","password":PW}));
    assert_eq!(c.expect_auth_error(), "bad_password", "users.json: {text}");
    c.login("ann", "another-password");
}

#[test]
fn clear_ids_is_on_disk_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_in(dir.path(), &[]);
    registered(&server, "ann", PW);
    server.admin("clear-ids");
    server.expect_stdout("identities cleared", |l| l.trim() == "identities cleared");
    server.kill_hard();
    let server = TestServer::start_in(dir.path(), &[]);
    let mut c = server.connect();
    assert_eq!(c.welcome()["known_name"], serde_json::Value::Null);
    c.send(&json!({"type":"login","name":"ann","password":PW}));
    assert_eq!(c.expect_auth_error(), "unknown_user");
}

#[test]
fn kick_closes_every_connection_of_the_user() {
    let mut server = TestServer::start();
    let (mut watcher, _) = registered(&server, "wat", PW);
    let (mut a1, token) = registered(&server, "ann", PW);
    let mut a2 = server.connect_greeted();
    a2.login("ann", PW);
    assert_eq!(watcher.recv(), json!({"type":"joined","name":"ann"}));

    server.admin("kick ann");
    server.expect_stdout("kicked", |l| l.trim() == "kicked ann (2 connections)");
    for c in [&mut a1, &mut a2] {
        let frames = c.expect_closed(RECV_TIMEOUT);
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0]["type"], "kicked", "{frames:?}");
        assert!(frames[0]["message"].is_string(), "{frames:?}");
    }
    assert_eq!(watcher.recv(), json!({"type":"left","name":"ann"}));
    assert_eq!(watcher.who(), vec!["wat"]);
    // Kicking is not banning: the account and its token remain.
    let mut again = server.connect_greeted();
    again.resume("ann", &token);
}

#[test]
fn kick_of_someone_not_online() {
    let mut server = TestServer::start();
    let (mut a, _) = registered(&server, "ann", PW);
    server.admin("kick nobody");
    server.expect_stdout("no such user", |l| {
        l.trim() == "no such user online: nobody"
    });
    a.expect_silence(QUIET);
    a.ping();
}

#[test]
fn admin_say_is_a_message_from_server_kept_in_history() {
    let mut server = TestServer::start();
    let (mut a, _) = registered(&server, "ann", PW);
    let before = a.say("from ann");
    server.admin("say hello everyone, from the admin");
    let line = server.expect_stdout("sent message", |l| l.contains("sent message #"));
    let m = a.recv_type("message");
    assert_eq!(m["from"], "server", "{m}");
    assert_eq!(m["text"], "hello everyone, from the admin", "{m}");
    assert_eq!(m["id"], before["id"].as_u64().unwrap() + 1, "{m}");
    assert!(m["ts"].is_u64(), "{m}");
    assert_eq!(line.trim(), format!("sent message #{}", m["id"]));
    let mut b = server.connect_greeted();
    let ok = b.register_full("bea", PW);
    assert_eq!(ok.messages.last(), Some(&m), "in history");
}

fn assert_console_command_shuts_down(cmd: &str) {
    let mut server = TestServer::start();
    let (mut a, _) = registered(&server, "ann", PW);
    let mut lurker = server.connect_greeted();
    server.admin(cmd);
    server.expect_stdout("shutting down", |l| l.trim() == "shutting down");
    for c in [&mut a, &mut lurker] {
        let frames = c.expect_closed(Duration::from_secs(20));
        let last = frames.last().unwrap_or_else(|| panic!("{cmd}: no frame"));
        assert_eq!(last["type"], "shutdown", "{cmd}: {frames:?}");
        assert!(last["message"].is_string(), "{frames:?}");
    }
    let status = server
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("{cmd}: server still running"));
    assert_eq!(status.code(), Some(0), "{cmd}: {status:?}");
}

#[test]
fn shutdown_command() {
    assert_console_command_shuts_down("shutdown");
}

#[test]
fn exit_command() {
    assert_console_command_shuts_down("exit");
}

#[test]
fn quit_command() {
    assert_console_command_shuts_down("quit");
}

#[test]
fn end_of_stdin_closes_only_the_console() {
    let mut server = TestServer::start();
    server.close_stdin();
    // Said once on the console, so whoever watches it knows commands are over.
    let said = server.expect_stdout("end of input", |l| l.contains("console input ended"));
    assert!(said.contains("keeps running"), "{said}");
    assert_eq!(server.read_stdout_line(QUIET), None, "said once");
    // The server keeps serving: nothing to wait for but its continued work.
    let (mut a, _) = registered(&server, "ann", PW);
    a.say("still up");
    assert!(
        server.wait_exit(QUIET).is_none(),
        "server exited at end of stdin"
    );
    let mut b = server.connect_greeted();
    b.login("ann", PW);
    // And it still shuts down cleanly on a signal.
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(20)).expect("exit");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn auth_timeout_starts_at_the_welcome_not_while_paused() {
    let mut server = TestServer::start_with(&["--auth-timeout", "1"]);
    server.admin("pause");
    server.expect_stdout("greeting paused", |l| l.trim() == "greeting paused");
    let mut waiting = server.connect();
    // Longer than the authentication timeout, ungreeted: still open.
    waiting.expect_silence(Duration::from_millis(2500));
    server.admin("resume");
    server.expect_stdout("greeting resumed", |l| l.contains("greeting resumed"));
    waiting.welcome();
    waiting.register("ann", PW);
}
