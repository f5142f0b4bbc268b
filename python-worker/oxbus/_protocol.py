"""The Oxbus IPC frame codec (protocol version 2).

This module is the Python half of ``ipc-protocol/SPEC.md``: the constants (kinds, flags,
limits) and the functions that turn frames into bytes and back. Nothing else in the package
knows the byte layout; the worker runtime, the tests and the benchmark all go through here,
and the test suite checks this codec against the golden vectors in
``ipc-protocol/testdata/v2`` byte for byte, exactly as the Rust suite does.

A frame is a 10-byte header (``length`` u32, ``kind`` u8, ``flags`` u8, ``stream`` u32, all
big-endian) followed by ``length`` payload bytes. ``CALL`` and ``REPLY`` payloads are a u32
``meta_len``, that many bytes of JSON metadata, and then the raw body. The supervisor writes
an invocation's metadata in the compact form (a JSON array of the fields in a fixed order,
then an object of the rest), which :func:`decode_call` turns back into the same dict as the
object form.

The decoder is written for throughput rather than elegance: :class:`FrameReader` owns one
large receive buffer that the socket fills with ``recv_into`` and hands back every complete
frame in it at once, so the worker pays one system call and one Python-level loop per batch
instead of per frame.
"""

from __future__ import annotations

import json
import struct

# ``typing`` costs milliseconds to import and the worker's startup budget is tight, so the
# annotations stay strings (``from __future__ import annotations``) and the names they use
# are imported for type checkers only. mypy and pyright treat any ``TYPE_CHECKING`` as True.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Tuple, Union

    #: A decoded frame: (kind, flags, stream, payload). The payload is kind-specific and
    #: still undecoded. A plain tuple because the hot loop makes one per frame.
    Frame = Tuple[int, int, int, bytes]

__all__ = [
    'PROTOCOL_VERSION', 'MAX_FRAME_LENGTH', 'HEADER', 'HEADER_SIZE', 'META_LEN',
    'HELLO', 'WELCOME', 'READY', 'CALL', 'REPLY', 'CANCEL', 'PING', 'PONG', 'LOG', 'DRAIN',
    'BYE', 'ERROR', 'KIND_NAMES', 'KIND_CODES', 'FLAG_ASYNC', 'KNOWN_FLAGS',
    'WORKER_STREAM_BIT', 'ProtocolError', 'encode_frame', 'decode_frame',
    'encode_call', 'encode_reply', 'split_call', 'decode_call', 'encode_json', 'decode_json',
    'COMPACT_INVOKE_FIELDS', 'expand_compact_meta',
    'find_unencodable',
    'FrameReader',
]

#: The single integer exchanged in HELLO/WELCOME; any layout change bumps it. Version 2
#: added the compact form of an invocation's meta (``COMPACT_INVOKE_FIELDS``).
PROTOCOL_VERSION = 2

#: Hard maximum of the ``length`` field (64 MiB). A larger value is a protocol error and the
#: payload is never read, so a corrupt or hostile length cannot make us allocate gigabytes.
MAX_FRAME_LENGTH = 64 * 1024 * 1024

#: length u32, kind u8, flags u8, stream u32 - all big-endian.
HEADER = struct.Struct('>IBBI')
HEADER_SIZE = HEADER.size  # 10
#: The u32 that opens a CALL/REPLY payload.
META_LEN = struct.Struct('>I')

HELLO = 1
WELCOME = 2
READY = 3
CALL = 4
REPLY = 5
CANCEL = 6
PING = 7
PONG = 8
LOG = 9
DRAIN = 10
BYE = 11
ERROR = 15

KIND_NAMES = {
    HELLO: 'HELLO', WELCOME: 'WELCOME', READY: 'READY', CALL: 'CALL', REPLY: 'REPLY',
    CANCEL: 'CANCEL', PING: 'PING', PONG: 'PONG', LOG: 'LOG', DRAIN: 'DRAIN', BYE: 'BYE',
    ERROR: 'ERROR',
}
KIND_CODES = {name: code for code, name in KIND_NAMES.items()}

#: On a CALL from the worker: fire-and-forget, the supervisor sends no REPLY.
FLAG_ASYNC = 0x01
#: Every flag bit this version defines; any other bit set makes the frame invalid.
KNOWN_FLAGS = FLAG_ASYNC

#: Streams the worker opens have this bit set; the supervisor's have it clear.
WORKER_STREAM_BIT = 0x8000_0000

_pack_header = HEADER.pack
_unpack_header = HEADER.unpack_from
_pack_u32 = META_LEN.pack
_unpack_u32 = META_LEN.unpack_from
# A CALL's header and its meta_len in one go (encode_worker_call).
_pack_call_head = struct.Struct('>IBBII').pack


class ProtocolError(ValueError):
    """The peer broke the wire protocol; the connection cannot be trusted any more.

    ``code`` is the machine-readable code that goes into the ``ERROR`` frame sent back
    (``frame_too_large``, ``bad_flags``, ``unknown_kind``, ``bad_frame``, ...).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# Compact separators keep frames small and match what the Rust side (serde_json) emits.
# ensure_ascii=False keeps UTF-8 text readable in logs ("café", not "caf\u00e9"); lone
# surrogates cannot be encoded that way, so encode_json falls back to escaping them.
def _json_default(obj: Any) -> Any:
    """What the encoder calls for a value JSON has no form for; a TypeError for anything else.

    A model (anything with ``__oxbus_json__``): its dict; ``date``/``datetime``/``time``:
    ISO 8601 text; ``Decimal`` (finite) and ``UUID``: their text; ``set``/``frozenset``: a
    list (sorted when its items sort, so the answer does not change from run to run); an
    ``Enum`` member: its value; a dataclass instance: an object of its fields. Tuples,
    and str/int subclasses such as ``IntEnum``, are native to the encoder and never get
    here. Only reached for such values, so the common payloads pay nothing.
    """
    to_json = getattr(type(obj), '__oxbus_json__', None)
    if to_json is not None:
        return to_json(obj)
    import datetime
    import decimal
    import enum
    import uuid
    if isinstance(obj, (datetime.date, datetime.time)):  # datetime is a date
        return obj.isoformat()
    if isinstance(obj, decimal.Decimal):
        if not obj.is_finite():
            raise ValueError('Out of range decimal values are not JSON compliant: %s' % obj)
        return str(obj)
    if isinstance(obj, uuid.UUID):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        try:
            return sorted(obj)
        except TypeError:  # items of different kinds, or that do not order
            return list(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if getattr(type(obj), '__dataclass_fields__', None) is not None:
        import dataclasses
        # Shallowly (not dataclasses.asdict, which deep-copies): the encoder encodes each
        # value, through this hook again when it has to. fields() leaves out ClassVar and
        # InitVar pseudo-fields.
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    raise TypeError('Object of type %s is not JSON serializable' % type(obj).__name__)


def find_unencodable(obj: Any) -> Tuple[str, str]:
    """Where in ``obj`` the JSON encoder fails and why: ``(path, reason)``.

    The path is written as a service author reads it (``items[3].when``; ``''`` for ``obj``
    itself). Called only after :func:`encode_json` failed (the error path): the encoder
    itself says neither where nor, for a value nested in a list, which key.
    """
    found = _find_unencodable(obj, '', set(), 0)
    if found is None:  # the encoder failed on something the walk cannot see (a cycle...)
        return '', 'the value cannot be encoded as JSON'
    return found


#: How deep :func:`find_unencodable` looks; deeper data is reported at that depth.
_FIND_MAX_DEPTH = 500


def _find_unencodable(obj: Any, path: str, seen: set, depth: int  # type: ignore[type-arg]
                      ) -> Optional[Tuple[str, str]]:
    if obj is None or isinstance(obj, (str, bool, int)):
        return None
    if isinstance(obj, float):
        if obj != obj or obj in (float('inf'), float('-inf')):
            return path, '%r is not a JSON number' % obj
        return None
    if depth > _FIND_MAX_DEPTH:
        return path, 'nested too deeply to encode'
    if id(obj) in seen:
        return path, 'a circular reference'
    if isinstance(obj, dict):
        seen.add(id(obj))
        for key, value in obj.items():
            if not (key is None or isinstance(key, (str, int, float, bool))):
                return (_key_path(path, key), 'an object key must be a string, not a %s'
                        % type(key).__name__)
            found = _find_unencodable(value, _key_path(path, key), seen, depth + 1)
            if found is not None:
                return found
        seen.discard(id(obj))
        return None
    if isinstance(obj, (list, tuple)):
        seen.add(id(obj))
        for i, value in enumerate(obj):
            found = _find_unencodable(value, '%s[%d]' % (path, i), seen, depth + 1)
            if found is not None:
                return found
        seen.discard(id(obj))
        return None
    try:
        converted = _json_default(obj)
    except (TypeError, ValueError) as e:
        inner = getattr(e, 'field', None)  # a model's own field path (ModelOutputError)
        if isinstance(inner, str) and inner:
            return _key_path(path, inner), str(getattr(e, 'reason', e))
        if isinstance(e, TypeError):
            return path, 'a value of type %s has no JSON form' % type(obj).__name__
        return path, str(e)
    seen.add(id(obj))
    found = _find_unencodable(converted, path, seen, depth + 1)
    seen.discard(id(obj))
    return found


def _key_path(path: str, key: Any) -> str:
    return '%s.%s' % (path, key) if path else str(key)


# NaN and the infinities are not JSON (RFC 8259): refused both ways, so a service can never
# send them out and a client can never slip them into typed input.
_json_encoder_text = json.JSONEncoder(separators=(',', ':'), ensure_ascii=False,
                                      allow_nan=False, default=_json_default)
_json_encoder_ascii = json.JSONEncoder(separators=(',', ':'), allow_nan=False,
                                       default=_json_default)


def _make_c_encoder() -> Any:
    """A reusable instance of the C encoder behind ``json.dumps``, or None.

    ``JSONEncoder.encode`` builds a new C encoder object on every call, which costs about
    as much as encoding a small reply. Building it once is what saves that. There is no
    circular-reference bookkeeping (``markers=None``): the C encoder would leave stale
    entries in a shared ``markers`` dict after an error, and a cycle still fails, as a
    RecursionError.
    """
    make = getattr(json.encoder, 'c_make_encoder', None)
    if make is None:
        return None
    sample = {'a': [1, 2.5, None, True], 'é': 'x"\n'}
    try:
        encoder = make(None, _json_default, json.encoder.encode_basestring,
                       None, ':', ',', False, False, False)
        # The signature is private: make sure it still means what we think it means.
        if ''.join(encoder(sample, 0)) == _json_encoder_text.encode(sample):
            return encoder
    except TypeError:
        pass
    return None  # a CPython whose private API moved: use the public, slower path


_c_encode = _make_c_encoder()
_join = ''.join


def encode_json(obj: Any) -> bytes:
    """Serialise ``obj`` as compact UTF-8 JSON, the form every JSON payload on the wire takes."""
    text = _join(_c_encode(obj, 0)) if _c_encode is not None else _json_encoder_text.encode(obj)
    try:
        return text.encode('utf-8')
    except UnicodeEncodeError:
        # A str holding a lone surrogate (e.g. parsed from "\ud800") has no UTF-8 form;
        # the ASCII encoder writes it as a \u escape, which any JSON parser accepts.
        return _json_encoder_ascii.encode(obj).encode('ascii')


# The C scanner behind json.loads, called directly. json.loads itself spends as long on
# its Python-level preliminaries (encoding detection, type checks, two regex matches for
# whitespace) as the scanner spends on a typical CALL meta.
def _refuse_constant(name: str) -> Any:
    raise ValueError('%s is not JSON (RFC 8259)' % name)


# A number past the range of a double (1e400) reads as infinity, as json.loads reads it:
# checking each float here would cost every float-bearing body a Python call (measured:
# 1.3 % of the echo's instructions in the worker). Typed input refuses it instead (Float,
# Decimal, a model's float: 400), and an answer carrying it is refused by the encoder (500),
# so no invalid JSON is ever sent.
_decoder = json.JSONDecoder(parse_constant=_refuse_constant)
_scan_once = _decoder.scan_once  # type: ignore[attr-defined]  # set in __init__


def decode_json(data: Union[bytes, bytearray, str]) -> Any:
    """Parse JSON; bytes must be UTF-8 (RFC 8259, 8.1). Raises ValueError like ``json.loads``.

    Bytes in another encoding (UTF-16 or UTF-32, which ``json.loads`` would detect) are
    refused with a ValueError naming UTF-8: the server's nesting check reads a body as UTF-8
    bytes, so what it checked is what is parsed here. A UTF-8 byte order mark is skipped, as
    ``json.loads`` does. The fast path covers compact UTF-8 JSON, which is what the
    supervisor sends; anything else (surrounding whitespace, a syntax error) is handed to
    ``json.loads``, so results and error messages are the standard ones.
    """
    if isinstance(data, str):
        text = data
    else:
        try:
            text = data.decode('utf-8')
        except UnicodeDecodeError as e:
            raise ValueError('JSON must be UTF-8 (RFC 8259): %s' % e) from None
        if text.startswith('\ufeff'):
            text = text[1:]
    try:
        obj, end = _scan_once(text, 0)
        if end == len(text):
            return obj
    except (StopIteration, ValueError):
        pass
    return _decoder.decode(text)


def _check_header(length: int, kind: int, flags: int, max_length: int) -> None:
    # Split out so the encoder and both decoders refuse exactly the same frames.
    if length > max_length:
        raise ProtocolError(
            'frame_too_large',
            'frame length %d exceeds the maximum of %d bytes' % (length, max_length))
    if flags & ~KNOWN_FLAGS:
        raise ProtocolError('bad_flags', 'unknown flag bits 0x%02x in a %s frame'
                            % (flags & ~KNOWN_FLAGS, KIND_NAMES.get(kind, 'kind %d' % kind)))
    if kind not in KIND_NAMES:
        raise ProtocolError('unknown_kind', 'unknown frame kind %d' % kind)


def encode_frame(kind: int, payload: Union[bytes, bytearray] = b'', stream: int = 0,
                 flags: int = 0) -> bytes:
    """Build one frame: header + payload."""
    length = len(payload)
    _check_header(length, kind, flags, MAX_FRAME_LENGTH)
    if not 0 <= stream <= 0xFFFF_FFFF:
        raise ValueError('stream id %r is not a u32' % (stream,))
    return _pack_header(length, kind, flags, stream) + payload


def decode_frame(data: Union[bytes, bytearray, memoryview],
                 max_length: int = MAX_FRAME_LENGTH) -> Frame:
    """Decode exactly one complete frame into (kind, flags, stream, payload).

    Trailing or missing bytes are an error.
    """
    if len(data) < HEADER_SIZE:
        raise ProtocolError('bad_frame', 'truncated frame header (%d bytes)' % len(data))
    length, kind, flags, stream = _unpack_header(data, 0)
    _check_header(length, kind, flags, max_length)
    if len(data) != HEADER_SIZE + length:
        raise ProtocolError('bad_frame', 'frame says %d payload bytes but %d follow'
                            % (length, len(data) - HEADER_SIZE))
    return kind, flags, stream, bytes(data[HEADER_SIZE:])


def _meta_bytes(meta: Union[Dict[str, Any], bytes]) -> bytes:
    return meta if isinstance(meta, (bytes, bytearray)) else encode_json(meta)


def encode_call(stream: int, meta: Union[Dict[str, Any], bytes], body: bytes = b'',
                flags: int = 0) -> bytes:
    """Build a ``CALL`` frame; ``meta`` is a dict or already-encoded JSON bytes."""
    m = _meta_bytes(meta)
    return encode_frame(CALL, _pack_u32(len(m)) + m + body, stream, flags)


def encode_worker_call(stream: int, meta: bytes, body: bytes = b'') -> bytes:
    """``encode_call`` for a worker's own calls, whose meta is JSON bytes already and
    whose stream id is valid by construction: one ``pack`` and one concatenation."""
    length = 4 + len(meta) + len(body)
    if length > MAX_FRAME_LENGTH:
        raise ValueError('a CALL of %d bytes exceeds the frame limit of %d bytes'
                         % (length, MAX_FRAME_LENGTH))
    return b''.join((_pack_call_head(length, CALL, 0, stream, len(meta)), meta, body))


def encode_reply(stream: int, meta: Union[Dict[str, Any], bytes], body: bytes = b'') -> bytes:
    """Build a ``REPLY`` frame; ``meta`` is a dict or already-encoded JSON bytes."""
    m = _meta_bytes(meta)
    return encode_frame(REPLY, _pack_u32(len(m)) + m + body, stream)


def split_call(payload: Union[bytes, bytearray]) -> Tuple[bytes, bytes]:
    """Split a ``CALL``/``REPLY`` payload into its raw meta JSON and its body."""
    try:
        end = 4 + _unpack_u32(payload, 0)[0]
    except struct.error:
        raise ProtocolError('bad_frame', 'CALL/REPLY payload shorter than its meta_len') from None
    if end > len(payload):
        raise ProtocolError('bad_frame', 'meta_len %d exceeds the %d payload bytes after it'
                            % (end - 4, len(payload) - 4))
    if type(payload) is not bytes:
        payload = bytes(payload)
    return payload[4:end], payload[end:]


#: The positional fields of the compact form of an ``invoke`` meta (SPEC.md, "Compact
#: invoke meta"), in their order; the array's last element is an object of the other fields.
COMPACT_INVOKE_FIELDS = ('op', 'service', 'cid', 'channel', 'data_format', 'method', 'path',
                         'params', 'query', 'headers', 'deadline_ms', 'remote_addr', 'scheme',
                         'port', 'channel_name', 'traceparent')
_COMPACT_LEN = len(COMPACT_INVOKE_FIELDS) + 1
_COMPACT_KEYS = frozenset(COMPACT_INVOKE_FIELDS)


def expand_compact_meta(fields: List[Any]) -> Dict[str, Any]:
    """The dict of a compact meta: the object form the same call would have had.

    ``null`` means the field is absent, as an absent key does in the object form; the last
    element holds the fields that have no position, and may not name one that has.
    """
    if len(fields) != _COMPACT_LEN:
        raise ProtocolError('bad_frame', 'a compact meta is an array of %d fields and an '
                            'object, not %d elements' % (_COMPACT_LEN - 1, len(fields)))
    if type(fields[-1]) is not dict:
        raise ProtocolError('bad_frame', 'the last element of a compact meta is an object '
                            '(the fields without a position), not %s'
                            % type(fields[-1]).__name__)
    return _complete_compact(dict(zip(COMPACT_INVOKE_FIELDS, fields)), fields[-1])


def _complete_compact(meta: Dict[str, Any], rest: Dict[str, Any]) -> Dict[str, Any]:
    """Leave out the absent (None) fields of a compact meta's dict and add its ``rest``."""
    for key in [k for k, v in meta.items() if v is None]:
        del meta[key]
    if rest:
        if not _COMPACT_KEYS.isdisjoint(rest):
            named = ', '.join(sorted(_COMPACT_KEYS & set(rest)))
            raise ProtocolError('bad_frame', 'the object of a compact meta names a field that '
                                'has a position: %s' % named)
        meta.update(rest)
    return meta


def decode_call(payload: Union[bytes, bytearray]) -> Tuple[Dict[str, Any], bytes]:
    """Split a ``CALL``/``REPLY`` payload and parse its meta: a JSON object, or for a
    ``CALL`` the compact form (a JSON array, :func:`expand_compact_meta`), returned as the
    dict the object form would give."""
    # Every request passes through here, so the common case (compact UTF-8 meta, as the
    # supervisor writes it) is decoded inline; anything unusual takes the general path
    # below, which produces the precise error.
    if type(payload) is bytes:
        try:
            end = 4 + _unpack_u32(payload, 0)[0]
            text = payload[4:end].decode('utf-8')
            meta, stop = _scan_once(text, 0)
            if stop == len(text) and end <= len(payload):
                if type(meta) is dict:
                    return meta, payload[end:]
                # A compact meta (the supervisor's invocations), expand_compact_meta inlined.
                if type(meta) is list and len(meta) == _COMPACT_LEN:
                    rest = meta[-1]
                    if type(rest) is dict:
                        fields = dict(zip(COMPACT_INVOKE_FIELDS, meta))
                        # A null can only be where the text says null: one substring search
                        # rather than a look at every field (a "null" inside a string just
                        # takes the exact path).
                        if rest or 'null' in text:
                            fields = _complete_compact(fields, rest)
                        return fields, payload[end:]
        except (struct.error, StopIteration, ValueError, RecursionError):
            pass
    raw_meta, body = split_call(payload)
    try:
        meta = decode_json(raw_meta)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise ProtocolError('bad_frame', 'meta is not valid JSON: %s' % e) from None
    except RecursionError:
        raise ProtocolError('bad_frame', 'meta is nested too deeply') from None
    if type(meta) is list:
        return expand_compact_meta(meta), body
    if type(meta) is not dict:
        raise ProtocolError('bad_frame', 'meta is not a JSON object or a compact meta')
    return meta, body


class FrameReader:
    """Incremental decoder over one reusable receive buffer.

    Usage (this is the worker's hot loop)::

        n = sock.recv_into(reader.writable())
        for kind, flags, stream, payload in reader.feed(n):
            ...

    The buffer starts at ``size`` bytes and grows only when a single frame is larger than
    it; it shrinks back once that frame is consumed, so one 60 MiB upload does not pin
    60 MiB for the life of the worker. Headers are validated as soon as they arrive, before
    the payload is waited for, so an oversize length is refused without reading it.
    """

    __slots__ = ('_buf', '_view', '_start', '_end', '_size', '_max')

    def __init__(self, size: int = 256 * 1024, max_length: int = MAX_FRAME_LENGTH) -> None:
        self._size = size
        self._max = max_length
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self._start = 0  # first byte not yet decoded
        self._end = 0    # one past the last byte received

    def writable(self) -> memoryview:
        """The free tail of the buffer, for ``recv_into``."""
        if self._end == len(self._buf):
            self._make_room(HEADER_SIZE)
        return self._view[self._end:]

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames (a partial frame)."""
        return self._end - self._start

    def feed(self, n: int) -> List[Frame]:
        """Account for ``n`` new bytes and return every frame that is now complete."""
        self._end += n
        buf = self._buf
        pos = self._start
        end = self._end
        frames: List[Frame] = []
        append = frames.append
        unpack = _unpack_header
        known = KIND_NAMES
        max_length = self._max
        # HEADER_SIZE is spelled 10 in this loop: it runs once per frame, and a literal is
        # cheaper than a global look-up.
        while end - pos >= 10:
            length, kind, flags, stream = unpack(buf, pos)
            if flags or length > max_length or kind not in known:
                _check_header(length, kind, flags, max_length)  # raises unless flags is ASYNC
            stop = pos + 10 + length
            if stop > end:
                break
            append((kind, flags, stream, bytes(buf[pos + 10:stop])))
            pos = stop
        if pos == end:
            # The common case: the batch ended on a frame boundary, nothing to move.
            self._start = self._end = 0
            if len(buf) > self._size:
                self._shrink()
        else:
            self._start = pos
            self._make_room(HEADER_SIZE + _unpack_header(buf, pos)[0]
                            if end - pos >= HEADER_SIZE else HEADER_SIZE)
        return frames

    def feed_reply(self, n: int, stream: int) -> Optional[bytes]:
        """``feed`` for a thread waiting for the REPLY on ``stream``: when the buffer now
        holds exactly that one frame (the usual case), its payload. Otherwise None, and the
        bytes stay buffered for ``feed(0)`` to decode as usual."""
        self._end += n
        end = self._end
        if self._start or end < 10:
            return None
        length, kind, flags, got = _unpack_header(self._buf, 0)
        if kind != REPLY or got != stream or flags or length + 10 != end:
            return None
        self._end = 0
        return bytes(self._buf[10:end])

    def _make_room(self, frame_size: int) -> None:
        """Ensure the partial frame at ``_start`` can be completed inside the buffer."""
        pending = self._end - self._start
        if self._start and (self._start + frame_size > len(self._buf)
                            or self._end == len(self._buf)):
            # Move the partial frame to the front; it is at most one frame, usually tiny.
            self._buf[:pending] = self._buf[self._start:self._end]
            self._start, self._end = 0, pending
        if frame_size > len(self._buf):
            grown = bytearray(frame_size)
            grown[:pending] = self._buf[self._start:self._end]
            # A fresh buffer rather than an in-place resize: a bytearray cannot be resized
            # while a memoryview of it exists.
            self._buf, self._view = grown, memoryview(grown)
            self._start, self._end = 0, pending

    def _shrink(self) -> None:
        self._buf = bytearray(self._size)
        self._view = memoryview(self._buf)
