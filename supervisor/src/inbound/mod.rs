//! Inbound channels that consume from a broker into services (docs/CONNECTORS.md): AMQP
//! queues ([`amqp`]) and MQTT topic filters ([`mqtt`]). Each channel runs on every server of
//! the cluster (competing consumers for AMQP, a persistent session per server for MQTT),
//! hands each message to its service through the worker pool, and acknowledges it to the
//! broker only after the service returned. Boot builds one [`Inbound`], applies the stored
//! definitions, hands it the pool, starts it, and drains it at shutdown; the sync loop and
//! the admin API apply each config version's definitions.
//!
//! Knows `model`, `secrets`, `metrics`, `lifecycle` (the pool) and `outgoing` (connection
//! helpers shared with the outgoing connections of the same protocol) only: no store, no
//! HTTP edge, no admin, no cluster.
//!
//! FOUNDATION (issue 21): `amqp.rs` is the AMQP-channel work's, `mqtt.rs` the MQTT work's;
//! each fills in its own registry behind the calls below.

pub mod amqp;
pub mod mqtt;

use std::sync::Arc;

use crate::model::amqp::AmqpChannel;
use crate::model::mqtt::MqttChannel;

/// This server's inbound channels.
#[derive(Debug)]
pub struct Inbound {
    pub amqp: amqp::AmqpChannels,
    pub mqtt: mqtt::MqttChannels,
}

impl Inbound {
    /// `server`: this server's name (MQTT client ids, consumer tags); `key` opens the
    /// channels' sealed passwords.
    pub fn new(
        server: &str,
        key: Arc<crate::secrets::Key>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Inbound {
        Inbound {
            amqp: amqp::AmqpChannels::new(server, key.clone(), metrics.clone()),
            mqtt: mqtt::MqttChannels::new(server, key, metrics),
        }
    }

    /// The pool the channels invoke their services through (set once, before `start`).
    pub fn set_pool(&self, pool: Arc<crate::lifecycle::pool::Pool>) {
        self.amqp.set_pool(pool.clone());
        self.mqtt.set_pool(pool);
    }

    /// Makes `defs` the AMQP channels: starts new ones, restarts changed ones (in-flight
    /// messages finish first), stops deleted ones.
    pub fn apply_amqp(&self, defs: &[AmqpChannel]) {
        self.amqp.apply(defs);
    }

    /// Makes `defs` the MQTT channels, as [`Inbound::apply_amqp`].
    pub fn apply_mqtt(&self, defs: &[MqttChannel]) {
        self.mqtt.apply(defs);
    }

    /// Starts consuming (the channels applied so far and every later one) until
    /// `shutdown` turns true: then each channel stops taking messages, lets those in flight
    /// finish and gives the rest back to its broker.
    pub fn start(&self, shutdown: tokio::sync::watch::Receiver<bool>) {
        self.amqp.start(shutdown.clone());
        self.mqtt.start(shutdown);
    }

    /// Stops taking messages and waits (bounded) for those in flight: nothing acked that
    /// was not processed, everything unacked back to its broker.
    pub async fn drain(&self) {
        tokio::join!(self.amqp.drain(), self.mqtt.drain());
    }
}
