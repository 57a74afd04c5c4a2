//! The fan-out and latency phases: many connected clients, a few senders, every
//! message delivered to everyone.
//!
//! Fan-out is the peak: each sender keeps `--window` messages in flight, so the server
//! is as busy as it can be made, and the figure is deliveries per second (one MESSAGE
//! frame to one client) with the latency seen at that peak. The latency phase offers a
//! fixed `--rate` on a timer whatever the server does (open loop), which is the delay a
//! user feels in an ordinary busy room.

use crate::conn::open_sessions;
use crate::error::Result;
use crate::load::{
    measure_load, ChatLoad, Counters, Measured, SendMode, CONNECT_LIMIT, CONNECT_PARALLELISM,
    STAMP_LEN,
};
use crate::server::CpuUsage;
use crate::{percentiles, percentiles_short, seconds, Bench, Phase};

async fn run_load(bench: &mut Bench, phase: Phase, mode: SendMode) -> Result<Measured> {
    let clients = bench.opts.clients.max(1);
    let senders = bench.opts.senders.clamp(1, clients);
    let accounts = bench.take_accounts(clients);
    let connecting = std::time::Instant::now();
    let (conns, accounts) = open_sessions(
        &bench.endpoint,
        accounts,
        CONNECT_PARALLELISM,
        CONNECT_LIMIT,
    )
    .await?;
    bench.return_accounts(accounts);
    bench.say(
        phase,
        format!(
            "{clients} clients connected and authenticated in {:.1} s",
            connecting.elapsed().as_secs_f64()
        ),
    );
    let load = ChatLoad::start(conns, senders, mode, bench.opts.size, bench.clock);
    Ok(measure_load(
        load,
        seconds(bench.opts.warmup),
        seconds(bench.opts.duration),
        bench.server_pid,
    )
    .await)
}

/// The text size actually sent (never shorter than the stamp).
fn text_size(bench: &Bench) -> usize {
    bench.opts.size.max(STAMP_LEN)
}

/// Losses worth a line: dropped messages (with the first error frame, which says
/// why) and connections the server closed.
pub fn trouble(bench: &Bench, phase: Phase, counters: &Counters, first_error: Option<&str>) {
    if counters.errors > 0 || counters.lost > 0 {
        bench.say(
            phase,
            format!(
                "WARNING: {} error frames (dropped messages), {} connections closed by the server{}",
                counters.errors,
                counters.lost,
                first_error.map_or(String::new(), |e| format!("; first error: {e}"))
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
    let Measured {
        counters,
        elapsed,
        histogram,
        cpu,
        first_error,
    } = run_load(bench, phase, SendMode::Window(o.window)).await?;
    let secs = elapsed.as_secs_f64();
    let deliveries = counters.deliveries as f64 / secs;
    let messages = counters.acked as f64 / secs;
    let megabytes = counters.delivered_bytes as f64 / secs / 1e6;
    bench.say(
        phase,
        format!(
            "{deliveries:.0} deliveries/s, {messages:.0} messages/s, {megabytes:.0} MB/s of MESSAGE \
             frames ({:.0} bytes each; {} deliveries, {} messages in {secs:.2} s)",
            counters.delivered_bytes as f64 / counters.deliveries.max(1) as f64,
            counters.deliveries,
            counters.acked
        ),
    );
    bench.say(
        phase,
        format!("latency at peak: {}", percentiles(&histogram)),
    );
    bench.say(phase, cpu.to_string());
    trouble(bench, phase, &counters, first_error.as_deref());
    bench.figure("fanout deliveries/s", deliveries);
    bench.figure("fanout MB/s delivered", megabytes);
    record_latency(bench, "fanout peak", &histogram);
    record_cpu(bench, "fanout", &cpu, &counters);
    bench.summarize(format!("{:<38} {deliveries:.0}", "fanout deliveries/s"));
    bench.summarize(format!("{:<38} {messages:.0}", "fanout messages/s"));
    bench.summarize(format!(
        "{:<38} {}",
        "peak latency p50/p99/p99.9 us",
        percentiles_short(&histogram)
    ));
    Ok(())
}

/// Records p50, p99 and p99.9 of `histogram` as figures named after `what`.
fn record_latency(bench: &mut Bench, what: &str, histogram: &hdrhistogram::Histogram<u64>) {
    if histogram.is_empty() {
        return;
    }
    for (label, quantile) in [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)] {
        bench.figure(
            format!("{what} {label} us"),
            histogram.value_at_quantile(quantile) as f64,
        );
    }
}

/// Records the server's CPU per delivery and its context switches per message, and how
/// busy the rest of the machine was meanwhile.
fn record_cpu(bench: &mut Bench, what: &str, cpu: &CpuUsage, counters: &Counters) {
    if let Some(others) = cpu.others {
        bench.figure(format!("{what} other work, cores"), others / cpu.wall);
    }
    if let Some(server) = cpu.server.filter(|_| counters.deliveries > 0) {
        bench.figure(
            format!("{what} server CPU ns/delivery"),
            server * 1e9 / counters.deliveries as f64,
        );
    }
    if let Some((voluntary, involuntary)) = cpu.switches.filter(|_| counters.acked > 0) {
        bench.figure(
            format!("{what} server switches/message"),
            (voluntary + involuntary) as f64 / counters.acked as f64,
        );
    }
}

/// Phase 2: latency percentiles at each fixed offered load of `--rate`.
pub async fn run_latency(bench: &mut Bench) -> Result<()> {
    for rate in bench.opts.rate.clone() {
        run_latency_at(bench, rate).await?;
    }
    Ok(())
}

/// Latency percentiles at one offered load.
async fn run_latency_at(bench: &mut Bench, rate: f64) -> Result<()> {
    let phase = Phase::Latency;
    let o = bench.opts.clone();
    bench.say(
        phase,
        format!(
            "offered {rate} messages/s (open loop) over {} senders to {} clients, {}-byte texts; \
             {:.1} s warm-up, {:.1} s measured",
            o.senders.clamp(1, o.clients.max(1)),
            o.clients,
            text_size(bench),
            o.warmup,
            o.duration
        ),
    );
    let Measured {
        counters,
        elapsed,
        histogram,
        cpu,
        first_error,
    } = run_load(bench, phase, SendMode::Rate(rate)).await?;
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
    bench.say(phase, cpu.to_string());
    trouble(bench, phase, &counters, first_error.as_deref());
    let what = format!("latency@{rate}");
    record_latency(bench, &what, &histogram);
    record_cpu(bench, &what, &cpu, &counters);
    bench.summarize(format!(
        "{:<38} {}",
        format!("latency @{rate} msg/s p50/p99/p99.9 us"),
        percentiles_short(&histogram)
    ));
    Ok(())
}
