//! TLS for the server: the certificate, its fingerprint, and swapping it while serving.
//!
//! The certificate chain and key come from `--tls-cert` and `--tls-key`, or from
//! `<state-dir>/tls/cert.pem` and `key.pem`, created once as a self-signed certificate
//! for `localhost`, the machine's host name and `--host` (the key owner-only). PEM is
//! read with `rustls-pki-types`. The rustls configuration is built once around a
//! [`Certificates`] resolver; `reload-tls` and SIGHUP swap the key inside it, so the
//! connections already open stay up, and a file that cannot be used leaves the old
//! certificate in place and says why. Handshakes run on the I/O runtime, never on an
//! actor's thread, and time out after [`HANDSHAKE_TIMEOUT`].

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::server::store::state_files;

/// How long a client may take to complete its TLS handshake before it is dropped: a
/// handshake is work a hostile client can make the server do, and a connection stalled
/// in it holds a descriptor.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest certificate or key file read.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Why a certificate could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("the key does not fit the certificate: {0}")]
    Mismatch(String),
    #[error("cannot create a certificate: {0}")]
    Generate(String),
}

/// Where the certificate and key are, and whether they are the server's own.
#[derive(Debug, Clone)]
pub struct CertificatePaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Created by the server (self-signed) when missing.
    pub own: bool,
}

impl CertificatePaths {
    /// The given files, or the server's own under `<state-dir>/tls/`.
    pub fn new(state_dir: &Path, cert: Option<&Path>, key: Option<&Path>) -> CertificatePaths {
        match (cert, key) {
            (Some(cert), Some(key)) => CertificatePaths {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                own: false,
            },
            _ => CertificatePaths {
                cert: state_dir.join("tls").join("cert.pem"),
                key: state_dir.join("tls").join("key.pem"),
                own: true,
            },
        }
    }
}

/// Creates the server's own self-signed certificate if it does not exist yet, for
/// `localhost`, the machine's host name and `host`. Returns whether it created one.
pub fn ensure_own_certificate(paths: &CertificatePaths, host: &str) -> Result<bool, TlsError> {
    if !paths.own || paths.cert.exists() || paths.key.exists() {
        return Ok(false);
    }
    let mut names = vec!["localhost".to_string()];
    if let Some(machine) = host_name() {
        names.push(machine);
    }
    if !host.is_empty() && host != "0.0.0.0" && host != "::" && !names.iter().any(|n| n == host) {
        names.push(host.to_string());
    }
    let generated =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Io { path, source }
    };
    if let Some(dir) = paths.cert.parent() {
        state_files::create_private_dir(dir).map_err(io_error(dir))?;
    }
    // The key first: a certificate never lies about without its key.
    state_files::write_atomically(&paths.key, generated.signing_key.serialize_pem().as_bytes())
        .map_err(io_error(&paths.key))?;
    state_files::write_atomically(&paths.cert, generated.cert.pem().as_bytes())
        .map_err(io_error(&paths.cert))?;
    Ok(true)
}

fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into our buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = std::str::from_utf8(&buf[..end]).ok()?.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// A certificate ready to serve, with the SHA-256 of its leaf (DER), as
/// `sha256:<64 lowercase hex>`.
pub struct Loaded {
    key: Arc<CertifiedKey>,
    pub fingerprint: String,
}

/// The provider every TLS configuration of the server uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks a certificate chain and its key.
pub fn load(paths: &CertificatePaths) -> Result<Loaded, TlsError> {
    let read = |path: &Path| -> Result<Vec<u8>, TlsError> {
        state_files::read_bounded(path, MAX_PEM_BYTES)
            .map_err(|source| TlsError::Io {
                path: path.to_path_buf(),
                source,
            })?
            .ok_or_else(|| TlsError::Io {
                path: path.to_path_buf(),
                source: io::Error::new(io::ErrorKind::NotFound, "no such file"),
            })
    };
    let pem_error = |path: &Path, message: String| TlsError::Pem {
        path: path.to_path_buf(),
        message,
    };
    let cert_pem = read(&paths.cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(&paths.cert, e.to_string()))?;
    let Some(leaf) = chain.first() else {
        return Err(pem_error(&paths.cert, "no certificate in it".into()));
    };
    let fingerprint = fingerprint_of(leaf);
    let key_pem = read(&paths.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| pem_error(&paths.key, e.to_string()))?;
    let certified = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| TlsError::Mismatch(e.to_string()))?;
    Ok(Loaded {
        key: Arc::new(certified),
        fingerprint,
    })
}

/// `sha256:` and the lowercase hex SHA-256 of a certificate's DER.
pub fn fingerprint_of(cert: &CertificateDer<'_>) -> String {
    let digest = Sha256::digest(cert.as_ref());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The certificate the server presents now; swapped by [`Certificates::replace`].
#[derive(Debug)]
pub struct Certificates {
    current: RwLock<Arc<CertifiedKey>>,
    fingerprint: RwLock<String>,
    paths: CertificatePaths,
}

impl Certificates {
    /// Serving `loaded`, read from `paths` (read again by [`reload`](Self::reload)).
    pub fn new(loaded: Loaded, paths: CertificatePaths) -> Arc<Certificates> {
        Arc::new(Certificates {
            current: RwLock::new(loaded.key),
            fingerprint: RwLock::new(loaded.fingerprint),
            paths,
        })
    }

    /// The fingerprint of the certificate presented now.
    pub fn fingerprint(&self) -> String {
        self.fingerprint
            .read()
            .map(|f| f.clone())
            .unwrap_or_default()
    }

    /// Reads the files again; on success presents the new certificate from the next
    /// handshake on and returns its fingerprint. On failure the old one stays.
    pub fn reload(&self) -> Result<String, TlsError> {
        let loaded = load(&self.paths)?;
        let fingerprint = loaded.fingerprint.clone();
        if let Ok(mut current) = self.current.write() {
            *current = loaded.key;
        }
        if let Ok(mut current) = self.fingerprint.write() {
            *current = loaded.fingerprint;
        }
        Ok(fingerprint)
    }

    /// The rustls configuration of every TLS listener: TLS 1.2 and 1.3, no client
    /// certificates, this resolver's certificate.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Generate(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|key| key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn remove(path: &Path) {
        let _ = fs::remove_file(path);
    }

    #[test]
    fn the_own_certificate_is_created_once_and_its_key_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CertificatePaths::new(dir.path(), None, None);
        assert!(ensure_own_certificate(&paths, "127.0.0.1").unwrap());
        assert!(
            !ensure_own_certificate(&paths, "127.0.0.1").unwrap(),
            "kept"
        );
        let mode = fs::metadata(&paths.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = load(&paths).unwrap();
        assert!(loaded.fingerprint.starts_with("sha256:"));
        assert_eq!(loaded.fingerprint.len(), 7 + 64);
        assert_eq!(load(&paths).unwrap().fingerprint, loaded.fingerprint);
        remove(&paths.cert);
        remove(&paths.key);
        ensure_own_certificate(&paths, "127.0.0.1").unwrap();
        assert_ne!(load(&paths).unwrap().fingerprint, loaded.fingerprint);
    }

    #[test]
    fn unusable_files_are_refused_and_a_reload_keeps_the_old_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CertificatePaths::new(dir.path(), None, None);
        ensure_own_certificate(&paths, "").unwrap();
        let certificates = Certificates::new(load(&paths).unwrap(), paths.clone());
        let before = certificates.fingerprint();
        // A key from another certificate does not fit.
        let other = tempfile::tempdir().unwrap();
        let other_paths = CertificatePaths::new(other.path(), None, None);
        ensure_own_certificate(&other_paths, "").unwrap();
        fs::copy(&other_paths.key, &paths.key).unwrap();
        assert!(matches!(certificates.reload(), Err(TlsError::Mismatch(_))));
        fs::write(&paths.cert, "not pem").unwrap();
        assert!(certificates.reload().is_err());
        assert_eq!(certificates.fingerprint(), before, "the old one stays");
        // Fixed files are taken.
        fs::copy(&other_paths.cert, &paths.cert).unwrap();
        let after = certificates.reload().unwrap();
        assert_ne!(after, before);
        assert_eq!(certificates.fingerprint(), after);
        assert!(certificates.server_config().is_ok());
    }
}
