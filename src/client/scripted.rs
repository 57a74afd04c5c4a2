//! Scripted mode: stdin is a pipe or a file, so nothing is asked and lines are read.
//!
//! SPEC §1: without a valid token for the server, the first line is the name (unless
//! `--name` gives it) and the next the password; the client logs in, registering the
//! name if it is unknown. Every further line is a message or a `/` command. At end of
//! input it quits once the server has echoed every message, exit code 0. Received
//! messages go to stdout one per line, so a script can read them; everything else goes
//! to stderr. An unreachable server or a failed login is one line on stderr and a
//! non-zero exit.

use std::io::{BufRead, Write};
use std::time::Duration;

use tokio::sync::mpsc;

use super::args::{Args, ServerAddr, DEFAULT_HOST, DEFAULT_PORT};
use super::connection::{AuthReply, Connection};
use super::display::auth_error_sentence;
use super::session::{Outcome, Output, Policy, Session, PING_INTERVAL};
use super::tokens::{self, TokenStore};
use super::Exit;
use crate::protocol::{AuthErrorCode, ClientMessage};

/// Lines read ahead of the session; a large file is read as the chat goes, not at once.
const LINE_BUFFER: usize = 256;

/// The server must echo a message within this time. Generous: a loaded server, or one
/// still hashing other users' passwords, can be slow.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Reconnection attempts before a script gives up (about a minute with backoff).
const MAX_RECONNECTS: u32 = 7;

/// Messages to stdout, reports to stderr.
struct ScriptOutput;

impl Output for ScriptOutput {
    fn chat(&mut self, line: &str) {
        // A closed stdout (the reader went away) must not stop the chat.
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    }

    fn notice(&mut self, line: &str) {
        let _ = writeln!(std::io::stderr().lock(), "echochat: {line}");
    }
}

/// Runs scripted mode to its exit status.
pub async fn run(args: Args) -> Exit {
    let server = ServerAddr {
        host: args
            .host
            .clone()
            .unwrap_or_else(|| DEFAULT_HOST.to_string()),
        port: args.port.unwrap_or(DEFAULT_PORT),
    };
    let mut out = ScriptOutput;
    let token_path = args.token_file.clone().or_else(tokens::default_path);
    let (mut tokens, warning) = TokenStore::open(token_path, server.token_key());
    if let Some(warning) = warning {
        out.notice(&format!("warning: {warning}"));
    }
    let mut lines = spawn_stdin_reader();

    let mut conn = match Connection::connect(&server).await {
        Ok(conn) => conn,
        Err(e) => return Exit::failure(e.to_string()),
    };
    if let Err(e) = conn.welcome(None).await {
        return Exit::failure(e.to_string());
    }
    let name = match log_in(&mut conn, &mut tokens, args.name, &mut lines, &mut out).await {
        Ok(name) => name,
        Err(exit) => return exit,
    };

    let policy = Policy {
        window: Some(1),
        retry_rate_limited: true,
        max_reconnects: Some(MAX_RECONNECTS),
        ack_timeout: ACK_TIMEOUT,
        fail_on_ack_timeout: true,
        ping_interval: PING_INTERVAL,
    };
    let mut session = Session::new(conn, server, tokens, name, out, policy);
    let outcome = session.run(&mut lines).await;
    // Lines already read but never taken also went unsent (the server ended first).
    let unread = usize::from(lines.try_recv().is_ok());
    let unacknowledged = session.unacknowledged() + unread;
    let refused = session.refused();
    match outcome {
        Outcome::Quit | Outcome::LoggedOut if refused > 0 => Exit::failure(format!(
            "{refused} message(s) were not accepted by the server"
        )),
        Outcome::Quit | Outcome::LoggedOut => Exit::success(),
        Outcome::Ended(ended) if unacknowledged == 0 => Exit::success_with(ended.to_string()),
        Outcome::Ended(ended) => {
            Exit::failure(format!("{ended} (input was left unsent or unacknowledged)"))
        }
        Outcome::Failed(why) => Exit::failure(why),
    }
}

/// Authenticates: with the saved token if there is one and the server takes it,
/// otherwise with the name and password from the input (registering an unknown name).
/// Returns the name the server knows us by.
async fn log_in(
    conn: &mut Connection,
    tokens: &mut TokenStore,
    name: Option<String>,
    lines: &mut mpsc::Receiver<String>,
    out: &mut ScriptOutput,
) -> Result<String, Exit> {
    if let Some(token) = tokens.token().map(str::to_string) {
        let request = ClientMessage::Resume { token };
        match conn.authenticate(&request).await {
            Ok(AuthReply::Accepted { name, token, .. }) => {
                save(tokens, &token, out);
                return Ok(name);
            }
            Ok(AuthReply::Refused {
                code: AuthErrorCode::InvalidToken,
                ..
            }) => {
                if let Err(e) = tokens.forget() {
                    out.notice(&format!("warning: {e}"));
                }
                out.notice("the saved session token was refused; logging in with the name and password from the input");
            }
            Ok(AuthReply::Refused { code, .. }) => {
                return Err(Exit::failure(auth_error_sentence(
                    code,
                    name.as_deref().unwrap_or(""),
                )))
            }
            Err(e) => return Err(Exit::failure(e.to_string())),
        }
    }

    let name = match name {
        Some(name) => name,
        None => match lines.recv().await {
            Some(line) => line.trim().to_string(),
            None => {
                return Err(Exit::failure(
                    "no valid session token, and the input ended before a name",
                ))
            }
        },
    };
    let Some(password) = lines.recv().await else {
        return Err(Exit::failure(
            "no valid session token, and the input ended before a password",
        ));
    };
    let login = ClientMessage::Login {
        name: name.clone(),
        password: password.clone(),
    };
    let reply = match conn.authenticate(&login).await {
        Ok(AuthReply::Refused {
            code: AuthErrorCode::UnknownUser,
            ..
        }) => {
            conn.authenticate(&ClientMessage::Register {
                name: name.clone(),
                password,
            })
            .await
        }
        other => other,
    };
    match reply {
        Ok(AuthReply::Accepted { name, token, .. }) => {
            save(tokens, &token, out);
            Ok(name)
        }
        Ok(AuthReply::Refused { code, .. }) => Err(Exit::failure(format!(
            "login failed: {}",
            auth_error_sentence(code, &name)
        ))),
        Err(e) => Err(Exit::failure(e.to_string())),
    }
}

/// Remembers a fresh token; failing to write the file is worth a warning, not an exit.
fn save(tokens: &mut TokenStore, token: &str, out: &mut ScriptOutput) {
    if let Err(e) = tokens.save(token) {
        out.notice(&format!("warning: {e}"));
    }
}

/// Reads stdin on its own thread (reading a pipe blocks) and hands the lines over a
/// bounded channel; the channel closes at end of input or on a read error.
fn spawn_stdin_reader() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(LINE_BUFFER);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        loop {
            let mut buf = Vec::new();
            match input.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            while matches!(buf.last(), Some(b'\n' | b'\r')) {
                buf.pop();
            }
            let line = String::from_utf8_lossy(&buf).into_owned();
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}
