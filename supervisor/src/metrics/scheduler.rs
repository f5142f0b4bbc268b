//! Metrics of the scheduler: runs by job and outcome, how late scheduled runs start, and
//! whether this server leads (holds the lease), read at scrape time. Recorded by
//! `scheduler/`: a job's name is config-defined (bounded by the jobs an operator defines). Its
//! label is `job_name`, not `job`: Prometheus gives every scraped series a `job` label of
//! its own (the scrape job), and would rename ours to `exported_job`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;

/// Lateness: a few milliseconds normally; seconds after a leader change or an outage (runs
/// due while nobody led collapse into one, as late as it is).
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    job_name: String,
    outcome: &'static str,
}

pub struct SchedulerMetrics {
    runs: Family<RunLabels, Counter>,
    lateness: Histogram,
}

impl SchedulerMetrics {
    pub fn register(registry: &mut Registry) -> SchedulerMetrics {
        let runs = Family::<RunLabels, Counter>::default();
        let lateness = Histogram::new(BUCKETS);
        registry.register(
            "scheduler_runs",
            "Job runs on this server, by job (job_name) and outcome (ok, error: the service failed or did not answer; skipped: the previous run was still going, overlap skip)",
            runs.clone(),
        );
        registry.register(
            "scheduler_lateness_seconds",
            "How late scheduled runs started: the actual start minus the planned fire time (due time plus the job's jitter)",
            lateness.clone(),
        );
        SchedulerMetrics { runs, lateness }
    }

    /// Counts one run of `job` (`outcome`: "ok", "error" or "skipped").
    pub fn run(&self, job: &str, outcome: &'static str) {
        // One small allocation per run: runs are far apart, this is no hot path.
        self.runs
            .get_or_create(&RunLabels {
                job_name: job.to_owned(),
                outcome,
            })
            .inc();
    }

    /// A scheduled run started `late` after its planned fire time.
    pub fn started_late(&self, late: Duration) {
        self.lateness.observe(late.as_secs_f64());
    }
}

/// `oxbus_scheduler_leader`, read at scrape time: 1 while this server holds the lease.
pub struct Leader(pub Box<dyn Fn() -> bool + Send + Sync>);

impl std::fmt::Debug for Leader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Leader")
    }
}

impl Collector for Leader {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let g = ConstGauge::new(i64::from((self.0)()));
        let m = encoder.encode_descriptor(
            "scheduler_leader",
            "1 while this server holds the scheduler's lease (it fires the jobs), else 0.",
            None,
            g.metric_type(),
        )?;
        g.encode(m)
    }
}
