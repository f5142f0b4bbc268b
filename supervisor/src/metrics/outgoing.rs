//! Metrics of the outgoing connections (docs/OUTGOING.md), read at scrape time from the
//! figures each connection's client keeps: calls, errors and durations per connection, and
//! its pool (size, connections in use and idle, calls waiting). Labels `type` (`rest` |
//! `sql` | `amqp`) and `conn` (its name). A deleted connection disappears from the next scrape; an
//! edit that builds a new client starts its counters from 0 (a counter reset). Boot
//! registers [`OutgoingState`] with a reader that maps the subsystem's figures into
//! [`ConnFigures`] (this module names no subsystem).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::histogram::DURATION_BUCKETS;

/// One connection's figures on this server.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnFigures {
    /// `rest`, `sql` or `amqp`.
    pub kind: &'static str,
    pub name: String,
    pub calls: u64,
    pub errors: u64,
    /// Durations: observations per bucket of [`DURATION_BUCKETS`] and `+Inf` (not
    /// cumulative), and their sum in seconds.
    pub latency_buckets: Vec<u64>,
    pub latency_sum_s: f64,
    pub pool_size: u32,
    pub in_use: u32,
    pub idle: u32,
    pub waiting: u32,
}

/// Reads every connection's figures at scrape time.
pub struct OutgoingState(pub Box<dyn Fn() -> Vec<ConnFigures> + Send + Sync>);

impl std::fmt::Debug for OutgoingState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutgoingState")
    }
}

/// A histogram of figures read elsewhere.
struct ConstHistogram<'a> {
    buckets: &'a [u64],
    sum: f64,
}

fn labels(c: &ConnFigures) -> [(&'static str, &str); 2] {
    [("type", c.kind), ("conn", c.name.as_str())]
}

impl EncodeMetric for ConstHistogram<'_> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = [(0.0, 0u64); DURATION_BUCKETS.len() + 1];
        let mut count = 0;
        for (i, slot) in buckets.iter_mut().enumerate() {
            // A client that keeps fewer buckets (none yet) reads as zeros.
            let n = self.buckets.get(i).copied().unwrap_or(0);
            // The crate's encoder writes `le="+Inf"` for `f64::MAX`.
            *slot = (DURATION_BUCKETS.get(i).copied().unwrap_or(f64::MAX), n);
            count += n;
        }
        encoder.encode_histogram::<NoLabelSet>(self.sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl Collector for OutgoingState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut conns = (self.0)();
        conns.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        type Field = fn(&ConnFigures) -> u64;
        let counters: [(&str, &str, Field); 2] = [
            (
                "outgoing_calls",
                "Calls made through an outgoing connection (REST: any HTTP status; SQL: any result).",
                |c| c.calls,
            ),
            (
                "outgoing_errors",
                "Calls through an outgoing connection that failed (timeout, refused, TLS, database error, pool wait, ...).",
                |c| c.errors,
            ),
        ];
        for (name, help, field) in counters {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for c in &conns {
                ConstCounter::new(field(c)).encode(m.encode_family(&labels(c))?)?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "outgoing_call_duration_seconds",
            "Durations of the calls through an outgoing connection, its pool wait included.",
            None,
            MetricType::Histogram,
        )?;
        for c in &conns {
            ConstHistogram {
                buckets: &c.latency_buckets,
                sum: c.latency_sum_s,
            }
            .encode(m.encode_family(&labels(c))?)?;
        }
        let mut m = encoder.encode_descriptor(
            "outgoing_pool_connections",
            "Connections of an outgoing connection's pool: lent to a call (state=in_use) or open and waiting in the pool (state=idle).",
            None,
            MetricType::Gauge,
        )?;
        for c in &conns {
            for (state, n) in [("in_use", c.in_use), ("idle", c.idle)] {
                ConstGauge::new(i64::from(n)).encode(m.encode_family(&[
                    ("type", c.kind),
                    ("conn", c.name.as_str()),
                    ("state", state),
                ])?)?;
            }
        }
        type Gauge = fn(&ConnFigures) -> u32;
        let gauges: [(&str, &str, Gauge); 2] = [
            (
                "outgoing_pool_waiting",
                "Calls waiting for a free connection of an outgoing connection's pool.",
                |c| c.waiting,
            ),
            (
                "outgoing_pool_size",
                "The most connections an outgoing connection's pool opens (REST pool_size, SQL pool_max).",
                |c| c.pool_size,
            ),
        ];
        for (name, help, field) in gauges {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for c in &conns {
                ConstGauge::new(i64::from(field(c))).encode(m.encode_family(&labels(c))?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn every_series_is_labelled_with_type_and_conn() {
        let mut registry = Registry::with_prefix("oxbus");
        let mut buckets = vec![0; DURATION_BUCKETS.len() + 1];
        buckets[0] = 2;
        buckets[DURATION_BUCKETS.len()] = 1;
        registry.register_collector(Box::new(OutgoingState(Box::new(move || {
            vec![
                ConnFigures {
                    kind: "rest",
                    name: "crm".into(),
                    calls: 3,
                    errors: 1,
                    latency_buckets: buckets.clone(),
                    latency_sum_s: 40.0,
                    pool_size: 20,
                    in_use: 2,
                    idle: 5,
                    waiting: 1,
                },
                ConnFigures {
                    kind: "sql",
                    name: "db".into(),
                    ..Default::default()
                },
            ]
        }))));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        for want in [
            "oxbus_outgoing_calls_total{type=\"rest\",conn=\"crm\"} 3\n",
            "oxbus_outgoing_errors_total{type=\"rest\",conn=\"crm\"} 1\n",
            "oxbus_outgoing_call_duration_seconds_count{type=\"rest\",conn=\"crm\"} 3\n",
            "oxbus_outgoing_call_duration_seconds_bucket{le=\"0.0005\",type=\"rest\",conn=\"crm\"} 2\n",
            "oxbus_outgoing_call_duration_seconds_bucket{le=\"+Inf\",type=\"rest\",conn=\"crm\"} 3\n",
            "oxbus_outgoing_pool_connections{type=\"rest\",conn=\"crm\",state=\"in_use\"} 2\n",
            "oxbus_outgoing_pool_connections{type=\"rest\",conn=\"crm\",state=\"idle\"} 5\n",
            "oxbus_outgoing_pool_waiting{type=\"rest\",conn=\"crm\"} 1\n",
            "oxbus_outgoing_pool_size{type=\"rest\",conn=\"crm\"} 20\n",
            "oxbus_outgoing_call_duration_seconds_count{type=\"sql\",conn=\"db\"} 0\n",
        ] {
            assert!(out.contains(want), "{want} not in\n{out}");
        }
    }
}
