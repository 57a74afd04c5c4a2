//! The client over TLS (SPEC §9): verification against a CA, pinning by fingerprint
//! in the known-servers file, the question on a terminal, and tokens that never leave
//! TLS. A fake server (rustls over a thread's socket, certificates made by rcgen) lets
//! every case run now; the last tests run against the real server's TLS listener.

mod client_support;
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use client_support::{client_args, run_script, FakeConn, FakeServer, ScriptRun, TestCert, Tty};
use serde_json::{json, Value};

/// A folder for the token file; the known-servers file goes beside it.
struct Files {
    _dir: tempfile::TempDir,
    tokens: PathBuf,
    known: PathBuf,
}

fn files() -> Files {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("echochat").join("tokens.json");
    let known = dir.path().join("echochat").join("known_servers.json");
    Files {
        _dir: dir,
        tokens,
        known,
    }
}

fn known_entries(path: &Path) -> Value {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).expect("the known-servers file is JSON"),
        Err(_) => json!({}),
    }
}

/// Serves `zed` (any authentication succeeds, says are echoed), recording every
/// request it reads.
fn serve(conn: &mut FakeConn, requests: &Mutex<Vec<Value>>) {
    conn.welcome(None);
    let mut id = 0;
    while let Some(request) = conn.recv() {
        requests.lock().unwrap().push(request.clone());
        match request["type"].as_str().unwrap_or("") {
            "login" | "register" | "resume" => {
                conn.auth_ok("zed");
                conn.send(&json!({"type":"history","room":"lobby","messages":[]}));
            }
            "say" => {
                id += 1;
                conn.send(&json!({"type":"message","id":id,"room":"lobby","from":"zed","text":request["text"],"ts":client_support::now_ms()}));
            }
            "ping" => conn.send(&json!({"type":"pong"})),
            "quit" | "logout" => return,
            _ => {}
        }
    }
}

/// A fake server whose connection `i` presents `certs[i]` (the last one from then
/// on), or speaks plain TCP where that is `None`; and the requests it got.
fn server_with(certs: Vec<Option<TestCert>>) -> (FakeServer, Arc<Mutex<Vec<Value>>>) {
    let configs: Vec<_> = certs
        .iter()
        .map(|c| c.as_ref().map(TestCert::server_config))
        .collect();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&requests);
    let server = FakeServer::start_with(
        move |i| configs[i.min(configs.len() - 1)].clone(),
        move |_, mut conn| serve(&mut conn, &seen),
    );
    (server, requests)
}

fn script(server: &FakeServer, f: &Files, extra: &[&str], input: &str) -> ScriptRun {
    run_script(&client_args(server.port(), &f.tokens, extra), &[], input)
}

fn assert_refused(run: &ScriptRun) {
    assert_ne!(run.code, Some(0), "{run:#?}");
    assert!(!run.stderr.contains("panicked"), "{run:#?}");
    assert!(run.stdout.is_empty(), "{run:#?}");
}

#[test]
fn scripted_an_unknown_self_signed_certificate_is_refused_with_its_fingerprint() {
    let cert = TestCert::self_signed();
    let (server, requests) = server_with(vec![Some(cert.clone())]);
    let f = files();
    let run = script(&server, &f, &["--tls"], "zed\nsecret-pass\nhello\n");
    assert_refused(&run);
    assert!(run.stderr.contains(&cert.fingerprint), "{run:#?}");
    assert!(
        run.stderr
            .contains(&format!("--fingerprint {}", cert.fingerprint)),
        "says how to trust it: {run:#?}"
    );
    assert_eq!(run.stderr.trim().lines().count(), 1, "{run:#?}");
    assert!(
        requests.lock().unwrap().is_empty(),
        "nothing was sent to an untrusted server"
    );
    assert!(!f.known.exists(), "nothing saved");
}

#[test]
fn scripted_a_matching_fingerprint_is_trusted_and_remembered() {
    let cert = TestCert::self_signed();
    let (server, requests) = server_with(vec![Some(cert.clone())]);
    let f = files();
    let run = script(
        &server,
        &f,
        &[
            "--tls",
            "--fingerprint",
            &cert.fingerprint.to_uppercase().replace("SHA256", "sha256"),
        ],
        "zed\nsecret-pass\nhello\n",
    );
    run.assert_success();
    assert!(run.stdout.contains("zed: hello"), "{run:#?}");
    assert!(run.stderr.contains("trusted from now on"), "{run:#?}");
    let key = format!("127.0.0.1:{}", server.port());
    assert_eq!(
        known_entries(&f.known),
        json!({ key.clone(): cert.fingerprint })
    );
    let mode = std::fs::metadata(&f.known).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "owner-only");
    // The token is filed as a TLS server's.
    let tokens: Value = serde_json::from_str(&std::fs::read_to_string(&f.tokens).unwrap()).unwrap();
    assert!(tokens["servers"][format!("tls:{key}")]["accounts"]["zed"]["token"].is_string());
    assert!(tokens["servers"].get(&key).is_none(), "{tokens}");
    // The next run needs no --fingerprint, and resumes with the token.
    let run = script(&server, &f, &["--tls"], "again\n");
    run.assert_success();
    assert!(run.stdout.contains("zed: again"), "{run:#?}");
    let resumes = requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r["type"] == "resume")
        .count();
    assert_eq!(resumes, 1);
}

#[test]
fn a_changed_certificate_is_refused_and_the_saved_entry_is_kept_until_fingerprint_says() {
    let first = TestCert::self_signed();
    let second = TestCert::self_signed();
    let (server, _) = server_with(vec![Some(first.clone()), Some(second.clone())]);
    let f = files();
    let key = format!("127.0.0.1:{}", server.port());
    script(
        &server,
        &f,
        &["--fingerprint", &first.fingerprint],
        "zed\nsecret-pass\n",
    )
    .assert_success();
    assert_eq!(
        known_entries(&f.known),
        json!({ key.clone(): first.fingerprint })
    );

    let run = script(&server, &f, &["--tls"], "hello\n");
    assert_refused(&run);
    assert!(run.stderr.contains("CHANGED"), "{run:#?}");
    assert!(run.stderr.contains(&first.fingerprint), "{run:#?}");
    assert!(run.stderr.contains(&second.fingerprint), "{run:#?}");
    assert_eq!(
        known_entries(&f.known),
        json!({ key.clone(): first.fingerprint }),
        "never replaced silently"
    );

    // A wrong --fingerprint changes nothing either.
    let run = script(
        &server,
        &f,
        &["--fingerprint", &first.fingerprint],
        "hello\n",
    );
    assert_refused(&run);
    assert_eq!(
        known_entries(&f.known),
        json!({ key.clone(): first.fingerprint })
    );

    let run = script(
        &server,
        &f,
        &["--fingerprint", &second.fingerprint],
        "hello\n",
    );
    run.assert_success();
    assert!(
        run.stderr.contains("is replaced by"),
        "said on stderr: {run:#?}"
    );
    assert_eq!(known_entries(&f.known), json!({ key: second.fingerprint }));
}

#[test]
fn a_ca_file_verifies_the_server_and_nothing_is_pinned() {
    let cert = TestCert::signed_by_a_ca();
    let (server, _) = server_with(vec![Some(cert.clone())]);
    let f = files();
    let ca = f._dir.path().join("ca.pem");
    std::fs::write(&ca, cert.ca_pem.as_deref().unwrap()).unwrap();
    let run = script(
        &server,
        &f,
        &["--ca-file", ca.to_str().unwrap()],
        "zed\nsecret-pass\nhello\n",
    );
    run.assert_success();
    assert!(run.stdout.contains("zed: hello"), "{run:#?}");
    assert!(!f.known.exists(), "a verified server needs no pin");

    // Another CA does not vouch for it: back to pinning, which a script refuses.
    let other = TestCert::signed_by_a_ca();
    std::fs::write(&ca, other.ca_pem.as_deref().unwrap()).unwrap();
    let run = script(&server, &f, &["--ca-file", ca.to_str().unwrap()], "hello\n");
    assert_refused(&run);
    assert!(run.stderr.contains(&cert.fingerprint), "{run:#?}");

    // A CA file that is no PEM is one clear line.
    std::fs::write(&ca, "not a certificate").unwrap();
    let run = script(&server, &f, &["--ca-file", ca.to_str().unwrap()], "hello\n");
    assert_refused(&run);
    assert!(run.stderr.contains("ca.pem"), "{run:#?}");
}

#[test]
fn a_corrupt_known_servers_file_refuses_rather_than_forgets() {
    let cert = TestCert::self_signed();
    let (server, _) = server_with(vec![Some(cert.clone())]);
    let f = files();
    std::fs::create_dir_all(f.known.parent().unwrap()).unwrap();
    std::fs::write(&f.known, "{ not json").unwrap();
    let run = script(
        &server,
        &f,
        &["--fingerprint", &cert.fingerprint],
        "zed\nsecret-pass\n",
    );
    assert_refused(&run);
    assert!(run.stderr.contains("known_servers.json"), "{run:#?}");
    assert_eq!(std::fs::read_to_string(&f.known).unwrap(), "{ not json");
}

#[test]
fn a_tls_servers_token_is_never_sent_in_clear() {
    // The same address speaks TLS first, then plain TCP (a downgrade).
    let cert = TestCert::self_signed();
    let (server, requests) = server_with(vec![Some(cert.clone()), None]);
    let f = files();
    script(
        &server,
        &f,
        &["--fingerprint", &cert.fingerprint],
        "zed\nsecret-pass\n",
    )
    .assert_success();
    requests.lock().unwrap().clear();
    let run = script(&server, &f, &[], "zed\nsecret-pass\nhello\n");
    run.assert_success();
    let kinds: Vec<String> = requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| r["type"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("login"),
        "{kinds:?}"
    );
    assert!(!kinds.contains(&"resume".to_string()), "{kinds:?}");
}

#[test]
fn tls_from_the_environment_and_a_plaintext_server_is_one_clear_line() {
    let (server, _) = server_with(vec![None]);
    let f = files();
    let run = run_script(
        &client_args(server.port(), &f.tokens, &[]),
        &[("ECHOCHAT_TLS", "1")],
        "zed\nsecret-pass\n",
    );
    assert_refused(&run);
    assert!(run.stderr.contains("TLS with 127.0.0.1"), "{run:#?}");
    assert_eq!(run.stderr.trim().lines().count(), 1, "{run:#?}");
}

#[test]
fn a_terminal_asks_whether_to_trust_an_unknown_server_and_remembers_a_yes() {
    let cert = TestCert::self_signed();
    let (server, _) = server_with(vec![Some(cert.clone())]);
    let f = files();
    let args = client_args(server.port(), &f.tokens, &["--tls", "--name", "zed"]);

    let mut tty = Tty::spawn(&args, &[]);
    tty.expect(&cert.fingerprint);
    tty.expect("Trust this server? [y/N] ");
    tty.send("\r");
    assert_ne!(tty.wait_exit(), 0, "no is the default");
    assert!(!f.known.exists());

    let mut tty = Tty::spawn(&args, &[]);
    tty.expect("Trust this server? [y/N] ");
    tty.send("y\rsecret-pass\r");
    tty.expect("#lobby zed> ");
    tty.send("/quit\r");
    assert_eq!(tty.wait_exit(), 0);
    let key = format!("127.0.0.1:{}", server.port());
    assert_eq!(known_entries(&f.known), json!({ key: cert.fingerprint }));

    // Known now: no question.
    let mut tty = Tty::spawn(&args, &[]);
    let before = tty.expect("zed> ");
    assert!(!before.contains("Trust this server"), "{before}");
    tty.send("/quit\r");
    assert_eq!(tty.wait_exit(), 0);
}

// ---- Against the real server --------------------------------------------------

/// The fingerprint on the server's `listening on IP:PORT tls sha256:HEX` line, and
/// the port.
fn tls_listener(server: &mut common::TestServer) -> (u16, String) {
    let line = server.expect_stdout("the TLS line", |l| l.contains(" tls sha256:"));
    let mut words = line.split_whitespace().skip(2);
    let addr = words.next().unwrap_or_default();
    let port = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap();
    let fingerprint = line.rsplit(' ').next().unwrap_or_default().to_string();
    (port, fingerprint)
}

#[test]
fn real_server_over_tls_with_its_fingerprint() {
    let mut server = common::TestServer::start_with(&["--tls-port", "0"]);
    let (port, fingerprint) = tls_listener(&mut server);
    let f = files();
    let name = common::unique_name("tls");
    let run = run_script(
        &client_args(port, &f.tokens, &["--fingerprint", &fingerprint]),
        &[],
        &format!("{name}\nsecret-pass\nover tls\n"),
    );
    run.assert_success();
    assert!(
        run.stdout.contains(&format!("{name}: over tls")),
        "{run:#?}"
    );
    let run = run_script(&client_args(port, &f.tokens, &["--tls"]), &[], "again\n");
    run.assert_success();
    assert!(run.stdout.contains(&format!("{name}: again")), "{run:#?}");
}

#[test]
fn real_server_self_signed_certificate_is_refused_without_a_fingerprint() {
    let mut server = common::TestServer::start_with(&["--tls-port", "0"]);
    let (port, fingerprint) = tls_listener(&mut server);
    let f = files();
    let run = run_script(
        &client_args(port, &f.tokens, &["--tls"]),
        &[],
        "someone\nsecret-pass\n",
    );
    assert_refused(&run);
    assert!(run.stderr.contains(&fingerprint), "{run:#?}");
}
