//! AMQP channels (docs/CONNECTORS.md "AMQP channels"): per channel, `consumers` lapin
//! consumers of `queue` with basic.qos `prefetch`, on every server of the cluster
//! (competing consumers: the broker spreads the queue over them). Each delivery invokes the
//! channel's service through the worker pool and is acked only after the service returned
//! without an exception; a failure (an exception, a worker that died, a timeout) rejects it,
//! requeued until `max_redeliveries`, then without requeue (the queue's dead-letter
//! exchange, if any, gets it) — [`consume`].
//!
//! This file is the registry: which channels run, their live status and figures. A changed
//! definition restarts its channel (the old run finishes its in-flight messages before the
//! new one connects, so the service never sees one channel's messages twice at once); a
//! deleted or inactive one stops; a lost broker connection is retried with a jittered,
//! capped backoff. Shutdown (the watch boot hands to [`AmqpChannels::start`]) cancels every
//! consumer, lets in-flight messages finish (bounded by [`DRAIN_TIMEOUT`]) and closes the
//! channels, so everything unacked goes back to its queue.

mod acks;
mod consume;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::model::amqp::AmqpChannel;

/// How long a stopping channel waits for its in-flight messages before it closes (their
/// messages, unacked, go back to the queue).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The metrics' `type` label of these channels.
const KIND: &str = "amqp";

/// This server's AMQP channels.
pub struct AmqpChannels {
    server: String,
    key: Arc<crate::secrets::Key>,
    metrics: Arc<crate::metrics::Metrics>,
    pool: OnceLock<Arc<crate::lifecycle::pool::Pool>>,
    state: Mutex<State>,
}

impl std::fmt::Debug for AmqpChannels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpChannels")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    /// The definitions applied last, by name.
    defs: BTreeMap<String, AmqpChannel>,
    /// Each channel's status: kept across restarts of the channel (its figures go on),
    /// dropped with the channel.
    status: BTreeMap<String, Arc<Status>>,
    /// The runs, by name: at most one per channel accepts deliveries.
    runs: BTreeMap<String, Run>,
    /// Runs told to stop (a deleted or inactive channel) that may still be finishing their
    /// in-flight messages: a run of the same name started later waits for its end.
    stopping: BTreeMap<String, JoinHandle<()>>,
    /// Set by `start`: until then nothing runs (boot applies the stored definitions first).
    shutdown: Option<watch::Receiver<bool>>,
}

struct Run {
    def: AmqpChannel,
    stop: watch::Sender<bool>,
    /// Set when the channel is deleted: the run removes its metrics once it ended (not
    /// before: its in-flight messages and its last gauge update would bring them back).
    deleted: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

/// A channel's live state on this server.
#[derive(Debug, Default)]
pub struct Status {
    connected: AtomicBool,
    last_error: Mutex<Option<String>>,
    consumed: AtomicU64,
    acked: AtomicU64,
    requeued: AtomicU64,
    returned: AtomicU64,
    rejected: AtomicU64,
    reconnects: AtomicU64,
}

/// A channel's status as the admin API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ChannelStats {
    pub name: String,
    /// Whether it runs on this server (`is_active` and started).
    pub running: bool,
    pub connected: bool,
    pub last_error: Option<String>,
    pub consumed: u64,
    pub acked: u64,
    pub requeued: u64,
    /// Given back to the queue uncounted: the pool could not take them (busy, no worker
    /// yet, the service not deployed yet).
    pub returned: u64,
    pub rejected: u64,
    /// Connections opened after a lost one.
    pub reconnects: u64,
}

impl Status {
    fn set_error(&self, e: &str) {
        *self.last_error.lock().expect("status lock") = Some(e.to_owned());
    }
}

impl AmqpChannels {
    pub fn new(
        server: &str,
        key: Arc<crate::secrets::Key>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> AmqpChannels {
        AmqpChannels {
            server: server.to_owned(),
            key,
            metrics,
            pool: OnceLock::new(),
            state: Mutex::new(State::default()),
        }
    }

    /// The pool the services are invoked through (set once, before `start`).
    pub fn set_pool(&self, pool: Arc<crate::lifecycle::pool::Pool>) {
        let _ = self.pool.set(pool);
    }

    /// Makes `defs` the AMQP channels: starts new active ones, restarts changed ones (the
    /// old run's in-flight messages finish first), stops deleted and inactive ones. Before
    /// `start`, only remembers them.
    pub fn apply(&self, defs: &[AmqpChannel]) {
        let mut st = self.state.lock().expect("amqp channels lock");
        st.defs = defs.iter().map(|d| (d.name.clone(), d.clone())).collect();
        let State {
            defs,
            status,
            runs,
            stopping,
            shutdown,
        } = &mut *st;
        stopping.retain(|_, task| !task.is_finished());
        status.retain(|name, _| defs.contains_key(name));
        for d in defs.values() {
            status.entry(d.name.clone()).or_default();
        }
        let Some(shutdown) = shutdown.clone() else {
            return;
        };
        // Stop what is gone, inactive or changed; keep what is unchanged.
        let names: Vec<String> = runs.keys().cloned().collect();
        let mut previous: BTreeMap<String, JoinHandle<()>> = BTreeMap::new();
        for name in names {
            let keep = defs
                .get(&name)
                .is_some_and(|d| d.is_active && *d == runs[&name].def);
            if keep {
                continue;
            }
            let run = runs.remove(&name).expect("listed run");
            let _ = run.stop.send(true);
            if !defs.contains_key(&name) {
                run.deleted.store(true, Ordering::SeqCst);
            }
            previous.insert(name, run.task);
        }
        for d in defs.values().filter(|d| d.is_active) {
            if runs.contains_key(&d.name) {
                continue;
            }
            let status = status[&d.name].clone();
            let before = previous
                .remove(&d.name)
                .or_else(|| stopping.remove(&d.name));
            let run = self.spawn(d.clone(), status, shutdown.clone(), before);
            runs.insert(d.name.clone(), run);
        }
        // What stopped for good is remembered until it ends.
        stopping.extend(previous);
    }

    fn spawn(
        &self,
        def: AmqpChannel,
        status: Arc<Status>,
        shutdown: watch::Receiver<bool>,
        previous: Option<JoinHandle<()>>,
    ) -> Run {
        let (stop, stop_rx) = watch::channel(false);
        let ctx = consume::Ctx {
            server: self.server.clone(),
            key: self.key.clone(),
            metrics: self.metrics.clone(),
            pool: self.pool.get().cloned(),
            status,
        };
        let d = def.clone();
        let deleted = Arc::new(AtomicBool::new(false));
        let gone = deleted.clone();
        let metrics = self.metrics.clone();
        let task = tokio::spawn(async move {
            if let Some(p) = previous {
                // The old run of a changed channel finishes its in-flight messages first.
                let _ = p.await;
            }
            let name = d.name.clone();
            consume::run(ctx, d, stop_rx, shutdown).await;
            if gone.load(Ordering::SeqCst) {
                metrics.inbound.removed(KIND, &name);
            }
        });
        Run {
            def,
            stop,
            deleted,
            task,
        }
    }

    /// Starts the channels applied so far (and every later one) until `shutdown` turns
    /// true.
    pub fn start(&self, shutdown: watch::Receiver<bool>) {
        let defs: Vec<AmqpChannel> = {
            let mut st = self.state.lock().expect("amqp channels lock");
            st.shutdown = Some(shutdown);
            st.defs.values().cloned().collect()
        };
        self.apply(&defs);
    }

    /// Stops every channel and waits for them all to finish their in-flight messages and
    /// close, side by side, within one deadline ([`DRAIN_TIMEOUT`] and a margin).
    pub async fn drain(&self) {
        let (runs, stopping): (Vec<Run>, Vec<(String, JoinHandle<()>)>) = {
            let mut st = self.state.lock().expect("amqp channels lock");
            st.shutdown = None;
            (
                std::mem::take(&mut st.runs).into_values().collect(),
                std::mem::take(&mut st.stopping).into_iter().collect(),
            )
        };
        for r in &runs {
            let _ = r.stop.send(true);
        }
        let tasks = runs
            .into_iter()
            .map(|r| (r.def.name, r.task))
            .chain(stopping);
        let (names, tasks): (Vec<String>, Vec<JoinHandle<()>>) = tasks.unzip();
        let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
        // Each run bounds its own drain; this bound is for a run stuck elsewhere.
        let all = futures_util::future::join_all(tasks);
        if tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(5), all)
            .await
            .is_err()
        {
            for (name, a) in names.iter().zip(aborts) {
                if !a.is_finished() {
                    tracing::warn!(channel = %name, "AMQP channel did not stop in time");
                    a.abort();
                }
            }
        }
    }

    /// Every channel's status on this server, by name.
    pub fn stats(&self) -> Vec<ChannelStats> {
        let st = self.state.lock().expect("amqp channels lock");
        st.status
            .iter()
            .map(|(name, s)| ChannelStats {
                name: name.clone(),
                running: st.runs.contains_key(name),
                connected: s.connected.load(Ordering::Relaxed),
                last_error: s.last_error.lock().expect("status lock").clone(),
                consumed: s.consumed.load(Ordering::Relaxed),
                acked: s.acked.load(Ordering::Relaxed),
                requeued: s.requeued.load(Ordering::Relaxed),
                returned: s.returned.load(Ordering::Relaxed),
                rejected: s.rejected.load(Ordering::Relaxed),
                reconnects: s.reconnects.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// One channel's status (none: no such channel).
    pub fn stats_of(&self, name: &str) -> Option<ChannelStats> {
        self.stats().into_iter().find(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Arc<crate::secrets::Key> {
        let dir =
            std::env::temp_dir().join(format!("oxbus-amqpkey-{}", crate::random::random_hex(8)));
        std::fs::create_dir_all(&dir).unwrap();
        let k = crate::secrets::Key::create(&dir.join("k")).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
        Arc::new(k)
    }

    fn def(name: &str, active: bool) -> AmqpChannel {
        // Port 1 on loopback refuses at once: the run keeps retrying, which is all this
        // test needs of it.
        serde_json::from_value(serde_json::json!({
            "name": name, "address": "amqp://127.0.0.1:1/%2f", "queue": "q",
            "service": "s", "is_active": active, "connect_timeout_ms": 200,
        }))
        .unwrap()
    }

    fn running(c: &AmqpChannels) -> Vec<(String, bool)> {
        c.stats().into_iter().map(|s| (s.name, s.running)).collect()
    }

    #[tokio::test]
    async fn channels_run_from_start_follow_edits_and_stop_on_drain() {
        let metrics = Arc::new(crate::metrics::Metrics::new(true));
        let c = AmqpChannels::new("s1", key(), metrics);
        c.apply(&[def("a", true), def("b", false)]);
        // Applied before start: known, not running.
        assert_eq!(running(&c), vec![("a".into(), false), ("b".into(), false)]);
        let (tx, rx) = watch::channel(false);
        c.start(rx);
        assert_eq!(running(&c), vec![("a".into(), true), ("b".into(), false)]);
        // a inactive, b active; then a deleted.
        c.apply(&[def("a", false), def("b", true)]);
        assert_eq!(running(&c), vec![("a".into(), false), ("b".into(), true)]);
        c.apply(&[def("b", true)]);
        assert_eq!(running(&c), vec![("b".into(), true)]);
        // The refused connect is the channel's last error, naming it.
        let b = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let b = c.stats_of("b").unwrap();
                if b.last_error.is_some() {
                    break b;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("a connect error within 10 s");
        assert!(b.last_error.as_deref().unwrap().contains("\"b\""), "{b:?}");
        assert!(!b.connected);
        let _ = tx.send(true);
        tokio::time::timeout(Duration::from_secs(10), c.drain())
            .await
            .expect("drained");
        assert_eq!(running(&c), vec![("b".into(), false)]);
    }
}
