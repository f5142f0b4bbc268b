//! A reference model of the proxy's HTTP/1 framing rules, and the checks that hold
//! [`crate::h1`] to it. Shared by the property tests (`tests/h1_props.rs`, run in CI) and the
//! fuzz target (`fuzz/fuzz_targets/h1.rs`), which include this file as a module next to an
//! `h1` module (`oxbus_proxy::h1`, or `src/h1.rs` itself in the fuzz crate).
//!
//! The model is written to be read, not to be fast: a chunked body is decoded by recursive
//! descent over the whole buffer (no state carried between reads), and a head's framing is
//! stated as the rule list of RFC 9112 §6 with the proxy's documented limits (PROXY.md):
//!
//! - chunk sizes of 1 to 15 hex digits; spaces or tabs may follow, then an extension
//!   (`;` and anything up to CR, at most 8 KiB with the `;`) or the line's CRLF;
//! - trailer lines are anything up to CRLF, at most 8 KiB in all counting their CRLFs; the
//!   body ends at the blank line after them;
//! - every line ends in CRLF (a bare LF or a CR without LF is refused);
//! - `Content-Length` is a list of 1-19 digit decimals, all equal; `Transfer-Encoding` codings
//!   are read across all its headers in order, and the last one decides.
//! - a request's protocol upgrade is carried (its bytes after a `101` are no longer HTTP)
//!   only from HTTP/1.1, without a body, with an `Upgrade` header listing `websocket` (the
//!   one protocol carried, in any case) and a `Connection` header listing `upgrade`; any
//!   other request with `Upgrade` (`h2c`, say) is a plain one.
//!
//! The checks are one-sided on refusals where `h1` may be stricter than this model (another
//! refusal added to `h1::framing` keeps them true): whatever `h1` accepts, it must frame as
//! the model does, and whatever the model refuses, `h1` must refuse.

#![allow(dead_code)]

use crate::h1::{self, BodyKind, Framing};

/// Bound on a chunk extension (with its `;`) and on the trailer section (with its CRLFs).
pub const MAX_CHUNK_META: usize = 8 * 1024;

/// What the model makes of a chunked body's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// The body is the first `n` bytes.
    Ends(usize),
    /// Every byte so far may be part of a valid body; its end is still to come.
    More,
    /// No valid body starts with these bytes.
    Invalid,
}

/// Why the decoder stopped short of an end.
enum Stop {
    More,
    Invalid,
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    /// The bytes from here that satisfy `f` (possibly none); `Err(More)` if they run to the
    /// end of the input, as the next read might extend them. `max` bounds the run: a longer
    /// one is invalid even if the input ends within it.
    fn run(&mut self, max: usize, f: impl Fn(u8) -> bool) -> Result<&'a [u8], Stop> {
        let n = self.b[self.i..].iter().take_while(|&&c| f(c)).count();
        if n > max {
            return Err(Stop::Invalid);
        }
        if self.i + n == self.b.len() {
            return Err(Stop::More);
        }
        let r = &self.b[self.i..self.i + n];
        self.i += n;
        Ok(r)
    }

    fn peek(&self) -> Result<u8, Stop> {
        self.b.get(self.i).copied().ok_or(Stop::More)
    }

    fn expect(&mut self, c: u8) -> Result<(), Stop> {
        if self.peek()? != c {
            return Err(Stop::Invalid);
        }
        self.i += 1;
        Ok(())
    }

    fn crlf(&mut self) -> Result<(), Stop> {
        self.expect(b'\r')?;
        self.expect(b'\n')
    }
}

fn decode(c: &mut Cursor) -> Result<(), Stop> {
    loop {
        let digits = c.run(15, |b| b.is_ascii_hexdigit())?;
        if digits.is_empty() {
            return Err(Stop::Invalid);
        }
        let size = digits.iter().fold(0u64, |v, &d| {
            v * 16 + (d as char).to_digit(16).unwrap() as u64
        });
        c.run(usize::MAX, |b| b == b' ' || b == b'\t')?;
        if c.peek()? == b';' {
            c.run(MAX_CHUNK_META, |b| b != b'\r' && b != b'\n')?;
        }
        c.crlf()?;
        if size == 0 {
            break;
        }
        let left = (c.b.len() - c.i) as u64;
        if left < size {
            return Err(Stop::More);
        }
        c.i += size as usize;
        c.crlf()?;
    }
    let mut used = 0;
    loop {
        let line = c.run(MAX_CHUNK_META.saturating_sub(used), |b| {
            b != b'\r' && b != b'\n'
        })?;
        c.crlf()?;
        if line.is_empty() {
            return Ok(());
        }
        used += line.len() + 2;
    }
}

/// Decodes the chunked body at the start of `b`.
pub fn chunked(b: &[u8]) -> Body {
    let mut c = Cursor { b, i: 0 };
    match decode(&mut c) {
        Ok(()) => Body::Ends(c.i),
        Err(Stop::More) => Body::More,
        Err(Stop::Invalid) => Body::Invalid,
    }
}

/// Feeds `body` to `f` in consecutive pieces ending at `cuts` (offsets into `body`, the last
/// piece running to its end), as the proxy does across reads, and checks after every piece
/// that the follower and the model agree on what the bytes so far are.
/// `model(prefix)` says what the body's first bytes are.
pub fn follow(
    mut f: Framing,
    body: &[u8],
    cuts: &[usize],
    model: impl Fn(&[u8]) -> Body,
) -> Result<(), String> {
    let mut ends: Vec<usize> = cuts
        .iter()
        .map(|&c| c.min(body.len()))
        .filter(|&c| c > 0)
        .collect();
    ends.push(body.len());
    ends.sort_unstable();
    ends.dedup();
    let mut start = 0;
    let mut taken = 0;
    for end in ends {
        let piece = &body[start..end];
        let seen = &body[..end];
        let expect = model(seen);
        match f.advance(piece) {
            Err(h1::Bad(why)) => {
                if expect != Body::Invalid {
                    return Err(format!(
                        "refused ({why}) after {end} bytes; the model says {expect:?}"
                    ));
                }
                return Ok(());
            }
            Ok(n) => {
                if n > piece.len() {
                    return Err(format!("took {n} bytes of a {}-byte piece", piece.len()));
                }
                taken += n;
                if f.done() {
                    if expect != Body::Ends(taken) {
                        return Err(format!(
                            "ended after {taken} bytes; the model says {expect:?} of the \
                             first {end}"
                        ));
                    }
                    // Done stays done and takes nothing more.
                    if f.advance(&body[taken..]) != Ok(0) || !f.done() {
                        return Err("a finished body took more bytes".into());
                    }
                    return Ok(());
                }
                if n != piece.len() {
                    return Err(format!(
                        "took {n} of a {}-byte piece without ending",
                        piece.len()
                    ));
                }
                if expect != Body::More {
                    return Err(format!(
                        "still going after {end} bytes; the model says {expect:?}"
                    ));
                }
            }
        }
        start = end;
    }
    Ok(())
}

/// The model of a `Content-Length: n` body (or of one with none, `n == 0`).
pub fn length(n: u64) -> impl Fn(&[u8]) -> Body {
    move |b: &[u8]| {
        if (b.len() as u64) < n {
            Body::More
        } else {
            Body::Ends(n as usize)
        }
    }
}

/// The model of a body read until the connection closes.
pub fn until_close(_: &[u8]) -> Body {
    Body::More
}

fn ows(b: &u8) -> bool {
    *b == b' ' || *b == b'\t'
}

fn trim(mut v: &[u8]) -> &[u8] {
    while v.first().is_some_and(ows) {
        v = &v[1..];
    }
    while v.last().is_some_and(ows) {
        v = &v[..v.len() - 1];
    }
    v
}

/// The comma-separated elements of every `name` header, in order, trimmed.
fn elements<'a>(
    headers: &'a [(&'a [u8], &'a [u8])],
    name: &'static str,
) -> impl DoubleEndedIterator<Item = &'a [u8]> + 'a {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .flat_map(|(_, v)| v.split(|&b| b == b','))
        .map(trim)
}

/// The model's framing of a head: `None` when it is refused.
pub fn framing(headers: &[(&[u8], &[u8])], request: bool, http10: bool) -> Option<Framed> {
    let named = |name: &'static str| elements(headers, name);
    let mut length = None;
    for l in named("content-length") {
        if l.is_empty() || l.len() > 19 || !l.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = l.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if length.is_some_and(|m| m != n) {
            return None;
        }
        length = Some(n);
    }
    let has_te = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case(b"transfer-encoding"));
    let last = named("transfer-encoding").rfind(|c| !c.is_empty());
    let chunked = last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
    let kind = if has_te {
        if request && (http10 || length.is_some() || !chunked) {
            return None;
        }
        if chunked {
            BodyKind::Chunked
        } else {
            BodyKind::UntilClose
        }
    } else {
        match length {
            Some(0) => BodyKind::None,
            Some(n) => BodyKind::Length(n),
            None if request => BodyKind::None,
            None => BodyKind::UntilClose,
        }
    };
    Some(Framed {
        kind,
        drop_length: !request && has_te && length.is_some(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framed {
    pub kind: BodyKind,
    pub drop_length: bool,
}

/// Checks `h1::framing` against the model: what it accepts it frames as the model does,
/// and what the model refuses it refuses.
pub fn check_framing(
    headers: &[httparse::Header],
    request: bool,
    http10: bool,
) -> Result<Option<BodyKind>, String> {
    let pairs: Vec<(&[u8], &[u8])> = headers
        .iter()
        .map(|h| (h.name.as_bytes(), h.value))
        .collect();
    let want = framing(&pairs, request, http10);
    let got = h1::framing(headers, request, http10).map(|f| Framed {
        kind: f.kind,
        drop_length: f.drop_length,
    });
    match (got, want) {
        (Err(_), _) => Ok(None),
        (Ok(g), Some(w)) if g == w => Ok(Some(g.kind)),
        (Ok(g), w) => Err(format!(
            "framed {g:?}; the model says {w:?} (request: {request}, HTTP/1.0: {http10}) for {:?}",
            pairs
                .iter()
                .map(|(n, v)| format!(
                    "{}: {}",
                    String::from_utf8_lossy(n),
                    String::from_utf8_lossy(v)
                ))
                .collect::<Vec<_>>()
        )),
    }
}

/// The model's rule for a request whose head is framed as `kind`: whether its protocol
/// upgrade is carried (to WebSocket, the only protocol carried).
pub fn upgrade(headers: &[(&[u8], &[u8])], http10: bool, kind: BodyKind) -> bool {
    !http10
        && kind == BodyKind::None
        && elements(headers, "upgrade").any(|p| p.eq_ignore_ascii_case(b"websocket"))
        && elements(headers, "connection").any(|t| t.eq_ignore_ascii_case(b"upgrade"))
}

/// Checks `h1`'s decision to carry a request's upgrade against the model, for a head it
/// frames as `kind`; returns the decision.
pub fn check_upgrade(
    headers: &[httparse::Header],
    http10: bool,
    kind: BodyKind,
) -> Result<bool, String> {
    let pairs: Vec<(&[u8], &[u8])> = headers
        .iter()
        .map(|h| (h.name.as_bytes(), h.value))
        .collect();
    let want = upgrade(&pairs, http10, kind);
    let got = h1::ConnectionHeader::of(headers).carries_upgrade(http10, kind);
    if got != want {
        return Err(format!(
            "upgrade carried: {got}; the model says {want} (HTTP/1.0: {http10}, {kind:?}) for \
             {:?}",
            pairs
                .iter()
                .map(|(n, v)| format!(
                    "{}: {}",
                    String::from_utf8_lossy(n),
                    String::from_utf8_lossy(v)
                ))
                .collect::<Vec<_>>()
        ));
    }
    Ok(got)
}

/// What a body's first bytes are, for one framing.
pub type BodyModel = Box<dyn Fn(&[u8]) -> Body>;

/// The model of a body framed as `kind`.
pub fn body_model(kind: BodyKind) -> BodyModel {
    match kind {
        BodyKind::None => Box::new(length(0)),
        BodyKind::Length(n) => Box::new(length(n)),
        BodyKind::Chunked => Box::new(chunked),
        BodyKind::UntilClose => Box::new(until_close),
    }
}

/// Reads a message from `msg` arriving in pieces ending at `cuts`, as the proxy does: the
/// head is parsed once [`h1::may_end_head`] says its end may have arrived (it must say so
/// by the read that completes it: httparse, run after every read, is the reference), then
/// framed by [`h1::framing`] (checked against the model; a request's upgrade decision
/// too), then its body followed across the remaining pieces (checked against the model).
pub fn message(msg: &[u8], cuts: &[usize], request: bool) -> Result<(), String> {
    let mut ends: Vec<usize> = cuts
        .iter()
        .map(|&c| c.min(msg.len()))
        .filter(|&c| c > 0)
        .collect();
    ends.push(msg.len());
    ends.sort_unstable();
    ends.dedup();
    let mut scanned = 0;
    for (k, &end) in ends.iter().enumerate() {
        let buf = &msg[..end];
        let mut hs = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
        let (parsed, version) = if request {
            let mut r = httparse::Request::new(&mut hs);
            (r.parse(buf), r.version)
        } else {
            let mut r = httparse::Response::new(&mut hs);
            (r.parse(buf), r.version)
        };
        let looks = h1::may_end_head(buf, &mut scanned);
        let n = match parsed {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) | Err(_) => continue,
        };
        if !looks {
            return Err(format!(
                "a {n}-byte head is complete after {end} bytes but may_end_head did not see its \
                 end"
            ));
        }
        let headers: Vec<httparse::Header> = hs
            .iter()
            .take_while(|h| !h.name.is_empty())
            .copied()
            .collect();
        let Some(kind) = check_framing(&headers, request, version == Some(0))? else {
            return Ok(());
        };
        if request {
            check_upgrade(&headers, version == Some(0), kind)?;
        }
        let body = &msg[n..];
        // The rest of this read, then the later reads.
        let rest: Vec<usize> = ends[k + 1..].iter().map(|e| e - n).collect();
        return follow(Framing::new(kind), body, &rest, body_model(kind));
    }
    Ok(())
}
