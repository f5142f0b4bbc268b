//! The server's gate on request heads: every head on a connection is checked, before hyper
//! reads a byte of it, by the rules `oxbus proxy` applies (`oxbus_proxy::h1`), so that both
//! edges refuse the same framing shapes with the same status (400, or 431 for too many
//! headers) and close.
//!
//! It has to sit in front of hyper rather than in the request handler: hyper accepts some of
//! those shapes and hides them from its caller (with both `Content-Length` and
//! `Transfer-Encoding` it drops the length from the header map and reads the body as
//! chunked), and a handler cannot refuse what it cannot see.
//!
//! A head is handed on only once it is complete and checked, unchanged; the gate then
//! follows the body with the proxy's framing follower (without decoding it) to know where
//! the next head starts. Bodies, and heads that arrive whole in one read, are checked where
//! they lie in hyper's read buffer ([`HeadGate::feed_in_place`]); only a head split over
//! reads is held (up to its blank line, never more) and copied, and what follows it in the
//! read that ends it is copied once. The cost is one more `httparse` pass over each head.
//! A refused head is never handed on: hyper gets a stand-in head (`GET /`,
//! `Connection: close`) in its place and nothing after it, and the request handler answers
//! that stand-in with the refusal (see [`HeadGate::feed`]). Answers to requests before it
//! on the connection go out first, in order, as hyper writes them. A chunked body the
//! follower refuses ends what hyper reads (see `State::Cut`): its body read fails, the
//! request is answered 400 and the connection closes, so no head after it goes unchecked.

use bytes::BytesMut;
use oxbus_proxy::h1::{self, BodyKind, Framing};
use std::mem::MaybeUninit;

/// What hyper reads in place of a refused head.
const STAND_IN: &[u8] = b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n";

/// A refused request head: the status to answer and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
    /// The method its request line starts with, when it starts with one (for the metrics:
    /// hyper only ever sees the stand-in `GET`).
    pub method: Option<hyper::Method>,
}

#[derive(Debug)]
enum State {
    /// Reading a head (its bytes so far are in `head`).
    Head,
    /// Following a body to its end.
    Body(Framing),
    /// A head was refused: nothing more is handed on.
    Refused,
    /// A chunked body the follower found malformed: nothing more is handed on, and hyper
    /// reads the end of the stream there (its body read fails, the handler answers 400 and
    /// the connection closes). Passing the rest on unchecked would not do: hyper's decoder accepts some chunked bodies the
    /// proxy refuses (chunk sizes of 16+ hex digits, extensions or trailers of 8-16 KiB, a
    /// bare LF in a trailer), and no head after such a body may reach hyper unchecked.
    Cut,
    /// After a head that asks for an upgrade (and its body, if any): what follows is either
    /// another protocol's bytes (after a `101`) or nothing HTTP, since every other answer to
    /// such a head closes the connection (see [`wants_upgrade`]). Handed on unchecked.
    Tunnel,
}

/// The gate of one connection.
#[derive(Debug)]
pub struct HeadGate {
    state: State,
    head: BytesMut,
    /// Whether `head` ends at a blank line (it may be whole).
    head_may_end: bool,
    /// The largest `head` held so far (tests check it stays within `max_head`).
    #[cfg(test)]
    held_peak: usize,
    /// A head larger than this is refused with 431 (hyper's own buffer limit).
    max_head: usize,
    /// Heads handed on so far: the index of the next request hyper will dispatch.
    heads: u64,
    /// The body being followed belongs to a head that asked for an upgrade: a tunnel
    /// follows it.
    tunnel_after_body: bool,
}

impl HeadGate {
    pub fn new(max_head: usize) -> HeadGate {
        HeadGate {
            state: State::Head,
            head: BytesMut::new(),
            head_may_end: false,
            #[cfg(test)]
            held_peak: 0,
            max_head,
            heads: 0,
            tunnel_after_body: false,
        }
    }

    /// Whether a head was refused (nothing more is handed on).
    pub fn refused(&self) -> bool {
        matches!(self.state, State::Refused)
    }

    /// Whether a chunked body was found malformed (nothing more is handed on: hyper reads
    /// the end of the stream).
    pub fn cut(&self) -> bool {
        matches!(self.state, State::Cut)
    }

    /// Takes bytes read from the client as [`HeadGate::feed`] does, but hands on as many of
    /// them as it can where they are: the first `n` bytes of `data` may be read by hyper as
    /// they are, and what `out` holds after them. A body being followed and a whole head
    /// found in one read (the common cases) are checked in place and never copied; only a
    /// head split over reads is held, and it and what follows it in the read that ends it
    /// are copied (once). `out` must be empty.
    pub fn feed_in_place(
        &mut self,
        data: &[u8],
        out: &mut BytesMut,
    ) -> (usize, Option<(u64, Refusal)>) {
        debug_assert!(out.is_empty());
        let mut n = 0;
        while n < data.len() {
            match &mut self.state {
                State::Body(f) => match f.advance(&data[n..]) {
                    Ok(took) => {
                        n += took;
                        if f.done() {
                            self.body_done();
                        }
                    }
                    Err(_) => self.state = State::Cut,
                },
                State::Head if self.head.is_empty() => match check(&data[n..]) {
                    Ok(Some((len, kind, upgrade))) => {
                        n += len;
                        self.handed_on(kind, upgrade);
                    }
                    // Not whole yet, or refused: the slow path holds it or says why.
                    _ => break,
                },
                State::Tunnel => n = data.len(),
                State::Head | State::Refused | State::Cut => break,
            }
        }
        (n, self.feed(&data[n..], out))
    }

    /// Takes bytes read from the client and appends to `out` those hyper may read. When a
    /// head is refused, `out` ends with the stand-in head, and the refusal comes back with
    /// the stand-in's index among the requests of the connection (0 for the first).
    ///
    /// Each byte is copied once (into `out`, or into the held head and from there into
    /// `out`): a head is held only up to where it may end, and what follows is taken as it
    /// lies, however many heads it holds.
    pub fn feed(&mut self, mut data: &[u8], out: &mut BytesMut) -> Option<(u64, Refusal)> {
        while !data.is_empty() {
            match &mut self.state {
                State::Refused | State::Cut => return None,
                State::Tunnel => {
                    out.extend_from_slice(data);
                    return None;
                }
                State::Body(f) => match f.advance(data) {
                    Ok(n) => {
                        out.extend_from_slice(&data[..n]);
                        data = &data[n..];
                        if f.done() {
                            self.body_done();
                        }
                    }
                    Err(_) => self.state = State::Cut,
                },
                State::Head if self.head.is_empty() => match check(data) {
                    Ok(Some((n, kind, upgrade))) => {
                        out.extend_from_slice(&data[..n]);
                        data = &data[n..];
                        self.handed_on(kind, upgrade);
                    }
                    Ok(None) => self.hold(&mut data),
                    Err((status, reason)) => {
                        return Some(self.refuse(status, reason, method_of(data)));
                    }
                },
                State::Head => self.hold(&mut data),
            }
            if let State::Head = self.state
                && !self.head.is_empty()
            {
                #[cfg(test)]
                {
                    self.held_peak = self.held_peak.max(self.head.len());
                }
                if self.head.len() > self.max_head {
                    let method = method_of(&self.head);
                    return Some(self.refuse(431, self.too_large(), method));
                }
                if !self.head_may_end {
                    continue;
                }
                match check(&self.head) {
                    Ok(None) => {}
                    Ok(Some((n, kind, upgrade))) => {
                        out.extend_from_slice(&self.head[..n]);
                        // The head ends at the first blank line, where it was cut off: `n`
                        // is all of it (if not, the rest starts the next head).
                        let _ = self.head.split_to(n);
                        self.handed_on(kind, upgrade);
                        if let State::Tunnel = self.state {
                            // Whatever was held after the head is the tunnel's.
                            out.extend_from_slice(&self.head);
                            self.head.clear();
                        }
                    }
                    Err((status, reason)) => {
                        let method = method_of(&self.head);
                        return Some(self.refuse(status, reason, method));
                    }
                }
            }
        }
        None
    }

    /// Appends to the held head the start of `data` up to where the head may end (a blank
    /// line), or all of it; notes whether it may end now.
    fn hold(&mut self, data: &mut &[u8]) {
        if self.head.is_empty() {
            // Empty lines before a request line are ignored (RFC 9112 §2.2; httparse and
            // hyper skip any number of them), so they are dropped here rather than held:
            // held, every one of them would look like a head's end and have the growing
            // held bytes parsed again — quadratic in a stream of blank lines.
            let skip = data
                .iter()
                .position(|&b| b != b'\r' && b != b'\n')
                .unwrap_or(data.len());
            *data = &data[skip..];
        }
        let take = head_end(&self.head, data);
        self.head_may_end = take.is_some();
        let take = take.unwrap_or(data.len());
        self.head.extend_from_slice(&data[..take]);
        *data = &data[take..];
    }

    /// A whole head was handed on: what follows is its body, if any, then the next head
    /// (or, after a head that asks for an upgrade, the tunnel).
    fn handed_on(&mut self, kind: BodyKind, upgrade: bool) {
        self.heads += 1;
        self.head_may_end = false;
        let f = Framing::new(kind);
        if !f.done() {
            self.tunnel_after_body = upgrade;
            self.state = State::Body(f);
        } else if upgrade {
            self.state = State::Tunnel;
        }
    }

    /// The body being followed ended.
    fn body_done(&mut self) {
        self.state = if self.tunnel_after_body {
            State::Tunnel
        } else {
            State::Head
        };
    }

    fn too_large(&self) -> String {
        format!(
            "request head of {}+ bytes exceeds the limit of {} bytes",
            self.head.len(),
            self.max_head
        )
    }

    fn refuse(
        &mut self,
        status: u16,
        reason: String,
        method: Option<hyper::Method>,
    ) -> (u64, Refusal) {
        self.state = State::Refused;
        self.head = BytesMut::new();
        let index = self.heads;
        self.heads += 1;
        (
            index,
            Refusal {
                status,
                reason,
                method,
            },
        )
    }

    /// What hyper reads in place of the refused head.
    pub fn stand_in() -> &'static [u8] {
        STAND_IN
    }
}

/// The method a head starts with: its first token, when a space follows it within the
/// first 32 bytes (after any empty lines), and it is a valid method token.
fn method_of(head: &[u8]) -> Option<hyper::Method> {
    let start = head.iter().position(|&b| b != b'\r' && b != b'\n')?;
    let line = &head[start..head.len().min(start + 32)];
    let end = line.iter().position(|&b| b == b' ')?;
    hyper::Method::from_bytes(&line[..end]).ok()
}

/// How many bytes of `data` the head held in `held` takes up to the first blank line (LF LF
/// or LF CR LF) that ends in `data`, where the head may end; `None`: none does.
fn head_end(held: &[u8], data: &[u8]) -> Option<usize> {
    let before = |i: usize, back: usize| -> Option<u8> {
        if back <= i {
            Some(data[i - back])
        } else {
            held.len().checked_sub(back - i).map(|j| held[j])
        }
    };
    let mut from = 0;
    while let Some(i) = memchr(b'\n', &data[from..]).map(|i| from + i) {
        match before(i, 1) {
            Some(b'\n') => return Some(i + 1),
            Some(b'\r') if before(i, 2) == Some(b'\n') => return Some(i + 1),
            _ => from = i + 1,
        }
    }
    None
}

fn memchr(b: u8, s: &[u8]) -> Option<usize> {
    s.iter().position(|&c| c == b)
}

/// A whole head as [`check`] found it: its length, its body's framing, and whether it asks
/// for an upgrade.
type Head = (usize, BodyKind, bool);

/// Whether hyper takes a request head as asking for an upgrade (hyper's own rule: a
/// `CONNECT`, or an HTTP/1.1 request with an `Upgrade` header). After such a head hyper
/// hands the connection over on a `101` (or a 2xx to `CONNECT`); every other answer to it
/// must close the connection, since the gate no longer checks what follows.
pub fn wants_upgrade(
    method: &hyper::Method,
    version: hyper::Version,
    headers: &hyper::HeaderMap,
) -> bool {
    method == hyper::Method::CONNECT
        || (version == hyper::Version::HTTP_11 && headers.contains_key(hyper::header::UPGRADE))
}

/// Parses a head (the start of `buf`): its length, body framing and whether it asks for an
/// upgrade ([`wants_upgrade`]) once complete (`None`: not yet), or why it is refused.
fn check(buf: &[u8]) -> Result<Option<Head>, (u16, String)> {
    let mut hs = [const { MaybeUninit::<httparse::Header>::uninit() }; h1::MAX_HEADER_FIELDS];
    let mut r = httparse::Request::new(&mut []);
    match r.parse_with_uninit_headers(buf, &mut hs) {
        Ok(httparse::Status::Complete(n)) => {
            if h1::too_many_headers(r.headers) {
                return Err((431, too_many_headers()));
            }
            let framed = h1::framing(r.headers, true, r.version == Some(0))
                .map_err(|b| (400, b.0.to_string()))?;
            let upgrade = r.method == Some("CONNECT")
                || (r.version == Some(1)
                    && r.headers
                        .iter()
                        .any(|h| h.name.eq_ignore_ascii_case("upgrade")));
            Ok(Some((n, framed.kind, upgrade)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err((431, too_many_headers())),
        Err(e) => Err((400, format!("malformed request head: {e}"))),
    }
}

/// The 431 message of a head with too many headers (the proxy's says the same).
fn too_many_headers() -> String {
    format!(
        "more than {} request headers (besides X-Forwarded-For/-Proto/-Port and X-Request-Id)",
        h1::MAX_HEADERS
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns what hyper would read and the
    /// refusal, if any.
    fn run(input: &[u8], step: usize) -> (Vec<u8>, Option<(u64, Refusal)>) {
        let mut g = HeadGate::new(16 * 1024);
        let mut seen = Vec::new();
        let mut refused = None;
        for piece in input.chunks(step) {
            let mut out = BytesMut::new();
            let (n, r) = g.feed_in_place(piece, &mut out);
            seen.extend_from_slice(&piece[..n]);
            seen.extend_from_slice(&out);
            if let Some(r) = r {
                seen.extend_from_slice(HeadGate::stand_in());
                refused = Some(r);
            }
        }
        (seen, refused)
    }

    #[test]
    fn good_requests_go_through_unchanged_in_any_split() {
        let input: &[u8] = b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello\
            POST /b HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
            GET /c HTTP/1.1\r\nhost: x\r\n\r\n";
        for step in 1..input.len() {
            let (out, refused) = run(input, step);
            assert_eq!(refused, None, "step {step}");
            assert_eq!(out, input, "step {step}");
        }
    }

    #[test]
    fn after_an_upgrade_head_the_bytes_pass_unchecked_in_any_split() {
        // WebSocket frames (not HTTP) after the head, and after a body of an upgrade
        // request; a bad "head" in them is not refused: the gate tunnels.
        let frames: &[u8] = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58 BAD\r\nx\r\n\r\n";
        for head in [
            &b"GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"[..],
            b"POST /u HTTP/1.1\r\nhost: x\r\nupgrade: h2c\r\ncontent-length: 3\r\n\r\nabc",
            b"CONNECT x:1 HTTP/1.1\r\nhost: x:1\r\n\r\n",
        ] {
            let input = [head, frames].concat();
            for step in 1..input.len() {
                let (out, refused) = run(&input, step);
                assert_eq!(refused, None, "step {step}");
                assert_eq!(out, input, "step {step}");
            }
        }
        // HTTP/1.0 has no upgrade (hyper's rule too): the next head is checked.
        let input = b"GET /ws HTTP/1.0\r\nupgrade: websocket\r\n\r\nBAD\r\n\r\n";
        let (_, refused) = run(input, input.len());
        assert_eq!(refused.map(|r| r.1.status), Some(400));
    }

    #[test]
    fn a_refused_head_is_replaced_after_the_requests_before_it() {
        // The body of the first request looks like a bad head: it is a body, not a head.
        let first: &[u8] = b"POST /a HTTP/1.1\r\ncontent-length: 36\r\n\r\nX: 1\r\ncontent-length: 1\r\nte: chunked";
        let bad: &[u8] =
            b"POST /b HTTP/1.1\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
        let input = [first, bad, b"GET /c HTTP/1.1\r\n\r\n"].concat();
        for step in [1, 7, input.len()] {
            let (out, refused) = run(&input, step);
            let (index, r) = refused.expect("refused");
            assert_eq!(index, 1);
            assert_eq!(r.status, 400);
            assert!(r.reason.contains("Content-Length and Transfer-Encoding"));
            assert_eq!(r.method, Some(hyper::Method::POST), "step {step}");
            assert_eq!(out, [first, STAND_IN].concat());
        }
    }

    /// The refusal names the method its head starts with, when it has one.
    #[test]
    fn a_refusal_keeps_its_heads_method() {
        assert_eq!(
            method_of(b"\r\nDELETE /x HTTP/1.1\r\n"),
            Some(hyper::Method::DELETE)
        );
        assert_eq!(
            method_of(b"PROPFIND /x HTTP/1.1\r\n").map(|m| m.to_string()),
            Some("PROPFIND".into())
        );
        assert_eq!(method_of(b"\x16\x03\x01\x02\x00\x01 "), None);
        assert_eq!(method_of(b"GET"), None);
        assert_eq!(method_of(&[b'A'; 64]), None);
        // A head over the limit (431), held over several reads.
        let mut g = HeadGate::new(64);
        let mut out = BytesMut::new();
        let head = [b"PUT /big HTTP/1.1\r\n".as_slice(), &[b'x'; 100]].concat();
        let refused = head
            .chunks(10)
            .find_map(|piece| g.feed(piece, &mut out))
            .expect("refused");
        assert_eq!(refused.1.status, 431);
        assert_eq!(refused.1.method, Some(hyper::Method::PUT));
    }

    /// One well-framed request: a length or a chunked body (with random contents that may
    /// look like heads or chunk lines), or none.
    fn request() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let body = proptest::collection::vec(
            prop_oneof![
                Just(b'\r'),
                Just(b'\n'),
                Just(b'0'),
                Just(b':'),
                any::<u8>()
            ],
            0..40,
        );
        (0..3u8, body, 1..5usize).prop_map(|(kind, body, pieces)| {
            let mut r = b"POST /x HTTP/1.1\r\nhost: h\r\n".to_vec();
            match kind {
                0 => r.extend_from_slice(b"\r\n"),
                1 => {
                    r.extend_from_slice(
                        format!("content-length: {}\r\n\r\n", body.len()).as_bytes(),
                    );
                    r.extend_from_slice(&body);
                }
                _ => {
                    r.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
                    for c in body.chunks(body.len().div_ceil(pieces).max(1)) {
                        r.extend_from_slice(format!("{:x};e=1\r\n", c.len()).as_bytes());
                        r.extend_from_slice(c);
                        r.extend_from_slice(b"\r\n");
                    }
                    r.extend_from_slice(b"0\r\nx-t: 1\r\n\r\n");
                }
            }
            r
        })
    }

    proptest::proptest! {
        /// Well-framed requests back to back, read in any pieces, reach hyper unchanged.
        #[test]
        fn well_framed_requests_pass_unchanged(
            reqs in proptest::collection::vec(request(), 1..6),
            step in 1..200usize,
        ) {
            let input = reqs.concat();
            let (seen, refused) = run(&input, step);
            proptest::prop_assert_eq!(refused, None);
            proptest::prop_assert_eq!(seen, input);
        }
    }

    #[test]
    fn blank_lines_before_a_head_are_dropped_not_held() {
        // 64 KiB of blank lines alone in a read, then a head: nothing is held for them (held,
        // each would be a possible head end, and the held bytes parsed again per line).
        let mut g = HeadGate::new(16 * 1024);
        let mut out = BytesMut::new();
        for blank in [&b"\n"[..], b"\r\n"] {
            let (n, r) = g.feed_in_place(&blank.repeat(32 * 1024), &mut out);
            assert_eq!((n, r), (0, None));
            assert_eq!(g.held_peak, 0);
        }
        // The head after them is read in place, as any whole head in one read.
        let (n, r) = g.feed_in_place(b"\r\nGET / HTTP/1.1\r\n\r\n", &mut out);
        assert_eq!((n, r, out.len()), (20, None, 0));
        assert_eq!(g.heads, 1);
    }

    #[test]
    fn many_pipelined_heads_after_a_split_head_are_copied_once() {
        // A head split over two reads, then thousands of tiny heads in the read that ends
        // it: each byte is copied once, the held head never outgrows one head, and nothing
        // recurses per head.
        let mut g = HeadGate::new(16 * 1024);
        let mut out = BytesMut::new();
        let (n, r) = g.feed_in_place(b"GET / HTTP/1.1\r\n", &mut out);
        assert_eq!((n, r, out.len()), (0, None, 0));
        let mut second = b"\r\n".to_vec();
        for _ in 0..20_000 {
            second.extend_from_slice(b"A * HTTP/1.1\n\n");
        }
        second.extend_from_slice(b"GET /last HT");
        let (n, r) = g.feed_in_place(&second, &mut out);
        assert_eq!((n, r), (0, None));
        assert_eq!(g.heads, 20_001);
        // The split head (18 bytes) is the largest held.
        assert_eq!(g.held_peak, 18);
        let mut expected = b"GET / HTTP/1.1\r\n".to_vec();
        expected.extend_from_slice(&second[..second.len() - 12]);
        assert_eq!(out, expected);
        assert_eq!(&g.head[..], b"GET /last HT");
    }

    #[test]
    fn a_chunked_body_the_follower_refuses_cuts_the_stream() {
        // hyper reads a 16-digit chunk size; the proxy does not. Nothing after it may reach
        // hyper, or the head after it would go unchecked.
        let first: &[u8] = b"POST /a HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n";
        let rest: &[u8] = b"0000000000000003\r\nabc\r\n0\r\n\r\n\
            POST /x HTTP/1.1\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
        let input = [first, rest].concat();
        for step in [1, 5, input.len()] {
            let (seen, refused) = run(&input, step);
            assert_eq!(refused, None, "step {step}");
            assert!(seen.starts_with(first), "step {step}");
            assert!(
                !seen.windows(7).any(|w| w == b"POST /x"),
                "step {step}: {}",
                String::from_utf8_lossy(&seen)
            );
        }
    }

    #[test]
    fn too_many_headers_and_too_large_heads_are_431() {
        let head = |n: usize, fwd: usize| {
            let mut h = b"GET / HTTP/1.1\r\n".to_vec();
            for i in 0..n {
                h.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
            }
            for f in &h1::FORWARDING_HEADERS[..fwd] {
                h.extend_from_slice(format!("{f}: 1\r\n").as_bytes());
            }
            h.extend_from_slice(b"\r\n");
            h
        };
        assert_eq!(run(&head(h1::MAX_HEADERS, 4), 64).1, None);
        assert_eq!(
            run(&head(h1::MAX_HEADERS + 1, 0), 64).1.unwrap().1.status,
            431
        );
        assert_eq!(
            run(&head(h1::MAX_HEADER_FIELDS + 1, 0), 64)
                .1
                .unwrap()
                .1
                .status,
            431
        );
        let mut big = b"GET / HTTP/1.1\r\nx-big: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 20_000));
        assert_eq!(run(&big, 1000).1.unwrap().1.status, 431);
    }
}
