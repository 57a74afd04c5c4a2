//! What a typed line means: a chat message, or one of the `/` commands of
//! [`COMMANDS`].
//!
//! Every command is one entry of the table: its names, what arguments it takes, a line
//! of help, and how its arguments are read. `/help` and `--help` are written from the
//! same table, so a new command (`/join ROOM`, `/msg NAME TEXT`, ...) is one entry and
//! one [`Command`] variant, and the help cannot forget it.

use crate::protocol::MAX_TEXT_CHARS;

/// A command the session carries out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Who,
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
        names: &["who"],
        arguments: "",
        help: "list who is online",
        parse: |_| Ok(Command::Who),
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
        "Type a line and press Enter to send it to everyone online.".to_string(),
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
