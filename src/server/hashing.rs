//! Where PBKDF2 runs: on the blocking pool, at most one computation per core at a time,
//! taking turns between client addresses.
//!
//! A password hash is slow on purpose (that is its job), so it never runs on an actor's
//! thread, and a storm of logins queues here instead of starving chat. Queued work is
//! served round-robin by address ([`FairQueue`]): an address that sends a thousand
//! logins waits behind its own, while a login from anywhere else takes the next free
//! slot.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;

use tokio::sync::{mpsc, oneshot};

/// Queues per key, served one item per key in turn.
#[derive(Debug)]
pub struct FairQueue<K, T> {
    queues: HashMap<K, VecDeque<T>>,
    /// Keys with something queued, in the order they get their next turn.
    turns: VecDeque<K>,
}

impl<K: Hash + Eq + Clone, T> Default for FairQueue<K, T> {
    fn default() -> Self {
        FairQueue {
            queues: HashMap::new(),
            turns: VecDeque::new(),
        }
    }
}

impl<K: Hash + Eq + Clone, T> FairQueue<K, T> {
    /// Queues `item` behind the others of `key`.
    pub fn push(&mut self, key: K, item: T) {
        let queue = self.queues.entry(key.clone()).or_default();
        if queue.is_empty() {
            self.turns.push_back(key);
        }
        queue.push_back(item);
    }

    /// The next item of the key whose turn it is.
    pub fn pop(&mut self) -> Option<T> {
        let key = self.turns.pop_front()?;
        let queue = self.queues.get_mut(&key)?;
        let item = queue.pop_front();
        if queue.is_empty() {
            self.queues.remove(&key);
        } else {
            self.turns.push_back(key);
        }
        item
    }

    /// Items queued.
    pub fn len(&self) -> usize {
        self.queues.values().map(VecDeque::len).sum()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.turns.is_empty()
    }
}

type Work = Box<dyn FnOnce() + Send>;

/// The hashing pool; cheap to clone.
#[derive(Clone)]
pub struct HashingPool {
    jobs: mpsc::UnboundedSender<(IpAddr, Work)>,
}

impl HashingPool {
    /// A pool running at most `slots` computations at once. Must be called within the
    /// actor system (it spawns its dispatcher there).
    pub fn start(slots: usize) -> HashingPool {
        let (jobs, receiver) = mpsc::unbounded_channel();
        actix::spawn(dispatch(receiver, slots.max(1)));
        HashingPool { jobs }
    }

    /// Runs `job` for a client at `from` once it is its turn and a slot is free;
    /// `None` if the pool is gone or the job panicked.
    pub fn run<T: Send + 'static>(
        &self,
        from: IpAddr,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> impl std::future::Future<Output = Option<T>> {
        let (tx, rx) = oneshot::channel();
        let work: Work = Box::new(move || {
            let _ = tx.send(job());
        });
        let queued = self.jobs.send((from, work)).is_ok();
        async move {
            if !queued {
                return None;
            }
            rx.await.ok()
        }
    }
}

async fn dispatch(mut jobs: mpsc::UnboundedReceiver<(IpAddr, Work)>, slots: usize) {
    let mut queue: FairQueue<IpAddr, Work> = FairQueue::default();
    let (done_tx, mut done) = mpsc::unbounded_channel::<()>();
    let mut running = 0usize;
    let mut open = true;
    loop {
        while running < slots {
            let Some(work) = queue.pop() else { break };
            running += 1;
            let done_tx = done_tx.clone();
            tokio::task::spawn_blocking(move || {
                work();
                let _ = done_tx.send(());
            });
        }
        if !open && running == 0 && queue.is_empty() {
            break;
        }
        tokio::select! {
            job = jobs.recv(), if open => match job {
                Some((from, work)) => queue.push(from, work),
                None => open = false,
            },
            Some(()) = done.recv() => running -= 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_take_turns() {
        let mut queue = FairQueue::default();
        for i in 0..4 {
            queue.push("storm", format!("storm{i}"));
        }
        queue.push("honest", "honest0".to_string());
        queue.push("other", "other0".to_string());
        assert_eq!(queue.len(), 6);
        let order: Vec<String> = std::iter::from_fn(|| queue.pop()).collect();
        assert_eq!(
            order,
            ["storm0", "honest0", "other0", "storm1", "storm2", "storm3"]
        );
        assert!(queue.is_empty());
    }

    #[actix::test]
    async fn a_job_from_another_address_does_not_wait_for_a_storm() {
        let pool = HashingPool::start(1);
        let storm: IpAddr = "10.0.0.1".parse().unwrap();
        let honest: IpAddr = "10.0.0.2".parse().unwrap();
        let (order_tx, mut order) = mpsc::unbounded_channel();
        let mut waits = Vec::new();
        for i in 0..20 {
            let tx = order_tx.clone();
            waits.push(pool.run(storm, move || {
                std::thread::sleep(std::time::Duration::from_millis(2));
                let _ = tx.send(format!("storm{i}"));
            }));
        }
        let tx = order_tx.clone();
        let honest_done = pool.run(honest, move || {
            let _ = tx.send("honest".to_string());
        });
        assert_eq!(honest_done.await, Some(()));
        for wait in waits {
            assert_eq!(wait.await, Some(()));
        }
        drop(order_tx);
        let mut seen = Vec::new();
        while let Some(name) = order.recv().await {
            seen.push(name);
        }
        let position = seen.iter().position(|n| n == "honest").unwrap();
        assert!(position <= 2, "honest job ran at {position}: {seen:?}");
    }
}
