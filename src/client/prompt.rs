//! Questions asked on a terminal before the chat starts: host, port, name, password,
//! yes/no. The server asks its `Port [9090]: ` with [`ask_port`] too.
//!
//! Each is a plain function over a reader and a writer, so the rules (empty input takes
//! the default, junk is refused with a one-line reason and asked again, end of input
//! takes the default) are unit-tested without a terminal. Only [`read_secret`]'s caller
//! in `terminal.rs` touches the real terminal, to turn echo off.

use std::io::{self, BufRead, Read, Write};

use super::args::{parse_host, parse_port};

/// Reads one line without its line ending; `None` at end of input. Bytes that are not
/// UTF-8 are kept as replacement characters, so junk is refused rather than fatal.
pub fn read_line(input: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    if input.read_until(b'\n', &mut buf)? == 0 {
        return Ok(None);
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// Asks `label [default]: ` until `parse` accepts the answer. Empty input and end of
/// input take the default; a refused answer gets its reason on one line.
pub fn ask_with_default<T, E: std::fmt::Display>(
    input: &mut impl BufRead,
    out: &mut impl Write,
    label: &str,
    default: T,
    parse: impl Fn(&str) -> Result<T, E>,
) -> io::Result<T>
where
    T: std::fmt::Display,
{
    loop {
        write!(out, "{label} [{default}]: ")?;
        out.flush()?;
        let Some(line) = read_line(input)? else {
            // The user pressed Ctrl-D: move off the prompt line and take the default.
            writeln!(out)?;
            return Ok(default);
        };
        if line.trim().is_empty() {
            return Ok(default);
        }
        match parse(&line) {
            Ok(value) => return Ok(value),
            Err(reason) => writeln!(out, "{reason}")?,
        }
    }
}

/// `Host [127.0.0.1]: `
pub fn ask_host(
    input: &mut impl BufRead,
    out: &mut impl Write,
    default: &str,
) -> io::Result<String> {
    ask_with_default(input, out, "Host", default.to_string(), parse_host)
}

/// `Port [9090]: `
pub fn ask_port(input: &mut impl BufRead, out: &mut impl Write, default: u16) -> io::Result<u16> {
    ask_with_default(input, out, "Port", default, parse_port)
}

/// Asks for an account name, with the last one used (or the one the server remembers)
/// as default. `None` at end of input with no default: the user gave up.
pub fn ask_name(
    input: &mut impl BufRead,
    out: &mut impl Write,
    default: Option<&str>,
) -> io::Result<Option<String>> {
    loop {
        match default {
            Some(name) => write!(out, "Name [{name}]: ")?,
            None => write!(out, "Name: ")?,
        }
        out.flush()?;
        let Some(line) = read_line(input)? else {
            writeln!(out)?;
            return Ok(default.map(str::to_string));
        };
        let name = line.trim();
        if !name.is_empty() {
            return Ok(Some(name.to_string()));
        }
        if let Some(name) = default {
            return Ok(Some(name.to_string()));
        }
        writeln!(out, "A name is needed to log in (Ctrl-D to give up).")?;
    }
}

/// Asks a yes/no question; empty input takes `default`, end of input means no.
pub fn ask_yes_no(
    input: &mut impl BufRead,
    out: &mut impl Write,
    question: &str,
    default: bool,
) -> io::Result<bool> {
    let hint = if default { "[Y/n]" } else { "[y/N]" };
    loop {
        write!(out, "{question} {hint} ")?;
        out.flush()?;
        let Some(line) = read_line(input)? else {
            writeln!(out)?;
            return Ok(false);
        };
        match line.trim().to_lowercase().as_str() {
            "" => return Ok(default),
            "y" | "yes" => return Ok(true),
            "n" | "no" => return Ok(false),
            _ => writeln!(out, "Please answer y or n.")?,
        }
    }
}

/// What the user did at a password prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    Entered(String),
    /// Ctrl-D on an empty line, or the input ended.
    Eof,
    /// Ctrl-C.
    Interrupted,
}

/// Reads a password typed on a terminal in raw mode (no echo, no line editing by the
/// kernel, no signals), doing the little editing a password prompt needs itself:
/// Enter ends it, Backspace removes a character, Ctrl-U clears, Ctrl-C cancels,
/// Ctrl-D on an empty line is end of input. Other control bytes are ignored.
pub fn read_secret(input: &mut impl Read) -> io::Result<Secret> {
    let mut typed: Vec<u8> = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if input.read(&mut byte)? == 0 {
            return Ok(if typed.is_empty() {
                Secret::Eof
            } else {
                Secret::Entered(String::from_utf8_lossy(&typed).into_owned())
            });
        }
        match byte[0] {
            b'\r' | b'\n' => {
                return Ok(Secret::Entered(
                    String::from_utf8_lossy(&typed).into_owned(),
                ))
            }
            0x03 => return Ok(Secret::Interrupted),
            0x04 if typed.is_empty() => return Ok(Secret::Eof),
            0x7f | 0x08 => {
                // Remove one whole UTF-8 character: continuation bytes, then its lead.
                while typed.pop().is_some_and(|b| b & 0xC0 == 0x80) {}
            }
            0x15 => typed.clear(),
            b if b < 0x20 => {}
            b => typed.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<T>(
        input: &str,
        f: impl FnOnce(&mut &[u8], &mut Vec<u8>) -> io::Result<T>,
    ) -> (T, String) {
        let mut reader = input.as_bytes();
        let mut out = Vec::new();
        let value = f(&mut reader, &mut out).unwrap();
        (value, String::from_utf8(out).unwrap())
    }

    #[test]
    fn empty_input_takes_the_default() {
        let (port, out) = run("\n", |i, o| ask_port(i, o, 9090));
        assert_eq!(port, 9090);
        assert_eq!(out, "Port [9090]: ");
        let (host, _) = run("  \r\n", |i, o| ask_host(i, o, "127.0.0.1"));
        assert_eq!(host, "127.0.0.1");
    }

    #[test]
    fn end_of_input_takes_the_default() {
        let (port, out) = run("", |i, o| ask_port(i, o, 9090));
        assert_eq!(port, 9090);
        assert_eq!(out, "Port [9090]: \n");
    }

    #[test]
    fn junk_is_refused_with_a_reason_and_asked_again() {
        let (port, out) = run("abc\n70000\n0\n8080\n", |i, o| ask_port(i, o, 9090));
        assert_eq!(port, 8080);
        let lines: Vec<&str> = out.split('\n').collect();
        assert_eq!(lines.len(), 4, "one reason line per refusal: {out:?}");
        assert!(lines[0].starts_with("Port [9090]: 'abc' is not a number"));
        assert!(lines[1].contains("70000 is out of range"));
        assert!(lines[2].contains("0 is out of range"));
        assert_eq!(lines[3], "Port [9090]: ");
    }

    #[test]
    fn junk_then_end_of_input_takes_the_default() {
        let (host, out) = run("not a host\n", |i, o| ask_host(i, o, "127.0.0.1"));
        assert_eq!(host, "127.0.0.1");
        assert!(out.contains("'not a host' is not a host name or IP address"));
    }

    #[test]
    fn a_typed_host_is_taken() {
        let (host, _) = run("chat.example.org\n", |i, o| ask_host(i, o, "127.0.0.1"));
        assert_eq!(host, "chat.example.org");
    }

    #[test]
    fn non_utf8_input_is_junk_not_an_error() {
        let mut reader: &[u8] = b"\xff\xfe\n\n";
        let mut out = Vec::new();
        assert_eq!(ask_port(&mut reader, &mut out, 9090).unwrap(), 9090);
        assert!(String::from_utf8_lossy(&out).contains("is not a number"));
    }

    #[test]
    fn name_prompt_uses_the_default_or_insists() {
        let (name, out) = run("\n", |i, o| ask_name(i, o, Some("alice")));
        assert_eq!(name.as_deref(), Some("alice"));
        assert_eq!(out, "Name [alice]: ");
        let (name, out) = run("\n  bob \n", |i, o| ask_name(i, o, None));
        assert_eq!(name.as_deref(), Some("bob"));
        assert!(out.contains("A name is needed"));
        let (name, _) = run("", |i, o| ask_name(i, o, None));
        assert_eq!(name, None);
    }

    #[test]
    fn yes_no() {
        assert!(run("\n", |i, o| ask_yes_no(i, o, "Register?", true)).0);
        assert!(!run("n\n", |i, o| ask_yes_no(i, o, "Register?", true)).0);
        let (yes, out) = run("maybe\nYES\n", |i, o| ask_yes_no(i, o, "Register?", false));
        assert!(yes);
        assert!(out.contains("Please answer y or n."));
        assert!(!run("", |i, o| ask_yes_no(i, o, "Register?", true)).0);
    }

    #[test]
    fn secret_editing() {
        let read = |bytes: &[u8]| read_secret(&mut &bytes[..]).unwrap();
        assert_eq!(read(b"hunter2\r"), Secret::Entered("hunter2".into()));
        assert_eq!(read(b"abd\x7fc\n"), Secret::Entered("abc".into()));
        assert_eq!(
            read("pé\x7f\x7fass\r".as_bytes()),
            Secret::Entered("ass".into())
        );
        assert_eq!(read("ü\x7fx\r".as_bytes()), Secret::Entered("x".into()));
        assert_eq!(read(b"junk\x15pw\x1b\r"), Secret::Entered("pw".into()));
        assert_eq!(read(b"abc\x03"), Secret::Interrupted);
        assert_eq!(read(b"\x04"), Secret::Eof);
        assert_eq!(read(b"ab\x04c\r"), Secret::Entered("abc".into()));
        assert_eq!(read(b""), Secret::Eof);
        assert_eq!(read(b"\r"), Secret::Entered(String::new()));
    }
}
