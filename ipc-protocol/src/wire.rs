//! The frame header, the incremental frame decoder and the `CALL` / `REPLY` payload layout
//! that the IPC protocol and the cluster bus share (see `SPEC.md` and `BUS.md`). Each
//! protocol supplies its kind table, header checks and error type through [`WireFrame`];
//! nothing here knows either protocol's kinds, and no protocol's public types live here.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::marker::PhantomData;

/// Size of the fixed frame header: length (4), kind (1), flags (1), stream (4).
pub(crate) const HEADER_LEN: usize = 10;

/// Hard upper bound of a frame payload (64 MiB), shared by both protocols.
pub(crate) const MAX_PAYLOAD: usize = 64 * 1024 * 1024;

/// A frame header as read off the wire, before any protocol-specific check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub len: usize,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

/// Appends a header announcing `payload_len` bytes of payload and reserves room for them.
pub(crate) fn put_header(out: &mut BytesMut, kind: u8, flags: u8, stream: u32, payload_len: usize) {
    debug_assert!(payload_len <= MAX_PAYLOAD);
    out.reserve(HEADER_LEN + payload_len);
    out.put_u32(payload_len as u32);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
}

/// The header at the front of `buf`, or `None` while fewer than [`HEADER_LEN`] bytes are
/// buffered. Consumes nothing.
pub(crate) fn peek_header(buf: &[u8]) -> Option<Header> {
    if buf.len() < HEADER_LEN {
        return None;
    }
    Some(Header {
        len: u32::from_be_bytes(buf[0..4].try_into().expect("4 bytes")) as usize,
        kind: buf[4],
        flags: buf[5],
        stream: u32::from_be_bytes(buf[6..10].try_into().expect("4 bytes")),
    })
}

/// Removes a whole frame (header and `len` payload bytes) from the front of `buf` and returns
/// its payload without copying, or reserves room for the rest and returns `None` when the
/// payload is not complete yet. The caller has validated the header and `len`.
pub(crate) fn take_payload(buf: &mut BytesMut, len: usize) -> Option<Bytes> {
    if buf.len() < HEADER_LEN + len {
        buf.reserve(HEADER_LEN + len - buf.len());
        return None;
    }
    buf.advance(HEADER_LEN);
    Some(buf.split_to(len).freeze())
}

/// What a protocol supplies to the shared codec ([`Decoder`], [`split_meta`], the encoders):
/// its frame type (the implementor), its error type and its checks of a header.
pub(crate) trait WireFrame: Sized {
    /// The protocol's kind table entry, as the header check found it.
    type Kind;
    /// The protocol's error type.
    type Error;

    /// The error for a payload of `len` bytes above the limit `max`.
    fn too_large(len: usize, max: usize) -> Self::Error;

    /// The error for a `CALL` / `REPLY` payload of `payload_len` bytes whose `meta_len`
    /// does not fit in it.
    fn bad_meta_length(meta_len: usize, payload_len: usize) -> Self::Error;

    /// Checks kind, flags and stream of a header whose length is within the limit.
    fn check_header(header: &Header) -> Result<Self::Kind, Self::Error>;

    /// The frame of a checked header and its whole payload.
    fn from_wire(kind: Self::Kind, header: &Header, payload: Bytes) -> Self;
}

/// Incremental decoder of the frames `F`: feed bytes into a `BytesMut`, take whole frames
/// out. Refuses payloads above its limit (at most [`MAX_PAYLOAD`]).
pub(crate) struct Decoder<F> {
    max_payload: usize,
    frame: PhantomData<fn() -> F>,
}

impl<F> Clone for Decoder<F> {
    fn clone(&self) -> Self {
        Decoder {
            max_payload: self.max_payload,
            frame: PhantomData,
        }
    }
}

impl<F> std::fmt::Debug for Decoder<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("max_payload", &self.max_payload)
            .finish()
    }
}

impl<F> Default for Decoder<F> {
    fn default() -> Self {
        Decoder::with_max_payload(MAX_PAYLOAD)
    }
}

impl<F> Decoder<F> {
    /// A decoder that refuses payloads above `max_payload` (capped at [`MAX_PAYLOAD`]).
    pub(crate) fn with_max_payload(max_payload: usize) -> Self {
        Decoder {
            max_payload: max_payload.min(MAX_PAYLOAD),
            frame: PhantomData,
        }
    }

    /// The largest payload this decoder accepts.
    pub(crate) fn max_payload(&self) -> usize {
        self.max_payload
    }
}

impl<F: WireFrame> Decoder<F> {
    /// Takes the next complete frame off the front of `buf`, or `Ok(None)` when more bytes
    /// are needed. An oversized length, then whatever [`WireFrame::check_header`] refuses,
    /// is an error found from the header alone, before the payload is buffered.
    pub(crate) fn decode(&self, buf: &mut BytesMut) -> Result<Option<F>, F::Error> {
        let Some(header) = peek_header(buf) else {
            return Ok(None);
        };
        if header.len > self.max_payload {
            return Err(F::too_large(header.len, self.max_payload));
        }
        let kind = F::check_header(&header)?;
        Ok(take_payload(buf, header.len).map(|payload| F::from_wire(kind, &header, payload)))
    }
}

/// Appends a whole frame: its header, then `payload`.
pub(crate) fn put_frame(out: &mut BytesMut, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    put_header(out, kind, flags, stream, payload.len());
    out.extend_from_slice(payload);
}

/// Splits a `CALL` / `REPLY` payload (`meta_len` u32, meta, body). A payload shorter than
/// 4 bytes reports a `meta_len` of 4.
pub(crate) fn split_meta<F: WireFrame>(payload: &Bytes) -> Result<(Bytes, Bytes), F::Error> {
    if payload.len() < 4 {
        return Err(F::bad_meta_length(4, payload.len()));
    }
    let meta_len = u32::from_be_bytes(payload[..4].try_into().expect("4 bytes")) as usize;
    if meta_len > payload.len() - 4 {
        return Err(F::bad_meta_length(meta_len, payload.len()));
    }
    Ok((
        payload.slice(4..4 + meta_len),
        payload.slice(4 + meta_len..),
    ))
}

/// Appends a `CALL` / `REPLY`-layout frame from ready meta bytes. A payload above
/// [`MAX_PAYLOAD`] is an error and appends nothing.
pub(crate) fn encode_meta_frame<F: WireFrame>(
    out: &mut BytesMut,
    kind: u8,
    flags: u8,
    stream: u32,
    meta: &[u8],
    body: &[u8],
) -> Result<(), F::Error> {
    let len = 4 + meta.len() + body.len();
    if len > MAX_PAYLOAD {
        return Err(F::too_large(len, MAX_PAYLOAD));
    }
    put_header(out, kind, flags, stream, len);
    out.put_u32(meta.len() as u32);
    out.extend_from_slice(meta);
    out.extend_from_slice(body);
    Ok(())
}

/// Appends a `CALL` / `REPLY`-layout frame, serialising `meta` as JSON straight into `out`.
/// A payload above [`MAX_PAYLOAD`] is an error and leaves `out` as it was.
pub(crate) fn encode_serialized<F: WireFrame, M: serde::Serialize>(
    out: &mut BytesMut,
    kind: u8,
    flags: u8,
    stream: u32,
    meta: &M,
    body: &[u8],
) -> Result<(), F::Error> {
    let start = out.len();
    out.reserve(HEADER_LEN + 4 + 512 + body.len());
    put_header(out, kind, flags, stream, 0);
    out.put_u32(0);
    let meta_start = out.len();
    serde_json::to_writer(out.writer(), meta).expect("serialising a message cannot fail");
    let meta_len = out.len() - meta_start;
    let len = 4 + meta_len + body.len();
    if len > MAX_PAYLOAD {
        out.truncate(start);
        return Err(F::too_large(len, MAX_PAYLOAD));
    }
    out.extend_from_slice(body);
    out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    out[meta_start - 4..meta_start].copy_from_slice(&(meta_len as u32).to_be_bytes());
    Ok(())
}
