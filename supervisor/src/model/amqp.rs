//! AMQP (RabbitMQ) definitions as plain data (docs/CONNECTORS.md): an outgoing AMQP
//! connection ([`AmqpConn`]: `self.out.amqp.send(msg, name, exchange, routing_key)`, with
//! publisher confirms) and an AMQP channel ([`AmqpChannel`]: consumes a queue into a
//! service). Each holds its own broker address and credential (the password only sealed,
//! under [`AmqpConn::seal_name`] / [`AmqpChannel::seal_name`]). No I/O here.
//!
//! FOUNDATION (issue 21): the fields below are the contract the helpers start from; each
//! helper owns its struct's section (validation, parse of operator input, `Credentialed`).

use serde::{Deserialize, Serialize};

use crate::model::object::InvalidObject;
use crate::model::outgoing::TlsOptions;

// ---- outgoing AMQP connection (owned by the outgoing-AMQP work) ----

/// An outgoing AMQP connection: a set of publishing channels (with confirms) per server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AmqpConn {
    pub name: String,
    /// `amqp://host:5672/vhost` or `amqps://…` (vhost percent-encoded; `/` is `%2f`);
    /// never with a password.
    pub address: String,
    #[serde(default)]
    pub username: Option<String>,
    /// The password, sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
    #[serde(default)]
    pub tls: TlsOptions,
    #[serde(default = "default_heartbeat_s")]
    pub heartbeat_s: u16,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Publishing channels per server.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// A send the broker has not confirmed within this fails `timeout`.
    #[serde(default = "default_confirm_timeout_ms")]
    pub confirm_timeout_ms: u64,
}

impl AmqpConn {
    /// The name its password is sealed under.
    pub fn seal_name(name: &str) -> String {
        format!("outgoing/amqp/{name}")
    }

    pub fn validate(&self) -> Result<(), InvalidObject> {
        crate::model::outgoing::validate_name(&self.name)
    }
}

// ---- AMQP channel (owned by the AMQP-channel work) ----

/// What a channel does with a message whose service raised.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AmqpOnError {
    /// Back to the queue, until `max_redeliveries`; then rejected without requeue (the
    /// queue's dead-letter exchange, if it has one, gets it).
    #[default]
    Requeue,
    /// Rejected without requeue at once.
    Reject,
}

/// An AMQP channel: consumers of `queue` on every server of the cluster, each message
/// handed to `service` and acked only after it returned.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AmqpChannel {
    pub name: String,
    pub address: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
    #[serde(default)]
    pub tls: TlsOptions,
    #[serde(default = "default_heartbeat_s")]
    pub heartbeat_s: u16,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    pub queue: String,
    pub service: String,
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// Consumers per server.
    #[serde(default = "default_consumers")]
    pub consumers: u16,
    #[serde(default)]
    pub on_error: AmqpOnError,
    #[serde(default = "default_max_redeliveries")]
    pub max_redeliveries: u32,
    #[serde(default = "yes")]
    pub is_active: bool,
}

impl AmqpChannel {
    /// The name its password is sealed under.
    pub fn seal_name(name: &str) -> String {
        format!("inbound/amqp/{name}")
    }

    pub fn validate(&self) -> Result<(), InvalidObject> {
        crate::model::outgoing::validate_name(&self.name)
    }
}

fn yes() -> bool {
    true
}
fn default_heartbeat_s() -> u16 {
    30
}
fn default_connect_timeout_ms() -> u64 {
    10_000
}
fn default_pool_size() -> u32 {
    4
}
fn default_confirm_timeout_ms() -> u64 {
    10_000
}
fn default_prefetch() -> u16 {
    100
}
fn default_consumers() -> u16 {
    1
}
fn default_max_redeliveries() -> u32 {
    5
}
