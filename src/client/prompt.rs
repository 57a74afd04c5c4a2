//! The questions asked before anything else, in the terminal's own line mode: host and
//! port (the port question is shared with the server: `crate::endpoint`). (Once the
//! server is known, the terminal task of `tty.rs` asks the rest.)
//!
//! Each is a plain function over a reader and a writer, so the rules (empty input takes
//! the default, junk is refused with a one-line reason and asked again, end of input
//! takes the default) are unit-tested without a terminal.

use std::io::{self, BufRead, Write};

pub use crate::endpoint::{ask_port, ask_with_default, read_line};

use super::args::parse_host;

/// `Host [127.0.0.1]: `
pub fn ask_host(
    input: &mut impl BufRead,
    out: &mut impl Write,
    default: &str,
) -> io::Result<String> {
    ask_with_default(input, out, "Host", default.to_string(), parse_host)
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
}
