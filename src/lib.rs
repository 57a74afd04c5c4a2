//! echochat: a self-hosted TCP chat server with accounts, and its terminal client.
//!
//! The library holds everything both binaries share and everything worth testing on its
//! own: the wire format ([`codec`]), the messages ([`protocol`]), and the server's parts.
//! `src/main.rs` (the server) and `src/client_main.rs` (the client) only wire them up.

pub mod client;
pub mod codec;
pub mod protocol;
