//! The actors, one file each, with the messages each one handles beside it:
//!
//! - [`chat_server::ChatServer`] owns accounts, online sessions, history and the pause
//!   flag;
//! - [`session::Session`], one per TCP connection, bridges the framed stream;
//! - [`persistence::Persistence`] owns the files of the state folder;
//! - [`admin_console::AdminConsole`] turns stdin lines into messages to the others.

pub mod admin_console;
pub mod chat_server;
pub mod persistence;
pub mod session;
