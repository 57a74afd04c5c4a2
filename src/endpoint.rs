//! Where a server is, as both binaries see it: the default port, how a port typed by a
//! person is read, and the `Port [9090]: ` question the server and the client ask the
//! same way (empty input and end of input take the default; junk is refused with a
//! one-line reason and asked again).

use std::io::{self, BufRead, Write};

/// The server's default port, and the client's.
pub const DEFAULT_PORT: u16 = 9090;

/// Why a typed port is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("'{0}' is not a number; a port is a whole number from 1 to 65535")]
    NotANumber(String),
    #[error("{0} is out of range; a port is from 1 to 65535")]
    OutOfRange(String),
}

/// Checks a port: a whole number in 1..=65535.
pub fn parse_port(input: &str) -> Result<u16, PortError> {
    let text = input.trim();
    if text.is_empty() || !text.chars().all(|c| c.is_ascii_digit()) {
        return Err(PortError::NotANumber(text.to_string()));
    }
    match text.parse::<u32>() {
        Ok(port @ 1..=65535) => Ok(port as u16),
        _ => Err(PortError::OutOfRange(text.to_string())),
    }
}

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

/// `Port [9090]: `
pub fn ask_port(input: &mut impl BufRead, out: &mut impl Write, default: u16) -> io::Result<u16> {
    ask_with_default(input, out, "Port", default, parse_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_whole_numbers_in_range() {
        assert_eq!(parse_port("9090"), Ok(9090));
        assert_eq!(parse_port(" 1 "), Ok(1));
        assert_eq!(parse_port("65535"), Ok(65535));
        assert!(matches!(parse_port("0"), Err(PortError::OutOfRange(_))));
        assert!(matches!(parse_port("65536"), Err(PortError::OutOfRange(_))));
        for junk in ["", "abc", "-1", "80.5", "1e3"] {
            assert!(
                matches!(parse_port(junk), Err(PortError::NotANumber(_))),
                "{junk}"
            );
        }
    }

    #[test]
    fn the_port_question_takes_the_default_and_asks_again_after_junk() {
        let mut input: &[u8] = b"abc\n70000\n8080\n";
        let mut out = Vec::new();
        assert_eq!(ask_port(&mut input, &mut out, DEFAULT_PORT).unwrap(), 8080);
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out.matches("Port [9090]: ").count(), 3, "{out}");
        let mut empty: &[u8] = b"";
        assert_eq!(ask_port(&mut empty, &mut Vec::new(), 9090).unwrap(), 9090);
    }
}
