//! Metrics of the WebSocket channels (`wsx/`): clients connected per channel, messages
//! received and sent, and why clients went. The channel label is a config-defined name
//! (bounded by the channels an operator defines); a session takes its handles once, so a
//! message costs one atomic add.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabels {
    channel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MessageLabels {
    channel: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DisconnectLabels {
    channel: String,
    reason: &'static str,
}

pub struct WebsocketMetrics {
    clients: Family<ChannelLabels, Gauge>,
    messages: Family<MessageLabels, Counter>,
    disconnects: Family<DisconnectLabels, Counter>,
}

/// One session's handles.
#[derive(Clone, Debug)]
pub struct SessionMetrics {
    pub received: Counter,
    pub sent: Counter,
}

impl WebsocketMetrics {
    pub fn register(registry: &mut Registry) -> WebsocketMetrics {
        let clients = Family::<ChannelLabels, Gauge>::default();
        let messages = Family::<MessageLabels, Counter>::default();
        let disconnects = Family::<DisconnectLabels, Counter>::default();
        registry.register(
            "websocket_clients",
            "WebSocket clients connected to this server, by channel",
            clients.clone(),
        );
        registry.register(
            "websocket_messages",
            "WebSocket messages by channel and direction (received: from clients, each a call of the channel's service; sent: answers and pushes queued to clients)",
            messages.clone(),
        );
        registry.register(
            "websocket_disconnects",
            "WebSocket clients gone, by channel and reason (client_closed, connection_ended, too_big: 1009, queue_full: 1008, idle: 1000, shutdown: 1001, protocol: 1002, utf8: 1007, changed: 1012, no_pong, error)",
            disconnects.clone(),
        );
        WebsocketMetrics {
            clients,
            messages,
            disconnects,
        }
    }

    /// A client of `channel` connected: its session's handles.
    pub fn connected(&self, channel: &str) -> SessionMetrics {
        self.clients
            .get_or_create(&ChannelLabels {
                channel: channel.to_owned(),
            })
            .inc();
        let counter = |direction| {
            self.messages
                .get_or_create(&MessageLabels {
                    channel: channel.to_owned(),
                    direction,
                })
                .clone()
        };
        SessionMetrics {
            received: counter("received"),
            sent: counter("sent"),
        }
    }

    /// A client of `channel` went, for `reason`.
    pub fn disconnected(&self, channel: &str, reason: &'static str) {
        self.clients
            .get_or_create(&ChannelLabels {
                channel: channel.to_owned(),
            })
            .dec();
        self.disconnects
            .get_or_create(&DisconnectLabels {
                channel: channel.to_owned(),
                reason,
            })
            .inc();
    }
}
