//! The fan-out and latency phases: many connected clients, a few senders, every
//! message delivered to everyone.
//!
//! Fan-out is the peak: each sender keeps `--window` messages in flight, so the server
//! is as busy as it can be made, and the figure is deliveries per second (one MESSAGE
//! frame to one client) with the latency seen at that peak. The latency phase offers a
//! fixed `--rate` on a timer whatever the server does (open loop), which is the delay a
//! user feels in an ordinary busy room.

use std::time::Duration;

use crate::conn::open_sessions;
use crate::error::Result;
use crate::load::{measure, ChatLoad, Counters, SendMode, STAMP_LEN};
use crate::server::CpuMark;
use crate::{percentiles, percentiles_short, seconds, Bench, Phase};

/// Handshakes in flight while the clients connect.
const CONNECT_PARALLELISM: usize = 64;
/// Time allowed to connect and authenticate all clients.
const CONNECT_LIMIT: Duration = Duration::from_secs(300);

/// Connects `--clients` clients and runs the chat load in `mode` on them; returns
/// what was measured after the warm-up.
async fn run_load(
    bench: &mut Bench,
    phase: Phase,
    mode: SendMode,
) -> Result<(Counters, Duration, hdrhistogram::Histogram<u64>, String)> {
    let clients = bench.opts.clients.max(1);
    let senders = bench.opts.senders.clamp(1, clients);
    let accounts = bench.take_accounts(clients);
    let connecting = std::time::Instant::now();
    let (conns, accounts) =
        open_sessions(bench.addr, accounts, CONNECT_PARALLELISM, CONNECT_LIMIT).await?;
    bench.return_accounts(accounts);
    bench.say(
        phase,
        format!(
            "{clients} clients connected and authenticated in {:.1} s",
            connecting.elapsed().as_secs_f64()
        ),
    );
    let load = ChatLoad::start(conns, senders, mode, bench.opts.size, bench.clock);
    tokio::time::sleep(seconds(bench.opts.warmup)).await;
    let cpu = CpuMark::now(bench.server_pid);
    let (counters, elapsed, histogram) = measure(&load, seconds(bench.opts.duration)).await;
    let cpu_line = cpu.report();
    load.stop().await;
    Ok((counters, elapsed, histogram, cpu_line))
}

/// The text size actually sent (never shorter than the stamp).
fn text_size(bench: &Bench) -> usize {
    bench.opts.size.max(STAMP_LEN)
}

/// Losses worth a line: dropped messages and connections the server closed.
fn trouble(bench: &Bench, phase: Phase, counters: &Counters) {
    if counters.errors > 0 || counters.lost > 0 {
        bench.say(
            phase,
            format!(
                "WARNING: {} error frames (dropped messages), {} connections closed by the server",
                counters.errors, counters.lost
            ),
        );
    }
}

/// Phase 1: deliveries/s and messages/s at the peak, with the latency there.
pub async fn run_fanout(bench: &mut Bench) -> Result<()> {
    let phase = Phase::Fanout;
    let o = bench.opts.clone();
    bench.say(
        phase,
        format!(
            "{} clients, {} senders, window {}, {}-byte texts; {:.1} s warm-up, {:.1} s measured",
            o.clients,
            o.senders.clamp(1, o.clients.max(1)),
            o.window,
            text_size(bench),
            o.warmup,
            o.duration
        ),
    );
    let (counters, elapsed, histogram, cpu) =
        run_load(bench, phase, SendMode::Window(o.window)).await?;
    let secs = elapsed.as_secs_f64();
    let deliveries = counters.deliveries as f64 / secs;
    let messages = counters.acked as f64 / secs;
    bench.say(
        phase,
        format!(
            "{deliveries:.0} deliveries/s, {messages:.0} messages/s ({} deliveries, {} messages in {secs:.2} s)",
            counters.deliveries, counters.acked
        ),
    );
    bench.say(
        phase,
        format!("latency at peak: {}", percentiles(&histogram)),
    );
    bench.say(phase, cpu);
    trouble(bench, phase, &counters);
    bench.summarize(format!("{:<38} {deliveries:.0}", "fanout deliveries/s"));
    bench.summarize(format!("{:<38} {messages:.0}", "fanout messages/s"));
    bench.summarize(format!(
        "{:<38} {}",
        "peak latency p50/p99/p99.9 us",
        percentiles_short(&histogram)
    ));
    Ok(())
}

/// Phase 2: latency percentiles at a fixed offered load.
pub async fn run_latency(bench: &mut Bench) -> Result<()> {
    let phase = Phase::Latency;
    let o = bench.opts.clone();
    bench.say(
        phase,
        format!(
            "offered {} messages/s (open loop) over {} senders to {} clients, {}-byte texts; \
             {:.1} s warm-up, {:.1} s measured",
            o.rate,
            o.senders.clamp(1, o.clients.max(1)),
            o.clients,
            text_size(bench),
            o.warmup,
            o.duration
        ),
    );
    let (counters, elapsed, histogram, cpu) =
        run_load(bench, phase, SendMode::Rate(o.rate)).await?;
    let secs = elapsed.as_secs_f64();
    bench.say(
        phase,
        format!(
            "achieved {:.0} messages/s sent, {:.0} acknowledged, {:.0} deliveries/s",
            counters.sent as f64 / secs,
            counters.acked as f64 / secs,
            counters.deliveries as f64 / secs
        ),
    );
    bench.say(phase, percentiles(&histogram));
    bench.say(phase, cpu);
    trouble(bench, phase, &counters);
    bench.summarize(format!(
        "{:<38} {}",
        format!("latency @{} msg/s p50/p99/p99.9 us", o.rate),
        percentiles_short(&histogram)
    ));
    Ok(())
}
