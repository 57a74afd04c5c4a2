//! How the client reaches the server: plain TCP, or TLS (SPEC §9) with its trust
//! rules.
//!
//! TLS is rustls with the *ring* provider, through tokio-rustls. The certificate is
//! verified against the system's trust roots (read at start by `rustls-native-certs`,
//! which honours `SSL_CERT_FILE`/`SSL_CERT_DIR`), or only against the certificates of
//! `--ca-file` when it is given (read with `rustls-pki-types`' PEM parser). When that
//! verification fails, the decision is [`known_servers::decide`]'s: a fingerprint saved
//! in the known-servers file, a `--fingerprint`, or the person at the terminal.
//!
//! The verifier never fails the handshake itself: it records what it found (the leaf
//! certificate's fingerprint and, if no root vouched for it, why), while still checking
//! the handshake's signatures against that certificate, so a pinned fingerprint proves
//! the peer holds its key. The decision is taken right after the handshake, before the
//! client reads or sends a single frame; a refused server gets nothing, no token, no
//! password.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::args::{Args, ServerAddr};
use super::connection::{tcp_connect, Connection, ConnectionError, CONNECT_TIMEOUT};
use super::display::printable;
use super::known_servers::{decide, Decision, Fingerprint, KnownServers, Presented};
use super::tokens::default_path;
use super::Notify;

/// Asks the person whether to trust a server: the lines that explain, then the
/// question; `true` for yes.
pub type AskTrust =
    Box<dyn FnMut(Vec<String>) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send>;

/// The connector `args` ask for: TLS with its trust rules (the known-servers file
/// beside the token file), or plain TCP. `notify` tells of saved and replaced
/// fingerprints; `ask` asks a person about an unknown server (none for a script).
pub fn from_args(args: &Args, notify: Notify, ask: Option<AskTrust>) -> Result<Connector, String> {
    if !args.wants_tls() {
        return Ok(Connector::plain());
    }
    let token_file = args.token_file.clone().or_else(default_path);
    let known = KnownServers::beside(token_file.as_deref());
    TlsClient::new(
        args.ca_file.as_deref(),
        args.fingerprint,
        known,
        notify,
        ask,
    )
    .map(Connector::tls)
}

/// Plain TCP or TLS; cheap to clone (every reconnection uses it).
#[derive(Clone, Default)]
pub struct Connector {
    tls: Option<Arc<TlsClient>>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.tls.is_some() {
            "Connector(tls)"
        } else {
            "Connector(plain)"
        })
    }
}

impl Connector {
    /// Plain TCP.
    pub fn plain() -> Connector {
        Connector { tls: None }
    }

    /// TLS with `client`'s trust rules.
    pub fn tls(client: TlsClient) -> Connector {
        Connector {
            tls: Some(Arc::new(client)),
        }
    }

    /// Connects to `server` (and, over TLS, settles whether to trust it), giving up
    /// after [`CONNECT_TIMEOUT`] for each step.
    pub async fn connect(&self, server: &ServerAddr) -> Result<Connection, ConnectionError> {
        let tcp = tcp_connect(server).await?;
        let addr = server.to_string();
        match &self.tls {
            None => Ok(Connection::over(Box::new(tcp), addr)),
            Some(tls) => {
                let stream = tls.connect(server, tcp).await?;
                Ok(Connection::over(Box::new(stream), addr))
            }
        }
    }

    /// From now on nobody is asked (the login is over: a reconnection in the middle
    /// of the chat refuses what it would have asked about).
    pub async fn stop_asking(&self) {
        if let Some(tls) = &self.tls {
            *tls.ask.lock().await = None;
        }
    }
}

/// TLS settings and trust, for every connection of the run.
pub struct TlsClient {
    provider: Arc<CryptoProvider>,
    /// Verifies against the trusted roots; `None` when there are none at all.
    roots: Option<Arc<WebPkiServerVerifier>>,
    /// `--fingerprint`.
    expected: Option<Fingerprint>,
    known: KnownServers,
    /// Fingerprints trusted during this run, by `host:port`: they hold for every
    /// reconnection even if the file could not be written.
    accepted: Mutex<Vec<(String, Fingerprint)>>,
    /// How to ask a person, while one may be asked.
    ask: tokio::sync::Mutex<Option<AskTrust>>,
    notify: Mutex<Notify>,
}

impl TlsClient {
    /// Reads the trusted roots: the certificates of `ca_file` only, when given (an
    /// unreadable file or one without certificates is an error), else the system's.
    pub fn new(
        ca_file: Option<&Path>,
        expected: Option<Fingerprint>,
        known: KnownServers,
        notify: Notify,
        ask: Option<AskTrust>,
    ) -> Result<TlsClient, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut store = RootCertStore::empty();
        match ca_file {
            Some(path) => {
                let shown = path.display();
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("cannot read the CA file {shown}: {e}"))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("the CA file {shown} is not PEM: {e}"))?;
                let (added, _) = store.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(format!("the CA file {shown} holds no usable certificate"));
                }
            }
            None => {
                // A system without roots (a bare container) still pins fingerprints;
                // the refusal of an unknown server then says there are no roots.
                let found = rustls_native_certs::load_native_certs();
                store.add_parsable_certificates(found.certs);
            }
        }
        let roots = if store.is_empty() {
            None
        } else {
            Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
                    .build()
                    .map_err(|e| format!("cannot use the trusted roots: {e}"))?,
            )
        };
        Ok(TlsClient {
            provider,
            roots,
            expected,
            known,
            accepted: Mutex::new(Vec::new()),
            ask: tokio::sync::Mutex::new(ask),
            notify: Mutex::new(notify),
        })
    }

    /// The handshake, then the trust decision; the stream only if the server is
    /// trusted.
    async fn connect(
        &self,
        server: &ServerAddr,
        tcp: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectionError> {
        let addr = server.to_string();
        let seen = Arc::new(Mutex::new(None));
        // A configuration of its own per connection: no TLS session is resumed, so
        // the certificate is shown, checked and judged every time.
        let verifier = Recorder {
            roots: self.roots.clone(),
            algorithms: self.provider.signature_verification_algorithms,
            seen: Arc::clone(&seen),
        };
        let tls_error = |why: String| ConnectionError::Tls {
            addr: addr.clone(),
            why,
        };
        let config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        let name = ServerName::try_from(server.host.clone())
            .map_err(|e| tls_error(format!("'{}' cannot be checked: {e}", server.host)))?;
        let handshake = TlsConnector::from(Arc::new(config)).connect(name, tcp);
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(handshake_error(&addr, e)),
            Err(_) => {
                return Err(ConnectionError::Timeout {
                    addr,
                    secs: CONNECT_TIMEOUT.as_secs(),
                })
            }
        };
        let seen = lock(&seen)
            .take()
            .ok_or_else(|| tls_error("the server showed no certificate".into()))?;
        self.settle(server, seen).await?;
        Ok(stream)
    }

    /// Whether to go on with a server that showed `seen`: [`decide`], then saving,
    /// asking and telling as it says.
    async fn settle(&self, server: &ServerAddr, seen: Seen) -> Result<(), ConnectionError> {
        let key = server.known_key();
        let refuse = |why: String| ConnectionError::Untrusted(why);
        // The file matters only for a certificate no root vouches for.
        let saved = match &seen.unverified {
            None => None,
            Some(_) => match self.known.get(&key).map_err(refuse)? {
                Some(saved) => Some(saved),
                None => self.accepted_for(&key),
            },
        };
        let mut ask = self.ask.lock().await;
        let unverified = seen.unverified.as_deref().map(printable);
        let decision = decide(&Presented {
            server: &key,
            fingerprint: seen.fingerprint,
            unverified: unverified.as_deref(),
            saved,
            expected: self.expected,
            interactive: ask.is_some(),
        });
        let fingerprint = seen.fingerprint;
        match decision {
            Decision::Trust => Ok(()),
            Decision::TrustAndSave { replacing } => {
                match replacing {
                    Some(old) => self.tell(&format!(
                        "The saved fingerprint of {key} ({old}) is replaced by {fingerprint}, as --fingerprint says."
                    )),
                    None => self.tell(&format!(
                        "{key} is trusted from now on: its fingerprint {fingerprint} matches --fingerprint."
                    )),
                }
                self.save(&key, fingerprint);
                Ok(())
            }
            Decision::Ask => {
                let intro = vec![
                    format!(
                        "The certificate of {key} cannot be verified ({}).",
                        unverified.as_deref().unwrap_or("")
                    ),
                    format!("Its fingerprint is {fingerprint}"),
                    "Check it with the server's admin (the server prints it when it starts)."
                        .into(),
                ];
                let yes = match ask.as_mut() {
                    Some(ask) => ask(intro).await,
                    None => false,
                };
                if !yes {
                    return Err(refuse(format!("{key} is not trusted; not connecting")));
                }
                self.save(&key, fingerprint);
                Ok(())
            }
            Decision::Refuse(why) => Err(refuse(why)),
        }
    }

    /// A fingerprint trusted earlier in this run.
    fn accepted_for(&self, key: &str) -> Option<Fingerprint> {
        lock(&self.accepted)
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, f)| *f)
    }

    /// Saves a trusted fingerprint; trouble writing is a warning (the server is
    /// trusted for this run anyway).
    fn save(&self, key: &str, fingerprint: Fingerprint) {
        {
            let mut accepted = lock(&self.accepted);
            accepted.retain(|(k, _)| k != key);
            accepted.push((key.to_string(), fingerprint));
        }
        if let Err(why) = self.known.save(key, fingerprint) {
            self.tell(&format!("warning: {}", printable(&why)));
        }
    }

    fn tell(&self, line: &str) {
        (lock(&self.notify))(line);
    }
}

/// The lock, even if a thread panicked holding it (the data is a plain slot).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A failed handshake: rustls' own reason when it has one.
fn handshake_error(addr: &str, e: std::io::Error) -> ConnectionError {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .map(|inner| inner.to_string());
    match tls {
        Some(why) => ConnectionError::Tls {
            addr: addr.to_string(),
            why: printable(&why),
        },
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => ConnectionError::Tls {
            addr: addr.to_string(),
            why: "the server closed the connection during the handshake (is it a TLS port?)".into(),
        },
        None => ConnectionError::Io(e),
    }
}

/// What the verifier found.
#[derive(Debug)]
struct Seen {
    fingerprint: Fingerprint,
    /// Why no trusted root vouched for the certificate; `None` if one did.
    unverified: Option<String>,
}

/// The certificate verifier: records, checks signatures, never refuses (see the
/// module comment).
#[derive(Debug)]
struct Recorder {
    roots: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
    seen: Arc<Mutex<Option<Seen>>>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let unverified = match &self.roots {
            Some(roots) => roots
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .err()
                .map(|e| e.to_string()),
            None => Some("no trusted root certificates".into()),
        };
        *lock(&self.seen) = Some(Seen {
            fingerprint: Fingerprint::of(end_entity.as_ref()),
            unverified,
        });
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
