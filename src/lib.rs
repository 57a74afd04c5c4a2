//! echochat: a self-hosted TCP chat server with accounts, and its terminal client.
//!
//! The library holds everything both binaries share and everything worth testing on its
//! own: the wire format ([`codec`]), the messages ([`protocol`]), credentials
//! ([`auth`], [`identity`]), the server's actors ([`actors`]) and outbound delivery
//! ([`outbound`]). `src/main.rs` (the server) and `src/client_main.rs` (the client)
//! only parse arguments and wire these together.

pub mod actors;
pub mod auth;
pub mod client;
pub mod codec;
pub mod config;
pub mod hashing;
pub mod history_file;
pub mod identity;
pub mod identity_file;
pub mod limits;
pub mod listener;
pub mod logging;
pub mod names;
pub mod outbound;
pub mod protocol;
pub mod state_files;
pub mod text;
