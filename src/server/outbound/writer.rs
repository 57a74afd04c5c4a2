//! The writer task of one connection: drains its rings and its direct queue into one
//! buffer and writes it out, watching how much it cannot deliver.

use std::io;
use std::os::unix::io::{BorrowedFd, RawFd};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::future::{select_all, Either, FutureExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::{runtime, Outbound, RingItem, SessionId, Subscription, WriterQueue};
use crate::server::transport::WireWriter;

/// Bytes gathered into one write. Large enough to carry hundreds of chat frames per
/// call under load, small enough not to matter per connection.
const COALESCE_BYTES: usize = 64 * 1024;

/// A buffer grown beyond this is released when the writer goes idle, so that idle
/// connections cost little memory.
const IDLE_BUFFER_KEEP: usize = 4 * 1024;

/// How often a writer blocked on its socket re-checks its unsent bytes.
const BLOCKED_CHECK: Duration = Duration::from_millis(100);

/// How long a closing connection may take to deliver its last frames before it is cut.
pub(super) const CLOSE_DEADLINE: Duration = Duration::from_secs(5);

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

/// Writes a session's frames until closed, aborted or failed, on the I/O runtime.
///
/// `reset` is the socket to reset rather than drain when the reader is dropped;
/// `send_queue` is the `--send-queue` limit in bytes (0 = only the ring bounds it). The
/// writer starts at once; the future returned only waits for its end.
pub fn run_writer(
    session: SessionId,
    socket: WireWriter,
    reset: Option<RawFd>,
    queue: WriterQueue,
    send_queue: u64,
) -> impl std::future::Future<Output = WriterEnd> {
    let writing = write_frames(session, socket, reset, queue, send_queue);
    let running = match runtime::io_runtime() {
        Some(runtime) => Either::Left(runtime.spawn(writing)),
        // No runtime of its own: write from the session's thread.
        None => Either::Right(Box::pin(writing)),
    };
    async move {
        match running {
            Either::Left(task) => task.await.unwrap_or(WriterEnd::Aborted),
            Either::Right(writing) => writing.await,
        }
    }
}

/// The writer itself, on whichever runtime it is polled.
pub(super) async fn write_frames(
    session: SessionId,
    socket: WireWriter,
    reset: Option<RawFd>,
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
        rings: Vec::new(),
        buf: BytesMut::new(),
        written: 0,
        closing: false,
        send_queue,
    };
    let end = writer.run(&mut queue).await;
    match end {
        WriterEnd::Closed => {
            let _ = tokio::time::timeout(CLOSE_DEADLINE, writer.socket.shutdown()).await;
        }
        WriterEnd::Io(_) => {}
        // A dropped reader gets a reset: the kernel discards what it still holds for
        // it instead of trickling it out, and the client learns at once.
        _ => {
            if let Some(fd) = reset {
                // SAFETY: the descriptor belongs to `writer.socket`, still open here.
                let fd = unsafe { BorrowedFd::borrow_raw(fd) };
                // A zero linger never blocks the thread on close (a non-zero one would).
                let _ = socket2::SockRef::from(&fd).set_linger(Some(Duration::ZERO));
            }
        }
    }
    end
}

struct Writer {
    session: SessionId,
    socket: WireWriter,
    abort: CancellationToken,
    close_requested: CancellationToken,
    /// The rings this connection takes frames from: the lobby's, then its rooms'.
    rings: Vec<Subscription>,
    buf: BytesMut,
    /// How much of `buf` the socket has taken.
    written: usize,
    closing: bool,
    send_queue: u64,
}

/// What ended a wait on a blocked socket.
enum Blocked {
    Aborted,
    /// A write took some bytes (`Some`), or a flush finished (`None`).
    Done(io::Result<Option<usize>>),
    Waiting,
}

/// What ended a writer's wait.
enum Woke {
    Abort,
    Queue(Option<Outbound>),
    Ring(usize, Result<RingItem, broadcast::error::RecvError>),
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
        if self.take_one_from_rings()? {
            return Ok(());
        }
        // Really idle now: give back a buffer that grew under load. (Releasing it
        // whenever it is empty would regrow it, copy by copy, on every wakeup.)
        if self.buf.capacity() > IDLE_BUFFER_KEEP {
            self.buf = BytesMut::new();
        }
        let woke = {
            let abort = &self.abort;
            let ring_received = receive_from_any(&mut self.rings);
            // Rings before the queue, as in `gather`: a frame published before a reply
            // (or a close) was queued goes out before it.
            tokio::select! {
                biased;
                _ = abort.cancelled() => Woke::Abort,
                (index, received) = ring_received => Woke::Ring(index, received),
                item = queue.recv() => Woke::Queue(item),
            }
        };
        match woke {
            Woke::Abort => Err(WriterEnd::Aborted),
            Woke::Queue(Some(item)) => {
                self.apply(item);
                Ok(())
            }
            // Every producer is gone: nothing more will come.
            Woke::Queue(None) => {
                self.closing = true;
                Ok(())
            }
            Woke::Ring(index, received) => self.take_ring(index, received),
        }
    }

    /// Takes one frame from the first ring that has one waiting; tells whether it did.
    fn take_one_from_rings(&mut self) -> Result<bool, WriterEnd> {
        let mut index = 0;
        while index < self.rings.len() {
            match self.rings[index].receiver.try_recv() {
                Ok(item) => return self.take_ring(index, Ok(item)).map(|_| true),
                Err(broadcast::error::TryRecvError::Empty) => index += 1,
                Err(broadcast::error::TryRecvError::Lagged(n)) => return Err(lagged(n)),
                // The ring is gone (its room has nobody online any more).
                Err(broadcast::error::TryRecvError::Closed) => {
                    self.rings.swap_remove(index);
                }
            }
        }
        Ok(false)
    }

    /// Moves everything already waiting into the buffer, up to [`COALESCE_BYTES`].
    ///
    /// Ring frames go first: they were published before anything now in the direct
    /// queue was answered (a `who` asked right after a `say` comes after its echo).
    fn gather(&mut self, queue: &mut mpsc::Receiver<Outbound>) -> Result<(), WriterEnd> {
        let mut progressed = true;
        while progressed && self.buf.len() < COALESCE_BYTES && !self.closing {
            progressed = false;
            while self.buf.len() < COALESCE_BYTES && self.take_one_from_rings()? {
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
            Outbound::Subscribe(subscription) => self.rings.push(*subscription),
            Outbound::Unsubscribe(ring) => self.rings.retain(|r| r.ring != ring),
            Outbound::Close => self.closing = true,
        }
    }

    fn take_ring(
        &mut self,
        index: usize,
        received: Result<RingItem, broadcast::error::RecvError>,
    ) -> Result<(), WriterEnd> {
        match received {
            Ok(item) => {
                let Some(ring) = self.rings.get_mut(index) else {
                    return Ok(());
                };
                ring.consumed_bytes += item.frame.len() as u64;
                // A closing writer only finishes what it had.
                if !self.closing && ring.wants(&item, self.session) {
                    self.buf.extend_from_slice(&item.frame);
                }
                Ok(())
            }
            Err(broadcast::error::RecvError::Lagged(n)) => Err(lagged(n)),
            Err(broadcast::error::RecvError::Closed) => {
                if index < self.rings.len() {
                    self.rings.swap_remove(index);
                }
                Ok(())
            }
        }
    }

    /// Writes the buffer out (and flushes it, for a transport that buffers), watching
    /// the unsent bytes while the socket is blocked.
    ///
    /// The buffer is consumed by an offset and cleared at the end rather than split:
    /// splitting would leave the emptied buffer pinning its whole allocation (a
    /// history frame's worth on every idle connection) while reporting no capacity.
    async fn write_out(&mut self) -> Result<(), WriterEnd> {
        let mut blocked_since: Option<tokio::time::Instant> = None;
        let mut flushed = false;
        while !flushed {
            let done = if self.written < self.buf.len() {
                // Most writes complete at once: try without arming a timer.
                let attempt = self.socket.write(&self.buf[self.written..]).now_or_never();
                match attempt {
                    Some(result) => Some(self.took(result)?),
                    None => None,
                }
            } else {
                match self.socket.flush().now_or_never() {
                    Some(result) => {
                        result.map_err(WriterEnd::Io)?;
                        flushed = true;
                        Some(0)
                    }
                    None => None,
                }
            };
            if done.is_some() {
                blocked_since = None;
                continue;
            }
            let since = *blocked_since.get_or_insert_with(tokio::time::Instant::now);
            let blocked = {
                let operation = if self.written < self.buf.len() {
                    Either::Left(
                        self.socket
                            .write(&self.buf[self.written..])
                            .map(|r| r.map(Some)),
                    )
                } else {
                    Either::Right(self.socket.flush().map(|r| r.map(|()| None)))
                };
                tokio::select! {
                    biased;
                    _ = self.abort.cancelled() => Blocked::Aborted,
                    result = operation => Blocked::Done(result),
                    _ = tokio::time::sleep(BLOCKED_CHECK) => Blocked::Waiting,
                }
            };
            match blocked {
                Blocked::Aborted => return Err(WriterEnd::Aborted),
                Blocked::Done(Ok(Some(n))) => {
                    self.took(Ok(n))?;
                    blocked_since = None;
                }
                Blocked::Done(Ok(None)) => flushed = true,
                Blocked::Done(Err(err)) => return Err(WriterEnd::Io(err)),
                Blocked::Waiting => {
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

    /// Accounts for what one write took.
    fn took(&mut self, result: io::Result<usize>) -> Result<usize, WriterEnd> {
        match result {
            Ok(0) => Err(WriterEnd::Io(io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                self.written += n;
                Ok(n)
            }
            Err(err) => Err(WriterEnd::Io(err)),
        }
    }

    /// Bytes meant for this connection and not yet handed to the socket.
    fn unsent_bytes(&self) -> u64 {
        (self.buf.len() - self.written) as u64
            + self.rings.iter().map(Subscription::lag_bytes).sum::<u64>()
    }
}

/// Waits for a frame on any of `rings` (forever when there are none); says which.
async fn receive_from_any(
    rings: &mut [Subscription],
) -> (usize, Result<RingItem, broadcast::error::RecvError>) {
    match rings {
        [] => std::future::pending().await,
        [only] => (0, only.receiver.recv().await),
        several => {
            let waits = several
                .iter_mut()
                .map(|ring| Box::pin(ring.receiver.recv()));
            let (received, index, _) = select_all(waits).await;
            (index, received)
        }
    }
}

fn lagged(missed: u64) -> WriterEnd {
    log::debug!("writer missed {missed} ring frames");
    WriterEnd::Lagged
}
