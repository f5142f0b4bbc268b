"""A service invoked by a file-transfer channel (``channel: "file-transfer"``): the file as
Zato 3.2 shows it in ``self.request.raw_request`` (decoded, parsed per ``parse_with``, or
left to the service in path-only mode), decoding and parsing failures reported in
``parse_error`` without failing the call, and ``self.channel``."""

import asyncio
import datetime
import json
import sys
import types
import xml.etree.ElementTree as ET

import pytest

from oxbus import Service
from oxbus import _protocol as P
from oxbus import files as F
from oxbus._dispatch import Dispatcher

ZATO_KEYS = ['full_path', 'file_name', 'relative_dir', 'base_dir', 'channel_name', 'ts_utc',
             'raw_data', 'data', 'has_raw_data', 'has_data', 'parse_error']
OXBUS_KEYS = ['watched_dir', 'size', 'mtime_ns', 'redelivered']


class Seen:
    last = None


class OnFile(Service):
    name = 'orders.on-file'
    # A SimpleIO input does not apply to this channel (the payload is the file's dict).
    input = 'customer_id'

    def handle(self):
        req = self.request.raw_request
        Seen.last = {
            'channel': (self.channel.type, self.channel.name),
            'raw_request': req,
            'payload_is_raw_request': self.request.payload is req,
            'raw': self.request.raw,
            'data_format': self.request.data_format,
            'input': dict(self.request.input),
        }
        if req['file_name'] == 'fail.csv':
            raise ValueError('cannot take it')
        self.response.payload = {'ok': True}


class AsyncOnFile(Service):
    name = 'orders.on-file-async'

    async def handle(self):
        await asyncio.sleep(0)
        req = self.request.raw_request
        Seen.last = {'channel': (self.channel.type, self.channel.name),
                     'raw_data': req['raw_data'], 'data': req['data']}


def file_meta(service=OnFile.name, **file):
    base = {'full_path': '/data/in/2026/x.csv', 'file_name': 'x.csv', 'relative_dir': '2026',
            'base_dir': '/data/in/2026', 'watched_dir': '/data/in',
            'ts_utc': '2026-12-07T10:00:00.123456', 'size': 1234,
            'mtime_ns': 1733565600123456789, 'has_raw_data': True, 'binary': False,
            'data_encoding': 'utf-8', 'parse_with': None, 'redelivered': False}
    base.update(file)
    return {'op': 'invoke', 'service': service, 'cid': 'cid-1', 'channel': 'file-transfer',
            'channel_name': 'orders-in', 'data_format': 'raw', 'deadline_ms': 60000,
            'file': base}


def run(meta, body):
    """The CALL through the dispatcher; (REPLY meta, REPLY body) as the server gets them."""
    Seen.last = None
    d = Dispatcher({OnFile.name: OnFile, AsyncOnFile.name: AsyncOnFile})
    # Through the codec both ways, as on the wire.
    _k, _f, stream, payload = P.decode_frame(P.encode_call(1, meta, body))
    meta, body = P.decode_call(payload)
    reply, out = P.decode_call(P.decode_frame(d.run(stream, meta, body))[3])
    return reply, out


def seen_file(meta, body):
    reply, out = run(meta, body)
    assert reply['status'] == 200, out
    assert Seen.last is not None, 'the service did not run'
    return Seen.last['raw_request']


def test_the_service_sees_the_file_as_zato_shows_it():
    body = 'id,name\n1,Żółw\n'.encode()
    reply, out = run(file_meta(parse_with='csv'), body)
    assert reply['status'] == 200, out
    assert 'error' not in reply and 'exc' not in reply
    assert Seen.last['channel'] == ('file-transfer', 'orders-in')
    assert Seen.last['payload_is_raw_request'] is True
    assert Seen.last['raw'] == body
    assert Seen.last['data_format'] == 'raw'
    assert Seen.last['input'] == {}
    req = Seen.last['raw_request']
    assert list(req) == ZATO_KEYS + OXBUS_KEYS
    assert req == {
        'full_path': '/data/in/2026/x.csv', 'file_name': 'x.csv', 'relative_dir': '2026',
        'base_dir': '/data/in/2026', 'channel_name': 'orders-in',
        'ts_utc': '2026-12-07T10:00:00.123456', 'raw_data': 'id,name\n1,Żółw\n',
        'data': [['id', 'name'], ['1', 'Żółw']], 'has_raw_data': True, 'has_data': True,
        'parse_error': None, 'watched_dir': '/data/in', 'size': 1234,
        'mtime_ns': 1733565600123456789, 'redelivered': False}


def test_text_without_parse_with_is_decoded_and_not_parsed():
    req = seen_file(file_meta(), 'zażółć\r\n'.encode())
    assert req['raw_data'] == 'zażółć\r\n'
    assert (req['data'], req['has_data'], req['parse_error']) == (None, False, None)
    assert req['has_raw_data'] is True


@pytest.mark.parametrize('encoding, text', [
    ('latin-1', 'café'),
    ('utf-16', 'żółw'),
    ('cp1250', 'zażółć'),
    (None, 'żółw'),           # absent: UTF-8
    ('', 'żółw'),
])
def test_the_channels_encoding_decodes_the_text(encoding, text):
    body = text.encode(encoding or 'utf-8')
    req = seen_file(file_meta(data_encoding=encoding), body)
    assert req['raw_data'] == text and req['parse_error'] is None


def test_a_binary_file_stays_bytes_and_is_never_parsed():
    body = b'\x89PNG\r\n\x1a\n\x00\xff'
    req = seen_file(file_meta(binary=True, parse_with='json', data_encoding='nope',
                              file_name='x.png'), body)
    assert req['raw_data'] == body and isinstance(req['raw_data'], bytes)
    assert (req['data'], req['has_data'], req['parse_error']) == (None, False, None)
    assert req['has_raw_data'] is True


def test_path_only_mode_gives_the_path_and_no_data():
    req = seen_file(file_meta(has_raw_data=False, parse_with='json', size=99), b'')
    assert req['raw_data'] == '' and isinstance(req['raw_data'], str)
    assert (req['has_raw_data'], req['data'], req['has_data'], req['parse_error']) == (
        False, None, False, None)
    assert (req['full_path'], req['base_dir'], req['size']) == (
        '/data/in/2026/x.csv', '/data/in/2026', 99)


def test_a_file_directly_in_base_dir_has_an_empty_relative_dir():
    req = seen_file(file_meta(full_path='/data/in/x.csv', relative_dir=''), b'a')
    assert req['relative_dir'] == ''
    meta = file_meta()
    del meta['file']['relative_dir']
    assert seen_file(meta, b'a')['relative_dir'] == ''


def test_an_empty_file_is_empty_text():
    req = seen_file(file_meta(), b'')
    assert req['raw_data'] == '' and req['has_raw_data'] is True
    req = seen_file(file_meta(parse_with='lines'), b'')
    assert (req['data'], req['has_data']) == ([], True)


@pytest.mark.parametrize('parse_with, text, expected', [
    ('json', '{"id": 7, "tags": ["a", "ż"]}', {'id': 7, 'tags': ['a', 'ż']}),
    ('json', '[1, 2.5, null]', [1, 2.5, None]),
    ('csv', 'a,b\r\n"x, y",2\r\n', [['a', 'b'], ['x, y', '2']]),
    ('csv', 'a;b\n', [['a;b']]),
    ('lines', 'one\ntwo\r\nthree', ['one', 'two', 'three']),
    ('py:json.loads', '{"a": 1}', {'a': 1}),
    (' json ', '1', 1),                       # Zato strips the name
    # A method of a class of a module.
    ('py:datetime.date.fromisoformat', '2026-12-07', datetime.date(2026, 12, 7)),
])
def test_each_parser(parse_with, text, expected):
    req = seen_file(file_meta(parse_with=parse_with), text.encode())
    assert req['parse_error'] is None, req['parse_error']
    assert (req['data'], req['has_data']) == (expected, True)
    assert req['raw_data'] == text


def test_xml_is_an_element():
    text = '<?xml version="1.0" encoding="UTF-8"?><order id="7"><item>ż</item></order>'
    req = seen_file(file_meta(parse_with='xml'), text.encode())
    assert req['parse_error'] is None and req['has_data'] is True
    root = req['data']
    assert isinstance(root, ET.Element)
    assert (root.tag, root.attrib, root.find('item').text) == ('order', {'id': '7'}, 'ż')


def test_py_csv_reader_gets_a_file_like_object_as_in_zato():
    # csv.reader of the str itself would yield one row per character.
    req = seen_file(file_meta(parse_with='py:csv.reader'), b'a,b\n1,2\n')
    assert req['parse_error'] is None and req['has_data'] is True
    assert not isinstance(req['data'], list)  # a reader, as Zato gives it
    assert list(req['data']) == [['a', 'b'], ['1', '2']]


@pytest.mark.parametrize('parse_with, says', [
    ('py:oxbus_no_such_module.parse', "ModuleNotFoundError: No module named "
                                      "'oxbus_no_such_module'"),
    ('py:json.no_such_function', 'AttributeError'),
])
def test_a_py_parser_that_does_not_import_is_a_parse_error(parse_with, says):
    reply, out = run(file_meta(parse_with=parse_with), b'{}')
    assert reply['status'] == 200 and json.loads(out) == {'ok': True}
    req = Seen.last['raw_request']
    assert req['parse_error'].startswith('Traceback (most recent call last):')
    assert says in req['parse_error']
    assert (req['data'], req['has_data'], req['raw_data']) == (None, False, '{}')


@pytest.mark.parametrize('parse_with, says', [
    ('yaml', "unknown parser 'yaml'"),
    ('py:json', 'expected py:<module>.<callable>'),
    ('py:json.decoder.JSONDecodeError.__doc__', 'is not callable'),
    (5, 'parse_with is a str, not int'),
])
def test_a_parse_with_that_names_no_parser_is_a_parse_error(parse_with, says):
    req = seen_file(file_meta(parse_with=parse_with), b'{}')
    assert says in req['parse_error']
    assert (req['data'], req['has_data'], req['raw_data']) == (None, False, '{}')


def test_a_parse_failure_still_invokes_the_service():
    reply, out = run(file_meta(parse_with='json'), b'{"id": ')
    assert reply['status'] == 200 and json.loads(out) == {'ok': True}
    assert 'exc' not in reply and 'error' not in reply
    req = Seen.last['raw_request']
    assert req['parse_error'].startswith('Traceback (most recent call last):')
    assert 'JSONDecodeError' in req['parse_error']
    assert (req['data'], req['has_data'], req['raw_data']) == (None, False, '{"id": ')
    req = seen_file(file_meta(parse_with='xml'), b'<a><b></a>')
    assert 'ParseError' in req['parse_error'] and req['has_data'] is False


def test_an_unknown_encoding_is_a_parse_error_not_a_failed_call():
    reply, out = run(file_meta(data_encoding='no-such-codec', parse_with='json'), b'{}')
    assert reply['status'] == 200, out
    req = Seen.last['raw_request']
    assert req['parse_error'] == 'cannot decode as no-such-codec: unknown encoding: no-such-codec'
    assert req['raw_data'] == b'{}'
    assert (req['data'], req['has_data'], req['has_raw_data']) == (None, False, True)
    # A codec that is not a text encoding, and an encoding that is not even a str.
    req = seen_file(file_meta(data_encoding='base64'), b'eA==')
    assert req['parse_error'].startswith('cannot decode as base64:')
    req = seen_file(file_meta(data_encoding=8), b'x')
    assert req['parse_error'].startswith('cannot decode as 8:') and req['raw_data'] == b'x'


def test_bytes_that_do_not_decode_stay_bytes_and_are_not_parsed():
    body = b'{"a": "\xff"}'
    req = seen_file(file_meta(parse_with='json'), body)
    assert req['raw_data'] == body
    assert req['parse_error'].startswith('cannot decode as utf-8: ')
    assert "can't decode byte 0xff" in req['parse_error']
    assert (req['data'], req['has_data']) == (None, False)


def test_a_failing_service_fails_the_file():
    reply, out = run(file_meta(file_name='fail.csv'), b'a,b')
    assert reply['status'] == 500 and reply['exc'] == 'ValueError'
    doc = json.loads(out)
    # No remote client on this channel: the exception and its traceback go to the server,
    # which writes them beside the failed file.
    assert (doc['error'], doc['cid']) == ('internal error', 'cid-1')
    assert doc['exception'].startswith('ValueError: ')
    assert doc['traceback'].startswith('Traceback (most recent call last):')
    assert 'ValueError' in doc['traceback']



def test_the_body_is_never_taken_as_json_whatever_data_format_says():
    for data_format in ('json', None):
        meta = file_meta()
        if data_format is None:
            del meta['data_format']
        else:
            meta['data_format'] = data_format
        req = seen_file(meta, b'not json')
        assert req['raw_data'] == 'not json'
        assert Seen.last['data_format'] == 'raw'


def test_redelivered_and_the_oxbus_extras():
    req = seen_file(file_meta(redelivered=True, size=3, mtime_ns=2 ** 63 - 1), b'abc')
    assert (req['redelivered'], req['size'], req['mtime_ns']) == (True, 3, 2 ** 63 - 1)


def test_a_call_without_its_file_object_is_refused_as_input():
    meta = file_meta()
    del meta['file']
    reply, out = run(meta, b'x')
    assert (reply['status'], reply['error']) == (400, 'input')
    assert 'without its file object' in json.loads(out)['error']
    assert Seen.last is None


def test_an_async_service():
    d = Dispatcher({AsyncOnFile.name: AsyncOnFile})
    meta = file_meta(AsyncOnFile.name, parse_with='lines')
    assert d.is_async(meta)
    frame = asyncio.run(d.run_async(1, meta, b'a\nb'))
    reply, out = P.decode_call(P.decode_frame(frame)[3])
    assert reply['status'] == 200, out
    assert Seen.last == {'channel': ('file-transfer', 'orders-in'), 'raw_data': 'a\nb',
                         'data': ['a', 'b']}


def test_other_channels_keep_raw_request_as_the_bytes():
    class Echo(Service):
        name = 'echo.raw'

        def handle(self):
            Seen.last = (self.request.raw_request, self.request.payload)

    d = Dispatcher({Echo.name: Echo})
    meta = file_meta()
    meta.update(service='echo.raw', channel='rest')
    d.run(1, meta, b'abc')
    assert Seen.last == (b'abc', b'abc')


def test_a_py_parser_is_resolved_once_and_again_after_its_module_is_replaced(monkeypatch):
    name = 'oxbus_test_file_parsers'
    calls = []
    import importlib
    original = importlib.import_module

    def counting(module_name, *args):
        calls.append(module_name)
        return original(module_name, *args)

    monkeypatch.setattr(importlib, 'import_module', counting)
    first = types.ModuleType(name)
    first.parse = lambda text: ('first', text)
    monkeypatch.setitem(sys.modules, name, first)
    assert F.get_parser('py:%s.parse' % name)('x') == ('first', 'x')
    assert F.get_parser('py:%s.parse' % name)('y') == ('first', 'y')
    assert calls == [name]
    # A hot deployment put a new module of that name in sys.modules.
    second = types.ModuleType(name)
    second.parse = lambda text: ('second', text)
    monkeypatch.setitem(sys.modules, name, second)
    assert F.get_parser('py:%s.parse' % name)('z') == ('second', 'z')
    assert calls == [name, name]


def test_a_module_that_fails_its_own_imports_is_reported_as_such(monkeypatch, tmp_path):
    (tmp_path / 'oxbus_test_broken_parser.py').write_text('import oxbus_test_missing_dep\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    req = seen_file(file_meta(parse_with='py:oxbus_test_broken_parser.parse'), b'x')
    assert "No module named 'oxbus_test_missing_dep'" in req['parse_error']
    sys.modules.pop('oxbus_test_broken_parser', None)


# -- in a real worker ---------------------------------------------------------------------------

WORKER_SERVICES = {'ftsvc.py': '''
    from oxbus import Service

    class Sink(Service):
        def handle(self):
            req = self.request.raw_request
            self.response.payload = {
                'channel': [self.channel.type, self.channel.name],
                'raw_data': req['raw_data'], 'data': req['data'],
                'relative_dir': req['relative_dir'], 'same': req is self.request.payload}
'''}


def test_a_file_reaches_a_service_in_a_real_worker(sup):
    sup.start(WORKER_SERVICES, threads=2)
    meta = file_meta('ftsvc.sink', parse_with='json')
    sup.call(1, 'ftsvc.sink', b'{"n": 1}', method=None, path=None, params=None, query=None,
             headers=None, **{k: v for k, v in meta.items() if k not in ('op', 'service')})
    meta, data = sup.replies(1)[1]
    assert meta['status'] == 200, data
    assert json.loads(data) == {'channel': ['file-transfer', 'orders-in'],
                                'raw_data': '{"n": 1}', 'data': {'n': 1},
                                'relative_dir': '2026', 'same': True}
