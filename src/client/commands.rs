//! What a typed line means: a chat message, or one of the `/` commands of
//! [`COMMANDS`].
//!
//! Every command is one entry of the table: its names, what arguments it takes, a line
//! of help, and how its arguments are read. `/help` and `--help` are written from the
//! same table, so a new command (`/join ROOM`, `/msg NAME TEXT`, ...) is one entry and
//! one [`Command`] variant, and the help cannot forget it.

use crate::auth::is_valid_name;
use crate::protocol::MAX_TEXT_CHARS;

use super::display::{name_rule, printable};

/// A command the session carries out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Who is online in the current room.
    Who,
    /// Join a room (creating it) and make it the current room.
    Join(String),
    /// Leave a room; `None` is the current one.
    Part(Option<String>),
    /// List every room.
    Rooms,
    /// A direct message.
    Msg {
        to: String,
        text: String,
    },
    /// One page further back in the current room.
    History,
    /// Change the account's password (asked for, not typed on the line).
    Password,
    /// Delete the account (its password asked for, then a confirmation).
    DeleteAccount,
    Quit,
    Logout,
    Help,
}

/// One line the user typed, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Say(String),
    Command(Command),
    /// Nothing to send (an empty line).
    Nothing,
    /// `/x` that is no command: the word, for the hint.
    Unknown(String),
    /// A command with arguments it cannot take: what is wrong.
    Usage(String),
    /// A message over the server's limit: its length in characters.
    TooLong(usize),
}

/// One entry of the command table.
pub struct CommandSpec {
    /// The first name is the one shown; the others are aliases.
    pub names: &'static [&'static str],
    /// What follows the name, for the help (`ROOM`, `NAME TEXT`); empty for none.
    pub arguments: &'static str,
    pub help: &'static str,
    /// Reads the rest of the line after the name.
    parse: fn(&str) -> Result<Command, String>,
}

/// Every command, in the order `/help` lists them.
pub const COMMANDS: &[CommandSpec] = &[
    CommandSpec {
        names: &["join", "j"],
        arguments: "ROOM",
        help: "join a room (created if new); what you type then goes there",
        parse: |args| room_argument(args, "join").map(Command::Join),
    },
    CommandSpec {
        names: &["part", "leave"],
        arguments: "[ROOM]",
        help: "leave a room (the current one without ROOM); the lobby cannot be left",
        parse: |args| match args {
            "" => Ok(Command::Part(None)),
            _ => room_argument(args, "part").map(|room| Command::Part(Some(room))),
        },
    },
    CommandSpec {
        names: &["rooms"],
        arguments: "",
        help: "list every room, its members, and which you are in",
        parse: |_| Ok(Command::Rooms),
    },
    CommandSpec {
        names: &["msg", "m"],
        arguments: "NAME TEXT",
        help: "send TEXT to NAME alone (a direct message)",
        parse: parse_msg,
    },
    CommandSpec {
        names: &["history"],
        arguments: "",
        help: "show one page of earlier messages of the current room",
        parse: |_| Ok(Command::History),
    },
    CommandSpec {
        names: &["who"],
        arguments: "",
        help: "list who is online in the current room",
        parse: |_| Ok(Command::Who),
    },
    CommandSpec {
        names: &["password"],
        arguments: "",
        help: "change your password (asked for unseen; your other sessions are logged out)",
        parse: |_| Ok(Command::Password),
    },
    CommandSpec {
        names: &["delete-account"],
        arguments: "",
        help: "delete your account for good (asks your password and to confirm)",
        parse: |_| Ok(Command::DeleteAccount),
    },
    CommandSpec {
        names: &["help", "?"],
        arguments: "",
        help: "show the commands",
        parse: |_| Ok(Command::Help),
    },
    CommandSpec {
        names: &["quit", "exit"],
        arguments: "",
        help: "leave (also Ctrl-D on an empty line); the token is kept for the next start",
        parse: |_| Ok(Command::Quit),
    },
    CommandSpec {
        names: &["logout"],
        arguments: "",
        help: "leave and forget this session (the next start asks for the password)",
        parse: |_| Ok(Command::Logout),
    },
];

/// Parses one line. `/cmd` is a command (case-insensitive); `//x` sends `/x`; a blank
/// line is nothing.
pub fn parse_input(line: &str) -> Input {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Input::Nothing;
    }
    let Some(rest) = line.strip_prefix('/') else {
        return say(line);
    };
    if rest.starts_with('/') {
        return say(rest);
    }
    let (word, arguments) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let word = word.to_lowercase();
    match COMMANDS.iter().find(|c| c.names.contains(&word.as_str())) {
        Some(spec) => match (spec.parse)(arguments.trim()) {
            Ok(command) => Input::Command(command),
            Err(why) => Input::Usage(why),
        },
        None => Input::Unknown(word),
    }
}

/// The one argument of `/join` or `/part`: a room name, checked before it is sent.
fn room_argument(args: &str, command: &str) -> Result<String, String> {
    let mut words = args.split_whitespace();
    match (words.next(), words.next()) {
        (None, _) => Err(format!(
            "usage: /{command} ROOM (the room's name is missing)"
        )),
        (Some(room), None) if is_valid_name(room) => Ok(room.to_string()),
        (Some(room), None) => Err(format!(
            "'{}' cannot be a room's name. {}",
            printable(room),
            name_rule().replace("A name", "A room's name")
        )),
        (Some(_), Some(_)) => Err(format!(
            "usage: /{command} ROOM (a room's name is one word)"
        )),
    }
}

/// `/msg NAME TEXT`.
fn parse_msg(args: &str) -> Result<Command, String> {
    let (to, text) = args.split_once(char::is_whitespace).unwrap_or((args, ""));
    let text = text.trim();
    if to.is_empty() {
        return Err("usage: /msg NAME TEXT (the name is missing)".into());
    }
    if text.is_empty() {
        return Err("usage: /msg NAME TEXT (the message is missing)".into());
    }
    let chars = text.chars().count();
    if chars > MAX_TEXT_CHARS {
        return Err(format!(
            "Not sent: the message has {chars} characters, the limit is {MAX_TEXT_CHARS}."
        ));
    }
    Ok(Command::Msg {
        to: to.to_string(),
        text: text.to_string(),
    })
}

/// Whether `line` is a command whose next lines are answers to its questions
/// (passwords): a terminal hides what is typed after it at once, before the first
/// question is even drawn.
pub fn asks_questions(line: &str) -> bool {
    matches!(
        parse_input(line),
        Input::Command(Command::Password | Command::DeleteAccount)
    )
}

fn say(text: &str) -> Input {
    let chars = text.chars().count();
    if chars > MAX_TEXT_CHARS {
        Input::TooLong(chars)
    } else {
        Input::Say(text.to_string())
    }
}

/// The commands, one per line: `  /quit, /exit   leave ...`.
pub fn command_lines() -> Vec<String> {
    let shown: Vec<String> = COMMANDS
        .iter()
        .map(|c| {
            let names: Vec<String> = c.names.iter().map(|n| format!("/{n}")).collect();
            match c.arguments {
                "" => names.join(", "),
                arguments => format!("{} {arguments}", names.join(", ")),
            }
        })
        .collect();
    let width = shown.iter().map(String::len).max().unwrap_or(0);
    shown
        .iter()
        .zip(COMMANDS)
        .map(|(names, c)| format!("  {names:width$}  {}", c.help))
        .collect()
}

/// What `/help` prints.
pub fn help_lines() -> Vec<String> {
    let mut lines = vec![
        "Type a line and press Enter to send it to the current room (shown in the prompt)."
            .to_string(),
        "Commands:".to_string(),
    ];
    lines.extend(command_lines());
    lines.push("A line starting with '//' is sent as a message starting with '/'.".into());
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_inputs() {
        let command = Input::Command;
        assert_eq!(parse_input("hello"), Input::Say("hello".into()));
        assert_eq!(parse_input("  spaced  "), Input::Say("  spaced  ".into()));
        assert_eq!(parse_input(""), Input::Nothing);
        assert_eq!(parse_input("   "), Input::Nothing);
        assert_eq!(parse_input("/who"), command(Command::Who));
        assert_eq!(parse_input("/WHO now"), command(Command::Who));
        assert_eq!(
            parse_input("/join rust"),
            command(Command::Join("rust".into()))
        );
        assert_eq!(
            parse_input("/j  Rust "),
            command(Command::Join("Rust".into()))
        );
        assert_eq!(parse_input("/part"), command(Command::Part(None)));
        assert_eq!(
            parse_input("/leave rust"),
            command(Command::Part(Some("rust".into())))
        );
        assert_eq!(parse_input("/rooms"), command(Command::Rooms));
        assert_eq!(parse_input("/history"), command(Command::History));
        assert_eq!(parse_input("/password"), command(Command::Password));
        assert_eq!(
            parse_input("/delete-account"),
            command(Command::DeleteAccount)
        );
        assert_eq!(
            parse_input("/msg bob  hello there "),
            command(Command::Msg {
                to: "bob".into(),
                text: "hello there".into()
            })
        );
        assert_eq!(parse_input("/quit"), command(Command::Quit));
        assert_eq!(parse_input("/exit"), command(Command::Quit));
        assert_eq!(parse_input("/logout"), command(Command::Logout));
        assert_eq!(parse_input("/help"), command(Command::Help));
        assert_eq!(parse_input("/?"), command(Command::Help));
        assert_eq!(parse_input("/dance"), Input::Unknown("dance".into()));
        assert_eq!(parse_input("/"), Input::Unknown(String::new()));
        assert_eq!(parse_input("//who"), Input::Say("/who".into()));
        assert_eq!(parse_input("hi\r\n"), Input::Say("hi".into()));
        assert_eq!(
            parse_input(&"x".repeat(MAX_TEXT_CHARS)),
            Input::Say("x".repeat(MAX_TEXT_CHARS))
        );
        assert_eq!(
            parse_input(&"é".repeat(MAX_TEXT_CHARS + 1)),
            Input::TooLong(MAX_TEXT_CHARS + 1)
        );
    }

    #[test]
    fn bad_arguments_say_what_is_wrong() {
        let usage = |line: &str| match parse_input(line) {
            Input::Usage(why) => why,
            other => panic!("{line}: {other:?}"),
        };
        assert!(usage("/join").contains("missing"));
        assert!(usage("/join two words").contains("one word"));
        assert!(usage("/join a\u{202e}b").contains("\\u{202e}"), "escaped");
        assert!(usage("/join bad!name").contains("letters"));
        assert!(usage("/part x y").contains("one word"));
        assert!(usage("/msg").contains("name is missing"));
        assert!(usage("/msg bob").contains("message is missing"));
        assert!(usage(&format!("/msg bob {}", "x".repeat(MAX_TEXT_CHARS + 1))).contains("limit"));
    }

    #[test]
    fn help_lists_every_name() {
        let help = help_lines().join("\n");
        for spec in COMMANDS {
            for name in spec.names {
                assert!(
                    help.contains(&format!("/{name}")),
                    "/{name} missing:\n{help}"
                );
            }
        }
    }
}
