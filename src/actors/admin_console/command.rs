//! The console's commands: what a line typed on the server's stdin means.
//!
//! A plain parser with no actor code. An unknown word is answered with §4's
//! `unknown command: <word> (try 'help')`; a known command with a missing or bad
//! argument with a `usage:` line saying what is wrong. Whatever the admin typed is
//! escaped before it is shown again.

use crate::protocol::MAX_TEXT_CHARS;
use crate::text::quote;

/// One admin command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    Status,
    Users,
    Pause,
    Resume,
    /// The whole log, or its last N lines.
    Logs(Option<usize>),
    ClearLogs,
    ClearIds,
    Kick(String),
    /// `say TEXT`: a message from `server` in `lobby`.
    Announce(String),
    /// Every room, its member count and its members online.
    Rooms,
    /// `say-in ROOM TEXT`: a message from `server` in a room.
    AnnounceIn {
        room: String,
        text: String,
    },
    /// `ban NAME [REASON]`.
    Ban {
        name: String,
        reason: String,
    },
    Unban(String),
    Bans,
    /// Read the TLS certificate files again.
    ReloadTls,
    Shutdown,
}

/// A line that is not a command that can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleError {
    /// The first word is no command.
    Unknown(String),
    /// A known command with a missing or bad argument: its usage and what is wrong.
    Usage {
        usage: &'static str,
        problem: String,
    },
}

impl std::fmt::Display for ConsoleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConsoleError::Unknown(word) => {
                write!(f, "unknown command: {} (try 'help')", quote(word))
            }
            ConsoleError::Usage { usage, problem } => write!(f, "usage: {usage} ({problem})"),
        }
    }
}

/// What `help` prints.
pub const HELP: &str = "\
commands:
  help              this list
  status            address, paused or not, users online, connections, uptime
  users             the users online
  pause             stop greeting new connections (they wait)
  resume            greet the waiting connections, and new ones again
  logs [N]          the log file (its last N lines)
  clear-logs        empty the log file
  clear-ids         forget every account, password, IP identification and token
  kick NAME         disconnect a user, telling them why
  say TEXT          a message from 'server' in lobby
  rooms             every room, its members and who of them is online
  ban NAME [REASON] keep an account out (its connections are closed)
  unban NAME        lift a ban
  bans              the banned accounts, why and since when
  reload-tls        read the TLS certificate and key again (also: SIGHUP)
  say-in ROOM TEXT  a message from 'server' in a room
  shutdown          stop the server (also: exit, quit)";

/// Parses one console line. An empty line is `Ok(None)`.
pub fn parse_command(line: &str) -> Result<Option<Command>, ConsoleError> {
    let line = line.trim();
    let Some(word) = line.split_whitespace().next() else {
        return Ok(None);
    };
    let rest = line[word.len()..].trim();
    let usage = |usage: &'static str, problem: String| ConsoleError::Usage { usage, problem };
    let no_args = |command: Command, usage_text: &'static str| {
        if rest.is_empty() {
            Ok(Some(command))
        } else {
            Err(usage(
                usage_text,
                format!("it takes no argument, got '{}'", quote(rest)),
            ))
        }
    };
    match word {
        "help" => no_args(Command::Help, "help"),
        "status" => no_args(Command::Status, "status"),
        "users" => no_args(Command::Users, "users"),
        "pause" => no_args(Command::Pause, "pause"),
        "resume" => no_args(Command::Resume, "resume"),
        "clear-logs" => no_args(Command::ClearLogs, "clear-logs"),
        "clear-ids" => no_args(Command::ClearIds, "clear-ids"),
        "shutdown" | "exit" | "quit" => no_args(Command::Shutdown, "shutdown"),
        "logs" if rest.is_empty() => Ok(Some(Command::Logs(None))),
        "logs" => rest
            .parse::<usize>()
            .map(|n| Some(Command::Logs(Some(n))))
            .map_err(|_| {
                usage(
                    "logs [N]",
                    format!(
                        "N is how many last lines to show, a whole number; got '{}'",
                        quote(rest)
                    ),
                )
            }),
        "kick" if rest.is_empty() => Err(usage("kick NAME", "the name is missing".into())),
        "kick" if rest.contains(char::is_whitespace) => Err(usage(
            "kick NAME",
            format!("one name, without spaces; got '{}'", quote(rest)),
        )),
        "kick" => Ok(Some(Command::Kick(rest.to_string()))),
        "say" if rest.is_empty() => Err(usage("say TEXT", "the text is missing".into())),
        "say" if rest.chars().count() > MAX_TEXT_CHARS => Err(usage(
            "say TEXT",
            format!(
                "at most {MAX_TEXT_CHARS} characters; got {}",
                rest.chars().count()
            ),
        )),
        "say" => Ok(Some(Command::Announce(rest.to_string()))),
        "rooms" => no_args(Command::Rooms, "rooms"),
        "bans" => no_args(Command::Bans, "bans"),
        "reload-tls" => no_args(Command::ReloadTls, "reload-tls"),
        "ban" | "unban" => {
            let usage_text = if word == "ban" {
                "ban NAME [REASON]"
            } else {
                "unban NAME"
            };
            let mut parts = rest.splitn(2, char::is_whitespace);
            let Some(name) = parts.next().filter(|n| !n.is_empty()) else {
                return Err(usage(usage_text, "the name is missing".into()));
            };
            let reason = parts.next().unwrap_or("").trim();
            if word == "unban" {
                if !reason.is_empty() {
                    return Err(usage(
                        usage_text,
                        format!("one name, without spaces; got '{}'", quote(rest)),
                    ));
                }
                return Ok(Some(Command::Unban(name.to_string())));
            }
            if reason.chars().count() > MAX_TEXT_CHARS {
                return Err(usage(
                    usage_text,
                    format!("at most {MAX_TEXT_CHARS} characters of reason"),
                ));
            }
            Ok(Some(Command::Ban {
                name: name.to_string(),
                reason: reason.to_string(),
            }))
        }
        "say-in" => {
            let usage_text = "say-in ROOM TEXT";
            let Some((room, text)) = rest.split_once(char::is_whitespace) else {
                let problem = if rest.is_empty() {
                    "the room and the text are missing".to_string()
                } else {
                    "the text is missing".to_string()
                };
                return Err(usage(usage_text, problem));
            };
            let text = text.trim();
            if text.chars().count() > MAX_TEXT_CHARS {
                return Err(usage(
                    usage_text,
                    format!("at most {MAX_TEXT_CHARS} characters of text"),
                ));
            }
            Ok(Some(Command::AnnounceIn {
                room: room.to_string(),
                text: text.to_string(),
            }))
        }
        _ => Err(ConsoleError::Unknown(word.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Option<Command>, ConsoleError> {
        parse_command(line)
    }

    fn shown(line: &str) -> String {
        parse(line).unwrap_err().to_string()
    }

    #[test]
    fn every_command_parses() {
        assert_eq!(parse("help"), Ok(Some(Command::Help)));
        assert_eq!(parse("status"), Ok(Some(Command::Status)));
        assert_eq!(parse("users"), Ok(Some(Command::Users)));
        assert_eq!(parse("pause"), Ok(Some(Command::Pause)));
        assert_eq!(parse("resume"), Ok(Some(Command::Resume)));
        assert_eq!(parse("logs"), Ok(Some(Command::Logs(None))));
        assert_eq!(parse("logs 20"), Ok(Some(Command::Logs(Some(20)))));
        assert_eq!(parse("clear-logs"), Ok(Some(Command::ClearLogs)));
        assert_eq!(parse("clear-ids"), Ok(Some(Command::ClearIds)));
        assert_eq!(parse("kick bob"), Ok(Some(Command::Kick("bob".into()))));
        assert_eq!(
            parse("say hello  there"),
            Ok(Some(Command::Announce("hello  there".into())))
        );
        for word in ["shutdown", "exit", "quit"] {
            assert_eq!(parse(word), Ok(Some(Command::Shutdown)));
        }
        assert_eq!(parse("rooms"), Ok(Some(Command::Rooms)));
        assert_eq!(parse("bans"), Ok(Some(Command::Bans)));
        assert_eq!(
            parse("ban mal  spam, and worse "),
            Ok(Some(Command::Ban {
                name: "mal".into(),
                reason: "spam, and worse".into()
            }))
        );
        assert_eq!(
            parse("ban mal"),
            Ok(Some(Command::Ban {
                name: "mal".into(),
                reason: String::new()
            }))
        );
        assert_eq!(parse("unban mal"), Ok(Some(Command::Unban("mal".into()))));
        assert_eq!(
            parse("say-in Ops  hello  all "),
            Ok(Some(Command::AnnounceIn {
                room: "Ops".into(),
                text: "hello  all".into()
            }))
        );
    }

    #[test]
    fn spaces_and_empty_lines() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("   \t \r\n"), Ok(None));
        assert_eq!(parse("  status  \r\n"), Ok(Some(Command::Status)));
        assert_eq!(parse("logs    3 "), Ok(Some(Command::Logs(Some(3)))));
        assert_eq!(parse("kick   zoë\n"), Ok(Some(Command::Kick("zoë".into()))));
        assert_eq!(
            parse("say   hi\n"),
            Ok(Some(Command::Announce("hi".into())))
        );
    }

    #[test]
    fn unknown_words_name_themselves() {
        assert_eq!(shown("dance"), "unknown command: dance (try 'help')");
        assert_eq!(shown("STATUS"), "unknown command: STATUS (try 'help')");
        assert_eq!(
            shown("\u{fffd}\u{fffd} x"),
            "unknown command: \u{fffd}\u{fffd} (try 'help')"
        );
        assert_eq!(
            shown("\u{1b}[2J"),
            "unknown command: \\u{001b}[2J (try 'help')"
        );
    }

    #[test]
    fn known_commands_with_bad_arguments_get_usage() {
        for (line, start) in [
            ("status now", "usage: status (it takes no argument"),
            ("logs many", "usage: logs [N] (N is how many"),
            ("logs -1", "usage: logs [N]"),
            ("logs 1 2", "usage: logs [N]"),
            ("kick", "usage: kick NAME (the name is missing)"),
            ("kick two names", "usage: kick NAME (one name"),
            ("say", "usage: say TEXT (the text is missing)"),
            ("say    ", "usage: say TEXT (the text is missing)"),
            ("exit now", "usage: shutdown"),
            (
                "say-in",
                "usage: say-in ROOM TEXT (the room and the text are missing)",
            ),
            (
                "say-in ops",
                "usage: say-in ROOM TEXT (the text is missing)",
            ),
            ("rooms all", "usage: rooms (it takes no argument"),
            ("ban", "usage: ban NAME [REASON] (the name is missing)"),
            ("unban", "usage: unban NAME (the name is missing)"),
            ("unban a b", "usage: unban NAME (one name"),
        ] {
            let text = shown(line);
            assert!(text.starts_with(start), "{line:?}: {text}");
        }
        assert!(shown(&format!("say {}", "x".repeat(4097))).starts_with("usage: say TEXT (at most"));
        assert!(!shown("logs \u{1b}x").contains('\u{1b}'), "escaped");
    }
}
