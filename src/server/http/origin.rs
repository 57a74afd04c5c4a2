//! Which pages may open the WebSocket: the `Origin` rule of SPEC §10, as plain
//! functions. A browser always sends `Origin` on a WebSocket upgrade, and a page on
//! another site must not be able to chat with the user's cookies-free but
//! address-identified session, so an upgrade is accepted only from the page's own
//! origin or from one listed in `--allowed-origins`; a request with no `Origin` at all
//! comes from a program, not a page, and is accepted.

use std::fmt;

/// An origin as browsers serialise it: `scheme://host[:port]`, compared ignoring case,
/// with the scheme's default port left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

/// Why a string is not an origin (for `--allowed-origins`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not an origin like https://chat.example.com or http://localhost:8080")]
pub struct BadOrigin(pub String);

impl Origin {
    /// Parses `scheme://host[:port]` (a trailing `/` is tolerated: people copy it from
    /// the address bar). Only `http` and `https` pages can open a WebSocket to us.
    pub fn parse(text: &str) -> Result<Origin, BadOrigin> {
        let bad = || BadOrigin(crate::text::quote(text));
        let trimmed = text.trim();
        let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
        let (scheme, rest) = trimmed.split_once("://").ok_or_else(bad)?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(bad());
        }
        let (host, port) = split_host_port(rest).ok_or_else(bad)?;
        Ok(Origin::new(&scheme, host, port))
    }

    /// The origin of a page fetched with `scheme` from the `Host` header `host`.
    pub fn of_page(scheme: &str, host_header: &str) -> Option<Origin> {
        let (host, port) = split_host_port(host_header.trim())?;
        Some(Origin::new(scheme, host, port))
    }

    fn new(scheme: &str, host: &str, port: Option<u16>) -> Origin {
        let scheme = scheme.to_ascii_lowercase();
        let default_port = if scheme == "https" { 443 } else { 80 };
        Origin {
            host: host.to_ascii_lowercase(),
            port: port.filter(|&p| p != default_port),
            scheme,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`; `None` for anything with a path, user
/// info, an empty host or a bad port.
fn split_host_port(text: &str) -> Option<(&str, Option<u16>)> {
    if text.is_empty() || text.contains(['/', '@', '?', '#', ' ']) {
        return None;
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let host = &text[..inside.len() + 2];
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else {
        match text.rsplit_once(':') {
            // A bare IPv6 address without brackets is not a valid host here.
            Some((host, _)) if host.contains(':') => return None,
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(port) => Some(port.parse::<u16>().ok()?),
        None => None,
    };
    Some((host, port))
}

/// What the `Origin` rule decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginVerdict {
    /// No `Origin` header: not a browser.
    NoOrigin,
    /// The page's own origin.
    SameOrigin,
    /// Listed in `--allowed-origins`.
    Allowed,
    /// Anything else: refused with 403.
    Refused,
}

impl OriginVerdict {
    pub fn accepted(&self) -> bool {
        !matches!(self, OriginVerdict::Refused)
    }
}

/// The `Origin` rule of SPEC §10.
///
/// `origin` is the request's `Origin` header, `page_scheme` the scheme the page was
/// served with (`http`, `https` behind TLS or a trusted proxy that says so), `host` the
/// request's `Host` header. An `Origin` of `null` (a sandboxed frame, a file) is
/// refused like any other foreign origin.
pub fn check_origin(
    origin: Option<&str>,
    page_scheme: &str,
    host: Option<&str>,
    allowed: &[Origin],
) -> OriginVerdict {
    let Some(origin) = origin else {
        return OriginVerdict::NoOrigin;
    };
    let Ok(origin) = Origin::parse(origin) else {
        return OriginVerdict::Refused;
    };
    if host.and_then(|host| Origin::of_page(page_scheme, host)) == Some(origin.clone()) {
        return OriginVerdict::SameOrigin;
    }
    if allowed.contains(&origin) {
        return OriginVerdict::Allowed;
    }
    OriginVerdict::Refused
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(list: &[&str]) -> Vec<Origin> {
        list.iter().map(|o| Origin::parse(o).unwrap()).collect()
    }

    #[test]
    fn no_origin_is_a_program_and_accepted() {
        assert_eq!(
            check_origin(None, "http", Some("localhost:8080"), &[]),
            OriginVerdict::NoOrigin
        );
        assert_eq!(
            check_origin(None, "http", None, &[]),
            OriginVerdict::NoOrigin
        );
    }

    #[test]
    fn the_pages_own_origin_is_accepted() {
        let same = |origin, scheme, host| check_origin(Some(origin), scheme, Some(host), &[]);
        assert_eq!(
            same("http://localhost:8080", "http", "localhost:8080"),
            OriginVerdict::SameOrigin
        );
        assert_eq!(
            same("http://127.0.0.1:8080", "http", "127.0.0.1:8080"),
            OriginVerdict::SameOrigin
        );
        assert_eq!(
            same("HTTP://Chat.Example.COM", "http", "chat.example.com:80"),
            OriginVerdict::SameOrigin
        );
        assert_eq!(
            same("https://chat.example.com", "https", "chat.example.com"),
            OriginVerdict::SameOrigin
        );
        assert_eq!(
            same("http://[::1]:8080", "http", "[::1]:8080"),
            OriginVerdict::SameOrigin
        );
    }

    #[test]
    fn another_scheme_port_or_host_is_refused() {
        let verdict = |origin, scheme, host| check_origin(Some(origin), scheme, Some(host), &[]);
        // The same host served over HTTPS is another origin.
        assert_eq!(
            verdict("https://localhost:8080", "http", "localhost:8080"),
            OriginVerdict::Refused
        );
        assert_eq!(
            verdict("http://localhost:8081", "http", "localhost:8080"),
            OriginVerdict::Refused
        );
        assert_eq!(
            verdict("http://evil.example", "http", "localhost:8080"),
            OriginVerdict::Refused
        );
        assert_eq!(
            verdict(
                "http://localhost:8080.evil.example",
                "http",
                "localhost:8080"
            ),
            OriginVerdict::Refused
        );
        assert_eq!(
            verdict("null", "http", "localhost:8080"),
            OriginVerdict::Refused
        );
        assert_eq!(
            verdict("", "http", "localhost:8080"),
            OriginVerdict::Refused
        );
        // No Host header: only a listed origin can be accepted.
        assert_eq!(
            check_origin(Some("http://localhost:8080"), "http", None, &[]),
            OriginVerdict::Refused
        );
    }

    #[test]
    fn listed_origins_are_accepted() {
        let list = allowed(&["https://chat.example.com", "http://localhost:3000/"]);
        let verdict = |origin| check_origin(Some(origin), "http", Some("10.0.0.5:8080"), &list);
        assert_eq!(verdict("https://chat.example.com"), OriginVerdict::Allowed);
        assert_eq!(
            verdict("https://chat.example.com:443"),
            OriginVerdict::Allowed
        );
        assert_eq!(verdict("http://localhost:3000"), OriginVerdict::Allowed);
        assert_eq!(verdict("http://chat.example.com"), OriginVerdict::Refused);
        assert_eq!(verdict("http://localhost:3001"), OriginVerdict::Refused);
        assert!(verdict("https://chat.example.com").accepted());
        assert!(!verdict("https://other.example").accepted());
    }

    #[test]
    fn origins_parse_strictly() {
        assert_eq!(
            Origin::parse("https://Chat.Example.com:8443")
                .unwrap()
                .to_string(),
            "https://chat.example.com:8443"
        );
        assert_eq!(
            Origin::parse("http://example.com:80").unwrap().to_string(),
            "http://example.com"
        );
        for bad in [
            "example.com",
            "ftp://example.com",
            "https://",
            "https://example.com/path",
            "https://user@example.com",
            "https://example.com:99999",
            "https://::1",
            "*",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad} parsed");
        }
    }
}
