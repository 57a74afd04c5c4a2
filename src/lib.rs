//! echochat: a self-hosted TCP chat server with accounts, and its terminal client.
//!
//! Three programs share this library: the server (`src/main.rs`), the terminal client
//! (`src/client_main.rs`) and the benchmark (`bench/`). What they share is the wire
//! layer — framing ([`codec`]) and the messages ([`protocol`]) — and the rules both
//! sides judge by: where a server is ([`endpoint`]), what a name may be ([`names`]),
//! the password rules ([`auth`]), and how text from outside is made safe to show
//! ([`text`]). The server is [`server`]
//! (its plain modules) and [`actors`] (the actors that own its state); the client is
//! [`client`]. The binaries only parse arguments and call into these.

pub mod actors;
pub mod auth;
pub mod client;
pub mod codec;
pub mod endpoint;
pub mod names;
pub mod protocol;
pub mod server;
pub mod text;
