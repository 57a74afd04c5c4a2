//! The cluster phase (`--phase cluster`): the same server in cluster mode (SPEC §11),
//! measured beside the single server this run started.
//!
//! It starts `nats-server -js` (`--nats-server-bin`) on a free loopback port and two
//! echochat nodes on it, then measures, on the single server and on the cluster with
//! the same parameters:
//!
//! - registration: `--cluster-registrations` new accounts, 16 at a time (connect,
//!   `welcome`, `register`, `auth_ok` + `history`), alternating between the nodes;
//! - resume: `--resume-tasks` tasks reconnecting in a loop, each resume on the node
//!   the previous one was not on (a token issued by one node, spent on the other);
//! - fan-out: `--clients` clients split between the nodes (every other one), senders
//!   too, `--window` messages in flight each: deliveries/s and latency at the peak;
//! - cross-node latency at the first `--rate`: the senders on one node, every other
//!   client on the other, so all but the senders' own deliveries cross nodes.
//!
//! The CPU of each node and of NATS is reported for the fan-out, to say where the time
//! goes (everything shares the machine's cores with the load generator).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use crate::conn::{open_sessions, timed_session, Account, Conn, Endpoint};
use crate::error::{within, BenchError, Result};
use crate::load::{measure, new_histogram, ChatLoad, SendMode, CONNECT_PARALLELISM, SETTLE};
use crate::server::{CpuMark, ServerLaunch, ServerProcess};
use crate::{percentiles, percentiles_short, seconds, Bench, Phase};

/// Registrations in flight at once.
const REGISTER_PARALLELISM: usize = 16;
/// Time allowed for any set-up step.
const SETUP_LIMIT: Duration = Duration::from_secs(300);
/// How long NATS may take to accept connections.
const NATS_READY: Duration = Duration::from_secs(20);

/// A `nats-server -js` this phase started; killed (and its store removed) on drop.
struct Nats {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Nats {
    fn start(binary: &str) -> Result<Nats> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| BenchError::io("find a free port for NATS", e))?
            .port();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!(
            "echochat-bench-nats-{}-{nanos}",
            std::process::id()
        ));
        let mut command = Command::new(binary);
        command
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        crate::server::die_with_parent(&mut command);
        let child = command.spawn().map_err(|e| {
            BenchError::Server(format!(
                "cannot start {binary} ({e}): the cluster phase needs nats-server \
                 (Debian package nats-server, or --nats-server-bin)"
            ))
        })?;
        let nats = Nats { child, port, dir };
        let deadline = Instant::now() + NATS_READY;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(BenchError::Server(format!(
                    "nats-server did not listen on port {port} within {NATS_READY:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(nats)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where a figure was measured.
#[derive(Clone, Copy)]
enum Where {
    Single,
    Cluster,
}

impl Where {
    fn name(self) -> &'static str {
        match self {
            Where::Single => "single node",
            Where::Cluster => "cluster of 2",
        }
    }
}

/// The phase. See the module documentation.
pub async fn run(bench: &mut Bench) -> Result<()> {
    let phase = Phase::Cluster;
    let Some(launch) = bench.launch.clone() else {
        return Err(BenchError::Usage(
            "the cluster phase starts its own nodes: it cannot run with --target".into(),
        ));
    };
    let nats = Nats::start(&bench.opts.nats_server_bin)?;
    let node = |label: &str| {
        let mut launch: ServerLaunch = launch.clone();
        launch.extra_args.extend(["--nats".to_string(), nats.url()]);
        ServerProcess::start(&launch, label)
    };
    let (a, b) = (node("node-a")?, node("node-b")?);
    bench.say(
        phase,
        format!(
            "nats-server (pid {}) at {}; nodes at {} (pid {}) and {} (pid {})",
            nats.child.id(),
            nats.url(),
            a.addr,
            a.pid(),
            b.addr,
            b.pid()
        ),
    );
    let single = [bench.endpoint.addr];
    let pair = [a.addr, b.addr];

    // Registration and resume.
    let count = bench.opts.cluster_registrations.max(1);
    let mut pools = Vec::new();
    for (place, nodes) in [(Where::Single, &single[..]), (Where::Cluster, &pair[..])] {
        let prefix = format!("bc_{}_{}", bench.run_id, pools.len());
        let (rate, histogram, accounts) = register(nodes, &prefix, count).await?;
        report(
            bench,
            place,
            "register",
            format!("{rate:.0} registrations/s, {}", percentiles(&histogram)),
            &histogram,
        );
        bench.summarize(format!(
            "{:<38} {rate:.0}",
            format!("{} registrations/s", place.name())
        ));
        pools.push(accounts);
    }
    for (place, nodes) in [(Where::Single, &single[..]), (Where::Cluster, &pair[..])] {
        let accounts = pools.remove(0);
        let (rate, histogram) = resume(bench, nodes, accounts).await?;
        report(
            bench,
            place,
            "resume",
            format!("{rate:.0} resumes/s, {}", percentiles(&histogram)),
            &histogram,
        );
        bench.summarize(format!(
            "{:<38} {rate:.0}",
            format!("{} resumes/s", place.name())
        ));
    }

    // Fan-out and cross-node latency.
    let window = SendMode::Window(bench.opts.window);
    for (place, nodes) in [(Where::Single, &single[..]), (Where::Cluster, &pair[..])] {
        let pids = match place {
            Where::Single => vec![("server", bench.server_pid)],
            Where::Cluster => vec![
                ("node a", Some(a.pid())),
                ("node b", Some(b.pid())),
                ("nats", Some(nats.child.id())),
            ],
        };
        let (deliveries, histogram, cpu) = load(bench, nodes, false, window, &pids).await?;
        report(
            bench,
            place,
            "fanout",
            format!(
                "{deliveries:.0} deliveries/s; latency at peak {}; CPU {cpu}",
                percentiles(&histogram)
            ),
            &histogram,
        );
        bench.summarize(format!(
            "{:<38} {deliveries:.0}",
            format!("{} fanout deliveries/s", place.name())
        ));
        bench.figure(format!("{} fanout deliveries/s", place.name()), deliveries);
    }
    let rate = bench.opts.rate.first().copied().unwrap_or(500.0);
    for (place, nodes) in [(Where::Single, &single[..]), (Where::Cluster, &pair[..])] {
        let (_, histogram, _) = load(bench, nodes, true, SendMode::Rate(rate), &[]).await?;
        report(
            bench,
            place,
            &format!("latency @{rate} msg/s"),
            percentiles(&histogram),
            &histogram,
        );
    }
    drop((a, b));
    drop(nats);
    Ok(())
}

/// Prints a figure line and its summary line.
fn report(bench: &mut Bench, place: Where, what: &str, line: String, histogram: &Histogram<u64>) {
    bench.say(Phase::Cluster, format!("{}: {what}: {line}", place.name()));
    bench.summarize(format!(
        "{:<38} {}",
        format!("{} {what} p50/p99/p99.9 us", place.name()),
        percentiles_short(histogram)
    ));
}

/// Registers `count` new accounts, alternating between `nodes`: the rate, the
/// handshake latencies, and the accounts with their tokens.
async fn register(
    nodes: &[SocketAddr],
    prefix: &str,
    count: usize,
) -> Result<(f64, Histogram<u64>, Vec<Account>)> {
    let nodes = nodes.to_vec();
    let prefix = prefix.to_string();
    within(SETUP_LIMIT, "registering", async move {
        let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(REGISTER_PARALLELISM));
        let started = Instant::now();
        let mut set = JoinSet::new();
        for i in 0..count {
            let (semaphore, addr) = (semaphore.clone(), nodes[i % nodes.len()]);
            let account = Account::new(format!("{prefix}_{i}"));
            set.spawn(async move {
                let _permit = semaphore.acquire_owned().await;
                timed_session(&Endpoint::plain(addr), account).await
            });
        }
        let mut histogram = new_histogram();
        let mut accounts = Vec::with_capacity(count);
        while let Some(joined) = set.join_next().await {
            let (took, account) =
                joined.map_err(|e| BenchError::Protocol(format!("task: {e}")))??;
            histogram.saturating_record((took.as_micros() as u64).max(1));
            accounts.push(account);
        }
        let rate = count as f64 / started.elapsed().as_secs_f64();
        Ok((rate, histogram, accounts))
    })
    .await
}

/// `--resume-tasks` tasks resuming in a loop for `--resume-duration`, each on the next
/// of `nodes` every time: the rate and the handshake latencies.
async fn resume(
    bench: &Bench,
    nodes: &[SocketAddr],
    accounts: Vec<Account>,
) -> Result<(f64, Histogram<u64>)> {
    let tasks = bench.opts.resume_tasks.clamp(1, accounts.len());
    let period = seconds(bench.opts.resume_duration);
    let started = Instant::now();
    let deadline = started + period;
    let mut set = JoinSet::new();
    for (k, mut account) in accounts.into_iter().take(tasks).enumerate() {
        let nodes = nodes.to_vec();
        set.spawn(async move {
            let mut histogram = new_histogram();
            let mut turn = k;
            while Instant::now() < deadline {
                turn += 1;
                let (took, fresh) =
                    timed_session(&Endpoint::plain(nodes[turn % nodes.len()]), account).await?;
                account = fresh;
                histogram.saturating_record((took.as_micros() as u64).max(1));
            }
            Ok::<_, BenchError>(histogram)
        });
    }
    within(period + SETUP_LIMIT, "resume tasks", async move {
        let mut histogram = new_histogram();
        while let Some(joined) = set.join_next().await {
            let part = joined.map_err(|e| BenchError::Protocol(format!("task: {e}")))??;
            let _ = histogram.add(&part);
        }
        let rate = histogram.len() as f64 / started.elapsed().as_secs_f64();
        Ok((rate, histogram))
    })
    .await
}

/// Runs a chat load of `--clients` clients over `nodes`: every other client on the
/// other node (senders too), or with `split`, the senders on the first node and every
/// other client on the last. Returns deliveries/s, the latencies, and the CPU each of
/// `pids` used meanwhile.
async fn load(
    bench: &mut Bench,
    nodes: &[SocketAddr],
    split: bool,
    mode: SendMode,
    pids: &[(&str, Option<u32>)],
) -> Result<(f64, Histogram<u64>, String)> {
    let clients = bench.opts.clients.max(2);
    let senders = bench.opts.senders.clamp(1, clients - 1);
    let load_id = bench.next_load();
    let names: Vec<Account> = (0..clients)
        .map(|i| Account::new(format!("bl_{}_{load_id}_{i}", bench.run_id)))
        .collect();
    let place = |i: usize| -> usize {
        if split {
            if i < senders {
                0
            } else {
                nodes.len() - 1
            }
        } else {
            i % nodes.len()
        }
    };
    // Each node's share, opened there, then put back in client order.
    let mut conns: Vec<Option<Conn>> = (0..clients).map(|_| None).collect();
    for (n, addr) in nodes.iter().enumerate() {
        let mine: Vec<usize> = (0..clients).filter(|i| place(*i) == n).collect();
        let accounts = mine.iter().map(|i| names[*i].clone()).collect();
        let (opened, _) = open_sessions(
            &Endpoint::plain(*addr),
            accounts,
            CONNECT_PARALLELISM,
            SETUP_LIMIT,
        )
        .await?;
        for (i, conn) in mine.into_iter().zip(opened) {
            conns[i] = Some(conn);
        }
    }
    let conns: Vec<Conn> = conns.into_iter().flatten().collect();
    let load = ChatLoad::start(conns, senders, mode, bench.opts.size, bench.clock);
    tokio::time::sleep(seconds(bench.opts.warmup)).await;
    let marks: Vec<(&str, CpuMark)> = pids
        .iter()
        .map(|(name, pid)| (*name, CpuMark::now(*pid)))
        .collect();
    let (counters, elapsed, histogram) = measure(&load, seconds(bench.opts.duration)).await;
    let cpu: Vec<String> = marks
        .iter()
        .map(|(name, mark)| {
            let usage = mark.usage();
            match usage.server {
                Some(seconds) => format!("{name} {:.2} cores", seconds / usage.wall),
                None => format!("{name} unknown"),
            }
        })
        .collect();
    load.stop().await;
    tokio::time::sleep(SETTLE).await;
    if counters.errors > 0 || counters.lost > 0 {
        bench.say(
            Phase::Cluster,
            format!(
                "WARNING: {} error frames, {} connections closed by the server",
                counters.errors, counters.lost
            ),
        );
    }
    let deliveries = counters.deliveries as f64 / elapsed.as_secs_f64();
    Ok((deliveries, histogram, cpu.join(", ")))
}
