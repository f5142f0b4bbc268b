//! MQTT definitions as plain data (docs/CONNECTORS.md): an outgoing MQTT connection
//! ([`MqttConn`]: `self.out.mqtt[name].publish(topic, payload, qos, retain)`) and an MQTT
//! channel ([`MqttChannel`]: topic filters into a service, PUBACK only after it returned).
//! Their rules (addresses, topic filters per MQTT 3.1.1 §4.7, QoS 0 and 1), the parse of what
//! an operator sends (a plaintext `password`), and [`Credentialed`] for both, so the admin
//! API and the import seal and keep the password as they do for REST and SQL. The password
//! only sealed. No I/O here.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model::object::InvalidObject;
use crate::model::outgoing::{
    Carry, Credentialed, Input, SEALED_PREFIX, TlsOptions, from_fields, input_object,
};

/// An outgoing MQTT connection (one client per server, connected on first use).
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
        crate::model::outgoing::validate_name(&self.name)?;
        let fail = |m: String| InvalidObject(format!("MQTT connection {}: {m}", self.name));
        common(
            &self.address,
            self.username.as_deref(),
            self.sealed.as_deref(),
            self.keepalive_s,
        )
        .map_err(fail)?;
        if !(1..=600_000).contains(&self.timeout_ms) {
            return Err(fail(format!(
                "timeout_ms: {} is not 1..=600000",
                self.timeout_ms
            )));
        }
        Ok(())
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

/// How a channel's message reaches its service: `raw` (the default) gives the payload's
/// bytes as `self.request.payload`; `json` parses them first (a message that is not JSON is
/// refused as bad input: acknowledged and counted `refused`, since it can never succeed).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MqttDataFormat {
    #[default]
    Raw,
    Json,
}

impl MqttDataFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            MqttDataFormat::Raw => "raw",
            MqttDataFormat::Json => "json",
        }
    }
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
    /// The session's client id; default `oxbus:<channel>:<server>`. One given here is used
    /// as it is on every server: two servers with the same client id take the session from
    /// each other, so give one only where a single server runs the channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default)]
    pub data_format: MqttDataFormat,
    #[serde(default = "yes")]
    pub is_active: bool,
}

impl MqttChannel {
    pub fn seal_name(name: &str) -> String {
        format!("inbound/mqtt/{name}")
    }

    pub fn validate(&self) -> Result<(), InvalidObject> {
        crate::model::outgoing::validate_name(&self.name)?;
        let fail = |m: String| InvalidObject(format!("MQTT channel {}: {m}", self.name));
        common(
            &self.address,
            self.username.as_deref(),
            self.sealed.as_deref(),
            self.keepalive_s,
        )
        .map_err(fail)?;
        if self.topics.is_empty() {
            return Err(fail("topics: give at least one topic filter".into()));
        }
        for (i, t) in self.topics.iter().enumerate() {
            check_filter(&t.filter).map_err(|m| fail(format!("topics[{i}].filter: {m}")))?;
            check_qos(t.qos).map_err(|m| fail(format!("topics[{i}].qos: {m}")))?;
            if self.topics[..i].iter().any(|o| o.filter == t.filter) {
                return Err(fail(format!(
                    "topics[{i}].filter: {:?} is given twice",
                    t.filter
                )));
            }
        }
        if self.service.trim().is_empty() {
            return Err(fail("service: missing".into()));
        }
        if let Some(id) = &self.client_id
            && (id.is_empty() || id.len() > 65_535 || id.chars().any(char::is_control))
        {
            return Err(fail(
                "client_id: 1 to 65535 bytes without control characters".into(),
            ));
        }
        Ok(())
    }

    /// The session's client id on server `server`: `client_id`, or `oxbus:<channel>:<server>`
    /// (`:` is in no channel name, so two channels never share a default id).
    pub fn client_id_on(&self, server: &str) -> String {
        match &self.client_id {
            Some(id) => id.clone(),
            None => format!("oxbus:{}:{server}", self.name),
        }
    }
}

/// Two channels naming one `client_id` would take the broker's session from each other
/// (and one's delete would end the other's session): the first such pair, as a message.
pub fn shared_client_id(defs: &[MqttChannel]) -> Option<String> {
    let mut seen: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for d in defs {
        if let Some(id) = d.client_id.as_deref()
            && let Some(other) = seen.insert(id, &d.name)
        {
            return Some(format!(
                "MQTT channels {other} and {} both have client_id {id:?}: one broker session \
                 cannot serve two channels",
                d.name
            ));
        }
    }
    None
}

/// Where a connection or channel connects: `mqtts` or not, host, port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttAddress {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

/// `mqtt://host[:port]` (1883) or `mqtts://host[:port]` (8883). No user info (the username
/// and password are their own fields), path, query or fragment.
pub fn parse_address(address: &str) -> Result<MqttAddress, String> {
    let (tls, rest) = if let Some(r) = address.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = address.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err("address: not mqtt://host[:port] or mqtts://host[:port]".into());
    };
    if rest.contains('@') {
        // Never quoted: it may hold a password.
        return Err(
            "address: has user info: give username and password as their own fields".into(),
        );
    }
    if rest.contains(['/', '?', '#']) {
        return Err(format!(
            "address: {address:?} has a path, query or fragment: give only mqtt(s)://host[:port]"
        ));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let Some((h, after)) = v6.split_once(']') else {
            return Err(format!(
                "address: {address:?}: unclosed [ of an IPv6 address"
            ));
        };
        match after {
            "" => (h, None),
            p => match p.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None => return Err(format!("address: {address:?}: junk after ]")),
            },
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(format!("address: {address:?} has no host"));
    }
    let port = match port {
        None => {
            if tls {
                8883
            } else {
                1883
            }
        }
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("address: {address:?}: the port is not 1..=65535")),
        },
    };
    Ok(MqttAddress {
        tls,
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// A topic filter per MQTT 3.1.1 §4.7: 1 to 65535 bytes, no NUL, `#` only as the whole
/// last level, `+` only as a whole level.
pub fn check_filter(filter: &str) -> Result<(), String> {
    check_length(filter)?;
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!(
                "{filter:?}: # must be a whole level and the last one (a/#)"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("{filter:?}: + must be a whole level (a/+/b)"));
        }
    }
    Ok(())
}

/// A topic a message is published to: 1 to 65535 bytes, no NUL, no wildcard.
pub fn check_topic(topic: &str) -> Result<(), String> {
    check_length(topic)?;
    if topic.contains(['+', '#']) {
        return Err(format!(
            "{topic:?}: a topic to publish to has no wildcard (+ or #)"
        ));
    }
    Ok(())
}

/// QoS 0 or 1; QoS 2 is refused by name.
pub fn check_qos(qos: u8) -> Result<(), String> {
    match qos {
        0 | 1 => Ok(()),
        2 => Err(
            "QoS 2 (exactly once) is not supported: use 0 or 1 (QoS 1 with an \
                  idempotent service gives the same result)"
                .into(),
        ),
        n => Err(format!("{n} is not a QoS: use 0 or 1")),
    }
}

fn check_length(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty".into());
    }
    if s.len() > 65_535 {
        return Err(format!("{} bytes: at most 65535", s.len()));
    }
    if s.contains('\0') {
        return Err("contains NUL".into());
    }
    Ok(())
}

/// The rules a connection and a channel share.
fn common(
    address: &str,
    username: Option<&str>,
    sealed: Option<&str>,
    keepalive_s: u16,
) -> Result<(), String> {
    parse_address(address)?;
    if username == Some("") {
        return Err("username: empty (leave it out for none)".into());
    }
    if let Some(s) = sealed {
        if !s.starts_with(SEALED_PREFIX) {
            return Err("sealed: not a sealed value (oxbus1:…)".into());
        }
        if username.is_none() {
            return Err("password: MQTT sends a password only with a username".into());
        }
    }
    if !(5..=3600).contains(&keepalive_s) {
        return Err(format!("keepalive_s: {keepalive_s} is not 5..=3600"));
    }
    Ok(())
}

/// Whether a stored password may be kept: same scheme, host and port and same username.
fn carry(address: &str, username: &Option<String>, old: &str, old_user: &Option<String>) -> Carry {
    match (parse_address(address), parse_address(old)) {
        (Ok(a), Ok(b)) if a == b && username == old_user => Carry::Keep,
        _ => Carry::DestinationChanged,
    }
}

const DESTINATION: &str = "the scheme, host and port of address and username";

impl Credentialed for MqttConn {
    fn seal_name_of(&self) -> String {
        MqttConn::seal_name(&self.name)
    }
    fn sealed_secret(&self) -> Option<&str> {
        self.sealed.as_deref()
    }
    fn set_sealed(&mut self, s: Option<String>) {
        self.sealed = s;
    }
    fn keeps_secret_of(&self, stored: &Self) -> Carry {
        carry(
            &self.address,
            &self.username,
            &stored.address,
            &stored.username,
        )
    }
    fn secret_field(&self) -> &'static str {
        "password"
    }
    fn destination_fields(&self) -> &'static str {
        DESTINATION
    }
}

impl Credentialed for MqttChannel {
    fn seal_name_of(&self) -> String {
        MqttChannel::seal_name(&self.name)
    }
    fn sealed_secret(&self) -> Option<&str> {
        self.sealed.as_deref()
    }
    fn set_sealed(&mut self, s: Option<String>) {
        self.sealed = s;
    }
    fn keeps_secret_of(&self, stored: &Self) -> Carry {
        carry(
            &self.address,
            &self.username,
            &stored.address,
            &stored.username,
        )
    }
    fn secret_field(&self) -> &'static str {
        "password"
    }
    fn destination_fields(&self) -> &'static str {
        DESTINATION
    }
}

/// The plaintext `password` of an operator's object, taken out of it.
fn take_password(
    obj: &mut serde_json::Map<String, Value>,
    fail: &dyn Fn(String) -> InvalidObject,
) -> Result<Option<String>, InvalidObject> {
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
    Ok(plain)
}

/// Parses what an operator sends for an outgoing MQTT connection (the admin API's body, an
/// import's entry): an [`MqttConn`] with a plaintext `password` instead of `sealed`, or
/// `sealed` as exported. Not validated: call `validate` once the password is sealed.
pub fn parse_conn_input(
    v: &Value,
    url_name: Option<&str>,
) -> Result<Input<MqttConn>, InvalidObject> {
    let (name, mut obj) = input_object(v, url_name, "MQTT connection")?;
    let fail = |m: String| InvalidObject(format!("MQTT connection {name}: {m}"));
    let plain = take_password(&mut obj, &fail)?;
    let def = from_fields(&name, &obj, json!({"address": "mqtt://x"})).map_err(fail)?;
    Ok(Input { def, plain })
}

/// Parses what an operator sends for an MQTT channel, as [`parse_conn_input`].
pub fn parse_channel_input(
    v: &Value,
    url_name: Option<&str>,
) -> Result<Input<MqttChannel>, InvalidObject> {
    let (name, mut obj) = input_object(v, url_name, "MQTT channel")?;
    let fail = |m: String| InvalidObject(format!("MQTT channel {name}: {m}"));
    let plain = take_password(&mut obj, &fail)?;
    let def = from_fields(
        &name,
        &obj,
        json!({"address": "mqtt://x", "topics": [], "service": "x"}),
    )
    .map_err(fail)?;
    Ok(Input { def, plain })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(v: Value) -> Result<MqttChannel, InvalidObject> {
        let input = parse_channel_input(&v, Some("ch"))?;
        assert!(input.plain.is_none());
        input.def.validate()?;
        Ok(input.def)
    }

    #[test]
    fn filters_follow_mqtt_and_qos_2_is_refused_by_name() {
        for ok in [
            "a", "a/b", "#", "a/#", "+", "+/+/c", "a/+/#", "/", "a//b", "$SYS/#",
        ] {
            check_filter(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["", "a/#/b", "a#", "a/b#", "a+", "a/+b/c", "#/a", "a\0b"] {
            assert!(check_filter(bad).is_err(), "{bad:?} accepted");
        }
        check_topic("a/b").unwrap();
        assert!(check_topic("a/+").is_err());
        assert!(check_topic("a/#").is_err());
        assert!(check_topic("").is_err());
        check_qos(0).unwrap();
        check_qos(1).unwrap();
        assert!(check_qos(2).unwrap_err().contains("QoS 2"));
        assert!(check_qos(3).is_err());

        let base = json!({"address": "mqtt://h", "service": "s",
                          "topics": [{"filter": "a/#"}]});
        let def = channel(base.clone()).unwrap();
        assert_eq!(def.topics[0].qos, 1);
        assert_eq!(def.data_format, MqttDataFormat::Raw);
        assert_eq!(def.client_id_on("srv1"), "oxbus:ch:srv1");
        // A separator no channel name holds: channel `a-b` on server `c` and channel `a`
        // on server `b-c` have two sessions.
        let mut ab = def.clone();
        ab.name = "a-b".into();
        let mut a = def.clone();
        a.name = "a".into();
        assert_ne!(ab.client_id_on("c"), a.client_id_on("b-c"));
        // An explicit client id is one channel's only.
        assert_eq!(shared_client_id(&[ab.clone(), a.clone()]), None);
        ab.client_id = Some("fixed".into());
        a.client_id = Some("fixed".into());
        let e = shared_client_id(&[ab, a]).unwrap();
        assert!(e.contains("a-b and a") && e.contains("\"fixed\""), "{e}");
        let mut v = base.clone();
        v["topics"] = json!([{"filter": "a/#/b"}]);
        let e = channel(v).unwrap_err().to_string();
        assert!(e.contains("MQTT channel ch: topics[0].filter"), "{e}");
        let mut v = base.clone();
        v["topics"] = json!([{"filter": "a", "qos": 2}]);
        let e = channel(v).unwrap_err().to_string();
        assert!(e.contains("topics[0].qos: QoS 2"), "{e}");
        let mut v = base.clone();
        v["topics"] = json!([]);
        assert!(channel(v).unwrap_err().to_string().contains("at least one"));
        let mut v = base;
        v["topics"] = json!([{"filter": "a"}, {"filter": "a", "qos": 0}]);
        assert!(channel(v).unwrap_err().to_string().contains("given twice"));
    }

    #[test]
    fn addresses_and_passwords() {
        assert_eq!(
            parse_address("mqtt://Broker").unwrap(),
            MqttAddress {
                tls: false,
                host: "broker".into(),
                port: 1883
            }
        );
        assert_eq!(parse_address("mqtts://b").unwrap().port, 8883);
        assert_eq!(parse_address("mqtt://[::1]:1884").unwrap().host, "::1");
        for bad in [
            "http://h",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h/x",
            "mqtt://u:secret@h",
        ] {
            let e = parse_address(bad).unwrap_err();
            assert!(!e.contains("secret"), "{e}");
        }

        let v = json!({"address": "mqtt://h", "username": "u", "password": "pw"});
        let input = parse_conn_input(&v, Some("out")).unwrap();
        assert_eq!(input.plain.as_deref(), Some("pw"));
        assert!(!format!("{input:?}").contains("pw\""));
        let v = json!({"address": "mqtt://h", "password": "pw", "sealed": "oxbus1:x"});
        assert!(parse_conn_input(&v, Some("out")).is_err());
        let mut def = parse_conn_input(&json!({"address": "mqtt://h"}), Some("out"))
            .unwrap()
            .def;
        def.sealed = Some("oxbus1:abc".into());
        assert!(def.validate().unwrap_err().to_string().contains("username"));
        def.username = Some("u".into());
        def.validate().unwrap();
        def.timeout_ms = 0;
        assert!(
            def.validate()
                .unwrap_err()
                .to_string()
                .contains("timeout_ms")
        );

        // The stored password stays only for the same broker and user.
        let a = MqttConn {
            timeout_ms: 10,
            ..def.clone()
        };
        assert_eq!(a.keeps_secret_of(&def), Carry::Keep);
        let moved = MqttConn {
            address: "mqtt://h:1884".into(),
            ..def.clone()
        };
        assert_eq!(moved.keeps_secret_of(&def), Carry::DestinationChanged);
        let other_user = MqttConn {
            username: Some("v".into()),
            ..def.clone()
        };
        assert_eq!(other_user.keeps_secret_of(&def), Carry::DestinationChanged);
    }
}
