//! The memory phase: what an idle authenticated connection costs the server.
//!
//! Reads the server's resident memory, opens `--idle-conns` connections that
//! authenticate and then sit silent (spread over `--idle-accounts` accounts, each
//! resumed again and again with the fresh token of its previous `auth_ok`), reads it
//! again, and divides. Needs the server's pid: known when the benchmark started it,
//! `--server-pid` otherwise.

use std::time::Duration;

use crate::conn::open_chains;
use crate::error::Result;
use crate::server::rss_kib;
use crate::{Bench, Phase};

/// Time allowed to open all idle connections.
const OPEN_LIMIT: Duration = Duration::from_secs(300);
/// Pause before each reading, so memory freed or allocated just before has settled
/// (token batches written, buffers returned to the allocator).
const SETTLE: Duration = Duration::from_secs(1);

/// Phase 4: KiB of server memory per idle connection.
pub async fn run(bench: &mut Bench) -> Result<()> {
    let phase = Phase::Memory;
    let Some(pid) = bench.server_pid else {
        bench.say(
            phase,
            "skipped: the server's pid is unknown (pass --server-pid with --target)",
        );
        bench.summarize(format!(
            "{:<38} skipped (no --server-pid)",
            "memory KiB/connection"
        ));
        return Ok(());
    };
    let count = bench.opts.idle_conns.max(1);
    let accounts = bench.take_accounts(bench.opts.idle_accounts.clamp(1, count));
    // One connection per account first: registers new accounts, so the measured
    // connections below are all resumes.
    let chains = accounts.len();
    let (first, accounts) = open_chains(&bench.endpoint, accounts, chains, OPEN_LIMIT).await?;
    drop(first);
    tokio::time::sleep(SETTLE).await;
    let before = rss_kib(pid)?;
    let (conns, accounts) = open_chains(&bench.endpoint, accounts, count, OPEN_LIMIT).await?;
    // Keep only the sockets: the benchmark's own buffers are not what is measured.
    let idle: Vec<_> = conns.into_iter().map(|conn| conn.into_idle()).collect();
    tokio::time::sleep(SETTLE).await;
    let during = rss_kib(pid)?;
    let per_conn = during.saturating_sub(before) as f64 / idle.len() as f64;
    bench.say(
        phase,
        format!(
            "server RSS {before} KiB before, {during} KiB with {} idle authenticated connections \
             ({chains} accounts): {per_conn:.1} KiB per connection",
            idle.len()
        ),
    );
    drop(idle);
    bench.return_accounts(accounts);
    tokio::time::sleep(SETTLE).await;
    let after = rss_kib(pid)?;
    bench.say(phase, format!("server RSS {after} KiB after closing them"));
    bench.summarize(format!("{:<38} {per_conn:.1}", "memory KiB/connection"));
    Ok(())
}
