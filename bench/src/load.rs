//! The chat load: one task per connection, some of them senders, all of them receivers.
//!
//! Every connection counts the MESSAGE frames it receives (deliveries) and, while the
//! controller has recording on, the delivery latency of each: a sender writes the send
//! time (nanoseconds on a clock shared by the whole run) at the start of its text, and
//! the receiver subtracts it from the time its read returned. Senders either keep a
//! window of unacknowledged messages in flight (closed loop: the peak) or send on a
//! timer at a fixed rate whatever happens (open loop: latency at a given load). A
//! sender's acknowledgement is its own copy of the message coming back.
//!
//! The hot path avoids JSON: the server's MESSAGE payload starts with
//! `{"type":"message","id":`, and the stamp sits right after `"text":"`. Anything else
//! is parsed properly, so a server that orders fields differently is still measured.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use echochat::codec::encode_frame;
use echochat::protocol::{ClientMessage, ServerMessage};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Interval, MissedTickBehavior};

use crate::conn::{decode_frame, parse_server_message, Conn, WriteHalf, READ_CHUNK};
use crate::server::{CpuMark, CpuUsage};

/// Start of every MESSAGE payload the server builds (serde writes the tag first, then
/// the fields in declaration order).
const MESSAGE_PREFIX: &[u8] = br#"{"type":"message","id":"#;
/// Start of an `error` payload (for example `rate_limited`), which also ends a send.
const ERROR_PREFIX: &[u8] = br#"{"type":"error""#;
/// The key in front of the text inside a MESSAGE payload.
const TEXT_KEY: &[u8] = br#""text":""#;
/// Digits of the send time in a stamp: nanoseconds fit in 20 digits for any run length.
const TIME_DIGITS: usize = 20;
/// Digits of the sender number in a stamp.
const SENDER_DIGITS: usize = 6;
/// Length of the stamp `b<time>s<sender>` that starts every benchmark text.
pub const STAMP_LEN: usize = 1 + TIME_DIGITS + 1 + SENDER_DIGITS;
/// Most messages a rate-paced sender sends in one tick: after a stall it catches up
/// gradually rather than in one burst that would measure the burst.
const MAX_CATCH_UP: u64 = 256;
/// Largest latency the histograms can hold, in microseconds (one minute).
const MAX_LATENCY_US: u64 = 60_000_000;

/// How the senders pace themselves.
#[derive(Debug, Clone, Copy)]
pub enum SendMode {
    /// Keep this many of one's own messages unacknowledged (closed loop).
    Window(usize),
    /// Offer this many messages per second in total, on a timer (open loop).
    Rate(f64),
}

/// What the connection tasks report to the controller. Tasks add to the counters once
/// per read (not per frame), so sharing them across threads stays cheap.
struct LoadShared {
    /// The run's clock: stamps are nanoseconds since this instant.
    clock: Instant,
    deliveries: AtomicU64,
    delivered_bytes: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
    lost: AtomicU64,
    recording: AtomicBool,
    histogram: Mutex<Histogram<u64>>,
    /// The first `error` frame received, as sent.
    first_error: Mutex<Option<String>>,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    /// MESSAGE frames received by any connection.
    pub deliveries: u64,
    /// Their bytes, length headers included (servers differ in what a MESSAGE holds).
    pub delivered_bytes: u64,
    /// Messages the senders wrote.
    pub sent: u64,
    /// Senders' own messages that came back.
    pub acked: u64,
    /// `error` frames received (each is a message the server dropped).
    pub errors: u64,
    /// Connections that ended before the load was stopped.
    pub lost: u64,
}

impl Counters {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            deliveries: self.deliveries - earlier.deliveries,
            delivered_bytes: self.delivered_bytes - earlier.delivered_bytes,
            sent: self.sent - earlier.sent,
            acked: self.acked - earlier.acked,
            errors: self.errors - earlier.errors,
            lost: self.lost - earlier.lost,
        }
    }
}

/// A new empty latency histogram (microseconds, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant bounds are valid")
}

/// A running chat load; dropping it without [`ChatLoad::stop`] aborts the tasks.
pub struct ChatLoad {
    shared: Arc<LoadShared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// What one connection task does besides receiving.
#[derive(Clone)]
enum Role {
    Receiver,
    Sender {
        index: u32,
        mode: SendMode,
        senders: usize,
        /// The room it posts into (`lobby` when `None`).
        room: Option<Arc<str>>,
    },
}

impl ChatLoad {
    /// Starts one task per connection; the first `senders` connections send to the
    /// lobby.
    pub fn start(
        conns: Vec<Conn>,
        senders: usize,
        mode: SendMode,
        text_size: usize,
        clock: Instant,
    ) -> ChatLoad {
        let rooms = vec![None; senders.min(conns.len())];
        ChatLoad::start_in_rooms(conns, rooms, mode, text_size, clock)
    }

    /// Starts one task per connection; the first connections send, one per entry of
    /// `sender_rooms`, each into its room (`None`: the lobby).
    pub fn start_in_rooms(
        conns: Vec<Conn>,
        sender_rooms: Vec<Option<String>>,
        mode: SendMode,
        text_size: usize,
        clock: Instant,
    ) -> ChatLoad {
        let shared = Arc::new(LoadShared {
            clock,
            deliveries: AtomicU64::new(0),
            delivered_bytes: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            recording: AtomicBool::new(false),
            histogram: Mutex::new(new_histogram()),
            first_error: Mutex::new(None),
        });
        let (stop, stop_rx) = watch::channel(false);
        let senders = sender_rooms.len().min(conns.len());
        let mut sender_rooms = sender_rooms.into_iter();
        let tasks = conns
            .into_iter()
            .enumerate()
            .map(|(i, conn)| {
                let role = if i < senders {
                    Role::Sender {
                        index: i as u32,
                        mode,
                        senders,
                        room: sender_rooms.next().flatten().map(Arc::from),
                    }
                } else {
                    Role::Receiver
                };
                tokio::spawn(run_connection(
                    conn,
                    role,
                    text_size,
                    shared.clone(),
                    stop_rx.clone(),
                ))
            })
            .collect();
        ChatLoad {
            shared,
            stop,
            tasks,
        }
    }

    /// The counters now.
    pub fn counters(&self) -> Counters {
        let s = &self.shared;
        Counters {
            deliveries: s.deliveries.load(Ordering::Relaxed),
            delivered_bytes: s.delivered_bytes.load(Ordering::Relaxed),
            sent: s.sent.load(Ordering::Relaxed),
            acked: s.acked.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            lost: s.lost.load(Ordering::Relaxed),
        }
    }

    /// Turns latency recording on (clearing what was recorded) or off.
    pub fn record(&self, on: bool) {
        if on {
            if let Ok(mut histogram) = self.shared.histogram.lock() {
                histogram.reset();
            }
        }
        self.shared.recording.store(on, Ordering::Release);
    }

    /// The first `error` frame any connection received, if one did.
    pub fn first_error(&self) -> Option<String> {
        match self.shared.first_error.lock() {
            Ok(first) => first.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The latencies recorded so far.
    pub fn histogram(&self) -> Histogram<u64> {
        match self.shared.histogram.lock() {
            Ok(histogram) => histogram.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Stops every task and closes every connection, waiting a bounded time.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut self.tasks);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        for task in tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for ChatLoad {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Handshakes (and joins) in flight while a load's clients connect.
pub const CONNECT_PARALLELISM: usize = 64;
/// Time allowed to connect and authenticate (or join) all of a load's clients.
pub const CONNECT_LIMIT: Duration = Duration::from_secs(300);
/// Pause after a load stops, before anything else connects: the server delivers what
/// it still holds of the load (the reference server subscribes a connection to its ring
/// before it greets it, so a leftover chat frame could come before the welcome).
pub const SETTLE: Duration = Duration::from_millis(500);

/// What a load measured after its warm-up.
pub struct Measured {
    pub counters: Counters,
    pub elapsed: Duration,
    pub histogram: Histogram<u64>,
    pub cpu: CpuUsage,
    /// The first `error` frame a client received.
    pub first_error: Option<String>,
}

impl Measured {
    pub fn deliveries_per_second(&self) -> f64 {
        self.counters.deliveries as f64 / self.elapsed.as_secs_f64()
    }

    /// Server CPU nanoseconds per delivery, and the same less what the connections
    /// cost at rest (`idle`, in cores).
    pub fn ns_per_delivery(&self, idle: Option<f64>) -> Option<(f64, Option<f64>)> {
        let server = self.cpu.server?;
        if self.counters.deliveries == 0 {
            return None;
        }
        let per = |cpu: f64| cpu * 1e9 / self.counters.deliveries as f64;
        let net = idle.map(|cores| per((server - cores * self.cpu.wall).max(0.0)));
        Some((per(server), net))
    }
}

/// Lets `load` warm up for `warmup`, measures it for `duration` with the CPU of the
/// server `server_pid`, stops it and lets the server settle.
pub async fn measure_load(
    load: ChatLoad,
    warmup: Duration,
    duration: Duration,
    server_pid: Option<u32>,
) -> Measured {
    tokio::time::sleep(warmup).await;
    let cpu = CpuMark::now(server_pid);
    let (counters, elapsed, histogram) = measure(&load, duration).await;
    let cpu = cpu.usage();
    let first_error = load.first_error();
    load.stop().await;
    tokio::time::sleep(SETTLE).await;
    Measured {
        counters,
        elapsed,
        histogram,
        cpu,
        first_error,
    }
}

/// Measures a steady window: counters and latencies between now and `duration` later.
pub async fn measure(load: &ChatLoad, duration: Duration) -> (Counters, Duration, Histogram<u64>) {
    let before = load.counters();
    load.record(true);
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    let after = load.counters();
    let elapsed = started.elapsed();
    load.record(false);
    (after.since(&before), elapsed, load.histogram())
}

/// What a frame is to the load.
enum Inbound {
    /// A chat message, with its stamp if it came from this benchmark.
    Message(Option<Stamp>),
    /// An `error` frame: one of our messages was dropped.
    Error,
    /// The server is closing this connection (`shutdown`, `kicked`).
    Closing,
    /// Anything else (`joined`, `left`, `pong`, ...).
    Other,
    /// Not a valid server frame.
    Malformed,
}

/// The stamp a sender puts at the start of its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    sent_ns: u64,
    sender: u32,
}

/// Classifies one payload, cheaply for the server's own layout.
fn classify(payload: &[u8]) -> Inbound {
    if let Some(rest) = payload.strip_prefix(MESSAGE_PREFIX) {
        if let Some(stamp) = find_stamp(rest) {
            return Inbound::Message(Some(stamp));
        }
    } else if payload.starts_with(ERROR_PREFIX) {
        return Inbound::Error;
    }
    match parse_server_message(payload) {
        Ok(ServerMessage::Message(message)) => {
            Inbound::Message(parse_stamp(message.text.as_bytes()))
        }
        Ok(ServerMessage::Error { .. }) => Inbound::Error,
        Ok(ServerMessage::Shutdown { .. } | ServerMessage::Kicked { .. }) => Inbound::Closing,
        Ok(_) => Inbound::Other,
        Err(_) => Inbound::Malformed,
    }
}

/// Finds the stamp after `"text":"` in the rest of a MESSAGE payload. Names cannot hold
/// quotes, so the first match is the text field.
fn find_stamp(rest: &[u8]) -> Option<Stamp> {
    let at = rest.windows(TEXT_KEY.len()).position(|w| w == TEXT_KEY)?;
    parse_stamp(&rest[at + TEXT_KEY.len()..])
}

/// Reads `b<20 digits>s<6 digits>` at the start of `text`.
fn parse_stamp(text: &[u8]) -> Option<Stamp> {
    let text = text.get(..STAMP_LEN)?;
    if text[0] != b'b' || text[1 + TIME_DIGITS] != b's' {
        return None;
    }
    let sent_ns = parse_digits(&text[1..1 + TIME_DIGITS])?;
    let sender = parse_digits(&text[2 + TIME_DIGITS..])?;
    Some(Stamp {
        sent_ns,
        sender: u32::try_from(sender).ok()?,
    })
}

/// A decimal number made only of ASCII digits.
fn parse_digits(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |n, &d| {
        if d.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        } else {
            None
        }
    })
}

/// The text of one message: the stamp, then padding up to `size` bytes.
fn message_text(sent_ns: u64, sender: u32, size: usize) -> String {
    let mut text = format!("b{sent_ns:0TIME_DIGITS$}s{sender:0SENDER_DIGITS$}");
    let pad = size.saturating_sub(text.len());
    text.extend(std::iter::repeat_n('x', pad));
    text
}

/// What a sender's `say` frames carry besides their text.
struct SayTemplate {
    sender: u32,
    size: usize,
    room: Option<Arc<str>>,
}

/// Appends `count` `say` frames to `out`, stamped now.
fn queue_says(out: &mut BytesMut, count: u64, say: &SayTemplate, shared: &LoadShared) {
    for _ in 0..count {
        let sent_ns = shared.clock.elapsed().as_nanos() as u64;
        let say = ClientMessage::Say {
            text: message_text(sent_ns, say.sender, say.size),
            room: say.room.as_deref().map(str::to_string),
            to: None,
        };
        // A `say` with an ASCII string always serialises.
        if let Ok(frame) = encode_frame(&say) {
            out.put_slice(&frame);
        }
    }
}

/// Waits for the next tick of a pacing timer, forever if there is none.
async fn next_tick(ticker: &mut Option<Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Writes `out` and flushes it (over TLS the last record may otherwise wait in the
/// session; over TCP the flush does nothing).
async fn write_out(writer: &mut WriteHalf<'_>, out: &[u8]) -> std::io::Result<()> {
    writer.write_all(out).await?;
    writer.flush().await
}

/// The task of one connection: read everything, count, stamp, send as the role says.
async fn run_connection(
    conn: Conn,
    role: Role,
    text_size: usize,
    shared: Arc<LoadShared>,
    mut stop: watch::Receiver<bool>,
) {
    let Conn {
        mut stream,
        mut buf,
        mut codec,
    } = conn;
    let (mut reader, mut writer) = stream.split();
    buf.reserve(READ_CHUNK);
    let mut out = BytesMut::new();
    let mut latencies: Vec<u64> = Vec::new();

    let template = SayTemplate {
        sender: match &role {
            Role::Sender { index, .. } => *index,
            Role::Receiver => 0,
        },
        size: text_size,
        room: match &role {
            Role::Sender { room, .. } => room.clone(),
            Role::Receiver => None,
        },
    };
    let (my_index, window, mut ticker, per_sender_rate) = match role {
        Role::Receiver => (None, 0, None, 0.0),
        Role::Sender {
            index,
            mode: SendMode::Window(window),
            ..
        } => (Some(index), window.max(1), None, 0.0),
        Role::Sender {
            index,
            mode: SendMode::Rate(rate),
            senders,
            ..
        } => {
            let per_sender = (rate / senders as f64).max(0.001);
            // Tick at the message rate, but not faster than 1 kHz (the timer's grain);
            // each tick sends whatever is due. Senders start staggered.
            let period = Duration::from_secs_f64((1.0 / per_sender).max(0.001));
            let offset = period.mul_f64(f64::from(index) / senders as f64);
            let mut interval =
                tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
            interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
            (Some(index), 0, Some(interval), per_sender)
        }
    };
    let paced_since = Instant::now();
    let mut sent: u64 = 0;
    let mut in_flight: usize = 0;

    if window > 0 {
        queue_says(&mut out, window as u64, &template, &shared);
        if write_out(&mut writer, &out).await.is_err() {
            shared.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        out.clear();
        in_flight = window;
        sent += window as u64;
        shared.sent.fetch_add(window as u64, Ordering::Relaxed);
    }

    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            read = reader.read_buf(&mut buf) => {
                match read {
                    Ok(n) if n > 0 => {}
                    _ => {
                        shared.lost.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
                let now_ns = shared.clock.elapsed().as_nanos() as u64;
                let (mut delivered, mut acked, mut errors) = (0u64, 0u64, 0u64);
                let mut delivered_bytes = 0u64;
                let mut closing = false;
                loop {
                    let frame = match decode_frame(&mut codec, &mut buf) {
                        Ok(Some(frame)) => frame,
                        Ok(None) => break,
                        Err(e) => {
                            eprintln!("load: connection dropped: {e}");
                            closing = true;
                            break;
                        }
                    };
                    match classify(&frame) {
                        Inbound::Message(stamp) => {
                            delivered += 1;
                            delivered_bytes += frame.len() as u64 + 4;
                            if let Some(stamp) = stamp {
                                latencies.push(now_ns.saturating_sub(stamp.sent_ns) / 1000);
                                if Some(stamp.sender) == my_index {
                                    acked += 1;
                                }
                            }
                        }
                        Inbound::Error => {
                            errors += 1;
                            if let Ok(mut first) = shared.first_error.lock() {
                                first.get_or_insert_with(|| {
                                    String::from_utf8_lossy(&frame[..frame.len().min(200)]).into_owned()
                                });
                            }
                        }
                        Inbound::Closing => closing = true,
                        Inbound::Other => {}
                        Inbound::Malformed => {
                            let shown = String::from_utf8_lossy(&frame[..frame.len().min(80)]).into_owned();
                            eprintln!("load: malformed frame from the server: {shown}");
                        }
                    }
                }
                shared.deliveries.fetch_add(delivered, Ordering::Relaxed);
                shared.delivered_bytes.fetch_add(delivered_bytes, Ordering::Relaxed);
                if acked > 0 {
                    shared.acked.fetch_add(acked, Ordering::Relaxed);
                }
                if errors > 0 {
                    shared.errors.fetch_add(errors, Ordering::Relaxed);
                }
                if !latencies.is_empty() {
                    if shared.recording.load(Ordering::Acquire) {
                        if let Ok(mut histogram) = shared.histogram.lock() {
                            for &us in &latencies {
                                histogram.saturating_record(us.max(1));
                            }
                        }
                    }
                    latencies.clear();
                }
                if closing {
                    shared.lost.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                if window > 0 {
                    // An error frame is a dropped message: it frees its slot too.
                    in_flight = in_flight.saturating_sub((acked + errors) as usize);
                    let top_up = (window - in_flight) as u64;
                    if top_up > 0 {
                        queue_says(&mut out, top_up, &template, &shared);
                        if write_out(&mut writer, &out).await.is_err() {
                            shared.lost.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        out.clear();
                        in_flight = window;
                        sent += top_up;
                        shared.sent.fetch_add(top_up, Ordering::Relaxed);
                    }
                }
                if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                    buf.reserve(READ_CHUNK);
                }
            }
            _ = next_tick(&mut ticker) => {
                let due = (paced_since.elapsed().as_secs_f64() * per_sender_rate) as u64;
                let count = due.saturating_sub(sent).min(MAX_CATCH_UP);
                if count > 0 {
                    queue_says(&mut out, count, &template, &shared);
                    if write_out(&mut writer, &out).await.is_err() {
                        shared.lost.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    out.clear();
                    sent += count;
                    shared.sent.fetch_add(count, Ordering::Relaxed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_stamp_in_a_server_message() {
        let text = message_text(123_456_789, 7, 100);
        assert_eq!(text.len(), 100);
        let payload =
            format!(r#"{{"type":"message","id":42,"from":"bench_1_0","text":"{text}","ts":1}}"#);
        match classify(payload.as_bytes()) {
            Inbound::Message(Some(stamp)) => assert_eq!(
                stamp,
                Stamp {
                    sent_ns: 123_456_789,
                    sender: 7
                }
            ),
            _ => panic!("not recognised"),
        }
    }

    #[test]
    fn parses_a_message_with_other_field_order() {
        let text = message_text(5, 1, 10);
        let payload = format!(r#"{{"id":1,"text":"{text}","from":"a","ts":1,"type":"message"}}"#);
        assert!(matches!(
            classify(payload.as_bytes()),
            Inbound::Message(Some(Stamp {
                sent_ns: 5,
                sender: 1
            }))
        ));
    }

    #[test]
    fn counts_foreign_messages_without_a_stamp() {
        let payload = br#"{"type":"message","id":1,"from":"alice","text":"hello","ts":1}"#;
        assert!(matches!(classify(payload), Inbound::Message(None)));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        assert!(matches!(classify(b"\xff\x00{"), Inbound::Malformed));
        assert!(matches!(
            classify(br#"{"type":"message","id":"#),
            Inbound::Malformed
        ));
        assert!(matches!(
            classify(br#"{"type":"error","code":"rate_limited","message":"slow"}"#),
            Inbound::Error
        ));
        assert!(matches!(
            classify(br#"{"type":"joined","name":"a"}"#),
            Inbound::Other
        ));
    }
}
