//! The rooms phase: fan-out within rooms, and what a room message costs the users who
//! are online but not in the room.
//!
//! `--clients` accounts of the phase's own (so their memberships never follow the
//! shared accounts into the lobby phases) register, and client `i` joins room
//! `i % --rooms` (besides `lobby`, which everyone is in). Then:
//!
//! 1. **Peak**: the first member of every room keeps `--window` messages in flight into
//!    its room; deliveries (a MESSAGE frame to one member) per second and the latency
//!    there, the figure to read beside the lobby's fan-out.
//! 2. **Non-members**: `--room-rate` messages/s offered (open loop) into the first
//!    `--active-rooms` rooms, once with every other client online (members of the
//!    other rooms, idle), once with only `--others-online` of them, each
//!    `--room-repeats` times (alternating). If a room message costs nothing per online
//!    non-member, the server's CPU per delivery is the same both ways. The CPU the same connections cost with no traffic at all (their idle
//!    timers) is measured first and shown, and subtracted in the net figure.

use std::time::{Duration, Instant};

use echochat::protocol::{ClientMessage, ServerMessage};
use tokio::task::JoinSet;

use crate::conn::{open_sessions, Account, Conn};
use crate::error::{within, BenchError, Result};
use crate::fanout::trouble;
use crate::load::{measure_load, ChatLoad, Measured, SendMode, CONNECT_LIMIT, CONNECT_PARALLELISM};
use crate::server::CpuMark;
use crate::{percentiles, percentiles_short, seconds, Bench, Phase};

/// How long the server's CPU is watched with the clients connected and silent (at
/// most `--duration`).
const IDLE_WINDOW: Duration = Duration::from_secs(2);

/// Joins each connection `i` to `rooms[i % rooms.len()]`, waiting for the room's
/// history (the join is then on disk and the ring taken).
async fn join_rooms(conns: Vec<Conn>, rooms: &[String]) -> Result<Vec<Conn>> {
    let count = conns.len();
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(CONNECT_PARALLELISM));
    let mut set = JoinSet::new();
    for (i, mut conn) in conns.into_iter().enumerate() {
        let room = rooms[i % rooms.len()].clone();
        let semaphore = semaphore.clone();
        set.spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            conn.send(&ClientMessage::Join { room: room.clone() })
                .await?;
            loop {
                match conn.next_message().await? {
                    ServerMessage::History {
                        room: Some(answered),
                        ..
                    } if answered == room => return Ok::<_, BenchError>((i, conn)),
                    ServerMessage::Error { code, message } => {
                        return Err(BenchError::Protocol(format!(
                            "join {room} refused: {code:?} {message}"
                        )))
                    }
                    _ => continue,
                }
            }
        });
    }
    let work = async move {
        let mut slots: Vec<Option<Conn>> = (0..count).map(|_| None).collect();
        while let Some(joined) = set.join_next().await {
            let (i, conn) = joined.map_err(|e| BenchError::Protocol(format!("task: {e}")))??;
            slots[i] = Some(conn);
        }
        Ok(slots.into_iter().flatten().collect())
    };
    within(CONNECT_LIMIT, format!("{count} joins"), work).await
}

/// Runs a chat load on `conns` (the first `sender_rooms.len()` send, each into its
/// room) and measures it after the warm-up.
async fn run_load(
    bench: &Bench,
    conns: Vec<Conn>,
    sender_rooms: Vec<Option<String>>,
    mode: SendMode,
) -> Measured {
    let load = ChatLoad::start_in_rooms(conns, sender_rooms, mode, bench.opts.size, bench.clock);
    measure_load(
        load,
        seconds(bench.opts.warmup),
        seconds(bench.opts.duration),
        bench.server_pid,
    )
    .await
}

/// Phase: fan-out in rooms, and the cost of a room message per online non-member.
pub async fn run(bench: &mut Bench) -> Result<()> {
    let phase = Phase::Rooms;
    let o = bench.opts.clone();
    let clients = o.clients.max(1);
    let rooms = o.rooms.clamp(1, clients);
    let active = o.active_rooms.clamp(1, rooms);
    let room_names: Vec<String> = (0..rooms)
        .map(|k| format!("r{}-{k}", bench.run_id))
        .collect();
    bench.say(
        phase,
        format!(
            "{clients} clients in {rooms} rooms of {}-{} (each in one room besides lobby), \
             {}-byte texts; {:.1} s warm-up, {:.1} s measured",
            clients / rooms,
            clients.div_ceil(rooms),
            o.size.max(crate::load::STAMP_LEN),
            o.warmup,
            o.duration
        ),
    );
    // Accounts of the phase's own: the shared ones stay in lobby only.
    let accounts: Vec<Account> = (0..clients)
        .map(|i| Account::new(format!("bench_{}_r{i}", bench.run_id)))
        .collect();
    let started = Instant::now();
    let (conns, mut accounts) = open_sessions(
        &bench.endpoint,
        accounts,
        CONNECT_PARALLELISM,
        CONNECT_LIMIT,
    )
    .await?;
    let registered = started.elapsed().as_secs_f64();
    let joining = Instant::now();
    let conns = join_rooms(conns, &room_names).await?;
    bench.say(
        phase,
        format!(
            "{clients} accounts registered in {registered:.1} s; {clients} joins (each written to \
             rooms.json before it is answered) in {:.1} s",
            joining.elapsed().as_secs_f64()
        ),
    );

    // 1. Peak: one sender per room, a window each.
    let senders: Vec<Option<String>> = room_names.iter().cloned().map(Some).collect();
    let peak = run_load(bench, conns, senders, SendMode::Window(o.window)).await;
    let secs = peak.elapsed.as_secs_f64();
    let deliveries = peak.deliveries_per_second();
    let messages = peak.counters.acked as f64 / secs;
    bench.say(
        phase,
        format!(
            "peak, {rooms} senders (one per room, window {}): {deliveries:.0} deliveries/s, \
             {messages:.0} messages/s",
            o.window
        ),
    );
    bench.say(
        phase,
        format!("latency at peak: {}", percentiles(&peak.histogram)),
    );
    bench.say(phase, peak.cpu.to_string());
    trouble(bench, phase, &peak.counters, peak.first_error.as_deref());
    bench.figure("rooms deliveries/s", deliveries);
    if let Some((per, _)) = peak.ns_per_delivery(None) {
        bench.figure("rooms server CPU ns/delivery", per);
    }
    bench.summarize(format!("{:<38} {deliveries:.0}", "rooms deliveries/s"));
    bench.summarize(format!("{:<38} {messages:.0}", "rooms messages/s"));
    bench.summarize(format!(
        "{:<38} {}",
        "rooms peak latency p50/p99/p99.9 us",
        percentiles_short(&peak.histogram)
    ));

    // 2. A fixed load in a few rooms, with many and with few non-members online.
    // Client i is in room i % rooms: the first `active` clients send (one per active
    // room), then the other members of active rooms, then everyone else.
    let is_active = |i: usize| i % rooms < active;
    let members: Vec<usize> = (0..clients).filter(|&i| is_active(i)).collect();
    let others: Vec<usize> = (0..clients).filter(|&i| !is_active(i)).collect();
    let few = o.others_online.min(others.len());
    let rate = o.room_rate;
    // Many, few, then few, many, ...: drift on a shared machine falls on both.
    let order: Vec<usize> = (0..o.room_repeats.max(1))
        .flat_map(|r| {
            if r % 2 == 0 {
                [others.len(), few]
            } else {
                [few, others.len()]
            }
        })
        .collect();
    // Per population: server CPU seconds, the part of it the connections cost at rest,
    // and deliveries.
    let mut totals: Vec<(usize, f64, f64, u64)> = Vec::new();
    for online_others in order {
        let chosen: Vec<usize> = members
            .iter()
            .chain(others.iter().take(online_others))
            .copied()
            .collect();
        let subset: Vec<Account> = chosen.iter().map(|&i| accounts[i].clone()).collect();
        let (conns, fresh) =
            open_sessions(&bench.endpoint, subset, CONNECT_PARALLELISM, CONNECT_LIMIT).await?;
        for (&i, account) in chosen.iter().zip(fresh) {
            accounts[i] = account;
        }
        let idle = CpuMark::now(bench.server_pid);
        tokio::time::sleep(IDLE_WINDOW.min(seconds(o.duration))).await;
        let idle = idle.usage();
        let idle_cores = idle.server.map(|s| s / idle.wall);
        let senders: Vec<Option<String>> = room_names[..active].iter().cloned().map(Some).collect();
        let measured = run_load(bench, conns, senders, SendMode::Rate(rate)).await;
        let per = measured.ns_per_delivery(idle_cores);
        bench.say(
            phase,
            format!(
                "{rate} messages/s into {active} rooms ({} members), {online_others} non-members \
                 online: {:.0} deliveries/s, {}",
                members.len(),
                measured.deliveries_per_second(),
                percentiles(&measured.histogram)
            ),
        );
        bench.say(
            phase,
            format!(
                "  server CPU per delivery {}; at rest with the same connections: {}",
                match per {
                    Some((raw, Some(net))) => format!("{raw:.0} ns ({net:.0} ns net of rest)"),
                    Some((raw, None)) => format!("{raw:.0} ns"),
                    None => "unknown".into(),
                },
                idle_cores.map_or("unknown".into(), |c| format!("{c:.3} cores"))
            ),
        );
        bench.say(phase, format!("  {}", measured.cpu));
        trouble(
            bench,
            phase,
            &measured.counters,
            measured.first_error.as_deref(),
        );
        bench.summarize(format!(
            "{:<38} {} ({online_others} non-members online)",
            format!("rooms @{rate} p50/p99/p99.9 us"),
            percentiles_short(&measured.histogram),
        ));
        // A run that lost messages or connections says nothing about the cost of a
        // delivery: it is shown above, and left out of the comparison.
        let clean = measured.counters.errors == 0
            && measured.counters.lost == 0
            && measured.counters.deliveries > 0;
        if let Some(server) = measured.cpu.server.filter(|_| clean) {
            let rest = idle_cores.unwrap_or(0.0) * measured.cpu.wall;
            match totals.iter_mut().find(|t| t.0 == online_others) {
                Some(total) => {
                    total.1 += server;
                    total.2 += rest;
                    total.3 += measured.counters.deliveries;
                }
                None => totals.push((online_others, server, rest, measured.counters.deliveries)),
            }
        }
    }
    let per_delivery = |&(_, cpu, rest, deliveries): &(usize, f64, f64, u64)| {
        let per = |cpu: f64| cpu * 1e9 / deliveries.max(1) as f64;
        (per(cpu), per((cpu - rest).max(0.0)))
    };
    for total in &totals {
        let (raw, net) = per_delivery(total);
        let what = format!("rooms@{rate} {} others", total.0);
        bench.figure(format!("{what} server CPU ns/delivery"), raw);
        bench.figure(format!("{what} net server CPU ns/delivery"), net);
    }
    if let [many, few] = &totals[..] {
        let ((raw_many, net_many), (raw_few, net_few)) = (per_delivery(many), per_delivery(few));
        let line = format!(
            "{raw_many:.0} vs {raw_few:.0} ns ({:.2}x; net of rest {net_many:.0} vs {net_few:.0} ns, {:.2}x)",
            raw_many / raw_few,
            net_many / net_few
        );
        bench.say(
            phase,
            format!(
                "server CPU per room delivery with {} vs {} non-members online: {line}",
                many.0, few.0
            ),
        );
        bench.summarize(format!(
            "{:<38} {line}",
            format!("rooms ns/delivery, {} vs {} others", many.0, few.0)
        ));
    }
    Ok(())
}
