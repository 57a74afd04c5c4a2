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
    /// The authenticated connections of each user, by name key.
    by_user: HashMap<String, Vec<SessionId>>,
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
            by_user: HashMap::new(),
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
        if let Some(key) = &peer.user {
            self.forget_user_session(key, id);
        }
        Some(peer)
    }

    /// Records that connection `id` is authenticated as the user `key`.
    pub fn authenticate(&mut self, id: SessionId, key: &str, token_digest: String) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let old = peer.user.replace(key.to_string());
        peer.token_digest = Some(token_digest);
        if let Some(old) = old {
            self.forget_user_session(&old, id);
        }
        self.by_user.entry(key.to_string()).or_default().push(id);
    }

    fn forget_user_session(&mut self, key: &str, id: SessionId) {
        if let Some(sessions) = self.by_user.get_mut(key) {
            sessions.retain(|s| *s != id);
            if sessions.is_empty() {
                self.by_user.remove(key);
            }
        }
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

    /// The connections authenticated as the user `key`, with their ids.
    pub fn of_user<'a>(
        &'a self,
        key: &'a str,
    ) -> impl Iterator<Item = (SessionId, &'a Peer<H>)> + 'a {
        self.by_user
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|id| self.peers.get(id).map(|peer| (*id, peer)))
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
        conns.authenticate(1, "ann", "t1".into());
        conns.authenticate(3, "ann", "t3".into());
        conns.authenticate(2, "bob", "t2".into());
        let mut handles: Vec<u8> = conns.of_user("ann").map(|(_, p)| p.handle).collect();
        handles.sort();
        assert_eq!(handles, [1, 3]);
        conns.remove(1);
        let left: Vec<SessionId> = conns.of_user("ann").map(|(id, _)| id).collect();
        assert_eq!(left, [3]);
        assert_eq!(conns.of_user("nobody").count(), 0);
    }
}
