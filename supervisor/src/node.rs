//! This server's own state as the other subsystems see it: its name in the cluster, this
//! boot's id, whether it is ready, whether the config store answers, the config version it
//! has applied, and the wake-up for the sync loop. Plain flags and counters: it holds no
//! subsystem and knows no HTTP, workers or cluster bus — every layer may read it.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};
use tracing::debug;

/// The node state one server shares between its subsystems (built once, by boot).
#[derive(Debug)]
pub struct Node {
    /// This server's name in the store's server list.
    pub name: String,
    /// This run of the server (random, new at every start): the scheduler's lease belongs to
    /// a boot, not only to a name, so a server killed and restarted under the same name is
    /// a new candidate, not the old leader.
    pub boot_id: String,
    pub started: Instant,
    /// True once the first generation is up, false again once shutdown starts.
    pub ready: AtomicBool,
    /// False while the config store is unreachable (the server serves on what it has).
    pub store_ok: AtomicBool,
    /// The config version this server has applied (see `cluster::sync`).
    pub applied_version: AtomicI64,
    /// Notified after a change made through this server, or when a peer announces a
    /// version this server has not applied: the sync loop runs at once.
    pub changed: tokio::sync::Notify,
}

impl Node {
    pub fn new(name: String, started: Instant, store_ok: bool, applied_version: i64) -> Node {
        Node {
            name,
            boot_id: crate::random::random_hex(6),
            started,
            ready: AtomicBool::new(false),
            store_ok: AtomicBool::new(store_ok),
            applied_version: AtomicI64::new(applied_version),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// The config version this server has applied.
    pub fn applied(&self) -> i64 {
        self.applied_version.load(Ordering::SeqCst)
    }

    /// Sets the config version this server runs, and records it in the store's server list
    /// at once through `record` (the store's `record_applied` for this server, bounded), so
    /// that `cluster status` — and a deploy's peers, which answer the deploy only after this
    /// — is right straight after a change, not at the next heartbeat. `record` is not run
    /// when the version was already applied.
    pub async fn set_applied<E: std::fmt::Display>(
        &self,
        version: i64,
        record: impl std::future::Future<Output = Result<(), E>>,
    ) {
        if self.applied_version.swap(version, Ordering::SeqCst) == version {
            return;
        }
        match tokio::time::timeout(RECORD_LIMIT, record).await {
            Ok(Ok(())) => {}
            // The heartbeat records it later; nothing else depends on it.
            Ok(Err(e)) => debug!(error = %e, "could not record the applied config version"),
            Err(_) => debug!("recording the applied config version: no answer in time"),
        }
    }
}

/// How long recording the applied version may hold a catch-up (or a deploy's answer).
const RECORD_LIMIT: Duration = Duration::from_secs(2);
