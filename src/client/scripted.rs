//! Scripted mode: stdin is a pipe or a file, so nothing is asked and lines are read.
//!
//! SPEC §1: without a valid token for the server, the first line is the name (unless
//! `--name` gives it) and the next the password; the client logs in, registering the
//! name if it is unknown. Every further line is a message or a `/` command. At end of
//! input it quits once the server has echoed every message, exit code 0. Messages,
//! joins and leaves go to stdout one per line, so a script can read them; everything
//! else (answers to commands included) goes to stderr. An unreachable server, a failed
//! login, or a server that breaks the protocol is one line on stderr and a non-zero
//! exit.
//!
//! A password line is never sent as chat (§12), even when a valid token makes it
//! unnecessary: after a login with the token, a first line that is the account's name
//! is taken, with the line after it, as the name and password a script that always
//! gives them; a first line that is the account's password (recognised by the check
//! the token file keeps) is taken as the password line. Neither is sent. A first line
//! naming another account that the token file knows ends the run before anything is
//! sent: the script means someone else, and `--name` says who.

use std::io::{BufRead, Write};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::args::{Args, ServerAddr, DEFAULT_HOST, DEFAULT_PORT};
use super::display::printable;
use super::login::{self, Credentials, How, Link};
use super::session::{Outcome, Output, Policy, Session, PING_INTERVAL};
use super::tls;
use super::tokens::{self, TokenStore};
use super::Exit;
use crate::auth::name_key;
use crate::text::plural;

/// Lines read ahead of the session; a large file is read as the chat goes, not at once.
const LINE_BUFFER: usize = 256;

/// The server must echo a message within this time. Generous: a loaded server, or one
/// still hashing other users' passwords, can be slow.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Reconnection attempts in a row before a script gives up (about a minute and a half
/// with backoff).
const MAX_RECONNECTS: u32 = 7;

/// Messages to stdout, reports to stderr.
struct ScriptOutput;

impl Output for ScriptOutput {
    fn chat(&mut self, line: &str) {
        // A closed stdout (the reader went away) must not stop the chat.
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    }

    fn info(&mut self, line: &str) {
        self.notice(line);
    }

    fn notice(&mut self, line: &str) {
        notice(line);
    }
}

/// A report on stderr.
fn notice(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "echochat: {line}");
}

/// Runs scripted mode to its exit status.
pub async fn run(args: Args) -> Exit {
    let server = ServerAddr {
        host: args
            .host
            .clone()
            .unwrap_or_else(|| DEFAULT_HOST.to_string()),
        port: args.port.unwrap_or(DEFAULT_PORT),
        tls: args.wants_tls(),
    };
    let connector = match tls::from_args(&args, Box::new(notice), None) {
        Ok(connector) => connector,
        Err(why) => return Exit::failure(why),
    };
    let mut tokens = TokenStore::for_server(
        args.token_file.clone(),
        server.token_key(),
        Box::new(notice),
    );
    let mut lines = ScriptLines {
        lines: spawn_stdin_reader(),
    };
    let mut link = match Link::open(&server, connector.clone(), Box::new(notice)).await {
        Ok(link) => link,
        Err(exit) => return exit,
    };
    let fixed = args.name.as_deref();
    let logged_in = match login::log_in(&mut link, &mut tokens, fixed, &mut lines).await {
        Ok(logged_in) => logged_in,
        Err(exit) => return exit,
    };
    let mut lines = lines.lines;
    let mut refused_input = None;
    if logged_in.how == How::Resumed {
        let guard = FirstLines {
            name: logged_in.name.clone(),
            password_check: tokens.password_check(&logged_in.name),
            others: tokens.known_names(),
        };
        let (guarded, failure) = guard.spawn(lines);
        lines = guarded;
        refused_input = Some(failure);
    }

    let policy = Policy {
        window: 1,
        max_reconnects: Some(MAX_RECONNECTS),
        ack_timeout: ACK_TIMEOUT,
        fail_on_ack_timeout: true,
        ping_interval: PING_INTERVAL,
        reconnect_after_shutdown: false,
        fail_on_bad_frame: true,
        confirm: false,
    };
    let name = logged_in.name.clone();
    let mut session = Session::new(
        logged_in.conn,
        server,
        connector,
        tokens,
        logged_in.name,
        ScriptOutput,
        policy,
    );
    let outcome = session.run(&mut lines).await;
    if let Some(Ok(why)) = refused_input.map(|mut r| r.try_recv()) {
        return Exit::failure(why);
    }
    // Lines already read but never taken also went unsent (the server ended first).
    let unread = usize::from(lines.try_recv().is_ok());
    let unacknowledged = session.unacknowledged() + unread;
    let refused = session.refused();
    match outcome {
        Outcome::Quit | Outcome::LoggedOut if refused > 0 => Exit::failure(format!(
            "{} did not go through (see above)",
            plural(
                refused,
                "message or account command",
                "messages or account commands"
            )
        )),
        Outcome::Quit | Outcome::LoggedOut => Exit::success(),
        Outcome::AccountDeleted => {
            Exit::success_with(format!("the account '{}' was deleted", printable(&name)))
        }
        Outcome::Ended(ended) if unacknowledged == 0 => Exit::success_with(ended.to_string()),
        Outcome::Ended(ended) => {
            Exit::failure(format!("{ended} (input was left unsent or unacknowledged)"))
        }
        Outcome::Failed(why) => Exit::failure(why),
    }
}

/// Credentials read from the script's lines: the name, then the password. A refusal
/// ends the run: there is nobody to ask again.
struct ScriptLines {
    lines: mpsc::Receiver<String>,
}

impl Credentials for ScriptLines {
    async fn name(&mut self, _suggested: Option<&str>) -> Result<String, Exit> {
        match self.lines.recv().await {
            Some(line) => Ok(line.trim().to_string()),
            None => Err(Exit::failure(
                "no valid session token, and the input ended before a name",
            )),
        }
    }

    async fn password(&mut self, _name: &str) -> Result<String, Exit> {
        self.lines.recv().await.ok_or_else(|| {
            Exit::failure("no valid session token, and the input ended before a password")
        })
    }

    async fn new_account(&mut self, _name: &str, typed: &str) -> Result<Option<String>, Exit> {
        Ok(Some(typed.to_string()))
    }

    fn refused(&mut self, sentence: &str) -> Result<(), Exit> {
        Err(Exit::failure(format!("login failed: {sentence}")))
    }
}

/// Watches the first lines of a script that logged in with its token, so credentials
/// it gives anyway are not sent as chat (see the module comment).
struct FirstLines {
    /// The account the token logged in as.
    name: String,
    password_check: Option<String>,
    /// Every account the token file holds for this server.
    others: Vec<String>,
}

impl FirstLines {
    /// Passes the lines on once the first ones are judged. A script that names another
    /// account gets nothing sent: its reason comes out of the second receiver.
    fn spawn(
        self,
        mut lines: mpsc::Receiver<String>,
    ) -> (mpsc::Receiver<String>, oneshot::Receiver<String>) {
        let (tx, rx) = mpsc::channel(LINE_BUFFER);
        let (failed, failure) = oneshot::channel();
        tokio::spawn(async move {
            let Some(first) = lines.recv().await else {
                return;
            };
            let named = name_key(first.trim());
            if named == name_key(&self.name) {
                // The name line; the next one is its password.
                let _ = lines.recv().await;
                notice("the name and password lines were not needed (logged in with the saved token) and were not sent");
            } else if self.others.iter().any(|other| name_key(other) == named) {
                let _ = failed.send(format!(
                    "the input starts with the name '{}', but the saved token is for '{}'; nothing was sent (use --name to choose the account)",
                    printable(first.trim()),
                    printable(&self.name)
                ));
                return;
            } else if self.is_password(&first).await {
                notice("the password line was not needed (logged in with the saved token) and was not sent");
            } else if tx.send(first).await.is_err() {
                return;
            }
            while let Some(line) = lines.recv().await {
                if tx.send(line).await.is_err() {
                    return;
                }
            }
        });
        (rx, failure)
    }

    /// Whether `line` is the account's password (PBKDF2, off the async threads).
    async fn is_password(&self, line: &str) -> bool {
        let Some(check) = self.password_check.clone() else {
            return false;
        };
        let line = line.to_string();
        tokio::task::spawn_blocking(move || tokens::is_password(&check, &line))
            .await
            .unwrap_or(false)
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
