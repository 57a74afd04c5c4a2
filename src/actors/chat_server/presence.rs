//! `Presence`: who is online, and when to tell the others.
//!
//! Plain data with no actor code. A user is online while at least one of their
//! connections is authenticated; the others are told `joined` on the first and `left`
//! after the last, at once. A user who flaps (leaves again within [`FLAP_WINDOW`] of
//! their last announced `left`, as a resume-and-quit loop or a bad network does) has
//! that `left` held back for [`LEFT_GRACE`]: if they return meanwhile neither it nor the
//! next `joined` is announced, so flapping costs everyone a few lines, not thousands.
//!
//! Held departures wait in one queue in the order they were held (the grace is the same
//! for all, so that is the order they fall due): the actor keeps a single timer for the
//! front of it, not one per departure. A timer per departure would cost every message
//! the actor takes a look at each of them, and a resume-and-quit loop holds thousands.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How long a flapping user's departure waits before it is announced as `left`.
pub const LEFT_GRACE: Duration = Duration::from_secs(2);

/// A departure this soon after the user's last announced `left` is flapping.
pub const FLAP_WINDOW: Duration = Duration::from_secs(10);

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
    /// Flapping users whose last connection closed and whose `left` is held back, with
    /// the number of that departure.
    leaving: HashMap<String, (String, u64)>,
    /// When each user's last `left` was announced (kept for [`FLAP_WINDOW`]).
    last_left: HashMap<String, Instant>,
    departures: u64,
    /// Held departures and when each falls due, earliest first.
    due: VecDeque<(Instant, HeldDeparture)>,
}

/// What a closed connection means for the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Departure {
    /// The user is still online elsewhere: nothing to say.
    Stayed,
    /// Announce `left` for this name now.
    Left(String),
    /// A flapping user: held for [`LEFT_GRACE`] (see [`Presence::due_departures`]).
    Held(HeldDeparture),
}

/// A departure whose `left` is held back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldDeparture {
    key: String,
    number: u64,
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
        // Back while a `left` was held: it is called off, and so is this `joined`.
        self.leaving.remove(key).is_none()
    }

    /// A connection of `key` closed at `now`.
    pub fn depart(&mut self, key: &str, now: Instant) -> Departure {
        let Some(user) = self.online.get_mut(key) else {
            return Departure::Stayed;
        };
        user.connections -= 1;
        if user.connections > 0 {
            return Departure::Stayed;
        }
        let Some(user) = self.online.remove(key) else {
            return Departure::Stayed;
        };
        let flapping = self
            .last_left
            .get(key)
            .is_some_and(|at| now.saturating_duration_since(*at) < FLAP_WINDOW);
        if !flapping {
            self.last_left.insert(key.to_string(), now);
            return Departure::Left(user.name);
        }
        self.departures += 1;
        self.leaving
            .insert(key.to_string(), (user.name, self.departures));
        let held = HeldDeparture {
            key: key.to_string(),
            number: self.departures,
        };
        self.due.push_back((now + LEFT_GRACE, held.clone()));
        Departure::Held(held)
    }

    /// When the earliest held departure falls due, if any is held.
    pub fn next_due(&self) -> Option<Instant> {
        self.due.front().map(|(at, _)| *at)
    }

    /// The held departures due at `now` whose users did not come back: (name key, name)
    /// of each, to announce as `left`.
    pub fn due_departures(&mut self, now: Instant) -> Vec<(String, String)> {
        let mut announced = Vec::new();
        while let Some((at, _)) = self.due.front() {
            if *at > now {
                break;
            }
            let Some((_, held)) = self.due.pop_front() else {
                break;
            };
            if let Some(name) = self.departure_due(&held, now) {
                announced.push((held.key, name));
            }
        }
        announced
    }

    /// The grace of a held departure is over at `now`: the name to announce as `left`,
    /// unless the user came back meanwhile.
    fn departure_due(&mut self, held: &HeldDeparture, now: Instant) -> Option<String> {
        match self.leaving.get(&held.key) {
            Some((_, number)) if *number == held.number => {
                self.last_left.insert(held.key.clone(), now);
                self.leaving.remove(&held.key).map(|(name, _)| name)
            }
            _ => None,
        }
    }

    /// Forgets departures older than [`FLAP_WINDOW`].
    pub fn prune(&mut self, now: Instant) {
        self.last_left
            .retain(|_, at| now.saturating_duration_since(*at) < FLAP_WINDOW);
    }

    /// The user `key` came or went on another node while their departure from here
    /// was held: the held `left` is called off (the other node's news is what the
    /// others are told, or not told). Whether one was held.
    pub fn settle_elsewhere(&mut self, key: &str) -> bool {
        self.leaving.remove(key).is_some()
    }

    /// The online users: (name key, name as registered), in no order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.online
            .iter()
            .map(|(key, user)| (key.as_str(), user.name.as_str()))
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
    fn joined_on_the_first_connection_left_at_once_after_the_last() {
        let mut presence = Presence::default();
        let now = Instant::now();
        assert!(presence.arrive("ann", "Ann"));
        assert!(!presence.arrive("ann", "Ann"), "second device");
        assert_eq!(presence.depart("ann", now), Departure::Stayed);
        assert_eq!(presence.depart("ann", now), Departure::Left("Ann".into()));
        assert!(presence.is_empty());
        assert!(presence.arrive("ann", "Ann"), "announced again");
    }

    #[test]
    fn a_flapping_user_is_announced_once_it_settles() {
        let mut presence = Presence::default();
        let t0 = Instant::now();
        presence.arrive("bob", "Bob");
        assert_eq!(presence.depart("bob", t0), Departure::Left("Bob".into()));
        assert!(presence.arrive("bob", "Bob"), "others were told he left");
        // Gone again soon after: held.
        let Departure::Held(first) = presence.depart("bob", t0 + Duration::from_secs(1)) else {
            panic!("not held");
        };
        assert!(!presence.arrive("bob", "Bob"), "back within the grace");
        assert_eq!(
            presence.departure_due(&first, t0 + Duration::from_secs(3)),
            None
        );
        let Departure::Held(second) = presence.depart("bob", t0 + Duration::from_secs(4)) else {
            panic!("not held");
        };
        let later = t0 + Duration::from_secs(6);
        assert_eq!(presence.departure_due(&first, later), None, "stale timer");
        assert_eq!(
            presence.departure_due(&second, later).as_deref(),
            Some("Bob")
        );
        // Settled: a departure long after is announced at once again.
        presence.arrive("bob", "Bob");
        let much_later = later + FLAP_WINDOW;
        presence.prune(much_later);
        assert_eq!(
            presence.depart("bob", much_later),
            Departure::Left("Bob".into())
        );
    }

    #[test]
    fn news_from_elsewhere_settles_a_held_departure() {
        let mut presence = Presence::default();
        let t0 = Instant::now();
        presence.arrive("cy", "Cy");
        presence.depart("cy", t0);
        presence.arrive("cy", "Cy");
        let Departure::Held(held) = presence.depart("cy", t0 + Duration::from_secs(1)) else {
            panic!("not held");
        };
        assert!(presence.settle_elsewhere("cy"));
        assert!(!presence.settle_elsewhere("cy"), "once");
        assert_eq!(
            presence.departure_due(&held, t0 + Duration::from_secs(3)),
            None
        );
    }

    #[test]
    fn held_departures_fall_due_in_order_from_one_queue() {
        let mut presence = Presence::default();
        let t0 = Instant::now();
        for (key, name) in [("ann", "Ann"), ("bob", "Bob")] {
            presence.arrive(key, name);
            presence.depart(key, t0);
            presence.arrive(key, name);
        }
        assert_eq!(presence.next_due(), None, "nothing held yet");
        let t1 = t0 + Duration::from_secs(1);
        assert!(matches!(presence.depart("ann", t1), Departure::Held(_)));
        let t2 = t1 + Duration::from_millis(500);
        assert!(matches!(presence.depart("bob", t2), Departure::Held(_)));
        assert_eq!(presence.next_due(), Some(t1 + LEFT_GRACE));
        assert!(presence.due_departures(t1 + LEFT_GRACE / 2).is_empty());
        // Bob comes back before his grace is over: only Ann is announced.
        assert!(!presence.arrive("bob", "Bob"));
        assert_eq!(
            presence.due_departures(t1 + LEFT_GRACE),
            [("ann".to_string(), "Ann".to_string())]
        );
        assert_eq!(presence.next_due(), Some(t2 + LEFT_GRACE));
        assert!(presence.due_departures(t2 + LEFT_GRACE).is_empty());
        assert_eq!(presence.next_due(), None);
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
