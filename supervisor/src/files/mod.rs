//! File-transfer channels (docs/FILES.md): watched local folders whose complete files are each
//! handed to a service, in arrival order, exactly once across restarts and the cluster, then
//! moved to a processed or failed folder or deleted.
//!
//! One server of the cluster takes a channel's files at a time: the holder of the channel's
//! lease in the store (renewed while it runs; another server takes over once it expires).
//! The holder watches the folders (notify: inotify on Linux), keeps which files are complete
//! ([`tracker`]), and for each batch of complete files, oldest first: claims them in one
//! store transaction (one row per file version), calls the service for each through the
//! worker pool, records the outcomes in one transaction, and only then moves the files; a
//! stop between the two moves them at the next start without a second call, and a file whose
//! call never got its outcome recorded (a `kill -9`) is handed again, marked redelivered.
//!
//! Knows `model`, `store` (the lease and the rows), `lifecycle` (the pool) and `metrics`
//! (`oxbus_inbound_messages_total{type="file"}`) only. Boot builds one [`FileChannels`], applies the stored definitions, hands it the pool,
//! starts it and drains it at shutdown; the sync loop and the admin API apply each config
//! version's definitions.

mod channel;
pub mod tracker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::lifecycle::pool::Pool;
use crate::model::files::FileChannel;
use crate::store::Store;

/// How long a drain waits for the files being handed.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// This server's file-transfer channels.
#[derive(Debug, Clone)]
pub struct FileChannels {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    cx: channel::Cx,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    defs: Vec<FileChannel>,
    running: HashMap<String, Running>,
    /// Tasks of channels stopped (deleted, changed, deactivated) and maybe not ended yet: a
    /// channel of the same name starts only after them, so one server never runs a channel
    /// twice.
    stopping: HashMap<String, Vec<JoinHandle<()>>>,
    started: bool,
    draining: bool,
}

#[derive(Debug)]
struct Running {
    def: FileChannel,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    status: Arc<channel::Status>,
}

/// This server's view of one channel (`GET /v1/inbound/file[/{name}/stats]`).
#[derive(Debug, Clone, Serialize)]
pub struct ChannelStatus {
    pub name: String,
    /// `holding` (this server takes the files), `standby` (another server does), `starting`,
    /// `error`, `inactive` or `stopped`.
    pub state: String,
    /// The server holding the lease, when known.
    pub holder: Option<String>,
    pub epoch: Option<i64>,
    /// Files seen and not yet complete or not yet taken.
    pub pending: usize,
    /// Files handed and done, failed, and handed again after a stop, since this server
    /// started.
    pub done: u64,
    pub failed: u64,
    pub redelivered: u64,
    pub last_error: Option<String>,
    pub last_file: Option<String>,
}

impl FileChannels {
    /// `server`: this server's name (the lease holder's).
    pub fn new(server: &str, store: Store, metrics: Arc<crate::metrics::Metrics>) -> FileChannels {
        FileChannels {
            inner: Arc::new(Shared {
                cx: channel::Cx {
                    server: server.to_owned(),
                    store,
                    metrics,
                    pool: Arc::new(OnceLock::new()),
                },
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// The pool the channels call their services through (set once, before `start`).
    pub fn set_pool(&self, pool: Arc<Pool>) {
        let _ = self.inner.cx.pool.set(pool);
    }

    /// Makes `defs` the channels: starts new ones, restarts changed ones (after the old one
    /// finished its files and let go of the lease), stops deleted and inactive ones.
    pub fn apply(&self, defs: &[FileChannel]) {
        let mut st = self.inner.state.lock().expect("files lock");
        st.defs = defs.to_vec();
        if st.started && !st.draining {
            self.reconcile(&mut st);
        }
    }

    fn reconcile(&self, st: &mut State) {
        let wanted: HashMap<&str, &FileChannel> = st
            .defs
            .iter()
            .filter(|d| d.is_active)
            .map(|d| (d.name.as_str(), d))
            .collect();
        let stale: Vec<String> = st
            .running
            .iter()
            .filter(|(n, r)| wanted.get(n.as_str()).is_none_or(|d| **d != r.def))
            .map(|(n, _)| n.clone())
            .collect();
        for name in stale {
            if let Some(r) = st.running.remove(&name) {
                let _ = r.stop.send(true);
                st.stopping.entry(name).or_default().push(r.task);
            }
        }
        st.stopping.retain(|_, tasks| {
            tasks.retain(|t| !t.is_finished());
            !tasks.is_empty()
        });
        for (name, def) in wanted {
            if st.running.contains_key(name) {
                continue;
            }
            let (stop, stop_rx) = watch::channel(false);
            let status = Arc::new(channel::Status::new(def.quiet_ms));
            let task = tokio::spawn(channel::run(
                self.inner.cx.clone(),
                def.clone(),
                stop_rx,
                status.clone(),
                st.stopping.remove(name).unwrap_or_default(),
            ));
            st.running.insert(
                name.to_owned(),
                Running {
                    def: def.clone(),
                    stop,
                    task,
                    status,
                },
            );
        }
    }

    /// Starts the channels applied so far and every later one.
    pub fn start(&self) {
        let mut st = self.inner.state.lock().expect("files lock");
        st.started = true;
        self.reconcile(&mut st);
    }

    /// Stops taking files: each channel lets the calls in flight finish (bounded), records
    /// their outcomes, moves their files and lets go of its lease.
    pub async fn drain(&self) {
        let tasks: Vec<JoinHandle<()>> = {
            let mut st = self.inner.state.lock().expect("files lock");
            st.draining = true;
            let stopping: Vec<JoinHandle<()>> = st.stopping.drain().flat_map(|(_, t)| t).collect();
            st.running
                .drain()
                .map(|(_, r)| {
                    let _ = r.stop.send(true);
                    r.task
                })
                .chain(stopping)
                .collect()
        };
        let all = futures_util::future::join_all(tasks);
        if tokio::time::timeout(DRAIN_TIMEOUT, all).await.is_err() {
            tracing::warn!(
                "file channels: calls still running after {DRAIN_TIMEOUT:?}; their files are \
                 handed again at the next start"
            );
        }
    }

    /// This server's status of each defined channel.
    pub fn status(&self) -> Vec<ChannelStatus> {
        let st = self.inner.state.lock().expect("files lock");
        st.defs
            .iter()
            .map(|d| match st.running.get(&d.name) {
                Some(r) => r.status.snapshot(&d.name),
                None => ChannelStatus {
                    name: d.name.clone(),
                    state: if !d.is_active {
                        "inactive"
                    } else if st.draining {
                        "stopped"
                    } else {
                        "starting"
                    }
                    .into(),
                    holder: None,
                    epoch: None,
                    pending: 0,
                    done: 0,
                    failed: 0,
                    redelivered: 0,
                    last_error: None,
                    last_file: None,
                },
            })
            .collect()
    }
}
