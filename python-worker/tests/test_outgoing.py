"""The outgoing connections' Python API (self.out.rest, self.out.sql) against a fake server.

Most tests drive :class:`oxbus.outgoing.OutgoingAPI` with a fake ``request`` that checks
each CALL's meta and body against ipc-protocol/SPEC.md ("Outgoing connections and
secrets") and answers with canned REPLYs. The last ones run a real worker process against
the FakeSupervisor to check that an async service's awaitable calls are answered while the
event loop never blocks (the REPLY is read by another thread).
"""

import asyncio
import datetime as dt
import json
import uuid
from contextlib import closing
from decimal import Decimal

import pytest

from conftest import FakeSupervisor  # noqa: F401  (the sup fixture's class)
from oxbus import _protocol as P
from oxbus import outgoing as O
from oxbus.outgoing import OutgoingAPI
from oxbus.service import _invocation_meta, current_invocation
from oxbus.sql import Json, decode_value, encode_value, text

TRACEPARENT = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'


class FakeServer:
    """A ``request`` function: records every call, answers from a queue or a handler."""

    def __init__(self, handler=None):
        self.calls = []       # (meta dict, body bytes)
        self.answers = []     # (meta dict, body bytes), answered in order
        self.handler = handler

    def __call__(self, meta, body=b''):
        if isinstance(meta, bytes):
            meta = json.loads(meta)
        assert isinstance(body, bytes)
        # The whole CALL must encode as a frame (JSON-serialisable meta).
        P.encode_call(P.WORKER_STREAM_BIT | 1, meta, body)
        self.calls.append((meta, body))
        if self.handler is not None:
            reply_meta, reply_body = self.handler(meta, body)
        else:
            reply_meta, reply_body = self.answers.pop(0)
        if not isinstance(reply_body, bytes):
            reply_body = json.dumps(reply_body).encode()
        return json.dumps(reply_meta).encode(), reply_body

    def answer(self, meta, body=b''):
        self.answers.append((meta, body))

    @property
    def last(self):
        return self.calls[-1]


@pytest.fixture
def server():
    return FakeServer()


@pytest.fixture
def out(server):
    return OutgoingAPI(server)


@pytest.fixture
def invocation():
    """Run as if inside an invocation with cid 'cid-9' and a trace context."""
    t1 = current_invocation.set(('cid-9', 'svc.x', 5))
    t2 = _invocation_meta.set({'traceparent': TRACEPARENT, 'tracestate': 'vendor=1'})
    yield
    _invocation_meta.reset(t2)
    current_invocation.reset(t1)


def ok(status=200, headers=(), body=b''):
    return {'status': status, 'headers': [list(h) for h in headers]}, body


# -- REST: the calls --------------------------------------------------------------------


@pytest.mark.parametrize('method', ['get', 'head'])
def test_bodiless_methods_send_params_and_headers(out, server, invocation, method):
    server.answer(*ok())
    conn = out.rest['CRM'].conn
    getattr(conn, method)('cid-1', params={'id': 42, 'q': 'a b', 'flag': True, 'f': 1.5,
                                           'tag': ['x', 2], 'skip': None},
                          headers={'X-Trace': 'on', 'X-N': 3})
    meta, body = server.last
    assert meta == {'op': 'out.rest', 'conn': 'CRM', 'method': method.upper(),
                    'cid': 'cid-1', 'traceparent': TRACEPARENT, 'tracestate': 'vendor=1',
                    'params': {'id': '42', 'q': 'a b', 'flag': 'True', 'f': '1.5',
                               'tag': ['x', '2']},
                    'headers': {'X-Trace': 'on', 'X-N': '3'}}
    assert body == b''


@pytest.mark.parametrize('method', ['post', 'put', 'patch', 'delete', 'options', 'send'])
def test_methods_with_a_body(out, server, method):
    server.answer(*ok(201))
    response = getattr(out.rest['CRM'].conn, method)('c', {'name': 'Ann', 'n': [1, None]},
                                                     params={'id': 1})
    meta, body = server.last
    assert meta['method'] == ('POST' if method == 'send' else method.upper())
    assert meta['body_kind'] == 'json' and meta['params'] == {'id': '1'}
    assert json.loads(body) == {'name': 'Ann', 'n': [1, None]}
    assert response.status_code == 201


def test_data_encodings(out, server):
    conn = out.plain_http['raw'].conn   # plain_http is rest
    assert out.plain_http is out.rest
    for data, want_body, want_kind in [
            (b'\x00\xff', b'\x00\xff', None), (bytearray(b'ab'), b'ab', None),
            (memoryview(b'mv'), b'mv', None), ('zaż', 'zaż'.encode(), None),
            ('', b'', None), (None, b'', None), ([1, 'a'], b'[1,"a"]', 'json'),
            (3, b'3', 'json'), (True, b'true', 'json')]:
        server.answer(*ok())
        conn.post('c', data)
        meta, body = server.last
        assert body == want_body, data
        assert meta.get('body_kind') == want_kind, data


def test_content_type_header_becomes_the_content_type_field(out, server):
    server.answer(*ok())
    out.rest['x'].conn.put('c', '<a/>', headers={'content-type': 'application/xml',
                                                 'Accept': 'text/xml'})
    meta, _ = server.last
    assert meta['content_type'] == 'application/xml'
    assert meta['headers'] == {'Accept': 'text/xml'}


def test_cid_defaults_to_the_invocations_and_timeout_becomes_deadline(out, server,
                                                                      invocation):
    server.answer(*ok())
    out.rest['x'].conn.get(None, timeout=1.5)
    meta, _ = server.last
    assert meta['cid'] == 'cid-9' and meta['deadline_ms'] == 1500
    with pytest.raises(ValueError):
        out.rest['x'].conn.get('c', timeout=0)


def test_no_trace_context_outside_an_invocation(out, server):
    server.answer(*ok())
    out.rest['x'].conn.get('c')
    meta, _ = server.last
    assert 'traceparent' not in meta and 'tracestate' not in meta and 'deadline_ms' not in meta


def test_bad_params_and_data_are_type_errors(out, server):
    conn = out.rest['x'].conn
    with pytest.raises(TypeError, match='query parameter'):
        conn.get('c', params={'a': object()})
    with pytest.raises(TypeError, match='params is a dict'):
        conn.get('c', params=[('a', 'b')])
    with pytest.raises(TypeError, match='JSON-serialisable'):
        conn.post('c', {'a': object()})
    assert server.calls == []


def test_the_request_method_and_unknown_names_are_found_at_call_time(out, server):
    server.answer({'status': 404, 'error': 'unknown_conn'},
                  {'error': 'no outgoing REST connection named nope'})
    wrapper = out.rest['nope']   # no call yet
    assert out.rest.get('nope') is wrapper and wrapper.conn.name == 'nope'
    with pytest.raises(O.UnknownConnection) as info:
        wrapper.conn.request('get', 'c')
    assert server.last[0]['method'] == 'GET'
    e = info.value
    assert isinstance(e, KeyError) and isinstance(e, O.OutgoingError)
    assert str(e) == 'no outgoing REST connection named nope'
    assert (e.conn, e.error, e.status) == ('nope', 'unknown_conn', 404)


# -- REST: the response -----------------------------------------------------------------


def test_response_properties(out, server):
    server.answer(*ok(200, [('content-type', 'application/json; charset=utf-8'),
                            ('set-cookie', 'a=1'), ('set-cookie', 'b=2')],
                      '{"id": 1, "name": "Zoë"}'.encode()))
    r = out.rest['CRM'].conn.get('c')
    assert r.status_code == 200 and r.ok and bool(r) and r.reason == 'OK'
    assert r.headers['Content-Type'] == 'application/json; charset=utf-8'
    assert r.headers.getall('Set-Cookie') == ['a=1', 'b=2']
    assert r.data == {'id': 1, 'name': 'Zoë'} and r.json() == r.data
    assert r.text == '{"id": 1, "name": "Zoë"}' and r.content == '{"id": 1, "name": "Zoë"}'.encode()
    r.raise_for_status()  # no error


def test_text_by_charset_and_data_only_for_json(out, server):
    server.answer(*ok(200, [('Content-Type', 'text/plain; charset=ISO-8859-1')],
                      'café'.encode('latin-1')))
    r = out.rest['x'].conn.get('c')
    assert r.text == 'café' and r.data is None
    server.answer(*ok(200, [('content-type', 'text/plain')], b'caf\xc3\xa9 \xff'))
    r = out.rest['x'].conn.get('c')
    assert r.text == 'café \ufffd'
    server.answer(*ok(200, [('content-type', 'application/problem+json')], b'{"t": 1}'))
    assert out.rest['x'].conn.get('c').data == {'t': 1}
    server.answer(*ok(200, [('content-type', 'application/json')], b'not json'))
    r = out.rest['x'].conn.get('c')
    assert r.data is None
    with pytest.raises(ValueError):
        r.json()
    server.answer(*ok(200, [('content-type', 'text/plain')], b'[1]'))
    r = out.rest['x'].conn.get('c')
    assert r.data is None and r.json() == [1]  # json() ignores the content type
    server.answer(*ok(204, [('content-type', 'application/json')], b''))
    assert out.rest['x'].conn.get('c').data is None


@pytest.mark.parametrize('status', [400, 404, 500, 503])
def test_error_statuses_do_not_raise_until_asked(out, server, status):
    server.answer(*ok(status, [], b'nope'))
    r = out.rest['CRM'].conn.get('c')
    assert r.status_code == status and not r.ok
    with pytest.raises(O.HTTPError) as info:
        r.raise_for_status()
    assert info.value.status_code == status and info.value.response is r
    assert 'CRM' in str(info.value) and str(status) in str(info.value)


# -- errors -----------------------------------------------------------------------------


ERRORS = [
    ('unknown_conn', 404, O.UnknownConnection, KeyError),
    ('invalid', 400, O.InvalidCall, ValueError),
    ('pool_full', 503, O.PoolFull, O.OutgoingError),
    ('timeout', 504, O.OutgoingTimeout, TimeoutError),
    ('connect', 502, O.OutgoingConnectionError, ConnectionError),
    ('io', 502, O.OutgoingConnectionError, ConnectionError),
    ('too_large', 502, O.ResponseTooLarge, O.OutgoingError),
    ('auth', 502, O.AuthError, O.OutgoingError),
]


@pytest.mark.parametrize('error,status,cls,base', ERRORS)
def test_every_error_code_is_its_exception(out, server, error, status, cls, base):
    message = 'CRM (https://crm.example:443): %s happened' % error
    for call in (lambda: out.rest['CRM'].conn.get('c'),
                 lambda: out.sql['CRM'].execute('SELECT 1')):
        server.answer({'status': status, 'error': error}, {'error': message})
        with pytest.raises(cls) as info:
            call()
        e = info.value
        assert isinstance(e, base) and isinstance(e, O.OutgoingError)
        assert str(e) == message and e.error == error and e.status == status
        assert e.conn == 'CRM'


@pytest.mark.parametrize('code,cls', [
    ('23505', O.IntegrityError), ('23503', O.IntegrityError), ('42601', O.ProgrammingError),
    ('42P01', O.ProgrammingError), ('22012', O.DatabaseError), ('1062', O.IntegrityError),
    ('1452', O.IntegrityError), ('1451', O.IntegrityError), ('1064', O.ProgrammingError),
    ('1146', O.ProgrammingError), ('1205', O.DatabaseError), ('2067', O.IntegrityError),
    ('1555', O.IntegrityError), ('19', O.IntegrityError), ('1', O.DatabaseError),
    (None, O.DatabaseError)])
def test_sql_errors_by_database_code(out, server, code, cls):
    doc = {'error': 'crm: duplicate key value violates unique constraint "t_pkey"'}
    if code is not None:
        doc['code'] = code
    server.answer({'status': 400, 'error': 'sql'}, doc)
    with pytest.raises(cls) as info:
        out.sql['crm'].execute('INSERT INTO t VALUES (1)')
    e = info.value
    assert type(e) is cls and isinstance(e, O.SQLError) and isinstance(e, O.DatabaseError)
    assert e.code == code and str(e) == doc['error'] and e.error == 'sql'


def test_a_server_error_without_a_json_body_and_an_unknown_op(out, server):
    server.answer({'status': 501}, b'{"error":"unknown op: out.sql"}')
    with pytest.raises(O.OutgoingError, match='unknown op: out.sql'):
        out.sql['crm'].execute('SELECT 1')
    server.answer({'status': 502, 'error': 'weird_new_code'}, b'plain text')
    with pytest.raises(O.OutgoingError, match='plain text'):
        out.rest['x'].conn.get('c')


# -- SQL: calls and values ----------------------------------------------------------------


def result(columns, types, rows, rowcount=None, last_insert_id=None):
    return ({'status': 200}, {'columns': columns, 'types': types, 'rows': rows,
                              'rowcount': len(rows) if rowcount is None else rowcount,
                              'last_insert_id': last_insert_id})


def test_execute_sends_sql_and_params(out, server, invocation):
    server.answer(*result(['id', 'name'], ['int', 'text'], [[1, 'Ann'], [2, None]]))
    res = out.sql['crm'].execute('SELECT id, name FROM t WHERE r = :r', {'r': 'EU'})
    meta, body = server.last
    assert meta == {'op': 'out.sql', 'conn': 'crm', 'action': 'execute', 'cid': 'cid-9',
                    'traceparent': TRACEPARENT, 'tracestate': 'vendor=1'}
    assert json.loads(body) == {'sql': 'SELECT id, name FROM t WHERE r = :r',
                                'params': {'r': 'EU'}}
    assert res.rows == [{'id': 1, 'name': 'Ann'}, {'id': 2, 'name': None}]
    assert res.columns == ['id', 'name'] and res.types == ['int', 'text']
    assert res.rowcount == 2 and res.last_insert_id is None
    assert len(res) == 2 and list(res) == res.rows and res[1]['id'] == 2


def test_positional_and_no_params_and_shortcuts(out, server):
    db = out.sql['crm']
    server.answer(*result(['n'], ['int'], [[7], [8]]))
    assert db.fetch_all('SELECT $1', [1]) == [{'n': 7}, {'n': 8}]
    assert json.loads(server.last[1]) == {'sql': 'SELECT $1', 'params': [1]}
    server.answer(*result(['n'], ['int'], [[7]]))
    assert db.fetch_one('SELECT ?', (1, 2)) == {'n': 7}
    assert json.loads(server.last[1])['params'] == [1, 2]
    server.answer(*result(['n'], ['int'], []))
    assert db.fetch_one('SELECT 1 WHERE false') is None
    assert json.loads(server.last[1]) == {'sql': 'SELECT 1 WHERE false', 'params': None}
    server.answer(*result(['n', 'm'], ['int', 'int'], [[5, 6]]))
    assert db.fetch_value('SELECT 5, 6') == 5
    server.answer(*result(['n'], ['int'], []))
    assert db.fetch_value('SELECT 5 WHERE false') is None
    server.answer(*result([], [], [], rowcount=3, last_insert_id=17))
    res = db.execute(text('UPDATE t SET x = 1'))
    assert (res.rowcount, res.last_insert_id, res.rows) == (3, 17, [])
    with pytest.raises(TypeError, match='params is a list'):
        db.execute('SELECT 1', 'oops')
    with pytest.raises(TypeError, match='statement is a str'):
        db.execute(42)


def test_parameter_encoding_of_every_type():
    aware = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    u = uuid.UUID('12345678-1234-5678-1234-567812345678')
    cases = [
        (None, None), (True, True), (False, False), (42, 42), (-2 ** 63, -2 ** 63),
        (2 ** 63, {'$t': 'decimal', 'v': str(2 ** 63)}),
        (-2 ** 63 - 1, {'$t': 'decimal', 'v': str(-2 ** 63 - 1)}),
        (1.5, 1.5), ('zaż', 'zaż'),
        (Decimal('12.340'), {'$t': 'decimal', 'v': '12.340'}),
        (Decimal('1E+3'), {'$t': 'decimal', 'v': '1000'}),
        (aware, {'$t': 'datetime', 'v': '2024-05-06T07:08:09.123456+02:00'}),
        (dt.datetime(2024, 5, 6, 7, 8), {'$t': 'datetime', 'v': '2024-05-06T07:08:00'}),
        (dt.date(2024, 2, 29), {'$t': 'date', 'v': '2024-02-29'}),
        (dt.time(23, 59, 1), {'$t': 'time', 'v': '23:59:01'}),
        (b'\x00\xff', {'$t': 'bytes', 'v': 'AP8='}),
        (bytearray(b'a'), {'$t': 'bytes', 'v': 'YQ=='}),
        (memoryview(b'a'), {'$t': 'bytes', 'v': 'YQ=='}),
        (u, {'$t': 'uuid', 'v': str(u)}),
        (Json({'a': [1, None]}), {'$t': 'json', 'v': {'a': [1, None]}}),
        (Json([1]), {'$t': 'json', 'v': [1]}),
        ([1, None, 'x'], [1, None, 'x']),
        ((dt.date(2024, 1, 1),), [{'$t': 'date', 'v': '2024-01-01'}]),
    ]
    for value, wire in cases:
        assert encode_value(value) == wire, value
    with pytest.raises(TypeError, match='oxbus.sql.Json'):
        encode_value({'a': 1})
    with pytest.raises(TypeError, match='set'):
        encode_value({1})
    with pytest.raises(ValueError, match='Decimal'):
        encode_value(float('nan'))


def test_result_decoding_of_every_type_code(out, server):
    u = '12345678-1234-5678-1234-567812345678'
    columns = ['i', 'f', 'b', 't', 'd', 'dt', 'dtz', 'day', 'tm', 'raw', 'u', 'j', 'ia',
               'da', 'n', 'odd']
    types = ['int', 'float', 'bool', 'text', 'decimal', 'datetime', 'datetimetz', 'date',
             'time', 'bytes', 'uuid', 'json', 'int[]', 'decimal[]', 'text', 'citext']
    row = [1, 2.5, True, 'zaż', '12.340', '2024-05-06T07:08:09.5', '2024-05-06T07:08:09Z',
           '2024-02-29', '23:59:01.123456789', 'AP8=', u, {'a': [1]}, [1, None, 3],
           [['1.5', None], ['2', '3']], None, 'CI']
    nulls = [None] * len(columns)
    server.answer(*result(columns, types, [row, nulls]))
    got, empty = out.sql['crm'].fetch_all('SELECT ...')
    assert got == {
        'i': 1, 'f': 2.5, 'b': True, 't': 'zaż', 'd': Decimal('12.340'),
        'dt': dt.datetime(2024, 5, 6, 7, 8, 9, 500000),
        'dtz': dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc),
        'day': dt.date(2024, 2, 29), 'tm': dt.time(23, 59, 1, 123456), 'raw': b'\x00\xff',
        'u': uuid.UUID(u), 'j': {'a': [1]}, 'ia': [1, None, 3],
        'da': [[Decimal('1.5'), None], [Decimal('2'), Decimal('3')]], 'n': None,
        'odd': 'CI'}
    assert got['dt'].tzinfo is None and got['dtz'].utcoffset() == dt.timedelta(0)
    assert empty == dict.fromkeys(columns)


def test_decode_value_edge_cases():
    assert decode_value('datetimetz', '2024-01-01T02:00:00+02:00') == \
        dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    assert decode_value('datetimetz', '2024-01-01 00:00:00.1+00:00').microsecond == 100000
    assert decode_value('datetime', '2024-01-01T00:00:00') == dt.datetime(2024, 1, 1)
    assert decode_value('time', '10:00:00') == dt.time(10)
    assert decode_value('float', 'NaN') != decode_value('float', 'NaN')  # NaN
    assert decode_value('bool[]', [True, None]) == [True, None]
    assert decode_value('uuid[]', [str(uuid.UUID(int=1))]) == [uuid.UUID(int=1)]
    assert decode_value('bytes', None) is None


# -- SQL: transactions ----------------------------------------------------------------------


def sql_handler(log):
    """A server that keeps one transaction: begin gives tx 7, rows of t live in ``log``."""
    def handle(meta, body):
        action = meta['action']
        doc = json.loads(body)
        if action == 'begin':
            assert doc == {} and 'tx' not in meta
            return {'status': 200}, {'tx': 7}
        if action in ('commit', 'rollback'):
            assert meta['tx'] == 7 and doc == {}
            log.append(action)
            return {'status': 200}, {}
        if action == 'execute':
            log.append(('execute', meta.get('tx'), doc['sql']))
            if doc['sql'] == 'BAD':
                return {'status': 400, 'error': 'sql'}, {'error': 'crm: syntax error',
                                                         'code': '42601'}
            return result(['n'], ['int'], [[1]])
        raise AssertionError(action)
    return handle


def test_transaction_commits_on_normal_exit():
    log = []
    out = OutgoingAPI(FakeServer(sql_handler(log)))
    with out.sql['crm'].transaction() as tx:
        assert tx.fetch_value('SELECT 1') == 1
        tx.execute('INSERT')
    assert log == [('execute', 7, 'SELECT 1'), ('execute', 7, 'INSERT'), 'commit']
    with pytest.raises(RuntimeError, match='committed'):
        tx.execute('SELECT 1')


def test_transaction_rolls_back_on_an_exception_and_reraises():
    log = []
    out = OutgoingAPI(FakeServer(sql_handler(log)))
    with pytest.raises(O.ProgrammingError, match='syntax error'):
        with out.sql['crm'].transaction() as tx:
            tx.execute('INSERT')
            tx.execute('BAD')
    assert log == [('execute', 7, 'INSERT'), ('execute', 7, 'BAD'), 'rollback']
    log.clear()
    with pytest.raises(KeyError):
        with out.sql['crm'].transaction() as tx:
            tx.execute('INSERT')
            raise KeyError('mine')
    assert log == [('execute', 7, 'INSERT'), 'rollback']


def test_explicit_commit_inside_the_block_and_outside_autocommit():
    log = []
    out = OutgoingAPI(FakeServer(sql_handler(log)))
    db = out.sql['crm']
    with db.transaction() as tx:
        tx.execute('A')
        tx.rollback()
    db.execute('B')
    assert log == [('execute', 7, 'A'), 'rollback', ('execute', None, 'B')]


# -- SQL: streams ---------------------------------------------------------------------------


def stream_handler(batches, log):
    """Answers a stream of ``batches`` (lists of rows) with stream id 3."""
    def handle(meta, body):
        action = meta['action']
        log.append((action, meta.get('stream'), meta.get('tx')))
        doc = json.loads(body)
        if action == 'stream':
            assert doc['batch'] == 2 and doc['sql'] == 'SELECT n' and doc['params'] == [1]
            return {'status': 200}, {'stream': 3, 'columns': ['n'], 'types': ['decimal'],
                                     'rows': batches[0], 'done': len(batches) == 1}
        if action == 'next':
            assert meta['stream'] == 3
            handle.i += 1
            return {'status': 200}, {'rows': batches[handle.i],
                                     'done': handle.i == len(batches) - 1}
        if action == 'close':
            return {'status': 200}, {}
        if action == 'begin':
            return {'status': 200}, {'tx': 4}
        if action == 'commit':
            return {'status': 200}, {}
        raise AssertionError(action)
    handle.i = 0
    return handle


def test_stream_batches_to_the_end():
    log = []
    out = OutgoingAPI(FakeServer(stream_handler([[['1'], ['2']], [['3'], ['4']], [['5']]],
                                                log)))
    with out.sql['crm'].stream('SELECT n', [1], batch=2) as batches:
        assert batches.columns == ['n']
        got = list(batches)
    assert got == [[{'n': Decimal(1)}, {'n': Decimal(2)}], [{'n': Decimal(3)},
                                                            {'n': Decimal(4)}],
                   [{'n': Decimal(5)}]]
    # done came true: no close is sent
    assert [a for a, _s, _t in log] == ['stream', 'next', 'next']


def test_stream_closed_early_sends_close():
    log = []
    out = OutgoingAPI(FakeServer(stream_handler([[['1'], ['2']], [['3'], ['4']], [['5']]],
                                                log)))
    with out.sql['crm'].stream('SELECT n', [1], batch=2) as batches:
        for rows in batches:
            break
    assert log == [('stream', None, None), ('close', 3, None)]
    with pytest.raises(ValueError):
        out.sql['crm'].stream('SELECT n', batch=0)


def test_stream_done_in_the_first_batch_and_inside_a_transaction():
    log = []
    out = OutgoingAPI(FakeServer(stream_handler([[['1']]], log)))
    with out.sql['crm'].transaction() as tx:
        with tx.stream('SELECT n', [1], batch=2) as batches:
            assert list(batches) == [[{'n': Decimal(1)}]]
    assert log == [('begin', None, None), ('stream', None, 4), ('commit', None, 4)]
    log.clear()
    empty = OutgoingAPI(FakeServer(stream_handler([[]], log)))
    assert list(empty.sql['crm'].stream('SELECT n', [1], batch=2)) == []


# -- Zato's session form --------------------------------------------------------------------


def test_zato_session_form():
    log = []

    def handle(meta, body):
        action = meta['action']
        if action == 'begin':
            log.append('begin')
            return {'status': 200}, {'tx': len(log)}
        if action in ('commit', 'rollback'):
            log.append((action, meta['tx']))
            return {'status': 200}, {}
        doc = json.loads(body)
        log.append((doc['sql'], doc['params'], meta['tx']))
        return result(['id', 'name'], ['int', 'text'], [[1, 'Ann'], [2, 'Bob']])

    out = OutgoingAPI(FakeServer(handle))
    assert out.sql.get('crm') is out.sql['crm']
    with closing(out.sql.get('crm').session()) as session:
        res = session.execute(text('SELECT id, name FROM t WHERE r = :r'), {'r': 'EU'})
        assert res.keys() == ['id', 'name'] and res.rowcount == 2
        rows = res.fetchall()
        assert rows == [(1, 'Ann'), (2, 'Bob')]
        assert rows[0].name == 'Ann' and rows[0]['id'] == 1 and rows[1][1] == 'Bob'
        assert rows[0]._mapping == {'id': 1, 'name': 'Ann'} and rows[0]._asdict()['id'] == 1
        with pytest.raises(KeyError):
            rows[0]['nope']
        with pytest.raises(AttributeError):
            rows[0].nope
        assert res.fetchone() is None
        res = session.execute('SELECT 2')
        assert res.fetchone() == (1, 'Ann') and res.fetchone().id == 2
        assert session.execute('SELECT 3').first() == (1, 'Ann')
        assert session.execute('SELECT 4').scalar() == 1
        assert [r.id for r in session.execute('SELECT 5')] == [1, 2]
        session.commit()
        session.execute('UPDATE')        # begins a new transaction
    # close() rolled the second one back
    assert log == ['begin', ('SELECT id, name FROM t WHERE r = :r', {'r': 'EU'}, 1),
                   ('SELECT 2', None, 1), ('SELECT 3', None, 1), ('SELECT 4', None, 1),
                   ('SELECT 5', None, 1), ('commit', 1), 'begin', ('UPDATE', None, 8),
                   ('rollback', 8)]
    session = out.sql['crm'].session()
    session.close()  # nothing open: no call
    assert log[-1] == ('rollback', 8)
    with pytest.raises(NotImplementedError, match='ORM'):
        session.query(object)
    with pytest.raises(NotImplementedError):
        session.add(object())


# -- async forms (in line) --------------------------------------------------------------------


def test_async_forms_send_the_same_calls(server):
    out = OutgoingAPI(server, _async_of(server))

    async def run():
        server.answer(*ok(200, [('content-type', 'application/json')], b'{"a":1}'))
        r = await out.rest['CRM'].conn.aget('c', params={'id': 1})
        assert r.data == {'a': 1}
        for method in ('apost', 'aput', 'apatch', 'adelete', 'aoptions'):
            server.answer(*ok(201))
            r = await getattr(out.rest['CRM'].conn, method)('c', {'x': 1})
            assert r.status_code == 201
            assert server.last[0]['method'] == method[1:].upper()
        server.answer(*ok())
        await out.rest['CRM'].conn.ahead('c')
        db = out.sql['crm']
        server.answer(*result(['n'], ['int'], [[1]]))
        assert (await db.aexecute('SELECT 1')).rows == [{'n': 1}]
        server.answer(*result(['n'], ['int'], [[1]]))
        assert await db.afetch_all('SELECT 1') == [{'n': 1}]
        server.answer(*result(['n'], ['int'], [[1]]))
        assert await db.afetch_one('SELECT 1') == {'n': 1}
        server.answer(*result(['n'], ['int'], [[2]]))
        assert await db.afetch_value('SELECT 2') == 2
        server.answer({'status': 504, 'error': 'timeout'}, {'error': 'crm: timed out'})
        with pytest.raises(O.OutgoingTimeout):
            await db.aexecute('SELECT pg_sleep(9)')

    asyncio.run(run())


def test_async_transaction_and_stream():
    log = []
    server = FakeServer(sql_handler(log))
    out = OutgoingAPI(server, _async_of(server))

    async def run():
        async with out.sql['crm'].atransaction() as tx:
            await tx.aexecute('A')
        with pytest.raises(O.ProgrammingError):
            async with out.sql['crm'].atransaction() as tx:
                await tx.aexecute('BAD')
    asyncio.run(run())
    assert log == [('execute', 7, 'A'), 'commit', ('execute', 7, 'BAD'), 'rollback']

    slog = []
    server = FakeServer(stream_handler([[['1'], ['2']], [['3']]], slog))
    out = OutgoingAPI(server, _async_of(server))

    async def stream(early):
        got = []
        async with await out.sql['crm'].astream('SELECT n', [1], batch=2) as batches:
            async for rows in batches:
                got.append(rows)
                if early:
                    break
        return got
    assert len(asyncio.run(stream(False))) == 2
    assert [a for a, _s, _t in slog] == ['stream', 'next']
    slog.clear()
    server.handler = stream_handler([[['1'], ['2']], [['3']]], slog)
    assert len(asyncio.run(stream(True))) == 1
    assert [a for a, _s, _t in slog] == ['stream', 'close']


def _async_of(request):
    async def arequest(meta, body=b'', orphan=None):
        await asyncio.sleep(0)
        return request(meta, body)
    return arequest


def test_outside_a_worker_says_so():
    from oxbus import Service

    class Lonely(Service):
        def handle(self):
            pass

    # A service instance not run by a dispatcher gets the defaults' error...
    with pytest.raises(RuntimeError, match='not running inside an oxbus worker'):
        Lonely().out.rest['x'].conn.get('c')
    # ...and so does an API whose calls reach no server: the blocking call (_no_server),
    # the awaitable one without an arequest (Caller.acall) and the ASYNC notify.
    from oxbus._dispatch import _no_server
    bare = OutgoingAPI(_no_server)
    with pytest.raises(RuntimeError, match='^not running inside an oxbus worker: there is '
                                           'no server to call$'):
        bare.sql['x'].execute('SELECT 1')
    with pytest.raises(RuntimeError, match='^not running inside an oxbus worker: there is '
                                           'no server to call$'):
        asyncio.run(bare.sql['x'].aexecute('SELECT 1'))
    with pytest.raises(RuntimeError, match='^not running inside an oxbus worker'):
        bare.sql['x']._conn.caller.notify({'op': 'out.sql'}, b'{}')


# -- the awaitable path in a real worker ------------------------------------------------------


WORKER_SERVICES = {'outsvc.py': '''
    from oxbus import Service, OutgoingTimeout

    class Fetch(Service):
        """Awaits a REST call, then an SQL call that times out."""
        async def handle(self):
            r = await self.out.rest['CRM'].conn.aget(self.cid, params={'id': 7})
            try:
                await self.out.sql['crm'].aexecute('SELECT 1')
                sql = 'no error'
            except OutgoingTimeout as e:
                sql = str(e)
            self.response.payload = {'status': r.status_code, 'data': r.data, 'sql': sql}

    class Spin(Service):
        """Keeps its thread busy (no server calls) until the file named in the body exists."""
        def handle(self):
            import os, time
            deadline = time.monotonic() + 20
            while not os.path.exists(self.request.payload['path']):
                if time.monotonic() > deadline:
                    raise TimeoutError('never released')
            self.response.payload = 'released'

    class Sync(Service):
        def handle(self):
            r = self.out.plain_http['CRM'].conn.post(self.cid, {'a': 1})
            self.response.payload = {'status': r.status_code, 'text': r.text}
'''}


def test_an_async_service_awaits_without_blocking_the_loop(sup):
    sup.start(WORKER_SERVICES, threads=2)
    traceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'
    sup.call(1, 'outsvc.fetch', traceparent=traceparent)
    kind, _f, rest_stream, payload = sup.recv_kind(P.CALL)
    assert rest_stream & P.WORKER_STREAM_BIT
    meta, body = P.decode_call(payload)
    assert meta == {'op': 'out.rest', 'conn': 'CRM', 'method': 'GET', 'cid': 'cid-1',
                    'traceparent': traceparent, 'params': {'id': '7'}}
    # While the REST call is outstanding the loop keeps running: a second invocation starts
    # and sends its own out.rest call. (Were the loop blocked waiting, that CALL would only
    # come after the first REPLY, and recv_kind below would time out.)
    sup.call(2, 'outsvc.fetch')
    kind, _f, second_stream, payload = sup.recv_kind(P.CALL)
    assert P.decode_call(payload)[0]['cid'] == 'cid-2'
    # Answer them in reverse order; each reaches its own task.
    sup.conn.sendall(P.encode_reply(second_stream, {'status': 404, 'headers': []}, b''))
    sup.conn.sendall(P.encode_reply(rest_stream, {
        'status': 200, 'headers': [['content-type', 'application/json']]}, b'{"id":7}'))
    for _ in range(2):
        kind, _f, stream, payload = sup.recv_kind(P.CALL)
        meta, body = P.decode_call(payload)
        assert meta['op'] == 'out.sql' and meta['action'] == 'execute'
        sup.conn.sendall(P.encode_reply(stream, {'status': 504, 'error': 'timeout'},
                                        b'{"error":"crm: statement timeout (%s)"}'
                                        % meta['cid'].encode()))
    got = sup.replies(2)
    first = json.loads(got[1][1])
    assert first['status'] == 200 and first['data'] == {'id': 7}
    assert first['sql'] == 'crm: statement timeout (cid-1)'
    second = json.loads(got[2][1])
    assert second['status'] == 404 and second['data'] is None
    assert second['sql'] == 'crm: statement timeout (cid-2)'


def test_a_reply_is_read_while_the_leader_is_stuck_in_a_handler(sup):
    """The loop only waits: when the thread that would read the socket is busy in a long
    sync handler, another is promoted and reads the REPLY for the awaiting task."""
    import os
    sup.start(WORKER_SERVICES, threads=2)
    sup.call(1, 'outsvc.fetch')
    kind, _f, rest_stream, payload = sup.recv_kind(P.CALL)
    release = os.path.join(sup.dir, 'release')
    sup.call(2, 'outsvc.spin', json.dumps({'path': release}).encode())
    sup.conn.sendall(P.encode_reply(rest_stream, {'status': 200, 'headers': []}, b''))
    kind, _f, stream, payload = sup.recv_kind(P.CALL)
    assert P.decode_call(payload)[0]['op'] == 'out.sql'
    sup.conn.sendall(P.encode_reply(stream, {'status': 200}, json.dumps(
        {'columns': [], 'types': [], 'rows': [], 'rowcount': 0,
         'last_insert_id': None}).encode()))
    # The async service answers while the spinning one still holds its thread.
    meta, data = sup.replies(1)[1]
    assert json.loads(data) == {'status': 200, 'data': None, 'sql': 'no error'}
    open(release, 'w').close()
    meta, data = sup.replies(1)[2]
    assert data == b'released'


def test_a_sync_service_calls_out_through_the_worker(sup):
    sup.start(WORKER_SERVICES, threads=2)
    sup.call(1, 'outsvc.sync')
    kind, _f, stream, payload = sup.recv_kind(P.CALL)
    meta, body = P.decode_call(payload)
    assert meta['method'] == 'POST' and meta['body_kind'] == 'json'
    assert json.loads(body) == {'a': 1}
    sup.conn.sendall(P.encode_reply(stream, {'status': 200, 'headers': []}, b'fine'))
    meta, data = sup.replies(1)[1]
    assert json.loads(data) == {'status': 200, 'text': 'fine'}


def test_base64_helper_matches_spec():
    # The bytes tag is standard base64 with padding (SPEC.md): '+' and '/', not '-' '_'.
    assert encode_value(b'\xfb\xff') == {'$t': 'bytes', 'v': '+/8='}
    assert encode_value(b'\xff\xfe\xfd\x00') == {'$t': 'bytes', 'v': '//79AA=='}
