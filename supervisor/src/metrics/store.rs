//! Metrics of the config store: latency, errors, degraded.

use prometheus_client::registry::Registry;

pub struct StoreMetrics {}

impl StoreMetrics {
    pub fn register(_registry: &mut Registry) -> StoreMetrics {
        StoreMetrics {}
    }
}
