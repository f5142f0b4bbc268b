//! Metrics of the inbound channels (`inbound/`: AMQP queues, MQTT topic filters consumed
//! into services): messages by channel type, channel and outcome, and whether each
//! channel is connected to its broker. The channel label is a config-defined name (bounded
//! by the channels an operator defines); a deleted channel's connected gauge is removed.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MessageLabels {
    r#type: &'static str,
    channel: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabels {
    r#type: &'static str,
    channel: String,
}

pub struct InboundMetrics {
    messages: Family<MessageLabels, Counter>,
    connected: Family<ChannelLabels, Gauge>,
}

impl InboundMetrics {
    pub fn register(registry: &mut Registry) -> InboundMetrics {
        let messages = Family::<MessageLabels, Counter>::default();
        let connected = Family::<ChannelLabels, Gauge>::default();
        registry.register(
            "inbound_messages",
            "Messages an inbound channel took from its broker, by channel type (amqp, mqtt, file), channel and outcome (file: done, failed; acked: the service returned; requeued: it failed and the message went back; rejected: it failed past the redelivery limit or on_error=reject, dropped or dead-lettered by the broker; returned: the server could not hand it to a worker (busy, no worker yet, service not deployed yet) and gave it back uncounted)",
            messages.clone(),
        );
        registry.register(
            "inbound_connected",
            "1 while an inbound channel is connected to its broker and consuming, 0 while it connects or waits to reconnect",
            connected.clone(),
        );
        InboundMetrics {
            messages,
            connected,
        }
    }

    /// A message of channel `channel` (of type `kind`) ended with `outcome`.
    pub fn message(&self, kind: &'static str, channel: &str, outcome: &'static str) {
        self.messages_n(kind, channel, outcome, 1);
    }

    /// `n` messages of channel `channel` ended with `outcome` (acked together).
    pub fn messages_n(&self, kind: &'static str, channel: &str, outcome: &'static str, n: u64) {
        self.messages
            .get_or_create(&MessageLabels {
                r#type: kind,
                channel: channel.to_owned(),
                outcome,
            })
            .inc_by(n);
    }

    /// Channel `channel` is (or is no longer) connected.
    pub fn connected(&self, kind: &'static str, channel: &str, up: bool) {
        self.connected
            .get_or_create(&ChannelLabels {
                r#type: kind,
                channel: channel.to_owned(),
            })
            .set(i64::from(up));
    }

    /// Channel `channel` is gone: its gauge goes (its counters stay, as counters do).
    pub fn removed(&self, kind: &'static str, channel: &str) {
        self.connected.remove(&ChannelLabels {
            r#type: kind,
            channel: channel.to_owned(),
        });
    }
}
