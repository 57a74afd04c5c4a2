//! The connection + resume phase: how fast returning users get back in.
//!
//! `--resume-tasks` tasks each loop for `--resume-duration`: open a new connection,
//! read `welcome`, send `resume` with the account's latest token, read `auth_ok` (whose
//! fresh token the next round uses, since a resume spends its token) and `history`,
//! close. The figure is completed resumes per second, with the handshake latency.

use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::conn::{open_sessions, timed_session};
use crate::error::{within, BenchError, Result};
use crate::load::new_histogram;
use crate::server::CpuMark;
use crate::{percentiles, seconds, Bench, Phase};

/// Time allowed to give every task's account a token before the measurement.
const SETUP_LIMIT: Duration = Duration::from_secs(300);
/// Extra time the last handshakes get after the measured period.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// Phase 3: resumes per second.
pub async fn run(bench: &mut Bench) -> Result<()> {
    let phase = Phase::Resume;
    let tasks = bench.opts.resume_tasks.max(1);
    let period = seconds(bench.opts.resume_duration);
    let how = if bench.resumes {
        "resume"
    } else {
        "login (no resume on this server)"
    };
    bench.say(
        phase,
        format!(
            "{tasks} concurrent tasks, each connect + welcome + {how} + auth_ok + history + close, for {:.1} s",
            period.as_secs_f64()
        ),
    );
    let accounts = bench.take_accounts(tasks);
    // Accounts that never logged in (no earlier phase) get registered and a token here.
    let accounts = if accounts.iter().all(|a| a.token.is_some()) {
        accounts
    } else {
        let (conns, accounts) = open_sessions(&bench.endpoint, accounts, 64, SETUP_LIMIT).await?;
        drop(conns);
        accounts
    };

    let endpoint = bench.endpoint.clone();
    let cpu = CpuMark::now(bench.server_pid);
    let started = Instant::now();
    let deadline = started + period;
    let mut set = JoinSet::new();
    for mut account in accounts {
        let endpoint = endpoint.clone();
        set.spawn(async move {
            let mut histogram = new_histogram();
            let mut done = 0u64;
            let mut failure = None;
            while Instant::now() < deadline {
                match timed_session(&endpoint, account.clone()).await {
                    Ok((took, fresh)) => {
                        account = fresh;
                        done += 1;
                        histogram.saturating_record((took.as_micros() as u64).max(1));
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            (done, histogram, account, failure)
        });
    }
    let collected = within(period + DRAIN_LIMIT, "resume tasks", async {
        let mut total = 0u64;
        let mut histogram = new_histogram();
        let mut accounts = Vec::new();
        let mut failures = Vec::new();
        while let Some(joined) = set.join_next().await {
            let (done, part, account, failure) =
                joined.map_err(|e| BenchError::Protocol(format!("task: {e}")))?;
            total += done;
            let _ = histogram.add(&part);
            accounts.push(account);
            failures.extend(failure);
        }
        Ok((total, histogram, accounts, failures))
    })
    .await?;
    let elapsed = started.elapsed();
    let cpu = cpu.usage();
    let (total, histogram, accounts, failures) = collected;
    bench.return_accounts(accounts);
    let rate = total as f64 / elapsed.as_secs_f64();
    bench.say(
        phase,
        format!(
            "{rate:.0} resumes/s ({total} in {:.2} s)",
            elapsed.as_secs_f64()
        ),
    );
    bench.say(phase, format!("handshake: {}", percentiles(&histogram)));
    bench.say(phase, cpu.to_string());
    if let Some(first) = failures.first() {
        bench.say(
            phase,
            format!(
                "WARNING: {} tasks stopped early, first: {first}",
                failures.len()
            ),
        );
    }
    bench.figure("resumes/s", rate);
    if !histogram.is_empty() {
        bench.figure(
            "resume handshake p99 us",
            histogram.value_at_quantile(0.99) as f64,
        );
    }
    if let Some(server) = cpu.server.filter(|_| total > 0) {
        bench.figure("resume server CPU us/resume", server * 1e6 / total as f64);
    }
    bench.summarize(format!("{:<38} {rate:.0}", "resumes/s"));
    if total == 0 {
        return Err(BenchError::Protocol("no resume completed".into()));
    }
    Ok(())
}
