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
use crate::model::outgoing::{Carry, Credentialed, Input, TlsOptions};

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
    /// How long one message's service may run; past it the message is failed (requeued
    /// per `on_error`, as on an exception).
    #[serde(default = "default_service_timeout_ms")]
    pub service_timeout_ms: u64,
    #[serde(default = "yes")]
    pub is_active: bool,
}

/// The most consumers one channel runs per server.
pub const MAX_CHANNEL_CONSUMERS: u16 = 64;
/// The most redeliveries a channel may allow before it rejects a message for good.
pub const MAX_REDELIVERIES: u32 = 1_000;

impl AmqpChannel {
    /// The name its password is sealed under.
    pub fn seal_name(name: &str) -> String {
        format!("inbound/amqp/{name}")
    }

    /// Checks what a stored AMQP channel must satisfy; the message names the channel and
    /// the field.
    pub fn validate(&self) -> Result<(), InvalidObject> {
        crate::model::outgoing::validate_name(&self.name)?;
        self.check()
            .map_err(|m| InvalidObject(format!("AMQP channel {}: {m}", self.name)))
    }

    fn check(&self) -> Result<(), String> {
        check_channel_address(&self.address).map_err(|m| format!("address: {m}"))?;
        if let Some(u) = &self.username
            && (u.is_empty() || u.chars().any(char::is_control))
        {
            return Err("username: empty or holds a control character".into());
        }
        if let Some(s) = &self.sealed
            && !s.starts_with(crate::model::outgoing::SEALED_PREFIX)
        {
            return Err("sealed: not a sealed value (oxbus1:…)".into());
        }
        if self.sealed.is_some() && self.username.is_none() {
            return Err("password: a password needs a username".into());
        }
        if self.queue.is_empty() || self.queue.len() > 255 {
            return Err("queue: must be 1-255 bytes (an AMQP short string)".into());
        }
        if self.queue.chars().any(char::is_control) {
            return Err("queue: holds a control character".into());
        }
        let service = self.service.trim();
        if service.is_empty() || service != self.service || self.service.len() > 400 {
            return Err(
                "service: must be a service name (not empty, no surrounding spaces)".into(),
            );
        }
        if self.prefetch == 0 {
            return Err("prefetch: 0 is not 1..=65535".into());
        }
        if !(1..=MAX_CHANNEL_CONSUMERS).contains(&self.consumers) {
            return Err(format!(
                "consumers: {} is not 1..={MAX_CHANNEL_CONSUMERS}",
                self.consumers
            ));
        }
        if self.max_redeliveries > MAX_REDELIVERIES {
            return Err(format!(
                "max_redeliveries: {} is not 0..={MAX_REDELIVERIES}",
                self.max_redeliveries
            ));
        }
        if self.heartbeat_s > 3_600 {
            return Err(format!(
                "heartbeat_s: {} is not 0..=3600 (0: none)",
                self.heartbeat_s
            ));
        }
        crate::model::outgoing::timeout("connect_timeout_ms", self.connect_timeout_ms, 1)?;
        crate::model::outgoing::timeout("service_timeout_ms", self.service_timeout_ms, 1)?;
        Ok(())
    }

    /// Parses what an operator sends (the admin API's body, an import's entry): an
    /// [`AmqpChannel`] with the plaintext `password` instead of `sealed`. `url_name`: the
    /// name in the URL (the body's `name` may be left out, or must match). `has_secret` (as
    /// answers show it) is accepted and ignored; an unknown field is refused by name. Not
    /// validated: call `validate` once the password is sealed.
    pub fn parse_input(
        v: &serde_json::Value,
        url_name: Option<&str>,
    ) -> Result<Input<AmqpChannel>, InvalidObject> {
        use serde_json::Value;
        let (name, mut obj) = crate::model::outgoing::input_object(v, url_name, "AMQP channel")?;
        let fail = |m: String| InvalidObject(format!("AMQP channel {name}: {m}"));
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
            serde_json::json!({"address": "amqp://x", "queue": "q", "service": "s"}),
        )
        .map_err(fail)?;
        Ok(Input { def, plain })
    }
}

impl Credentialed for AmqpChannel {
    fn seal_name_of(&self) -> String {
        AmqpChannel::seal_name(&self.name)
    }
    fn sealed_secret(&self) -> Option<&str> {
        self.sealed.as_deref()
    }
    fn set_sealed(&mut self, s: Option<String>) {
        self.sealed = s;
    }
    fn keeps_secret_of(&self, stored: &Self) -> Carry {
        // The password goes to the broker of `address` for `username`: the vhost is part of
        // the address, so a move to another vhost asks for the password again too.
        if self.address == stored.address && self.username == stored.username {
            Carry::Keep
        } else {
            Carry::DestinationChanged
        }
    }
    fn secret_field(&self) -> &'static str {
        "password"
    }
    fn destination_fields(&self) -> &'static str {
        "address and username"
    }
}

/// What a channel does with a delivery whose service raised (or whose worker died or
/// timed out), given its redelivery count so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// basic.reject with requeue: the broker delivers it again.
    Requeue,
    /// basic.reject without requeue: dropped, or dead-lettered by the queue's DLX.
    DeadLetter,
}

/// How many times a delivery was delivered before this one. A first delivery (the
/// `redelivered` flag clear) has none, whatever a header or a local count says. A redelivered
/// one has the larger of the `x-delivery-count` header quorum queues set (`delivery_count`;
/// a stale or copied one from a republished message cannot lower the count) and the failures
/// of this message the channel counted itself (`failures_seen`), and at least 1 (another
/// server, or this one before a restart, had it).
pub fn redeliveries(delivery_count: Option<i64>, redelivered: bool, failures_seen: u32) -> u32 {
    if !redelivered {
        return 0;
    }
    let header = delivery_count.map_or(0, |n| u32::try_from(n.max(0)).unwrap_or(u32::MAX));
    header.max(failures_seen).max(1)
}

/// The decision for a failed delivery: per `on_error`, requeued while the message has
/// been redelivered fewer than `max_redeliveries` times, then dead-lettered.
pub fn rejection(on_error: AmqpOnError, max_redeliveries: u32, redeliveries: u32) -> Rejection {
    match on_error {
        AmqpOnError::Reject => Rejection::DeadLetter,
        AmqpOnError::Requeue if redeliveries < max_redeliveries => Rejection::Requeue,
        AmqpOnError::Requeue => Rejection::DeadLetter,
    }
}

/// `amqp://host[:port][/vhost]` or `amqps://…`: no credentials (they are `username` and
/// the sealed password), no query or fragment, a host name or IP address, a port 1-65535.
fn check_channel_address(address: &str) -> Result<(), String> {
    let Some(rest) = address
        .strip_prefix("amqp://")
        .or_else(|| address.strip_prefix("amqps://"))
    else {
        return Err("not an amqp:// or amqps:// URL".into());
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.contains('@') {
        // Never quoted: it may hold a password.
        return Err(
            "holds credentials: give username and password as fields (the password is \
             stored sealed), the address without them"
                .into(),
        );
    }
    if rest.contains(['?', '#']) {
        return Err(format!("{address:?} has a query or fragment"));
    }
    if address.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{address:?} holds a space or a control character"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((h, after)) = v6.split_once(']') else {
            return Err(format!("{address:?}: unclosed [ of an IPv6 address"));
        };
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{address:?} names no host"));
    }
    if let Some(p) = port
        && !matches!(p.parse::<u16>(), Ok(n) if n > 0)
    {
        return Err(format!("{address:?}: the port is not 1-65535"));
    }
    let vhost = rest.split_once('/').map_or("", |(_, v)| v);
    if vhost.contains('/') {
        return Err(format!(
            "{address:?}: a vhost with / is written percent-encoded (%2f)"
        ));
    }
    if percent_decoded(vhost).is_none() {
        return Err(format!(
            "{address:?}: the vhost is not valid percent-encoding (each % followed by two hex \
             digits, decoding to UTF-8)"
        ));
    }
    Ok(())
}

/// `s` percent-decoded as an AMQP URI's vhost is; none when a `%` is not followed by two
/// hex digits or the bytes are not UTF-8 (what the connect would refuse).
fn percent_decoded(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
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
fn default_service_timeout_ms() -> u64 {
    60_000
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn channel(v: serde_json::Value) -> Result<AmqpChannel, String> {
        let input = AmqpChannel::parse_input(&v, Some("orders")).map_err(|e| e.to_string())?;
        assert!(input.plain.is_none());
        input.def.validate().map_err(|e| e.to_string())?;
        Ok(input.def)
    }

    fn base() -> serde_json::Value {
        json!({"address": "amqp://127.0.0.1:5672/%2f", "queue": "orders", "service": "orders.take"})
    }

    fn with(k: &str, v: serde_json::Value) -> serde_json::Value {
        let mut b = base();
        b[k] = v;
        b
    }

    #[test]
    fn a_minimal_channel_takes_the_defaults() {
        let c = channel(base()).unwrap();
        assert_eq!(c.name, "orders");
        assert_eq!((c.prefetch, c.consumers, c.max_redeliveries), (100, 1, 5));
        assert_eq!(c.on_error, AmqpOnError::Requeue);
        assert!(c.is_active);
    }

    #[test]
    fn each_rule_names_its_field() {
        let cases = [
            (with("address", json!("http://h/")), "address: not an amqp"),
            (
                with("address", json!("amqp://u:pw@h/")),
                "address: holds credentials",
            ),
            (
                with("address", json!("amqp://h:0/")),
                "the port is not 1-65535",
            ),
            (with("address", json!("amqp:///v")), "names no host"),
            (with("address", json!("amqp://h/a/b")), "percent-encoded"),
            (with("queue", json!("")), "queue: must be 1-255"),
            (
                with("queue", json!("q".repeat(256))),
                "queue: must be 1-255",
            ),
            (
                with("service", json!(" ")),
                "service: must be a service name",
            ),
            (with("prefetch", json!(0)), "prefetch: 0 is not 1..=65535"),
            (with("prefetch", json!(65536)), "prefetch:"),
            (with("consumers", json!(0)), "consumers: 0 is not 1..=64"),
            (with("consumers", json!(65)), "consumers: 65 is not 1..=64"),
            (with("max_redeliveries", json!(1001)), "max_redeliveries:"),
            (with("on_error", json!("drop")), "on_error:"),
            (with("sealed", json!("plain")), "sealed: not a sealed value"),
            (with("connect_timeout_ms", json!(0)), "connect_timeout_ms:"),
            (with("service_timeout_ms", json!(0)), "service_timeout_ms:"),
            (with("colour", json!("red")), "colour: unknown field"),
        ];
        for (v, want) in cases {
            let err = channel(v.clone()).unwrap_err();
            assert!(err.contains(want), "{v}: {err:?} lacks {want:?}");
            assert!(err.starts_with("AMQP channel orders: "), "{err}");
        }
    }

    #[test]
    fn a_password_in_the_address_is_never_quoted() {
        let err = channel(with("address", json!("amqp://bob:hunter22@h/"))).unwrap_err();
        assert!(!err.contains("hunter22"), "{err}");
    }

    #[test]
    fn the_password_is_taken_apart_from_the_definition() {
        let mut v = base();
        v["username"] = json!("bob");
        v["password"] = json!("pw");
        v["has_secret"] = json!(true);
        let input = AmqpChannel::parse_input(&v, None).unwrap_err();
        assert!(input.to_string().contains("name is missing"));
        let input = AmqpChannel::parse_input(&v, Some("orders")).unwrap();
        assert_eq!(input.plain.as_deref(), Some("pw"));
        assert_eq!(input.def.sealed, None);
        assert!(!format!("{input:?}").contains("pw\""));
        v["sealed"] = json!("oxbus1:x");
        let err = AmqpChannel::parse_input(&v, Some("orders")).unwrap_err();
        assert!(err.to_string().contains("not both"), "{err}");
        v["name"] = json!("other");
        let err = AmqpChannel::parse_input(&v, Some("orders")).unwrap_err();
        assert!(err.to_string().contains("cannot be renamed"), "{err}");
    }

    #[test]
    fn a_password_needs_a_username() {
        let err = channel(with("sealed", json!("oxbus1:abc"))).unwrap_err();
        assert!(err.contains("needs a username"), "{err}");
    }

    #[test]
    fn a_kept_password_stays_with_its_broker_and_user() {
        let mut a = channel(with("username", json!("bob"))).unwrap();
        let b = a.clone();
        a.prefetch = 5;
        assert_eq!(a.keeps_secret_of(&b), Carry::Keep);
        a.address = "amqp://127.0.0.1:5672/other".into();
        assert_eq!(a.keeps_secret_of(&b), Carry::DestinationChanged);
        a.address = b.address.clone();
        a.username = Some("eve".into());
        assert_eq!(a.keeps_secret_of(&b), Carry::DestinationChanged);
    }

    #[test]
    fn redeliveries_come_from_the_header_or_the_channels_count() {
        // A quorum queue's header wins over everything the channel saw.
        assert_eq!(redeliveries(Some(3), true, 1), 3);
        assert_eq!(redeliveries(Some(0), false, 0), 0);
        // A classic queue: a first delivery, one the channel saw fail twice, one it never
        // saw that the broker flags as redelivered.
        assert_eq!(redeliveries(None, false, 0), 0);
        assert_eq!(redeliveries(None, true, 2), 2);
        assert_eq!(redeliveries(None, true, 0), 1);
        assert_eq!(redeliveries(Some(-1), true, 0), 1);
    }

    #[test]
    fn a_vhost_must_be_valid_percent_encoding() {
        assert!(check_channel_address("amqp://h/%2f").is_ok());
        assert!(check_channel_address("amqp://h/my%20vhost").is_ok());
        for bad in ["amqp://h/%zz", "amqp://h/%2", "amqp://h/%ff", "amqp://h/a%"] {
            let e = check_channel_address(bad).unwrap_err();
            assert!(e.contains("percent-encoding"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_stale_header_cannot_hide_the_channels_count_nor_count_a_first_delivery() {
        // A header copied from another message (republished with its headers) that stays
        // at 1: the channel's own count still reaches the limit.
        assert_eq!(redeliveries(Some(1), true, 4), 4);
        // A first delivery is a first delivery, whatever the header or a count of another
        // message alike in its key.
        assert_eq!(redeliveries(Some(7), false, 0), 0);
        assert_eq!(redeliveries(None, false, 3), 0);
    }

    #[test]
    fn a_failure_is_requeued_until_the_limit_then_dead_lettered() {
        use AmqpOnError::*;
        // max 2: the first delivery and two redeliveries fail back to the queue, ...
        assert_eq!(rejection(Requeue, 2, 0), Rejection::Requeue);
        assert_eq!(rejection(Requeue, 2, 1), Rejection::Requeue);
        // ... the second redelivery's (the third delivery's) failure goes to the dead
        // letters.
        assert_eq!(rejection(Requeue, 2, 2), Rejection::DeadLetter);
        assert_eq!(rejection(Requeue, 0, 0), Rejection::DeadLetter);
        assert_eq!(rejection(Reject, 5, 0), Rejection::DeadLetter);
    }
}
