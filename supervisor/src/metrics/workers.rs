//! Metrics of the workers: state, restarts by reason, RSS, queue depth, IPC frames and bytes.

use prometheus_client::registry::Registry;

pub struct WorkerMetrics {}

impl WorkerMetrics {
    pub fn register(_registry: &mut Registry) -> WorkerMetrics {
        WorkerMetrics {}
    }
}
