//! The cluster bus protocol, version 1: the bytes on the TCP links between the (at most
//! three) servers of an Oxbus cluster. `BUS.md` beside this crate is the specification; this
//! module implements it as a pure library (no sockets, no clock, no tasks), so that the
//! runtime only moves frames between a socket and these functions. The golden vectors in
//! `testdata/bus-v1/` pin every byte, the handshake proofs included.
//!
//! - Frames: [`Frame`], [`FrameDecoder`] (the 10-byte header of the IPC protocol, its own
//!   [`Kind`] table), [`encode_call`] / [`encode_reply`] for the `CALL` / `REPLY` layout.
//! - Authentication: [`derive_key`], [`transcript`], [`proof`], [`verify`], and the
//!   handshake as typestate machines: [`Dialer`] → [`DialerAuthenticated`] and
//!   [`Acceptor`] → [`AcceptorChallenged`] → [`AcceptorVerified`], each ending in a [`Link`].
//! - After the handshake: [`Link::parse`] checks and types every incoming frame
//!   ([`Incoming`]); [`Op::parse`] reads a `CALL`'s meta; [`StreamIds`] allocates stream ids.
//!
//! Every error that the peer should hear about becomes an `ERROR` frame with
//! [`Error::to_frame`]; the connection is closed after it.
//!
//! This file owns the constants, frames and their framing, kinds, roles, stream ids and
//! names; `error.rs` the error type and codes, `auth.rs` the keys and proofs,
//! `handshake.rs` the handshake machines, `link.rs` an established link, `messages.rs` the
//! JSON payloads.

use bytes::{Bytes, BytesMut};
use std::time::Duration;

mod auth;
mod error;
mod handshake;
mod link;
mod messages;

pub use auth::*;
pub use error::*;
pub use handshake::*;
pub use link::*;
pub use messages::*;

/// The bus protocol version this crate speaks; sent in `HELLO` and `CHALLENGE`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The default TCP port of the cluster bus.
pub const DEFAULT_PORT: u16 = 17020;

/// At most this many servers form a cluster.
pub const MAX_SERVERS: usize = 3;

/// Size of the fixed frame header (the IPC protocol's layout).
pub const HEADER_LEN: usize = crate::wire::HEADER_LEN;

/// Hard upper bound of a frame payload (64 MiB).
pub const MAX_PAYLOAD: usize = crate::wire::MAX_PAYLOAD;

/// Upper bound of a frame payload until the handshake is complete: an unauthenticated peer
/// never makes a server buffer more than this.
pub const HANDSHAKE_MAX_PAYLOAD: usize = 4096;

/// Flag bit: a `CALL` that expects no `REPLY`. Allowed on `CALL` only.
pub const FLAG_ASYNC: u8 = 0x01;
const KNOWN_FLAGS: u8 = FLAG_ASYNC;

/// The bit that marks a stream opened by the acceptor of the connection.
pub const ACCEPTOR_STREAM_BIT: u32 = 0x8000_0000;

/// Each side sends a `PING` this often once the link is up.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// A link on which no byte arrived for this long is dead.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(3);

/// A connection whose handshake has not completed after this long is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The first reconnect delay (before jitter).
pub const RECONNECT_MIN: Duration = Duration::from_millis(100);

/// The reconnect delay stops doubling here (before jitter).
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// The longest server or cluster name, in bytes.
pub const MAX_NAME_LEN: usize = 63;

/// Frame kinds of the cluster bus (one byte on the wire; not the IPC protocol's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    Hello = 1,
    Challenge = 2,
    Auth = 3,
    Welcome = 4,
    Call = 5,
    Reply = 6,
    Ping = 7,
    Pong = 8,
    Notify = 9,
    Bye = 10,
    Error = 15,
}

impl Kind {
    /// Every kind, in code order.
    pub const ALL: [Kind; 11] = [
        Kind::Hello,
        Kind::Challenge,
        Kind::Auth,
        Kind::Welcome,
        Kind::Call,
        Kind::Reply,
        Kind::Ping,
        Kind::Pong,
        Kind::Notify,
        Kind::Bye,
        Kind::Error,
    ];

    /// The kind for a wire code.
    pub fn from_u8(code: u8) -> Result<Kind> {
        Kind::ALL
            .iter()
            .copied()
            .find(|k| *k as u8 == code)
            .ok_or(Error::UnknownKind(code))
    }

    /// The name used in `BUS.md` and in the golden vectors.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Hello => "HELLO",
            Kind::Challenge => "CHALLENGE",
            Kind::Auth => "AUTH",
            Kind::Welcome => "WELCOME",
            Kind::Call => "CALL",
            Kind::Reply => "REPLY",
            Kind::Ping => "PING",
            Kind::Pong => "PONG",
            Kind::Notify => "NOTIFY",
            Kind::Bye => "BYE",
            Kind::Error => "ERROR",
        }
    }

    /// `CALL` and `REPLY` belong to a stream; every other kind is connection-level
    /// (stream 0).
    pub fn has_stream(self) -> bool {
        matches!(self, Kind::Call | Kind::Reply)
    }

    /// The flag bits this kind may carry.
    pub fn allowed_flags(self) -> u8 {
        match self {
            Kind::Call => FLAG_ASYNC,
            _ => 0,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One decoded frame. The payload shares the receive buffer (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub flags: u8,
    pub stream: u32,
    pub payload: Bytes,
}

impl Frame {
    /// A frame with no flags.
    pub fn new(kind: Kind, stream: u32, payload: impl Into<Bytes>) -> Frame {
        Frame {
            kind,
            flags: 0,
            stream,
            payload: payload.into(),
        }
    }

    /// A connection-level frame whose payload is `value` as compact JSON.
    pub fn json<T: serde::Serialize>(kind: Kind, value: &T) -> Frame {
        let payload = serde_json::to_vec(value).expect("serialising a message cannot fail");
        Frame::new(kind, 0, payload)
    }

    /// `PING` with an 8-byte nonce.
    pub fn ping(nonce: [u8; 8]) -> Frame {
        Frame::new(Kind::Ping, 0, nonce.to_vec())
    }

    /// `PONG` answering the `PING` that carried `nonce`.
    pub fn pong(nonce: [u8; 8]) -> Frame {
        Frame::new(Kind::Pong, 0, nonce.to_vec())
    }

    /// `NOTIFY`: this server wrote a config version to the store.
    pub fn notify(notify: &Notify) -> Frame {
        Frame::json(Kind::Notify, notify)
    }

    /// `BYE`: a graceful close.
    pub fn bye() -> Frame {
        Frame::new(Kind::Bye, 0, Bytes::new())
    }

    /// `ERROR` with `code` and a human-readable `message`.
    pub fn error(code: ErrorCode, message: &str) -> Frame {
        Frame::json(
            Kind::Error,
            &ErrorMsg {
                code: code.as_str().to_owned(),
                message: message.to_owned(),
            },
        )
    }

    /// Appends the wire bytes of this frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        crate::wire::put_frame(out, self.kind as u8, self.flags, self.stream, &self.payload);
    }

    /// The wire bytes of this frame.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(HEADER_LEN + self.payload.len());
        self.encode(&mut out);
        out.freeze()
    }

    /// Parses the payload as JSON into `T`; a failure is a protocol error.
    pub fn parse_json<'a, T: serde::Deserialize<'a>>(&'a self) -> Result<T> {
        serde_json::from_slice(&self.payload).map_err(|e| Error::BadPayload {
            kind: self.kind,
            reason: e.to_string(),
        })
    }

    /// Splits a `CALL` / `REPLY` payload into its JSON meta and raw body.
    pub fn split_meta(&self) -> Result<(Bytes, Bytes)> {
        split_meta(&self.payload)
    }
}

/// Checks the header of a frame: flags allowed on its kind, stream 0 for connection-level
/// kinds, a real stream id for `CALL` / `REPLY`.
pub(crate) fn check_header(kind: Kind, flags: u8, stream: u32) -> Result<()> {
    if flags & !KNOWN_FLAGS != 0 {
        return Err(Error::UnknownFlags(flags & !KNOWN_FLAGS));
    }
    if flags & !kind.allowed_flags() != 0 {
        return Err(Error::FlagsNotAllowed { kind, flags });
    }
    if kind.has_stream() {
        if stream_owner(stream).is_none() {
            return Err(Error::BadStream {
                kind,
                stream,
                rule: "CALL and REPLY need a stream id other than 0 and 0x80000000",
            });
        }
    } else if stream != 0 {
        return Err(Error::BadStream {
            kind,
            stream,
            rule: "connection-level frames use stream 0",
        });
    }
    Ok(())
}

/// Splits a `CALL` / `REPLY` payload: `meta_len` u32, meta, body.
pub fn split_meta(payload: &Bytes) -> Result<(Bytes, Bytes)> {
    crate::wire::split_meta::<Frame>(payload)
}

/// Appends a `CALL` or `REPLY` frame whose meta is `meta` (already JSON) and body `body`.
/// Refuses a header the decoder would refuse, and a payload above [`MAX_PAYLOAD`].
pub fn encode_meta_frame(
    out: &mut BytesMut,
    kind: Kind,
    flags: u8,
    stream: u32,
    meta: &[u8],
    body: &[u8],
) -> Result<()> {
    if !kind.has_stream() {
        return Err(Error::BadStream {
            kind,
            stream,
            rule: "only CALL and REPLY carry meta and body",
        });
    }
    check_header(kind, flags, stream)?;
    crate::wire::encode_meta_frame::<Frame>(out, kind as u8, flags, stream, meta, body)
}

/// Appends a `CALL` frame on `stream` (see [`StreamIds`]), serialising `meta` (an [`Op`], or
/// any JSON object with an `op`) straight into the buffer. `flags` is 0 or [`FLAG_ASYNC`].
pub fn encode_call<M: serde::Serialize>(
    out: &mut BytesMut,
    flags: u8,
    stream: u32,
    meta: &M,
    body: &[u8],
) -> Result<()> {
    check_header(Kind::Call, flags, stream)?;
    crate::wire::encode_serialized::<Frame, _>(out, Kind::Call as u8, flags, stream, meta, body)
}

/// Appends a `REPLY` frame answering the call on `stream`: meta `{"status": N}`, then `body`.
pub fn encode_reply(out: &mut BytesMut, stream: u32, status: u16, body: &[u8]) -> Result<()> {
    check_header(Kind::Reply, 0, stream)?;
    crate::wire::encode_serialized::<Frame, _>(
        out,
        Kind::Reply as u8,
        0,
        stream,
        &ReplyMeta { status },
        body,
    )
}

impl crate::wire::WireFrame for Frame {
    type Kind = Kind;
    type Error = Error;

    fn too_large(len: usize, max: usize) -> Error {
        Error::TooLarge { len, max }
    }

    fn bad_meta_length(meta_len: usize, payload_len: usize) -> Error {
        Error::BadMetaLength {
            meta_len,
            payload_len,
        }
    }

    fn check_header(header: &crate::wire::Header) -> Result<Kind> {
        let kind = Kind::from_u8(header.kind)?;
        check_header(kind, header.flags, header.stream)?;
        Ok(kind)
    }

    fn from_wire(kind: Kind, header: &crate::wire::Header, payload: Bytes) -> Frame {
        Frame {
            kind,
            flags: header.flags,
            stream: header.stream,
            payload,
        }
    }
}

/// Incremental decoder: feed bytes into a `BytesMut`, take whole frames out.
#[derive(Debug, Clone, Default)]
pub struct FrameDecoder(crate::wire::Decoder<Frame>);

impl FrameDecoder {
    /// A decoder that refuses payloads above `max_payload` (capped at [`MAX_PAYLOAD`]).
    pub fn with_max_payload(max_payload: usize) -> FrameDecoder {
        FrameDecoder(crate::wire::Decoder::with_max_payload(max_payload))
    }

    /// The decoder to use until the handshake is complete ([`HANDSHAKE_MAX_PAYLOAD`]).
    pub fn handshake() -> FrameDecoder {
        FrameDecoder::with_max_payload(HANDSHAKE_MAX_PAYLOAD)
    }

    /// The largest payload this decoder accepts.
    pub fn max_payload(&self) -> usize {
        self.0.max_payload()
    }

    /// Takes the next complete frame off the front of `buf`, or `Ok(None)` when more bytes
    /// are needed. An oversized length, an unknown kind, unknown or misplaced flags and a
    /// stream id that does not fit the kind are errors, found from the header alone, before
    /// the payload is buffered.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>> {
        self.0.decode(buf)
    }
}

/// The two ends of a link: the server whose name sorts first (byte order) dials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Dialer,
    Acceptor,
}

impl Role {
    /// The role of server `local` on its link with server `peer`: [`Role::Dialer`] when
    /// `local` sorts first, [`Role::Acceptor`] when `peer` does, `None` for the same name.
    pub fn between(local: &str, peer: &str) -> Option<Role> {
        match local.as_bytes().cmp(peer.as_bytes()) {
            std::cmp::Ordering::Less => Some(Role::Dialer),
            std::cmp::Ordering::Greater => Some(Role::Acceptor),
            std::cmp::Ordering::Equal => None,
        }
    }

    /// The role's name in the handshake transcript: `dialer` or `acceptor`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Dialer => "dialer",
            Role::Acceptor => "acceptor",
        }
    }

    /// The other end's role.
    pub fn peer(self) -> Role {
        match self {
            Role::Dialer => Role::Acceptor,
            Role::Acceptor => Role::Dialer,
        }
    }

    /// Whether `stream` is one this role opens.
    pub fn owns(self, stream: u32) -> bool {
        stream_owner(stream) == Some(self)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which side opened `stream`: the dialer's ids have the high bit clear, the acceptor's have
/// it set. `None` for 0 and 0x8000_0000, which are not call streams.
pub fn stream_owner(stream: u32) -> Option<Role> {
    match (
        stream & ACCEPTOR_STREAM_BIT != 0,
        stream & !ACCEPTOR_STREAM_BIT,
    ) {
        (_, 0) => None,
        (false, _) => Some(Role::Dialer),
        (true, _) => Some(Role::Acceptor),
    }
}

/// Allocates the stream ids of one side of a link: sequentially through its half of the id
/// space (1 ..= 0x7FFF_FFFF, with [`ACCEPTOR_STREAM_BIT`] for the acceptor), wrapping after
/// the last, so an id comes back only after 2^31 - 1 other calls.
#[derive(Debug, Clone)]
pub struct StreamIds {
    role: Role,
    next: u32,
}

impl StreamIds {
    /// The ids of `role`, starting with its first.
    pub fn new(role: Role) -> StreamIds {
        StreamIds { role, next: 1 }
    }

    /// The next id. The caller skips one whose call is still awaited (after a wrap).
    pub fn next_id(&mut self) -> u32 {
        let n = self.next;
        self.next = if n == !ACCEPTOR_STREAM_BIT { 1 } else { n + 1 };
        match self.role {
            Role::Dialer => n,
            Role::Acceptor => n | ACCEPTOR_STREAM_BIT,
        }
    }
}

/// How long the dialer waits before reconnect attempt `attempt` (0 for the first retry after
/// a link was lost or a dial failed): the base delay is [`RECONNECT_MIN`] doubled per
/// attempt up to [`RECONNECT_MAX`]; the wait is drawn from the upper half of it,
/// `base/2 + random % (base/2 + 1)` milliseconds, so servers that lost the same peer do not
/// redial in step. `random` is any random number.
pub fn reconnect_delay(attempt: u32, random: u32) -> Duration {
    let min = RECONNECT_MIN.as_millis() as u64;
    let max = RECONNECT_MAX.as_millis() as u64;
    let base = min.checked_shl(attempt.min(16)).unwrap_or(max).min(max);
    let half = base / 2;
    Duration::from_millis(half + u64::from(random) % (half + 1))
}

/// Checks a server or cluster name: 1 to [`MAX_NAME_LEN`] bytes of `a-z`, `0-9`, `.`, `_`,
/// `-`, starting with a letter or a digit. `what` names it in the error ("server",
/// "cluster").
pub fn check_name(what: &'static str, name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::BadName {
            what,
            name: name.to_owned(),
            reason,
        })
    };
    let b = name.as_bytes();
    if b.is_empty() {
        return bad("it is empty");
    }
    if b.len() > MAX_NAME_LEN {
        return bad("it is too long");
    }
    if !(b[0].is_ascii_lowercase() || b[0].is_ascii_digit()) {
        return bad("it must start with a lower-case letter or a digit");
    }
    if !b
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-'))
    {
        return bad("it has a character other than a-z, 0-9, '.', '_', '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
