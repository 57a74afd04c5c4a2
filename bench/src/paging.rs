//! The paging phase: start-up on a long history, and a page of older messages from
//! the middle of a room.
//!
//! It writes a state folder of its own: a `history.jsonl` of `--page-messages` messages
//! spread round-robin over `--page-rooms` rooms (lines as the server writes them, ids
//! strictly increasing), and a `rooms.json` that makes the account `pager` a member of
//! every room. It starts a second server on it and reports its start-up (spawn to its
//! first stdout line: the whole history is read and indexed before it) and its resident
//! memory, registers `pager`, and then asks for `--page-requests` pages of
//! `--page-limit` messages (`{"type":"history","room":R,"before":ID,"limit":50}`, a random
//! room, `before` a random id in the middle half of the history) from each number of
//! `--page-clients` connections asking at once, one request at a time each. Every
//! answer is checked: the right room, the right number of messages, the newest one the
//! last id of that room below `before`, ids increasing.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use echochat::protocol::{ClientMessage, HistoryEntry, ServerMessage};
use tokio::task::JoinSet;

use crate::conn::{open_chains, open_session, parse_server_message, Account, Conn, Endpoint};
use crate::error::{within, BenchError, Result};
use crate::load::new_histogram;
use crate::server::{fresh_state_dir, rss_kib, CpuMark, ServerProcess};
use crate::{percentiles, Bench, Phase};

/// The account that pages (a member of every generated room).
const PAGER: &str = "pager";
/// Time allowed for all page requests of one concurrency.
const REQUESTS_LIMIT: Duration = Duration::from_secs(600);
/// Time allowed to open the paging connections.
const CONNECT_LIMIT: Duration = Duration::from_secs(60);
/// Milliseconds of the first generated message's `ts`.
const FIRST_TS_MS: u64 = 1_790_000_000_000;

/// The room of message `id` (ids from 1, round-robin over the rooms).
fn room_of(id: u64, rooms: u64) -> u64 {
    (id - 1) % rooms
}

/// The name of generated room `k`.
fn room_name(k: u64) -> String {
    format!("room-{k}")
}

/// Writes `history.jsonl` and `rooms.json` into `dir`; returns the history's size in
/// bytes.
fn write_state(dir: &Path, messages: u64, rooms: u64) -> std::io::Result<u64> {
    let path = dir.join("history.jsonl");
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
    let mut line = String::with_capacity(256);
    for id in 1..=messages {
        use std::fmt::Write as _;
        line.clear();
        let room = room_of(id, rooms);
        // About the size of an ordinary chat line; no character needs escaping.
        let _ = write!(
            line,
            r#"{{"type":"message","id":{id},"room":"room-{room}","from":"u{}","text":"message {id} of room-{room}: the quick brown fox jumps over the lazy dog","ts":{}}}"#,
            id % 7,
            FIRST_TS_MS + id
        );
        line.push('\n');
        out.write_all(line.as_bytes())?;
    }
    out.flush()?;
    let size = out.get_ref().metadata()?.len();
    drop(out);
    let members = serde_json::json!([PAGER]);
    let rooms_json: serde_json::Map<String, serde_json::Value> = (0..rooms)
        .map(|k| {
            let name = room_name(k);
            let room = serde_json::json!({
                "name": name,
                "created_ms": FIRST_TS_MS,
                "members": members,
            });
            (name, room)
        })
        .collect();
    let text = serde_json::json!({ "version": 1, "rooms": rooms_json });
    std::fs::write(dir.join("rooms.json"), serde_json::to_vec(&text)?)?;
    Ok(size)
}

/// A small fast generator of request parameters (xorshift64*), seeded per task.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

/// What a page request must bring back.
struct Expected {
    room: String,
    count: usize,
    last_id: u64,
}

/// The page of room `k` before `before`, as the generated history has it.
fn expected(k: u64, before: u64, rooms: u64, limit: u64) -> Expected {
    // Ids of room k: k + 1, k + 1 + rooms, ...; those below `before`:
    let below = if before > k + 1 {
        (before - 1 - (k + 1)) / rooms + 1
    } else {
        0
    };
    Expected {
        room: room_name(k),
        count: below.min(limit) as usize,
        last_id: if below == 0 {
            0
        } else {
            k + 1 + (below - 1) * rooms
        },
    }
}

/// Checks one answer against what was asked.
fn check_page(message: ServerMessage, want: &Expected) -> Result<()> {
    let ServerMessage::History { room, messages, .. } = message else {
        return Err(BenchError::Protocol(format!(
            "expected a history page, got {}",
            serde_json::to_string(&message).unwrap_or_default()
        )));
    };
    let wrong = |what: String| {
        Err(BenchError::Protocol(format!(
            "page of {}: {what}",
            want.room
        )))
    };
    if room.as_deref() != Some(want.room.as_str()) {
        return wrong(format!("answered for room {room:?}"));
    }
    if messages.len() != want.count {
        return wrong(format!(
            "{} messages, expected {}",
            messages.len(),
            want.count
        ));
    }
    let ids: Vec<u64> = messages
        .iter()
        .map(|HistoryEntry::Message(m)| m.id)
        .collect();
    if ids.windows(2).any(|w| w[0] >= w[1]) {
        return wrong("ids not increasing".into());
    }
    if want.count > 0 && ids.last() != Some(&want.last_id) {
        return wrong(format!(
            "newest id {:?}, expected {}",
            ids.last(),
            want.last_id
        ));
    }
    Ok(())
}

/// The answer to a page request (the next frame that is not a presence event) and when
/// it had arrived, before it is parsed.
async fn next_page(conn: &mut Conn) -> Result<(ServerMessage, Instant)> {
    loop {
        let frame = conn.next_frame().await?;
        let arrived = Instant::now();
        match parse_server_message(&frame)? {
            ServerMessage::Joined { .. } | ServerMessage::Left { .. } => continue,
            other => return Ok((other, arrived)),
        }
    }
}

/// Phase: start-up time and memory on a long history, and page latency.
pub async fn run(bench: &mut Bench) -> Result<()> {
    let phase = Phase::Paging;
    let Some(mut launch) = bench.launch.clone() else {
        bench.say(
            phase,
            "skipped: it starts a server of its own on a generated history (not with --target)",
        );
        bench.summarize(format!("{:<38} skipped (--target)", "paging"));
        return Ok(());
    };
    let o = bench.opts.clone();
    let messages = o.page_messages.max(1);
    let rooms = o.page_rooms.clamp(1, messages);
    let limit = o.page_limit.clamp(1, echochat::protocol::MAX_PAGE);
    let dir = fresh_state_dir("paging")?;
    let writing = Instant::now();
    let dir_for_writer = dir.clone();
    let written =
        tokio::task::spawn_blocking(move || write_state(&dir_for_writer, messages, rooms))
            .await
            .map_err(|e| BenchError::Protocol(format!("task: {e}")))?;
    let size = match written {
        Ok(size) => size,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(BenchError::io(format!("write {}", dir.display()), e));
        }
    };
    bench.say(
        phase,
        format!(
            "wrote {messages} messages over {rooms} rooms ({:.1} MB of history.jsonl) in {:.1} s",
            size as f64 / 1e6,
            writing.elapsed().as_secs_f64()
        ),
    );
    // Start-up as an ordinary server has it: no certificate to create.
    launch.tls = false;
    let server = ServerProcess::start_in(&launch, dir)?;
    let startup = server.started_in.as_secs_f64();
    let rss = rss_kib(server.pid())?;
    bench.say(
        phase,
        format!(
            "server (pid {}) started in {startup:.2} s (spawn to its first line), RSS {:.1} MiB",
            server.pid(),
            rss as f64 / 1024.0
        ),
    );
    bench.figure("paging start-up s", startup);
    bench.figure("paging server RSS MiB", rss as f64 / 1024.0);
    bench.summarize(format!(
        "{:<38} {startup:.2} s, RSS {:.0} MiB ({messages} messages)",
        "paging start-up",
        rss as f64 / 1024.0
    ));
    let endpoint = Endpoint::plain(server.addr);
    let pager = open_session(&endpoint, Account::new(PAGER.into()))
        .await?
        .account;

    let mut account = pager;
    for &clients in &o.page_clients {
        let clients = clients.max(1);
        let (conns, mut accounts) =
            open_chains(&endpoint, vec![account], clients, CONNECT_LIMIT).await?;
        account = accounts
            .pop()
            .ok_or_else(|| BenchError::Protocol("the paging account was not given back".into()))?;
        let requests = o.page_requests.max(1) as u64;
        let taken = Arc::new(AtomicU64::new(0));
        let cpu = CpuMark::now(Some(server.pid()));
        let started = Instant::now();
        let mut set = JoinSet::new();
        for (t, mut conn) in conns.into_iter().enumerate() {
            let taken = taken.clone();
            set.spawn(async move {
                // The histories of the login (one per room) come first.
                conn.skip_pending().await?;
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((t as u64 + 1) << 32));
                let mut histogram = new_histogram();
                while taken.fetch_add(1, Ordering::Relaxed) < requests {
                    let k = rng.below(rooms);
                    // The middle half of the history.
                    let before = messages / 4 + 1 + rng.below((messages / 2).max(1));
                    let want = expected(k, before, rooms, limit);
                    let request = ClientMessage::History {
                        room: Some(room_name(k)),
                        with: None,
                        before: Some(before),
                        limit: Some(limit),
                    };
                    let sent = Instant::now();
                    conn.send(&request).await?;
                    let (answer, arrived) = next_page(&mut conn).await?;
                    let took = arrived - sent;
                    check_page(answer, &want)?;
                    histogram.saturating_record((took.as_micros() as u64).max(1));
                }
                Ok::<_, BenchError>(histogram)
            });
        }
        let histogram = within(REQUESTS_LIMIT, format!("{requests} page requests"), async {
            let mut all = new_histogram();
            while let Some(joined) = set.join_next().await {
                let part = joined.map_err(|e| BenchError::Protocol(format!("task: {e}")))??;
                let _ = all.add(&part);
            }
            Ok(all)
        })
        .await?;
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = cpu.usage();
        let done = histogram.len();
        bench.say(
            phase,
            format!(
                "{clients} connection(s) asking at once: {done} pages of {limit} in {elapsed:.2} s \
                 ({:.0} pages/s), page latency {}",
                done as f64 / elapsed,
                percentiles(&histogram)
            ),
        );
        bench.say(phase, cpu.to_string());
        if let Some(server_cpu) = cpu.server.filter(|_| done > 0) {
            bench.figure(
                format!("paging x{clients} server CPU us/page"),
                server_cpu * 1e6 / done as f64,
            );
        }
        for (label, quantile) in [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)] {
            bench.figure(
                format!("paging x{clients} {label} us"),
                histogram.value_at_quantile(quantile) as f64,
            );
        }
        bench.summarize(format!(
            "{:<38} {}/{}/{} ({:.0} pages/s)",
            format!("page x{clients} p50/p99/p99.9 us"),
            histogram.value_at_quantile(0.5),
            histogram.value_at_quantile(0.99),
            histogram.value_at_quantile(0.999),
            done as f64 / elapsed
        ));
    }
    drop(server);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_pages_follow_the_round_robin() {
        // Room 2 of 10 holds ids 3, 13, 23, ...
        let want = expected(2, 100, 10, 5);
        assert_eq!((want.count, want.last_id), (5, 93));
        let want = expected(2, 24, 10, 50);
        assert_eq!((want.count, want.last_id), (3, 23));
        let want = expected(2, 3, 10, 50);
        assert_eq!((want.count, want.last_id), (0, 0));
        let want = expected(2, 4, 10, 50);
        assert_eq!((want.count, want.last_id), (1, 3));
    }

    #[test]
    fn generated_state_reads_back() {
        let dir = std::env::temp_dir().join(format!("paging-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let size = write_state(&dir, 30, 4).unwrap();
        let text = std::fs::read_to_string(dir.join("history.jsonl")).unwrap();
        assert_eq!(text.len() as u64, size);
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 30);
        assert_eq!(lines[5]["id"], 6);
        assert_eq!(lines[5]["room"], "room-1");
        let rooms: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("rooms.json")).unwrap()).unwrap();
        assert_eq!(rooms["rooms"]["room-3"]["members"][0], PAGER);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
