//! Everything only the server uses, beside its actors (`crate::actors`): the command
//! line, the listening socket, outbound delivery, limits, password hashing, the log,
//! the identities, the files of the state folder, and browser access (`http`).

pub mod cluster;
pub mod config;
pub mod hashing;
pub mod http;
pub mod identity;
pub mod limits;
pub mod listener;
pub mod logging;
pub mod outbound;
pub mod rooms;
mod start;
pub mod store;
pub mod tls;
pub mod transport;

pub use start::{run, StartError};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
