//! The one error type of the load generator.
//!
//! Every failure ends up as a line on stderr naming what was being done, so a run that
//! cannot finish says why instead of panicking: a malformed frame from the server, a
//! refused login or a missed deadline are all values of [`BenchError`].

use std::io;
use std::time::Duration;

/// Why a step of the benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A socket, pipe or file operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// The server sent something the protocol does not allow at this point.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The server closed a connection the benchmark still needed.
    #[error("the server closed the connection ({0})")]
    Closed(&'static str),
    /// A step did not finish within its time limit.
    #[error("timed out after {:.1} s: {what}", .after.as_secs_f64())]
    Timeout { what: String, after: Duration },
    /// The server process could not be started or used.
    #[error("server: {0}")]
    Server(String),
    /// The command line asks for something impossible.
    #[error("usage: {0}")]
    Usage(String),
}

/// Shorthand used by every module of the benchmark.
pub type Result<T> = std::result::Result<T, BenchError>;

impl BenchError {
    /// An I/O error with what was being attempted.
    pub fn io(context: impl Into<String>, source: io::Error) -> BenchError {
        BenchError::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<echochat::codec::FrameError> for BenchError {
    fn from(e: echochat::codec::FrameError) -> Self {
        match e {
            echochat::codec::FrameError::Io(source) => BenchError::io("read", source),
            other => BenchError::Protocol(other.to_string()),
        }
    }
}

/// Runs `future` with a deadline, turning a miss into [`BenchError::Timeout`].
pub async fn within<T>(
    after: Duration,
    what: impl Into<String>,
    future: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(after, future).await {
        Ok(result) => result,
        Err(_) => Err(BenchError::Timeout {
            what: what.into(),
            after,
        }),
    }
}
