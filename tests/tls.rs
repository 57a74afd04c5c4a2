//! TLS (SPEC §9), server side: the listener, its stdout line, the certificate kept or
//! given, reload, `--tls-only`, and a stalled handshake.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const PW: &str = "tls-password";

/// The TLS line the server printed after its first: its address and fingerprint.
fn tls_line(server: &mut TestServer) -> (SocketAddr, String) {
    let line = server.expect_stdout("the TLS line", |l| l.contains(" tls "));
    parse_tls_line(&line)
}

fn parse_tls_line(line: &str) -> (SocketAddr, String) {
    let rest = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("not a listening line: {line:?}"));
    let (address, fingerprint) = rest
        .split_once(" tls ")
        .unwrap_or_else(|| panic!("no tls part: {line:?}"));
    let hex = fingerprint
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("no sha256: {line:?}"));
    assert_eq!(hex.len(), 64, "{line:?}");
    assert!(
        hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
        "{line:?}"
    );
    (address.parse().unwrap(), fingerprint.to_string())
}

/// `sha256:<hex>` of the first certificate in a PEM file.
fn fingerprint_of(pem: &Path) -> String {
    let cert = CertificateDer::pem_file_iter(pem)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let hex: String = Sha256::digest(cert.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// A blocking TLS client trusting exactly `ca` (a PEM file).
struct TlsClient {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

impl TlsClient {
    fn connect(address: SocketAddr, ca: &Path) -> TlsClient {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::IpAddress(address.ip().into());
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let tcp = TcpStream::connect(address).unwrap();
        tcp.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
        TlsClient {
            stream: rustls::StreamOwned::new(conn, tcp),
            buf: Vec::new(),
        }
    }

    fn send(&mut self, msg: &Value) {
        let payload = serde_json::to_vec(msg).unwrap();
        self.stream.write_all(&frame(&payload)).unwrap();
        self.stream.flush().unwrap();
    }

    fn recv(&mut self) -> Value {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes(self.buf[..4].try_into().unwrap()) as usize;
                if self.buf.len() >= 4 + len {
                    let value = serde_json::from_slice(&self.buf[4..4 + len]).unwrap();
                    self.buf.drain(..4 + len);
                    return value;
                }
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).expect("read a TLS frame");
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let v = self.recv();
            if v["type"] == ty {
                return v;
            }
        }
    }
}

#[test]
fn tls_users_and_plaintext_users_share_one_chat() {
    let mut server = TestServer::start_with(&["--tls-port", "0"]);
    let (address, fingerprint) = tls_line(&mut server);
    let cert = server.state_dir().join("tls/cert.pem");
    assert_eq!(fingerprint, fingerprint_of(&cert));
    let mut secure = TlsClient::connect(address, &cert);
    assert_eq!(secure.recv()["type"], "welcome");
    secure.send(&json!({"type":"register","name":"sam","password":PW}));
    secure.recv_type("auth_ok");
    let (mut plain, _) = registered(&server, "pat", PW);
    secure.send(&json!({"type":"say","text":"over tls"}));
    let got = plain.recv_matching("the tls message", |v| v["type"] == "message");
    assert_eq!(got["text"], "over tls");
    plain.say("in the clear");
    loop {
        let v = secure.recv_type("message");
        if v["text"] == "in the clear" {
            break;
        }
    }
    // `status` shows the fingerprint.
    let status = server.admin_output("status").join("\n");
    assert!(status.contains(&format!("tls: {fingerprint}")), "{status}");
}

#[test]
fn the_own_certificate_is_kept_across_restarts_and_its_key_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_in(dir.path(), &["--tls-port", "0"]);
    let (_, first) = tls_line(&mut server);
    server.stop();
    let mut server = TestServer::start_in(dir.path(), &["--tls-port", "0"]);
    let (_, second) = tls_line(&mut server);
    assert_eq!(first, second);
    let key = fs::metadata(dir.path().join("tls/key.pem")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
}

/// Writes a fresh self-signed certificate for 127.0.0.1 into `dir`.
fn certificate(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let generated = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    fs::write(&cert, generated.cert.pem()).unwrap();
    fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

#[test]
fn a_given_certificate_is_served_and_reloaded_without_dropping_connections() {
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(files.path(), "one");
    let (cert_s, key_s) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let mut server =
        TestServer::start_with(&["--tls-port", "0", "--tls-cert", cert_s, "--tls-key", key_s]);
    let (address, fingerprint) = tls_line(&mut server);
    assert_eq!(fingerprint, fingerprint_of(&cert));
    let mut secure = TlsClient::connect(address, &cert);
    secure.recv_type("welcome");
    secure.send(&json!({"type":"register","name":"rita","password":PW}));
    secure.recv_type("auth_ok");

    // Broken files: the old certificate stays, and the console says why.
    let (saved_cert, saved_key) = (fs::read(&cert).unwrap(), fs::read(&key).unwrap());
    fs::write(&cert, "not a certificate").unwrap();
    let said = server.admin_output("reload-tls");
    assert!(
        said[0].starts_with("TLS certificate not reloaded:"),
        "{said:?}"
    );
    assert!(
        said[0].ends_with(&format!("still serving {fingerprint}")),
        "{said:?}"
    );
    fs::write(&cert, &saved_cert).unwrap();
    let (other_cert, other_key) = certificate(files.path(), "other");
    fs::copy(&other_key, &key).unwrap();
    let said = server.admin_output("reload-tls");
    assert!(
        said[0].contains("not reloaded"),
        "a key that does not fit: {said:?}"
    );

    // Good files: new connections get the new certificate; the old connection stays.
    fs::copy(&other_cert, &cert).unwrap();
    let said = server.admin_output("reload-tls");
    let new = fingerprint_of(&other_cert);
    assert_eq!(said, [format!("TLS certificate reloaded: {new}")]);
    secure.send(&json!({"type":"ping"}));
    secure.recv_type("pong");
    let mut again = TlsClient::connect(address, &other_cert);
    again.recv_type("welcome");
    let status = server.admin_output("status").join("\n");
    assert!(status.contains(&new), "{status}");

    // SIGHUP does the same.
    fs::write(&cert, &saved_cert).unwrap();
    fs::write(&key, &saved_key).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_log_line(RECV_TIMEOUT, |l| {
        l.contains("SIGHUP: TLS certificate reloaded")
    });
    let mut third = TlsClient::connect(address, &cert);
    third.recv_type("welcome");
}

#[test]
fn tls_only_has_no_plaintext_listener() {
    let mut server = TestServer::launch(Launch {
        args: &["--tls-port", "0", "--tls-only"],
        omit: &["--port"],
        ..Launch::default()
    });
    let (address, _) = parse_tls_line(server.first_line());
    assert_eq!(address, server.addr(), "the TLS line is the first line");
    assert_eq!(
        server.read_stdout_line(QUIET),
        None,
        "no other listening line"
    );
    let cert = server.state_dir().join("tls/cert.pem");
    let mut secure = TlsClient::connect(address, &cert);
    secure.recv_type("welcome");
}

#[test]
fn a_stalled_handshake_is_dropped_and_counts_against_the_address() {
    let mut server = TestServer::start_with(&["--tls-port", "0", "--max-conns-per-ip", "2"]);
    let (address, _) = tls_line(&mut server);
    let mut stalled: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(address).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Two handshakes in progress use up this address's connections.
    let mut third = server.connect();
    assert!(
        matches!(third.next_event(RECV_TIMEOUT), Event::Closed),
        "a third connection from the address is closed at once"
    );
    // A client that never speaks TLS is dropped within seconds.
    let started = Instant::now();
    let mut byte = [0u8; 1];
    stalled[0]
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let read = stalled[0].read(&mut byte);
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    drop(stalled);
    std::thread::sleep(Duration::from_millis(500));
    server.connect_greeted().ping();
}
