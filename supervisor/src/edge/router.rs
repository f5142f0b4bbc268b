//! REST channel routing: a URL path (with `{param}` segments) and a method to a channel.
//!
//! Static paths are looked up in a hash map first, so the common case costs one hash; paths
//! with parameters are tried in the order they were configured, then paths ending in a
//! catch-all `{name:path}`, the most specific first, compared segment by segment from the
//! left: a literal before a `{param}` before the catch-all (a catch-all takes only what no other channel does, and `/files/{p:path}` what
//! `/{p:path}` or `/{a}/{b}/{p:path}` would also take). A path that matches with the
//! wrong method is told apart from one that matches nothing (405 vs 404). A pubsub channel's
//! path is a prefix: it takes every path below it (`model::channel::routes` made sure no other
//! channel routes one there).
//!
//! The table holds what `model::channel::routes` checked and the gate compiled with it; it
//! checks nothing itself and touches neither the store nor the workers.

use crate::edge::gate::{Gate, GateError};
use crate::metrics::http::ChannelHandles;
use crate::model::channel::{Channel, ChannelError, ChannelType, Segment};
use crate::model::security::SecurityDef;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug)]
struct Route {
    segments: Vec<Segment>,
    entry: Entry,
}

/// A channel of the table and its metric handles (`metrics::http`), built with the table so
/// that a request finds them with its channel.
#[derive(Debug, Clone)]
struct Entry {
    channel: Arc<Channel>,
    metrics: Arc<ChannelHandles>,
}

/// Why a routing table with its gate cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error(transparent)]
    Routes(#[from] ChannelError),
    #[error(transparent)]
    Gate(#[from] GateError),
}

/// The routing table.
#[derive(Debug, Default)]
pub struct Router {
    statics: HashMap<String, Vec<Entry>>,
    dynamic: Vec<Route>,
    /// Paths ending in a catch-all `{name:path}`, the most specific first (segment by
    /// segment: a literal before a `{param}` before the catch-all).
    catch_alls: Vec<Route>,
    /// Pubsub channels, by their path prefix.
    prefixes: Vec<Entry>,
    /// What each channel checks before its service runs (compiled with the routes, so a
    /// request sees one consistent table).
    pub gate: Gate,
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
        /// The channel's metric handles.
        metrics: Arc<ChannelHandles>,
    },
    /// The path exists but not for this method; the allowed methods.
    WrongMethod(Vec<String>),
    NotFound,
}

impl Router {
    /// The routing table with its gate: routes from `channels`, checks from their fields and
    /// the security definitions `defs` (see [`Gate::build`]).
    pub fn with_gate(
        channels: &[Channel],
        defs: &[SecurityDef],
        key: &crate::secrets::Key,
        previous: Option<&Router>,
    ) -> Result<Router, TableError> {
        let mut r = Router::new(channels)?;
        r.gate = Gate::build(&r.all, defs, key, previous.map(|p| &p.gate))?;
        Ok(r)
    }

    /// The routes alone (every channel's gate open); rejects what
    /// [`crate::model::channel::routes`] rejects.
    pub fn new(channels: &[Channel]) -> Result<Router, ChannelError> {
        let mut r = Router::default();
        for routed in crate::model::channel::routes(channels)? {
            let channel = Arc::new(routed.channel);
            r.all.push(channel.clone());
            let label = channel.name.as_deref().unwrap_or(&channel.url_path);
            let entry = Entry {
                metrics: Arc::new(ChannelHandles::new(label)),
                channel,
            };
            if entry.channel.channel_type == ChannelType::Pubsub {
                r.prefixes.push(entry);
            } else if routed
                .segments
                .iter()
                .all(|s| matches!(s, Segment::Literal(_)))
            {
                r.statics
                    .entry(entry.channel.url_path.clone())
                    .or_default()
                    .push(entry);
            } else if matches!(routed.segments.last(), Some(Segment::Rest(_))) {
                r.catch_alls.push(Route {
                    segments: routed.segments,
                    entry,
                });
            } else {
                r.dynamic.push(Route {
                    segments: routed.segments,
                    entry,
                });
            }
        }
        // The most specific first, segment by segment from the left: a literal before a
        // `{param}`, a `{param}` before the catch-all. So `/files/{p:path}` takes
        // `/files/x/y` ahead of `/{a}/{b}/{p:path}`, and `/files/{a}/{p:path}` ahead of
        // `/files/{p:path}`. Stable: catch-alls of one shape keep the order configured.
        r.catch_alls.sort_by_key(|route| {
            route
                .segments
                .iter()
                .map(|s| match s {
                    Segment::Literal(_) => 0u8,
                    Segment::Param(_) => 1,
                    Segment::Rest(_) => 2,
                })
                .collect::<Vec<u8>>()
        });
        Ok(r)
    }

    /// A WebSocket channel of the table by name (the URL path of an unnamed one) and the
    /// security definition its check uses: what a session compares with what it was let
    /// in by.
    pub fn websocket_channel(&self, name: &str) -> Option<(Arc<Channel>, Option<SecurityDef>)> {
        let c = self.all.iter().find(|c| {
            c.channel_type == ChannelType::Websocket
                && c.name.as_deref().unwrap_or(&c.url_path) == name
        })?;
        let def = c
            .security
            .as_deref()
            .and_then(|s| self.gate.verifier(s))
            .map(|(d, _)| d.clone());
        Some((c.clone(), def))
    }

    /// Every channel of the table, in the order they were configured.
    pub fn channels(&self) -> &[Arc<Channel>] {
        &self.all
    }

    /// Finds the channel for `method` and `path` (the path without its query string).
    pub fn lookup(&self, method: &str, path: &str) -> Match {
        let mut allowed: Vec<String> = Vec::new();
        for e in &self.prefixes {
            let c = &e.channel;
            let below = path
                .strip_prefix(c.url_path.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
            if below {
                if c.methods.is_empty() || c.methods.iter().any(|m| m == method) {
                    return Match::Found {
                        channel: c.clone(),
                        params: Vec::new(),
                        metrics: e.metrics.clone(),
                    };
                }
                allowed.extend(c.methods.iter().cloned());
            }
        }
        if let Some(list) = self.statics.get(path) {
            for e in list {
                let c = &e.channel;
                if c.methods.is_empty() || c.methods.iter().any(|m| m == method) {
                    return Match::Found {
                        channel: c.clone(),
                        params: Vec::new(),
                        metrics: e.metrics.clone(),
                    };
                }
                allowed.extend(c.methods.iter().cloned());
            }
        }
        if !(self.dynamic.is_empty() && self.catch_alls.is_empty()) && path.starts_with('/') {
            let parts: Vec<&str> = path[1..].split('/').collect();
            for route in self.dynamic.iter().chain(&self.catch_alls) {
                if let Some(params) = match_segments(&route.segments, &parts) {
                    let c = &route.entry.channel;
                    if c.methods.is_empty() || c.methods.iter().any(|m| m == method) {
                        return Match::Found {
                            channel: c.clone(),
                            params,
                            metrics: route.entry.metrics.clone(),
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

/// The path parameters of `parts` (the request path split at `/`) for a channel of
/// `segments`, or None when it does not match. A `{param}` takes one non-empty segment; a
/// catch-all `{name:path}` (last) takes the rest of the path, slashes included, and must
/// not be empty either. Both are percent-decoded (so a catch-all's `%2F` reads as `/`).
fn match_segments(segments: &[Segment], parts: &[&str]) -> Option<Vec<(String, String)>> {
    let catch_all = matches!(segments.last(), Some(Segment::Rest(_)));
    if segments.len() != parts.len() && !(catch_all && parts.len() > segments.len()) {
        return None;
    }
    let mut params = Vec::new();
    for (i, (seg, part)) in segments.iter().zip(parts).enumerate() {
        match seg {
            Segment::Literal(l) if l == part => {}
            Segment::Literal(_) => return None,
            Segment::Param(_) if part.is_empty() => return None,
            Segment::Param(name) => params.push((name.clone(), percent_decode(part))),
            Segment::Rest(name) => {
                let rest = parts[i..].join("/");
                if rest.is_empty() {
                    return None;
                }
                params.push((name.clone(), percent_decode(&rest)));
            }
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
    use crate::model::channel::DataFormat;

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
            websocket: None,
            params_priority: None,
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
            Match::Found {
                channel,
                params,
                metrics,
            } => {
                assert_eq!(channel.service, "crm.delete");
                // Unnamed: labelled by its URL pattern, never by the path requested.
                assert_eq!(metrics.label(), "/customers/{id}");
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
    fn catch_all_takes_the_rest_of_the_path() {
        let r = Router::new(&[
            ch("/files/{path:path}", &["GET"], "files.get"),
            ch("/files/{id}", &["GET"], "files.one"),
            ch("/files/index", &["GET"], "files.index"),
            ch("/{any:path}", &["GET"], "fallback"),
            ch("/files/{dir}/{rest:path}", &["PUT"], "files.put"),
        ])
        .unwrap();
        let found = |m: &str, p: &str| match r.lookup(m, p) {
            Match::Found {
                channel, params, ..
            } => (channel.service.clone(), params),
            other => panic!("{m} {p}: {other:?}"),
        };
        let one = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        // Static and one-segment routes win over a catch-all, whatever the order configured.
        assert_eq!(found("GET", "/files/index").0, "files.index");
        assert_eq!(
            found("GET", "/files/7"),
            ("files.one".into(), one("id", "7"))
        );
        assert_eq!(
            found("GET", "/files/a/b/c.txt"),
            ("files.get".into(), one("path", "a/b/c.txt"))
        );
        // Percent-decoded as a whole: an encoded slash reads as a slash; empty segments kept.
        assert_eq!(
            found("GET", "/files/a%2Fb//caf%C3%A9"),
            ("files.get".into(), one("path", "a/b//café"))
        );
        // The most specific catch-all first; the root one takes the rest.
        assert_eq!(
            found("GET", "/other/x"),
            ("fallback".into(), one("any", "other/x"))
        );
        assert_eq!(
            found("GET", "/files/"),
            ("fallback".into(), one("any", "files/"))
        );
        match r.lookup("PUT", "/files/d/x/y") {
            Match::Found { params, .. } => assert_eq!(
                params,
                [("dir".into(), "d".into()), ("rest".into(), "x/y".into())]
            ),
            other => panic!("{other:?}"),
        }
        // An empty rest does not match: `/files/d/` is no PUT channel's.
        assert!(matches!(r.lookup("PUT", "/files/d/"), Match::WrongMethod(m) if m == ["GET"]));
        assert!(matches!(r.lookup("GET", "/"), Match::NotFound));
    }

    #[test]
    fn catch_alls_most_specific_first() {
        let r = Router::new(&[
            ch("/{a}/{b}/{p:path}", &["GET"], "placeholders"),
            ch("/{a}/{b}/x/{p:path}", &["GET"], "placeholders-x"),
            ch("/files/{p:path}", &["GET"], "files"),
            ch("/{p:path}", &["GET"], "root"),
        ])
        .unwrap();
        let found = |path: &str| match r.lookup("GET", path) {
            Match::Found {
                channel, params, ..
            } => (channel.service.clone(), params),
            other => panic!("{path}: {other:?}"),
        };
        let one = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        // A literal beats a placeholder at the same place, however many segments follow.
        assert_eq!(found("/files/x/y"), ("files".into(), one("p", "x/y")));
        assert_eq!(found("/files/a/x/y"), ("files".into(), one("p", "a/x/y")));
        // Further right too; a placeholder beats the catch-all.
        assert_eq!(found("/c/d/x/y").0, "placeholders-x");
        assert_eq!(found("/c/d/e").0, "placeholders");
        assert_eq!(found("/c").0, "root");
    }

    #[test]
    fn catch_all_spellings_are_checked() {
        for (path, why) in [
            ("/a/{p:path}/b", "must be the last segment"),
            ("/a/{p:.*}", "unknown converter \".*\""),
            ("/a/{p:int}", "unknown converter \"int\""),
            ("/a/{:path}", "bad parameter name"),
            ("/a/{p}/{p:path}", "appears twice"),
        ] {
            let e = Router::new(&[ch(path, &[], "s")]).unwrap_err().to_string();
            assert!(e.contains(why), "{path}: {e}");
        }
        // Two catch-alls of one shape (names aside) are a duplicate; others are not.
        assert!(Router::new(&[ch("/a/{x:path}", &[], "s"), ch("/a/{y:path}", &[], "t")]).is_err());
        assert!(
            Router::new(&[
                ch("/a/{x:path}", &["GET"], "s"),
                ch("/a/{y:path}", &["PUT"], "t")
            ])
            .is_ok()
        );
        assert!(Router::new(&[ch("/a/{x:path}", &[], "s"), ch("/a/{y}", &[], "t")]).is_ok());
        // A catch-all may not reach under a pubsub prefix, however short it is.
        let ps = Channel {
            channel_type: ChannelType::Pubsub,
            ..ch("/zato/pubsub", &[], "")
        };
        assert!(Router::new(&[ch("/{p:path}", &[], "s"), ps.clone()]).is_err());
        assert!(Router::new(&[ps.clone(), ch("/zato/{p:path}", &[], "s")]).is_err());
        assert!(Router::new(&[ps, ch("/other/{p:path}", &[], "s")]).is_ok());
    }

    #[test]
    fn pubsub_channels_take_their_prefix() {
        let ps = |path: &str, methods: &[&str]| Channel {
            channel_type: ChannelType::Pubsub,
            ..ch(path, methods, "")
        };
        let r = Router::new(&[ch("/echo", &["POST"], "demo.echo"), ps("/pubsub", &[])]).unwrap();
        for (m, p) in [
            ("POST", "/pubsub/topic/orders/new"),
            ("PATCH", "/pubsub/topic/a"),
            ("DELETE", "/pubsub/subscribe/topic/a"),
            ("POST", "/pubsub"),
        ] {
            match r.lookup(m, p) {
                Match::Found { channel, .. } => assert_eq!(channel.url_path, "/pubsub", "{p}"),
                other => panic!("{m} {p}: {other:?}"),
            }
        }
        assert!(matches!(
            r.lookup("POST", "/pubsubx/topic/a"),
            Match::NotFound
        ));
        assert!(matches!(r.lookup("POST", "/echo"), Match::Found { .. }));
        let r = Router::new(&[ps("/zato/pubsub", &["POST"])]).unwrap();
        assert!(
            matches!(r.lookup("PATCH", "/zato/pubsub/topic/a"), Match::WrongMethod(m) if m == ["POST"])
        );
        // Nothing else may route a path under a pubsub prefix, in either order.
        assert!(Router::new(&[ps("/pubsub", &[]), ch("/pubsub/x", &[], "s")]).is_err());
        assert!(Router::new(&[ch("/{any}/x", &[], "s"), ps("/pubsub", &[])]).is_err());
        assert!(Router::new(&[ch("/pubsub", &["GET"], "s"), ps("/pubsub", &[])]).is_err());
        assert!(Router::new(&[ps("/a", &[]), ps("/a/b", &[])]).is_err());
        assert!(Router::new(&[ps("/a", &[]), ch("/ab", &[], "s"), ch("/", &[], "t")]).is_ok());
        // Its own settings.
        assert!(Router::new(&[ps("/a", &["GET"])]).is_err());
        assert!(Router::new(&[ps("/a/{x}", &[])]).is_err());
        assert!(Router::new(&[ps("/", &[])]).is_err());
        let with_service = Channel {
            service: "s".into(),
            ..ps("/a", &[])
        };
        assert!(Router::new(&[with_service]).is_err());
        let raw = Channel {
            data_format: DataFormat::Raw,
            ..ps("/a", &[])
        };
        assert!(Router::new(&[raw]).is_err());
        assert!(Router::new(&[ps("/a", &["POST", "PATCH", "DELETE"])]).is_ok());
    }

    #[test]
    fn percent_decoding_is_lenient() {
        assert_eq!(percent_decode("a%20b"), "a b");
        assert_eq!(percent_decode("%zz%2"), "%zz%2");
        assert_eq!(percent_decode("caf%C3%A9"), "café");
    }
}
