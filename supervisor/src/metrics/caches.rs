//! Metrics of the named caches, read at scrape time from the counters each cache keeps
//! (`oxbus-cache`): entries, hits, misses, sets, deletes and evictions per cache. A cache
//! that is deleted disappears from the next scrape; one created again under the same name
//! starts from 0 (a counter reset, which Prometheus' `rate` handles). Boot registers
//! [`CacheState`] with a reader of the server's caches.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

pub struct CacheMetrics {}

impl CacheMetrics {
    pub fn register(_registry: &mut Registry) -> CacheMetrics {
        // Every cache figure is kept by the cache itself and read at scrape time.
        CacheMetrics {}
    }
}

/// One cache's figures since it was created on this server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheFigures {
    pub name: String,
    pub entries: u64,
    pub hits: u64,
    pub misses: u64,
    pub sets: u64,
    pub deletes: u64,
    pub evictions: u64,
}

/// Reads every cache's figures at scrape time.
pub struct CacheState(pub Box<dyn Fn() -> Vec<CacheFigures> + Send + Sync>);

impl std::fmt::Debug for CacheState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheState")
    }
}

type Field = fn(&CacheFigures) -> u64;

/// The counters: name (without `_total`), help, field.
const COUNTERS: [(&str, &str, Field); 5] = [
    (
        "cache_hits",
        "Reads by services that found their key.",
        |c| c.hits,
    ),
    (
        "cache_misses",
        "Reads by services that did not find their key (absent or expired).",
        |c| c.misses,
    ),
    (
        "cache_sets",
        "Writes by services on this server (set and incr; replicated writes from peers are not counted).",
        |c| c.sets,
    ),
    (
        "cache_deletes",
        "Deletes by services on this server.",
        |c| c.deletes,
    ),
    (
        "cache_evictions",
        "Entries evicted because the cache was full (max_entries); expiry is not eviction.",
        |c| c.evictions,
    ),
];

impl Collector for CacheState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut caches = (self.0)();
        caches.sort_by(|a, b| a.name.cmp(&b.name));
        let mut m = encoder.encode_descriptor(
            "cache_entries",
            "Entries a cache holds now.",
            None,
            MetricType::Gauge,
        )?;
        for c in &caches {
            ConstGauge::new(c.entries as i64)
                .encode(m.encode_family(&[("cache", c.name.as_str())])?)?;
        }
        for (name, help, field) in COUNTERS {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for c in &caches {
                ConstCounter::new(field(c))
                    .encode(m.encode_family(&[("cache", c.name.as_str())])?)?;
            }
        }
        Ok(())
    }
}
