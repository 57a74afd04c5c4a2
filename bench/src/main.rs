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
//! | `rooms` | [`rooms`] | deliveries/s within rooms; CPU per room delivery with many or few non-members online |
//! | `resume` | [`resume`] | connect + welcome + resume + history per second |
//! | `paging` | [`paging`] | start-up and memory on a long history; latency of a page from its middle |
//! | `memory` | [`memory`] | server RSS per idle authenticated connection |
//! | `storm` | [`storm`] | chat latency while 100 slow password logins are hashed |
//! | `tls` | [`tls`] | fan-out and resume rate over TLS beside plaintext, on the same server |
//! | `cluster` | [`cluster`] | the same server in cluster mode (two nodes on one NATS) beside it: registration, resume, fan-out and cross-node latency (only when asked for: it needs `nats-server`) |
//!
//! ```text
//! cargo build --release --workspace
//! target/release/echochat-bench                       # every phase, defaults
//! target/release/echochat-bench --phase fanout,latency --clients 2000 --rate 1000
//! target/release/echochat-bench --target 127.0.0.1:9090 --server-pid 1234
//! target/release/echochat-bench --reference-bin /tmp/refserver/target/release/refserver
//! ```
//!
//! With `--reference-bin` (or `--compare HOST:PORT`) the fan-out, latency and resume
//! phases run against echochat and against the reference fan-out server in turn, for
//! `--rounds` rounds (the order alternates each round so that drift on a shared machine
//! falls on both), and a table at the end gives each figure for both servers and the
//! ratio echochat / reference per round: ratios measured side by side, not absolutes.
//! The reference server has no `resume`, so its resume phase logs in with `login`
//! (which it answers exactly like any authentication) and its history is empty;
//! `--reference-resumes` sends it `resume` instead, for a variant that answers it.
//! The rooms, paging, memory, storm and tls phases run on echochat only.
//!
//! Each figure is printed as a plain `phase: ...` line when measured, and again in a
//! summary at the end. The generator shares the machine with the server, so it runs on a
//! small tokio runtime (`--threads`, 2 by default), one task per connection, and parses
//! chat frames without JSON where it can (see `load`). Every wait has a deadline, only
//! loopback addresses are used, and a server it started is stopped on exit, error or
//! panic.

mod cluster;
mod conn;
mod error;
mod fanout;
mod load;
mod memory;
mod paging;
mod resume;
mod rooms;
mod server;
mod storm;
mod tls;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;

use crate::conn::{Account, Endpoint};
use crate::error::{BenchError, Result};
use crate::server::{ServerKind, ServerLaunch, ServerProcess};

/// PBKDF2 rounds of the main server: the protocol's minimum, so account set-up is cheap
/// and the chat path is what gets measured (the storm phase measures the slow path).
const BENCH_PBKDF2_ROUNDS: u32 = 1000;

/// A part of the benchmark, selectable with `--phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    Fanout,
    Latency,
    Rooms,
    Resume,
    Paging,
    Memory,
    Storm,
    Tls,
    /// Only when asked for (`--phase cluster`): it needs `nats-server`.
    Cluster,
}

impl Phase {
    /// The phases run by default, in the order they run.
    fn all() -> Vec<Phase> {
        vec![
            Phase::Fanout,
            Phase::Latency,
            Phase::Rooms,
            Phase::Resume,
            Phase::Paging,
            Phase::Memory,
            Phase::Storm,
            Phase::Tls,
        ]
    }

    /// The name printed in front of the phase's lines.
    fn name(self) -> &'static str {
        match self {
            Phase::Fanout => "fanout",
            Phase::Latency => "latency",
            Phase::Rooms => "rooms",
            Phase::Resume => "resume",
            Phase::Paging => "paging",
            Phase::Memory => "memory",
            Phase::Storm => "storm",
            Phase::Tls => "tls",
            Phase::Cluster => "cluster",
        }
    }
}

/// Command line of the load generator.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "echochat-bench",
    version,
    about = "Load generator for the echochat server: fan-out throughput, delivery latency, \
             rooms, resume rate, paging through a long history, memory per connection, \
             latency under a login storm, and what TLS costs"
)]
pub struct Options {
    /// Benchmark a running server at HOST:PORT (loopback only) instead of starting one.
    #[arg(long, value_name = "HOST:PORT")]
    pub target: Option<String>,
    /// Process id of the `--target` server, to measure its memory.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Start this reference server (`refserver [PORT]`) and measure it beside echochat:
    /// fan-out, latency and resume, figure by figure, with ratios.
    #[arg(long, value_name = "PATH", conflicts_with = "compare")]
    pub reference_bin: Option<PathBuf>,
    /// Measure a running reference server at HOST:PORT (loopback only) beside echochat.
    #[arg(long, value_name = "HOST:PORT")]
    pub compare: Option<String>,
    /// The reference server answers `resume` (a variant made for a fair resume
    /// comparison): its resume phase sends `resume` with the token of its last `auth_ok`.
    #[arg(long)]
    pub reference_resumes: bool,
    /// Process id of the `--compare` server, for its CPU use.
    #[arg(long, value_name = "PID")]
    pub compare_pid: Option<u32>,
    /// Rounds of the side-by-side comparison [default: 3 when comparing, else 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: Option<u32>,
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
    /// Latency phase: messages per second offered in total, spread over the senders;
    /// several rates (comma-separated) are measured one after the other.
    #[arg(long, value_delimiter = ',', default_values_t = [500.0, 2000.0], value_parser = positive_number)]
    pub rate: Vec<f64>,
    /// Rooms phase: rooms the `--clients` clients are spread over, one room each.
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Rooms phase: rooms that get the fixed load of `--room-rate`.
    #[arg(long, default_value_t = 10)]
    pub active_rooms: usize,
    /// Rooms phase: messages per second offered in total into the active rooms.
    #[arg(long, default_value_t = 2000.0, value_parser = positive_number)]
    pub room_rate: f64,
    /// Rooms phase: non-members online in the second fixed-load run (the first has
    /// every client online).
    #[arg(long, default_value_t = 10)]
    pub others_online: usize,
    /// Rooms phase: how many times each of the two fixed-load runs is measured
    /// (alternating: many, few, few, many, ...).
    #[arg(long, default_value_t = 2)]
    pub room_repeats: usize,
    /// Paging phase: messages in the generated history.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub page_messages: u64,
    /// Paging phase: rooms the generated messages are spread over.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub page_rooms: u64,
    /// Paging phase: page requests measured for each number of `--page-clients`.
    #[arg(long, default_value_t = 20_000)]
    pub page_requests: usize,
    /// Paging phase: connections asking at once, one request at a time each; several
    /// numbers (comma-separated) are measured one after the other.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 8])]
    pub page_clients: Vec<usize>,
    /// Paging phase: messages per page.
    #[arg(long, default_value_t = 50)]
    pub page_limit: u64,
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
    /// TLS phase: rounds, each measuring fan-out and resumes over plaintext and over
    /// TLS (alternating which goes first).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub tls_rounds: u32,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Cluster phase: the NATS server binary to start (with JetStream).
    #[arg(long, default_value = "nats-server", value_name = "PATH")]
    pub nats_server_bin: String,
    /// Cluster phase: accounts registered to time registration.
    #[arg(long, default_value_t = 200)]
    pub cluster_registrations: usize,
}

/// A strictly positive, finite number (seconds or a rate).
fn positive_number(text: &str) -> std::result::Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("`{text}` is not a positive number")),
    }
}

/// State shared by the phases of one run against one server: where it is, the clock
/// every stamp is read from, the accounts created so far, and the summary being built.
pub struct Bench {
    /// Which server this is, in front of every line when two are compared ("" alone).
    pub label: &'static str,
    /// Whether the server takes `resume` (the reference server does not, unless
    /// `--reference-resumes`).
    pub resumes: bool,
    pub opts: Options,
    /// Where the phases connect (plain TCP, except inside the tls phase).
    pub endpoint: Endpoint,
    /// The same server's TLS listener, when the benchmark started it with one.
    pub tls: Option<Endpoint>,
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
    /// Named figures of the phases run so far, for the side-by-side table.
    figures: Vec<(String, f64)>,
    /// Loads started so far (names the accounts of the next one).
    loads: usize,
}

impl Bench {
    /// `count` accounts of the pool (created on first use, reused with their tokens
    /// later so a server with slow hashing registers each once).
    pub fn take_accounts(&mut self, count: usize) -> Vec<Account> {
        while self.accounts.len() < count {
            let name = format!("bench_{}_{}", self.run_id, self.accounts.len());
            self.accounts.push(if self.resumes {
                Account::new(name)
            } else {
                Account::without_resume(name)
            });
        }
        self.accounts.drain(..count).collect()
    }

    /// A number for the next load's accounts, new each time.
    pub fn next_load(&mut self) -> usize {
        self.loads += 1;
        self.loads
    }

    /// Puts accounts back in the pool with their fresh tokens.
    pub fn return_accounts(&mut self, accounts: Vec<Account>) {
        let rest = std::mem::replace(&mut self.accounts, accounts);
        self.accounts.extend(rest);
    }

    /// Prints one figure line of a phase.
    pub fn say(&self, phase: Phase, text: impl AsRef<str>) {
        if self.label.is_empty() {
            println!("{}: {}", phase.name(), text.as_ref());
        } else {
            println!("{}[{}]: {}", phase.name(), self.label, text.as_ref());
        }
    }

    /// Records a named figure for the side-by-side comparison.
    pub fn figure(&mut self, name: impl Into<String>, value: f64) {
        if value.is_finite() {
            self.figures.push((name.into(), value));
        }
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

/// Starts (or finds) one server and the state to benchmark it.
fn open_target(
    opts: &Options,
    kind: ServerKind,
    label: &'static str,
) -> Result<(Option<ServerProcess>, Bench)> {
    let (binary, target, pid) = match kind {
        ServerKind::Echochat => (
            opts.target.is_none().then(|| opts.server_bin.clone()),
            opts.target.as_deref(),
            opts.server_pid,
        ),
        ServerKind::Reference => (
            opts.reference_bin.clone().map(Some),
            opts.compare.as_deref(),
            opts.compare_pid,
        ),
    };
    let launch = match binary {
        Some(path) => Some(ServerLaunch {
            kind,
            binary: match path {
                Some(path) => path,
                None => server::sibling_server_binary()?,
            },
            pbkdf2_rounds: Some(BENCH_PBKDF2_ROUNDS),
            extra_args: opts.server_arg.clone(),
            tls: kind == ServerKind::Echochat && opts.phase.contains(&Phase::Tls),
        }),
        None => None,
    };
    // Owned by the caller so it is stopped however the run ends.
    let (server, addr, server_pid) = match &launch {
        Some(launch) => {
            let server = ServerProcess::start(launch, label)?;
            let (addr, pid) = (server.addr, server.pid());
            (Some(server), addr, Some(pid))
        }
        None => (None, loopback_target(target.unwrap_or_default())?, pid),
    };
    match &launch {
        Some(launch) if kind == ServerKind::Echochat => println!(
            "echochat-bench: started {} (pid {}) at {addr}, --pbkdf2-rounds {BENCH_PBKDF2_ROUNDS}, limits off",
            launch.binary.display(),
            server_pid.unwrap_or_default()
        ),
        Some(launch) => println!(
            "echochat-bench: started the reference server {} (pid {}) at {addr}",
            launch.binary.display(),
            server_pid.unwrap_or_default()
        ),
        None => println!("echochat-bench: target {addr}"),
    }
    let tls = match server.as_ref().and_then(|s| s.tls.clone()) {
        Some((tls_addr, fingerprint)) => {
            println!("echochat-bench: TLS at {tls_addr} too, certificate {fingerprint}");
            Some(Endpoint::tls(tls_addr, fingerprint)?)
        }
        None => None,
    };
    let bench = Bench {
        label,
        resumes: kind == ServerKind::Echochat || opts.reference_resumes,
        opts: opts.clone(),
        endpoint: Endpoint::plain(addr),
        tls,
        server_pid,
        // The storm phase starts a second echochat server: never a reference one.
        launch: launch.filter(|l| l.kind == ServerKind::Echochat),
        clock: Instant::now(),
        run_id: run_id(),
        accounts: Vec::new(),
        summary: Vec::new(),
        figures: Vec::new(),
        loads: 0,
    };
    Ok((server, bench))
}

/// Runs one phase; a failure is printed and summarised, and reported as `false`.
async fn run_phase(bench: &mut Bench, phase: Phase) -> bool {
    let result = match phase {
        Phase::Fanout => fanout::run_fanout(bench).await,
        Phase::Latency => fanout::run_latency(bench).await,
        Phase::Rooms => rooms::run(bench).await,
        Phase::Resume => resume::run(bench).await,
        Phase::Paging => paging::run(bench).await,
        Phase::Memory => memory::run(bench).await,
        Phase::Storm => storm::run(bench).await,
        Phase::Tls => tls::run(bench).await,
        Phase::Cluster => cluster::run(bench).await,
    };
    match result {
        Ok(()) => true,
        Err(e) => {
            bench.say(phase, format!("FAILED: {e}"));
            bench.summarize(format!("{:<38} FAILED: {e}", phase.name()));
            false
        }
    }
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
    let comparing = opts.reference_bin.is_some() || opts.compare.is_some();
    println!(
        "echochat-bench: {} cores, load generator on the same machine ({} worker threads), \
         open-file limit {fd_limit}, load average {}",
        cores,
        opts.threads,
        load_average()
    );
    let (server, mut bench) = open_target(
        &opts,
        ServerKind::Echochat,
        if comparing { "echochat" } else { "" },
    )?;
    let all_ok = if comparing {
        let (reference_server, reference) = open_target(&opts, ServerKind::Reference, "reference")?;
        let ok = compare(&mut bench, reference).await;
        drop(reference_server);
        ok
    } else {
        let mut ok = true;
        for phase in Phase::all().into_iter().chain([Phase::Cluster]) {
            if opts.phase.contains(&phase) {
                ok &= run_phase(&mut bench, phase).await;
            }
        }
        ok
    };
    println!(
        "summary{} ({cores} cores, load generator on the same machine, {} clients, {} senders, {}-byte texts):",
        if comparing { " of echochat, round by round" } else { "" },
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

/// Named figures of one round: echochat's, then the reference's.
type RoundFigures = (Vec<(String, f64)>, Vec<(String, f64)>);

/// Phases that both servers can run.
const COMPARABLE: [Phase; 3] = [Phase::Fanout, Phase::Latency, Phase::Resume];

/// The side-by-side run: every comparable phase on both servers, round after round,
/// then the phases only echochat can run, then the table of figures and ratios.
async fn compare(echochat: &mut Bench, mut reference: Bench) -> bool {
    let rounds = echochat.opts.rounds.unwrap_or(3) as usize;
    let phases: Vec<Phase> = COMPARABLE
        .into_iter()
        .filter(|p| echochat.opts.phase.contains(p))
        .collect();
    let mut ok = true;
    let mut figures: Vec<RoundFigures> = Vec::new();
    for round in 0..rounds {
        println!(
            "round {}/{rounds} (load average {})",
            round + 1,
            load_average()
        );
        for &phase in &phases {
            // Alternate who goes first, so a slow stretch of the machine hits both.
            if round % 2 == 0 {
                ok &= run_phase(echochat, phase).await;
                ok &= run_phase(&mut reference, phase).await;
            } else {
                ok &= run_phase(&mut reference, phase).await;
                ok &= run_phase(echochat, phase).await;
            }
        }
        figures.push((
            std::mem::take(&mut echochat.figures),
            std::mem::take(&mut reference.figures),
        ));
    }
    for phase in Phase::all() {
        if echochat.opts.phase.contains(&phase) && !COMPARABLE.contains(&phase) {
            ok &= run_phase(echochat, phase).await;
        }
    }
    print_comparison(&figures);
    ok
}

/// The median of some values (the mean of the middle two for an even count).
fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// Each figure's median for both servers, and the ratio echochat / reference per round
/// and its median.
fn print_comparison(rounds: &[RoundFigures]) {
    let find =
        |list: &[(String, f64)], name: &str| list.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    let mut names: Vec<&str> = Vec::new();
    for (ours, _) in rounds {
        for (name, _) in ours {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
    }
    println!(
        "comparison over {} rounds: median echochat, median reference, ratio echochat/reference \
         per round [median]",
        rounds.len()
    );
    for name in names {
        let mut ours: Vec<f64> = rounds.iter().filter_map(|(o, _)| find(o, name)).collect();
        let mut theirs: Vec<f64> = rounds.iter().filter_map(|(_, t)| find(t, name)).collect();
        let mut ratios: Vec<f64> = rounds
            .iter()
            .filter_map(|(o, t)| Some(find(o, name)? / find(t, name)?))
            .filter(|r| r.is_finite())
            .collect();
        let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        let show = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        println!(
            "  {name:<40} {:>12} {:>12}   {} [{}]",
            show(median(&mut ours)),
            show(median(&mut theirs)),
            shown.join(" "),
            median(&mut ratios).map_or("-".to_string(), |r| format!("{r:.2}"))
        );
    }
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

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }
}
