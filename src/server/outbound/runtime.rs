//! The I/O runtime: a work-stealing runtime (one worker per core) on which every
//! connection's writer runs and its socket is registered.
//!
//! Writers pinned to their session's thread wait for that thread even while another
//! core is idle, and a session's reads wait behind its thread's round of writes; measured
//! side by side with a minimal server, that doubled delivery latency at a fixed load
//! (docs/latency-study.md). Here a published frame wakes the writers and whichever
//! worker is free takes the next of them, and the session threads only read.

use std::io;
use std::sync::OnceLock;

use tokio::net::TcpStream;

/// The runtime, started on first use; `None` if it could not be started (writers then
/// run on their session's thread).
pub fn io_runtime() -> Option<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(cores)
                .thread_name("echochat-io")
                .enable_io()
                .enable_time()
                .build()
                .map_err(|err| log::error!("cannot start the I/O threads: {err}"))
                .ok()
        })
        .as_ref()
}

/// Registers an accepted socket with the I/O runtime's reactor: its writer is driven
/// there, and the session may poll its read half from any thread.
pub fn register_tcp(socket: std::net::TcpStream) -> io::Result<TcpStream> {
    socket.set_nonblocking(true)?;
    match io_runtime() {
        Some(runtime) => {
            let _inside = runtime.enter();
            TcpStream::from_std(socket)
        }
        None => TcpStream::from_std(socket),
    }
}
