//! The login storm phase: does slow password hashing stall the chat?
//!
//! PBKDF2 at the default 600,000 rounds costs about a tenth of a second of CPU per
//! login. A server that hashes on its chat threads freezes every room while a crowd
//! logs in. This phase starts a second server with default rounds (or uses `--target`
//! as it is), registers the accounts first (slow, not measured), runs a light chat load,
//! and measures the chat's latency before and while `--storm-logins` password logins
//! are in flight at once, and how long the storm takes to clear.

use std::time::{Duration, Instant};

use echochat::protocol::ClientMessage;
use tokio::task::JoinSet;

use crate::conn::{open_chains, open_sessions, Account, Conn, Endpoint, PASSWORD};
use crate::error::{within, BenchError, Result};
use crate::load::{measure, new_histogram, ChatLoad, SendMode};
use crate::server::{CpuMark, ServerProcess};
use crate::{percentiles, seconds, Bench, Phase};

/// Accounts the chat clients share (each registration is slow; connections are not).
const CHAT_ACCOUNTS: usize = 5;
/// Time allowed to register the accounts at default rounds.
const REGISTER_LIMIT: Duration = Duration::from_secs(600);
/// Time allowed for the whole storm of logins.
const STORM_LIMIT: Duration = Duration::from_secs(600);
/// Chat latency measured before the storm, for comparison.
const BASELINE: Duration = Duration::from_secs(2);

/// Phase 5: chat p99 during a storm of slow logins, and the storm's duration.
pub async fn run(bench: &mut Bench) -> Result<()> {
    let phase = Phase::Storm;
    let server = match &bench.launch {
        Some(launch) => {
            let mut launch = launch.clone();
            launch.pbkdf2_rounds = None;
            launch.tls = false;
            let server = ServerProcess::start(&launch, "storm")?;
            bench.say(
                phase,
                format!(
                    "second server (pid {}) at {} with the default PBKDF2 rounds",
                    server.pid(),
                    server.addr
                ),
            );
            Some(server)
        }
        None => {
            bench.say(phase, "using --target with its own PBKDF2 rounds");
            None
        }
    };
    let endpoint = server
        .as_ref()
        .map_or(bench.endpoint.clone(), |s| Endpoint::plain(s.addr));
    let logins = bench.opts.storm_logins.max(1);
    let clients = bench.opts.storm_clients.max(1);
    let senders = bench.opts.senders.clamp(1, clients);

    // Accounts of this phase are its own: the other server does not know the pool's.
    let storm_accounts: Vec<Account> = (0..logins)
        .map(|i| Account::new(format!("bench_{}_s{i}", bench.run_id)))
        .collect();
    let chat_accounts: Vec<Account> = (0..CHAT_ACCOUNTS.min(clients))
        .map(|i| Account::new(format!("bench_{}_c{i}", bench.run_id)))
        .collect();
    let registering = Instant::now();
    let mut all = storm_accounts;
    all.extend(chat_accounts);
    let total = all.len();
    let (conns, mut all) = open_sessions(&endpoint, all, total, REGISTER_LIMIT).await?;
    drop(conns);
    let took = registering.elapsed().as_secs_f64();
    bench.say(
        phase,
        format!(
            "registered {total} accounts in {took:.1} s ({:.0} ms each, end to end)",
            took * 1000.0 / total as f64
        ),
    );
    let chat_accounts = all.split_off(logins);
    let storm_accounts = all;

    let (conns, _) = open_chains(&endpoint, chat_accounts, clients, REGISTER_LIMIT).await?;
    let load = ChatLoad::start(
        conns,
        senders,
        SendMode::Rate(bench.opts.storm_rate),
        bench.opts.size,
        bench.clock,
    );
    tokio::time::sleep(seconds(bench.opts.warmup)).await;
    let (_, _, baseline) = measure(&load, BASELINE).await;
    bench.say(
        phase,
        format!(
            "chat load {clients} clients, {} messages/s; before the storm: {}",
            bench.opts.storm_rate,
            percentiles(&baseline)
        ),
    );

    load.record(true);
    let before = load.counters();
    let cpu = CpuMark::now(server.as_ref().map_or(bench.server_pid, |s| Some(s.pid())));
    let storm_started = Instant::now();
    let storm = storm_logins(&endpoint, storm_accounts).await;
    let storm_took = storm_started.elapsed();
    let cpu = cpu.report();
    let during_counters = load.counters().since(&before);
    load.record(false);
    let during = load.histogram();
    load.stop().await;
    drop(server);
    let login_latency = storm?;

    bench.say(
        phase,
        format!(
            "{logins} password logins at once completed in {:.2} s (per login: {})",
            storm_took.as_secs_f64(),
            percentiles(&login_latency)
        ),
    );
    bench.say(
        phase,
        format!("chat during the storm: {}", percentiles(&during)),
    );
    bench.say(phase, format!("during the storm {cpu}"));
    if during_counters.lost > 0 || during_counters.errors > 0 {
        bench.say(
            phase,
            format!(
                "WARNING: {} error frames, {} chat connections closed",
                during_counters.errors, during_counters.lost
            ),
        );
    }
    let p99 = |h: &hdrhistogram::Histogram<u64>| {
        if h.is_empty() {
            "no samples".to_string()
        } else {
            h.value_at_quantile(0.99).to_string()
        }
    };
    bench.summarize(format!(
        "{:<38} {} (before: {})",
        "storm chat p99 us",
        p99(&during),
        p99(&baseline)
    ));
    bench.summarize(format!(
        "{:<38} {:.2}",
        "storm duration s",
        storm_took.as_secs_f64()
    ));
    Ok(())
}

/// Logs every account in with its password at once; returns each login's time
/// (connect to `history`).
async fn storm_logins(
    endpoint: &Endpoint,
    accounts: Vec<Account>,
) -> Result<hdrhistogram::Histogram<u64>> {
    let mut set = JoinSet::new();
    for account in accounts {
        let endpoint = endpoint.clone();
        set.spawn(async move {
            let started = Instant::now();
            let mut conn = Conn::connect(&endpoint).await?;
            conn.expect_welcome().await?;
            let request = ClientMessage::Login {
                name: account.name.clone(),
                password: PASSWORD.into(),
            };
            match conn.authenticate(&request).await? {
                Ok(_) => Ok(started.elapsed()),
                Err(code) => Err(BenchError::Protocol(format!(
                    "login as {} refused: {code:?}",
                    account.name
                ))),
            }
        });
    }
    within(STORM_LIMIT, "the login storm", async {
        let mut histogram = new_histogram();
        while let Some(joined) = set.join_next().await {
            let took = joined.map_err(|e| BenchError::Protocol(format!("task: {e}")))??;
            histogram.saturating_record((took.as_micros() as u64).max(1));
        }
        Ok(histogram)
    })
    .await
}
