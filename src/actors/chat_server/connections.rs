//! `Connections`: every open connection as `ChatServer` sees it.
//!
//! Plain data with no actor code: which connections are open, from which address, which
//! are waiting to be greeted (the server is paused) and which user each one is. Admission
//! against `--max-conns` and `--max-conns-per-ip` is decided here. It is generic over the
//! handle used to reach a connection, so it is tested without sockets.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use crate::server::outbound::SessionId;

/// One connection.
#[derive(Debug)]
pub struct Peer<H> {
    /// How to reach the connection (its outbox and its session).
    pub handle: H,
    pub ip: IpAddr,
    /// Name key once authenticated.
    pub user: Option<String>,
    /// Digest of the token this connection's last `auth_ok` carried.
    pub token_digest: Option<String>,
}

/// Why a connection is not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MaxConns,
    MaxConnsPerIp,
}

impl Refusal {
    /// The limit, as the log names it.
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::MaxConns => "--max-conns reached",
            Refusal::MaxConnsPerIp => "--max-conns-per-ip reached",
        }
    }
}

/// The open connections.
#[derive(Debug)]
pub struct Connections<H> {
    max_conns: usize,
    max_conns_per_ip: usize,
    peers: HashMap<SessionId, Peer<H>>,
    per_ip: HashMap<IpAddr, usize>,
    /// Connections accepted while greeting is paused, in arrival order.
    waiting: VecDeque<SessionId>,
}

impl<H> Connections<H> {
    /// No connections yet; at most `max_conns` (and `max_conns_per_ip` from one
    /// address) at once, 0 meaning no limit.
    pub fn new(max_conns: usize, max_conns_per_ip: usize) -> Connections<H> {
        Connections {
            max_conns,
            max_conns_per_ip,
            peers: HashMap::new(),
            per_ip: HashMap::new(),
            waiting: VecDeque::new(),
        }
    }

    /// Admits a new connection, waiting to be greeted if `wait`.
    pub fn admit(
        &mut self,
        id: SessionId,
        ip: IpAddr,
        handle: H,
        wait: bool,
    ) -> Result<(), Refusal> {
        if self.max_conns > 0 && self.peers.len() >= self.max_conns {
            return Err(Refusal::MaxConns);
        }
        let from_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
        if self.max_conns_per_ip > 0 && from_ip >= self.max_conns_per_ip {
            return Err(Refusal::MaxConnsPerIp);
        }
        self.per_ip.insert(ip, from_ip + 1);
        self.peers.insert(
            id,
            Peer {
                handle,
                ip,
                user: None,
                token_digest: None,
            },
        );
        if wait {
            self.waiting.push_back(id);
        }
        Ok(())
    }

    /// Forgets a connection that ended.
    pub fn remove(&mut self, id: SessionId) -> Option<Peer<H>> {
        let peer = self.peers.remove(&id)?;
        if let Some(count) = self.per_ip.get_mut(&peer.ip) {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&peer.ip);
            }
        }
        self.waiting.retain(|waiting| *waiting != id);
        Some(peer)
    }

    /// Takes every connection waiting to be greeted, in arrival order.
    pub fn take_waiting(&mut self) -> Vec<SessionId> {
        self.waiting.drain(..).collect()
    }

    pub fn get(&self, id: SessionId) -> Option<&Peer<H>> {
        self.peers.get(&id)
    }

    pub fn get_mut(&mut self, id: SessionId) -> Option<&mut Peer<H>> {
        self.peers.get_mut(&id)
    }

    /// Every connection.
    pub fn iter(&self) -> impl Iterator<Item = (&SessionId, &Peer<H>)> {
        self.peers.iter()
    }

    /// Every connection, to change.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Peer<H>> {
        self.peers.values_mut()
    }

    /// The connections authenticated as the user `key`.
    pub fn of_user<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Peer<H>> + 'a {
        self.peers
            .values()
            .filter(move |p| p.user.as_deref() == Some(key))
    }

    /// How many connections are open.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// How many wait to be greeted.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn admission_counts_all_and_per_address() {
        let mut conns: Connections<()> = Connections::new(3, 2);
        assert_eq!(conns.admit(1, ip(1), (), false), Ok(()));
        assert_eq!(conns.admit(2, ip(1), (), false), Ok(()));
        assert_eq!(
            conns.admit(3, ip(1), (), false),
            Err(Refusal::MaxConnsPerIp)
        );
        assert_eq!(conns.admit(3, ip(2), (), false), Ok(()));
        assert_eq!(conns.admit(4, ip(3), (), false), Err(Refusal::MaxConns));
        assert!(conns.remove(1).is_some());
        assert!(conns.remove(1).is_none());
        assert_eq!(conns.admit(4, ip(1), (), false), Ok(()));
        assert_eq!(conns.len(), 3);
    }

    #[test]
    fn zero_means_no_limit() {
        let mut conns: Connections<()> = Connections::new(0, 0);
        for id in 0..1000 {
            conns.admit(id, ip(1), (), false).unwrap();
        }
        assert_eq!(conns.len(), 1000);
    }

    #[test]
    fn waiting_connections_are_greeted_in_arrival_order() {
        let mut conns: Connections<()> = Connections::new(0, 0);
        for id in [5, 3, 9] {
            conns.admit(id, ip(1), (), true).unwrap();
        }
        conns.admit(1, ip(1), (), false).unwrap();
        conns.remove(3);
        assert_eq!(conns.waiting(), 2);
        assert_eq!(conns.take_waiting(), [5, 9]);
        assert_eq!(conns.waiting(), 0);
    }

    #[test]
    fn connections_of_a_user() {
        let mut conns: Connections<u8> = Connections::new(0, 0);
        for id in 0..4 {
            conns.admit(id, ip(1), id as u8, false).unwrap();
        }
        conns.get_mut(1).unwrap().user = Some("ann".into());
        conns.get_mut(3).unwrap().user = Some("ann".into());
        conns.get_mut(2).unwrap().user = Some("bob".into());
        let mut handles: Vec<u8> = conns.of_user("ann").map(|p| p.handle).collect();
        handles.sort();
        assert_eq!(handles, [1, 3]);
    }
}
