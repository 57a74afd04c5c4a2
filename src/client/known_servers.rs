//! The known-servers file and the trust rules of TLS (SPEC §9): which certificate the
//! client accepts from a server its system's roots (or `--ca-file`) do not vouch for.
//!
//! The file sits beside the token file, owner-only, and maps `host:port` to the
//! SHA-256 fingerprint of the server's leaf certificate, as a person can read and edit
//! it:
//!
//! ```json
//! {"127.0.0.1:9443": "sha256:3f1c…"}
//! ```
//!
//! [`decide`] is the whole policy, as plain data: a certificate verified by a trusted
//! root is accepted; otherwise a saved fingerprint that matches is; a `--fingerprint`
//! that matches is saved like a yes (replacing a different saved one, which is said);
//! a person is asked about a server with no entry; everything else is refused, and a
//! saved entry is never replaced without `--fingerprint`. A `--fingerprint` that does
//! not match the certificate is refused even when a root vouches for it: the user
//! named the certificate to expect.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::display::printable;
use super::tokens::write_private;

/// The known-servers file's name, beside the token file.
pub const FILE_NAME: &str = "known_servers.json";

/// The SHA-256 of a certificate's DER, shown `sha256:` and 64 lowercase hex digits, as
/// the server prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a certificate (its DER bytes).
    pub fn of(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }

    /// Reads `sha256:HEX` (the prefix and the case of the hex digits are free; colons
    /// between byte pairs are allowed, as some tools print them).
    pub fn parse(text: &str) -> Result<Fingerprint, String> {
        let text = text.trim();
        let hex = match text.get(..7) {
            Some(prefix) if prefix.eq_ignore_ascii_case("sha256:") => &text[7..],
            _ => text,
        };
        let digits: String = hex.chars().filter(|&c| c != ':').collect();
        let wrong = || {
            format!(
                "'{}' is not a fingerprint; give it as the server prints it: sha256: and 64 hex digits",
                printable(text)
            )
        };
        if digits.len() != 64 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(wrong());
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).map_err(|_| wrong())?;
        }
        Ok(Fingerprint(bytes))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// What to do with a server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Accept it as it is.
    Trust,
    /// Accept it and save its fingerprint; `replacing` is the different one saved
    /// before, which the user is told about.
    TrustAndSave { replacing: Option<Fingerprint> },
    /// Show the fingerprint and ask the person at the terminal.
    Ask,
    /// Refuse the connection; the sentence says why and what to do.
    Refuse(String),
}

/// What the handshake showed, and what the client knows of the server.
#[derive(Debug, Clone)]
pub struct Presented<'a> {
    /// `host:port`.
    pub server: &'a str,
    pub fingerprint: Fingerprint,
    /// `None` when a trusted root vouched for the certificate; otherwise why not.
    pub unverified: Option<&'a str>,
    pub saved: Option<Fingerprint>,
    /// `--fingerprint`.
    pub expected: Option<Fingerprint>,
    /// A person can be asked.
    pub interactive: bool,
}

/// The trust rules (see the module comment).
pub fn decide(p: &Presented<'_>) -> Decision {
    let server = p.server;
    let presented = p.fingerprint;
    if let Some(expected) = p.expected {
        if expected != presented {
            return Decision::Refuse(format!(
                "the certificate of {server} has the fingerprint {presented}, not the {expected} given with --fingerprint; not connecting"
            ));
        }
    }
    let Some(why) = p.unverified else {
        return Decision::Trust;
    };
    match (p.saved, p.expected) {
        (Some(saved), _) if saved == presented => Decision::Trust,
        (saved, Some(_)) => Decision::TrustAndSave { replacing: saved },
        (Some(saved), None) => Decision::Refuse(format!(
            "WARNING: the certificate of {server} has CHANGED since it was trusted: it was {saved}, it is now {presented}. \
             Someone may be intercepting the connection; not connecting. \
             If the server's certificate was replaced on purpose, check the new fingerprint with its admin, then run echochat with --fingerprint {presented}"
        )),
        (None, None) if p.interactive => Decision::Ask,
        (None, None) => Decision::Refuse(format!(
            "the certificate of {server} is not trusted ({why}) and this server is not known; its fingerprint is {presented}. \
             To trust it, check that fingerprint with the server's admin and run echochat with --fingerprint {presented}"
        )),
    }
}

/// The known-servers file; in memory only when there is no folder to keep it in.
#[derive(Debug, Clone)]
pub struct KnownServers {
    path: Option<PathBuf>,
}

impl KnownServers {
    /// The file beside the token file `token_file` (none: nothing is remembered).
    pub fn beside(token_file: Option<&Path>) -> KnownServers {
        let path = token_file.map(|tokens| match tokens.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join(FILE_NAME),
            _ => PathBuf::from(FILE_NAME),
        });
        KnownServers { path }
    }

    /// Where the file is, if anywhere.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The fingerprint saved for `server` (`host:port`). A file that cannot be read or
    /// parsed is an error: trust must not silently start from nothing.
    pub fn get(&self, server: &str) -> Result<Option<Fingerprint>, String> {
        let entries = self.read()?;
        match entries.get(server) {
            None => Ok(None),
            Some(text) => Fingerprint::parse(text)
                .map(Some)
                .map_err(|why| format!("{}: the entry for {server}: {why}", self.shown())),
        }
    }

    /// Saves `fingerprint` for `server`, keeping every other entry.
    pub fn save(&self, server: &str, fingerprint: Fingerprint) -> Result<(), String> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut entries = self.read()?;
        entries.insert(server.to_string(), fingerprint.to_string());
        let body = serde_json::to_vec_pretty(&entries).map_err(|e| e.to_string())?;
        write_private(path, &body).map_err(|e| {
            format!(
                "cannot write the known-servers file {}: {e}",
                path.display()
            )
        })
    }

    fn read(&self) -> Result<BTreeMap<String, String>, String> {
        let Some(path) = &self.path else {
            return Ok(BTreeMap::new());
        };
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(format!("cannot read {}: {e}", self.shown())),
        };
        serde_json::from_str(&text).map_err(|e| {
            format!(
                "{} is not a JSON object of \"host:port\": \"sha256:…\" entries ({e}); fix or remove it",
                self.shown()
            )
        })
    }

    fn shown(&self) -> String {
        match &self.path {
            Some(path) => format!("the known-servers file {}", path.display()),
            None => "the known servers".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const A: &str = "sha256:3f1c0000000000000000000000000000000000000000000000000000000000aa";

    fn fp(n: u8) -> Fingerprint {
        Fingerprint([n; 32])
    }

    fn presented(unverified: bool, saved: Option<u8>, expected: Option<u8>) -> Decision {
        decide(&Presented {
            server: "h:1",
            fingerprint: fp(1),
            unverified: unverified.then_some("self-signed"),
            saved: saved.map(fp),
            expected: expected.map(fp),
            interactive: false,
        })
    }

    #[test]
    fn fingerprints_read_as_the_server_prints_them() {
        let f = Fingerprint::parse(A).unwrap();
        assert_eq!(f.to_string(), A);
        assert_eq!(Fingerprint::parse(&A.to_uppercase()), Ok(f));
        assert_eq!(Fingerprint::parse(&A[7..]), Ok(f), "without the prefix");
        let colons: Vec<String> = A.as_bytes()[7..]
            .chunks(2)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        assert_eq!(Fingerprint::parse(&colons.join(":")), Ok(f));
        for junk in ["", "sha256:", "sha256:xyz", &A[..70], "md5:00"] {
            assert!(Fingerprint::parse(junk).is_err(), "{junk:?}");
        }
        assert_eq!(Fingerprint::of(b"x"), Fingerprint::of(b"x"));
        assert_ne!(Fingerprint::of(b"x"), Fingerprint::of(b"y"));
    }

    #[test]
    fn the_trust_rules() {
        assert_eq!(
            presented(false, None, None),
            Decision::Trust,
            "a root vouches"
        );
        assert_eq!(
            presented(true, Some(1), None),
            Decision::Trust,
            "saved and same"
        );
        assert_eq!(
            presented(true, None, Some(1)),
            Decision::TrustAndSave { replacing: None }
        );
        assert_eq!(
            presented(true, Some(2), Some(1)),
            Decision::TrustAndSave {
                replacing: Some(fp(2))
            }
        );
        let changed = presented(true, Some(2), None);
        assert!(
            matches!(&changed, Decision::Refuse(why) if why.contains("CHANGED") && why.contains(&fp(1).to_string())),
            "{changed:?}"
        );
        let unknown = presented(true, None, None);
        assert!(
            matches!(&unknown, Decision::Refuse(why) if why.contains("--fingerprint sha256:0101")),
            "{unknown:?}"
        );
        let wrong = presented(false, None, Some(2));
        assert!(
            matches!(&wrong, Decision::Refuse(why) if why.contains("--fingerprint")),
            "a wrong --fingerprint is refused even with a root: {wrong:?}"
        );
        let ask = decide(&Presented {
            server: "h:1",
            fingerprint: fp(1),
            unverified: Some("self-signed"),
            saved: None,
            expected: None,
            interactive: true,
        });
        assert_eq!(ask, Decision::Ask);
    }

    #[test]
    fn the_file_is_owner_only_and_keeps_other_entries() {
        let dir = tempfile::tempdir().unwrap();
        let known = KnownServers::beside(Some(&dir.path().join("sub/tokens.json")));
        assert_eq!(known.get("h:1"), Ok(None));
        known.save("h:1", fp(1)).unwrap();
        known.save("h:2", fp(2)).unwrap();
        known.save("h:1", fp(3)).unwrap();
        assert_eq!(known.get("h:1"), Ok(Some(fp(3))));
        assert_eq!(known.get("h:2"), Ok(Some(fp(2))));
        let path = dir.path().join("sub").join(FILE_NAME);
        assert_eq!(known.path(), Some(path.as_path()));
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::write(&path, "not json").unwrap();
        assert!(known.get("h:1").unwrap_err().contains("fix or remove it"));
        assert!(
            known.save("h:1", fp(1)).is_err(),
            "never silently rewritten"
        );
    }
}
