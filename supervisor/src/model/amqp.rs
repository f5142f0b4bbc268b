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
        crate::model::outgoing::validate_name(&self.name)?;
        self.check()
            .map_err(|m| InvalidObject(format!("AMQP connection {}: {m}", self.name)))
    }

    fn check(&self) -> Result<(), String> {
        let tls = check_amqp_address(&self.address).map_err(|m| format!("address: {m}"))?;
        if let Some(u) = &self.username
            && (u.is_empty() || u.len() > 255)
        {
            return Err("username: 1 to 255 bytes".into());
        }
        if self.sealed.is_some() && self.username.is_none() {
            return Err("password: given without a username".into());
        }
        if let Some(s) = &self.sealed
            && !s.starts_with("oxbus1:")
        {
            return Err("sealed: not a sealed value (oxbus1:…)".into());
        }
        if !tls && self.tls != TlsOptions::default() {
            return Err(format!(
                "tls: options are for amqps:// addresses; {} is amqp://",
                self.address
            ));
        }
        if self.tls.client_cert_file.is_some() != self.tls.client_key_file.is_some() {
            return Err(
                "tls: client_cert_file and client_key_file are given together or not at all".into(),
            );
        }
        if self.heartbeat_s > 3600 {
            return Err(format!("heartbeat_s: {} is not 0..=3600", self.heartbeat_s));
        }
        crate::model::outgoing::timeout("connect_timeout_ms", self.connect_timeout_ms, 1)?;
        crate::model::outgoing::timeout("confirm_timeout_ms", self.confirm_timeout_ms, 1)?;
        if !(1..=64).contains(&self.pool_size) {
            return Err(format!("pool_size: {} is not 1..=64", self.pool_size));
        }
        Ok(())
    }
}

/// `amqp[s]://host[:port][/vhost]` without user info, query or fragment: whether it is
/// amqps. The vhost is one percent-encoded segment (`%2f` for `/`).
pub fn check_amqp_address(address: &str) -> Result<bool, String> {
    let (tls, rest) = if let Some(r) = address.strip_prefix("amqps://") {
        (true, r)
    } else if let Some(r) = address.strip_prefix("amqp://") {
        (false, r)
    } else {
        return Err("not an amqp:// or amqps:// URL".into());
    };
    let (authority, vhost) = rest.split_once('/').unwrap_or((rest, "%2f"));
    if authority.contains('@') {
        // Not quoted: it may hold a password.
        return Err("has user info: give username and password as their own fields".into());
    }
    if vhost.is_empty() {
        // lapin would take it as the vhost "", which no broker has.
        return Err(format!(
            "{address:?}: an empty vhost; the default vhost `/` is written %2f, or leave \
             out the trailing /"
        ));
    }
    if vhost.contains(['/', '?', '#']) || authority.contains(['?', '#']) {
        return Err(format!(
            "{address:?}: only amqp[s]://host[:port][/vhost] (a vhost with `/` is \
             percent-encoded: %2f)"
        ));
    }
    if authority.starts_with('[') {
        // lapin's URI parser takes the host from a URL's domain, which an IPv6 literal is
        // not: it would connect to localhost instead.
        return Err(format!(
            "{address:?}: an IPv6 address is not supported; give a host name that resolves \
             to it"
        ));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    if host.is_empty() {
        return Err(format!("{address:?} has no host"));
    }
    if let Some(p) = port
        && p.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(format!("{address:?}: port {p:?} is not 1..=65535"));
    }
    Ok(tls)
}

/// Parses what an operator sends for an outgoing AMQP connection (the admin API's body, an
/// import's entry): an [`AmqpConn`] with the plaintext `password` instead of `sealed`.
/// Not validated: call `validate` once the password is sealed.
pub fn parse_amqp_input(
    v: &serde_json::Value,
    url_name: Option<&str>,
) -> Result<crate::model::outgoing::Input<AmqpConn>, InvalidObject> {
    use serde_json::Value;
    let (name, mut obj) = crate::model::outgoing::input_object(v, url_name, "AMQP connection")?;
    let fail = |m: String| InvalidObject(format!("AMQP connection {name}: {m}"));
    let plain = match obj.remove("password") {
        None => None,
        Some(Value::String(p)) if !p.is_empty() => Some(p),
        Some(_) => return Err(fail("password: must be a non-empty string".into())),
    };
    if plain.is_some() && obj.contains_key("sealed") {
        return Err(fail(
            "give either sealed or a plaintext password, not both".into(),
        ));
    }
    let def = crate::model::outgoing::from_fields(
        &name,
        &obj,
        serde_json::json!({"address": "amqp://localhost"}),
    )
    .map_err(fail)?;
    Ok(crate::model::outgoing::Input { def, plain })
}

impl crate::model::outgoing::Credentialed for AmqpConn {
    fn seal_name_of(&self) -> String {
        AmqpConn::seal_name(&self.name)
    }
    fn sealed_secret(&self) -> Option<&str> {
        self.sealed.as_deref()
    }
    fn set_sealed(&mut self, s: Option<String>) {
        self.sealed = s;
    }
    fn keeps_secret_of(&self, stored: &Self) -> crate::model::outgoing::Carry {
        if self.address == stored.address && self.username == stored.username {
            crate::model::outgoing::Carry::Keep
        } else {
            crate::model::outgoing::Carry::DestinationChanged
        }
    }
    fn secret_field(&self) -> &'static str {
        "password"
    }
    fn destination_fields(&self) -> &'static str {
        "address and username"
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

#[cfg(test)]
mod amqp_conn_tests {
    use super::*;
    use serde_json::json;

    fn conn(extra: serde_json::Value) -> Result<AmqpConn, String> {
        let mut v = json!({"name": "mq", "address": "amqp://127.0.0.1:5672/%2f"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let input = parse_amqp_input(&v, None).map_err(|e| e.0)?;
        input.def.validate().map_err(|e| e.0)?;
        Ok(input.def)
    }

    #[test]
    fn validation() {
        let d = conn(json!({})).unwrap();
        assert_eq!(
            (d.pool_size, d.confirm_timeout_ms, d.heartbeat_s),
            (4, 10_000, 30)
        );
        assert!(
            conn(json!({"address": "amqps://mq.example.com/orders", "tls": {"verify": false}}))
                .is_ok()
        );
        assert!(conn(json!({"address": "amqp://h:5672"})).is_ok());
        let refused = |extra, field: &str| {
            let e = conn(extra).unwrap_err();
            assert!(e.contains(field), "{e}");
            assert!(!e.contains("s3cret"), "{e}");
        };
        refused(json!({"address": "http://h"}), "address");
        refused(json!({"address": "amqp://bob:s3cret@h/"}), "address");
        refused(json!({"address": "amqp://bob:s3cret@h"}), "address");
        // lapin would connect to localhost for an IPv6 literal, and to the vhost "" for
        // a trailing `/`.
        refused(json!({"address": "amqp://[::1]:5672/%2f"}), "IPv6");
        refused(json!({"address": "amqp://[2001:db8::1]"}), "IPv6");
        refused(json!({"address": "amqp://h:5672/"}), "empty vhost");
        refused(json!({"address": "amqp://h:0/"}), "address");
        refused(json!({"address": "amqp://h/a/b"}), "address");
        refused(json!({"address": "amqp://:5672"}), "address");
        refused(json!({"tls": {"verify": false}}), "tls");
        refused(json!({"pool_size": 0}), "pool_size");
        refused(json!({"confirm_timeout_ms": 0}), "confirm_timeout_ms");
        refused(json!({"colour": 1}), "colour");
        let input = parse_amqp_input(
            &json!({"name": "mq", "address": "amqp://h", "username": "u", "password": "s3cret"}),
            None,
        )
        .unwrap();
        assert_eq!(input.plain.as_deref(), Some("s3cret"));
        assert!(parse_amqp_input(&json!({"name": "mq", "address": "amqp://h", "password": "p", "sealed": "oxbus1:x"}), None).is_err());
    }

    #[test]
    fn a_stored_password_stays_only_for_the_same_address_and_username() {
        use crate::model::outgoing::{Carry, Credentialed};
        let a = conn(json!({"username": "u"})).unwrap();
        let mut b = a.clone();
        b.pool_size = 8;
        assert_eq!(b.keeps_secret_of(&a), Carry::Keep);
        b.address = "amqp://elsewhere/".into();
        assert_eq!(b.keeps_secret_of(&a), Carry::DestinationChanged);
        let mut c = a.clone();
        c.username = Some("v".into());
        assert_eq!(c.keeps_secret_of(&a), Carry::DestinationChanged);
    }
}
