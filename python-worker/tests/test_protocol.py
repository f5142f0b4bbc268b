"""The frame codec against the golden vectors of ipc-protocol/testdata/v2 and its edge cases.

The vectors are shared with the Rust suite: both decode every ``.bin`` and re-encode it
from the fields in ``vectors.json``, byte for byte, so the two implementations cannot
drift apart silently.
"""

import json
import os
import struct

import pytest

from oxbus import _protocol as P

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VECTORS_DIR = os.path.join(REPO, 'ipc-protocol', 'testdata', 'v2')

with open(os.path.join(VECTORS_DIR, 'vectors.json'), encoding='utf-8') as _f:
    VECTORS = json.load(_f)


def _read(name: str) -> bytes:
    with open(os.path.join(VECTORS_DIR, name), 'rb') as f:
        return f.read()


def test_vectors_are_for_this_protocol_version():
    assert VECTORS['protocol'] == P.PROTOCOL_VERSION
    # Every kind the spec defines has at least one vector (ERROR included).
    assert {v['kind'] for v in VECTORS['vectors']} == set(P.KIND_CODES)


@pytest.mark.parametrize('vector', VECTORS['vectors'], ids=lambda v: v['name'])
def test_golden_vector_decodes_and_reencodes(vector):
    data = _read(vector['file'])
    kind, flags, stream, payload = P.decode_frame(data)
    assert P.KIND_NAMES[kind] == vector['kind']
    assert flags == vector['flags']
    assert stream == vector['stream']

    if 'meta' in vector:  # CALL / REPLY: meta JSON text + raw body
        meta_text = vector['meta'].encode('utf-8')
        body = bytes.fromhex(vector['body_hex'])
        raw_meta, raw_body = P.split_call(payload)
        assert raw_meta == meta_text
        assert raw_body == body
        meta, body2 = P.decode_call(payload)
        # A compact meta decodes to the dict of its object form.
        assert meta == json.loads(vector.get('meta_object', vector['meta'])) and body2 == body
        if kind == P.CALL:
            again = P.encode_call(stream, meta_text, body, flags)
            ours = P.encode_call(stream, json.loads(vector['meta']), body, flags)
        else:
            assert flags == 0
            again = P.encode_reply(stream, meta_text, body)
            ours = P.encode_reply(stream, meta, body)
        # Our own JSON encoder produces the same bytes from the parsed meta, too.
        assert ours == data
    else:
        if 'payload_text' in vector:
            expected = vector['payload_text'].encode('utf-8')
            assert P.encode_json(json.loads(vector['payload_text'])) == expected
        else:
            expected = bytes.fromhex(vector['payload_hex'])
        assert payload == expected
        again = P.encode_frame(kind, expected, stream, flags)
    assert again == data


def test_frame_reader_decodes_every_vector_split_at_every_byte():
    stream_bytes = b''.join(_read(v['file']) for v in VECTORS['vectors'])
    expected = [P.decode_frame(_read(v['file'])) for v in VECTORS['vectors']]
    reader = P.FrameReader(size=64)  # smaller than some frames: exercises growth too
    got = []
    for i in range(len(stream_bytes)):
        view = reader.writable()
        view[0] = stream_bytes[i]
        got.extend(reader.feed(1))
    assert got == expected
    assert reader.buffered == 0


def test_frame_reader_takes_many_frames_in_one_read():
    frames = [P.encode_frame(P.PING, b'%08d' % i) for i in range(1000)]
    data = b''.join(frames) + frames[0][:5]  # plus half a header
    reader = P.FrameReader(size=1 << 20)
    view = reader.writable()
    view[:len(data)] = data
    got = reader.feed(len(data))
    assert [f[3] for f in got] == [b'%08d' % i for i in range(1000)]
    assert reader.buffered == 5


def test_frame_reader_grows_for_a_big_frame_and_shrinks_back():
    big = P.encode_frame(P.LOG, b'x' * 100_000)
    reader = P.FrameReader(size=1024)
    pos = 0
    got = []
    while pos < len(big):
        view = reader.writable()
        n = min(len(view), len(big) - pos)
        view[:n] = big[pos:pos + n]
        pos += n
        got.extend(reader.feed(n))
    assert got == [(P.LOG, 0, 0, b'x' * 100_000)]
    assert len(reader.writable()) == 1024


def test_oversize_length_is_refused_before_the_payload_arrives():
    header = P.HEADER.pack(P.MAX_FRAME_LENGTH + 1, P.CALL, 0, 1)
    reader = P.FrameReader()
    reader.writable()[:10] = header
    with pytest.raises(P.ProtocolError) as e:
        reader.feed(10)
    assert e.value.code == 'frame_too_large'
    with pytest.raises(P.ProtocolError):
        P.decode_frame(header)
    small = P.FrameReader(max_length=10)
    small.writable()[:21] = P.encode_frame(P.LOG, b'x' * 11)
    with pytest.raises(P.ProtocolError):
        small.feed(21)


def test_the_maximum_length_itself_is_allowed():
    header = P.HEADER.pack(P.MAX_FRAME_LENGTH, P.CALL, 0, 1)
    reader = P.FrameReader(size=1024)
    reader.writable()[:10] = header
    assert reader.feed(10) == []  # waits for the payload, does not refuse


def test_meta_len_larger_than_payload_is_refused():
    payload = struct.pack('>I', 100) + b'{}'
    with pytest.raises(P.ProtocolError) as e:
        P.split_call(payload)
    assert e.value.code == 'bad_frame'
    with pytest.raises(P.ProtocolError):
        P.decode_call(payload)
    # A meta_len that reaches past the end must not make a truncated meta acceptable.
    tricky = struct.pack('>I', 100) + b'{"a":1}'
    with pytest.raises(P.ProtocolError):
        P.decode_call(tricky)
    with pytest.raises(P.ProtocolError):
        P.split_call(b'\x00\x00')  # not even a meta_len
    # meta_len == length - 4 (empty body) is fine.
    assert P.split_call(struct.pack('>I', 2) + b'{}') == (b'{}', b'')


def test_meta_must_be_a_json_object_or_a_compact_meta():
    for bad in (b'[]', b'{x}', b'"x"', b'1'):
        with pytest.raises(P.ProtocolError):
            P.decode_call(struct.pack('>I', len(bad)) + bad)


def _compact(*fields, rest=None):
    meta = list(fields) + [None] * (len(P.COMPACT_INVOKE_FIELDS) - len(fields))
    return P.encode_json(meta + [{} if rest is None else rest])


@pytest.mark.parametrize('payload', [bytes, bytearray])
def test_a_compact_meta_decodes_to_its_object_form(payload):
    meta = _compact('invoke', 'demo.echo', 'c1', 'rest', None, 'GET',
                    rest={'security': {'name': 'd', 'type': 'basic'}, 'tracestate': 'a=b'})
    got, body = P.decode_call(payload(struct.pack('>I', len(meta)) + meta + b'\x00raw'))
    # Absent (null) fields are absent, as in the object form; the rest is merged in.
    assert got == {'op': 'invoke', 'service': 'demo.echo', 'cid': 'c1', 'channel': 'rest',
                   'method': 'GET', 'security': {'name': 'd', 'type': 'basic'},
                   'tracestate': 'a=b'}
    assert body == b'\x00raw'


@pytest.mark.parametrize('meta', [
    P.encode_json(['invoke', 'a']),                                     # too short
    _compact('invoke', 'a')[:-1] + b',{}]',                             # too long
    _compact('invoke', 'a').replace(b',{}]', b',[]]'),                  # rest not an object
    _compact('invoke', 'a', rest={'cid': 'x'}),                         # rest names a position
])
def test_a_malformed_compact_meta_is_a_protocol_error(meta):
    with pytest.raises(P.ProtocolError) as e:
        P.decode_call(struct.pack('>I', len(meta)) + meta)
    assert e.value.code == 'bad_frame'


def test_a_meta_nested_too_deeply_is_a_protocol_error_not_a_recursion_error():
    # A RecursionError escaping a thread that reads the socket would leave it marked busy
    # with every other waiter parked behind it; a ProtocolError ends the worker cleanly.
    meta = b'{"a":' * 100000 + b'1' + b'}' * 100000
    payload = struct.pack('>I', len(meta)) + meta
    for p in (payload, bytearray(payload)):
        with pytest.raises(P.ProtocolError) as e:
            P.decode_call(p)
        assert e.value.code == 'bad_frame'


@pytest.mark.parametrize('flags', [0x02, 0x80, 0xFF, 0x03])
def test_unknown_flag_bits_are_refused(flags):
    data = P.HEADER.pack(0, P.PING, flags, 0)
    with pytest.raises(P.ProtocolError) as e:
        P.decode_frame(data)
    assert e.value.code == 'bad_flags'
    reader = P.FrameReader()
    reader.writable()[:10] = data
    with pytest.raises(P.ProtocolError):
        reader.feed(10)
    with pytest.raises(P.ProtocolError):
        P.encode_frame(P.PING, b'', 0, flags)


def test_async_flag_is_known():
    frame = P.encode_call(0x8000_0001, {'op': 'invoke'}, b'{}', P.FLAG_ASYNC)
    assert P.decode_frame(frame)[1] == P.FLAG_ASYNC


@pytest.mark.parametrize('kind', [0, 12, 14, 16, 255])
def test_unknown_kind_is_refused(kind):
    with pytest.raises(P.ProtocolError) as e:
        P.decode_frame(P.HEADER.pack(0, kind, 0, 0))
    assert e.value.code == 'unknown_kind'


def test_decode_frame_refuses_truncated_and_trailing_bytes():
    frame = P.encode_frame(P.PING, b'12345678')
    with pytest.raises(P.ProtocolError):
        P.decode_frame(frame[:-1])
    with pytest.raises(P.ProtocolError):
        P.decode_frame(frame + b'x')
    with pytest.raises(P.ProtocolError):
        P.decode_frame(frame[:9])


def test_body_bytes_are_carried_raw():
    body = bytes(range(256))
    frame = P.encode_reply(7, {'status': 200, 'content_type': 'application/octet-stream'}, body)
    kind, _, stream, payload = P.decode_frame(frame)
    assert (kind, stream) == (P.REPLY, 7)
    assert P.decode_call(payload)[1] == body
    assert body in frame  # not base64, not escaped


def test_decode_json_matches_json_loads():
    for text in [b'{"a":1}', b' {"a": [1, 2.5, null]} \n', '{"é":"\\ud83d\\ude00"}'.encode(),
                 b'\xef\xbb\xbf{"bom":true}', b'"x"', b'3']:
        assert P.decode_json(text) == json.loads(text)
    for bad in [b'', b'{', b'{"a":1}x', b'\xff']:
        with pytest.raises(ValueError):
            P.decode_json(bad)


def test_decode_json_takes_utf8_only():
    # UTF-16 and UTF-32 (which json.loads would detect) are refused, naming UTF-8: the
    # server's nesting check reads the body as UTF-8, and a deep body in another encoding
    # must not get past it to the decoder.
    deep = '[' * 5000 + ']' * 5000
    for enc in ['utf-16', 'utf-16-le', 'utf-16-be', 'utf-32', 'utf-32-le', 'utf-32-be']:
        for text in ['{"u":1}', deep]:
            with pytest.raises(ValueError) as e:
                P.decode_json(text.encode(enc))
            assert 'UTF-8' in str(e.value) or 'Expecting' in str(e.value), (enc, e.value)
    # Big-endian UTF-16 without a BOM is valid UTF-8 (NULs and ASCII): it fails as JSON.
    with pytest.raises(ValueError):
        P.decode_json('{"u":1}'.encode('utf-16-be'))


def test_encode_json_is_compact_utf8_and_survives_lone_surrogates():
    assert P.encode_json({'a': [1, 'é'], 'b': None}) == '{"a":[1,"é"],"b":null}'.encode()
    assert json.loads(P.encode_json({'s': '\ud800'})) == {'s': '\ud800'}
    with pytest.raises(TypeError):
        P.encode_json({'x': object()})
    # The reused C encoder is left in a usable state after an error.
    assert P.encode_json({'x': [1]}) == b'{"x":[1]}'
