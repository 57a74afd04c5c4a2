//! Whose address a WebSocket connection counts as, for identification by IP and the
//! per-address limits: the rule of SPEC §10 as a plain function.
//!
//! The peer of the TCP connection counts, unless it is one of `--trusted-proxies`:
//! then the proxy has told us, in `X-Forwarded-For`, whom it was talking to. Each
//! proxy appends the address it saw, so the list reads client, proxy, proxy, ...; the
//! entries on the left were written by whoever sent the request and can be anything.
//! The right-most address that is not a trusted proxy is the first one no trusted
//! party vouches for beyond: that is the client.

use std::net::{IpAddr, SocketAddr};

/// The address that counts for a request from `peer` carrying the `X-Forwarded-For`
/// header values `forwarded_for` (all of them, in the order received).
///
/// - `peer` not trusted: `peer`, whatever the headers say.
/// - trusted: walking the list from the right, trusted proxies are skipped; the first
///   other address is the client. An entry that is not an address (a client's
///   invention, `unknown`) stops the walk: the last trusted hop before it counts.
///   When every entry is a trusted proxy, the left-most counts. No header (or only
///   empty entries): `peer`.
pub fn client_ip(peer: IpAddr, forwarded_for: &[&str], trusted: &[IpAddr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.contains(&canonical(ip));
    let peer = canonical(peer);
    if !is_trusted(peer) {
        return peer;
    }
    let mut last_trusted = peer;
    let entries: Vec<&str> = forwarded_for
        .iter()
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .collect();
    for entry in entries.into_iter().rev() {
        let Some(ip) = parse_entry(entry) else {
            return last_trusted;
        };
        if !is_trusted(ip) {
            return ip;
        }
        last_trusted = ip;
    }
    last_trusted
}

/// IPv4 addresses seen through an IPv6 socket (`::ffff:10.0.0.1`) as plain IPv4, so
/// that one client has one address whichever way it came in.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5678`,
/// `[2001:db8::1]:443`), as some proxies write it.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(address) = entry.parse::<SocketAddr>() {
        return Some(canonical(address.ip()));
    }
    // `[2001:db8::1]` without a port.
    let inside = entry.strip_prefix('[')?.strip_suffix(']')?;
    inside.parse::<IpAddr>().ok().map(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusted(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| ip(s)).collect()
    }

    #[test]
    fn an_untrusted_peer_counts_whatever_it_says() {
        let none = trusted(&[]);
        assert_eq!(
            client_ip(ip("203.0.113.9"), &["1.1.1.1"], &none),
            ip("203.0.113.9")
        );
        let proxies = trusted(&["10.0.0.1"]);
        assert_eq!(
            client_ip(ip("203.0.113.9"), &["1.1.1.1"], &proxies),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn a_trusted_peer_without_the_header_counts_itself() {
        let proxies = trusted(&["10.0.0.1"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &[], &proxies), ip("10.0.0.1"));
        assert_eq!(client_ip(ip("10.0.0.1"), &[""], &proxies), ip("10.0.0.1"));
    }

    #[test]
    fn the_right_most_untrusted_address_counts() {
        let proxies = trusted(&["10.0.0.1", "10.0.0.2"]);
        // client → 10.0.0.2 → 10.0.0.1 → us; the client forged a first entry.
        let header = ["6.6.6.6, 198.51.100.7, 10.0.0.2"];
        assert_eq!(
            client_ip(ip("10.0.0.1"), &header, &proxies),
            ip("198.51.100.7")
        );
        // The same list split over several header lines.
        let lines = ["6.6.6.6", "198.51.100.7", "10.0.0.2"];
        assert_eq!(
            client_ip(ip("10.0.0.1"), &lines, &proxies),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &["198.51.100.7"], &proxies),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn entries_with_ports_and_brackets_are_read() {
        let proxies = trusted(&["10.0.0.1"]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &["198.51.100.7:4711"], &proxies),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &["[2001:db8::7]:443"], &proxies),
            ip("2001:db8::7")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &[" [2001:db8::7] "], &proxies),
            ip("2001:db8::7")
        );
    }

    #[test]
    fn garbage_stops_at_the_last_trusted_hop() {
        let proxies = trusted(&["10.0.0.1", "10.0.0.2"]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &["unknown, 10.0.0.2"], &proxies),
            ip("10.0.0.2")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &["198.51.100.7, <script>"], &proxies),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn only_trusted_hops_give_the_left_most() {
        let proxies = trusted(&["10.0.0.1", "10.0.0.2"]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &["10.0.0.2, 10.0.0.1"], &proxies),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn mapped_ipv4_is_plain_ipv4() {
        let proxies = trusted(&["10.0.0.1"]);
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.1"), &["::ffff:198.51.100.7"], &proxies),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_ip(ip("::ffff:203.0.113.9"), &[], &proxies),
            ip("203.0.113.9")
        );
    }
}
