//! Metrics of the MQTT channels (docs/OBSERVABILITY.md), read at scrape time from the
//! figures each channel keeps on this server: messages by outcome, whether its session is
//! connected, the calls in flight. Label `channel` (its name). A deleted channel disappears
//! from the next scrape; an edit keeps its counters. Boot registers [`InboundMqttState`]
//! with a reader that maps the subsystem's figures into [`ChannelFigures`] (this module
//! names no subsystem).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// One channel's figures on this server.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChannelFigures {
    pub name: String,
    /// Processed and acknowledged.
    pub ok: u64,
    /// The service failed (not acknowledged).
    pub failed: u64,
    /// Refused as bad input (acknowledged).
    pub refused: u64,
    /// Left unacknowledged without a call (after a failure, or while stopping).
    pub deferred: u64,
    pub connected: bool,
    pub in_flight: u64,
}

/// Reads every channel's figures at scrape time.
pub struct InboundMqttState(pub Box<dyn Fn() -> Vec<ChannelFigures> + Send + Sync>);

impl std::fmt::Debug for InboundMqttState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InboundMqttState")
    }
}

impl Collector for InboundMqttState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut channels = (self.0)();
        channels.sort_by(|a, b| a.name.cmp(&b.name));
        let mut m = encoder.encode_descriptor(
            "inbound_mqtt_messages",
            "Messages of an MQTT channel by outcome: ok (acknowledged after its service returned), failed (not acknowledged: it comes again), refused (bad input, acknowledged), deferred (left unacknowledged without a call after a failure or while stopping).",
            None,
            MetricType::Counter,
        )?;
        for c in &channels {
            for (outcome, n) in [
                ("ok", c.ok),
                ("failed", c.failed),
                ("refused", c.refused),
                ("deferred", c.deferred),
            ] {
                ConstCounter::new(n).encode(
                    m.encode_family(&[("channel", c.name.as_str()), ("outcome", outcome)])?,
                )?;
            }
        }
        type Gauge = fn(&ChannelFigures) -> i64;
        let gauges: [(&str, &str, Gauge); 2] = [
            (
                "inbound_mqtt_connected",
                "1 while an MQTT channel's session is connected to its broker on this server.",
                |c| i64::from(c.connected),
            ),
            (
                "inbound_mqtt_in_flight",
                "Messages of an MQTT channel whose service call has not ended.",
                |c| c.in_flight as i64,
            ),
        ];
        for (name, help, field) in gauges {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for c in &channels {
                ConstGauge::new(field(c))
                    .encode(m.encode_family(&[("channel", c.name.as_str())])?)?;
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
    fn every_outcome_and_gauge_per_channel() {
        let mut registry = Registry::with_prefix("oxbus");
        registry.register_collector(Box::new(InboundMqttState(Box::new(|| {
            vec![ChannelFigures {
                name: "sensors".into(),
                ok: 3,
                failed: 1,
                connected: true,
                in_flight: 2,
                ..Default::default()
            }]
        }))));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        for line in [
            "oxbus_inbound_mqtt_messages_total{channel=\"sensors\",outcome=\"ok\"} 3",
            "oxbus_inbound_mqtt_messages_total{channel=\"sensors\",outcome=\"failed\"} 1",
            "oxbus_inbound_mqtt_messages_total{channel=\"sensors\",outcome=\"refused\"} 0",
            "oxbus_inbound_mqtt_connected{channel=\"sensors\"} 1",
            "oxbus_inbound_mqtt_in_flight{channel=\"sensors\"} 2",
        ] {
            assert!(out.contains(line), "{line} missing in\n{out}");
        }
    }
}
