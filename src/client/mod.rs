//! The interactive terminal client (`echochat`).
//!
//! `client_main.rs` parses [`args::Args`] and calls [`run`], which picks a front end:
//! on a terminal, [`terminal`] asks for what is missing and chats through its own line
//! editor ([`tty`] owns the screen, [`editor`] the line, [`keys`] decodes the
//! keyboard); with stdin a pipe or a file, [`scripted`] reads its lines and asks
//! nothing. Both share the rest:
//!
//! | module | what |
//! | --- | --- |
//! | [`connection`] | the frames over any byte stream |
//! | [`tls`] | TCP or TLS, and whether to trust the server's certificate |
//! | [`known_servers`] | the trusted fingerprints, and the trust rules |
//! | [`login`] | resume, login, register: written once, credentials supplied by the front end |
//! | [`tokens`] | the token file, per server and account name |
//! | [`session`] | the logged-in event loop |
//! | [`commands`] | what a typed line means; one table of `/` commands |
//! | [`queue`] | requests in order, what is in flight and its window |
//! | [`rooms`] | the current room, and what each room showed |
//! | [`reconnect`] | getting the session back, and the backoff |
//! | [`display`] | how events read, and the one escape for server strings |
//!
//! Framing and message types come from the crate's `codec` and `protocol`, the same
//! ones the server uses.

pub mod args;
pub mod commands;
pub mod connection;
pub mod display;
pub mod editor;
#[cfg(test)]
mod fake_server;
pub mod keys;
pub mod known_servers;
pub mod login;
pub mod prompt;
pub mod queue;
pub mod reconnect;
pub mod rooms;
pub mod scripted;
pub mod session;
pub mod terminal;
pub mod tls;
pub mod tokens;
pub mod tty;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

/// Where a front end shows a line that is not chat (a warning, a notice): above the
/// prompt on a terminal, on stderr for a script.
pub type Notify = Box<dyn FnMut(&str) + Send>;

/// How the client ends: an exit code, and a last line for stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub code: u8,
    pub message: Option<String>,
}

impl Exit {
    /// Everything went as asked.
    pub fn success() -> Exit {
        Exit {
            code: 0,
            message: None,
        }
    }

    /// A normal end worth a last word (the server shut down, say).
    pub fn success_with(message: impl Into<String>) -> Exit {
        Exit {
            code: 0,
            message: Some(message.into()),
        }
    }

    /// The client could not do what was asked; `why` is one line for the user.
    pub fn failure(why: impl Into<String>) -> Exit {
        Exit {
            code: 1,
            message: Some(why.into()),
        }
    }
}

/// Runs the client to completion and reports how it ended.
pub fn run(args: args::Args) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let exit = match runtime {
        Ok(runtime) => {
            let exit = if std::io::stdin().is_terminal() {
                runtime.block_on(terminal::run(args))
            } else {
                runtime.block_on(scripted::run(args))
            };
            // Threads blocked on stdin must not hold the exit up.
            runtime.shutdown_background();
            exit
        }
        Err(e) => Exit::failure(format!("cannot start: {e}")),
    };
    if let Some(message) = &exit.message {
        let _ = writeln!(std::io::stderr().lock(), "echochat: {message}");
    }
    ExitCode::from(exit.code)
}
