//! The client's command line, and the server address it names.
//!
//! Every flag can also come from an environment variable, the flag winning. Host and
//! port read `ECHOCHAT_CLIENT_HOST` and `ECHOCHAT_CLIENT_PORT`, not the server's
//! `ECHOCHAT_HOST`/`ECHOCHAT_PORT`, so a variable set for a server on the same machine
//! does not steer the client. A host or port given neither way is asked for on a
//! terminal (see [`super::prompt`]) or takes its default in scripted mode.

use std::fmt;
use std::path::PathBuf;

use clap::Parser;

use super::commands::command_lines;
use super::known_servers::Fingerprint;

/// Host asked for by default: a server on this machine.
pub const DEFAULT_HOST: &str = "127.0.0.1";

use crate::endpoint::PortError;
/// The server's default port.
pub use crate::endpoint::DEFAULT_PORT;

/// What `--help` adds after the flags: the chat commands (from the same table as
/// `/help`) and scripted mode.
fn after_help() -> String {
    format!(
        "\
On a terminal, echochat asks for what is missing, logs in (with the saved session
token when it has one) and then chats. Type a line and press Enter to send it.
Commands:
{}
A line starting with '//' is sent as a message starting with '/'.

Scripted mode: when stdin is not a terminal (a pipe or a file), nothing is asked.
Without a saved token for the server, the first line is the name (skipped with
--name) and the next the password; an unknown name is registered. Every further line
is a message (to the lobby until a /join) or a command; /password takes the current
and the new password from the next two lines, /delete-account the password from the
next one. Messages, joins and leaves go to stdout, everything else to stderr. At the
end of input echochat waits until the server has echoed every message, then exits 0;
a failure exits non-zero with one line on stderr.

Tokens are kept per server and account name in the token file, owner-only.

TLS: with --tls the server's certificate must be signed by a root the system trusts
(or by --ca-file). If not, its fingerprint decides: one saved in known_servers.json
(beside the token file) is trusted; an unknown server is asked about on a terminal
and refused in scripted mode unless --fingerprint matches; a certificate that differs
from the saved one is refused until --fingerprint names the new one.",
        command_lines().join("\n")
    )
}

/// `echochat [--host H] [--port P] [--name NAME] [--token-file PATH]`
#[derive(Debug, Clone, Parser)]
#[command(
    name = "echochat",
    version,
    about = "Terminal client for an echochat server",
    after_help = after_help()
)]
pub struct Args {
    /// Server host name or IP address [default: ask on a terminal, else 127.0.0.1]
    #[arg(long, env = "ECHOCHAT_CLIENT_HOST", value_parser = parse_host_arg)]
    pub host: Option<String>,

    /// Server port, 1-65535 [default: ask on a terminal, else 9090]
    #[arg(long, env = "ECHOCHAT_CLIENT_PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,

    /// Account name (otherwise asked for, or read from the first line of a script);
    /// only this name's saved token is used
    #[arg(long, env = "ECHOCHAT_NAME")]
    pub name: Option<String>,

    /// Where session tokens are remembered [default: DATA_DIR/echochat/tokens.json];
    /// the known-servers file of --tls sits beside it
    #[arg(long, env = "ECHOCHAT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Connect with TLS; the certificate is verified against the system's trust roots
    /// (or --ca-file), else by its fingerprint [env ECHOCHAT_TLS: 1/true/yes or
    /// 0/false/no]
    #[arg(
        long,
        env = "ECHOCHAT_TLS",
        hide_env = true,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub tls: bool,

    /// Trust only the certificates in this PEM file to verify the server (implies --tls)
    #[arg(long, env = "ECHOCHAT_CA_FILE", value_name = "PEM")]
    pub ca_file: Option<PathBuf>,

    /// The server certificate's fingerprint to expect, as the server prints it
    /// (implies --tls); a match is trusted and remembered
    #[arg(long, env = "ECHOCHAT_FINGERPRINT", value_name = "sha256:HEX", value_parser = Fingerprint::parse)]
    pub fingerprint: Option<Fingerprint>,
}

impl Args {
    /// Whether the connection is TLS: `--tls`, or a flag that only makes sense with it.
    pub fn wants_tls(&self) -> bool {
        self.tls || self.ca_file.is_some() || self.fingerprint.is_some()
    }
}

/// Where to connect: the host as the user typed it, a port, and whether over TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddr {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl ServerAddr {
    /// The key under which this server's token is remembered: `host:port`, the host
    /// lower-cased (host names are case-insensitive) and an IPv6 address bracketed;
    /// `tls:host:port` over TLS, so a token got over TLS is never sent in clear.
    pub fn token_key(&self) -> String {
        if self.tls {
            format!("tls:{}", self.known_key())
        } else {
            self.known_key()
        }
    }

    /// `host:port` as in [`ServerAddr::token_key`], without the `tls:`: the key of the
    /// known-servers file.
    pub fn known_key(&self) -> String {
        self.to_string().to_lowercase()
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Why a host or port typed by the user is refused; shown as a one-line reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("'{0}' is not a host name or IP address")]
    BadHost(String),
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Checks a host: an IP address (IPv6 with or without brackets) or a DNS name made of
/// labels of letters, digits and `-`. Returns it in the form to connect to.
pub fn parse_host(input: &str) -> Result<String, AddrError> {
    let host = input.trim();
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return Ok(bare.to_string());
    }
    let is_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    let name = host.strip_suffix('.').unwrap_or(host);
    if !name.is_empty() && name.len() <= 253 && name.split('.').all(is_label) {
        Ok(host.to_string())
    } else {
        Err(AddrError::BadHost(host.to_string()))
    }
}

/// Checks a port: a whole number in 1..=65535.
pub fn parse_port(input: &str) -> Result<u16, AddrError> {
    Ok(crate::endpoint::parse_port(input)?)
}

/// clap adapter for [`parse_host`].
fn parse_host_arg(input: &str) -> Result<String, AddrError> {
    parse_host(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ips_and_host_names() {
        assert_eq!(parse_host("127.0.0.1"), Ok("127.0.0.1".into()));
        assert_eq!(parse_host(" localhost "), Ok("localhost".into()));
        assert_eq!(
            parse_host("chat.example.org"),
            Ok("chat.example.org".into())
        );
        assert_eq!(parse_host("::1"), Ok("::1".into()));
        assert_eq!(parse_host("[::1]"), Ok("::1".into()));
    }

    #[test]
    fn refuses_junk_hosts() {
        for junk in [
            "",
            "a b",
            "-bad.example",
            "exa_mple.org",
            "a..b",
            "x:y",
            "é.com",
        ] {
            assert!(parse_host(junk).is_err(), "{junk:?} accepted");
        }
    }

    #[test]
    fn ports_must_be_in_range() {
        assert_eq!(parse_port("9090"), Ok(9090));
        assert_eq!(parse_port(" 1 "), Ok(1));
        assert_eq!(parse_port("65535"), Ok(65535));
        assert!(matches!(
            parse_port("0"),
            Err(AddrError::Port(PortError::OutOfRange(_)))
        ));
        assert!(matches!(
            parse_port("65536"),
            Err(AddrError::Port(PortError::OutOfRange(_)))
        ));
        assert!(matches!(
            parse_port("99999999999999999999"),
            Err(AddrError::Port(PortError::OutOfRange(_)))
        ));
        for junk in ["abc", "-1", "+80", "80.5", "8 0", ""] {
            assert!(
                matches!(
                    parse_port(junk),
                    Err(AddrError::Port(PortError::NotANumber(_)))
                ),
                "{junk:?}"
            );
        }
    }

    #[test]
    fn token_key_brackets_ipv6_and_ignores_case() {
        let v6 = ServerAddr {
            host: "::1".into(),
            port: 9090,
            tls: false,
        };
        assert_eq!(v6.token_key(), "[::1]:9090");
        let named = ServerAddr {
            host: "Chat.Example.org".into(),
            port: 1,
            tls: true,
        };
        assert_eq!(named.token_key(), "tls:chat.example.org:1");
        assert_eq!(named.known_key(), "chat.example.org:1");
    }

    #[test]
    fn flags_parse() {
        let args = Args::try_parse_from([
            "echochat",
            "--host",
            "localhost",
            "--port",
            "9091",
            "--name",
            "alice",
            "--token-file",
            "/tmp/t.json",
        ])
        .unwrap();
        assert_eq!(args.host.as_deref(), Some("localhost"));
        assert_eq!(args.port, Some(9091));
        assert_eq!(args.name.as_deref(), Some("alice"));
        assert!(!args.wants_tls());
        assert!(Args::try_parse_from(["echochat", "--port", "0"]).is_err());
        let fp = format!("sha256:{}", "ab".repeat(32));
        let args = Args::try_parse_from(["echochat", "--fingerprint", &fp]).unwrap();
        assert!(args.wants_tls(), "--fingerprint implies TLS");
        assert_eq!(args.fingerprint.unwrap().to_string(), fp);
        assert!(Args::try_parse_from(["echochat", "--fingerprint", "sha256:12"]).is_err());
        assert!(Args::try_parse_from(["echochat", "--tls"])
            .unwrap()
            .wants_tls());
        assert!(Args::try_parse_from(["echochat", "--port", "x"]).is_err());
    }
}
