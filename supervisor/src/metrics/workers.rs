//! Metrics of the workers: state, restarts by reason, RSS, queue depth, IPC frames and bytes.
//!
//! Counts (restarts, IPC frames and bytes) are recorded where they happen. The workers' state,
//! in-flight count and RSS and the dispatch queue's depth are states, read at scrape time
//! from a [`WorkerSource`] (the pool) by a collector boot registers ([`WorkerCollector`]).
//! A worker is labelled by its slot (0..2n-1 for n workers: a replacement runs beside the
//! worker it replaces for a while), never by its pid or id, which grow without bound.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::sync::Weak;

/// Why a worker was replaced: each a fixed label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Restart {
    /// It died (killed, crashed, exited) while it was not being retired.
    Crash,
    /// It served `workers.max_requests` (plus its jitter).
    RecycleRequests,
    /// Its resident memory passed `workers.max_rss_mb`.
    RecycleRss,
    /// A request (or a deploy's check) on it passed its deadline.
    Deadline,
    /// It stopped answering heartbeats and was killed.
    Heartbeat,
}

impl Restart {
    const ALL: [Restart; 5] = [
        Restart::Crash,
        Restart::RecycleRequests,
        Restart::RecycleRss,
        Restart::Deadline,
        Restart::Heartbeat,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Restart::Crash => "crash",
            Restart::RecycleRequests => "recycle_requests",
            Restart::RecycleRss => "recycle_rss",
            Restart::Deadline => "deadline",
            Restart::Heartbeat => "heartbeat",
        }
    }
}

/// A worker as a scrape sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Spawned, not yet `READY`.
    Starting,
    /// Takes new work, has none.
    Ready,
    /// Takes new work, has some in flight.
    Busy,
    /// Finishing what it has before it stops (retired, replaced, recycled).
    Draining,
    /// Its connection is gone; not yet reaped.
    Dead,
}

impl State {
    const ALL: [State; 5] = [
        State::Starting,
        State::Ready,
        State::Busy,
        State::Draining,
        State::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Ready => "ready",
            State::Busy => "busy",
            State::Draining => "draining",
            State::Dead => "dead",
        }
    }
}

/// One worker's figures at scrape time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerSample {
    pub slot: u32,
    pub state: State,
    pub inflight: u64,
    /// None when it cannot be read (the process is gone, or no /proc).
    pub rss_bytes: Option<u64>,
}

/// What the worker figures are read from at scrape time (the pool).
pub trait WorkerSource: Send + Sync + 'static {
    /// Every worker the pool holds now.
    fn workers(&self) -> Vec<WorkerSample>;
    /// Requests waiting for a free worker now.
    fn queue_depth(&self) -> u64;
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

/// IPC traffic of one direction.
#[derive(Debug, Clone, Default)]
pub struct IpcCounters {
    pub frames: Counter,
    pub bytes: Counter,
}

/// The workers' figures that are counted as they happen.
pub struct WorkerMetrics {
    restarts: [Counter; Restart::ALL.len()],
    /// Frames and bytes the server sent to its workers.
    pub to_worker: IpcCounters,
    /// Frames and bytes the server read from its workers.
    pub from_worker: IpcCounters,
}

impl WorkerMetrics {
    pub fn register(registry: &mut Registry) -> WorkerMetrics {
        let restarts = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "worker_restarts",
            "Workers replaced, by reason",
            restarts.clone(),
        );
        let frames = Family::<DirectionLabel, Counter>::default();
        registry.register(
            "ipc_frames",
            "IPC frames between the server and its workers, by direction",
            frames.clone(),
        );
        let bytes = Family::<DirectionLabel, Counter>::default();
        registry.register(
            "ipc_bytes",
            "IPC bytes between the server and its workers, by direction",
            bytes.clone(),
        );
        let direction = |d: &'static str| IpcCounters {
            frames: frames.get_or_create_owned(&DirectionLabel { direction: d }),
            bytes: bytes.get_or_create_owned(&DirectionLabel { direction: d }),
        };
        WorkerMetrics {
            restarts: Restart::ALL
                .map(|r| restarts.get_or_create_owned(&ReasonLabel { reason: r.as_str() })),
            to_worker: direction("to_worker"),
            from_worker: direction("from_worker"),
        }
    }

    /// Counts a worker replaced for `reason`.
    pub fn restarted(&self, reason: Restart) {
        self.restarts[reason as usize].inc();
    }
}

/// Reads the workers' states at scrape time (registered by boot once the pool exists). It
/// holds the source weakly: the pool holds the metrics.
#[derive(Debug)]
pub struct WorkerCollector<S: WorkerSource> {
    source: Weak<S>,
}

impl<S: WorkerSource> WorkerCollector<S> {
    pub fn new(source: Weak<S>) -> WorkerCollector<S> {
        WorkerCollector { source }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SlotLabel {
    slot: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SlotStateLabel {
    slot: u32,
    state: &'static str,
}

impl<S: WorkerSource + std::fmt::Debug> Collector for WorkerCollector<S> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(source) = self.source.upgrade() else {
            return Ok(());
        };
        let mut workers = source.workers();
        workers.sort_by_key(|w| w.slot);
        let queue = ConstGauge::new(source.queue_depth() as i64);
        queue.encode(encoder.encode_descriptor(
            "worker_queue_depth",
            "Requests waiting for a free worker",
            None,
            queue.metric_type(),
        )?)?;
        {
            let mut e = encoder.encode_descriptor(
                "worker_state",
                "1 for the state each worker slot is in (starting, ready, busy, draining, dead), 0 for the others",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for w in &workers {
                for s in State::ALL {
                    let labels = SlotStateLabel {
                        slot: w.slot,
                        state: s.as_str(),
                    };
                    ConstGauge::new(i64::from(w.state == s)).encode(e.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut e = encoder.encode_descriptor(
                "worker_inflight",
                "Requests in flight on each worker slot",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for w in &workers {
                ConstGauge::new(w.inflight as i64)
                    .encode(e.encode_family(&SlotLabel { slot: w.slot })?)?;
            }
        }
        {
            let mut e = encoder.encode_descriptor(
                "worker_resident_memory_bytes",
                "Resident memory (RSS) of each worker slot's process",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for w in &workers {
                if let Some(rss) = w.rss_bytes {
                    ConstGauge::new(rss as i64)
                        .encode(e.encode_family(&SlotLabel { slot: w.slot })?)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Debug)]
    struct Fixed(Vec<WorkerSample>);

    impl WorkerSource for Fixed {
        fn workers(&self) -> Vec<WorkerSample> {
            self.0.clone()
        }
        fn queue_depth(&self) -> u64 {
            3
        }
    }

    #[test]
    fn states_restarts_and_ipc_encode_with_bounded_labels() {
        let mut registry = Registry::with_prefix("oxbus");
        let m = WorkerMetrics::register(&mut registry);
        let source = Arc::new(Fixed(vec![
            WorkerSample {
                slot: 1,
                state: State::Busy,
                inflight: 2,
                rss_bytes: Some(4096),
            },
            WorkerSample {
                slot: 0,
                state: State::Starting,
                inflight: 0,
                rss_bytes: None,
            },
        ]));
        registry.register_collector(Box::new(WorkerCollector::new(Arc::downgrade(&source))));
        m.restarted(Restart::Crash);
        m.to_worker.frames.inc();
        m.to_worker.bytes.inc_by(100);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        for line in [
            "oxbus_worker_restarts_total{reason=\"crash\"} 1",
            "oxbus_worker_restarts_total{reason=\"heartbeat\"} 0",
            "oxbus_ipc_frames_total{direction=\"to_worker\"} 1",
            "oxbus_ipc_bytes_total{direction=\"to_worker\"} 100",
            "oxbus_ipc_bytes_total{direction=\"from_worker\"} 0",
            "oxbus_worker_queue_depth 3",
            "oxbus_worker_state{slot=\"0\",state=\"starting\"} 1",
            "oxbus_worker_state{slot=\"0\",state=\"ready\"} 0",
            "oxbus_worker_state{slot=\"1\",state=\"busy\"} 1",
            "oxbus_worker_inflight{slot=\"1\"} 2",
            "oxbus_worker_resident_memory_bytes{slot=\"1\"} 4096",
        ] {
            assert!(out.contains(&format!("{line}\n")), "{line} not in\n{out}");
        }
        assert!(!out.contains("oxbus_worker_resident_memory_bytes{slot=\"0\"}"));
        // Once the pool is gone the collector reports nothing rather than failing.
        drop(source);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(!out.contains("oxbus_worker_state"), "{out}");
    }
}
