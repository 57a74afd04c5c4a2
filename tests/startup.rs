//! Start-up and the process contract of SPEC §1: the first stdout line, port choice,
//! no prompt without a terminal, service messages in the log file only, signals.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn first_stdout_line_is_exactly_listening_on_the_bound_address() {
    let server = TestServer::start();
    assert_eq!(
        server.first_line(),
        format!("listening on 127.0.0.1:{}", server.port())
    );
    assert_ne!(
        server.port(),
        0,
        "port 0 must be resolved to the bound port"
    );
    let mut c = server.connect();
    c.welcome();
}

/// Today's date in UTC as `YYYY-MM-DD`.
fn utc_date_today() -> String {
    let days = (now_ms() / 86_400_000) as i64;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Binds a free port and returns the listener holding it.
fn hold_a_port() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port")
}

#[test]
fn a_busy_port_moves_on_to_the_next_ones() {
    let held = hold_a_port();
    let busy = held.local_addr().unwrap().port();
    let busy_arg = busy.to_string();
    let server = TestServer::start_with(&["--port", &busy_arg]);
    assert!(
        server.port() > busy && u32::from(server.port()) <= u32::from(busy) + 99,
        "port {busy} is busy; server chose {}",
        server.port()
    );
    assert_eq!(
        server.first_line(),
        format!("listening on 127.0.0.1:{}", server.port())
    );
    server.connect_greeted().ping();
    // The move is said in the log, not on the console.
    let line = server.wait_log_line(RECV_TIMEOUT, |l| l.contains("busy"));
    assert!(
        line.contains(&format!("port {busy}")) && line.contains(&server.port().to_string()),
        "{line}"
    );
}

#[test]
fn host_takes_a_name_and_says_which_address_it_bound() {
    let server = TestServer::start_with(&["--host", "localhost"]);
    assert_eq!(
        server.first_line(),
        format!("listening on 127.0.0.1:{}", server.port())
    );
    server.connect_greeted().ping();
    let line = server.wait_log_line(RECV_TIMEOUT, |l| l.contains("resolved"));
    assert!(
        line.contains("localhost") && line.contains("127.0.0.1"),
        "{line}"
    );

    let dir = tempfile::tempdir().unwrap();
    let out = run_to_exit(
        dir.path(),
        &["--host", "no-such-host.invalid"],
        Duration::from_secs(30),
    );
    assert!(matches!(out.status, Some(s) if !s.success()));
    let stderr = out.stderr.trim();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no-such-host.invalid"), "{stderr}");
}

#[test]
fn all_hundred_ports_busy_exits_non_zero() {
    // Find 100 consecutive free ports below the ephemeral range (busy with the
    // connections of every other test) and hold them all.
    let mut held = Vec::new();
    let mut base = 0u16;
    let seed = u32::from(std::process::id() as u16);
    for attempt in 0..200u32 {
        held.clear();
        base = (10_000 + (seed * 7919 + attempt * 397) % 22_000) as u16;
        let ok = (0..100u16).all(
            |i| match std::net::TcpListener::bind(("127.0.0.1", base + i)) {
                Ok(l) => {
                    held.push(l);
                    true
                }
                Err(_) => false,
            },
        );
        if ok {
            break;
        }
    }
    assert_eq!(held.len(), 100, "could not hold 100 consecutive ports");
    let dir = tempfile::tempdir().unwrap();
    let port = base.to_string();
    let out = run_to_exit(dir.path(), &["--port", &port], Duration::from_secs(60));
    let status = out
        .status
        .expect("server must give up when 100 ports are busy");
    assert!(!status.success(), "{status:?}");
    assert!(!out.stdout.contains("listening on"), "{:?}", out.stdout);
    assert!(!out.stderr.trim().is_empty(), "a clear message on stderr");
}

#[test]
fn no_port_prompt_when_stdin_is_not_a_terminal() {
    // No --port and no ECHOCHAT_PORT: a terminal would be asked; a pipe never is.
    let server = TestServer::launch(Launch {
        omit: &["--port"],
        ..Launch::default()
    });
    assert!(
        (9090..9190).contains(&server.port()),
        "default port 9090 (or one of the next 99): {}",
        server.first_line()
    );
    server.connect_greeted().ping();
    let stderr = server.stderr_text();
    assert!(!stderr.contains("Port ["), "prompted on stderr: {stderr:?}");
}

#[test]
fn flags_are_readable_from_environment_variables() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("from-env");
    let state_str = state.to_string_lossy().into_owned();
    let server = TestServer::launch(Launch {
        omit: &["--port", "--state-dir"],
        env: &[
            ("ECHOCHAT_PORT", "0"),
            ("ECHOCHAT_STATE_DIR", &state_str),
            ("ECHOCHAT_HISTORY", "1"),
            ("ECHOCHAT_MAX_FRAME", "200"),
        ],
        ..Launch::default()
    });
    let (mut a, _) = registered(&server, "ann", "secret-pw");
    a.say("one");
    let two = a.say("two");
    let mut b = server.connect_greeted();
    let ok = b.login_full("ann", "secret-pw");
    assert_eq!(ok.messages, vec![two], "ECHOCHAT_HISTORY=1");
    assert!(
        state.join("users.json").is_file(),
        "ECHOCHAT_STATE_DIR used"
    );
    b.send_raw(&201u32.to_be_bytes());
    let frames = b.expect_closed(RECV_TIMEOUT);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(
        frames[0]["code"], "frame_too_large",
        "ECHOCHAT_MAX_FRAME=200"
    );
}

#[test]
fn a_flag_wins_over_its_environment_variable() {
    let server = TestServer::launch(Launch {
        args: &["--max-frame", "2000"],
        env: &[("ECHOCHAT_MAX_FRAME", "100")],
        ..Launch::default()
    });
    let mut c = server.connect_greeted();
    let payload = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(500));
    c.send_payload(payload.as_bytes());
    c.recv_type("pong");
}

#[test]
fn a_bad_flag_value_exits_non_zero_with_a_reason() {
    for args in [
        &["--port", "not-a-port"][..],
        &["--port", "70000"],
        &["--history", "-3"],
        &["--no-such-flag"],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = run_to_exit(dir.path(), args, Duration::from_secs(30));
        let status = out
            .status
            .unwrap_or_else(|| panic!("{args:?}: still running"));
        assert!(!status.success(), "{args:?}: {status:?}");
        assert!(
            !out.stdout.contains("listening on"),
            "{args:?}: {:?}",
            out.stdout
        );
        assert!(!out.stderr.trim().is_empty(), "{args:?}: no reason given");
    }
}

#[test]
fn service_messages_go_to_the_log_file_not_the_console() {
    let mut server = TestServer::start();
    let (mut a, _) = registered(&server, "ann", "secret-pw");
    a.say("hello");
    let mut b = server.connect_greeted();
    b.send(&serde_json::json!({"type":"login","name":"ann","password":"wrong-pw"}));
    assert_eq!(b.expect_auth_error(), "bad_password");
    b.send_payload(b"not json");
    assert_eq!(b.expect_error(), "bad_request");
    drop(b);
    drop(a);
    assert_eq!(
        server.read_stdout_line(QUIET),
        None,
        "stdout after the first line is only admin-command output"
    );
    let failure = server.wait_log_line(RECV_TIMEOUT, |l| l.to_lowercase().contains("fail"));
    assert!(
        failure.contains("127.0.0.1"),
        "failures name the client: {failure:?}"
    );
    let today = utc_date_today();
    let login = server.wait_log_line(RECV_TIMEOUT, |l| l.contains("ann"));
    let connect = server.wait_log_line(RECV_TIMEOUT, |l| {
        l.contains("127.0.0.1") && l.to_lowercase().contains("connect")
    });
    for line in [&login, &connect] {
        assert!(
            line.contains(&today),
            "log line has no UTC date {today}: {line:?}"
        );
        let lower = line.to_lowercase();
        assert!(
            ["info", "warn", "error", "debug"]
                .iter()
                .any(|lvl| lower.contains(lvl)),
            "log line has no level: {line:?}"
        );
    }
}

#[test]
fn log_timestamps_are_utc() {
    let server = TestServer::start();
    registered(&server, "ann", "secret-pw");
    let line = server.wait_log_line(RECV_TIMEOUT, |l| l.contains("ann"));
    // A UTC timestamp names its zone: `Z`, `+00:00` or `UTC`, near the start.
    let head: String = line.chars().take(40).collect();
    assert!(
        head.contains('Z') || head.contains("+00:00") || head.contains("UTC"),
        "timestamp is not marked UTC: {line:?}"
    );
}

fn assert_signal_shuts_down_gracefully(sig: i32) {
    let mut server = TestServer::start();
    let (mut a, _) = registered(&server, "ann", "secret-pw");
    let said = a.say("saved before the signal");
    let mut lurker = server.connect_greeted();
    server.signal(sig);
    for client in [&mut a, &mut lurker] {
        let frames = client.expect_closed(Duration::from_secs(20));
        let last = frames.last().unwrap_or_else(|| panic!("no shutdown frame"));
        assert_eq!(last["type"], "shutdown", "{frames:?}");
        assert!(last["message"].is_string(), "{frames:?}");
    }
    let status = server
        .wait_exit(Duration::from_secs(20))
        .expect("server exits after the signal");
    assert_eq!(status.code(), Some(0), "{status:?}");
    let history = std::fs::read_to_string(server.state_dir().join("history.jsonl")).unwrap();
    assert!(
        history.contains("saved before the signal"),
        "state on disk: {history}"
    );
    assert!(said["id"].is_u64());
}

#[test]
fn sigterm_sends_shutdown_and_exits_zero() {
    assert_signal_shuts_down_gracefully(libc::SIGTERM);
}

#[test]
fn sigint_sends_shutdown_and_exits_zero() {
    assert_signal_shuts_down_gracefully(libc::SIGINT);
}

#[test]
fn sigterm_while_paused_still_exits_zero() {
    let mut server = TestServer::start();
    let (mut a, _) = registered(&server, "ann", "secret-pw");
    server.admin("pause");
    server.expect_stdout("greeting paused", |l| l.trim() == "greeting paused");
    let mut waiting = server.connect();
    waiting.expect_silence(QUIET);
    server.signal(libc::SIGTERM);
    let frames = a.expect_closed(Duration::from_secs(20));
    assert_eq!(frames.last().map(|f| &f["type"]), Some(&"shutdown".into()));
    let frames = waiting.expect_closed(Duration::from_secs(20));
    assert!(
        frames.iter().all(|f| f["type"] == "shutdown"),
        "an ungreeted connection gets at most `shutdown`: {frames:?}"
    );
    let status = server.wait_exit(Duration::from_secs(20)).expect("exit");
    assert_eq!(status.code(), Some(0));
}
