//! Metrics of the scheduler: runs by outcome, lateness, leadership.

use prometheus_client::registry::Registry;

pub struct SchedulerMetrics {}

impl SchedulerMetrics {
    pub fn register(_registry: &mut Registry) -> SchedulerMetrics {
        SchedulerMetrics {}
    }
}
