//! Start-up and the process contract of SPEC §1: the first stdout line, port choice,
//! no prompt without a terminal, service messages in the log file only, signals.

mod common;

use common::*;

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
