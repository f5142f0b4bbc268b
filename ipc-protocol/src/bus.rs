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

use bytes::{Bytes, BytesMut};
use std::time::Duration;

mod auth;
mod handshake;
mod messages;

pub use auth::*;
pub use handshake::*;
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

/// Errors of the cluster bus. [`Error::code`] names the `ERROR` code each one is reported
/// with, [`Error::to_frame`] builds that frame.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("frame payload of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("unknown flag bits {0:#04x}")]
    UnknownFlags(u8),
    #[error("flag bits {flags:#04x} are not allowed on {kind}")]
    FlagsNotAllowed { kind: Kind, flags: u8 },
    #[error("{kind} on stream {stream:#x}: {rule}")]
    BadStream {
        kind: Kind,
        stream: u32,
        rule: &'static str,
    },
    #[error("CALL/REPLY meta length {meta_len} exceeds the payload of {payload_len} bytes")]
    BadMetaLength { meta_len: usize, payload_len: usize },
    #[error("{kind} payload is invalid: {reason}")]
    BadPayload { kind: Kind, reason: String },
    #[error("unexpected {got} frame: expected {expected}")]
    Unexpected { got: Kind, expected: &'static str },
    #[error(
        "{what} {name:?} is not a valid name: {reason} (1 to 63 bytes of a-z, 0-9, '.', '_', \
         '-', starting with a letter or digit)"
    )]
    BadName {
        what: &'static str,
        name: String,
        reason: &'static str,
    },
    #[error(
        "server {local:?} speaks cluster bus protocol {ours}, its peer speaks {theirs}: every \
         server of a cluster must run an Oxbus release with the same bus protocol"
    )]
    ProtocolMismatch {
        local: String,
        ours: u32,
        theirs: u64,
    },
    #[error(
        "server {local:?} is in cluster {ours:?} but server {peer:?} is in cluster {theirs:?}: \
         check the cluster name in both servers' configuration"
    )]
    WrongCluster {
        local: String,
        ours: String,
        peer: String,
        theirs: String,
    },
    #[error(
        "server {local:?} dialed server {expected:?} but reached {got:?}: the address is stale \
         or belongs to another server"
    )]
    ReachedWrongServer {
        local: String,
        expected: String,
        got: String,
    },
    #[error("{}", wrong_direction(.dialer, .acceptor))]
    WrongDirection { dialer: String, acceptor: String },
    #[error(
        "the proof from server {peer:?} does not verify: the two servers do not share the \
         same cluster secret"
    )]
    BadProof { peer: String },
    #[error(
        "server {local:?} already has a link with server {peer:?}: the old connection is not \
         dead yet, or two servers use the same name"
    )]
    DuplicateLink { local: String, peer: String },
    #[error(
        "a link between {local:?} and {peer:?} would make {count} servers ({}): a cluster has \
         at most {MAX_SERVERS} servers",
        .servers.join(", ")
    )]
    ServerLimit {
        local: String,
        peer: String,
        count: usize,
        servers: Vec<String>,
    },
    #[error("the peer closed the connection with {code}: {message}")]
    Refused { code: String, message: String },
    #[error(
        "the cluster secret is {len} bytes long; it must have at least {min} (for example \
         the output of `openssl rand -hex 32`)"
    )]
    WeakSecret { len: usize, min: usize },
    #[error("cannot read random bytes from the operating system: {0}")]
    Random(String),
}

fn wrong_direction(dialer: &str, acceptor: &str) -> String {
    if dialer == acceptor {
        format!("server {dialer:?} reached itself: a server has no link to itself")
    } else {
        format!(
            "server {dialer:?} dialed server {acceptor:?}, but the server whose name sorts \
             first dials: {acceptor:?} must dial {dialer:?}"
        )
    }
}

/// `Result` with the bus [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The `code` of an `ERROR` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A malformed frame or payload, an unknown kind or flag, a frame out of order.
    ProtocolError,
    /// The two servers speak different bus protocol versions.
    ProtocolMismatch,
    /// The two servers are configured with different cluster names.
    WrongCluster,
    /// The names do not fit: another server answered, the wrong side dialed, or a server
    /// reached itself.
    UnexpectedServer,
    /// A handshake proof did not verify: the secrets differ.
    BadProof,
    /// The two servers already have a link.
    DuplicateLink,
    /// The link would make more than [`MAX_SERVERS`] servers.
    ServerLimit,
}

impl ErrorCode {
    /// Every code, for tables and tests.
    pub const ALL: [ErrorCode; 7] = [
        ErrorCode::ProtocolError,
        ErrorCode::ProtocolMismatch,
        ErrorCode::WrongCluster,
        ErrorCode::UnexpectedServer,
        ErrorCode::BadProof,
        ErrorCode::DuplicateLink,
        ErrorCode::ServerLimit,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ProtocolError => "protocol_error",
            ErrorCode::ProtocolMismatch => "protocol_mismatch",
            ErrorCode::WrongCluster => "wrong_cluster",
            ErrorCode::UnexpectedServer => "unexpected_server",
            ErrorCode::BadProof => "bad_proof",
            ErrorCode::DuplicateLink => "duplicate_link",
            ErrorCode::ServerLimit => "server_limit",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    /// The `ERROR` code this error is reported to the peer with, or `None` when the peer is
    /// not told: it refused first ([`Error::Refused`]), or the problem is local
    /// ([`Error::WeakSecret`], [`Error::Random`]).
    pub fn code(&self) -> Option<ErrorCode> {
        Some(match self {
            Error::TooLarge { .. }
            | Error::UnknownKind(_)
            | Error::UnknownFlags(_)
            | Error::FlagsNotAllowed { .. }
            | Error::BadStream { .. }
            | Error::BadMetaLength { .. }
            | Error::BadPayload { .. }
            | Error::Unexpected { .. }
            | Error::BadName { .. } => ErrorCode::ProtocolError,
            Error::ProtocolMismatch { .. } => ErrorCode::ProtocolMismatch,
            Error::WrongCluster { .. } => ErrorCode::WrongCluster,
            Error::ReachedWrongServer { .. } | Error::WrongDirection { .. } => {
                ErrorCode::UnexpectedServer
            }
            Error::BadProof { .. } => ErrorCode::BadProof,
            Error::DuplicateLink { .. } => ErrorCode::DuplicateLink,
            Error::ServerLimit { .. } => ErrorCode::ServerLimit,
            Error::Refused { .. } | Error::WeakSecret { .. } | Error::Random(_) => return None,
        })
    }

    /// The `ERROR` frame to send before closing the connection, or `None` when nothing is
    /// sent (see [`Error::code`]).
    pub fn to_frame(&self) -> Option<Frame> {
        self.code()
            .map(|code| Frame::error(code, &self.to_string()))
    }
}

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
        crate::wire::put_header(
            out,
            self.kind as u8,
            self.flags,
            self.stream,
            self.payload.len(),
        );
        out.extend_from_slice(&self.payload);
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
    crate::wire::split_meta(payload).map_err(|(meta_len, payload_len)| Error::BadMetaLength {
        meta_len,
        payload_len,
    })
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
    crate::wire::encode_meta_frame(out, kind as u8, flags, stream, meta, body).map_err(too_large)
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
    crate::wire::encode_serialized(out, Kind::Call as u8, flags, stream, meta, body)
        .map_err(too_large)
}

/// Appends a `REPLY` frame answering the call on `stream`: meta `{"status": N}`, then `body`.
pub fn encode_reply(out: &mut BytesMut, stream: u32, status: u16, body: &[u8]) -> Result<()> {
    check_header(Kind::Reply, 0, stream)?;
    crate::wire::encode_serialized(
        out,
        Kind::Reply as u8,
        0,
        stream,
        &ReplyMeta { status },
        body,
    )
    .map_err(too_large)
}

fn too_large(len: usize) -> Error {
    Error::TooLarge {
        len,
        max: MAX_PAYLOAD,
    }
}

/// Incremental decoder: feed bytes into a `BytesMut`, take whole frames out.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_payload: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder {
            max_payload: MAX_PAYLOAD,
        }
    }
}

impl FrameDecoder {
    /// A decoder that refuses payloads above `max_payload` (capped at [`MAX_PAYLOAD`]).
    pub fn with_max_payload(max_payload: usize) -> FrameDecoder {
        FrameDecoder {
            max_payload: max_payload.min(MAX_PAYLOAD),
        }
    }

    /// The decoder to use until the handshake is complete ([`HANDSHAKE_MAX_PAYLOAD`]).
    pub fn handshake() -> FrameDecoder {
        FrameDecoder::with_max_payload(HANDSHAKE_MAX_PAYLOAD)
    }

    /// The largest payload this decoder accepts.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Takes the next complete frame off the front of `buf`, or `Ok(None)` when more bytes
    /// are needed. An oversized length, an unknown kind, unknown or misplaced flags and a
    /// stream id that does not fit the kind are errors, found from the header alone, before
    /// the payload is buffered.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>> {
        let Some(header) = crate::wire::peek_header(buf) else {
            return Ok(None);
        };
        if header.len > self.max_payload {
            return Err(Error::TooLarge {
                len: header.len,
                max: self.max_payload,
            });
        }
        let kind = Kind::from_u8(header.kind)?;
        check_header(kind, header.flags, header.stream)?;
        Ok(
            crate::wire::take_payload(buf, header.len).map(|payload| Frame {
                kind,
                flags: header.flags,
                stream: header.stream,
                payload,
            }),
        )
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

/// An established link, the result of a completed handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// This server's name.
    pub local: String,
    /// The authenticated peer's name.
    pub peer: String,
    /// This server's role on the link.
    pub role: Role,
}

/// A frame received on an established link, checked and typed by [`Link::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// Answer with [`Frame::pong`] and the same nonce.
    Ping([u8; 8]),
    Pong([u8; 8]),
    /// The peer wrote `config_version` to the store.
    Notify(Notify),
    /// A call on a stream the peer opened: read `meta` with [`Op::parse`]. With
    /// `asynchronous`, nothing is sent back, not even an error.
    Call {
        stream: u32,
        asynchronous: bool,
        meta: Bytes,
        body: Bytes,
    },
    /// The answer to a call this side made on `stream`.
    Reply {
        stream: u32,
        status: u16,
        body: Bytes,
    },
    /// The peer closes gracefully: send it no new call.
    Bye,
}

impl Link {
    /// The stream id allocator of this side of the link (one per link: every call made on
    /// the link takes its id from the same allocator).
    pub fn stream_ids(&self) -> StreamIds {
        StreamIds::new(self.role)
    }

    /// Checks a frame received after the handshake against `BUS.md` and types it. An
    /// `ERROR` from the peer is [`Error::Refused`]; any other error is a protocol violation
    /// to report with [`Error::to_frame`] before closing.
    pub fn parse(&self, frame: Frame) -> Result<Incoming> {
        let stream = frame.stream;
        match frame.kind {
            Kind::Hello | Kind::Challenge | Kind::Auth | Kind::Welcome => Err(Error::Unexpected {
                got: frame.kind,
                expected: "anything but a handshake frame after WELCOME",
            }),
            Kind::Ping | Kind::Pong => {
                let nonce: [u8; 8] =
                    frame
                        .payload
                        .as_ref()
                        .try_into()
                        .map_err(|_| Error::BadPayload {
                            kind: frame.kind,
                            reason: format!("{} bytes, not 8", frame.payload.len()),
                        })?;
                Ok(if frame.kind == Kind::Ping {
                    Incoming::Ping(nonce)
                } else {
                    Incoming::Pong(nonce)
                })
            }
            Kind::Notify => {
                let n: Notify = frame.parse_json()?;
                if n.server != self.peer {
                    return Err(Error::BadPayload {
                        kind: Kind::Notify,
                        reason: format!("server {:?} is not the sender, {:?}", n.server, self.peer),
                    });
                }
                Ok(Incoming::Notify(n))
            }
            Kind::Call => {
                if !self.role.peer().owns(stream) {
                    return Err(Error::BadStream {
                        kind: Kind::Call,
                        stream,
                        rule: "a CALL must be on a stream of the sender's half",
                    });
                }
                let (meta, body) = frame.split_meta()?;
                Ok(Incoming::Call {
                    stream,
                    asynchronous: frame.flags & FLAG_ASYNC != 0,
                    meta,
                    body,
                })
            }
            Kind::Reply => {
                if !self.role.owns(stream) {
                    return Err(Error::BadStream {
                        kind: Kind::Reply,
                        stream,
                        rule: "a REPLY must be on a stream of the receiver's half",
                    });
                }
                let (meta, body) = frame.split_meta()?;
                let meta: ReplyMeta =
                    serde_json::from_slice(&meta).map_err(|e| Error::BadPayload {
                        kind: Kind::Reply,
                        reason: format!("meta: {e}"),
                    })?;
                Ok(Incoming::Reply {
                    stream,
                    status: meta.status,
                    body,
                })
            }
            Kind::Bye => {
                if !frame.payload.is_empty() {
                    return Err(Error::BadPayload {
                        kind: Kind::Bye,
                        reason: "BYE has an empty payload".into(),
                    });
                }
                Ok(Incoming::Bye)
            }
            Kind::Error => Err(refused(&frame)),
        }
    }
}

/// The [`Error::Refused`] for an `ERROR` frame from the peer (readable or not).
pub(crate) fn refused(frame: &Frame) -> Error {
    match serde_json::from_slice::<ErrorMsg>(&frame.payload) {
        Ok(m) => Error::Refused {
            code: m.code,
            message: m.message,
        },
        Err(_) => Error::Refused {
            code: "(unreadable)".into(),
            message: String::from_utf8_lossy(&frame.payload[..frame.payload.len().min(1024)])
                .into_owned(),
        },
    }
}

#[cfg(test)]
mod tests;
