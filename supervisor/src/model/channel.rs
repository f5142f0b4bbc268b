//! A channel as plain data: what `[[channels]]` in server.toml and the store's channel rows
//! hold ([`Channel`], its [`RateLimit`], [`ChannelType`], [`DataFormat`]), and the checks a
//! set of channels must pass before it can become a routing table ([`routes`]): paths,
//! methods, the JSON-RPC form, unambiguous duplicates. No I/O, and nothing of the edge: the
//! routing table (`edge::router`) and the gate (`edge::gate`) are built from what this
//! module has checked; `config` runs the same checks at load.

use serde::Deserialize;

use crate::model::websocket::WsSettings;

/// A channel (or a set of channels) that cannot be routed; the text names the setting, the
/// value and the problem, like `config::ConfigError::Invalid`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting {key} = {value}: {message}")]
pub struct ChannelError {
    pub key: String,
    pub value: String,
    pub message: String,
}

/// A [`RateLimit`] that admits nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate_limit needs requests, per_s (and burst, if given) above 0")]
pub struct RateLimitError;

/// `[[channels]]`: a REST channel binds a URL path (with `{param}` segments) to a service; a
/// WebSocket channel (`type = "websocket"`) upgrades GETs of its path and calls its service
/// with each client message (settings in `websocket`, see `model::websocket`); a
/// JSON-RPC channel (`type = "jsonrpc"`) binds one URL to every deployed service, or to those
/// listed in `services`, each called by name as the request's `method` (see `edge::jsonrpc`);
/// a pub/sub channel (`type = "pubsub"`) serves the pub/sub REST API under its URL path (see
/// `edge::pubsub`).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    #[serde(default)]
    pub name: Option<String>,
    /// `rest` (the default, left out when serialised), `jsonrpc` or `pubsub`.
    #[serde(rename = "type", default, skip_serializing_if = "ChannelType::is_rest")]
    pub channel_type: ChannelType,
    pub url_path: String,
    /// Allowed methods; empty = any. A JSON-RPC channel takes POST only.
    #[serde(default)]
    pub methods: Vec<String>,
    /// The service a REST channel runs; a JSON-RPC channel has none (the request names it),
    /// nor has a pubsub channel.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    #[serde(default = "default_format")]
    pub data_format: DataFormat,
    /// The security definition callers must pass (see `edge::gate`); none = open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<String>,
    /// Client addresses allowed to call (CIDRs or addresses, IPv4 and IPv6); empty = any.
    /// The client is the peer, or for trusted proxies the address `X-Forwarded-For` gives.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_from: Vec<String>,
    /// A token-bucket limit for the channel, per server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// JSON-RPC only: the services (`method` names) the channel may call; empty = any
    /// deployed service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// WebSocket only: the channel's settings (none: every default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket: Option<WsSettings>,
    /// REST only: whether path and query parameters or the body win when both
    /// carry a SimpleIO element of the same name (Zato's channel setting); none: the
    /// service's default (Zato-style services: parameters; Oxbus services: the body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params_priority: Option<ParamsPriority>,
}

/// A channel's `params_priority` (Zato's values).
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq)]
pub enum ParamsPriority {
    #[serde(rename = "channel-params-over-msg")]
    ChannelParamsOverMsg,
    #[serde(rename = "msg-over-channel-params")]
    MsgOverChannelParams,
}

impl ParamsPriority {
    /// The name in settings and in the IPC `params_priority` field.
    pub fn as_str(self) -> &'static str {
        match self {
            ParamsPriority::ChannelParamsOverMsg => "channel-params-over-msg",
            ParamsPriority::MsgOverChannelParams => "msg-over-channel-params",
        }
    }
}

/// `requests` per `per_s` seconds, bursts of up to `burst` (default `requests`); per server.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub requests: u32,
    #[serde(default = "one")]
    pub per_s: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

fn one() -> u32 {
    1
}

/// What kind of channel a `[[channels]]` entry is.
#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ChannelType {
    /// A URL path (and methods) bound to one service.
    #[default]
    Rest,
    /// JSON-RPC 2.0 over HTTP POST (`edge::jsonrpc`).
    JsonRpc,
    /// The pub/sub REST API (`edge::pubsub`, docs/PUBSUB.md) under the channel's
    /// `url_path`, which is a prefix: it answers every path below it and runs no service.
    Pubsub,
    /// WebSocket clients (`wsx`, docs/WEBSOCKET.md): a GET upgrade on the channel's path;
    /// each client message is a call of its service.
    Websocket,
}

impl ChannelType {
    /// The name in settings, the store and the IPC `channel` field.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelType::Rest => "rest",
            ChannelType::JsonRpc => "jsonrpc",
            ChannelType::Pubsub => "pubsub",
            ChannelType::Websocket => "websocket",
        }
    }

    fn is_rest(&self) -> bool {
        *self == ChannelType::Rest
    }
}

fn default_format() -> DataFormat {
    DataFormat::Json
}

/// How a channel's request body is handed to the service.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// Parsed as JSON into `self.request.payload`; malformed JSON is a 400.
    Json,
    /// Raw bytes in `self.request.raw`.
    Raw,
}

impl DataFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DataFormat::Json => "json",
            DataFormat::Raw => "raw",
        }
    }
}

impl RateLimit {
    pub fn validate(&self) -> Result<(), RateLimitError> {
        if self.requests == 0 || self.per_s == 0 || self.burst == Some(0) {
            return Err(RateLimitError);
        }
        Ok(())
    }

    /// Tokens added per second.
    pub fn rate_per_s(&self) -> f64 {
        self.requests as f64 / self.per_s as f64
    }

    /// The most tokens a bucket holds.
    pub fn capacity(&self) -> f64 {
        self.burst.unwrap_or(self.requests) as f64
    }
}

/// One segment of a channel's URL path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Param(String),
    /// `{name:path}`, the last segment only: the rest of the path, slashes included
    /// (Starlette's spelling).
    Rest(String),
}

/// The one converter a path parameter may name: `{name:path}`, a catch-all.
pub const REST_CONVERTER: &str = "path";

/// A checked channel as the routing table holds it: its parsed path, and the channel itself
/// (a JSON-RPC channel as a POST-only channel of its one path).
#[derive(Debug)]
pub struct Routed {
    pub segments: Vec<Segment>,
    pub channel: Channel,
}

fn invalid(path: &str, message: impl Into<String>) -> ChannelError {
    ChannelError {
        key: "channels.url_path".into(),
        value: path.into(),
        message: message.into(),
    }
}

/// Parses a URL path of `/`-separated literal and `{param}` segments; the last segment may
/// be a catch-all `{name:path}`, which takes the rest of the path, slashes included.
pub fn parse_path(path: &str) -> Result<Vec<Segment>, ChannelError> {
    if !path.starts_with('/') {
        return Err(invalid(path, "must start with /"));
    }
    let mut seen = Vec::new();
    let segs: Vec<&str> = path[1..].split('/').collect();
    let last = segs.len() - 1;
    segs.iter()
        .enumerate()
        .map(|(i, seg)| {
            if let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                let (name, converter) = match inner.split_once(':') {
                    Some((name, conv)) => (name, Some(conv)),
                    None => (inner, None),
                };
                if name.is_empty()
                    || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    || name.starts_with(|c: char| c.is_ascii_digit())
                {
                    return Err(invalid(path, format!("bad parameter name {{{name}}}")));
                }
                if seen.contains(&name) {
                    return Err(invalid(path, format!("parameter {{{name}}} appears twice")));
                }
                seen.push(name);
                match converter {
                    None => Ok(Segment::Param(name.to_owned())),
                    Some(REST_CONVERTER) if i == last => Ok(Segment::Rest(name.to_owned())),
                    Some(REST_CONVERTER) => Err(invalid(
                        path,
                        format!(
                            "{{{inner}}} takes the rest of the path: it must be the last segment"
                        ),
                    )),
                    Some(other) => Err(invalid(
                        path,
                        format!(
                            "{{{inner}}}: unknown converter {other:?}; a parameter is {{{name}}} \
                             (one segment) or {{{name}:path}} (the rest of the path, as the \
                             last segment)"
                        ),
                    )),
                }
            } else if seg.contains(['{', '}']) {
                Err(invalid(
                    path,
                    format!("segment {seg:?}: a parameter must be a whole segment"),
                ))
            } else {
                Ok(Segment::Literal((*seg).to_owned()))
            }
        })
        .collect()
}

fn methods_overlap(a: &Channel, b: &Channel) -> bool {
    a.methods.is_empty() || b.methods.is_empty() || a.methods.iter().any(|m| b.methods.contains(m))
}

/// Checks a JSON-RPC channel's settings and returns it as the router should hold it: a
/// POST-only channel of one static path.
pub fn routed_channel(c: &Channel) -> Result<Channel, ChannelError> {
    let bad = |key: &str, value: String, message: &str| ChannelError {
        key: key.into(),
        value,
        message: message.into(),
    };
    if c.url_path.contains(['{', '}']) {
        return Err(bad(
            "channels.url_path",
            c.url_path.clone(),
            "a JSON-RPC channel has one URL: no {parameters}",
        ));
    }
    if !c.service.is_empty() {
        return Err(bad(
            "channels.service",
            c.service.clone(),
            "a JSON-RPC channel runs the service each request names; use services = [...] to restrict which",
        ));
    }
    if !(c.methods.is_empty() || c.methods == ["POST"]) {
        return Err(bad(
            "channels.methods",
            format!("{:?}", c.methods),
            "a JSON-RPC channel takes POST only",
        ));
    }
    if c.data_format != DataFormat::Json {
        return Err(bad(
            "channels.data_format",
            c.data_format.as_str().into(),
            "a JSON-RPC channel is JSON",
        ));
    }
    if let Some(s) = c.services.iter().find(|s| s.trim().is_empty()) {
        return Err(bad(
            "channels.services",
            format!("{s:?}"),
            "service names must not be empty",
        ));
    }
    Ok(Channel {
        methods: vec!["POST".into()],
        ..c.clone()
    })
}

/// The methods the pub/sub REST API answers; a pubsub channel's `methods` may name some of
/// them (none: all).
pub const PUBSUB_METHODS: [&str; 3] = ["POST", "PATCH", "DELETE"];

/// Checks a pubsub channel's settings: one static URL path (a prefix, not `/` itself), no
/// service, methods among [`PUBSUB_METHODS`], JSON.
pub fn pubsub_channel(c: &Channel) -> Result<(), ChannelError> {
    let bad = |key: &str, value: String, message: &str| ChannelError {
        key: key.into(),
        value,
        message: message.into(),
    };
    if c.url_path.contains(['{', '}']) {
        return Err(bad(
            "channels.url_path",
            c.url_path.clone(),
            "a pubsub channel's url_path is a prefix: no {parameters}",
        ));
    }
    if c.url_path == "/" || c.url_path.ends_with('/') {
        return Err(bad(
            "channels.url_path",
            c.url_path.clone(),
            "a pubsub channel's url_path must name a prefix such as /pubsub, without a trailing /",
        ));
    }
    if !c.service.is_empty() {
        return Err(bad(
            "channels.service",
            c.service.clone(),
            "a pubsub channel runs no service (it answers the pub/sub REST API itself)",
        ));
    }
    if !c.services.is_empty() {
        return Err(bad(
            "channels.services",
            format!("{:?}", c.services),
            "only a JSON-RPC channel has a services list",
        ));
    }
    if let Some(m) = c
        .methods
        .iter()
        .find(|m| !PUBSUB_METHODS.contains(&m.as_str()))
    {
        return Err(bad(
            "channels.methods",
            m.clone(),
            "a pubsub channel takes POST, PATCH and DELETE only",
        ));
    }
    if c.data_format != DataFormat::Json {
        return Err(bad(
            "channels.data_format",
            c.data_format.as_str().into(),
            "a pubsub channel reads JSON (or a raw body by its content type); data_format does not apply",
        ));
    }
    Ok(())
}

/// Checks a WebSocket channel and returns it as the router holds it: a GET-only channel
/// (the upgrade request) with its settings filled in.
pub fn websocket_channel(c: &Channel) -> Result<Channel, ChannelError> {
    let bad = |key: &str, value: String, message: &str| ChannelError {
        key: key.into(),
        value,
        message: message.into(),
    };
    if c.service.trim().is_empty() {
        return Err(bad(
            "channels.service",
            format!("{:?}", c.service),
            "a WebSocket channel names the service each client message is handed to",
        ));
    }
    let settings = c.websocket.clone().unwrap_or_default();
    let zato = settings.protocol == crate::model::websocket::WsProtocol::Zato;
    if !c.services.is_empty() && !zato {
        return Err(bad(
            "channels.services",
            format!("{:?}", c.services),
            "only a JSON-RPC channel, or a WebSocket channel with protocol = \"zato\" (the services its clients may name in data.service), has a services list",
        ));
    }
    if let Some(s) = c.services.iter().find(|s| s.trim().is_empty()) {
        return Err(bad(
            "channels.services",
            format!("{s:?}"),
            "a service name must not be empty",
        ));
    }
    if settings.first_message_auth && c.security.is_none() {
        return Err(bad(
            "channels.websocket.first_message_auth",
            "true".into(),
            "the channel names no security definition: there is no credential to send",
        ));
    }
    if !(c.methods.is_empty() || c.methods == ["GET"]) {
        return Err(bad(
            "channels.methods",
            format!("{:?}", c.methods),
            "a WebSocket channel is opened with GET (the upgrade request) only",
        ));
    }
    settings.validate()?;
    Ok(Channel {
        methods: vec!["GET".into()],
        websocket: Some(settings),
        ..c.clone()
    })
}

/// Whether every path below the prefix `prefix` could also match a channel of `segments`
/// (a literal or parameter segment for each of the prefix's, and at least as many).
/// A catch-all segment matches one or more segments, so it may cover a prefix longer than
/// the channel's path.
fn under_prefix(prefix: &[Segment], segments: &[Segment]) -> bool {
    let catch_all = matches!(segments.last(), Some(Segment::Rest(_)));
    (segments.len() >= prefix.len() || catch_all)
        && prefix.iter().zip(segments).all(|(p, s)| match (p, s) {
            (_, Segment::Param(_) | Segment::Rest(_)) => true,
            (Segment::Literal(a), Segment::Literal(b)) => a == b,
            (Segment::Param(_) | Segment::Rest(_), Segment::Literal(_)) => false,
        })
}

/// Checks `channels` (in the order configured) and returns them as they route: rejects
/// malformed paths, bad methods, misconfigured JSON-RPC channels and ambiguous duplicates.
pub fn routes(channels: &[Channel]) -> Result<Vec<Routed>, ChannelError> {
    let mut all: Vec<Routed> = Vec::new();
    for c in channels {
        // A JSON-RPC channel routes like a POST-only channel of one static path.
        let c = match c.channel_type {
            ChannelType::Rest => {
                if c.service.trim().is_empty() {
                    return Err(invalid(&c.url_path, "channel has an empty service name"));
                }
                if !c.services.is_empty() {
                    return Err(ChannelError {
                        key: "channels.services".into(),
                        value: format!("{:?}", c.services),
                        message: "only a JSON-RPC channel (type = \"jsonrpc\") has a services list; a REST channel names one service".into(),
                    });
                }
                c.clone()
            }
            ChannelType::JsonRpc => routed_channel(c)?,
            ChannelType::Pubsub => {
                pubsub_channel(c)?;
                c.clone()
            }
            ChannelType::Websocket => websocket_channel(c)?,
        };
        if c.websocket.is_some() && c.channel_type != ChannelType::Websocket {
            return Err(ChannelError {
                key: "channels.websocket".into(),
                value: c.url_path.clone(),
                message: "only a WebSocket channel (type = \"websocket\") has websocket settings"
                    .into(),
            });
        }
        if c.params_priority.is_some() && c.channel_type != ChannelType::Rest {
            return Err(ChannelError {
                key: "channels.params_priority".into(),
                value: c.url_path.clone(),
                message: "only a REST channel has params_priority (path and query parameters \
                          against the body)"
                    .into(),
            });
        }
        for m in &c.methods {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(ChannelError {
                    key: "channels.methods".into(),
                    value: m.clone(),
                    message: "methods are upper-case HTTP verbs such as GET or POST".into(),
                });
            }
        }
        let segments = parse_path(&c.url_path)?;
        let new = Routed {
            segments,
            channel: c,
        };
        if let Some(i) = clash(&all, &new) {
            let (other, c) = (&all[i].channel, &new.channel);
            let message = if c.channel_type == ChannelType::Pubsub
                || other.channel_type == ChannelType::Pubsub
            {
                let (prefix, under) = if c.channel_type == ChannelType::Pubsub {
                    (c, other)
                } else {
                    (other, c)
                };
                format!(
                    "{} is under the pubsub channel's prefix {}: its paths are the pub/sub API's",
                    under.url_path, prefix.url_path
                )
            } else {
                format!("duplicates the channel for service {}", other.service)
            };
            return Err(invalid(&c.url_path, message));
        }
        all.push(new);
    }
    Ok(all)
}

/// The index of the first of `routed` that would answer some of the requests `new`
/// answers: the same path shape (parameter names do not count: `/a/{x}` and `/a/{y}` match
/// the same requests) with overlapping methods, or a path under a pubsub channel's prefix
/// (a pubsub channel answers every path below it, whatever the methods).
pub fn clash(routed: &[Routed], new: &Routed) -> Option<usize> {
    let segments = &new.segments;
    let same_shape = |s: &[Segment]| {
        s.len() == segments.len()
            && s.iter().zip(segments).all(|(a, b)| match (a, b) {
                (Segment::Param(_), Segment::Param(_)) => true,
                (Segment::Rest(_), Segment::Rest(_)) => true,
                (a, b) => a == b,
            })
    };
    let pubsub = new.channel.channel_type == ChannelType::Pubsub;
    routed
        .iter()
        .position(|r| {
            (pubsub && under_prefix(segments, &r.segments))
                || (r.channel.channel_type == ChannelType::Pubsub
                    && under_prefix(&r.segments, segments))
        })
        .or_else(|| {
            routed
                .iter()
                .position(|r| same_shape(&r.segments) && methods_overlap(&r.channel, &new.channel))
        })
}

/// Which of `existing` (channels that route together) would answer some of the requests
/// `new` answers, if any: its index. None as well when `new` or `existing` cannot be
/// routed at all ([`routes`] says why).
pub fn conflicting(existing: &[Channel], new: &Channel) -> Option<usize> {
    let routed = routes(existing).ok()?;
    let new = routes(std::slice::from_ref(new)).ok()?.pop()?;
    // `routes` keeps one entry per channel, in order: an index of `routed` is one of
    // `existing`.
    clash(&routed, &new)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A JSON-RPC channel on `/rpc` with the `services` allow list (also the JSON-RPC edge's
    /// test fixture).
    pub(crate) fn rpc(services: &[&str]) -> Channel {
        Channel {
            name: None,
            channel_type: ChannelType::JsonRpc,
            url_path: "/rpc".into(),
            methods: vec![],
            service: String::new(),
            data_format: DataFormat::Json,
            security: None,
            allow_from: vec![],
            rate_limit: None,
            services: services.iter().map(|s| s.to_string()).collect(),
            websocket: None,
            params_priority: None,
        }
    }

    fn rest(path: &str, methods: &[&str], service: &str) -> Channel {
        Channel {
            channel_type: ChannelType::Rest,
            url_path: path.into(),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            service: service.into(),
            services: vec![],
            ..rpc(&[])
        }
    }

    #[test]
    fn conflicting_names_the_channel_that_answers_the_same_requests() {
        let existing = [
            rest("/a/{x}", &["GET"], "a.get"),
            rest("/b", &[], "b.any"),
            Channel {
                channel_type: ChannelType::Pubsub,
                url_path: "/ps".into(),
                service: String::new(),
                ..rest("/ps", &[], "")
            },
        ];
        // Parameter names do not count; methods must overlap; "any" overlaps everything.
        assert_eq!(
            conflicting(&existing, &rest("/a/{y}", &["GET", "PUT"], "s")),
            Some(0)
        );
        assert_eq!(conflicting(&existing, &rest("/a/{y}", &["PUT"], "s")), None);
        assert_eq!(
            conflicting(&existing, &rest("/b", &["DELETE"], "s")),
            Some(1)
        );
        // Under a pubsub channel's prefix.
        assert_eq!(
            conflicting(&existing, &rest("/ps/x", &["GET"], "s")),
            Some(2)
        );
        // A channel that cannot route at all is no conflict: `routes` says what is wrong.
        assert_eq!(conflicting(&existing, &rest("nope", &[], "s")), None);
        // `routes` reports the same clashes in settings-file words.
        let mut all = existing.to_vec();
        all.push(rest("/a/{z}", &[], "s"));
        assert!(
            routes(&all)
                .unwrap_err()
                .to_string()
                .contains("duplicates the channel for service a.get")
        );
    }

    #[test]
    fn jsonrpc_channel_settings_are_checked() {
        assert_eq!(routed_channel(&rpc(&[])).unwrap().methods, ["POST"]);
        let ok = Channel {
            methods: vec!["POST".into()],
            ..rpc(&["a"])
        };
        assert!(routed_channel(&ok).is_ok());
        for bad in [
            Channel {
                url_path: "/rpc/{x}".into(),
                ..rpc(&[])
            },
            Channel {
                service: "s".into(),
                ..rpc(&[])
            },
            Channel {
                methods: vec!["GET".into()],
                ..rpc(&[])
            },
            Channel {
                data_format: DataFormat::Raw,
                ..rpc(&[])
            },
            rpc(&[" "]),
        ] {
            assert!(routed_channel(&bad).is_err(), "{bad:?}");
        }
    }
}
