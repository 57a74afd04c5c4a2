//! The rate limits, as plain data with no actor code: where to look to change a limit.
//!
//! - [`TokenBucket`]: so many events a second with bursts, for `--msg-rate` (per
//!   connection and per account) and for pacing authentications per address.
//! - [`KeyedBuckets`]: one bucket per key (address, account), forgetting idle ones.
//! - [`WindowLimiter`]: so many events per key in a sliding window, with events still
//!   in progress counted in advance, for `--login-rate` (guesses per address and per
//!   account) and `--register-rate` (new accounts per address).
//! - [`ConnectionSlots`]: connections at once, as many as the open-file limit leaves
//!   room for ([`connection_capacity`]); `--max-conns` and `--max-conns-per-ip` are
//!   applied by `ChatServer`'s `Connections`.
//!
//! The other limits are constants beside what they bound: the frame size (`codec`),
//! a session's requests in flight and bad-input allowance (`actors::session`), the
//! output queue and ring (`server::outbound`), the history replayed at login
//! (`actors::chat_server::history`), tokens per account (`server::identity`).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `rate` tokens a second, holding at most `burst`; a zero rate means no limit.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilled at `rate` a second.
    pub fn new(rate: u32, burst: u32) -> TokenBucket {
        TokenBucket {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            updated: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(updated) = self.updated {
            let refill = now.saturating_duration_since(updated).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.updated = Some(now);
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        self.take_n(1, now)
    }

    /// Takes `n` tokens if there are that many (a share of the rate: `n` buckets
    /// charging `n` each allow the rate once between them). Never more than a full
    /// bucket, so a large `n` still lets one through when the bucket is full.
    pub fn take_n(&mut self, n: u32, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        self.refill(now);
        let cost = f64::from(n.max(1)).min(self.burst);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }

    /// Takes one token, now or in the future: how long to wait until it is due. The
    /// token is spoken for at once, so callers queue up behind each other.
    pub fn take_or_wait(&mut self, now: Instant) -> Duration {
        if self.rate == 0.0 {
            return Duration::ZERO;
        }
        self.refill(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// Whether the bucket is full at `now` (so forgetting it changes nothing).
    pub fn is_full(&self, now: Instant) -> bool {
        let mut probe = self.clone();
        probe.refill(now);
        probe.tokens >= probe.burst
    }
}

/// A [`TokenBucket`] per key, made on first use.
#[derive(Debug)]
pub struct KeyedBuckets<K> {
    rate: u32,
    burst: u32,
    buckets: HashMap<K, TokenBucket>,
}

impl<K: Hash + Eq + Clone> KeyedBuckets<K> {
    /// Buckets of `burst` tokens refilled at `rate` a second (0: no limit).
    pub fn new(rate: u32, burst: u32) -> KeyedBuckets<K> {
        KeyedBuckets {
            rate,
            burst,
            buckets: HashMap::new(),
        }
    }

    fn bucket(&mut self, key: &K) -> &mut TokenBucket {
        let (rate, burst) = (self.rate, self.burst);
        self.buckets
            .entry(key.clone())
            .or_insert_with(|| TokenBucket::new(rate, burst))
    }

    /// See [`TokenBucket::take`].
    pub fn take(&mut self, key: &K, now: Instant) -> bool {
        self.rate == 0 || self.bucket(key).take(now)
    }

    /// See [`TokenBucket::take_n`].
    pub fn take_n(&mut self, key: &K, n: u32, now: Instant) -> bool {
        self.rate == 0 || self.bucket(key).take_n(n, now)
    }

    /// See [`TokenBucket::take_or_wait`].
    pub fn take_or_wait(&mut self, key: &K, now: Instant) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        self.bucket(key).take_or_wait(now)
    }

    /// Forgets full buckets: a new one would be the same.
    pub fn prune(&mut self, now: Instant) {
        self.buckets.retain(|_, b| !b.is_full(now));
    }

    /// Keys with a bucket that is not full.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no key has a bucket.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// Events of one key in the window.
#[derive(Debug, Default)]
struct Events {
    times: VecDeque<Instant>,
    /// Events begun and not yet ended (a password being checked), counted against the
    /// limit in advance so that a burst cannot slip past it while they run.
    in_flight: usize,
}

/// At most `limit` events per key in any `window`; a zero limit means no limit.
#[derive(Debug)]
pub struct WindowLimiter<K> {
    limit: usize,
    window: Duration,
    keys: HashMap<K, Events>,
}

impl<K: Hash + Eq + Clone> WindowLimiter<K> {
    /// `limit` events per key per `window` (0: no limit).
    pub fn new(limit: usize, window: Duration) -> WindowLimiter<K> {
        WindowLimiter {
            limit,
            window,
            keys: HashMap::new(),
        }
    }

    /// Whether `key` has used up its events (those in flight included).
    pub fn exceeded(&mut self, key: &K, now: Instant) -> bool {
        if self.limit == 0 {
            return false;
        }
        let window = self.window;
        let Some(events) = self.keys.get_mut(key) else {
            return false;
        };
        while events
            .times
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            events.times.pop_front();
        }
        events.times.len() + events.in_flight >= self.limit
    }

    /// An event of `key` has begun and may yet count.
    pub fn begin(&mut self, key: &K) {
        if self.limit > 0 {
            self.keys.entry(key.clone()).or_default().in_flight += 1;
        }
    }

    /// An event begun with [`begin`](Self::begin) has ended (counted or not).
    pub fn end(&mut self, key: &K) {
        if let Some(events) = self.keys.get_mut(key) {
            events.in_flight = events.in_flight.saturating_sub(1);
        }
    }

    /// Counts an event of `key` at `now`.
    pub fn record(&mut self, key: &K, now: Instant) {
        if self.limit == 0 {
            return;
        }
        let events = self.keys.entry(key.clone()).or_default();
        events.times.push_back(now);
        while events.times.len() > self.limit {
            events.times.pop_front();
        }
    }

    /// Forgets keys with nothing left in the window.
    pub fn prune(&mut self, now: Instant) {
        let window = self.window;
        self.keys.retain(|_, e| {
            e.in_flight > 0
                || e.times
                    .back()
                    .is_some_and(|t| now.saturating_duration_since(*t) < window)
        });
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Descriptors kept free beyond those open at start: state files being rewritten, the
/// folder fsync, a connection accepted and then refused, threads the runtime starts.
const SPARE_DESCRIPTORS: u64 = 64;

/// Raises the open-file limit to its hard limit and returns how many connections the
/// descriptors then leave room for; `None` if the limit is unknown or unlimited.
pub fn connection_capacity() -> Option<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only write into the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    if limit.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    let open_now = std::fs::read_dir("/proc/self/fd").map_or(16, |d| d.count() as u64);
    let capacity = limit.rlim_cur.saturating_sub(open_now + SPARE_DESCRIPTORS);
    Some(usize::try_from(capacity).unwrap_or(usize::MAX))
}

/// How many connections are open, against how many may be, in all and per address:
/// shared by the accept loops (which take a slot per connection, before any handshake)
/// and the sessions (which give it back).
#[derive(Debug, Clone)]
pub struct ConnectionSlots {
    live: Arc<AtomicUsize>,
    capacity: usize,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    per_ip_capacity: usize,
}

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSlot {
    /// As many connections as the descriptors (or `--max-conns`) allow.
    Full,
    /// As many connections from this address as `--max-conns-per-ip` allows.
    AddressFull,
}

impl std::fmt::Display for NoSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            // The descriptors left are for the users already in.
            NoSlot::Full => "no room for more connections (--max-conns or descriptors)",
            NoSlot::AddressFull => "--max-conns-per-ip reached",
        })
    }
}

impl ConnectionSlots {
    /// Room for `capacity` connections, `per_ip_capacity` from one address (0: no
    /// limit).
    pub fn new(capacity: usize, per_ip_capacity: usize) -> ConnectionSlots {
        ConnectionSlots {
            live: Arc::new(AtomicUsize::new(0)),
            capacity,
            per_ip: Arc::new(Mutex::new(HashMap::new())),
            per_ip_capacity,
        }
    }

    /// A slot for one more connection from `ip`, if there is room.
    pub fn take(&self, ip: IpAddr) -> Result<ConnectionSlot, NoSlot> {
        let taken = self.live.fetch_add(1, Ordering::AcqRel);
        if self.capacity > 0 && taken >= self.capacity {
            self.live.fetch_sub(1, Ordering::AcqRel);
            return Err(NoSlot::Full);
        }
        if self.per_ip_capacity > 0 {
            let Ok(mut per_ip) = self.per_ip.lock() else {
                self.live.fetch_sub(1, Ordering::AcqRel);
                return Err(NoSlot::Full);
            };
            let count = per_ip.entry(ip).or_insert(0);
            if *count >= self.per_ip_capacity {
                self.live.fetch_sub(1, Ordering::AcqRel);
                return Err(NoSlot::AddressFull);
            }
            *count += 1;
        }
        Ok(ConnectionSlot {
            slots: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    fn give_back(&self, ip: IpAddr) {
        self.live.fetch_sub(1, Ordering::AcqRel);
        if self.per_ip_capacity > 0 {
            if let Ok(mut per_ip) = self.per_ip.lock() {
                if let Some(count) = per_ip.get_mut(&ip) {
                    *count -= 1;
                    if *count == 0 {
                        per_ip.remove(&ip);
                    }
                }
            }
        }
    }
}

/// One connection's place; given back when dropped (when its session ends, or its
/// handshake fails).
#[derive(Debug)]
pub struct ConnectionSlot {
    slots: ConnectionSlots,
    ip: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.slots.give_back(self.ip);
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn shares_of_a_rate_allow_it_once_between_them() {
        let now = Instant::now();
        // Two holders of rate 1 (burst 2), each charging 2 a message: one at once each.
        let mut shares = [TokenBucket::new(1, 2), TokenBucket::new(1, 2)];
        let passed = (0..3)
            .flat_map(|_| [0, 1])
            .filter(|i| shares[*i].take_n(2, now))
            .count();
        assert_eq!(passed, 2);
        // Two seconds later each has earned one more.
        let later = now + Duration::from_secs(2);
        assert!(shares[0].take_n(2, later));
        assert!(!shares[0].take_n(2, later));
        // A share larger than the burst still lets one through from a full bucket.
        let mut small = TokenBucket::new(1, 2);
        assert!(small.take_n(5, now));
        assert!(!small.take_n(5, now));
    }

    use super::*;

    #[test]
    fn slots_are_taken_up_to_the_capacity_and_given_back() {
        let one: IpAddr = "10.0.0.1".parse().unwrap();
        let two: IpAddr = "10.0.0.2".parse().unwrap();
        let slots = ConnectionSlots::new(3, 2);
        let a = slots.take(one).unwrap();
        let _b = slots.take(one).unwrap();
        assert_eq!(slots.take(one).unwrap_err(), NoSlot::AddressFull);
        let _c = slots.take(two).unwrap();
        assert_eq!(slots.take(two).unwrap_err(), NoSlot::Full);
        drop(a);
        assert_eq!(slots.live(), 2);
        assert!(slots.take(one).is_ok());
        let unlimited = ConnectionSlots::new(0, 0);
        let held: Vec<_> = (0..1000).filter_map(|_| unlimited.take(one).ok()).collect();
        assert_eq!(held.len(), 1000);
    }

    #[test]
    fn capacity_leaves_room_below_the_open_file_limit() {
        if let Some(capacity) = connection_capacity() {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes only into the struct.
            assert_eq!(
                unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
                0
            );
            assert!((capacity as u64) < limit.rlim_cur);
        }
    }

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let mut bucket = TokenBucket::new(5, 10);
        let start = Instant::now();
        assert_eq!((0..20).filter(|_| bucket.take(start)).count(), 10);
        assert!(!bucket.take(start));
        assert!(bucket.take(start + Duration::from_millis(210)));
        assert!(!bucket.take(start + Duration::from_millis(210)));
    }

    #[test]
    fn zero_rate_means_unlimited() {
        let mut bucket = TokenBucket::new(0, 0);
        let now = Instant::now();
        assert!((0..10_000).all(|_| bucket.take(now)));
        assert_eq!(bucket.take_or_wait(now), Duration::ZERO);
    }

    #[test]
    fn waiting_takers_queue_up() {
        let mut bucket = TokenBucket::new(10, 2);
        let now = Instant::now();
        assert_eq!(bucket.take_or_wait(now), Duration::ZERO);
        assert_eq!(bucket.take_or_wait(now), Duration::ZERO);
        let third = bucket.take_or_wait(now);
        let fourth = bucket.take_or_wait(now);
        assert!((third.as_secs_f64() - 0.1).abs() < 1e-6, "{third:?}");
        assert!((fourth.as_secs_f64() - 0.2).abs() < 1e-6, "{fourth:?}");
    }

    #[test]
    fn keyed_buckets_are_apart_and_forgotten_when_full() {
        let mut buckets = KeyedBuckets::new(1, 2);
        let now = Instant::now();
        assert!(buckets.take(&"a", now));
        assert!(buckets.take(&"a", now));
        assert!(!buckets.take(&"a", now));
        assert!(buckets.take(&"b", now));
        buckets.prune(now);
        assert_eq!(buckets.len(), 2);
        buckets.prune(now + Duration::from_secs(3));
        assert!(buckets.is_empty());
    }

    #[test]
    fn window_counts_events_and_those_in_flight() {
        let mut limiter = WindowLimiter::new(3, Duration::from_secs(60));
        let now = Instant::now();
        limiter.record(&"ip", now);
        limiter.begin(&"ip");
        assert!(!limiter.exceeded(&"ip", now));
        limiter.begin(&"ip");
        assert!(limiter.exceeded(&"ip", now), "two in flight count already");
        limiter.end(&"ip");
        limiter.end(&"ip");
        assert!(!limiter.exceeded(&"ip", now));
        assert!(!limiter.exceeded(&"other", now));
        limiter.record(&"ip", now);
        limiter.record(&"ip", now);
        assert!(limiter.exceeded(&"ip", now));
        let later = now + Duration::from_secs(60);
        assert!(!limiter.exceeded(&"ip", later), "the window moved on");
        limiter.prune(later);
        assert!(limiter.is_empty());
    }

    #[test]
    fn zero_limit_is_off() {
        let mut limiter = WindowLimiter::new(0, Duration::from_secs(1));
        let now = Instant::now();
        for _ in 0..100 {
            limiter.begin(&1);
            limiter.record(&1, now);
        }
        assert!(!limiter.exceeded(&1, now));
        assert!(limiter.is_empty());
    }
}
