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
//! reads is held and copied. The cost is one more `httparse` pass over each head. A refused head is never handed on: hyper gets a
//! stand-in head (`GET /`, `Connection: close`) in its place and nothing after it, and the
//! request handler answers that stand-in with the refusal (see [`HeadGate::feed`]). Answers
//! to requests before it on the connection go out first, in order, as hyper writes them.

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
}

#[derive(Debug)]
enum State {
    /// Reading a head (its bytes so far are in `head`).
    Head,
    /// Following a body to its end.
    Body(Framing),
    /// A head was refused: nothing more is handed on.
    Refused,
    /// Bytes go through unchecked: hyper decides (a chunked body the follower found
    /// malformed, which hyper's decoder refuses too).
    Off,
}

/// The gate of one connection.
#[derive(Debug)]
pub struct HeadGate {
    state: State,
    head: BytesMut,
    /// Bytes of `head` known not to end it.
    scanned: usize,
    /// A head larger than this is refused with 431 (hyper's own buffer limit).
    max_head: usize,
    /// Heads handed on so far: the index of the next request hyper will dispatch.
    heads: u64,
}

impl HeadGate {
    pub fn new(max_head: usize) -> HeadGate {
        HeadGate {
            state: State::Head,
            head: BytesMut::new(),
            scanned: 0,
            max_head,
            heads: 0,
        }
    }

    /// Whether a head was refused (nothing more is handed on).
    pub fn refused(&self) -> bool {
        matches!(self.state, State::Refused)
    }

    /// Takes bytes read from the client as [`HeadGate::feed`] does, but hands on as many of
    /// them as it can where they are: the first `n` bytes of `data` may be read by hyper as
    /// they are, and what `out` holds after them. A body being followed and a whole head
    /// found in one read (the common cases) are checked in place and never copied; only a
    /// head split over reads (and what follows it in the read that ends it) is held and
    /// copied. `out` must be empty.
    pub fn feed_in_place(
        &mut self,
        data: &[u8],
        out: &mut BytesMut,
    ) -> (usize, Option<(u64, Refusal)>) {
        debug_assert!(out.is_empty());
        let mut n = 0;
        while n < data.len() {
            match &mut self.state {
                State::Off => n = data.len(),
                State::Body(f) => match f.advance(&data[n..]) {
                    Ok(took) => {
                        n += took;
                        if f.done() {
                            self.state = State::Head;
                        }
                    }
                    Err(_) => self.state = State::Off,
                },
                State::Head if self.head.is_empty() => match check(&data[n..]) {
                    Ok(Some((len, kind))) => {
                        n += len;
                        self.heads += 1;
                        let f = Framing::new(kind);
                        if !f.done() {
                            self.state = State::Body(f);
                        }
                    }
                    // Not whole yet, or refused: the slow path holds it or says why.
                    _ => break,
                },
                State::Head | State::Refused => break,
            }
        }
        (n, self.feed(&data[n..], out))
    }

    /// Takes bytes read from the client and appends to `out` those hyper may read. When a
    /// head is refused, `out` ends with the stand-in head, and the refusal comes back with
    /// the stand-in's index among the requests of the connection (0 for the first).
    pub fn feed(&mut self, mut data: &[u8], out: &mut BytesMut) -> Option<(u64, Refusal)> {
        while !data.is_empty() {
            match &mut self.state {
                State::Refused => return None,
                State::Off => {
                    out.extend_from_slice(data);
                    return None;
                }
                State::Body(f) => match f.advance(data) {
                    Ok(n) => {
                        out.extend_from_slice(&data[..n]);
                        data = &data[n..];
                        if f.done() {
                            self.state = State::Head;
                        }
                    }
                    Err(_) => self.state = State::Off,
                },
                State::Head => {
                    self.head.extend_from_slice(data);
                    data = &[];
                    if !h1::may_end_head(&self.head, &mut self.scanned) {
                        if self.head.len() > self.max_head {
                            return Some(self.refuse(431, self.too_large()));
                        }
                        continue;
                    }
                    match check(&self.head) {
                        Ok(None) => {
                            if self.head.len() > self.max_head {
                                return Some(self.refuse(431, self.too_large()));
                            }
                        }
                        Ok(Some((n, kind))) => {
                            let rest = self.head.split_off(n);
                            out.extend_from_slice(&self.head);
                            self.head.clear();
                            self.scanned = 0;
                            self.heads += 1;
                            let f = Framing::new(kind);
                            if !f.done() {
                                self.state = State::Body(f);
                            }
                            return self.feed(&rest, out);
                        }
                        Err((status, reason)) => return Some(self.refuse(status, reason)),
                    }
                }
            }
        }
        None
    }

    fn too_large(&self) -> String {
        format!(
            "request head of {}+ bytes exceeds the limit of {} bytes",
            self.head.len(),
            self.max_head
        )
    }

    fn refuse(&mut self, status: u16, reason: String) -> (u64, Refusal) {
        self.state = State::Refused;
        self.head = BytesMut::new();
        let index = self.heads;
        self.heads += 1;
        (index, Refusal { status, reason })
    }

    /// What hyper reads in place of the refused head.
    pub fn stand_in() -> &'static [u8] {
        STAND_IN
    }
}

/// Parses a head (the start of `buf`): its length and body framing once complete (`None`:
/// not yet), or why it is refused.
fn check(buf: &[u8]) -> Result<Option<(usize, BodyKind)>, (u16, String)> {
    let mut hs = [const { MaybeUninit::<httparse::Header>::uninit() }; h1::MAX_HEADER_FIELDS];
    let mut r = httparse::Request::new(&mut []);
    match r.parse_with_uninit_headers(buf, &mut hs) {
        Ok(httparse::Status::Complete(n)) => {
            if h1::too_many_headers(r.headers) {
                return Err((431, too_many_headers()));
            }
            let framed = h1::framing(r.headers, true, r.version == Some(0))
                .map_err(|b| (400, b.0.to_string()))?;
            Ok(Some((n, framed.kind)))
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
            assert_eq!(out, [first, STAND_IN].concat());
        }
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
