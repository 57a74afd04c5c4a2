//! Smoke test of the load generator: a tiny run of every phase but the login storm
//! (which needs seconds of PBKDF2 per account at default rounds) against the debug
//! server built next to it. It checks that the bench runs to the end and prints its
//! figures, not how fast anything is.
//!
//! The server binary belongs to the `echochat` package: `cargo test` at the workspace
//! root builds it into the same folder as the bench (`cargo test -p echochat-bench`
//! alone does not, and this test then says so).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The whole run must finish well within this, or the bench is killed and the test fails.
const LIMIT: Duration = Duration::from_secs(50);

#[test]
fn bench_runs_every_light_phase_and_prints_figures() {
    let bench = std::path::Path::new(env!("CARGO_BIN_EXE_echochat-bench"));
    let server = bench.with_file_name("echochat-server");
    assert!(
        server.is_file(),
        "no {} next to the bench: run `cargo test` at the workspace root, which builds it",
        server.display()
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_echochat-bench"))
        .args(["--clients", "5", "--senders", "2", "--window", "4"])
        .args(["--duration", "1", "--warmup", "0.3", "--rate", "50"])
        .args(["--resume-tasks", "4", "--resume-duration", "0.5"])
        .args(["--idle-conns", "20", "--idle-accounts", "4"])
        .args([
            "--rooms",
            "2",
            "--active-rooms",
            "1",
            "--others-online",
            "1",
        ])
        .args(["--room-rate", "50", "--room-repeats", "1"])
        .args(["--page-messages", "3000", "--page-rooms", "10"])
        .args(["--page-requests", "40", "--page-clients", "1,2"])
        .args(["--tls-rounds", "1"])
        .args(["--phase", "fanout,latency,rooms,resume,paging,memory,tls"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start echochat-bench");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll echochat-bench") {
            break status;
        }
        if started.elapsed() > LIMIT {
            // The bench's server dies with it (parent-death signal), so this leaves nothing.
            let _ = child.kill();
            let _ = child.wait();
            panic!("echochat-bench did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .expect("stdout piped")
        .read_to_string(&mut stdout)
        .expect("read stdout");
    child
        .stderr
        .take()
        .expect("stderr piped")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert!(
        status.success(),
        "echochat-bench failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let has_line = |prefix: &str, part: &str| {
        stdout
            .lines()
            .any(|line| line.starts_with(prefix) && line.contains(part))
    };
    for (prefix, part) in [
        ("fanout: ", "deliveries/s"),
        ("fanout: ", "latency at peak: p50"),
        ("latency: ", "achieved"),
        ("latency: ", "p99.9"),
        ("resume: ", "resumes/s"),
        ("memory: ", "KiB per connection"),
        ("rooms: ", "deliveries/s"),
        ("rooms: ", "server CPU per room delivery"),
        ("paging: ", "started in"),
        ("paging: ", "page latency p50"),
        ("echochat-bench: ", "TLS at"),
        ("tls: ", "over TLS"),
        ("tls: ", "fanout deliveries/s"),
        ("tls: ", "resumes/s"),
        ("summary", ""),
        ("  fanout deliveries/s", ""),
        ("  resumes/s", ""),
        ("  memory KiB/connection", ""),
        ("  tls fanout deliveries/s", "plaintext"),
    ] {
        assert!(
            has_line(prefix, part),
            "no `{prefix}...{part}` line in:\n{stdout}\nstderr:\n{stderr}"
        );
    }
    assert!(!stdout.contains("FAILED"), "a phase failed:\n{stdout}");
}
