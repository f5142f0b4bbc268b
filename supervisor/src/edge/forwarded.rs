//! Who is really asking: the client address, scheme and port of a request that may have come
//! through reverse proxies (an AWS ALB, nginx, …), and the request id a proxy may assign.
//!
//! Nothing a client sends is believed unless the TCP peer is one of `http.trusted_proxies`:
//!
//! - From an untrusted peer the client is the peer itself, the scheme `http` and the port the
//!   listener's; `X-Request-Id` does not become the cid; and the forwarding headers
//!   ([`is_forwarding_header`]) and the trace context headers ([`is_trace_header`]) are not
//!   handed to the service, so that a service reading headers itself cannot be fooled
//!   either.
//! - From a trusted peer, `X-Forwarded-For` is walked from the right (the hop nearest to us)
//!   past every address that is itself a trusted proxy; the first one that is not is the
//!   client. If every hop is trusted, the leftmost is. An entry that is not an address stops
//!   the walk at the last good one (or the peer): what lies left of it cannot be vouched for.
//!   `X-Forwarded-Proto` (`http`/`https`) and `X-Forwarded-Port` are taken from the last value
//!   (the one the nearest proxy set), and a valid `X-Request-Id` becomes the cid. A valid
//!   W3C `traceparent` ([`traceparent`]) continues the proxy's trace, with its `tracestate`
//!   ([`tracestate`]); from an untrusted peer the request starts a trace of its own.
//!
//! The addresses compared and reported are canonical: an IPv4 peer of a dual-stack listener
//! (`::ffff:10.0.0.7`) is `10.0.0.7`, so IPv4 networks match it.

use crate::model::net::TrustedProxies;
use crate::trace::TraceParent;
use hyper::HeaderMap;
use hyper::header::HeaderName;
use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Port`.
pub static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `traceparent` (W3C trace context).
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate` (W3C trace context).
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The longest `X-Request-Id` taken as a cid.
pub const MAX_REQUEST_ID: usize = 64;

/// What the server believes about where a request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The client's address.
    pub addr: IpAddr,
    /// `"http"` or `"https"`.
    pub scheme: &'static str,
    /// The port the client connected to.
    pub port: u16,
}

/// The origin of a request from `peer` that arrived on a listener at `local_port`.
/// `peer_trusted` is `trusted.contains(peer)`, worked out once per connection.
pub fn origin(
    peer: IpAddr,
    peer_trusted: bool,
    local_port: u16,
    headers: &HeaderMap,
    trusted: &TrustedProxies,
) -> Origin {
    let peer = peer.to_canonical();
    if !peer_trusted {
        return Origin {
            addr: peer,
            scheme: "http",
            port: local_port,
        };
    }
    Origin {
        addr: client_addr(peer, headers, trusted),
        scheme: forwarded_proto(headers).unwrap_or("http"),
        port: forwarded_port(headers).unwrap_or(local_port),
    }
}

/// The client address behind a trusted `peer`: the `X-Forwarded-For` walk described in the
/// module documentation.
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let mut addr = peer.to_canonical();
    // Repeated headers form one list in order, so the last header holds the nearest hops.
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(value) = value.to_str() else {
            return addr;
        };
        for entry in value.rsplit(',') {
            let entry = entry.trim();
            if entry.is_empty() {
                // An empty list element (`a, , b`, a trailing comma) carries nothing.
                continue;
            }
            let Some(ip) = parse_hop(entry) else {
                return addr;
            };
            addr = ip;
            if !trusted.contains(ip) {
                return addr;
            }
        }
    }
    addr
}

/// One `X-Forwarded-For` entry: an address, or an address with a port (`203.0.113.7:41234`,
/// `[2001:db8::1]:41234`, as some proxies write them), canonicalised. `unknown`, obfuscated
/// identifiers and garbage are None.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = entry.parse::<SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    let inner = entry.strip_prefix('[')?.strip_suffix(']')?;
    inner
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .map(|ip| IpAddr::V6(ip).to_canonical())
}

/// The last value of the last `name` header (a list keeps its nearest proxy's value last).
fn last_value<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h str> {
    let value = headers.get_all(name).iter().next_back()?.to_str().ok()?;
    value.rsplit(',').map(str::trim).find(|v| !v.is_empty())
}

/// `X-Forwarded-Proto` when it is `http` or `https` (any case).
pub fn forwarded_proto(headers: &HeaderMap) -> Option<&'static str> {
    let v = last_value(headers, &X_FORWARDED_PROTO)?;
    if v.eq_ignore_ascii_case("https") {
        Some("https")
    } else if v.eq_ignore_ascii_case("http") {
        Some("http")
    } else {
        None
    }
}

/// `X-Forwarded-Port` when it is a port number (1–65535).
pub fn forwarded_port(headers: &HeaderMap) -> Option<u16> {
    let v = last_value(headers, &X_FORWARDED_PORT)?;
    if !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u16>().ok().filter(|p| *p != 0)
}

/// `X-Request-Id` when it can serve as a cid: 1–64 characters of `[A-Za-z0-9._:-]` (so it
/// is safe in logs and in a response header). The last one when repeated.
pub fn request_id(headers: &HeaderMap) -> Option<&str> {
    let v = headers
        .get_all(&X_REQUEST_ID)
        .iter()
        .next_back()?
        .to_str()
        .ok()?;
    let ok = !v.is_empty()
        && v.len() <= MAX_REQUEST_ID
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    ok.then_some(v)
}

/// The W3C trace context a trusted proxy sent: one `traceparent` header holding a valid
/// value ([`TraceParent::parse`]: version 00, or a later one read as version 00). None when there is none, when it is malformed
/// and when there are several (the specification makes that invalid): the request then
/// starts a new trace. Whether the peer is trusted is the caller's to check, as for
/// [`request_id`].
pub fn traceparent(headers: &HeaderMap) -> Option<TraceParent> {
    let mut values = headers.get_all(&TRACEPARENT).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    TraceParent::parse(value.as_bytes())
}

/// The `tracestate` that goes with a trusted proxy's `traceparent`: its headers joined into
/// one list (the specification allows several), when the whole is a value
/// [`crate::trace::valid_tracestate`] takes (at most 512 characters of printable ASCII);
/// otherwise none at all. Read only when [`traceparent`] gave a context.
pub fn tracestate(headers: &HeaderMap) -> Option<Cow<'_, str>> {
    let mut values = headers.get_all(&TRACESTATE).iter();
    let first = values.next()?;
    let joined: Cow<'_, [u8]> = match values.next() {
        None => Cow::Borrowed(first.as_bytes()),
        Some(second) => {
            let mut all = first.as_bytes().to_vec();
            for v in std::iter::once(second).chain(values) {
                if all.len() > crate::trace::MAX_TRACESTATE {
                    return None;
                }
                all.push(b',');
                all.extend_from_slice(v.as_bytes());
            }
            Cow::Owned(all)
        }
    };
    if !crate::trace::valid_tracestate(&joined) {
        return None;
    }
    // Printable ASCII (checked just above) is UTF-8.
    Some(match joined {
        Cow::Borrowed(b) => Cow::Borrowed(std::str::from_utf8(b).ok()?),
        Cow::Owned(v) => Cow::Owned(String::from_utf8(v).ok()?),
    })
}

/// The W3C trace context headers (`traceparent`, `tracestate`); a request from an untrusted
/// peer reaches the service without them, as without the forwarding headers: its service
/// sees the trace it runs in (`self.traceparent`), never one a client chose.
pub fn is_trace_header(name: &HeaderName) -> bool {
    name == TRACEPARENT || name == TRACESTATE
}

/// The headers a proxy uses to tell where a request came from; a request from an untrusted
/// peer reaches the service without them.
pub fn is_forwarding_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-forwarded-port"
            | "x-forwarded-host"
            | "forwarded"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn trusted(entries: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(entries).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn walk(peer: &str, xff: &[&str], t: &TrustedProxies) -> IpAddr {
        let pairs: Vec<(&str, &str)> = xff.iter().map(|v| ("x-forwarded-for", *v)).collect();
        client_addr(ip(peer), &headers(&pairs), t)
    }

    #[test]
    fn one_valid_traceparent_is_taken() {
        const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = traceparent(&headers(&[("traceparent", TP)])).expect("valid");
        assert_eq!(t.as_str(), TP);
        assert_eq!(traceparent(&headers(&[])), None);
        assert_eq!(traceparent(&headers(&[("traceparent", "00-xyz")])), None);
        // Two of them make the context invalid, even if both are well-formed.
        assert_eq!(
            traceparent(&headers(&[("traceparent", TP), ("traceparent", TP)])),
            None
        );
    }

    #[test]
    fn tracestate_is_joined_bounded_and_checked() {
        const TS: &str = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
        let ts = |pairs: &[(&str, &str)]| tracestate(&headers(pairs)).map(|c| c.into_owned());
        assert_eq!(ts(&[("tracestate", TS)]).as_deref(), Some(TS));
        assert!(matches!(
            tracestate(&headers(&[("tracestate", TS)])),
            Some(Cow::Borrowed(_))
        ));
        assert_eq!(ts(&[]), None);
        // Several headers are one list.
        assert_eq!(
            ts(&[("tracestate", "a=1"), ("tracestate", "b=2,c=3")]).as_deref(),
            Some("a=1,b=2,c=3")
        );
        // Longer than 512 characters: dropped whole, not cut.
        let long = format!("a={}", "x".repeat(511));
        assert_eq!(ts(&[("tracestate", &long)]), None);
        let half = format!("a={}", "x".repeat(300));
        assert_eq!(ts(&[("tracestate", &half), ("tracestate", &half)]), None);
        let many: Vec<(&str, &str)> = (0..300).map(|_| ("tracestate", "a=1")).collect();
        assert_eq!(ts(&many), None);
        assert_eq!(ts(&[("tracestate", "")]), None);
        let mut h = HeaderMap::new();
        h.append(&TRACESTATE, HeaderValue::from_bytes(b"a=\xe9").unwrap());
        assert_eq!(tracestate(&h), None);
    }

    #[test]
    fn trace_headers() {
        for name in ["traceparent", "tracestate"] {
            let name = HeaderName::from_static(name);
            assert!(is_trace_header(&name), "{name}");
            assert!(!is_forwarding_header(&name), "{name}");
        }
        for name in [
            "x-request-id",
            "x-forwarded-for",
            "traceresponse",
            "x-b3-traceid",
        ] {
            assert!(!is_trace_header(&HeaderName::from_static(name)), "{name}");
        }
    }

    #[test]
    fn xff_walk_takes_the_first_untrusted_hop_from_the_right() {
        let t = trusted(&["10.0.0.0/8", "127.0.0.1/32"]);
        // The ALB (10.0.1.5) appended the client it saw.
        assert_eq!(walk("10.0.1.5", &["6.6.6.6"], &t), ip("6.6.6.6"));
        // A client's own forged entries left of it are not reached.
        assert_eq!(
            walk("10.0.1.5", &["1.1.1.1, 2.2.2.2, 6.6.6.6"], &t),
            ip("6.6.6.6")
        );
        // Trusted hops are skipped.
        assert_eq!(
            walk("127.0.0.1", &["6.6.6.6, 10.0.0.9, 127.0.0.1"], &t),
            ip("6.6.6.6")
        );
        // All trusted: the leftmost.
        assert_eq!(
            walk("127.0.0.1", &["10.0.0.3, 10.0.0.4"], &t),
            ip("10.0.0.3")
        );
        // No header: the peer.
        assert_eq!(walk("10.0.1.5", &[], &t), ip("10.0.1.5"));
    }

    #[test]
    fn xff_walk_spans_repeated_headers_in_order() {
        let t = trusted(&["10.0.0.0/8"]);
        // One list: "6.6.6.6, 10.0.0.2", "10.0.0.3": the last header is nearest.
        assert_eq!(
            walk("10.0.0.1", &["7.7.7.7, 6.6.6.6, 10.0.0.2", "10.0.0.3"], &t),
            ip("6.6.6.6")
        );
        assert_eq!(walk("10.0.0.1", &["6.6.6.6", "8.8.8.8"], &t), ip("8.8.8.8"));
    }

    #[test]
    fn unparsable_entries_stop_the_walk_at_the_last_good_hop() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(walk("10.0.0.1", &["6.6.6.6, unknown"], &t), ip("10.0.0.1"));
        assert_eq!(
            walk("10.0.0.1", &["6.6.6.6, garbage, 10.0.0.7"], &t),
            ip("10.0.0.7")
        );
        assert_eq!(
            walk("10.0.0.1", &["6.6.6.6, 10.0.0.300"], &t),
            ip("10.0.0.1")
        );
        // Empty list elements are no entries at all.
        assert_eq!(
            walk("10.0.0.1", &["6.6.6.6, , 10.0.0.7,"], &t),
            ip("6.6.6.6")
        );
        assert_eq!(walk("10.0.0.1", &[""], &t), ip("10.0.0.1"));
        // A header that is not UTF-8 is not read.
        let mut h = HeaderMap::new();
        h.append(
            X_FORWARDED_FOR.clone(),
            HeaderValue::from_bytes(b"6.6.6.6, \xff").unwrap(),
        );
        assert_eq!(client_addr(ip("10.0.0.1"), &h, &t), ip("10.0.0.1"));
    }

    #[test]
    fn xff_entries_with_ports_brackets_and_mapped_addresses() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            walk("10.0.0.1", &["203.0.113.7:41234"], &t),
            ip("203.0.113.7")
        );
        assert_eq!(
            walk("10.0.0.1", &["[2001:db8::7]:41234"], &t),
            ip("2001:db8::7")
        );
        assert_eq!(walk("10.0.0.1", &["[2001:db8::7]"], &t), ip("2001:db8::7"));
        assert_eq!(
            walk("10.0.0.1", &["2001:DB8::21f:5bff:febf:ce22:8a2e"], &t),
            ip("2001:db8:0:21f:5bff:febf:ce22:8a2e")
        );
        // A mapped trusted hop is skipped like its IPv4 form; a mapped client is reported
        // as IPv4.
        assert_eq!(
            walk("10.0.0.1", &["::ffff:6.6.6.6, ::ffff:10.0.0.2"], &t),
            ip("6.6.6.6")
        );
    }

    #[test]
    fn untrusted_peers_are_believed_about_nothing() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-port", "443"),
        ]);
        let peer = ip("::ffff:127.0.0.1");
        let o = origin(peer, t.contains(peer), 17010, &h, &t);
        assert_eq!(
            o,
            Origin {
                addr: ip("127.0.0.1"),
                scheme: "http",
                port: 17010
            }
        );
        let o = origin(ip("10.0.0.1"), true, 17010, &h, &t);
        assert_eq!(
            o,
            Origin {
                addr: ip("6.6.6.6"),
                scheme: "https",
                port: 443
            }
        );
    }

    #[test]
    fn proto_and_port_take_the_nearest_valid_value() {
        let proto = |v: &[&str]| {
            let pairs: Vec<(&str, &str)> = v.iter().map(|v| ("x-forwarded-proto", *v)).collect();
            forwarded_proto(&headers(&pairs))
        };
        assert_eq!(proto(&["https"]), Some("https"));
        assert_eq!(proto(&["HTTPS"]), Some("https"));
        assert_eq!(proto(&["http"]), Some("http"));
        assert_eq!(proto(&["https, http"]), Some("http"));
        assert_eq!(proto(&["http", "https"]), Some("https"));
        assert_eq!(proto(&["wss"]), None);
        assert_eq!(proto(&[]), None);
        let port = |v: &str| forwarded_port(&headers(&[("x-forwarded-port", v)]));
        assert_eq!(port("443"), Some(443));
        assert_eq!(port("80, 8443"), Some(8443));
        assert_eq!(port("0"), None);
        assert_eq!(port("65536"), None);
        assert_eq!(port("+443"), None);
        assert_eq!(port("https"), None);
    }

    #[test]
    fn request_ids_are_checked() {
        let id = |v: &str| request_id(&headers(&[("x-request-id", v)])).map(str::to_owned);
        assert_eq!(id("req-1.2_3:4"), Some("req-1.2_3:4".into()));
        assert_eq!(id(&"a".repeat(64)), Some("a".repeat(64)));
        assert_eq!(id(&"a".repeat(65)), None);
        assert_eq!(id(""), None);
        assert_eq!(id("a b"), None);
        assert_eq!(id("a/b"), None);
        assert_eq!(id("Root=1-5759e988"), None);
        assert_eq!(request_id(&HeaderMap::new()), None);
    }

    #[test]
    fn forwarding_headers() {
        for name in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-port",
            "x-forwarded-host",
            "forwarded",
        ] {
            assert!(
                is_forwarding_header(&HeaderName::from_static(name)),
                "{name}"
            );
        }
        for name in ["x-request-id", "host", "x-forwarded-prefix", "content-type"] {
            assert!(
                !is_forwarding_header(&HeaderName::from_static(name)),
                "{name}"
            );
        }
    }
}
