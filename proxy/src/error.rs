//! The proxy library's errors: why [`crate::run`] did not start or stopped
//! ([`ProxyError`]), why a [`crate::ServerSource`] listed no servers ([`SourceError`]), and
//! why a read of the server list failed ([`ListError`]). Each message is the line the proxy
//! prints or logs, so it stays byte-identical. Errors only: no I/O here, and nothing of the
//! data path (its errors live beside it in [`crate::app`]).

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Why the proxy did not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A config naming a store was run with [`crate::Upstreams::Static`].
    #[error("the proxy config names a store: its servers need a ServerSource")]
    NeedsSource,
    /// The state directory (pid file, upgrade socket) could not be created.
    #[error("cannot create state_dir {}: {source}", path.display())]
    StateDir { path: PathBuf, source: io::Error },
    /// `--upgrade` with no live proxy named by the pid file.
    #[error(
        "--upgrade: no running proxy to take over (pid file {} names no live process)",
        pid_file.display()
    )]
    NothingToUpgrade { pid_file: PathBuf },
    /// Another proxy already runs with this state directory.
    #[error(
        "a proxy (pid {pid}) already runs with state_dir {}; use --upgrade to replace it",
        state_dir.display()
    )]
    AlreadyRunning { pid: i32, state_dir: PathBuf },
    /// A listening address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: io::Error },
    /// The runtime of the server source did not start.
    #[error("cannot start the server-list runtime: {0}")]
    SideRuntime(#[source] io::Error),
    /// A static upstream that pingora does not take as an address.
    #[error("upstream {server}: {source}")]
    Upstream {
        server: String,
        source: Box<pingora_core::Error>,
    },
    /// `--upgrade` found no server list within the first-list timeout.
    #[error(
        "--upgrade: no server list from the config store within {waited_ms} ms ({reason}); \
         the running proxy keeps serving: upgrade again once the store answers"
    )]
    UpgradeWithoutList {
        waited_ms: u64,
        reason: std::sync::Arc<ListError>,
    },
    /// The running proxy could not be asked for its sockets.
    #[error("cannot signal the running proxy (pid {pid}): {source}")]
    Signal { pid: i32, source: nix::Error },
    /// The TLS listener's certificate or key.
    #[error("TLS certificate or key: {0}")]
    Tls(#[source] Box<pingora_core::Error>),
    /// The pid file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    WritePid { path: PathBuf, source: io::Error },
    /// A thread of the proxy's own did not start.
    #[error("{0}")]
    Thread(#[source] io::Error),
    /// One of pingora's own calls (building the health check's request).
    #[error("{0}")]
    Pingora(#[from] Box<pingora_core::Error>),
}

/// Why a [`crate::ServerSource`] could not list the servers: what it was reading, and why.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct SourceError {
    what: &'static str,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl SourceError {
    /// `what` names the source (e.g. "config store"); `source` is why it failed.
    pub fn new(what: &'static str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        SourceError {
            what,
            source: Box::new(source),
        }
    }
}

/// Why a read of the server list failed (the last list is kept).
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The source answered with an error.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The read's task failed (panicked or was cancelled).
    #[error("server list read failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// The source did not answer within the refresh timeout.
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// No read failed, yet no list came before the first-list deadline.
    #[error("the store did not answer in time")]
    NoAnswer,
}
