//! The HTTP/1.1 pieces the proxy's data path is made of: reading a request or response head
//! (parsed by `httparse`), deciding how its body is framed, rewriting the head for the other
//! side, and tracking a body's end while its bytes are forwarded as they came.
//!
//! Bodies are never decoded or re-encoded: a chunked body goes through byte for byte, and
//! [`Framing`] only follows its chunk sizes to know where it ends. That is what lets one task
//! move a request and its answer with one read and one write on each side.

/// Headers a head may carry; more is answered 431 (a request) or 502 (a response). In a
/// request the forwarding headers ([`FORWARDING_HEADERS`]) do not count: a proxy in front
/// of a server sets them, and a request a server accepts when sent to it directly must be
/// accepted through the proxy too.
pub const MAX_HEADERS: usize = 100;

/// Room for forwarding headers beyond [`MAX_HEADERS`] in a request: its head may carry
/// [`MAX_HEADER_FIELDS`] fields in all. A proxy adds at most four (one of each of
/// [`FORWARDING_HEADERS`], the client's own replaced or merged), so what it forwards of a
/// request it accepted fits.
pub const FORWARDING_ROOM: usize = 8;

/// The fields a request head may carry in all (see [`MAX_HEADERS`]).
pub const MAX_HEADER_FIELDS: usize = MAX_HEADERS + FORWARDING_ROOM;

/// The headers a proxy sets on the way to a server: not counted against [`MAX_HEADERS`].
pub const FORWARDING_HEADERS: [&str; 4] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-request-id",
];

/// Whether a request head carries more than [`MAX_HEADERS`] headers besides the forwarding
/// ones (the rule both edges answer 431 by).
pub fn too_many_headers(headers: &[httparse::Header]) -> bool {
    headers.len() > MAX_HEADERS
        && headers
            .iter()
            .filter(|h| {
                !FORWARDING_HEADERS
                    .iter()
                    .any(|f| h.name.eq_ignore_ascii_case(f))
            })
            .count()
            > MAX_HEADERS
}

/// Bound on a chunk-size line's extension and on a chunked body's trailer section.
const MAX_CHUNK_META: u32 = 8 * 1024;

/// How a message's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    None,
    Length(u64),
    Chunked,
    /// A response read until the server closes the connection.
    UntilClose,
}

/// Why a head is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bad(pub &'static str);

/// Hop-by-hop headers besides those `Connection` names (RFC 9110 §7.6.1). Framing headers
/// (`Transfer-Encoding`, `Content-Length`) are kept: bodies are forwarded as they came.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Comma-separated tokens of a header value, trimmed.
fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Whether `buf` may hold the end of a head (a blank line: `\n\n` or `\n\r\n`, as httparse
/// reads them) at or after `scanned`, which then moves to where the next search starts (a
/// few bytes back, for an end split between reads).
pub fn may_end_head(buf: &[u8], scanned: &mut usize) -> bool {
    let from = (*scanned).min(buf.len());
    let found = buf[from..].iter().enumerate().any(|(i, &b)| {
        b == b'\n' && {
            let rest = &buf[from + i + 1..];
            rest.first() == Some(&b'\n') || rest.starts_with(b"\r\n")
        }
    });
    *scanned = buf.len().saturating_sub(2);
    found
}

/// Whether a comma-separated header value holds `token` (case-insensitive).
pub fn has_token(v: &[u8], token: &[u8]) -> bool {
    tokens(v).any(|t| t.eq_ignore_ascii_case(token))
}

/// The one protocol an upgrade is carried to: WebSocket (RFC 6455), the only one an Oxbus
/// server switches to ([`ConnectionHeader::carries_upgrade`]).
pub const CARRIED_UPGRADE: &[u8] = b"websocket";

/// What the `Connection` headers of a head say: `close`, `keep-alive`, `upgrade`, and the
/// other headers they name (hop-by-hop for this hop only).
#[derive(Debug)]
pub struct ConnectionHeader<'h, 'b> {
    pub close: bool,
    pub keep_alive: bool,
    /// The `upgrade` token: the head asks for (or, in a 101, makes) a protocol switch.
    pub upgrade: bool,
    /// They name other headers (rare): only then is a header's name looked up among them.
    names: bool,
    headers: &'h [httparse::Header<'b>],
}

/// `Connection` tokens that are not names of other headers. The framing headers never are
/// taken as such: the body is framed by them on both hops (dropping one would let the next
/// hop read the body as another request).
fn names_a_header(t: &[u8]) -> bool {
    !["close", "keep-alive", "content-length", "transfer-encoding"]
        .iter()
        .any(|k| t.eq_ignore_ascii_case(k.as_bytes()))
}

impl<'h, 'b> ConnectionHeader<'h, 'b> {
    pub fn of(headers: &'h [httparse::Header<'b>]) -> Self {
        let mut c = ConnectionHeader {
            close: false,
            keep_alive: false,
            upgrade: false,
            names: false,
            headers,
        };
        for t in c.tokens() {
            c.close |= t.eq_ignore_ascii_case(b"close");
            c.keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
            c.upgrade |= t.eq_ignore_ascii_case(b"upgrade");
            c.names |= names_a_header(t);
        }
        c
    }

    /// Whether a request's protocol upgrade (RFC 9110 §7.8) is carried: an HTTP/1.1 request
    /// with an `Upgrade` header naming [`CARRIED_UPGRADE`] (`websocket`, in any case, alone
    /// or in a list), `Connection` naming `upgrade`, and no body (`body`: its framing). Only
    /// then does the server get `Upgrade: websocket` and `Connection: upgrade`, and a `101`
    /// from it that [`switches_to_websocket`](Self::switches_to_websocket) opens a tunnel.
    ///
    /// Otherwise both are hop-by-hop as ever: dropped, and the request is a plain one (its
    /// connection kept alive as any other's). An HTTP/1.0 request's `Upgrade` is to be
    /// ignored (RFC 9110 §7.8). A request with a body would switch only after its body, so
    /// the tunnel would have to follow the body's framing first; a WebSocket handshake is a
    /// GET without a body. Any other protocol (`h2c`, say: what `curl --http2` asks of an
    /// `http://` URL) is not one an Oxbus server switches to, and carrying it would only
    /// cost the connection its keep-alive and open the way to upgrade smuggling (a server
    /// behind the proxy that switches, or claims to, to a protocol the proxy cannot follow).
    pub fn carries_upgrade(&self, http10: bool, body: BodyKind) -> bool {
        self.upgrade
            && !http10
            && body == BodyKind::None
            && self
                .upgrade_tokens()
                .any(|t| t.eq_ignore_ascii_case(CARRIED_UPGRADE))
    }

    /// Whether a `101 Switching Protocols` answering a carried upgrade is the switch that was
    /// asked for: an HTTP/1.1 answer (`http11`) whose `Connection` names `upgrade` and whose
    /// `Upgrade` names [`CARRIED_UPGRADE`] and nothing else (the server was offered nothing
    /// else). Any other `101` is not followed: what comes after it is no HTTP the proxy can
    /// read, nor a tunnel the client asked for.
    pub fn switches_to_websocket(&self, http11: bool) -> bool {
        let mut named = false;
        for t in self.upgrade_tokens() {
            if !t.eq_ignore_ascii_case(CARRIED_UPGRADE) {
                return false;
            }
            named = true;
        }
        http11 && self.upgrade && named
    }

    /// The protocols the `Upgrade` headers name, in order.
    fn upgrade_tokens(&self) -> impl Iterator<Item = &'b [u8]> + 'h {
        self.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("upgrade"))
            .flat_map(|h| tokens(h.value))
    }

    fn tokens(&self) -> impl Iterator<Item = &'b [u8]> + 'h {
        self.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| tokens(h.value))
    }

    /// Whether `name` is to be dropped when forwarding.
    pub fn drops(&self, name: &str) -> bool {
        is_hop_by_hop(name)
            || (self.names
                && self
                    .tokens()
                    .any(|t| names_a_header(t) && t.eq_ignore_ascii_case(name.as_bytes())))
    }
}

/// The body framing a head announces (RFC 9112 §6.3). `Content-Length` and
/// `Transfer-Encoding` together are refused in a request (a smuggling vector); in a response
/// `Transfer-Encoding` wins and `drop_length` says the length must not be forwarded.
///
/// A request's `Transfer-Encoding` must be one header holding the one coding `chunked`:
/// no server behind either edge decodes any other coding, and every other shape (a second
/// header, an empty list element, `identity`, a coding before `chunked`) is one that two
/// parsers may read differently — a hop that reads only the first header, or skips empty
/// elements, would frame the body otherwise. The server's edge refuses by this same function.
pub struct Framed {
    pub kind: BodyKind,
    pub drop_length: bool,
}

pub fn framing(headers: &[httparse::Header], request: bool, http10: bool) -> Result<Framed, Bad> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut te = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            // A list of lengths ("5, 5") is allowed by RFC 9110 but read by some parsers
            // (hyper among them) as invalid: in a request it is refused outright.
            if request && h.value.contains(&b',') {
                return Err(Bad("invalid Content-Length"));
            }
            for t in h.value.split(|&b| b == b',') {
                let t = t.trim_ascii();
                if t.is_empty() || t.len() > 19 || !t.iter().all(u8::is_ascii_digit) {
                    return Err(Bad("invalid Content-Length"));
                }
                let n: u64 = std::str::from_utf8(t)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(Bad("invalid Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(Bad("conflicting Content-Length headers"));
                }
                length = Some(n);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if request {
                if http10 {
                    return Err(Bad("Transfer-Encoding in an HTTP/1.0 request"));
                }
                if te {
                    return Err(Bad("more than one Transfer-Encoding header"));
                }
                if h.value
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().is_empty())
                {
                    return Err(Bad("an empty element in Transfer-Encoding"));
                }
                if !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return Err(Bad("a Transfer-Encoding other than chunked"));
                }
            }
            te = true;
            // Only the last coding decides; it must be chunked for the body to end.
            for t in tokens(h.value) {
                chunked = t.eq_ignore_ascii_case(b"chunked");
            }
        }
    }
    if te {
        if request {
            if http10 {
                return Err(Bad("Transfer-Encoding in an HTTP/1.0 request"));
            }
            if length.is_some() {
                return Err(Bad("both Content-Length and Transfer-Encoding"));
            }
            if !chunked {
                return Err(Bad("a Transfer-Encoding that does not end with chunked"));
            }
            return Ok(Framed {
                kind: BodyKind::Chunked,
                drop_length: false,
            });
        }
        return Ok(Framed {
            kind: if chunked {
                BodyKind::Chunked
            } else {
                BodyKind::UntilClose
            },
            drop_length: length.is_some(),
        });
    }
    Ok(Framed {
        kind: match length {
            Some(0) => BodyKind::None,
            Some(n) => BodyKind::Length(n),
            None if request => BodyKind::None,
            None => BodyKind::UntilClose,
        },
        drop_length: false,
    })
}

/// Follows a body's framing over the bytes that go through.
#[derive(Debug, Clone)]
pub enum Framing {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Reading a chunk size (hex digits so far, their value).
    Size {
        digits: u8,
        value: u64,
    },
    /// Whitespace after the size: only `;` (an extension) or the line's end may follow.
    SizeWs {
        value: u64,
    },
    /// A chunk extension, to the end of the line.
    Ext {
        len: u32,
        value: u64,
    },
    SizeLf {
        value: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// The start of a trailer line (or the final blank line).
    TrailerStart {
        used: u32,
    },
    TrailerLine {
        used: u32,
    },
    TrailerLf {
        used: u32,
    },
    EndLf,
}

impl Framing {
    pub fn new(kind: BodyKind) -> Self {
        match kind {
            BodyKind::None | BodyKind::Length(0) => Framing::Done,
            BodyKind::Length(n) => Framing::Length(n),
            BodyKind::Chunked => Framing::Chunked(Chunk::Size {
                digits: 0,
                value: 0,
            }),
            BodyKind::UntilClose => Framing::UntilClose,
        }
    }

    pub fn done(&self) -> bool {
        matches!(self, Framing::Done)
    }

    /// How many of `data`'s leading bytes belong to the body; the framing is [`Framing::Done`]
    /// once its last byte is among them.
    pub fn advance(&mut self, data: &[u8]) -> Result<usize, Bad> {
        match self {
            Framing::Done => Ok(0),
            Framing::UntilClose => Ok(data.len()),
            Framing::Length(left) => {
                let take = (*left).min(data.len() as u64);
                *left -= take;
                if *left == 0 {
                    *self = Framing::Done;
                }
                Ok(take as usize)
            }
            Framing::Chunked(state) => {
                let mut st = *state;
                let mut i = 0;
                while i < data.len() {
                    if let Chunk::Data(n) = st {
                        let take = n.min((data.len() - i) as u64);
                        i += take as usize;
                        st = if take == n {
                            Chunk::DataCr
                        } else {
                            Chunk::Data(n - take)
                        };
                        continue;
                    }
                    let before = st;
                    st = chunk_byte(st, data[i])?;
                    i += 1;
                    if before == Chunk::EndLf {
                        *self = Framing::Done;
                        return Ok(i);
                    }
                }
                *state = st;
                Ok(i)
            }
        }
    }
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

/// One byte of chunk framing outside chunk data. After `EndLf` accepts its LF the body has
/// ended (the caller sees `EndLf` as the state the byte was read in).
fn chunk_byte(s: Chunk, b: u8) -> Result<Chunk, Bad> {
    Ok(match s {
        Chunk::Size { digits, value } => match b {
            b'\r' if digits > 0 => Chunk::SizeLf { value },
            b';' if digits > 0 => Chunk::Ext { len: 1, value },
            b' ' | b'\t' if digits > 0 => Chunk::SizeWs { value },
            _ => {
                let d = hex(b).ok_or(Bad("invalid chunk size"))?;
                if digits >= 15 {
                    return Err(Bad("chunk size too large"));
                }
                Chunk::Size {
                    digits: digits + 1,
                    value: value * 16 + d,
                }
            }
        },
        Chunk::SizeWs { value } => match b {
            b' ' | b'\t' => Chunk::SizeWs { value },
            b';' => Chunk::Ext { len: 1, value },
            b'\r' => Chunk::SizeLf { value },
            _ => return Err(Bad("invalid chunk size line")),
        },
        Chunk::Ext { len, value } => match b {
            b'\r' => Chunk::SizeLf { value },
            b'\n' => return Err(Bad("bare LF in a chunk extension")),
            _ if len >= MAX_CHUNK_META => return Err(Bad("chunk extension too long")),
            _ => Chunk::Ext {
                len: len + 1,
                value,
            },
        },
        Chunk::SizeLf { value } => match b {
            b'\n' if value == 0 => Chunk::TrailerStart { used: 0 },
            b'\n' => Chunk::Data(value),
            _ => return Err(Bad("invalid chunk size line")),
        },
        Chunk::DataCr => match b {
            b'\r' => Chunk::DataLf,
            _ => return Err(Bad("chunk data longer than its size")),
        },
        Chunk::DataLf => match b {
            b'\n' => Chunk::Size {
                digits: 0,
                value: 0,
            },
            _ => return Err(Bad("chunk data longer than its size")),
        },
        Chunk::TrailerStart { used } => match b {
            b'\r' => Chunk::EndLf,
            b'\n' => return Err(Bad("bare LF in trailers")),
            _ if used >= MAX_CHUNK_META => return Err(Bad("trailers too long")),
            _ => Chunk::TrailerLine { used: used + 1 },
        },
        Chunk::TrailerLine { used } => match b {
            b'\r' => Chunk::TrailerLf { used },
            b'\n' => return Err(Bad("bare LF in trailers")),
            _ if used >= MAX_CHUNK_META => return Err(Bad("trailers too long")),
            _ => Chunk::TrailerLine { used: used + 1 },
        },
        Chunk::TrailerLf { used } => match b {
            b'\n' => Chunk::TrailerStart { used: used + 2 },
            _ => return Err(Bad("invalid trailer line")),
        },
        Chunk::EndLf => match b {
            b'\n' => Chunk::EndLf,
            _ => return Err(Bad("invalid end of a chunked body")),
        },
        Chunk::Data(_) => unreachable!("chunk data is taken in bulk"),
    })
}

/// Appends `name: value\r\n`.
pub fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends a status code (100-999, as httparse reads it) and a space.
pub fn put_status(out: &mut Vec<u8>, status: u16) {
    let s = status.clamp(100, 999);
    out.extend_from_slice(&[
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
        b' ',
    ]);
}

/// Whether a method may be sent twice (RFC 9110 §9.2.2): a request that may have reached a
/// server is retried only then.
pub fn idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// The reason phrase to write for a status when the server sent none.
pub fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdrs<'a>(list: &[(&'a str, &'a [u8])]) -> Vec<httparse::Header<'a>> {
        list.iter()
            .map(|(n, v)| httparse::Header { name: n, value: v })
            .collect()
    }

    /// Feeds `body` to a fresh chunked framing in pieces of `step` bytes; returns the bytes
    /// taken and whether it ended.
    fn feed(body: &[u8], step: usize) -> Result<(usize, bool), Bad> {
        let mut f = Framing::new(BodyKind::Chunked);
        let mut taken = 0;
        for piece in body.chunks(step) {
            let n = f.advance(piece)?;
            taken += n;
            if f.done() {
                return Ok((taken, true));
            }
            assert_eq!(n, piece.len(), "a piece is taken whole until the end");
        }
        Ok((taken, f.done()))
    }

    #[test]
    fn chunked_bodies_end_where_they_end_in_any_split() {
        let body =
            b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for step in 1..body.len() {
            assert_eq!(feed(body, step).unwrap(), (end, true), "step {step}");
        }
        // Without trailers; the next request follows.
        let b = b"3\r\nabc\r\n0\r\n\r\nGET";
        assert_eq!(feed(b, 1).unwrap(), (b.len() - 3, true));
        // Unfinished: everything taken, not done.
        assert_eq!(feed(b"3\r\nab", 2).unwrap(), (5, false));
    }

    #[test]
    fn whitespace_after_a_chunk_size_and_trailers_are_bounded() {
        let ok = b"3 \t;a=b\r\nabc\r\n0  \r\n\r\n";
        assert_eq!(feed(ok, 1).unwrap(), (ok.len(), true));
        // One-byte trailer lines count too, CRLFs included.
        let mut many = b"0\r\n".to_vec();
        for _ in 0..3000 {
            many.extend_from_slice(b"X\r\n");
        }
        assert!(feed(&many, 7).is_err());
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"3\r\nabcd\r\n",
            b"3\nabc",
            b"1234567890abcdef0\r\n",
            b"0\r\nX\n",
            // A size then a space then anything but `;` (hyper would read that line as a
            // request line: "1b /admin HTTP/1.1").
            b"1b /admin HTTP/1.1\r\n",
            b"3 x\r\nabc\r\n",
        ] {
            assert!(feed(bad, 1).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_head_end_is_found_across_reads_and_only_searched_in_new_bytes() {
        let mut scanned = 0;
        assert!(!may_end_head(b"GET / HTTP/1.1\r\nHost: x\r", &mut scanned));
        assert!(!may_end_head(
            b"GET / HTTP/1.1\r\nHost: x\r\n\r",
            &mut scanned
        ));
        assert!(may_end_head(
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            &mut scanned
        ));
        let mut scanned = 0;
        assert!(!may_end_head(b"GET / HTTP/1.1\nA: b\n", &mut scanned));
        assert!(may_end_head(b"GET / HTTP/1.1\nA: b\n\n", &mut scanned));
        // An end already searched past is not found again.
        let mut scanned = 0;
        assert!(may_end_head(b"\r\n\r\nGET", &mut scanned));
        assert!(!may_end_head(b"\r\n\r\nGET / HT", &mut scanned));
    }

    #[test]
    fn status_codes_are_written_as_three_digits() {
        let mut out = Vec::new();
        put_status(&mut out, 200);
        put_status(&mut out, 431);
        put_status(&mut out, 101);
        assert_eq!(out, b"200 431 101 ");
    }

    #[test]
    fn length_framing_takes_exactly_its_bytes() {
        let mut f = Framing::new(BodyKind::Length(5));
        assert_eq!(f.advance(b"abc").unwrap(), 3);
        assert!(!f.done());
        assert_eq!(f.advance(b"deNEXT").unwrap(), 2);
        assert!(f.done());
        assert_eq!(f.advance(b"NEXT").unwrap(), 0);
    }

    #[test]
    fn request_framing_refuses_smuggling_shapes() {
        let ok = |h: &[(&str, &[u8])]| framing(&hdrs(h), true, false).map(|f| f.kind);
        assert_eq!(ok(&[]), Ok(BodyKind::None));
        assert_eq!(ok(&[("Content-Length", b"12")]), Ok(BodyKind::Length(12)));
        assert_eq!(
            ok(&[("content-length", b"12"), ("Content-Length", b"12")]),
            Ok(BodyKind::Length(12))
        );
        assert_eq!(
            ok(&[("Transfer-Encoding", b" Chunked ")]),
            Ok(BodyKind::Chunked)
        );
        // Only `chunked`, alone, in one header.
        for te in [
            &[("Transfer-Encoding", &b"gzip, chunked"[..])][..],
            &[("Transfer-Encoding", b"chunked,")],
            &[("Transfer-Encoding", b",chunked")],
            &[("Transfer-Encoding", b"chunked, chunked")],
            &[("Transfer-Encoding", b"identity")],
            &[("Transfer-Encoding", b"")],
            &[
                ("Transfer-Encoding", b"identity"),
                ("Transfer-Encoding", b"chunked"),
            ],
            &[
                ("Transfer-Encoding", b"chunked"),
                ("Transfer-Encoding", b"chunked"),
            ],
        ] {
            assert!(ok(te).is_err(), "{te:?}");
        }
        assert!(ok(&[("Content-Length", b"12"), ("Content-Length", b"13")]).is_err());
        assert!(ok(&[("Content-Length", b"12, 13")]).is_err());
        assert!(ok(&[("Content-Length", b"-1")]).is_err());
        assert!(ok(&[("Content-Length", b"+1")]).is_err());
        assert!(ok(&[("Content-Length", b"1"), ("Transfer-Encoding", b"chunked")]).is_err());
        assert!(ok(&[("Transfer-Encoding", b"chunked, gzip")]).is_err());
        assert!(framing(&hdrs(&[("Transfer-Encoding", b"chunked")]), true, true).is_err());
        // Responses: no length means until close; TE beats a length, which is dropped.
        let resp = framing(&hdrs(&[]), false, false).unwrap();
        assert_eq!(resp.kind, BodyKind::UntilClose);
        let resp = framing(
            &hdrs(&[("Content-Length", b"3"), ("Transfer-Encoding", b"chunked")]),
            false,
            false,
        )
        .unwrap();
        assert_eq!(resp.kind, BodyKind::Chunked);
        assert!(resp.drop_length);
    }

    #[test]
    fn forwarding_headers_do_not_count_against_the_header_limit() {
        let names: Vec<String> = (0..MAX_HEADER_FIELDS).map(|i| format!("x-h{i}")).collect();
        let plain = |n: usize| -> Vec<httparse::Header> {
            names[..n]
                .iter()
                .map(|n| httparse::Header {
                    name: n,
                    value: b"v",
                })
                .collect()
        };
        assert!(!too_many_headers(&plain(MAX_HEADERS)));
        assert!(too_many_headers(&plain(MAX_HEADERS + 1)));
        let mut h = plain(MAX_HEADERS);
        for f in FORWARDING_HEADERS {
            h.push(httparse::Header {
                name: f,
                value: b"1",
            });
        }
        assert!(!too_many_headers(&h));
    }

    #[test]
    fn an_upgrade_is_carried_only_to_websocket_from_http11_without_a_body() {
        let ws = hdrs(&[
            ("Host", b"x"),
            ("Upgrade", b"websocket"),
            ("Connection", b"keep-alive, Upgrade"),
        ]);
        let c = ConnectionHeader::of(&ws);
        assert!(c.upgrade && c.keep_alive && !c.close);
        assert!(c.carries_upgrade(false, BodyKind::None));
        // HTTP/1.0, or a body: a plain request.
        assert!(!c.carries_upgrade(true, BodyKind::None));
        assert!(!c.carries_upgrade(false, BodyKind::Length(5)));
        assert!(!c.carries_upgrade(false, BodyKind::Chunked));
        // Both headers are needed: an Upgrade that Connection does not name, a Connection
        // naming an Upgrade that is absent or names no protocol; and the protocol must be
        // websocket (h2c is what `curl --http2` asks of an http:// URL).
        for h in [
            &[("Upgrade", &b"websocket"[..])][..],
            &[("Upgrade", b"websocket"), ("Connection", b"keep-alive")],
            &[("Upgrade", b"websocket"), ("Connection", b"upgrades")],
            &[("Connection", b"upgrade")],
            &[("Upgrade", b" , "), ("Connection", b"upgrade")],
            &[
                ("Upgrade", b"h2c"),
                ("Connection", b"Upgrade, HTTP2-Settings"),
            ],
            &[("Upgrade", b"websockets"), ("Connection", b"upgrade")],
            &[("Upgrade", b"websocket/13"), ("Connection", b"upgrade")],
            &[
                ("Upgrade", b"TLS/1.2, HTTP/1.1"),
                ("Connection", b"upgrade"),
            ],
        ] {
            let h = hdrs(h);
            assert!(
                !ConnectionHeader::of(&h).carries_upgrade(false, BodyKind::None),
                "{h:?}"
            );
        }
        // Tokens in any case, from any Connection or Upgrade header; websocket in a list.
        for h in [
            &[
                ("connection", &b"close"[..]),
                ("CONNECTION", b"UPGRADE"),
                ("upgrade", b"h2c, WebSocket"),
            ][..],
            &[
                ("Connection", b"upgrade"),
                ("Upgrade", b"h2c"),
                ("Upgrade", b"websocket"),
            ],
        ] {
            let h = hdrs(h);
            assert!(
                ConnectionHeader::of(&h).carries_upgrade(false, BodyKind::None),
                "{h:?}"
            );
        }
    }

    #[test]
    fn a_101_switches_only_to_websocket_over_http11_with_connection_upgrade() {
        let ok = hdrs(&[("Upgrade", b"WebSocket"), ("Connection", b"Upgrade")]);
        assert!(ConnectionHeader::of(&ok).switches_to_websocket(true));
        // An HTTP/1.0 answer.
        assert!(!ConnectionHeader::of(&ok).switches_to_websocket(false));
        for h in [
            // No Connection: upgrade.
            &[("Upgrade", &b"websocket"[..])][..],
            &[("Upgrade", b"websocket"), ("Connection", b"keep-alive")],
            // No Upgrade, an empty one, another protocol, or another one besides.
            &[("Connection", b"upgrade")],
            &[("Upgrade", b" , "), ("Connection", b"upgrade")],
            &[("Upgrade", b"h2c"), ("Connection", b"upgrade")],
            &[("Upgrade", b"websocket, h2c"), ("Connection", b"upgrade")],
            &[
                ("Upgrade", b"websocket"),
                ("Upgrade", b"h2c"),
                ("Connection", b"upgrade"),
            ],
        ] {
            let h = hdrs(h);
            assert!(
                !ConnectionHeader::of(&h).switches_to_websocket(true),
                "{h:?}"
            );
        }
    }

    #[test]
    fn connection_header_names_its_hop_by_hop_headers() {
        let h = hdrs(&[
            ("Connection", b"keep-alive, X-Private"),
            ("connection", b"close"),
        ]);
        let c = ConnectionHeader::of(&h);
        assert!(c.close && c.keep_alive);
        assert!(c.drops("x-private"));
        assert!(c.drops("Keep-Alive"));
        assert!(c.drops("upgrade"));
        assert!(!c.drops("content-type"));
        assert!(!c.drops("transfer-encoding"));
        // Framing headers stay whatever Connection says.
        let h = hdrs(&[("Connection", b"Content-Length, transfer-encoding")]);
        let c = ConnectionHeader::of(&h);
        assert!(!c.drops("content-length") && !c.drops("Transfer-Encoding"));
        let many: Vec<u8> = (0..20)
            .map(|i| format!("x-h{i},"))
            .collect::<String>()
            .into();
        let h = [httparse::Header {
            name: "Connection",
            value: &many,
        }];
        let c = ConnectionHeader::of(&h);
        assert!(c.drops("x-h0") && c.drops("x-h19") && !c.drops("x-h20"));
    }
}
