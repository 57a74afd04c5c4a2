//! How frames leave the server: one broadcast ring shared by every authenticated
//! session, a small direct queue per session, and one writer task per socket.
//!
//! `ChatServer` serialises a chat message once and publishes the frame on the
//! [`Broadcaster`]; nobody sends one mailbox message per recipient. Each session's
//! writer drains its direct queue (welcome, auth results, replies, errors) and the
//! ring, copies whatever is waiting into one buffer and writes it with one syscall.
//!
//! Memory stays bounded whatever the clients do: the ring has a fixed number of slots
//! (a writer that falls a whole ring behind is dropped), the direct queue has a fixed
//! number of entries (a session that lets it fill is dropped), and a writer whose
//! unsent bytes pass `--send-queue` while its socket is blocked is dropped. The
//! broadcaster never waits for anyone.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{broadcast, mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// Identifies one connection for the life of the server process.
pub type SessionId = u64;

/// Slots in the broadcast ring: how many frames a writer may fall behind before it is
/// dropped. At ~150 bytes a chat frame that is about 1 MiB, in line with the default
/// `--send-queue`, and the ring's own memory stays a few MiB.
pub const RING_CAPACITY: usize = 8192;

/// Entries in a session's direct queue. Direct frames are replies to the session's
/// own requests (which it sends one at a time) and rare events, so a full queue means
/// the client stopped reading.
pub const DIRECT_QUEUE: usize = 256;

/// Bytes gathered into one write. Large enough to carry hundreds of chat frames per
/// syscall under load, small enough not to matter per connection.
const COALESCE_BYTES: usize = 64 * 1024;

/// A buffer grown beyond this is released when the writer goes idle, so that idle
/// connections cost little memory.
const IDLE_BUFFER_KEEP: usize = 4 * 1024;

/// How often a writer blocked on its socket re-checks its unsent bytes.
const BLOCKED_CHECK: Duration = Duration::from_millis(100);

/// How long a closing connection may take to deliver its last frames before it is cut.
const CLOSE_DEADLINE: Duration = Duration::from_secs(5);

/// One frame on the ring.
#[derive(Debug, Clone)]
pub struct RingItem {
    frame: Bytes,
    /// A session that must not get this frame (the one whose `joined` it announces).
    skip: Option<SessionId>,
}

/// The publishing end of the ring; owned by `ChatServer`.
pub struct Broadcaster {
    sender: broadcast::Sender<RingItem>,
    published_bytes: Arc<AtomicU64>,
}

impl Default for Broadcaster {
    fn default() -> Self {
        Broadcaster::new(RING_CAPACITY)
    }
}

impl Broadcaster {
    /// A ring with `capacity` slots.
    pub fn new(capacity: usize) -> Broadcaster {
        let (sender, _) = broadcast::channel(capacity);
        Broadcaster {
            sender,
            published_bytes: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Hands `frame` to every subscriber but `skip`. Never waits.
    pub fn publish(&self, frame: Bytes, skip: Option<SessionId>) {
        self.published_bytes
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        // No subscriber is not an error: nobody is online.
        let _ = self.sender.send(RingItem { frame, skip });
    }

    /// A subscription that receives every frame published from now on.
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            receiver: self.sender.subscribe(),
            sender: self.sender.clone(),
            published_bytes: self.published_bytes.clone(),
            consumed_bytes: self.published_bytes.load(Ordering::Relaxed),
        }
    }
}

/// A session's place on the ring.
pub struct Subscription {
    receiver: broadcast::Receiver<RingItem>,
    /// To start this thread's [`ring_wakeup`] relay on first use.
    sender: broadcast::Sender<RingItem>,
    published_bytes: Arc<AtomicU64>,
    consumed_bytes: u64,
}

impl Subscription {
    /// Bytes published on the ring that this subscriber has not taken yet.
    fn lag_bytes(&self) -> u64 {
        self.published_bytes
            .load(Ordering::Relaxed)
            .saturating_sub(self.consumed_bytes)
    }
}

/// What goes through a session's direct queue, in order.
pub enum Outbound {
    /// A complete frame for this connection only.
    Frame(Bytes),
    /// Start taking ring frames (sent right after `auth_ok` and `history`).
    Subscribe(Subscription),
    /// Deliver what is queued, then close the connection.
    Close,
}

/// The sending side of a session's direct queue; cheap to clone, held by the session
/// and by `ChatServer`.
#[derive(Clone)]
pub struct Outbox {
    sender: mpsc::Sender<Outbound>,
    abort: CancellationToken,
    /// Raised with [`Outbox::close`]: a writer blocked on a reader that stopped
    /// reading sees it without reaching the `Close` in its queue.
    close_requested: CancellationToken,
}

impl Outbox {
    /// Queues a frame. A session whose queue is full is not reading: it is aborted.
    pub fn send(&self, frame: Bytes) {
        self.push(Outbound::Frame(frame));
    }

    /// Starts ring delivery.
    pub fn subscribe(&self, subscription: Subscription) {
        self.push(Outbound::Subscribe(subscription));
    }

    /// Delivers what is queued, then closes; a connection that cannot take its last
    /// frames within [`CLOSE_DEADLINE`] is cut.
    pub fn close(&self) {
        self.close_requested.cancel();
        self.push(Outbound::Close);
    }

    /// Closes at once, dropping whatever is queued.
    pub fn abort(&self) {
        self.abort.cancel();
    }

    fn push(&self, item: Outbound) {
        match self.sender.try_send(item) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.abort.is_cancelled() {
                    log::warn!("dropping a connection whose output queue is full");
                }
                self.abort.cancel();
            }
            // The writer has finished; the session is going away.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// Why a writer stopped.
#[derive(Debug)]
pub enum WriterEnd {
    /// Asked to close, and delivered everything first.
    Closed,
    /// Aborted (queue overflow, or the session went away).
    Aborted,
    /// Fell a whole ring behind.
    Lagged,
    /// Had more than `--send-queue` bytes unsent.
    SendQueueFull(u64),
    /// Could not deliver its last frames within the close deadline.
    CloseTimedOut,
    /// The socket failed (the peer went away).
    Io(io::Error),
}

/// Creates a session's direct queue: the [`Outbox`] for producers and the receiving
/// half for [`run_writer`].
pub fn direct_queue() -> (Outbox, WriterQueue) {
    let (sender, receiver) = mpsc::channel(DIRECT_QUEUE);
    let abort = CancellationToken::new();
    let close_requested = CancellationToken::new();
    (
        Outbox {
            sender,
            abort: abort.clone(),
            close_requested: close_requested.clone(),
        },
        WriterQueue {
            receiver,
            abort,
            close_requested,
        },
    )
}

/// The writer's end of a session's direct queue, with the signals that go with it.
pub struct WriterQueue {
    receiver: mpsc::Receiver<Outbound>,
    abort: CancellationToken,
    close_requested: CancellationToken,
}

/// Writes a session's frames to its socket until closed, aborted or failed.
///
/// `send_queue` is the `--send-queue` limit in bytes (0 = only the ring bounds it).
pub async fn run_writer(
    session: SessionId,
    socket: OwnedWriteHalf,
    queue: WriterQueue,
    send_queue: u64,
) -> WriterEnd {
    let WriterQueue {
        receiver: mut queue,
        abort,
        close_requested,
    } = queue;
    let mut writer = Writer {
        session,
        socket,
        abort,
        close_requested,
        ring: None,
        ring_wakeup: None,
        buf: BytesMut::new(),
        written: 0,
        closing: false,
        send_queue,
    };
    let end = writer.run(&mut queue).await;
    match end {
        WriterEnd::Closed => {
            use tokio::io::AsyncWriteExt;
            let _ = writer.socket.shutdown().await;
        }
        WriterEnd::Io(_) => {}
        // A dropped reader gets a reset: the kernel discards what it still holds for
        // it instead of trickling it out, and the client learns at once.
        _ => {
            // A zero linger never blocks the thread on close (a non-zero one would).
            let _ = socket2::SockRef::from(writer.socket.as_ref()).set_linger(Some(Duration::ZERO));
        }
    }
    end
}

struct Writer {
    session: SessionId,
    socket: OwnedWriteHalf,
    abort: CancellationToken,
    close_requested: CancellationToken,
    ring: Option<Subscription>,
    /// This thread's ring relay, once subscribed.
    ring_wakeup: Option<Rc<Notify>>,
    buf: BytesMut,
    /// How much of `buf` the socket has taken.
    written: usize,
    closing: bool,
    send_queue: u64,
}

impl Writer {
    async fn run(&mut self, queue: &mut mpsc::Receiver<Outbound>) -> WriterEnd {
        loop {
            if self.buf.is_empty() {
                if self.closing {
                    return WriterEnd::Closed;
                }
                if let Err(end) = self.wait_for_output(queue).await {
                    return end;
                }
            }
            if let Err(end) = self.gather(queue) {
                return end;
            }
            if let Err(end) = self.write_out().await {
                return end;
            }
        }
    }

    /// Waits until there is something to write (or a reason to stop).
    async fn wait_for_output(
        &mut self,
        queue: &mut mpsc::Receiver<Outbound>,
    ) -> Result<(), WriterEnd> {
        let wakeup = self.ring_wakeup.clone();
        let mut notified = std::pin::pin!(wakeup.as_deref().map(Notify::notified));
        if let Some(notified) = notified.as_mut().as_pin_mut() {
            // Registered before looking, so a frame published after the look still
            // wakes us.
            notified.enable();
        }
        if self.take_one_from_ring()? {
            return Ok(());
        }
        // Really idle now: give back a buffer that grew under load. (Releasing it
        // whenever it is empty would regrow it, copy by copy, on every wakeup.)
        if self.buf.capacity() > IDLE_BUFFER_KEEP {
            self.buf = BytesMut::new();
        }
        let ring_notified = async {
            match notified.as_mut().as_pin_mut() {
                Some(notified) => notified.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = self.abort.cancelled() => Err(WriterEnd::Aborted),
            item = queue.recv() => {
                match item {
                    Some(item) => self.apply(item),
                    // Every producer is gone: nothing more will come.
                    None => self.closing = true,
                }
                Ok(())
            }
            _ = ring_notified => Ok(()),
        }
    }

    /// Takes one frame from the ring if one is waiting; tells whether it did.
    fn take_one_from_ring(&mut self) -> Result<bool, WriterEnd> {
        let Some(ring) = self.ring.as_mut() else {
            return Ok(false);
        };
        match ring.receiver.try_recv() {
            Ok(item) => self.take_ring(Ok(item)).map(|_| true),
            Err(broadcast::error::TryRecvError::Empty) => Ok(false),
            Err(broadcast::error::TryRecvError::Lagged(n)) => Err(lagged(n)),
            Err(broadcast::error::TryRecvError::Closed) => {
                self.ring = None;
                Ok(false)
            }
        }
    }

    /// Moves everything already waiting into the buffer, up to [`COALESCE_BYTES`].
    ///
    /// Ring frames go first: they were published before anything now in the direct
    /// queue was answered (a `who` asked right after a `say` comes after its echo).
    fn gather(&mut self, queue: &mut mpsc::Receiver<Outbound>) -> Result<(), WriterEnd> {
        let mut progressed = true;
        while progressed && self.buf.len() < COALESCE_BYTES && !self.closing {
            progressed = false;
            while self.buf.len() < COALESCE_BYTES && self.take_one_from_ring()? {
                progressed = true;
            }
            while self.buf.len() < COALESCE_BYTES && !self.closing {
                match queue.try_recv() {
                    Ok(item) => {
                        let subscribed = matches!(item, Outbound::Subscribe(_));
                        self.apply(item);
                        progressed = true;
                        if subscribed {
                            // What the new subscription already holds came before
                            // whatever is queued after it.
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, item: Outbound) {
        match item {
            Outbound::Frame(frame) => self.buf.extend_from_slice(&frame),
            Outbound::Subscribe(subscription) => {
                self.ring_wakeup = Some(ring_wakeup(&subscription.sender));
                self.ring = Some(subscription);
            }
            Outbound::Close => self.closing = true,
        }
    }

    fn take_ring(
        &mut self,
        received: Result<RingItem, broadcast::error::RecvError>,
    ) -> Result<(), WriterEnd> {
        match received {
            Ok(item) => {
                if let Some(ring) = self.ring.as_mut() {
                    ring.consumed_bytes += item.frame.len() as u64;
                }
                // A closing writer only finishes what it had.
                if !self.closing && item.skip != Some(self.session) {
                    self.buf.extend_from_slice(&item.frame);
                }
                Ok(())
            }
            Err(broadcast::error::RecvError::Lagged(n)) => Err(lagged(n)),
            Err(broadcast::error::RecvError::Closed) => {
                self.ring = None;
                Ok(())
            }
        }
    }

    /// Writes the buffer out, watching the unsent bytes while the socket is blocked.
    ///
    /// The buffer is consumed by an offset and cleared at the end rather than split:
    /// splitting would leave the emptied buffer pinning its whole allocation (a
    /// history frame's worth on every idle connection) while reporting no capacity.
    async fn write_out(&mut self) -> Result<(), WriterEnd> {
        let mut blocked_since: Option<tokio::time::Instant> = None;
        while self.written < self.buf.len() {
            match self.socket.try_write(&self.buf[self.written..]) {
                Ok(0) => {
                    return Err(WriterEnd::Io(io::ErrorKind::WriteZero.into()));
                }
                Ok(n) => {
                    self.written += n;
                    blocked_since = None;
                    continue;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(WriterEnd::Io(err)),
            }
            let since = *blocked_since.get_or_insert_with(tokio::time::Instant::now);
            tokio::select! {
                biased;
                _ = self.abort.cancelled() => return Err(WriterEnd::Aborted),
                ready = self.socket.writable() => ready.map_err(WriterEnd::Io)?,
                _ = tokio::time::sleep(BLOCKED_CHECK) => {
                    let unsent = self.unsent_bytes();
                    if self.send_queue > 0 && unsent > self.send_queue {
                        return Err(WriterEnd::SendQueueFull(unsent));
                    }
                    let closing = self.closing || self.close_requested.is_cancelled();
                    if closing && since.elapsed() > CLOSE_DEADLINE {
                        return Err(WriterEnd::CloseTimedOut);
                    }
                }
            }
        }
        self.buf.clear();
        self.written = 0;
        Ok(())
    }

    /// Bytes meant for this connection and not yet handed to the kernel.
    fn unsent_bytes(&self) -> u64 {
        (self.buf.len() - self.written) as u64
            + self.ring.as_ref().map_or(0, Subscription::lag_bytes)
    }
}

fn lagged(missed: u64) -> WriterEnd {
    log::debug!("writer missed {missed} ring frames");
    WriterEnd::Lagged
}

thread_local! {
    /// This thread's ring relay (see [`ring_wakeup`]).
    static RING_WAKEUP: RefCell<Option<Rc<Notify>>> = const { RefCell::new(None) };
}

/// The wakeup the writers of this thread wait on for ring frames.
///
/// If every writer waited on the ring itself, each published frame would make the
/// publishing thread wake every writer on every other thread: a thousand cross-thread
/// wakeups (and as many thread unparks) per chat message. Instead one relay task per
/// session thread waits on the ring and wakes that thread's writers locally, which
/// costs no system call. Each writer still reads its own subscription, so where it
/// starts on the ring stays exactly where `ChatServer` subscribed it.
fn ring_wakeup(sender: &broadcast::Sender<RingItem>) -> Rc<Notify> {
    RING_WAKEUP.with(|slot| {
        let mut slot = slot.borrow_mut();
        if let Some(wakeup) = slot.as_ref() {
            return Rc::clone(wakeup);
        }
        let wakeup = Rc::new(Notify::new());
        let mut relay = sender.subscribe();
        let local = Rc::clone(&wakeup);
        tokio::task::spawn_local(async move {
            loop {
                match relay.recv().await {
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                }
                // One wakeup for a burst: skip what is already waiting.
                while !matches!(
                    relay.try_recv(),
                    Err(broadcast::error::TryRecvError::Empty
                        | broadcast::error::TryRecvError::Closed)
                ) {}
                local.notify_waiters();
            }
        });
        *slot = Some(Rc::clone(&wakeup));
        wakeup
    })
}
