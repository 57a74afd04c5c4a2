//! The server on a terminal: without `--port` it asks `Port [9090]: ` on stderr, refuses
//! junk with a one-line reason and asks again, then serves; its console works on the
//! same terminal.

mod common;

use common::*;
use rexpect::reader::Options;
use rexpect::session::spawn_with_options;
use std::process::Command;

#[test]
fn asks_for_the_port_on_a_terminal_and_refuses_junk() {
    let state = tempfile::tempdir().unwrap();
    // A port that was free a moment ago; the server moves on if it is taken since.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(server_bin());
    cmd.args([
        "--host",
        "127.0.0.1",
        "--pbkdf2-rounds",
        "1000",
        "--state-dir",
    ])
    .arg(state.path());
    without_echochat_env(&mut cmd);
    let options = Options::default().timeout_ms(Some(START_TIMEOUT.as_millis() as u64));
    let mut p = spawn_with_options(cmd, options).expect("spawn the server on a pty");

    p.exp_string("Port [9090]: ").unwrap();
    p.send_line("abc").unwrap();
    p.exp_string("not a number").unwrap();
    p.exp_string("Port [9090]: ").unwrap();
    p.send_line("70000").unwrap();
    p.exp_string("out of range").unwrap();
    p.exp_string("Port [9090]: ").unwrap();
    p.send_line(&free.to_string()).unwrap();
    p.exp_string("listening on 127.0.0.1:").unwrap();
    let (_, port) = p.exp_regex(r"[0-9]+").unwrap();
    assert!(port.parse::<u16>().unwrap() >= free, "{port} < {free}");

    p.send_line("users").unwrap();
    p.exp_string("(no users online)").unwrap();
    p.send_line("shutdown").unwrap();
    p.exp_string("shutting down").unwrap();
    p.exp_eof().unwrap();
}
