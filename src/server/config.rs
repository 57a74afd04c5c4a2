//! The server's command line: every flag of the contract, each also readable from an
//! `ECHOCHAT_*` environment variable (the flag wins). The port prompt is the client's
//! (`endpoint::ask_port`): both binaries ask it the same way.

use std::net::{IpAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::server::http::{BadOrigin, Origin};

pub use crate::endpoint::DEFAULT_PORT;

/// How many ports are tried, starting at the given one, before giving up.
pub const PORT_ATTEMPTS: u16 = 100;

/// Fewer PBKDF2 rounds than this would make stored hashes cheap to brute-force.
pub const MIN_PBKDF2_ROUNDS: u32 = 1000;

/// A flag value that parses but cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--pbkdf2-rounds must be at least {MIN_PBKDF2_ROUNDS} (got {0})")]
    TooFewRounds(u32),
    #[error("--max-frame must be between 1 and {max} (got {0})", max = u32::MAX)]
    MaxFrame(usize),
    #[error("--token-ttl must be at least 1 second")]
    TokenTtl,
    #[error("--tls-only needs --tls-port")]
    TlsOnlyWithoutPort,
    #[error("--tls-cert and --tls-key go together")]
    CertWithoutKey,
    #[error("--host {host}: cannot resolve it: {source}")]
    Unresolvable {
        host: String,
        source: std::io::Error,
    },
    #[error("--host {host}: the name has no address")]
    NoAddress { host: String },
    #[error("--allowed-origins: {0}")]
    AllowedOrigin(#[from] BadOrigin),
    #[error("--trusted-proxies: {0} is not an IP address")]
    TrustedProxy(String),
    #[error("--http-tls needs --http-port")]
    HttpTlsWithoutPort,
}

/// Server configuration, as parsed from flags and environment.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "echochat-server",
    version,
    about = "echochat: a TCP chat server with accounts"
)]
pub struct ServerConfig {
    /// Address to bind: an IP address or a host name (resolved at start).
    #[arg(long, env = "ECHOCHAT_HOST", default_value = "0.0.0.0")]
    pub host: String,

    /// First port to try (the 99 after it are tried too); 0 lets the OS pick.
    /// Without it, and with stdin on a terminal, the server asks.
    #[arg(long, env = "ECHOCHAT_PORT")]
    pub port: Option<u16>,

    /// Also listen with TLS on this port (the 99 after it are tried too; 0: the OS picks).
    #[arg(long, env = "ECHOCHAT_TLS_PORT")]
    pub tls_port: Option<u16>,

    /// Listen with TLS only (needs --tls-port): no plaintext listener.
    #[arg(long, env = "ECHOCHAT_TLS_ONLY")]
    pub tls_only: bool,

    /// PEM certificate chain for TLS (with --tls-key); without both, the server's own
    /// self-signed certificate in <state-dir>/tls/.
    #[arg(long, env = "ECHOCHAT_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for TLS (with --tls-cert).
    #[arg(long, env = "ECHOCHAT_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Folder for users.json, history.jsonl and server.log (created if missing).
    #[arg(long, env = "ECHOCHAT_STATE_DIR", default_value = "./state")]
    pub state_dir: PathBuf,

    /// Messages replayed to a user after login.
    #[arg(long, env = "ECHOCHAT_HISTORY", default_value_t = 50)]
    pub history: usize,

    /// Largest accepted frame payload, in bytes.
    #[arg(long, env = "ECHOCHAT_MAX_FRAME", default_value_t = 65536)]
    pub max_frame: usize,

    /// PBKDF2-HMAC-SHA256 iterations for new password hashes (at least 1000).
    #[arg(long, env = "ECHOCHAT_PBKDF2_ROUNDS", default_value_t = 600_000)]
    pub pbkdf2_rounds: u32,

    /// Session token lifetime in seconds.
    #[arg(long, env = "ECHOCHAT_TOKEN_TTL", default_value_t = 2_592_000)]
    pub token_ttl: u64,

    /// Most connections at once (0 = no limit).
    #[arg(long, env = "ECHOCHAT_MAX_CONNS", default_value_t = 10_000)]
    pub max_conns: usize,

    /// Most connections at once from one IP address (0 = no limit).
    #[arg(long, env = "ECHOCHAT_MAX_CONNS_PER_IP", default_value_t = 100)]
    pub max_conns_per_ip: usize,

    /// `say` requests per second per connection, bursts up to twice that (0 = no limit).
    #[arg(long, env = "ECHOCHAT_MSG_RATE", default_value_t = 20)]
    pub msg_rate: u32,

    /// Wrong guesses (bad passwords, invalid tokens) per minute per IP, and per account,
    /// before `rate_limited` (0 = no limit).
    #[arg(long, env = "ECHOCHAT_LOGIN_RATE", default_value_t = 10)]
    pub login_rate: u32,

    /// New accounts per hour per IP before `rate_limited` (0 = no limit).
    #[arg(long, env = "ECHOCHAT_REGISTER_RATE", default_value_t = 20)]
    pub register_rate: u32,

    /// Authentications per second per IP, bursts up to five times that; more are
    /// answered late, not refused (0 = no pacing).
    #[arg(long, env = "ECHOCHAT_AUTH_RATE", default_value_t = 20)]
    pub auth_rate: u32,

    /// Seconds a greeted connection may stay unauthenticated (0 = no limit).
    #[arg(long, env = "ECHOCHAT_AUTH_TIMEOUT", default_value_t = 60)]
    pub auth_timeout: u64,

    /// Seconds a connection may send nothing, not even a ping (0 = no limit).
    #[arg(long, env = "ECHOCHAT_IDLE_TIMEOUT", default_value_t = 300)]
    pub idle_timeout: u64,

    /// Bytes of unsent output after which a connection is dropped (0 = no byte limit;
    /// the broadcast ring still bounds how far a reader may fall behind).
    #[arg(long, env = "ECHOCHAT_SEND_QUEUE", default_value_t = 1_048_576)]
    pub send_queue: usize,

    /// Also serve the web client at `/` and the chat over a WebSocket at `/ws` on this
    /// HTTP port (the 99 after it are tried too; 0 lets the OS pick).
    #[arg(long, env = "ECHOCHAT_HTTP_PORT")]
    pub http_port: Option<u16>,

    /// Serve the web client over HTTPS with the server's TLS certificate (`--tls-cert`
    /// and `--tls-key`, or the one the server makes for itself).
    #[arg(long, env = "ECHOCHAT_HTTP_TLS")]
    pub http_tls: bool,

    /// Origins, besides the web client's own, whose pages may open the WebSocket
    /// (comma-separated, e.g. `https://chat.example.com`).
    #[arg(long, env = "ECHOCHAT_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Reverse proxies (comma-separated IP addresses) whose `X-Forwarded-For` says
    /// which client a WebSocket comes from.
    #[arg(long, env = "ECHOCHAT_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
}

impl ServerConfig {
    /// Checks what clap's types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.pbkdf2_rounds < MIN_PBKDF2_ROUNDS {
            return Err(ConfigError::TooFewRounds(self.pbkdf2_rounds));
        }
        if self.max_frame == 0 || self.max_frame > u32::MAX as usize {
            return Err(ConfigError::MaxFrame(self.max_frame));
        }
        if self.token_ttl == 0 {
            return Err(ConfigError::TokenTtl);
        }
        if self.tls_only && self.tls_port.is_none() {
            return Err(ConfigError::TlsOnlyWithoutPort);
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::CertWithoutKey);
        }
        self.allowed_origins()?;
        self.trusted_proxies()?;
        if self.http_tls && self.http_port.is_none() {
            return Err(ConfigError::HttpTlsWithoutPort);
        }
        Ok(())
    }

    /// `--allowed-origins`, parsed (empty entries are skipped).
    pub fn allowed_origins(&self) -> Result<Vec<Origin>, ConfigError> {
        self.allowed_origins
            .iter()
            .filter(|entry| !entry.trim().is_empty())
            .map(|entry| Origin::parse(entry).map_err(ConfigError::from))
            .collect()
    }

    /// `--trusted-proxies`, parsed (empty entries are skipped).
    pub fn trusted_proxies(&self) -> Result<Vec<IpAddr>, ConfigError> {
        self.trusted_proxies
            .iter()
            .map(|entry| entry.trim())
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpAddr>()
                    .map(crate::server::http::canonical_ip)
                    .map_err(|_| ConfigError::TrustedProxy(crate::text::quote(entry)))
            })
            .collect()
    }

    /// The address to bind: `--host` itself when it is an IP address, else the first
    /// address the name resolves to (IPv4 preferred, as most clients try it first).
    pub fn bind_address(&self) -> Result<IpAddr, ConfigError> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(ip);
        }
        let host = || crate::text::quote(&self.host);
        let addresses: Vec<IpAddr> = (self.host.as_str(), 0)
            .to_socket_addrs()
            .map_err(|source| ConfigError::Unresolvable {
                host: host(),
                source,
            })?
            .map(|a| a.ip())
            .collect();
        addresses
            .iter()
            .find(|ip| ip.is_ipv4())
            .or(addresses.first())
            .copied()
            .ok_or_else(|| ConfigError::NoAddress { host: host() })
    }

    /// `None` when the limit is switched off with 0.
    pub fn auth_timeout(&self) -> Option<Duration> {
        (self.auth_timeout > 0).then(|| Duration::from_secs(self.auth_timeout))
    }

    /// `None` when the limit is switched off with 0.
    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout > 0).then(|| Duration::from_secs(self.idle_timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_validate() {
        let config = ServerConfig::try_parse_from(["echochat-server", "--port", "0"]).unwrap();
        assert_eq!(config.port, Some(0));
        assert_eq!(config.pbkdf2_rounds, 600_000);
        assert!(config.validate().is_ok());
        let config =
            ServerConfig::try_parse_from(["echochat-server", "--pbkdf2-rounds", "999"]).unwrap();
        assert!(config.validate().is_err());
        assert!(ServerConfig::try_parse_from(["echochat-server", "--port", "70000"]).is_err());
    }

    #[test]
    fn web_flags_parse_and_validate() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["echochat-server"];
            argv.extend(args);
            ServerConfig::try_parse_from(argv).unwrap()
        };
        let config = parse(&[
            "--http-port",
            "8080",
            "--allowed-origins",
            "https://chat.example.com,http://localhost:3000",
            "--trusted-proxies",
            "10.0.0.1, ::ffff:10.0.0.2",
        ]);
        assert_eq!(config.http_port, Some(8080));
        assert!(config.validate().is_ok());
        assert_eq!(config.allowed_origins().unwrap().len(), 2);
        assert_eq!(
            config.trusted_proxies().unwrap(),
            [
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "10.0.0.2".parse().unwrap()
            ]
        );
        let err = parse(&["--allowed-origins", "chat.example.com"])
            .validate()
            .unwrap_err();
        assert!(err.to_string().starts_with("--allowed-origins: "), "{err}");
        let err = parse(&["--trusted-proxies", "10.0.0.0/8"])
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("10.0.0.0/8"), "{err}");
        assert!(parse(&["--http-tls"]).validate().is_err());
        assert!(parse(&["--http-port", "0", "--http-tls"])
            .validate()
            .is_ok());
    }

    #[test]
    fn host_names_resolve_and_addresses_stay() {
        let config =
            |host: &str| ServerConfig::try_parse_from(["echochat-server", "--host", host]).unwrap();
        assert_eq!(
            config("::1").bind_address().unwrap(),
            "::1".parse::<IpAddr>().unwrap()
        );
        assert!(config("localhost").bind_address().unwrap().is_loopback());
        let err = config("no-such-host.invalid").bind_address().unwrap_err();
        assert!(err.to_string().contains("no-such-host.invalid"), "{err}");
    }
}
