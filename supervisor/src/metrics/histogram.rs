//! A histogram recorded with atomics only: `prometheus-client`'s own `Histogram` takes a
//! write lock on every observation, which every request of a busy channel would contend on.
//! Here an observation is two relaxed `fetch_add`s (its bucket, the sum in nanoseconds); the
//! count is the buckets' total, worked out at scrape time. It is encoded by the crate's own
//! encoder (`encode_histogram`), so the exposition format is still the crate's.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the buckets of request and call durations: 0.5 ms to 30 s.
pub const DURATION_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A histogram of durations over [`DURATION_BUCKETS`] (plus `+Inf`). Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct DurationHistogram {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl DurationHistogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = DURATION_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.inner.buckets[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.inner.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.inner
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }

    /// The observations per bucket (not cumulative; the last is `+Inf`) and their sum in
    /// seconds.
    pub fn snapshot(&self) -> (Vec<u64>, f64) {
        let buckets = self
            .inner
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let sum = self.inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (buckets, sum)
    }
}

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = [(0.0, 0u64); DURATION_BUCKETS.len() + 1];
        let mut count = 0;
        for (i, slot) in buckets.iter_mut().enumerate() {
            let n = self.inner.buckets[i].load(Ordering::Relaxed);
            // The crate's encoder writes `le="+Inf"` for `f64::MAX`.
            let bound = DURATION_BUCKETS.get(i).copied().unwrap_or(f64::MAX);
            *slot = (bound, n);
            count += n;
        }
        let sum = self.inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn observations_land_in_their_bucket_and_encode_cumulatively() {
        let h = DurationHistogram::default();
        h.observe(Duration::from_micros(300)); // le 0.0005
        h.observe(Duration::from_millis(3)); // le 0.005
        h.observe(Duration::from_secs(60)); // +Inf
        assert_eq!(h.count(), 3);
        let mut registry = Registry::default();
        registry.register("d_seconds", "test", h.clone());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(out.contains("# TYPE d_seconds histogram"), "{out}");
        assert!(out.contains("d_seconds_count 3\n"), "{out}");
        assert!(out.contains("d_seconds_bucket{le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("d_seconds_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("d_seconds_bucket{le=\"30.0\"} 2\n"), "{out}");
        assert!(out.contains("d_seconds_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("d_seconds_sum 60.0033\n"), "{out}");
    }
}
