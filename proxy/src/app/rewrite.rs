//! The heads as the other side gets them: the request head for the server (hop-by-hop
//! headers dropped, `X-Forwarded-*` and the request id set, a client's trace context
//! dropped unless `proxy.pass_trace_context`) and the answer head for the
//! client (framing checked, `Connection: close` when the client connection ends). Pure
//! transformations of parsed heads into bytes: no I/O here.

use std::sync::atomic::Ordering;

use super::client::{Client, ReqInfo, Stop};
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
    /// The request head as the server gets it: hop-by-hop headers dropped,
    /// `X-Forwarded-For` appended to, `-Proto`/`-Port` and the request id set.
    pub(super) fn rewrite_request(
        &self,
        r: &httparse::Request,
        c: &Client,
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
            keep_alive: !http10 && !conn.close,
            http10,
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
        let body = if req.head_only || informational || status == 204 || status == 304 {
            BodyKind::None
        } else {
            framed.kind
        };
        let up_keep = r.version == Some(1) && !conn.close && body != BodyKind::UntilClose;
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
            if conn.drops(h.name)
                || (framed.drop_length && h.name.eq_ignore_ascii_case("content-length"))
            {
                continue;
            }
            if h.name.eq_ignore_ascii_case("x-request-id") {
                has_id = true;
            }
            h1::put_header(out, h.name.as_bytes(), h.value);
        }
        if !informational {
            if !has_id {
                h1::put_header(out, b"x-request-id", req.id.bytes());
            }
            if !client_keep {
                out.extend_from_slice(b"connection: close\r\n");
            }
        }
        out.extend_from_slice(b"\r\n");
        Ok(RespInfo {
            status,
            body,
            up_keep,
            client_keep,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
