//! MQTT definitions as plain data (docs/CONNECTORS.md): an outgoing MQTT connection
//! ([`MqttConn`]: `self.out.mqtt[name].publish(topic, payload, qos, retain)`) and an MQTT
//! channel ([`MqttChannel`]: topic filters into a service, PUBACK only after it returned).
//! The password only sealed. No I/O here.
//!
//! FOUNDATION (issue 21): the fields below are the contract the MQTT work starts from.

use serde::{Deserialize, Serialize};

use crate::model::object::InvalidObject;
use crate::model::outgoing::TlsOptions;

/// An outgoing MQTT connection (one client per server).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MqttConn {
    pub name: String,
    /// `mqtt://host:1883` or `mqtts://host:8883`.
    pub address: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
    #[serde(default)]
    pub tls: TlsOptions,
    #[serde(default = "default_keepalive_s")]
    pub keepalive_s: u16,
    /// A QoS 1 publish not acknowledged within this fails `timeout`.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

impl MqttConn {
    pub fn seal_name(name: &str) -> String {
        format!("outgoing/mqtt/{name}")
    }

    pub fn validate(&self) -> Result<(), InvalidObject> {
        crate::model::outgoing::validate_name(&self.name)
    }
}

/// One topic filter of a channel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MqttFilter {
    pub filter: String,
    #[serde(default = "default_qos")]
    pub qos: u8,
}

/// An MQTT channel: a persistent session per server (client id stable per channel and
/// server), each message to `service`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MqttChannel {
    pub name: String,
    pub address: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
    #[serde(default)]
    pub tls: TlsOptions,
    #[serde(default = "default_keepalive_s")]
    pub keepalive_s: u16,
    pub topics: Vec<MqttFilter>,
    pub service: String,
    /// The session's client id; default `oxbus-<channel>-<server>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default = "yes")]
    pub is_active: bool,
}

impl MqttChannel {
    pub fn seal_name(name: &str) -> String {
        format!("inbound/mqtt/{name}")
    }

    pub fn validate(&self) -> Result<(), InvalidObject> {
        crate::model::outgoing::validate_name(&self.name)
    }
}

fn yes() -> bool {
    true
}
fn default_keepalive_s() -> u16 {
    30
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_qos() -> u8 {
    1
}
