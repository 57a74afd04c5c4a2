//! The client against a server that misbehaves: a fake server (a thread writing raw
//! frames) sends escape sequences in every string it can, frames too large or
//! malformed, and drops connections right after letting them in.

mod client_support;

use std::thread;
use std::time::{Duration, Instant};

use client_support::{client_args, run_script, FakeServer, Tty};
use serde_json::json;

/// A string that retitles the window, clears the screen and draws a fake prompt, with
/// bidi overrides, a line separator and zero-width characters for good measure.
const HOSTILE: &str =
    "\u{1b}]0;pwned\u{7}\u{1b}[2J\u{1b}[HPassword: \u{202e}evil\u{2028}x\u{200b}y\u{2066}z\u{feff}";

/// What must never reach the terminal from a server string.
fn assert_defused(raw: &str) {
    for bad in [
        "\u{1b}]0;pwned",
        "\u{1b}[2J",
        "\u{202e}",
        "\u{2028}",
        "\u{200b}",
        "\u{2066}",
        "\u{feff}",
    ] {
        assert!(!raw.contains(bad), "{bad:?} reached the terminal: {raw:?}");
    }
}

fn token_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    (dir, path)
}

#[test]
fn a_hostile_known_name_is_escaped_in_the_name_prompt() {
    let server = FakeServer::start(|_, mut conn| {
        conn.welcome(Some(HOSTILE));
        conn.hold();
    });
    let (_dir, tokens) = token_file();
    let mut tty = Tty::spawn(&client_args(server.port(), &tokens, &[]), &[]);
    tty.expect("Name [");
    thread::sleep(Duration::from_millis(300));
    assert_defused(&tty.raw());
    assert!(tty.text().contains("\\u{1b}]0;pwned"), "{}", tty.text());
}

#[test]
fn a_hostile_error_during_login_is_escaped() {
    let server = FakeServer::start(|_, mut conn| {
        conn.welcome(None);
        while let Some(request) = conn.recv() {
            if request["type"] == "login" {
                conn.send(&json!({"type":"error","code":"internal","message":HOSTILE}));
            }
        }
    });
    let (_dir, tokens) = token_file();
    let mut tty = Tty::spawn(&client_args(server.port(), &tokens, &[]), &[]);
    tty.expect("Name: ");
    tty.send("zed\r");
    tty.expect("Password: ");
    tty.send("password1\r");
    tty.wait_exit();
    assert_defused(&tty.raw());
    assert!(tty.text().contains("pwned"), "{}", tty.text());
}

/// A fake server that lets anyone in as `zed`, sends `after_login` and keeps serving.
fn letting_in(after_login: serde_json::Value) -> FakeServer {
    FakeServer::start(move |_, mut conn| {
        conn.welcome(None);
        let Some(request) = conn.recv() else { return };
        if matches!(
            request["type"].as_str(),
            Some("login" | "resume" | "register")
        ) {
            conn.auth_ok("zed");
            conn.send(&json!({"type":"history","messages":[]}));
            conn.send(&after_login);
            conn.serve_as("zed");
        }
    })
}

#[test]
fn hostile_kicked_shutdown_and_chat_texts_are_escaped_on_a_terminal() {
    for frame in [
        json!({"type":"message","id":1,"from":HOSTILE,"text":HOSTILE,"ts":client_support::now_ms()}),
        json!({"type":"kicked","message":HOSTILE}),
        json!({"type":"shutdown","message":HOSTILE}),
        json!({"type":"joined","name":HOSTILE}),
        json!({"type":"who","users":[HOSTILE]}),
    ] {
        let server = letting_in(frame.clone());
        let (_dir, tokens) = token_file();
        let mut tty = Tty::spawn(
            &client_args(server.port(), &tokens, &["--name", "zed"]),
            &[],
        );
        tty.expect("Password: ");
        tty.send("password1\r");
        tty.expect("pwned");
        thread::sleep(Duration::from_millis(300));
        assert_defused(&tty.raw());
        if tty.running() {
            tty.send("/quit\r");
        }
        tty.wait_exit();
        assert_defused(&tty.raw());
    }
}

#[test]
fn hostile_texts_are_escaped_in_scripted_mode() {
    for frame in [
        json!({"type":"message","id":1,"from":"eve","text":HOSTILE,"ts":client_support::now_ms()}),
        json!({"type":"kicked","message":HOSTILE}),
        json!({"type":"shutdown","message":HOSTILE}),
    ] {
        let server = letting_in(frame);
        let (_dir, tokens) = token_file();
        let run = run_script(
            &client_args(server.port(), &tokens, &["--name", "zed"]),
            &[],
            "password1\nhello\n",
        );
        assert_defused(&run.stdout);
        assert_defused(&run.stderr);
        assert!(
            run.stdout.contains("pwned") || run.stderr.contains("pwned"),
            "{run:#?}"
        );
    }
}

#[test]
fn an_old_message_shows_its_date() {
    // 2020-06-15 12:00:00 UTC: a date in every time zone that is not today's.
    let old = 1_592_222_400_000u64;
    let server = FakeServer::start(move |_, mut conn| {
        conn.welcome(None);
        let Some(_login) = conn.recv() else { return };
        conn.auth_ok("zed");
        conn.send(&json!({"type":"history","messages":[
            {"type":"message","id":1,"from":"amy","text":"long ago","ts":old}
        ]}));
        conn.serve_as("zed");
    });
    let (_dir, tokens) = token_file();
    let run = run_script(
        &client_args(server.port(), &tokens, &["--name", "zed"]),
        &[],
        "password1\n",
    );
    run.assert_success();
    assert!(
        run.stdout.contains("[2020-06-1") && run.stdout.contains("] amy: long ago"),
        "{run:#?}"
    );
}

/// Lets `zed` in, then sends `bytes` raw (before echoing anything).
fn letting_in_then_raw(bytes: Vec<u8>) -> FakeServer {
    FakeServer::start(move |_, mut conn| {
        conn.welcome(None);
        let Some(_login) = conn.recv() else { return };
        conn.auth_ok("zed");
        conn.send(&json!({"type":"history","messages":[]}));
        conn.send_raw(&bytes);
        conn.hold();
    })
}

#[test]
fn an_oversize_frame_ends_a_script_with_one_clear_line() {
    let header = (17u32 * 1024 * 1024).to_be_bytes().to_vec();
    let server = letting_in_then_raw(header);
    let (_dir, tokens) = token_file();
    let started = Instant::now();
    let run = run_script(
        &client_args(server.port(), &tokens, &["--name", "zed"]),
        &[],
        "password1\nnever echoed\n",
    );
    assert_ne!(run.code, Some(0), "{run:#?}");
    assert!(run.stderr.contains("16 MiB"), "{run:#?}");
    assert_eq!(run.stderr.trim().lines().count(), 1, "{run:#?}");
    assert_eq!(server.accepted().len(), 1, "no reconnection: {run:#?}");
    assert!(started.elapsed() < Duration::from_secs(20), "{run:#?}");
}

#[test]
fn a_malformed_frame_ends_a_script_with_one_clear_line() {
    for payload in [
        &b"this is not json"[..],
        b"[1,2]",
        b"{\"type\":\"message\",\"id\":\"x\"}",
    ] {
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(payload);
        let server = letting_in_then_raw(frame);
        let (_dir, tokens) = token_file();
        let run = run_script(
            &client_args(server.port(), &tokens, &["--name", "zed"]),
            &[],
            "password1\nnever echoed\n",
        );
        assert_ne!(run.code, Some(0), "{run:#?}");
        assert!(run.stderr.contains("malformed"), "{run:#?}");
        assert_eq!(run.stderr.trim().lines().count(), 1, "{run:#?}");
    }
}

#[test]
fn an_unknown_frame_type_is_ignored() {
    let server = letting_in(json!({"type":"something_new","x":1}));
    let (_dir, tokens) = token_file();
    let run = run_script(
        &client_args(server.port(), &tokens, &["--name", "zed"]),
        &[],
        "password1\nstill fine\n",
    );
    run.assert_success();
    assert!(run.stdout.contains("zed: still fine"), "{run:#?}");
}

#[test]
fn a_terminal_reports_an_oversize_frame_and_reconnects_with_backoff() {
    // Every connection is let in and then gets a frame over the limit: reconnecting
    // must slow down even though each resume succeeds.
    let header = (17u32 * 1024 * 1024).to_be_bytes().to_vec();
    let server = letting_in_then_raw(header);
    let (_dir, tokens) = token_file();
    let mut tty = Tty::spawn(
        &client_args(server.port(), &tokens, &["--name", "zed"]),
        &[],
    );
    tty.expect("Password: ");
    tty.send("password1\r");
    tty.expect("16 MiB");
    thread::sleep(Duration::from_secs(8));
    let times = server.accepted();
    tty.send("/quit\r");
    tty.wait_exit();
    assert!(
        times.len() >= 3,
        "it should keep trying: {} connections",
        times.len()
    );
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(900)),
        "faster than once a second: {gaps:?}"
    );
    assert!(
        gaps.last().unwrap() > &(gaps[0] + Duration::from_millis(500)),
        "the backoff was reset: {gaps:?}"
    );
}
