//! Black-box tests of the `echochat` client against the real server: scripted mode
//! (stdin a pipe) end to end, and terminal mode through a pseudo-terminal.
//!
//! Every client gets `--token-file` in a temporary folder and is killed on drop; the
//! server comes from the shared harness in `tests/common`.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{collect_pipe, unique_name, without_echochat_env, TestServer, RECV_TIMEOUT};
use serde_json::Value;

/// How long a client run may take before the test calls it hung.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn client_bin() -> &'static str {
    env!("CARGO_BIN_EXE_echochat")
}

/// A client command for the server on 127.0.0.1:`port`, with no `ECHOCHAT_*`
/// variable inherited.
fn client_command(port: u16, token_file: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(client_bin());
    cmd.args([
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--token-file",
    ])
    .arg(token_file)
    .args(extra);
    without_echochat_env(&mut cmd);
    cmd
}

fn text(buf: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
}

/// A scripted client whose stdin stays open until the test closes it; killed on drop.
struct ScriptedClient {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Receiver<String>,
    stdout_seen: Vec<String>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl ScriptedClient {
    fn spawn(port: u16, token_file: &Path, extra: &[&str]) -> ScriptedClient {
        let mut child = client_command(port, token_file, extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn echochat");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let stderr = collect_pipe(child.stderr.take().unwrap());
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = std::io::BufReader::new(stdout);
            let mut line = String::new();
            while let Ok(1..) = std::io::BufRead::read_line(&mut reader, &mut line) {
                if tx.send(line.trim_end_matches('\n').to_string()).is_err() {
                    break;
                }
                line.clear();
            }
        });
        ScriptedClient {
            child,
            stdin,
            stdout: rx,
            stdout_seen: Vec::new(),
            stderr,
        }
    }

    fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}")
            .and_then(|_| stdin.flush())
            .expect("write to client");
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for a stdout line satisfying `pred`.
    fn expect_stdout(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + RUN_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    self.stdout_seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no stdout line {what}; stdout {:?}; stderr {}",
                    self.stdout_seen,
                    text(&self.stderr)
                ),
            }
        }
    }

    /// Waits for the client to exit by itself (stdin stays as it is); returns its
    /// status and all its output.
    fn wait(mut self) -> Finished {
        let deadline = Instant::now() + RUN_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "client still running after {RUN_TIMEOUT:?}; stderr: {}",
                text(&self.stderr)
            );
            thread::sleep(Duration::from_millis(20));
        };
        let mut stdout = std::mem::take(&mut self.stdout_seen);
        // The reader thread ends at end of file, after the exit.
        while let Ok(line) = self.stdout.recv_timeout(RECV_TIMEOUT) {
            stdout.push(line);
        }
        thread::sleep(Duration::from_millis(50));
        Finished {
            status,
            stdout,
            stderr: text(&self.stderr),
        }
    }
}

impl Drop for ScriptedClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a client run ended.
#[derive(Debug)]
struct Finished {
    status: ExitStatus,
    stdout: Vec<String>,
    stderr: String,
}

impl Finished {
    fn assert_success(&self) -> &Self {
        assert!(self.status.success(), "client failed: {self:#?}");
        self
    }

    fn assert_failure(&self) -> &Self {
        assert_eq!(self.status.code().map(|c| c != 0), Some(true), "{self:#?}");
        assert!(
            !self.stderr.trim().is_empty(),
            "no reason on stderr: {self:#?}"
        );
        assert!(!self.stderr.contains("panicked"), "{self:#?}");
        self
    }

    /// The `(from, text)` of every `[HH:MM:SS] from: text` line on stdout.
    fn messages(&self) -> Vec<(String, String)> {
        self.stdout
            .iter()
            .filter_map(|l| parse_message_line(l))
            .collect()
    }
}

/// Splits `[HH:MM:SS] from: text`; `None` for other lines.
fn parse_message_line(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix('[')?;
    let (clock, rest) = rest.split_once("] ")?;
    let clock_ok = clock.len() == 8
        && clock.char_indices().all(|(i, c)| {
            if i == 2 || i == 5 {
                c == ':'
            } else {
                c.is_ascii_digit()
            }
        });
    let (from, text) = rest.split_once(": ")?;
    (clock_ok && !from.starts_with("* ")).then(|| (from.to_string(), text.to_string()))
}

/// Runs a scripted client to its end with `input` on stdin.
fn run_script(port: u16, token_file: &Path, extra: &[&str], input: &str) -> Finished {
    let mut client = ScriptedClient::spawn(port, token_file, extra);
    let stdin = client.stdin.as_mut().unwrap();
    stdin.write_all(input.as_bytes()).expect("write stdin");
    client.close_stdin();
    client.wait()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn token_file_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("read token file"))
        .expect("token file is JSON")
}

fn server_key(server: &TestServer) -> String {
    format!("127.0.0.1:{}", server.port())
}

/// The token the file holds for `name` on 127.0.0.1:`port`.
fn saved_token_on(path: &Path, port: u16, name: &str) -> Option<String> {
    if !path.exists() {
        return None;
    }
    token_file_json(path)["servers"][format!("127.0.0.1:{port}")]["accounts"][name]["token"]
        .as_str()
        .map(str::to_string)
}

fn saved_token(path: &Path, server: &TestServer, name: &str) -> Option<String> {
    saved_token_on(path, server.port(), name)
}

struct Temp {
    _dir: tempfile::TempDir,
    tokens: PathBuf,
}

fn temp() -> Temp {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("echochat").join("tokens.json");
    Temp { _dir: dir, tokens }
}

#[test]
fn scripted_registers_says_and_quits_after_the_echo() {
    let server = TestServer::start();
    let t = temp();
    let name = unique_name("alice");
    let run = run_script(
        server.port(),
        &t.tokens,
        &[],
        &format!("{name}\npassword1\nhello there\nsecond line\n"),
    );
    run.assert_success();
    assert_eq!(
        run.messages(),
        pairs(&[(&name, "hello there"), (&name, "second line")]),
        "{run:#?}"
    );

    // The server really has them, in order.
    let mut observer = server.connect_greeted();
    let history = observer
        .register_full(&unique_name("obs"), "password1")
        .messages;
    let texts: Vec<&str> = history
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["hello there", "second line"]);

    let mode = std::fs::metadata(&t.tokens).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "token file must be owner-only");
    assert!(saved_token(&t.tokens, &server, &name).is_some());
}

#[test]
fn scripted_second_run_resumes_with_the_token_and_gets_history() {
    let server = TestServer::start();
    let t = temp();
    let name = unique_name("bob");
    run_script(
        server.port(),
        &t.tokens,
        &[],
        &format!("{name}\npassword1\nfirst\n"),
    )
    .assert_success();
    let first_token = saved_token(&t.tokens, &server, &name).expect("a token");

    // No name or password lines: the saved token logs in.
    let run = run_script(server.port(), &t.tokens, &[], "second\n");
    run.assert_success();
    assert_eq!(
        run.messages(),
        pairs(&[(&name, "first"), (&name, "second")]),
        "{run:#?}"
    );
    let second_token = saved_token(&t.tokens, &server, &name).expect("a token");
    assert_ne!(
        first_token, second_token,
        "a resumed token is spent and replaced"
    );

    // The spent token no longer works on the wire.
    let mut raw = server.connect_greeted();
    raw.send(&serde_json::json!({"type":"resume","token":first_token}));
    assert_eq!(raw.expect_auth_error(), "invalid_token");
}

#[test]
fn scripted_logs_in_an_existing_account_and_refuses_a_wrong_password() {
    let server = TestServer::start();
    let name = unique_name("carol");
    run_script(
        server.port(),
        &temp().tokens,
        &[],
        &format!("{name}\npassword1\nhi\n"),
    )
    .assert_success();

    let t = temp();
    let run = run_script(
        server.port(),
        &t.tokens,
        &[],
        &format!("{name}\nwrong-password\nnope\n"),
    );
    run.assert_failure();
    assert!(run.stderr.contains("Wrong password"), "{run:#?}");
    assert_eq!(saved_token(&t.tokens, &server, &name), None);

    let run = run_script(
        server.port(),
        &t.tokens,
        &[],
        &format!("{name}\npassword1\nagain\n"),
    );
    run.assert_success();
    assert_eq!(run.messages(), pairs(&[(&name, "hi"), (&name, "again")]));
}

#[test]
fn scripted_name_flag_skips_the_name_line() {
    let server = TestServer::start();
    let name = unique_name("dave");
    let run = run_script(
        server.port(),
        &temp().tokens,
        &["--name", &name],
        "password1\nhi\n",
    );
    run.assert_success();
    assert_eq!(run.messages(), pairs(&[(&name, "hi")]));
}

#[test]
fn scripted_invalid_name_fails_with_a_sentence() {
    let server = TestServer::start();
    let run = run_script(
        server.port(),
        &temp().tokens,
        &[],
        "not a name\npassword1\nhi\n",
    );
    run.assert_failure();
    assert!(run.stderr.contains("A name is"), "{run:#?}");
    assert!(run.messages().is_empty());
}

#[test]
fn scripted_input_ending_before_the_password_fails() {
    let server = TestServer::start();
    let run = run_script(server.port(), &temp().tokens, &[], "erin\n");
    run.assert_failure();
    assert!(run.stderr.contains("password"), "{run:#?}");
}

#[test]
fn scripted_stale_token_after_clear_ids_falls_back_to_name_and_password() {
    let mut server = TestServer::start();
    let t = temp();
    let name = unique_name("fay");
    run_script(
        server.port(),
        &t.tokens,
        &[],
        &format!("{name}\npassword1\nbefore\n"),
    )
    .assert_success();
    server.admin_output("clear-ids");

    // The token is refused, so the first lines are read as name and password again;
    // the account is gone, so the client registers it anew.
    let run = run_script(
        server.port(),
        &t.tokens,
        &[],
        &format!("{name}\npassword2\nafter\n"),
    );
    run.assert_success();
    assert!(run.stderr.contains("token was refused"), "{run:#?}");
    assert_eq!(
        run.messages().last(),
        Some(&(name.clone(), "after".to_string()))
    );

    // And the new token works on the next run.
    let run = run_script(server.port(), &t.tokens, &[], "third\n");
    run.assert_success();
    assert_eq!(
        run.messages().last(),
        Some(&(name.clone(), "third".to_string()))
    );
}

#[test]
fn scripted_stale_token_without_credentials_fails_and_forgets_the_token() {
    let mut server = TestServer::start();
    let t = temp();
    let name = unique_name("gil");
    run_script(
        server.port(),
        &t.tokens,
        &[],
        &format!("{name}\npassword1\n"),
    )
    .assert_success();
    server.admin_output("clear-ids");

    // The script expected the token to work: its one chat line becomes the name, and
    // the input ends before a password.
    let run = run_script(server.port(), &t.tokens, &[], "just chatting\n");
    run.assert_failure();
    assert!(run.messages().is_empty());
    assert!(
        saved_token(&t.tokens, &server, &name).is_none(),
        "a refused token is removed"
    );
}

#[test]
fn scripted_unreachable_server_is_one_line_and_non_zero() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let run = run_script(port, &temp().tokens, &[], "zed\npassword1\nhi\n");
    run.assert_failure();
    assert!(run.stderr.contains("cannot connect"), "{run:#?}");
    assert_eq!(run.stderr.trim().lines().count(), 1, "{run:#?}");
    assert!(run.stdout.is_empty());
}

#[test]
fn scripted_commands() {
    let server = TestServer::start();
    let t = temp();
    let name = unique_name("hal");
    let run = run_script(
        server.port(),
        &t.tokens,
        &[],
        &format!(
            "{name}\npassword1\n/who\n/nonsense\n//starts with a slash\n\n/logout\nnot sent\n"
        ),
    );
    run.assert_success();
    // Answers to commands are not chat: they go to stderr.
    assert!(
        run.stderr.contains(&format!("* online (1): {name}")),
        "{run:#?}"
    );
    assert!(!run.stdout.iter().any(|l| l.contains("online")), "{run:#?}");
    assert!(
        run.stderr.contains("Unknown command '/nonsense'"),
        "{run:#?}"
    );
    assert_eq!(run.messages(), pairs(&[(&name, "/starts with a slash")]));
    assert!(
        saved_token(&t.tokens, &server, &name).is_none(),
        "/logout forgets the token"
    );
    // ...and the server revoked it: the next run needs credentials.
    let run = run_script(server.port(), &t.tokens, &[], "x\n");
    run.assert_failure();
}

#[test]
fn scripted_mode_prints_joins_leaves_and_others_messages() {
    let server = TestServer::start();
    let name = unique_name("ivy");
    let mut client = ScriptedClient::spawn(server.port(), &temp().tokens, &[]);
    client.send_line(&name);
    client.send_line("password1");
    client.send_line("ready");
    client.expect_stdout("own echo", |l| l.ends_with(&format!("{name}: ready")));

    let other = unique_name("jay");
    let (mut raw, _) = common::registered(&server, &other, "password1");
    client.expect_stdout("join", |l| l.ends_with(&format!("* {other} joined")));
    raw.say("hello ivy");
    client.expect_stdout("message", |l| l.ends_with(&format!("{other}: hello ivy")));
    drop(raw);
    client.expect_stdout("leave", |l| l.ends_with(&format!("* {other} left")));
    client.close_stdin();
    client.wait().assert_success();
}

#[test]
fn scripted_many_lines_are_all_delivered_in_order() {
    // More than the server's default burst of says: the client paces and resends.
    let server = TestServer::start_with(&["--msg-rate", "5"]);
    let name = unique_name("kim");
    let lines: Vec<String> = (0..30).map(|i| format!("line {i}")).collect();
    let input = format!("{name}\npassword1\n{}\n", lines.join("\n"));
    let run = run_script(server.port(), &temp().tokens, &[], &input);
    run.assert_success();
    let got: Vec<String> = run.messages().into_iter().map(|(_, text)| text).collect();
    assert_eq!(got, lines, "{run:#?}");
}

#[test]
fn scripted_kick_ends_the_session() {
    let mut server = TestServer::start();
    let name = unique_name("lee");
    let mut client = ScriptedClient::spawn(server.port(), &temp().tokens, &[]);
    client.send_line(&name);
    client.send_line("password1");
    client.send_line("hi");
    client.expect_stdout("own echo", |l| l.ends_with(&format!("{name}: hi")));
    server.admin(&format!("kick {name}"));
    let run = client.wait();
    assert!(run.status.success(), "{run:#?}");
    assert!(
        run.stderr.contains("removed by the server's admin"),
        "{run:#?}"
    );
    assert!(!run.stderr.contains("removed from"), "said twice: {run:#?}");
}

#[test]
fn scripted_server_shutdown_ends_the_session() {
    let mut server = TestServer::start();
    let name = unique_name("max");
    let mut client = ScriptedClient::spawn(server.port(), &temp().tokens, &[]);
    client.send_line(&name);
    client.send_line("password1");
    client.send_line("hi");
    client.expect_stdout("own echo", |l| l.ends_with(&format!("{name}: hi")));
    server.stop();
    let run = client.wait();
    assert!(run.status.success(), "{run:#?}");
    assert!(run.stderr.contains("shutting down"), "{run:#?}");
}

/// Waits until the token the client saved for 127.0.0.1:`port` is in the server's
/// `users.json` (the server may write tokens in batches, and a crash before that
/// would rightly make the client fall back to its password).
fn wait_for_token_on_disk(token_file: &Path, state_dir: &Path, port: &str, name: &str) {
    let port: u16 = port.parse().expect("a port");
    let token = saved_token_on(token_file, port, name).expect("a saved token");
    let digest = echochat::auth::token_digest(&token);
    let users = state_dir.join("users.json");
    let deadline = Instant::now() + RUN_TIMEOUT;
    while !std::fs::read_to_string(&users)
        .unwrap_or_default()
        .contains(&digest)
    {
        assert!(Instant::now() < deadline, "token never reached users.json");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn scripted_reconnects_and_resumes_after_a_server_crash() {
    let state = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_in(state.path(), &[]);
    let port = server.port().to_string();
    let t = temp();
    let name = unique_name("ned");
    let mut client = ScriptedClient::spawn(server.port(), &t.tokens, &[]);
    client.send_line(&name);
    client.send_line("password1");
    client.send_line("before");
    client.expect_stdout("own echo", |l| l.ends_with(&format!("{name}: before")));

    // Tokens may be written in batches: crash only once ours is on disk.
    wait_for_token_on_disk(&t.tokens, state.path(), &port, &name);
    server.kill_hard();
    drop(server);

    let _server = TestServer::start_in(state.path(), &["--port", &port]);
    assert_eq!(
        _server.port().to_string(),
        port,
        "restarted on another port"
    );
    client.send_line("after");
    client.expect_stdout("echo after reconnecting", |l| {
        l.ends_with(&format!("{name}: after"))
    });
    client.close_stdin();
    let run = client.wait();
    run.assert_success();
    assert!(run.stderr.contains("Lost the connection"), "{run:#?}");
    assert!(run.stderr.contains("Reconnected"), "{run:#?}");
}

#[test]
fn scripted_corrupt_token_file_is_a_warning_and_gets_rewritten() {
    let server = TestServer::start();
    let t = temp();
    std::fs::create_dir_all(t.tokens.parent().unwrap()).unwrap();
    std::fs::write(&t.tokens, "{ this is not json").unwrap();
    let name = unique_name("olga");
    let run = run_script(
        server.port(),
        &t.tokens,
        &[],
        &format!("{name}\npassword1\nhi\n"),
    );
    run.assert_success();
    assert!(run.stderr.contains("corrupt"), "{run:#?}");
    assert!(saved_token(&t.tokens, &server, &name).is_some());
}

#[test]
fn scripted_host_and_port_from_the_environment() {
    let server = TestServer::start();
    let t = temp();
    let name = unique_name("pia");
    let mut cmd = Command::new(client_bin());
    without_echochat_env(&mut cmd);
    let mut child = cmd
        .env("ECHOCHAT_CLIENT_HOST", "127.0.0.1")
        .env("ECHOCHAT_CLIENT_PORT", server.port().to_string())
        // The server's variables are the server's: they must not steer the client.
        .env("ECHOCHAT_HOST", "192.0.2.1")
        .env("ECHOCHAT_PORT", "1")
        .env("ECHOCHAT_TOKEN_FILE", &t.tokens)
        .env("ECHOCHAT_NAME", &name)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"password1\nvia env\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("{name}: via env")), "{out:?}");
    assert!(saved_token(&t.tokens, &server, &name).is_some());
}

/// The texts of every message in the server's history, as a new observer sees them.
fn history_texts(server: &TestServer) -> Vec<String> {
    let mut observer = server.connect_greeted();
    observer
        .register_full(&unique_name("obs"), "password1")
        .messages
        .iter()
        .map(|m| m["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn scripted_name_flag_never_uses_another_accounts_token() {
    let server = TestServer::start();
    let t = temp();
    let alice = unique_name("alice");
    let bob = unique_name("bob");
    run_script(
        server.port(),
        &t.tokens,
        &[],
        &format!("{alice}\npassword1\nhello\n"),
    )
    .assert_success();
    // The README's own example: bob's password line must not become alice's chat.
    let run = run_script(
        server.port(),
        &t.tokens,
        &["--name", &bob],
        "battery staple\nhi alice\n",
    );
    run.assert_success();
    assert_eq!(
        run.messages().last(),
        Some(&(bob.clone(), "hi alice".to_string())),
        "{run:#?}"
    );
    assert_eq!(history_texts(&server), ["hello", "hi alice"]);
    assert!(saved_token(&t.tokens, &server, &alice).is_some());
    assert!(saved_token(&t.tokens, &server, &bob).is_some());
}

#[test]
fn scripted_password_line_is_never_sent_when_a_token_is_valid() {
    let server = TestServer::start();
    let t = temp();
    let dave = unique_name("dave");
    let erin = unique_name("erin");
    // Without --name: a script that always gives its name and password; the second
    // run logs in with the token and must not send either line.
    for text in ["one", "two"] {
        run_script(
            server.port(),
            &t.tokens,
            &[],
            &format!("{erin}\nerin's secret\n{text}\n"),
        )
        .assert_success();
    }
    // With --name: the first line is the password; a second run has a token, and the
    // same script must still not send it.
    for text in ["three", "four"] {
        run_script(
            server.port(),
            &t.tokens,
            &["--name", &dave],
            &format!("dave's secret\n{text}\n"),
        )
        .assert_success();
    }
    assert_eq!(history_texts(&server), ["one", "two", "three", "four"]);
    // A script that only chats still has every line sent, with or without --name.
    run_script(server.port(), &t.tokens, &["--name", &dave], "five\n").assert_success();
    run_script(server.port(), &t.tokens, &[], "six\n").assert_success();
    assert_eq!(
        history_texts(&server),
        ["one", "two", "three", "four", "five", "six"]
    );
}

#[test]
fn scripted_input_naming_another_account_than_the_token_sends_nothing() {
    let server = TestServer::start();
    let t = temp();
    let gus = unique_name("gus");
    let hana = unique_name("hana");
    for name in [&gus, &hana] {
        run_script(
            server.port(),
            &t.tokens,
            &["--name", name],
            &format!("password-of-{name}\n"),
        )
        .assert_success();
    }
    // The last login was hana's; the script says it is gus.
    let run = run_script(
        server.port(),
        &t.tokens,
        &[],
        &format!("{gus}\npassword-of-{gus}\nhello\n"),
    );
    run.assert_failure();
    assert!(run.stderr.contains("--name"), "{run:#?}");
    assert!(history_texts(&server).is_empty());
}

#[test]
fn scripted_token_file_of_the_old_format_is_used_and_converted() {
    let server = TestServer::start();
    let t = temp();
    let name = unique_name("old");
    let (_raw, token) = common::registered(&server, &name, "password1");
    std::fs::create_dir_all(t.tokens.parent().unwrap()).unwrap();
    std::fs::write(
        &t.tokens,
        serde_json::json!({ server_key(&server): token }).to_string(),
    )
    .unwrap();
    // With --name, a token whose name is unknown is not used.
    let other = unique_name("new");
    let run = run_script(
        server.port(),
        &t.tokens,
        &["--name", &other],
        "password2\nfrom the new one\n",
    );
    run.assert_success();
    assert_eq!(run.messages().last().unwrap().0, other, "{run:#?}");
    // Without it, the old token logs in, and is then kept under its name.
    std::fs::write(
        &t.tokens,
        serde_json::json!({ server_key(&server): token }).to_string(),
    )
    .unwrap();
    let run = run_script(server.port(), &t.tokens, &[], "from the old one\n");
    run.assert_success();
    assert!(!run.stderr.contains("corrupt"), "{run:#?}");
    assert_eq!(
        run.messages().last(),
        Some(&(name.clone(), "from the old one".to_string())),
        "{run:#?}"
    );
    assert!(saved_token(&t.tokens, &server, &name).is_some());
}

#[test]
fn help_flag_explains_commands_and_scripted_mode() {
    let out = Command::new(client_bin())
        .arg("--help")
        .env_clear()
        .output()
        .expect("run echochat --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "/who",
        "/quit",
        "/exit",
        "/logout",
        "/help",
        "not a terminal",
        "ECHOCHAT_CLIENT_HOST",
    ] {
        assert!(
            help.contains(needle),
            "{needle} missing from --help:\n{help}"
        );
    }
}

/// Terminal mode, through a pseudo-terminal.
mod terminal {
    use super::*;
    use rexpect::reader::Options;
    use rexpect::session::{spawn_with_options, PtySession};

    /// Runs the client on a pseudo-terminal with echo on, as a real terminal has it
    /// (rexpect turns echo off by default, which would hide an echoed password).
    fn spawn_tty(args: &[&str]) -> PtySession {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("stty echo; exec \"$0\" \"$@\"")
            .arg(client_bin())
            .args(args)
            .env("TERM", "xterm");
        without_echochat_env(&mut cmd);
        let options = Options::default()
            .timeout_ms(Some(RUN_TIMEOUT.as_millis() as u64))
            .strip_ansi_escape_codes(true);
        spawn_with_options(cmd, options).expect("spawn echochat on a pty")
    }

    /// The client on a pseudo-terminal, pointed at `server` with its own token file.
    fn spawn_tty_on(server: &TestServer, tokens: &Path) -> PtySession {
        let port = server.port().to_string();
        let token_file = tokens.to_string_lossy().into_owned();
        spawn_tty(&[
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--token-file",
            &token_file,
        ])
    }

    /// Everything the session printed up to and including `needle`.
    fn expect(p: &mut PtySession, seen: &mut String, needle: &str) {
        match p.exp_string(needle) {
            Ok(before) => {
                seen.push_str(&before);
                seen.push_str(needle);
            }
            Err(e) => panic!("waiting for {needle:?}: {e}; so far: {seen:?}"),
        }
    }

    /// Types a line into the chat's line editor a key at a time, each once the editor
    /// has shown the previous one, as a person types.
    fn type_line(p: &mut PtySession, seen: &mut String, line: &str) {
        for c in line.chars() {
            p.send(&c.to_string()).unwrap();
            p.flush().unwrap();
            expect(p, seen, &c.to_string());
        }
        p.send("\r").unwrap();
        p.flush().unwrap();
    }

    fn wait_exit(p: &mut PtySession, seen: &mut String) {
        match p.exp_eof() {
            Ok(rest) => seen.push_str(&rest),
            Err(e) => panic!("client did not exit: {e}; so far: {seen:?}"),
        }
    }

    #[test]
    fn prompts_for_host_and_port_refuses_a_bad_port_and_registers() {
        let server = TestServer::start();
        let t = temp();
        let name = unique_name("tina");
        let password = "pw-never-shown-42";
        let token_file = t.tokens.to_string_lossy().into_owned();
        let mut p = spawn_tty(&["--token-file", &token_file]);
        let mut seen = String::new();

        expect(&mut p, &mut seen, "Host [127.0.0.1]: ");
        p.send_line("").unwrap();
        expect(&mut p, &mut seen, "Port [9090]: ");
        p.send_line("abc").unwrap();
        expect(&mut p, &mut seen, "is not a number");
        expect(&mut p, &mut seen, "Port [9090]: ");
        p.send_line("70000").unwrap();
        expect(&mut p, &mut seen, "out of range");
        expect(&mut p, &mut seen, "Port [9090]: ");
        p.send_line(&server.port().to_string()).unwrap();
        expect(&mut p, &mut seen, "Name: ");
        p.send_line(&name).unwrap();
        expect(&mut p, &mut seen, "Password: ");
        p.send_line(password).unwrap();
        expect(&mut p, &mut seen, "Register it? [Y/n] ");
        p.send_line("y").unwrap();
        expect(&mut p, &mut seen, "Choose a password: ");
        p.send_line(password).unwrap();
        expect(&mut p, &mut seen, "Repeat the password: ");
        p.send_line("something else").unwrap();
        expect(&mut p, &mut seen, "differ");
        expect(&mut p, &mut seen, "Choose a password: ");
        p.send_line(password).unwrap();
        expect(&mut p, &mut seen, "Repeat the password: ");
        p.send_line(password).unwrap();
        expect(&mut p, &mut seen, &format!("Welcome, {name}!"));
        expect(&mut p, &mut seen, "/help lists the commands.");
        expect(&mut p, &mut seen, &format!("{name}> "));
        type_line(&mut p, &mut seen, "hello from a terminal");
        expect(&mut p, &mut seen, &format!("{name}: hello from a terminal"));
        expect(&mut p, &mut seen, &format!("{name}> "));
        type_line(&mut p, &mut seen, "/quit");
        wait_exit(&mut p, &mut seen);

        assert!(seen.contains(&name), "typed name is echoed: {seen:?}");
        assert!(!seen.contains(password), "password was echoed: {seen:?}");
        assert!(
            !seen.contains("something else"),
            "password was echoed: {seen:?}"
        );
        assert!(saved_token(&t.tokens, &server, &name).is_some());
    }

    #[test]
    fn resumes_with_the_saved_token_and_greets_a_known_address() {
        let server = TestServer::start();
        let t = temp();
        let name = unique_name("uma");
        run_script(
            server.port(),
            &t.tokens,
            &[],
            &format!("{name}\npassword1\nearlier\n"),
        )
        .assert_success();
        let port = server.port().to_string();

        // With the token: no password asked, history shown.
        let mut p = spawn_tty_on(&server, &t.tokens);
        let mut seen = String::new();
        expect(&mut p, &mut seen, &format!("Welcome back, {name}."));
        expect(&mut p, &mut seen, &format!("{name}: earlier"));
        expect(&mut p, &mut seen, &format!("{name}> "));
        type_line(&mut p, &mut seen, "/who");
        expect(&mut p, &mut seen, &format!("* online (1): {name}"));
        expect(&mut p, &mut seen, &format!("{name}> "));
        type_line(&mut p, &mut seen, "/bogus");
        expect(&mut p, &mut seen, "type /help");
        expect(&mut p, &mut seen, &format!("{name}> "));
        type_line(&mut p, &mut seen, "/quit");
        wait_exit(&mut p, &mut seen);
        assert!(!seen.contains("Password"), "{seen:?}");

        // Without a token, the server knows this address: its name is offered at the
        // name prompt; a wrong password gets a sentence and another try.
        let other_tokens = temp();
        let other_file = other_tokens.tokens.to_string_lossy().into_owned();
        let mut p = spawn_tty(&[
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--token-file",
            &other_file,
        ]);
        let mut seen = String::new();
        expect(&mut p, &mut seen, &format!("Name [{name}]: "));
        p.send_line("").unwrap();
        expect(&mut p, &mut seen, "Password: ");
        p.send_line("wrong-one").unwrap();
        expect(&mut p, &mut seen, "Wrong password");
        expect(&mut p, &mut seen, &format!("Name [{name}]: "));
        p.send_line("").unwrap();
        expect(&mut p, &mut seen, "Password: ");
        p.send_line("password1").unwrap();
        expect(&mut p, &mut seen, &format!("Logged in as {name}."));
        expect(&mut p, &mut seen, &format!("{name}: earlier"));
        expect(&mut p, &mut seen, &format!("{name}> "));
        type_line(&mut p, &mut seen, "/logout");
        expect(&mut p, &mut seen, "Logged out");
        wait_exit(&mut p, &mut seen);
        assert!(!seen.contains("wrong-one"), "{seen:?}");
    }

    #[test]
    fn reconnects_after_a_server_crash() {
        let state = tempfile::tempdir().unwrap();
        let mut server = TestServer::start_in(state.path(), &[]);
        let port = server.port().to_string();
        let t = temp();
        let name = unique_name("rex");
        run_script(
            server.port(),
            &t.tokens,
            &[],
            &format!("{name}\npassword1\n"),
        )
        .assert_success();
        let mut p = spawn_tty_on(&server, &t.tokens);
        let mut seen = String::new();
        expect(&mut p, &mut seen, &format!("Welcome back, {name}."));
        expect(&mut p, &mut seen, &format!("{name}> "));

        wait_for_token_on_disk(&t.tokens, state.path(), &port, &name);
        server.kill_hard();
        expect(&mut p, &mut seen, "Lost the connection");
        let restarted = TestServer::start_in(state.path(), &["--port", &port]);
        assert_eq!(
            restarted.port().to_string(),
            port,
            "restarted on another port"
        );
        expect(&mut p, &mut seen, "Reconnected");
        expect(&mut p, &mut seen, &format!("{name}> "));
        type_line(&mut p, &mut seen, "back again");
        expect(&mut p, &mut seen, &format!("{name}: back again"));
        expect(&mut p, &mut seen, &format!("{name}> "));
        type_line(&mut p, &mut seen, "/quit");
        wait_exit(&mut p, &mut seen);
    }

    /// Line mode and echo are on in the pseudo-terminal (checked after the client exited).
    fn assert_terminal_restored(p: &PtySession) {
        let master = p.process().get_file_handle().unwrap();
        // SAFETY: tcgetattr writes only into the termios we own.
        let mut termios: libc::termios = unsafe { std::mem::zeroed() };
        assert_eq!(
            unsafe { libc::tcgetattr(master.as_raw_fd(), &mut termios) },
            0
        );
        assert_ne!(
            termios.c_lflag & libc::ICANON,
            0,
            "terminal left in raw mode"
        );
        assert_ne!(
            termios.c_lflag & libc::ECHO,
            0,
            "terminal left without echo"
        );
    }

    #[test]
    fn ctrl_c_at_the_password_prompt_exits_and_restores_echo() {
        let server = TestServer::start();
        let t = temp();
        let mut p = spawn_tty_on(&server, &t.tokens);
        let mut seen = String::new();
        expect(&mut p, &mut seen, "Name: ");
        p.send_line(&unique_name("quinn")).unwrap();
        expect(&mut p, &mut seen, "Password: ");
        p.send_control('c').unwrap();
        wait_exit(&mut p, &mut seen);
        assert_terminal_restored(&p);
        match p.process().wait().unwrap() {
            rexpect::process::WaitStatus::Exited(_, code) => assert_eq!(code, 130, "{seen:?}"),
            other => panic!("client did not exit normally: {other:?}"),
        }
    }

    #[test]
    fn a_server_shutdown_is_survived_and_quit_restores_the_terminal() {
        let mut server = TestServer::start();
        let t = temp();
        let name = unique_name("vic");
        run_script(
            server.port(),
            &t.tokens,
            &[],
            &format!("{name}\npassword1\n"),
        )
        .assert_success();
        let mut p = spawn_tty_on(&server, &t.tokens);
        let mut seen = String::new();
        expect(&mut p, &mut seen, &format!("{name}> "));
        for c in "half-typed".chars() {
            p.send(&c.to_string()).unwrap();
            p.flush().unwrap();
            expect(&mut p, &mut seen, &c.to_string());
        }
        server.stop();
        // The client says so, waits for the server to come back, and leaves when asked.
        expect(&mut p, &mut seen, "shutting down");
        expect(&mut p, &mut seen, "reconnecting");
        p.send_control('u').unwrap();
        p.send("/quit\r").unwrap();
        p.flush().unwrap();
        wait_exit(&mut p, &mut seen);

        // The editor had the terminal in raw mode; the client must have put it back
        // before exiting.
        assert_terminal_restored(&p);
    }
}
