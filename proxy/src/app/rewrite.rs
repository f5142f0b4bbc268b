//! The heads as the other side gets them: the request head for the server (hop-by-hop
//! headers dropped, a carried WebSocket upgrade going with `Upgrade: websocket` and
//! `Connection: upgrade`, `X-Forwarded-*` and the request id set, a client's trace context
//! dropped unless `proxy.pass_trace_context`) and the answer head for the client (framing
//! checked, `Connection: close` when the client connection ends; a `101` that switches a
//! carried upgrade keeps its `Upgrade` and gets `Connection: upgrade`, as the request did).
//! Pure transformations of parsed heads into bytes: no I/O here.

use std::sync::atomic::Ordering;

use super::client::{Peer, ReqInfo, Stop};
use super::{Balancer, RespInfo};
use crate::h1::{self, BodyKind, ConnectionHeader};

fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The W3C trace context headers, which a client may not set through the proxy (unless
/// `proxy.pass_trace_context`).
fn is_trace_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("traceparent") || name.eq_ignore_ascii_case("tracestate")
}

/// A request id, kept inline.
#[derive(Clone, Copy)]
pub(super) struct ReqId {
    b: [u8; 64],
    len: u8,
}

impl ReqId {
    fn from(v: &[u8]) -> Self {
        let mut b = [0u8; 64];
        b[..v.len()].copy_from_slice(v);
        ReqId {
            b,
            len: v.len() as u8,
        }
    }

    pub(super) fn bytes(&self) -> &[u8] {
        &self.b[..self.len as usize]
    }
}

impl Balancer {
    /// The request head as the server gets it: hop-by-hop headers dropped (a carried
    /// upgrade goes with `Upgrade: websocket` and `Connection: upgrade` instead),
    /// `X-Forwarded-For` appended to, `-Proto`/`-Port` and the request id set. `c`: the
    /// client it came from.
    pub(super) fn rewrite_request(
        &self,
        r: &httparse::Request,
        c: &Peer,
        out: &mut Vec<u8>,
    ) -> Result<ReqInfo, Stop> {
        let method = r.method.unwrap_or("GET");
        let path = r.path.unwrap_or("/");
        let http10 = r.version == Some(0);
        if method == "CONNECT" {
            return Err(Stop::Answer(405, "CONNECT is not supported".into()));
        }
        let headers: &[httparse::Header] = r.headers;
        let conn = ConnectionHeader::of(headers);
        let framed = h1::framing(headers, true, http10).map_err(|b| {
            self.totals.bad_requests.fetch_add(1, Ordering::Relaxed);
            Stop::Answer(400, b.0.to_string())
        })?;
        let upgrade = conn.carries_upgrade(http10, framed.kind);
        out.clear();
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(if http10 {
            b" HTTP/1.0\r\n"
        } else {
            b" HTTP/1.1\r\n"
        });
        let mut id = None;
        let mut xff = false;
        let mut expect_continue = false;
        for h in headers {
            let name = h.name;
            if name.eq_ignore_ascii_case("te") {
                // Hop-by-hop, but "trailers" holds on the next hop too: trailers are
                // forwarded as they come.
                if h1::has_token(h.value, b"trailers") {
                    out.extend_from_slice(b"te: trailers\r\n");
                }
                continue;
            }
            if conn.drops(name) {
                continue;
            }
            if name.eq_ignore_ascii_case("x-forwarded-for") {
                xff = true;
                continue;
            }
            if name.eq_ignore_ascii_case("x-forwarded-proto")
                || name.eq_ignore_ascii_case("x-forwarded-port")
            {
                continue;
            }
            if name.eq_ignore_ascii_case("x-request-id") {
                if id.is_none() && valid_request_id(h.value) {
                    id = Some(ReqId::from(h.value));
                }
                continue;
            }
            if !self.limits.pass_trace_context && is_trace_header(name) {
                // Servers believe this proxy's trace context: a client's own is not passed
                // on, so no client chooses the trace its request joins.
                continue;
            }
            // An HTTP/1.0 client's Expect is ignored (RFC 9110, 10.1.1): it does not wait for
            // "100 Continue", and must not be sent one.
            if !http10
                && name.eq_ignore_ascii_case("expect")
                && h.value.eq_ignore_ascii_case(b"100-continue")
            {
                expect_continue = true;
            }
            h1::put_header(out, name.as_bytes(), h.value);
        }
        if upgrade {
            // Only the switch, and only to the one protocol carried: other protocols the
            // client offered beside it are not for the server to choose (the proxy would not
            // follow their 101), and what else its `Connection` named stays on this hop.
            out.extend_from_slice(b"upgrade: websocket\r\nconnection: upgrade\r\n");
        }
        // Appended, as a proxy does: servers that trust this proxy read the rightmost
        // address they do not trust, so what a client wrote itself is never believed.
        if xff || c.ip.is_some() {
            out.extend_from_slice(b"x-forwarded-for: ");
            let mut sep = false;
            for h in headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
            {
                if sep {
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(h.value);
                sep = true;
            }
            if let Some(ip) = &c.ip {
                if sep {
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(ip.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
        h1::put_header(out, b"x-forwarded-proto", c.proto.as_bytes());
        if let Some(port) = &c.port {
            h1::put_header(out, b"x-forwarded-port", port.as_bytes());
        }
        let id = id.unwrap_or_else(|| {
            use std::io::Write as _;
            let mut buf = [0u8; 64];
            let mut w = &mut buf[..];
            let n = self.id_counter.fetch_add(1, Ordering::Relaxed);
            let _ = write!(w, "{}-{n:x}", self.id_prefix);
            let len = 64 - w.len();
            ReqId::from(&buf[..len])
        });
        h1::put_header(out, b"x-request-id", id.bytes());
        out.extend_from_slice(b"\r\n");
        Ok(ReqInfo {
            body: framed.kind,
            head_only: method == "HEAD",
            idempotent: h1::idempotent(method),
            // An upgrade's connection carries no further request: switched, it is a tunnel;
            // refused, what the client sent behind its head may be the new protocol's bytes,
            // which must never be read as a request.
            keep_alive: !http10 && !conn.close && !upgrade,
            http10,
            upgrade,
            expect_continue,
            id,
        })
    }

    /// The answer head as the client gets it.
    pub(super) fn rewrite_response(
        &self,
        r: &httparse::Response,
        req: &ReqInfo,
        closing: bool,
        out: &mut Vec<u8>,
    ) -> Result<RespInfo, h1::Bad> {
        let status = r.code.unwrap_or(0);
        if !(100..=599).contains(&status) {
            return Err(h1::Bad("a status outside 100-599"));
        }
        let headers: &[httparse::Header] = r.headers;
        let conn = ConnectionHeader::of(headers);
        let framed = h1::framing(headers, false, r.version == Some(0))?;
        let informational = (100..200).contains(&status);
        // The switch of a carried upgrade, if the 101 is the one asked for (HTTP/1.1,
        // `Connection: upgrade`, `Upgrade: websocket`): any other 101 is answered 502 by the
        // data path. Its head is rebuilt as for any answer (hop-by-hop headers, and those
        // its `Connection` names, dropped), but it keeps its `Upgrade` and gets
        // `Connection: upgrade` of the proxy's own, as the request did, and the request id.
        let switching =
            status == 101 && req.upgrade && conn.switches_to_websocket(r.version == Some(1));
        let body = if req.head_only || informational || status == 204 || status == 304 {
            BodyKind::None
        } else {
            framed.kind
        };
        // A server that was asked to switch and did not is not asked for more: its
        // connection is not pooled (nor is one that switched: it becomes the tunnel).
        let up_keep =
            r.version == Some(1) && !conn.close && body != BodyKind::UntilClose && !req.upgrade;
        let client_keep = req.keep_alive
            && !closing
            && body != BodyKind::UntilClose
            && !self.draining.load(Ordering::Relaxed);
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        h1::put_status(out, status);
        match r.reason {
            Some(reason) if !reason.is_empty() => out.extend_from_slice(reason.as_bytes()),
            _ => out.extend_from_slice(h1::reason(status).as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
        let mut has_id = false;
        for h in headers {
            let switch_header = switching && h.name.eq_ignore_ascii_case("upgrade");
            if (!switch_header && conn.drops(h.name))
                || (framed.drop_length && h.name.eq_ignore_ascii_case("content-length"))
            {
                continue;
            }
            if h.name.eq_ignore_ascii_case("x-request-id") {
                has_id = true;
            }
            h1::put_header(out, h.name.as_bytes(), h.value);
        }
        if switching {
            out.extend_from_slice(b"connection: upgrade\r\n");
        }
        if (!informational || switching) && !has_id {
            h1::put_header(out, b"x-request-id", req.id.bytes());
        }
        if !informational && !client_keep {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        Ok(RespInfo {
            status,
            switching,
            body,
            up_keep,
            client_keep,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::{Limits, Totals};
    use crate::config::Balance;
    use crate::upstream::Registry;
    use pingora_load_balancing::LoadBalancer;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64};
    use std::time::Duration;

    fn balancer() -> Balancer {
        let ms = Duration::from_millis;
        Balancer {
            lb: Arc::new(LoadBalancer::try_from_iter(["127.0.0.1:1"]).unwrap()),
            registry: Arc::new(Registry::new(Balance::RoundRobin, ms(5000))),
            limits: Limits {
                connect_timeout: ms(1000),
                read_timeout: ms(1000),
                header_timeout: ms(1000),
                expect_continue_timeout: ms(1000),
                keepalive_timeout: ms(1000),
                tunnel_idle_timeout: ms(1000),
                max_header_bytes: 16 * 1024,
                retries: 2,
                first_check_wait: ms(1000),
                pass_trace_context: false,
            },
            totals: Arc::new(Totals::default()),
            draining: Arc::new(AtomicBool::new(false)),
            id_prefix: "t".into(),
            id_counter: AtomicU64::new(0),
        }
    }

    /// The values of a head's `name` headers.
    fn values(head: &str, name: &str) -> Vec<String> {
        head.split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }

    /// A request head as the server gets it.
    fn forward(b: &Balancer, req: &str) -> (String, ReqInfo) {
        let mut hs = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Request::new(&mut hs);
        assert!(r.parse(req.as_bytes()).unwrap().is_complete());
        let peer = Peer {
            ip: Some("10.1.2.3".into()),
            proto: "http",
            port: Some("8080".into()),
        };
        let mut out = Vec::new();
        let Ok(info) = b.rewrite_request(&r, &peer, &mut out) else {
            panic!("refused: {req:?}");
        };
        (String::from_utf8(out).unwrap(), info)
    }

    /// An answer head as the client gets it.
    fn answer(b: &Balancer, req: &ReqInfo, resp: &str, closing: bool) -> (String, RespInfo) {
        let mut hs = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut hs);
        assert!(r.parse(resp.as_bytes()).unwrap().is_complete());
        let mut out = Vec::new();
        let info = b.rewrite_response(&r, req, closing, &mut out).unwrap();
        (String::from_utf8(out).unwrap(), info)
    }

    const WS: &str = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
        Connection: keep-alive, Upgrade, X-Mine\r\nX-Mine: 1\r\nKeep-Alive: timeout=5\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Forwarded-For: 192.0.2.1\r\n\r\n";

    #[test]
    fn an_upgrade_goes_to_the_server_with_upgrade_and_connection_upgrade_only() {
        let b = balancer();
        let (head, info) = forward(&b, WS);
        assert!(info.upgrade, "{head}");
        assert!(!info.keep_alive, "no request follows an upgrade's");
        assert_eq!(values(&head, "upgrade"), ["websocket"], "{head}");
        assert_eq!(values(&head, "connection"), ["upgrade"], "{head}");
        // The other hop-by-hop headers are dropped as for any request, and the forwarding
        // headers set.
        assert!(values(&head, "x-mine").is_empty(), "{head}");
        assert!(values(&head, "keep-alive").is_empty(), "{head}");
        assert_eq!(
            values(&head, "sec-websocket-key"),
            ["dGhlIHNhbXBsZSBub25jZQ=="]
        );
        assert_eq!(values(&head, "x-forwarded-for"), ["192.0.2.1, 10.1.2.3"]);
        assert_eq!(values(&head, "x-forwarded-proto"), ["http"]);
        assert_eq!(values(&head, "x-request-id").len(), 1, "{head}");
        assert!(head.starts_with("GET /ws HTTP/1.1\r\n") && head.ends_with("\r\n\r\n"));
        // Offered beside other protocols, in any case: only websocket is offered on.
        let (head, info) = forward(
            &b,
            &WS.replace("Upgrade: websocket", "Upgrade: h2c, WebSocket, foo/2"),
        );
        assert!(info.upgrade, "{head}");
        assert_eq!(values(&head, "upgrade"), ["websocket"], "{head}");
        assert_eq!(values(&head, "connection"), ["upgrade"], "{head}");
    }

    #[test]
    fn an_upgrade_from_http10_or_with_a_body_is_a_plain_request() {
        let b = balancer();
        for (req, keep) in [
            (WS.replace("HTTP/1.1", "HTTP/1.0"), false),
            (WS.replace("Host: x", "Host: x\r\nContent-Length: 5"), true),
            (
                WS.replace("Host: x", "Host: x\r\nTransfer-Encoding: chunked"),
                true,
            ),
            // Connection does not name the upgrade.
            (WS.replace("Upgrade, ", ""), true),
            // Another protocol than websocket: h2c as `curl --http2` asks for it.
            (
                "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n\
                 Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
                    .to_string(),
                true,
            ),
            (
                WS.replace("Upgrade: websocket", "Upgrade: websockets"),
                true,
            ),
        ] {
            let (head, info) = forward(&b, &req);
            assert!(!info.upgrade, "{req}");
            assert_eq!(info.keep_alive, keep, "{req}");
            assert!(values(&head, "upgrade").is_empty(), "{head}");
            assert!(values(&head, "connection").is_empty(), "{head}");
            assert!(values(&head, "http2-settings").is_empty(), "{head}");
        }
    }

    #[test]
    fn a_101_that_switches_reaches_the_client_with_its_switch_and_no_other_hop_headers() {
        let b = balancer();
        let (_, req) = forward(&b, WS);
        let switch = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
            Connection: Upgrade, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\n\
            Proxy-Authenticate: Basic\r\nTrailer: X-T\r\n\
            Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
            .to_string();
        // Even while the process stops or hands over: the tunnel runs its course.
        b.draining.store(true, Ordering::Relaxed);
        for closing in [false, true] {
            let (head, info) = answer(&b, &req, &switch, closing);
            assert_eq!(info.status, 101);
            assert!(info.switching, "{head}");
            assert!(!info.up_keep, "a switched connection is never pooled");
            assert!(
                head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
                "{head}"
            );
            // The switch: the server's Upgrade, the proxy's own Connection.
            assert_eq!(values(&head, "upgrade"), ["websocket"], "{head}");
            assert_eq!(values(&head, "connection"), ["upgrade"], "{head}");
            for hop in ["keep-alive", "x-hop", "proxy-authenticate", "trailer"] {
                assert!(values(&head, hop).is_empty(), "{hop}: {head}");
            }
            assert_eq!(
                values(&head, "sec-websocket-accept"),
                ["s3pPLMBiTxaQ9kYGzzhZRbK+xOo="]
            );
            assert_eq!(
                values(&head, "x-request-id"),
                [std::str::from_utf8(req.id.bytes()).unwrap()]
            );
        }
        b.draining.store(false, Ordering::Relaxed);
        // What the data path answers 502 instead of opening a tunnel: a 101 that is not the
        // switch asked for (HTTP/1.0, no `Connection: upgrade`, no Upgrade, another
        // protocol or another one besides), and any 101 to a request that asked for none.
        let bad_switches = [
            switch.replacen("HTTP/1.1", "HTTP/1.0", 1),
            switch.replace("Connection: Upgrade, X-Hop", "Connection: X-Hop"),
            switch.replace("Upgrade: websocket\r\n", ""),
            switch.replace("Upgrade: websocket", "Upgrade: h2c"),
            switch.replace("Upgrade: websocket", "Upgrade: websocket, h2c"),
        ];
        for bad in &bad_switches {
            let (head, info) = answer(&b, &req, bad, false);
            assert_eq!(info.status, 101);
            assert!(!info.switching, "{bad} -> {head}");
            assert!(!info.up_keep);
        }
        let (_, plain) = forward(&b, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let (_, info) = answer(&b, &plain, &switch, false);
        assert!(!info.switching);
        // A carried upgrade's other answers are no switch either.
        let (_, info) = answer(
            &b,
            &req,
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(!info.switching);
    }

    #[test]
    fn a_refused_upgrade_closes_both_connections() {
        let b = balancer();
        let (_, req) = forward(&b, WS);
        let refusal = "HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\
            Connection: keep-alive\r\nUpgrade: websocket\r\n\r\n";
        let (head, info) = answer(&b, &req, refusal, false);
        assert!(!info.client_keep && !info.up_keep);
        assert_eq!(values(&head, "connection"), ["close"], "{head}");
        assert!(values(&head, "upgrade").is_empty(), "{head}");
        // A plain request's same answer keeps both.
        let (_, plain) = forward(&b, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let (head, info) = answer(&b, &plain, refusal, false);
        assert!(info.client_keep && info.up_keep);
        assert!(values(&head, "connection").is_empty(), "{head}");
    }

    #[test]
    fn request_ids_are_bounded_and_plain() {
        assert!(valid_request_id(b"abc-123_x.y:z"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(&[b'a'; 65]));
        assert!(!valid_request_id(b"a b"));
        assert!(!valid_request_id(b"a\"b"));
    }

    #[test]
    fn trace_headers_are_named_in_any_case() {
        for name in ["traceparent", "TraceParent", "tracestate", "TRACESTATE"] {
            assert!(is_trace_header(name), "{name}");
        }
        for name in [
            "x-request-id",
            "traceresponse",
            "traceparent2",
            "x-b3-traceid",
        ] {
            assert!(!is_trace_header(name), "{name}");
        }
    }
}
