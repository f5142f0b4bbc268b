//! REST channel routing: a URL path (with `{param}` segments) and a method to a channel.
//!
//! Static paths are looked up in a hash map first, so the common case costs one hash; paths
//! with parameters are tried in the order they were configured. A path that matches with the
//! wrong method is told apart from one that matches nothing (405 vs 404).

use crate::config::{Channel, ChannelType, ConfigError};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

#[derive(Debug)]
struct Route {
    segments: Vec<Segment>,
    channel: Arc<Channel>,
}

/// The routing table.
#[derive(Debug, Default)]
pub struct Router {
    statics: HashMap<String, Vec<Arc<Channel>>>,
    dynamic: Vec<Route>,
    /// What each channel checks before its service runs (compiled with the routes, so a
    /// request sees one consistent table).
    pub gate: crate::edge::gate::Gate,
    /// Every channel in the order configured (server.toml's, then the store's): what the
    /// OpenAPI document describes.
    all: Vec<Arc<Channel>>,
}

/// The outcome of a lookup.
#[derive(Debug)]
pub enum Match {
    Found {
        channel: Arc<Channel>,
        params: Vec<(String, String)>,
    },
    /// The path exists but not for this method; the allowed methods.
    WrongMethod(Vec<String>),
    NotFound,
}

fn invalid(path: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: "channels.url_path".into(),
        value: path.into(),
        message: message.into(),
    }
}

fn parse_path(path: &str) -> Result<Vec<Segment>, ConfigError> {
    if !path.starts_with('/') {
        return Err(invalid(path, "must start with /"));
    }
    let mut seen = Vec::new();
    path[1..]
        .split('/')
        .map(|seg| {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
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
                Ok(Segment::Param(name.to_owned()))
            } else if seg.contains(['{', '}']) {
                Err(invalid(
                    path,
                    format!("segment {seg:?}: a parameter must be a whole segment"),
                ))
            } else {
                Ok(Segment::Literal(seg.to_owned()))
            }
        })
        .collect()
}

fn methods_overlap(a: &Channel, b: &Channel) -> bool {
    a.methods.is_empty() || b.methods.is_empty() || a.methods.iter().any(|m| b.methods.contains(m))
}

impl Router {
    /// Builds the table; rejects malformed paths, bad methods and ambiguous duplicates.
    /// The routing table with its gate: routes from `channels`, checks from their fields and
    /// the security definitions `defs` (see [`crate::edge::gate::Gate::build`]).
    pub fn with_gate(
        channels: &[Channel],
        defs: &[crate::edge::gate::SecurityDef],
        key: &crate::secrets::Key,
        previous: Option<&Router>,
    ) -> Result<Router, String> {
        let mut r = Router::new(channels).map_err(|e| e.to_string())?;
        r.gate = crate::edge::gate::Gate::build(&r.all, defs, key, previous.map(|p| &p.gate))?;
        Ok(r)
    }

    /// The routes alone (every channel's gate open); for validating a change.
    pub fn new(channels: &[Channel]) -> Result<Router, ConfigError> {
        let mut r = Router::default();
        let mut all: Vec<(Vec<Segment>, Arc<Channel>)> = Vec::new();
        for c in channels {
            // A JSON-RPC channel routes like a POST-only channel of one static path.
            let jsonrpc;
            let c = match c.channel_type {
                ChannelType::Rest => {
                    if c.service.trim().is_empty() {
                        return Err(invalid(&c.url_path, "channel has an empty service name"));
                    }
                    if !c.services.is_empty() {
                        return Err(ConfigError::Invalid {
                            key: "channels.services".into(),
                            value: format!("{:?}", c.services),
                            message: "only a JSON-RPC channel (type = \"jsonrpc\") has a services list; a REST channel names one service".into(),
                        });
                    }
                    c
                }
                ChannelType::JsonRpc => {
                    jsonrpc = crate::edge::jsonrpc::routed_channel(c)?;
                    &jsonrpc
                }
            };
            for m in &c.methods {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(ConfigError::Invalid {
                        key: "channels.methods".into(),
                        value: m.clone(),
                        message: "methods are upper-case HTTP verbs such as GET or POST".into(),
                    });
                }
            }
            let segments = parse_path(&c.url_path)?;
            // `/a/{x}` and `/a/{y}` match the same requests: parameter names do not count.
            let same_shape = |s: &[Segment]| {
                s.len() == segments.len()
                    && s.iter().zip(&segments).all(|(a, b)| match (a, b) {
                        (Segment::Param(_), Segment::Param(_)) => true,
                        (a, b) => a == b,
                    })
            };
            if let Some((_, other)) = all
                .iter()
                .find(|(s, o)| same_shape(s) && methods_overlap(o, c))
            {
                return Err(invalid(
                    &c.url_path,
                    format!("duplicates the channel for service {}", other.service),
                ));
            }
            let channel = Arc::new(c.clone());
            all.push((segments.clone(), channel.clone()));
            r.all.push(channel.clone());
            if segments.iter().all(|s| matches!(s, Segment::Literal(_))) {
                r.statics
                    .entry(c.url_path.clone())
                    .or_default()
                    .push(channel);
            } else {
                r.dynamic.push(Route { segments, channel });
            }
        }
        Ok(r)
    }

    /// Every channel of the table, in the order they were configured.
    pub fn channels(&self) -> &[Arc<Channel>] {
        &self.all
    }

    /// Finds the channel for `method` and `path` (the path without its query string).
    pub fn lookup(&self, method: &str, path: &str) -> Match {
        let mut allowed: Vec<String> = Vec::new();
        if let Some(list) = self.statics.get(path) {
            for c in list {
                if c.methods.is_empty() || c.methods.iter().any(|m| m == method) {
                    return Match::Found {
                        channel: c.clone(),
                        params: Vec::new(),
                    };
                }
                allowed.extend(c.methods.iter().cloned());
            }
        }
        if !self.dynamic.is_empty() && path.starts_with('/') {
            let parts: Vec<&str> = path[1..].split('/').collect();
            for route in &self.dynamic {
                if let Some(params) = match_segments(&route.segments, &parts) {
                    let c = &route.channel;
                    if c.methods.is_empty() || c.methods.iter().any(|m| m == method) {
                        return Match::Found {
                            channel: c.clone(),
                            params,
                        };
                    }
                    allowed.extend(c.methods.iter().cloned());
                }
            }
        }
        if allowed.is_empty() {
            Match::NotFound
        } else {
            allowed.sort();
            allowed.dedup();
            Match::WrongMethod(allowed)
        }
    }
}

fn match_segments(segments: &[Segment], parts: &[&str]) -> Option<Vec<(String, String)>> {
    if segments.len() != parts.len() {
        return None;
    }
    let mut params = Vec::new();
    for (seg, part) in segments.iter().zip(parts) {
        match seg {
            Segment::Literal(l) if l == part => {}
            Segment::Literal(_) => return None,
            Segment::Param(_) if part.is_empty() => return None,
            Segment::Param(name) => params.push((name.clone(), percent_decode(part))),
        }
    }
    Some(params)
}

/// Decodes `%XX` escapes of a path segment; invalid escapes and non-UTF-8 results are kept
/// as they came (lossily), since a path parameter is data, not a reason to fail a request.
pub(crate) fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_owned();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DataFormat;

    fn ch(path: &str, methods: &[&str], service: &str) -> Channel {
        Channel {
            name: None,
            url_path: path.into(),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            service: service.into(),
            data_format: DataFormat::Json,
            security: None,
            allow_from: Vec::new(),
            rate_limit: None,
            channel_type: ChannelType::Rest,
            services: Vec::new(),
        }
    }

    #[test]
    fn static_param_and_method_matching() {
        let r = Router::new(&[
            ch("/echo", &["POST"], "demo.echo"),
            ch("/customers/{id}", &["GET"], "crm.get"),
            ch("/customers/{id}", &["DELETE"], "crm.delete"),
            ch("/files/{id}/{name}", &[], "files.any"),
        ])
        .unwrap();
        assert!(matches!(r.lookup("POST", "/echo"), Match::Found { .. }));
        assert!(matches!(r.lookup("GET", "/echo"), Match::WrongMethod(m) if m == ["POST"]));
        assert!(matches!(r.lookup("GET", "/nope"), Match::NotFound));
        match r.lookup("DELETE", "/customers/42") {
            Match::Found { channel, params } => {
                assert_eq!(channel.service, "crm.delete");
                assert_eq!(params, vec![("id".to_string(), "42".to_string())]);
            }
            m => panic!("{m:?}"),
        }
        match r.lookup("PUT", "/files/7/a%20b") {
            Match::Found { params, .. } => assert_eq!(params[1].1, "a b"),
            m => panic!("{m:?}"),
        }
        assert!(matches!(r.lookup("GET", "/customers/"), Match::NotFound));
        assert!(
            matches!(r.lookup("PUT", "/customers/1"), Match::WrongMethod(m) if m == ["DELETE", "GET"])
        );
        let order: Vec<&str> = r.channels().iter().map(|c| c.service.as_str()).collect();
        assert_eq!(order, ["demo.echo", "crm.get", "crm.delete", "files.any"]);
    }

    #[test]
    fn bad_channels_are_refused() {
        assert!(Router::new(&[ch("/a/{}", &[], "s")]).is_err());
        assert!(Router::new(&[ch("/a/x{id}", &[], "s")]).is_err());
        assert!(Router::new(&[ch("/a/{id}/{id}", &[], "s")]).is_err());
        assert!(Router::new(&[ch("/a", &["get"], "s")]).is_err());
        assert!(Router::new(&[ch("/a", &["GET"], "s"), ch("/a", &["GET", "POST"], "t")]).is_err());
        assert!(Router::new(&[ch("/a", &["GET"], "s"), ch("/a", &["POST"], "t")]).is_ok());
        // Same shape, other parameter names: the second could never be reached.
        assert!(Router::new(&[ch("/a/{x}", &[], "s"), ch("/a/{y}", &[], "t")]).is_err());
        assert!(Router::new(&[ch("/a/{x}", &[], "s"), ch("/b/{x}", &[], "t")]).is_ok());
        assert!(Router::new(&[ch("/a/{x}", &[], "s"), ch("/a/lit", &[], "t")]).is_ok());
    }

    #[test]
    fn percent_decoding_is_lenient() {
        assert_eq!(percent_decode("a%20b"), "a b");
        assert_eq!(percent_decode("%zz%2"), "%zz%2");
        assert_eq!(percent_decode("caf%C3%A9"), "café");
    }
}
