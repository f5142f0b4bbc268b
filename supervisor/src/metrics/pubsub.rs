//! Metrics of the pub/sub broker (docs/PUBSUB.md): what this server published, refused and
//! delivered, how long its flushes took, and — read at scrape time from the snapshot the
//! broker keeps ([`PubsubGauges`], through [`PubsubState`]) — the depth of each topic and
//! subscription and the messages in flight. Labels are config-defined names (a topic, a
//! subscription's sub_key) and bounded sets (`gd`, `reason`): never a msg_id or a client's
//! value. The broker records per flush and per delivered batch (counts, not one call per
//! message), so a busy topic costs one label lookup per batch.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::time::Duration;

use super::histogram::DurationHistogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PublishedLabels {
    topic: String,
    /// `true` (stored) or `false` (memory only).
    gd: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    topic: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubLabels {
    sub: String,
}

/// Why a publish was refused: the broker's error codes a publisher can cause,
/// `unavailable` (the store failed the flush), and `other` for any other code.
pub const REFUSED_REASONS: [&str; 7] = [
    "full",
    "too_large",
    "forbidden",
    "no_topic",
    "invalid",
    "unavailable",
    "other",
];

pub struct PubsubMetrics {
    published: Family<PublishedLabels, Counter>,
    refused: Family<RefusedLabels, Counter>,
    delivered: Family<SubLabels, Counter>,
    delivery_failures: Family<SubLabels, Counter>,
    dead_lettered: Family<SubLabels, Counter>,
    expired: Family<SubLabels, Counter>,
    flush: DurationHistogram,
}

impl PubsubMetrics {
    pub fn register(registry: &mut Registry) -> PubsubMetrics {
        let m = PubsubMetrics {
            published: Family::default(),
            refused: Family::default(),
            delivered: Family::default(),
            delivery_failures: Family::default(),
            dead_lettered: Family::default(),
            expired: Family::default(),
            flush: DurationHistogram::default(),
        };
        registry.register(
            "pubsub_published",
            "Messages accepted by publishes through this server, by topic and gd (true: stored before the answer; false: in memory only)",
            m.published.clone(),
        );
        registry.register(
            "pubsub_refused",
            "Messages whose publish through this server was refused, by topic and reason (full, too_large, forbidden, no_topic, invalid, unavailable, other)",
            m.refused.clone(),
        );
        registry.register(
            "pubsub_delivered",
            "Messages this server delivered and had acknowledged, by subscription (sub)",
            m.delivered.clone(),
        );
        registry.register(
            "pubsub_delivery_failures",
            "Message deliveries by this server that failed (retried later or dead-lettered), by subscription",
            m.delivery_failures.clone(),
        );
        registry.register(
            "pubsub_dead_lettered",
            "Messages moved to a subscription's dead letters by this server after retry.max_attempts deliveries",
            m.dead_lettered.clone(),
        );
        registry.register(
            "pubsub_expired",
            "Messages this server skipped for a subscription because they expired before delivery",
            m.expired.clone(),
        );
        registry.register(
            "pubsub_publish_flush_seconds",
            "Durations of the publish flushes of this server: one store transaction for every GD message queued, from its start to the commit",
            m.flush.clone(),
        );
        m
    }

    /// `n` messages of `topic` accepted (`gd`: stored).
    pub fn published(&self, topic: &str, gd: bool, n: u64) {
        if n == 0 {
            return;
        }
        self.published
            .get_or_create(&PublishedLabels {
                topic: topic.to_owned(),
                gd: if gd { "true" } else { "false" },
            })
            .inc_by(n);
    }

    /// `n` messages of `topic` refused for `reason` (one of [`REFUSED_REASONS`], the broker's
    /// error code; another code is counted as `other`).
    pub fn refused(&self, topic: &str, reason: &str, n: u64) {
        if n == 0 {
            return;
        }
        let reason = REFUSED_REASONS
            .into_iter()
            .find(|r| *r == reason)
            .unwrap_or("other");
        self.refused
            .get_or_create(&RefusedLabels {
                topic: topic.to_owned(),
                reason,
            })
            .inc_by(n);
    }

    fn count(family: &Family<SubLabels, Counter>, sub: &str, n: u64) {
        if n == 0 {
            return;
        }
        family
            .get_or_create(&SubLabels {
                sub: sub.to_owned(),
            })
            .inc_by(n);
    }

    /// `n` messages of subscription `sub` delivered and acknowledged.
    pub fn delivered(&self, sub: &str, n: u64) {
        Self::count(&self.delivered, sub, n);
    }

    /// `n` message deliveries of `sub` failed (a failed batch counts each of its messages).
    pub fn delivery_failed(&self, sub: &str, n: u64) {
        Self::count(&self.delivery_failures, sub, n);
    }

    pub fn dead_lettered(&self, sub: &str, n: u64) {
        Self::count(&self.dead_lettered, sub, n);
    }

    pub fn expired(&self, sub: &str, n: u64) {
        Self::count(&self.expired, sub, n);
    }

    /// Drops subscription `sub`'s series (it was deleted): a gone subscription's counters
    /// do not stay in every scrape.
    pub fn forget_sub(&self, sub: &str) {
        let labels = SubLabels {
            sub: sub.to_owned(),
        };
        for family in [
            &self.delivered,
            &self.delivery_failures,
            &self.dead_lettered,
            &self.expired,
        ] {
            family.remove(&labels);
        }
    }

    /// One publish flush took `took` (its transaction, begin to commit).
    pub fn flushed(&self, took: Duration) {
        self.flush.observe(took);
    }
}

/// What the broker last knew of its topics and subscriptions, for the gauges: it keeps the
/// snapshot (refreshed as it goes: the flusher's seqs, the delivery tasks' cursors) and the
/// collector reads it at scrape time, so a scrape never waits on the store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PubsubGauges {
    /// Per topic: GD messages the slowest subscription has still to finish.
    pub topics: Vec<TopicGauge>,
    /// Per subscription this server delivers (the lease holder reports it; another server
    /// reports none, so that a sum over servers counts each once).
    pub subs: Vec<SubGauge>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopicGauge {
    pub topic: String,
    pub depth: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubGauge {
    pub sub: String,
    /// Messages waiting (GD by the cursors, plus non-GD in memory).
    pub depth: u64,
    /// Delivered and not yet acknowledged.
    pub in_flight: u64,
}

/// Reads the broker's [`PubsubGauges`] at scrape time (boot registers it with a closure
/// over the broker: this module names no subsystem).
pub struct PubsubState(pub Box<dyn Fn() -> PubsubGauges + Send + Sync>);

impl std::fmt::Debug for PubsubState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PubsubState")
    }
}

fn gauge(v: u64) -> ConstGauge {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
}

impl Collector for PubsubState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut g = (self.0)();
        g.topics.sort_by(|a, b| a.topic.cmp(&b.topic));
        g.subs.sort_by(|a, b| a.sub.cmp(&b.sub));
        let mut m = encoder.encode_descriptor(
            "pubsub_topic_depth",
            "GD messages of a topic its slowest subscription has still to finish (or, without subscription and on_no_subs keep, those kept)",
            None,
            MetricType::Gauge,
        )?;
        for t in &g.topics {
            gauge(t.depth).encode(m.encode_family(&[("topic", t.topic.as_str())])?)?;
        }
        type Field = fn(&SubGauge) -> u64;
        let per_sub: [(&str, &str, Field); 2] = [
            (
                "pubsub_subscription_depth",
                "Messages waiting in a subscription this server delivers (GD by its cursors, non-GD in memory)",
                |s| s.depth,
            ),
            (
                "pubsub_subscription_in_flight",
                "Messages of a subscription this server delivers that were delivered and not yet acknowledged",
                |s| s.in_flight,
            ),
        ];
        for (name, help, field) in per_sub {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for s in &g.subs {
                gauge(field(s)).encode(m.encode_family(&[("sub", s.sub.as_str())])?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn counters_and_gauges_render_by_label() {
        let mut registry = Registry::with_prefix("oxbus");
        let m = PubsubMetrics::register(&mut registry);
        m.published("/orders/new", true, 3);
        m.published("/orders/new", true, 2);
        m.published("/orders/new", false, 1);
        m.published("/idle", true, 0);
        m.refused("/orders/new", "full", 4);
        m.refused("/orders/new", "something_else", 1);
        m.delivered("sk.a", 7);
        m.delivery_failed("sk.a", 2);
        m.dead_lettered("sk.a", 1);
        m.expired("sk.b", 5);
        m.flushed(Duration::from_micros(700));
        registry.register_collector(Box::new(PubsubState(Box::new(|| PubsubGauges {
            topics: vec![TopicGauge {
                topic: "/orders/new".into(),
                depth: 12,
            }],
            subs: vec![SubGauge {
                sub: "sk.a".into(),
                depth: 9,
                in_flight: 3,
            }],
        }))));
        let text = render(&registry);
        for line in [
            r#"oxbus_pubsub_published_total{topic="/orders/new",gd="true"} 5"#,
            r#"oxbus_pubsub_published_total{topic="/orders/new",gd="false"} 1"#,
            r#"oxbus_pubsub_refused_total{topic="/orders/new",reason="full"} 4"#,
            r#"oxbus_pubsub_refused_total{topic="/orders/new",reason="other"} 1"#,
            r#"oxbus_pubsub_delivered_total{sub="sk.a"} 7"#,
            r#"oxbus_pubsub_delivery_failures_total{sub="sk.a"} 2"#,
            r#"oxbus_pubsub_dead_lettered_total{sub="sk.a"} 1"#,
            r#"oxbus_pubsub_expired_total{sub="sk.b"} 5"#,
            "oxbus_pubsub_publish_flush_seconds_count 1",
            r#"oxbus_pubsub_publish_flush_seconds_bucket{le="0.001"} 1"#,
            r#"oxbus_pubsub_topic_depth{topic="/orders/new"} 12"#,
            r#"oxbus_pubsub_subscription_depth{sub="sk.a"} 9"#,
            r#"oxbus_pubsub_subscription_in_flight{sub="sk.a"} 3"#,
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
        // A zero count creates no series.
        assert!(!text.contains("/idle"), "{text}");
    }
}
