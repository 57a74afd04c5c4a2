//! Credentials: password rules, PBKDF2 password hashes, session tokens. (Name rules
//! live in [`crate::names`] and are re-exported here.)
//!
//! Pure functions with no actor code. Hashing is deliberately slow (that is its job),
//! so callers run [`hash_password`] and [`verify_password`] on a blocking pool, never
//! on an actor's thread.

use pbkdf2::password_hash::{PasswordHasher, PasswordVerifier};
use pbkdf2::phc::PasswordHash;
use pbkdf2::{Algorithm, Params, Pbkdf2};
use rand::Rng;
use sha2::{Digest, Sha256};

pub use crate::names::{is_valid_name, name_key, MAX_NAME_CHARS, SERVER_NAME};

/// Shortest password, in bytes.
pub const MIN_PASSWORD_BYTES: usize = 4;
/// Longest password, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Salt length in bytes (128 bits, as NIST SP 800-132 recommends at least).
const SALT_BYTES: usize = 16;
/// Token length in bytes (256 bits).
const TOKEN_BYTES: usize = 32;

/// Why a hash could not be made or checked.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("stored password hash is unreadable: {0}")]
    Stored(String),
}

/// Whether `password` has an acceptable length (4–1024 bytes).
pub fn is_valid_password(password: &str) -> bool {
    (MIN_PASSWORD_BYTES..=MAX_PASSWORD_BYTES).contains(&password.len())
}

/// The password rule, in a sentence, for error messages and prompts.
pub fn password_rule() -> String {
    format!("a password is {MIN_PASSWORD_BYTES} to {MAX_PASSWORD_BYTES} bytes")
}

/// Hashes `password` with a fresh random salt into a PHC string
/// (`$pbkdf2-sha256$i=ROUNDS,l=32$SALT$HASH`).
pub fn hash_password(password: &str, rounds: u32) -> Result<String, HashError> {
    let params = Params::new(rounds).map_err(|e| HashError::Hash(e.to_string()))?;
    let hasher = Pbkdf2::new(Algorithm::Pbkdf2Sha256, params);
    let mut salt = [0u8; SALT_BYTES];
    rand::rng().fill_bytes(&mut salt);
    hasher
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| HashError::Hash(e.to_string()))
}

/// Checks `password` against a stored PHC string, using the rounds recorded in it.
pub fn verify_password(password: &str, phc: &str) -> Result<bool, HashError> {
    let hash = PasswordHash::new(phc).map_err(|e| HashError::Stored(e.to_string()))?;
    Ok(Pbkdf2::default()
        .verify_password(password.as_bytes(), &hash)
        .is_ok())
}

/// A new session token: 256 bits from the OS-seeded CSPRNG, hex-encoded.
pub fn new_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    to_hex(&bytes)
}

/// What is stored of a token: its SHA-256 digest, hex-encoded. A leaked identity file
/// then gives nobody a usable token.
pub fn token_digest(token: &str) -> String {
    to_hex(&Sha256::digest(token.as_bytes()))
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_rules_count_bytes() {
        assert!(!is_valid_password("abc"));
        assert!(is_valid_password("abcd"));
        assert!(is_valid_password(&"x".repeat(1024)));
        assert!(!is_valid_password(&"x".repeat(1025)));
        // Two characters, four bytes.
        assert!(is_valid_password("éé"));
    }

    #[test]
    fn hashes_are_salted_phc_strings_that_verify() {
        let a = hash_password("hunter22", 1000).unwrap();
        let b = hash_password("hunter22", 1000).unwrap();
        assert!(a.starts_with("$pbkdf2-sha256$i=1000"), "{a}");
        assert_ne!(a, b, "salts differ");
        assert!(!a.contains("hunter22"));
        assert!(verify_password("hunter22", &a).unwrap());
        assert!(!verify_password("hunter23", &a).unwrap());
        assert!(verify_password("x", "not a phc string").is_err());
        assert!(hash_password("x", 10).is_err(), "below the crate's minimum");
    }

    #[test]
    fn tokens_are_random_and_stored_as_digests() {
        let t = new_token();
        assert_eq!(t.len(), 64);
        assert_ne!(t, new_token());
        let d = token_digest(&t);
        assert_eq!(d.len(), 64);
        assert_ne!(d, t);
        assert_eq!(
            token_digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
