//! `echochat-bench`: a load generator that measures an echochat server as its users
//! feel it.
//!
//! One command starts the release server sitting next to this executable (or targets
//! a running one with `--target`), then runs the selected phases in order:
//!
//! | phase | module | figure |
//! | --- | --- | --- |
//! | `fanout` | [`fanout`] | deliveries/s and messages/s at the peak, with its latency |
//! | `latency` | [`fanout`] | delivery latency at a fixed offered load (open loop) |
//! | `resume` | [`resume`] | connect + welcome + resume + history per second |
//! | `memory` | [`memory`] | server RSS per idle authenticated connection |
//! | `storm` | [`storm`] | chat latency while 100 slow password logins are hashed |
//!
//! ```text
//! cargo build --release --workspace
//! target/release/echochat-bench                       # every phase, defaults
//! target/release/echochat-bench --phase fanout,latency --clients 2000 --rate 1000
//! target/release/echochat-bench --target 127.0.0.1:9090 --server-pid 1234
//! ```
//!
//! Each figure is printed as a plain `phase: ...` line when measured, and again in a
//! summary at the end. The generator shares the machine with the server, so it runs on a
//! small tokio runtime (`--threads`, 2 by default), one task per connection, and parses
//! chat frames without JSON where it can (see `load`). Every wait has a deadline, only
//! loopback addresses are used, and a server it started is stopped on exit, error or
//! panic.

mod conn;
mod error;
mod fanout;
mod load;
mod memory;
mod resume;
mod server;
mod storm;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;

use crate::conn::Account;
use crate::error::{BenchError, Result};
use crate::server::{ServerLaunch, ServerProcess};

/// PBKDF2 rounds of the main server: the protocol's minimum, so account set-up is cheap
/// and the chat path is what gets measured (the storm phase measures the slow path).
const BENCH_PBKDF2_ROUNDS: u32 = 1000;

/// A part of the benchmark, selectable with `--phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    Fanout,
    Latency,
    Resume,
    Memory,
    Storm,
}

impl Phase {
    /// Every phase, in the order they run.
    fn all() -> Vec<Phase> {
        vec![
            Phase::Fanout,
            Phase::Latency,
            Phase::Resume,
            Phase::Memory,
            Phase::Storm,
        ]
    }

    /// The name printed in front of the phase's lines.
    fn name(self) -> &'static str {
        match self {
            Phase::Fanout => "fanout",
            Phase::Latency => "latency",
            Phase::Resume => "resume",
            Phase::Memory => "memory",
            Phase::Storm => "storm",
        }
    }
}

/// Command line of the load generator.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "echochat-bench",
    version,
    about = "Load generator for the echochat server: fan-out throughput, delivery latency, \
             resume rate, memory per connection and latency under a login storm"
)]
pub struct Options {
    /// Benchmark a running server at HOST:PORT (loopback only) instead of starting one.
    #[arg(long, value_name = "HOST:PORT")]
    pub target: Option<String>,
    /// Process id of the `--target` server, to measure its memory.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Server binary to start [default: echochat-server next to this executable].
    #[arg(long, value_name = "PATH")]
    pub server_bin: Option<PathBuf>,
    /// Extra argument for every server started (repeat it), e.g. `--server-arg=--history=0`.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub server_arg: Vec<String>,
    /// Phases to run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Phase::all())]
    pub phase: Vec<Phase>,
    /// Connected clients in the fan-out and latency phases.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// How many of those clients send.
    #[arg(long, default_value_t = 10)]
    pub senders: usize,
    /// Fan-out phase: messages each sender keeps unacknowledged.
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// Bytes of chat text per message (at least the 28-byte timestamp stamp).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Seconds measured in the fan-out and latency phases, after the warm-up.
    #[arg(long, default_value_t = 10.0, value_parser = positive_number)]
    pub duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 2.0, value_parser = positive_number)]
    pub warmup: f64,
    /// Latency phase: messages per second offered in total, spread over the senders.
    #[arg(long, default_value_t = 500.0, value_parser = positive_number)]
    pub rate: f64,
    /// Resume phase: concurrent tasks, each reconnecting in a loop with its own account.
    #[arg(long, default_value_t = 50)]
    pub resume_tasks: usize,
    /// Resume phase: seconds of reconnecting.
    #[arg(long, default_value_t = 3.0, value_parser = positive_number)]
    pub resume_duration: f64,
    /// Memory phase: idle authenticated connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub idle_conns: usize,
    /// Memory phase: accounts the idle connections are spread over.
    #[arg(long, default_value_t = 20)]
    pub idle_accounts: usize,
    /// Storm phase: password logins started at once.
    #[arg(long, default_value_t = 100)]
    pub storm_logins: usize,
    /// Storm phase: clients of the chat load running through the storm.
    #[arg(long, default_value_t = 50)]
    pub storm_clients: usize,
    /// Storm phase: messages per second of that chat load.
    #[arg(long, default_value_t = 200.0, value_parser = positive_number)]
    pub storm_rate: f64,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// A strictly positive, finite number (seconds or a rate).
fn positive_number(text: &str) -> std::result::Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("`{text}` is not a positive number")),
    }
}

/// State shared by the phases of one run: where the server is, the clock every stamp
/// is read from, the accounts created so far, and the summary being built.
pub struct Bench {
    pub opts: Options,
    pub addr: SocketAddr,
    /// Whose memory the memory phase reads, if known.
    pub server_pid: Option<u32>,
    /// How to start another server (the storm needs one with default rounds); `None`
    /// when benchmarking `--target`.
    pub launch: Option<ServerLaunch>,
    /// Zero of every timestamp in a message text.
    pub clock: Instant,
    /// Distinguishes this run's account names from earlier runs' on the same server.
    pub run_id: String,
    accounts: Vec<Account>,
    summary: Vec<String>,
}

impl Bench {
    /// `count` accounts of the pool (created on first use, reused with their tokens
    /// later so a server with slow hashing registers each once).
    pub fn take_accounts(&mut self, count: usize) -> Vec<Account> {
        while self.accounts.len() < count {
            let name = format!("bench_{}_{}", self.run_id, self.accounts.len());
            self.accounts.push(Account::new(name));
        }
        self.accounts.drain(..count).collect()
    }

    /// Puts accounts back in the pool with their fresh tokens.
    pub fn return_accounts(&mut self, accounts: Vec<Account>) {
        let rest = std::mem::replace(&mut self.accounts, accounts);
        self.accounts.extend(rest);
    }

    /// Prints one figure line of a phase.
    pub fn say(&self, phase: Phase, text: impl AsRef<str>) {
        println!("{}: {}", phase.name(), text.as_ref());
    }

    /// Adds a line to the final summary.
    pub fn summarize(&mut self, text: impl Into<String>) {
        self.summary.push(text.into());
    }
}

/// `p50 .. us, p99 .. us, p99.9 .. us, max .. us (n samples)` for a latency histogram.
pub fn percentiles(histogram: &Histogram<u64>) -> String {
    if histogram.is_empty() {
        return "no samples".into();
    }
    format!(
        "p50 {} us, p99 {} us, p99.9 {} us, max {} us ({} samples)",
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99),
        histogram.value_at_quantile(0.999),
        histogram.max(),
        histogram.len()
    )
}

/// `p50/p99/p99.9` in microseconds, compact, for the summary.
pub fn percentiles_short(histogram: &Histogram<u64>) -> String {
    if histogram.is_empty() {
        return "no samples".into();
    }
    format!(
        "{}/{}/{}",
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99),
        histogram.value_at_quantile(0.999)
    )
}

/// Seconds as a `Duration` (validated positive by the parser).
pub fn seconds(value: f64) -> Duration {
    Duration::from_secs_f64(value)
}

/// The first loopback address `target` resolves to.
fn loopback_target(target: &str) -> Result<SocketAddr> {
    let addrs = target
        .to_socket_addrs()
        .map_err(|e| BenchError::Usage(format!("--target {target}: {e}")))?;
    addrs
        .into_iter()
        .find(|addr| addr.ip().is_loopback())
        .ok_or_else(|| {
            BenchError::Usage(format!(
                "--target {target} is not a loopback address (the benchmark only talks to this machine)"
            ))
        })
}

/// A short id unique enough to keep account names of two runs apart.
fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or_default();
    format!("{:08x}", nanos ^ std::process::id().rotate_left(16))
}

/// The 1/5/15-minute load averages, printed because other work on the machine takes
/// cores from both the server and the load generator.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Runs the whole benchmark; `Ok(false)` when a phase failed (its error was printed).
async fn run(opts: Options) -> Result<bool> {
    if opts.size > echochat::protocol::MAX_TEXT_CHARS {
        return Err(BenchError::Usage(format!(
            "--size {} exceeds the protocol's {} characters",
            opts.size,
            echochat::protocol::MAX_TEXT_CHARS
        )));
    }
    let fd_limit = server::raise_fd_limit()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let launch = match opts.target {
        Some(_) => None,
        None => Some(ServerLaunch {
            binary: match &opts.server_bin {
                Some(path) => path.clone(),
                None => server::sibling_server_binary()?,
            },
            pbkdf2_rounds: Some(BENCH_PBKDF2_ROUNDS),
            extra_args: opts.server_arg.clone(),
        }),
    };
    // Owned here so it is stopped however this function ends.
    let (server, addr, server_pid) = match (&launch, &opts.target) {
        (Some(launch), _) => {
            let server = ServerProcess::start(launch, "main")?;
            let (addr, pid) = (server.addr, server.pid());
            (Some(server), addr, Some(pid))
        }
        (None, target) => {
            let target = target.as_deref().unwrap_or_default();
            (None, loopback_target(target)?, opts.server_pid)
        }
    };
    println!(
        "echochat-bench: {} cores, load generator on the same machine ({} worker threads), \
         open-file limit {fd_limit}, load average {}",
        cores,
        opts.threads,
        load_average()
    );
    match &launch {
        Some(launch) => println!(
            "echochat-bench: started {} (pid {}) at {addr}, --pbkdf2-rounds {BENCH_PBKDF2_ROUNDS}, limits off",
            launch.binary.display(),
            server_pid.unwrap_or_default()
        ),
        None => println!("echochat-bench: target {addr}"),
    }
    let mut bench = Bench {
        opts: opts.clone(),
        addr,
        server_pid,
        launch,
        clock: Instant::now(),
        run_id: run_id(),
        accounts: Vec::new(),
        summary: Vec::new(),
    };
    let mut all_ok = true;
    for phase in Phase::all() {
        if !opts.phase.contains(&phase) {
            continue;
        }
        let result = match phase {
            Phase::Fanout => fanout::run_fanout(&mut bench).await,
            Phase::Latency => fanout::run_latency(&mut bench).await,
            Phase::Resume => resume::run(&mut bench).await,
            Phase::Memory => memory::run(&mut bench).await,
            Phase::Storm => storm::run(&mut bench).await,
        };
        if let Err(e) = result {
            all_ok = false;
            bench.say(phase, format!("FAILED: {e}"));
            bench.summarize(format!("{:<38} FAILED: {e}", phase.name()));
        }
    }
    println!(
        "summary ({cores} cores, load generator on the same machine, {} clients, {} senders, {}-byte texts):",
        opts.clients,
        opts.senders.clamp(1, opts.clients.max(1)),
        opts.size.max(load::STAMP_LEN)
    );
    for line in &bench.summary {
        println!("  {line}");
    }
    drop(server);
    Ok(all_ok)
}

fn main() -> ExitCode {
    let opts = Options::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("echochat-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The run future is polled on this thread, so servers are spawned from it and their
    // parent-death signal is tied to the main thread's life.
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = run(opts) => outcome,
            _ = tokio::signal::ctrl_c() => Err(BenchError::Usage("interrupted".into())),
        }
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("echochat-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
