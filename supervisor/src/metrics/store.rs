//! Metrics of the config store: how long its operations take, how many fail and how many
//! their callers gave up on, by the group of tables they work on (`op`, a fixed set:
//! [`OPS`]), and whether the server runs degraded (on its snapshot, the store unreachable),
//! read at scrape time.
//!
//! `store/` records here itself: every statement it runs goes through its `on_pool!` macro,
//! which times it into the handle boot gave the store (`store::record_into`).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;

/// The `op` label's values: the groups of tables `store/` has, one file each (`version` is
/// the config version itself, `import` a config import's transaction). A file of `store/`
/// without its op here fails `store`'s test `every_store_file_has_an_op`.
pub const OPS: &[&str] = &[
    "version",
    "modules",
    "channels",
    "secrets",
    "objects",
    "servers",
    "scheduler",
    "import",
    "tokens",
    "audit",
    "pubsub_cursor",
    "pubsub_log",
    "files",
];

/// Store operations take from under a millisecond (SQLite, a local PostgreSQL) to the pool's
/// 5 s acquire timeout while the store is away.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Op {
    op: &'static str,
}

/// One op's series, resolved once.
struct OpSeries {
    latency: Histogram,
    errors: Counter,
    cancelled: Counter,
}

pub struct StoreMetrics {
    /// Per op (index in [`OPS`]).
    ops: Vec<OpSeries>,
}

impl StoreMetrics {
    pub fn register(registry: &mut Registry) -> StoreMetrics {
        let latency = Family::<Op, Histogram, fn() -> Histogram>::new_with_constructor(|| {
            Histogram::new(BUCKETS)
        });
        let errors = Family::<Op, Counter>::default();
        registry.register(
            "store_operation_seconds",
            "Time taken by config store operations (a statement or a transaction), by group of tables",
            latency.clone(),
        );
        registry.register(
            "store_errors",
            "Config store operations that failed (a database error), by group of tables",
            errors.clone(),
        );
        let cancelled = Family::<Op, Counter>::default();
        registry.register(
            "store_cancelled",
            "Config store operations whose caller gave up on them before the store answered (a client gone, a timeout around them), by group of tables",
            cancelled.clone(),
        );
        // Every op exists from the start (at 0), so that a rate over it is defined.
        let ops = OPS
            .iter()
            .map(|&op| {
                let l = Op { op };
                OpSeries {
                    latency: latency.get_or_create_owned(&l),
                    errors: errors.get_or_create_owned(&l),
                    cancelled: cancelled.get_or_create_owned(&l),
                }
            })
            .collect();
        StoreMetrics { ops }
    }

    /// The index in [`OPS`] of `name`, if it is one.
    pub fn op(name: &str) -> Option<usize> {
        OPS.iter().position(|o| *o == name)
    }

    /// Records one operation of op `op` (an index from [`StoreMetrics::op`]) that ended.
    pub fn observe(&self, op: usize, took: Duration, failed: bool) {
        if let Some(s) = self.ops.get(op) {
            s.latency.observe(took.as_secs_f64());
            if failed {
                s.errors.inc();
            }
        }
    }

    /// Counts one operation of op `op` dropped before it ended (neither timed nor an error).
    pub fn cancelled(&self, op: usize) {
        if let Some(s) = self.ops.get(op) {
            s.cancelled.inc();
        }
    }
}

/// `oxbus_store_degraded`, read at scrape time: 1 while the store is unreachable (the server
/// serves on what it has: its snapshot, or what it loaded before the outage).
pub struct Degraded(pub Box<dyn Fn() -> bool + Send + Sync>);

impl std::fmt::Debug for Degraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Degraded")
    }
}

impl Collector for Degraded {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let g = ConstGauge::new(i64::from((self.0)()));
        let m = encoder.encode_descriptor(
            "store_degraded",
            "1 while the config store is unreachable and the server runs on what it has (its snapshot), else 0.",
            None,
            g.metric_type(),
        )?;
        g.encode(m)
    }
}
