//! `Presence`: who is online, and when to tell the others.
//!
//! Plain data with no actor code. A user is online while at least one of their
//! connections is authenticated; the others are told `joined` on the first and `left`
//! after the last. A `left` is held back for [`LEFT_GRACE`]: if the user returns in that
//! time (a reconnect, a resume-and-quit loop) neither the `left` nor the next `joined`
//! is announced, so flapping does not flood everyone's screen.

use std::collections::HashMap;
use std::time::Duration;

/// How long a departure waits before it is announced as `left`.
pub const LEFT_GRACE: Duration = Duration::from_secs(1);

/// One online user.
#[derive(Debug)]
struct OnlineUser {
    /// The name as registered.
    name: String,
    connections: usize,
}

/// The online users, by name key.
#[derive(Debug, Default)]
pub struct Presence {
    online: HashMap<String, OnlineUser>,
    /// Users whose last connection closed and whose `left` is not announced yet, with
    /// the number of that departure.
    leaving: HashMap<String, (String, u64)>,
    departures: u64,
}

/// What a departure asks of the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departure {
    pub key: String,
    /// Pass back to [`Presence::departure_due`] after [`LEFT_GRACE`].
    pub number: u64,
}

impl Presence {
    /// A connection of `name` (key `key`) authenticated; whether the others should be
    /// told `joined`.
    pub fn arrive(&mut self, key: &str, name: &str) -> bool {
        let user = self
            .online
            .entry(key.to_string())
            .or_insert_with(|| OnlineUser {
                name: name.to_string(),
                connections: 0,
            });
        user.connections += 1;
        if user.connections > 1 {
            return false;
        }
        // Back within the grace: the `left` is called off, and so is this `joined`.
        self.leaving.remove(key).is_none()
    }

    /// A connection of `key` closed; the departure to announce after [`LEFT_GRACE`]
    /// if it was the user's last.
    pub fn depart(&mut self, key: &str) -> Option<Departure> {
        let user = self.online.get_mut(key)?;
        user.connections -= 1;
        if user.connections > 0 {
            return None;
        }
        let user = self.online.remove(key)?;
        self.departures += 1;
        self.leaving
            .insert(key.to_string(), (user.name, self.departures));
        Some(Departure {
            key: key.to_string(),
            number: self.departures,
        })
    }

    /// The grace of `departure` is over: the name to announce as `left`, unless the
    /// user came back meanwhile.
    pub fn departure_due(&mut self, departure: &Departure) -> Option<String> {
        match self.leaving.get(&departure.key) {
            Some((_, number)) if *number == departure.number => {
                self.leaving.remove(&departure.key).map(|(name, _)| name)
            }
            _ => None,
        }
    }

    /// The online users' names, sorted by key.
    pub fn names(&self) -> Vec<String> {
        let mut users: Vec<(&String, &OnlineUser)> = self.online.iter().collect();
        users.sort_by(|a, b| a.0.cmp(b.0));
        users.into_iter().map(|(_, u)| u.name.clone()).collect()
    }

    /// The registered name of an online user.
    pub fn name_of(&self, key: &str) -> Option<&str> {
        self.online.get(key).map(|u| u.name.as_str())
    }

    /// How many users are online.
    pub fn len(&self) -> usize {
        self.online.len()
    }

    /// Whether nobody is online.
    pub fn is_empty(&self) -> bool {
        self.online.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_on_the_first_connection_left_after_the_last() {
        let mut presence = Presence::default();
        assert!(presence.arrive("ann", "Ann"));
        assert!(!presence.arrive("ann", "Ann"), "second device");
        assert_eq!(presence.depart("ann"), None);
        let departure = presence.depart("ann").unwrap();
        assert!(presence.is_empty());
        assert_eq!(presence.departure_due(&departure).as_deref(), Some("Ann"));
        assert!(
            presence.arrive("ann", "Ann"),
            "announced again after a real absence"
        );
    }

    #[test]
    fn a_quick_return_announces_nothing() {
        let mut presence = Presence::default();
        assert!(presence.arrive("bob", "Bob"));
        let departure = presence.depart("bob").unwrap();
        assert!(!presence.arrive("bob", "Bob"), "back within the grace");
        assert_eq!(presence.departure_due(&departure), None);
        // A later departure is announced on its own timer, not the stale one's.
        let second = presence.depart("bob").unwrap();
        assert_eq!(presence.departure_due(&departure), None);
        assert_eq!(presence.departure_due(&second).as_deref(), Some("Bob"));
    }

    #[test]
    fn names_are_sorted_by_key() {
        let mut presence = Presence::default();
        presence.arrive("zed", "Zed");
        presence.arrive("amy", "amy");
        presence.arrive("bo", "BO");
        assert_eq!(presence.names(), ["amy", "BO", "Zed"]);
        assert_eq!(presence.name_of("bo"), Some("BO"));
        assert_eq!(presence.len(), 3);
    }
}
