//! The Oxbus IPC protocol: the only definition of the bytes on the supervisor ↔ worker socket.
//! The cluster bus between servers, which shares the frame header, is in [`bus`] (`BUS.md`).
//!
//! `SPEC.md` beside this crate is the specification; this crate implements it for the Rust
//! side and `python-worker/oxbus/_protocol.py` for the Python side. The golden vectors in
//! `testdata/v2/` are decoded and re-encoded by both test suites, so the two cannot drift.
//!
//! The codec is deliberately allocation-light: [`FrameDecoder`] splits frames off a
//! [`BytesMut`] without copying payloads, and [`encode_call`] / [`encode_reply`] write the
//! header, the JSON meta and the raw body straight into one output buffer, so that a batch of
//! frames becomes a single `write` on the socket.

use bytes::{Bytes, BytesMut};

pub mod bus;
pub mod messages;
mod wire;

pub use messages::*;

/// The protocol version this crate speaks; sent in `HELLO` / `WELCOME`.
///
/// Version 2 added the compact form of an `invoke` meta (a JSON array, SPEC.md); a version 1
/// worker would take it for a broken meta, so the handshake refuses one.
pub const PROTOCOL_VERSION: u32 = 2;

/// Size of the fixed frame header: length (4), kind (1), flags (1), stream (4).
pub const HEADER_LEN: usize = wire::HEADER_LEN;

/// Hard upper bound of a frame payload (64 MiB). Nothing larger is ever read into memory.
pub const MAX_PAYLOAD: usize = wire::MAX_PAYLOAD;

/// The bit that marks a stream opened by the worker.
pub const WORKER_STREAM_BIT: u32 = 0x8000_0000;

/// Flag bit: a worker's `CALL` that expects no `REPLY`.
pub const FLAG_ASYNC: u8 = 0x01;
const KNOWN_FLAGS: u8 = FLAG_ASYNC;

/// Errors of this crate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("frame payload of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("unknown flag bits {0:#04x}")]
    UnknownFlags(u8),
    #[error("CALL/REPLY meta length {meta_len} exceeds the payload of {payload_len} bytes")]
    BadMetaLength { meta_len: usize, payload_len: usize },
    #[error("frame {kind:?} payload is not valid JSON: {reason}")]
    BadJson { kind: Kind, reason: String },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Frame kinds (one byte on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    Hello = 1,
    Welcome = 2,
    Ready = 3,
    Call = 4,
    Reply = 5,
    Cancel = 6,
    Ping = 7,
    Pong = 8,
    Log = 9,
    Drain = 10,
    Bye = 11,
    Error = 15,
}

impl Kind {
    /// Every kind, in code order.
    pub const ALL: [Kind; 12] = [
        Kind::Hello,
        Kind::Welcome,
        Kind::Ready,
        Kind::Call,
        Kind::Reply,
        Kind::Cancel,
        Kind::Ping,
        Kind::Pong,
        Kind::Log,
        Kind::Drain,
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

    /// The name used in `SPEC.md` and in the golden vectors.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Hello => "HELLO",
            Kind::Welcome => "WELCOME",
            Kind::Ready => "READY",
            Kind::Call => "CALL",
            Kind::Reply => "REPLY",
            Kind::Cancel => "CANCEL",
            Kind::Ping => "PING",
            Kind::Pong => "PONG",
            Kind::Log => "LOG",
            Kind::Drain => "DRAIN",
            Kind::Bye => "BYE",
            Kind::Error => "ERROR",
        }
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

    /// A connection-level frame whose payload is a JSON document.
    pub fn json<T: serde::Serialize>(kind: Kind, value: &T) -> Frame {
        let payload = serde_json::to_vec(value).expect("serialising a message cannot fail");
        Frame::new(kind, 0, payload)
    }

    /// Appends the wire bytes of this frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        wire::put_frame(out, self.kind as u8, self.flags, self.stream, &self.payload);
    }

    /// The wire bytes of this frame.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(HEADER_LEN + self.payload.len());
        self.encode(&mut out);
        out.freeze()
    }

    /// Parses the payload as JSON into `T`.
    pub fn parse_json<'a, T: serde::Deserialize<'a>>(&'a self) -> Result<T> {
        serde_json::from_slice(&self.payload).map_err(|e| Error::BadJson {
            kind: self.kind,
            reason: e.to_string(),
        })
    }

    /// Splits a `CALL` / `REPLY` payload into its JSON meta and raw body.
    pub fn split_meta(&self) -> Result<(Bytes, Bytes)> {
        split_meta(&self.payload)
    }
}

/// Splits a `CALL` / `REPLY` payload: `meta_len` u32, meta, body.
pub fn split_meta(payload: &Bytes) -> Result<(Bytes, Bytes)> {
    wire::split_meta::<Frame>(payload)
}

/// Appends a `CALL` or `REPLY` frame whose meta is `meta` (already JSON) and body `body`.
/// Returns [`Error::TooLarge`] when the frame would exceed [`MAX_PAYLOAD`].
pub fn encode_meta_frame(
    out: &mut BytesMut,
    kind: Kind,
    flags: u8,
    stream: u32,
    meta: &[u8],
    body: &[u8],
) -> Result<()> {
    wire::encode_meta_frame::<Frame>(out, kind as u8, flags, stream, meta, body)
}

/// Appends a `CALL` frame, serialising `meta` as JSON straight into the buffer (no
/// intermediate allocation: this is on every request's path).
pub fn encode_call<M: serde::Serialize>(
    out: &mut BytesMut,
    flags: u8,
    stream: u32,
    meta: &M,
    body: &[u8],
) -> Result<()> {
    wire::encode_serialized::<Frame, _>(out, Kind::Call as u8, flags, stream, meta, body)
}

/// Appends a `REPLY` frame.
pub fn encode_reply<M: serde::Serialize>(
    out: &mut BytesMut,
    stream: u32,
    meta: &M,
    body: &[u8],
) -> Result<()> {
    wire::encode_serialized::<Frame, _>(out, Kind::Reply as u8, 0, stream, meta, body)
}

impl wire::WireFrame for Frame {
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

    fn check_header(header: &wire::Header) -> Result<Kind> {
        let kind = Kind::from_u8(header.kind)?;
        if header.flags & !KNOWN_FLAGS != 0 {
            return Err(Error::UnknownFlags(header.flags & !KNOWN_FLAGS));
        }
        Ok(kind)
    }

    fn from_wire(kind: Kind, header: &wire::Header, payload: Bytes) -> Frame {
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
pub struct FrameDecoder(wire::Decoder<Frame>);

impl FrameDecoder {
    /// A decoder that refuses payloads above `max_payload` (capped at [`MAX_PAYLOAD`]).
    pub fn with_max_payload(max_payload: usize) -> FrameDecoder {
        FrameDecoder(wire::Decoder::with_max_payload(max_payload))
    }

    /// Takes the next complete frame off the front of `buf`, or `Ok(None)` when more bytes
    /// are needed. An oversized length, unknown kind or unknown flags is an error, checked
    /// from the header alone, before the payload is buffered.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>> {
        self.0.decode(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn partial_header_and_payload_wait_for_more() {
        let f = Frame::new(Kind::Ping, 0, vec![1u8; 8]);
        let wire = f.to_bytes();
        let d = FrameDecoder::default();
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            assert_eq!(d.decode(&mut buf).unwrap(), None, "cut at {cut}");
        }
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(d.decode(&mut buf).unwrap(), Some(f));
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_length_is_refused_from_the_header() {
        let mut buf = BytesMut::new();
        buf.put_u32(1000);
        buf.put_u8(Kind::Call as u8);
        buf.put_u8(0);
        buf.put_u32(1);
        let d = FrameDecoder::with_max_payload(999);
        assert_eq!(
            d.decode(&mut buf),
            Err(Error::TooLarge {
                len: 1000,
                max: 999
            })
        );
    }

    #[test]
    fn unknown_kind_and_flags_are_refused() {
        let mut buf = BytesMut::from(&[0, 0, 0, 0, 99, 0, 0, 0, 0, 0][..]);
        assert_eq!(
            FrameDecoder::default().decode(&mut buf),
            Err(Error::UnknownKind(99))
        );
        let mut buf = BytesMut::from(&[0, 0, 0, 0, 4, 0x82, 0, 0, 0, 0][..]);
        assert_eq!(
            FrameDecoder::default().decode(&mut buf),
            Err(Error::UnknownFlags(0x82))
        );
    }

    #[test]
    fn meta_length_beyond_payload_is_refused() {
        let payload = Bytes::from_static(&[0, 0, 0, 9, b'{', b'}']);
        assert!(matches!(
            split_meta(&payload),
            Err(Error::BadMetaLength { meta_len: 9, .. })
        ));
        assert!(split_meta(&Bytes::from_static(&[0, 0])).is_err());
    }
}
