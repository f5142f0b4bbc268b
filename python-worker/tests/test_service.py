"""The service API through the Dispatcher: naming, payloads, errors, verbs, hooks, invoke.

These drive ``Dispatcher.run`` with a CALL's meta and body and decode the REPLY frame it
returns with the protocol codec, i.e. exactly what the worker sends to the supervisor,
without a socket in between.
"""

import asyncio
import builtins
import json
import logging

import pytest

from oxbus import (BadRequest, Conflict, Forbidden, InternalServerError, InvokeDepthError,
                   InvokeError, MethodNotAllowed, NotFound, Reportable, Service,
                   ServiceUnavailable, TooManyRequests, Unauthorized)
from oxbus import _protocol as P
from oxbus._dispatch import Dispatcher, exc_family
from oxbus.service import current_invocation, default_name
from test_protocol import VECTORS


class Reply:
    """A decoded REPLY frame."""

    def __init__(self, frame: bytes, stream: int) -> None:
        kind, flags, got_stream, payload = P.decode_frame(frame)
        assert (kind, flags, got_stream) == (P.REPLY, 0, stream)
        self.meta, self.body = P.decode_call(payload)
        self.status = self.meta['status']
        self.content_type = self.meta['content_type']
        self.headers = self.meta.get('headers')

    @property
    def doc(self):
        return json.loads(self.body)


def meta_for(service: str, **extra) -> dict:
    meta = {'op': 'invoke', 'service': service, 'cid': 'c1d', 'channel': 'rest',
            'data_format': 'json', 'method': 'POST', 'path': '/p', 'params': {},
            'query': '', 'headers': []}
    meta.update(extra)
    return {k: v for k, v in meta.items() if v is not None}


def call(services, name=None, body=b'', dispatcher=None, stream=1, **meta) -> Reply:
    if not isinstance(services, (list, tuple)):
        services = [services]
    dispatcher = dispatcher or Dispatcher({cls.name: cls for cls in services})
    name = name or services[0].name
    frame = dispatcher.run(stream, meta_for(name, **meta), body)
    return Reply(frame, stream)


class Echo(Service):
    def handle(self):
        doc = self.request.payload
        doc['ok'] = True
        self.response.payload = doc


# -- naming ------------------------------------------------------------------------------


@pytest.mark.parametrize('cls_name,expected', [
    ('GetCustomer', 'demo.get-customer'), ('Echo', 'demo.echo'),
    ('HTTPServer', 'demo.http-server'), ('GetHTTPData', 'demo.get-http-data'),
    ('My_Service', 'demo.my-service'), ('V2Items', 'demo.v2-items'), ('lower', 'demo.lower'),
])
def test_default_name_is_zato_kebab_case(cls_name, expected):
    assert default_name('demo', cls_name) == expected


def test_service_names():
    class GetCustomer(Service):
        def handle(self):
            pass

    class Named(Service):
        name = 'crm.customer.get'

        def handle(self):
            pass

    class Child(Named):
        pass

    assert GetCustomer.name == __name__ + '.get-customer'
    assert Named.name == 'crm.customer.get'
    # A subclass is a service of its own and does not inherit (and clash with) the name.
    assert Child.name == __name__ + '.child'


def test_a_class_without_handler_is_an_abstract_base():
    class Base(Service):
        def before_handle(self):
            pass

    assert Base._oxbus_abstract
    with pytest.raises(TypeError, match='defines no handle'):
        class Named(Service):
            name = 'x.y'


def test_bad_declarations_fail_at_class_creation():
    with pytest.raises(TypeError, match='input'):
        class BadInput(Service):
            input = 5

            def handle(self):
                pass

    with pytest.raises(TypeError, match='name'):
        class BadName(Service):
            name = 42

            def handle(self):
                pass

    with pytest.raises(TypeError, match='async'):
        class AsyncHookSyncHandle(Service):
            async def before_handle(self):
                pass

            def handle(self):
                pass


# -- requests and responses ---------------------------------------------------------------


def test_json_echo_uses_the_prebuilt_200_meta():
    r = call(Echo, body=b'{"name":"Ann","n":1,"x":[1]}')
    assert r.status == 200 and r.content_type == 'application/json' and r.headers is None
    assert r.doc == {'name': 'Ann', 'n': 1, 'x': [1], 'ok': True}
    frame = Dispatcher({Echo.name: Echo}).run(9, meta_for(Echo.name), b'{}')
    assert frame == P.encode_reply(9, b'{"status":200,"content_type":"application/json"}',
                                   b'{"ok":true}')


def test_malformed_json_is_a_400_before_handle_runs():
    ran = []

    class Svc(Service):
        def handle(self):
            ran.append(1)

    r = call(Svc, body=b'{"a": ')
    assert r.status == 400 and r.content_type == 'application/json'
    assert r.doc['error'].startswith('malformed JSON: ')
    assert r.doc['cid'] == 'c1d'
    r = call(Svc, body=b'\xff\xfe\xfa')
    assert r.status == 400 and r.doc['error'].startswith('malformed JSON: ')
    assert ran == []


def test_json_nested_too_deep_to_decode_is_a_400_not_a_500():
    ran = []

    class Svc(Service):
        def handle(self):
            ran.append(1)

    deep = b'[' * 100_000 + b']' * 100_000
    r = call(Svc, body=deep)
    assert r.status == 400 and r.content_type == 'application/json'
    assert r.doc['error'] == 'malformed JSON: nested too deeply to decode'
    assert ran == []


def test_a_json_body_in_utf16_is_a_400_naming_utf8():
    # The server's nesting check reads bodies as UTF-8: a worker must not decode a deep
    # body in another encoding that check could not see.
    ran = []

    class Svc(Service):
        def handle(self):
            ran.append(1)

    for body in ['{"a":1}'.encode('utf-16'), ('[' * 5000 + ']' * 5000).encode('utf-16')]:
        r = call(Svc, body=body)
        assert r.status == 400, r.doc
        assert r.doc['error'].startswith('malformed JSON: JSON must be UTF-8'), r.doc
    assert ran == []


def test_request_attributes():
    seen = {}

    class Svc(Service):
        def handle(self):
            req = self.request
            http = req.http
            seen.update(payload=req.payload, raw=req.raw, method=http.method, path=http.path,
                        params=http.params, query=http.query, query_raw=http.query_raw,
                        bin=http.headers['X-BIN'], has=('x-Bin' in http.headers),
                        cid=self.cid, channel=self.channel.type, name=self.name,
                        df=req.data_format)

    vector = next(v for v in VECTORS['vectors'] if v['name'] == 'call_invoke_params_binary_body')
    meta = json.loads(vector['meta'])
    meta['service'] = Svc.name
    body = bytes.fromhex(vector['body_hex'])
    frame = Dispatcher({Svc.name: Svc}).run(5, meta, body)
    assert Reply(frame, 5).status == 200
    assert seen == {
        'payload': body, 'raw': body, 'method': 'PUT', 'path': '/files/7/a%20b',
        'params': {'id': '7', 'name': 'a b'}, 'query': {'x': 'é', 'y': ''},
        'query_raw': 'x=%C3%A9&y', 'bin': 'caf\ufffd', 'has': True,
        'cid': '00000000000000000001', 'channel': 'rest', 'name': Svc.name, 'df': 'raw'}


def test_client_origin_from_the_meta():
    seen = {}

    class Svc(Service):
        def handle(self):
            http = self.request.http
            seen.update(remote_addr=http.remote_addr, scheme=http.scheme, port=http.port,
                        cid=self.cid, xff=http.headers.get('x-forwarded-for'))

    vector = next(v for v in VECTORS['vectors'] if v['name'] == 'call_invoke_forwarded')
    meta = json.loads(vector['meta'])
    meta['service'] = Svc.name
    frame = Dispatcher({Svc.name: Svc}).run(7, meta, b'')
    assert Reply(frame, 7).status == 200
    assert seen == {'remote_addr': '2001:db8::7', 'scheme': 'https', 'port': 443,
                    'cid': 'req-7f3a:42', 'xff': '2001:db8::7, 10.0.1.5'}
    seen.clear()
    call(Svc, remote_addr='127.0.0.1', scheme='http', port=17010)
    assert seen == {'remote_addr': '127.0.0.1', 'scheme': 'http', 'port': 17010,
                    'cid': 'c1d', 'xff': None}


def test_headers_mapping_and_query_last_wins():
    seen = {}

    class Svc(Service):
        def handle(self):
            h = self.request.http.headers
            seen.update(accept=h['accept'], all=h.getall('Accept'), cookie=h['cookie'],
                        missing=h.get('x-none'), n=len(h), q=self.request.http.query,
                        zato_get=self.request.http.GET, zato_raw=self.request.raw_request)

    call(Svc, headers=[['accept', 'a'], ['Accept', 'b'], ['cookie', 'x=1'], ['cookie', 'y=2']],
         query='a=1&a=2&b=%20')
    assert seen == {'accept': 'a, b', 'all': ['a', 'b'], 'cookie': 'x=1; y=2', 'missing': None,
                    'n': 2, 'q': {'a': '2', 'b': ' '}, 'zato_get': {'a': '2', 'b': ' '},
                    'zato_raw': b''}


def test_empty_body_and_missing_http_fields():
    seen = {}

    class Svc(Service):
        def handle(self):
            http = self.request.http
            seen.update(payload=self.request.payload, channel=self.channel.type,
                        method=http.method, query=http.query, headers=dict(http.headers),
                        origin=(http.remote_addr, http.scheme, http.port))

    frame = Dispatcher({Svc.name: Svc}).run(1, {'op': 'invoke', 'service': Svc.name,
                                                'cid': 'z'}, b'')
    assert Reply(frame, 1).status == 200
    assert seen == {'payload': None, 'channel': 'invoke', 'method': None, 'query': {},
                    'headers': {}, 'origin': (None, None, None)}


@pytest.mark.parametrize('payload,content_type,body', [
    ({'a': 1}, 'application/json', b'{"a":1}'),
    ([1, 'é'], 'application/json', '[1,"é"]'.encode()),
    ('héllo', 'text/plain; charset=utf-8', 'héllo'.encode()),
    (b'\x00\xff', 'application/octet-stream', b'\x00\xff'),
    (bytearray(b'ab'), 'application/octet-stream', b'ab'),
    (None, 'text/plain; charset=utf-8', b''),
    (42, 'application/json', b'42'),
])
def test_response_payload_types(payload, content_type, body):
    class Svc(Service):
        def handle(self):
            self.response.payload = payload

    r = call(Svc)
    assert (r.status, r.content_type, r.body) == (200, content_type, body)


def test_response_status_headers_and_content_type():
    class Svc(Service):
        def handle(self):
            self.response.status_code = 201
            self.response.headers['X-Id'] = 7
            self.response.headers['set-cookie'] = ['a=b', 'c=d']
            self.response.content_type = 'application/vnd.x+json'
            self.response.payload = {'id': 7}

    r = call(Svc)
    assert r.status == 201 and r.content_type == 'application/vnd.x+json'
    assert r.headers == [['x-id', '7'], ['set-cookie', 'a=b'], ['set-cookie', 'c=d']]
    assert r.doc == {'id': 7}


def test_response_headers_can_be_replaced_wholesale():
    class Svc(Service):
        def handle(self):
            self.response.headers = {'x-a': '1'}
            self.response.payload = {}

    assert call(Svc).headers == [['x-a', '1']]


def test_invalid_status_code_is_a_500():
    class Svc(Service):
        def handle(self):
            self.response.status_code = '200 OK'

    assert call(Svc).status == 500


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize('exc_class,status', [
    (BadRequest, 400), (Unauthorized, 401), (Forbidden, 403), (NotFound, 404),
    (MethodNotAllowed, 405), (Conflict, 409), (TooManyRequests, 429),
    (InternalServerError, 500), (ServiceUnavailable, 503),
])
def test_reportable_exceptions_map_to_their_status(exc_class, status):
    assert issubclass(exc_class, Reportable)
    assert exc_class.status_code == status

    class Oxbus(Service):
        def handle(self):
            raise exc_class('nope: %s' % status)

    class Zato(Service):
        def handle(self):
            raise exc_class(self.cid, 'zato style')

    class Bare(Service):
        def handle(self):
            raise exc_class()

    r = call(Oxbus)
    assert (r.status, r.content_type) == (status, 'application/json')
    assert r.doc == {'error': 'nope: %s' % status, 'cid': 'c1d'}
    assert call(Zato).doc == {'error': 'zato style', 'cid': 'c1d'}
    if status == 405:
        # A bare 405 gets the server's message (method, path): see test_405_*.
        assert call(Bare).doc == {'error': 'method POST not allowed for /p', 'cid': 'c1d'}
    else:
        assert call(Bare).doc == {'error': exc_class.reason, 'cid': 'c1d'}


def test_reportable_with_status_details_and_headers():
    class Svc(Service):
        def handle(self):
            raise Reportable(self.cid, 'teapot', 418)

    class Limited(Service):
        def handle(self):
            raise TooManyRequests('slow down', details={'retry_in': 5},
                                  headers={'retry-after': '5'})

    class Challenge(Service):
        def handle(self):
            raise Unauthorized(self.cid, 'who are you', 'Basic realm="oxbus"')

    r = call(Svc)
    assert r.status == 418 and r.doc == {'error': 'teapot', 'cid': 'c1d'}
    r = call(Limited)
    assert r.status == 429 and r.headers == [['retry-after', '5']]
    assert r.doc == {'error': 'slow down', 'retry_in': 5, 'cid': 'c1d'}
    r = call(Challenge)
    assert r.status == 401 and r.headers == [['www-authenticate', 'Basic realm="oxbus"']]


def test_other_exceptions_are_500_and_the_traceback_goes_only_to_the_log(caplog):
    class Boom(Service):
        def handle(self):
            secret = 'password=hunter2'  # noqa: F841 - must not leak to the client
            raise KeyError('hunter2')

    with caplog.at_level(logging.ERROR):
        r = call(Boom)
    assert r.status == 500 and r.content_type == 'application/json'
    assert r.doc == {'error': 'internal error', 'cid': 'c1d'}
    assert b'hunter2' not in r.body and b'Traceback' not in r.body
    (record,) = [rec for rec in caplog.records if rec.name == Boom.name]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert (record.cid, record.service) == ('c1d', Boom.name)
    assert 'hunter2' in caplog.text and 'Traceback' in caplog.text


def test_even_system_exit_in_a_service_is_only_a_500():
    class Quitter(Service):
        def handle(self):
            raise SystemExit(1)

    assert call(Quitter).status == 500


def test_unknown_service_and_unknown_op():
    r = call(Echo, name='no.such')
    assert r.status == 404 and r.doc == {'error': 'no such service: no.such', 'cid': 'c1d'}
    r = call(Echo, name=['not', 'a', 'name'])  # a supervisor bug must not crash the worker
    assert r.status == 404
    r = call(Echo, op='cache.get')
    assert r.status == 501 and r.doc['error'] == 'unknown op: cache.get'


def test_a_sync_handler_returning_a_coroutine_is_a_500():
    class Wrapped(Service):
        def handle(self):
            async def later():
                pass
            return later()

    assert call(Wrapped).status == 500


# -- SimpleIO through the dispatcher -----------------------------------------------------


class GetCustomer(Service):
    input = 'customer_id', '-needs_details'
    output = 'name', '-email'

    def handle(self):
        inp = self.request.input
        self.response.payload = {'name': 'Ann', 'id': inp.customer_id,
                                 'details': inp.needs_details, 'internal': 'x'}


def test_input_is_typed_and_output_filtered():
    r = call(GetCustomer, body=b'{"customer_id":"7"}', query='needs_details=yes')
    assert r.status == 200 and r.doc == {'name': 'Ann'}


def test_input_errors_are_400_naming_the_field():
    r = call(GetCustomer, body=b'{}')
    assert r.status == 400
    assert r.doc == {'error': 'missing input: customer_id', 'field': 'customer_id', 'cid': 'c1d',
                     'errors': [{'field': 'customer_id', 'error': 'missing input: customer_id'}]}
    r = call(GetCustomer, body=b'{"customer_id":1.5}')
    assert r.doc == {'error': 'invalid input: customer_id: expected an integer',
                     'field': 'customer_id', 'cid': 'c1d', 'errors': [
                         {'field': 'customer_id',
                          'error': 'invalid input: customer_id: expected an integer'}]}
    r = call(GetCustomer, body=b'[1]')
    assert r.status == 400 and r.doc['error'] == 'expected a JSON object'
    r = call(GetCustomer, body=b'', params={'customer_id': '9'})
    assert r.status == 200


def test_missing_required_output_is_a_logged_500(caplog):
    class Broken(Service):
        output = 'name', '-email'

        def handle(self):
            self.response.payload = {'email': 'a@x'}

    with caplog.at_level(logging.ERROR):
        r = call(Broken)
    assert r.status == 500
    assert r.doc == {'error': 'missing output: name', 'field': 'name', 'cid': 'c1d'}
    assert any('missing output: name' in rec.getMessage() for rec in caplog.records)


# -- verbs and hooks ----------------------------------------------------------------------


class Items(Service):
    def handle_GET(self):
        self.response.payload = ['get']

    def handle_POST(self):
        self.response.payload = ['post']


def test_per_verb_handlers_and_405():
    assert Items._oxbus_verbs.keys() == {'GET', 'POST'}
    assert call(Items, method='GET').doc == ['get']
    assert call(Items, method='POST').doc == ['post']
    r = call(Items, method='DELETE')
    assert r.status == 405
    # The server's own 405 shape (edge/http.rs): the same message, `allowed`, `Allow`.
    assert r.doc == {'error': 'method DELETE not allowed for /p; allowed: GET, POST',
                     'allowed': ['GET', 'POST'], 'cid': 'c1d'}
    assert r.headers == [['allow', 'GET, POST']]
    # Without an HTTP method (a plain invoke) there is no handler to pick.
    assert call(Items, method=None).status == 405


def test_verbs_come_from_bases_and_mixins_and_service_defines_none():
    class Deletes:  # a plain mixin, not a Service
        def handle_DELETE(self):
            self.response.payload = 'delete'

    class More(Deletes, Items):
        def handle_PUT(self):
            self.response.payload = 'put'

        handle_lower = 'not a verb'

    assert More._oxbus_verbs.keys() == {'DELETE', 'GET', 'POST', 'PUT'}
    assert call(More, method='DELETE').body == b'delete'
    assert call(More, method='GET').doc == ['get']
    # _configure skips Service and object when it looks for handle_* methods.
    assert not [a for a in vars(Service) if a.startswith('handle_')]


def test_equal_simpleio_declarations_share_their_parsed_form():
    class One(Service):
        input = 'customer_id', '-needs_details'
        output = ['name']

        def handle(self):
            pass

    class Two(Service):
        input = ('customer_id', '-needs_details')
        output = (n for n in ['name'])  # any iterable

        def handle(self):
            pass

    assert One._oxbus_input is Two._oxbus_input
    assert One._oxbus_output is Two._oxbus_output
    assert [(e.name, e.required) for e in Two._oxbus_input] == [
        ('customer_id', True), ('needs_details', False)]
    with pytest.raises(TypeError, match='elements must be strings'):
        class Bad(Service):
            input = ['a', ['b']]

            def handle(self):
                pass


def test_handle_answers_calls_without_a_verb_when_verbs_exist():
    class Both(Service):
        def handle(self):
            self.response.payload = 'plain'

        def handle_GET(self):
            self.response.payload = 'get'

    assert call(Both, method='GET').body == b'get'
    assert call(Both, method=None).body == b'plain'
    assert call(Both, method='PUT').status == 405


def test_hooks_run_around_handle():
    events = []

    class Hooked(Service):
        input = '-id'

        def before_handle(self):
            events.append(('before', self.request.input.id))

        def handle(self):
            events.append('handle')
            if self.request.input.id == 0:
                raise Conflict('zero')

        def after_handle(self):
            events.append('after')
            self.response.payload = {'after': True}

    assert call(Hooked, body=b'{"id":1}').doc == {'after': True}
    assert events == [('before', 1), 'handle', 'after']
    events.clear()
    assert call(Hooked, body=b'{"id":0}').status == 409
    assert events == [('before', 0), 'handle']  # no after_handle when handle raised


def test_before_handle_can_refuse():
    class Guarded(Service):
        def before_handle(self):
            raise Forbidden('not you')

        def handle(self):
            raise AssertionError('must not run')

    r = call(Guarded)
    assert r.status == 403 and r.doc['error'] == 'not you'


# -- async services -----------------------------------------------------------------------


class AsyncItems(Service):
    def before_handle(self):  # a plain hook serves async and sync handlers alike
        self.seen = ['before']

    async def handle_GET(self):
        await asyncio.sleep(0)
        self.response.payload = {'seen': self.seen + ['get'],
                                 'cid': current_invocation.get()[0]}

    def handle_POST(self):
        self.response.payload = 'sync post'


def test_async_handlers_run_on_the_async_path():
    d = Dispatcher({AsyncItems.name: AsyncItems})
    assert AsyncItems._oxbus_async
    assert d.is_async(meta_for(AsyncItems.name, method='GET'))
    assert not d.is_async(meta_for(AsyncItems.name, method='DELETE'))  # the 405 is sync
    assert not d.is_async(meta_for(Echo.name))
    frame = asyncio.run(d.run_async(3, meta_for(AsyncItems.name, method='GET'), b''))
    assert Reply(frame, 3).doc == {'seen': ['before', 'get'], 'cid': 'c1d'}
    assert call(AsyncItems, method='POST').body == b'sync post'


def test_async_errors_are_mapped_too():
    class Failing(Service):
        async def handle(self):
            raise NotFound('gone')

    d = Dispatcher({Failing.name: Failing})
    frame = asyncio.run(d.run_async(3, meta_for(Failing.name), b''))
    r = Reply(frame, 3)
    assert r.status == 404 and r.doc == {'error': 'gone', 'cid': 'c1d'}


def test_reply_error_kind_marks_refused_input_and_unknown_services_only():
    # The REPLY meta's ``error`` tells a refused input (-32602 on a JSON-RPC channel) and an
    # unknown service (-32601) apart from errors the service itself raised with the same status.
    class SelfRefusing(Service):
        input = 'customer_id'

        def handle(self):
            raise BadRequest('customer is closed')

    class AsyncTyped(Service):
        input = 'customer_id'

        async def handle(self):
            self.response.payload = {'id': self.request.input.customer_id}

    assert call(GetCustomer, body=b'{}').meta['error'] == 'input'
    assert call(GetCustomer, body=b'[1, 2]').meta['error'] == 'input'
    assert call(Echo, body=b'{"a": ').meta['error'] == 'input'
    assert call(Echo, name='no.such').meta['error'] == 'no_service'
    r = call(SelfRefusing, body=b'{"customer_id": 1}')
    assert r.status == 400 and r.doc['error'] == 'customer is closed'
    assert 'error' not in r.meta
    assert 'error' not in call(Failing500, body=b'{}').meta
    assert 'error' not in call(GetCustomer, body=b'{"customer_id": 1}').meta
    d = Dispatcher({AsyncTyped.name: AsyncTyped})
    frame = asyncio.run(d.run_async(3, meta_for(AsyncTyped.name), b'{"customer_id": "x"}'))
    r = Reply(frame, 3)
    assert r.status == 400 and r.meta['error'] == 'input' and r.doc['field'] == 'customer_id'


class Failing500(Service):
    def handle(self):
        raise RuntimeError('secret detail')


class _UserValueError(ValueError):
    pass


class _UserException(Exception):
    pass


class _UserNotFound(NotFound):
    pass


class _UserOSError(FileNotFoundError):
    pass


# What a C extension's class can look like: ``__module__`` says builtins, yet it is not one.
_FakeBuiltin = type('FakeBuiltin', (ValueError,), {'__module__': 'builtins'})
# A user class that claims a built-in's name and module.
_ImpostorValueError = type('ValueError', (Exception,), {'__module__': 'builtins'})


class _ClaimsErrorsModule(BadRequest):
    """A user class claiming to be in oxbus.errors."""
    __module__ = 'oxbus.errors'


def _raising(exc):
    class Raising(Service):
        def handle(self):
            raise exc

    return Raising


@pytest.mark.parametrize('exc,family', [
    (ValueError('v'), 'ValueError'),
    (_UserValueError('v'), 'ValueError'),
    (KeyError('k'), 'KeyError'),
    (_UserException('x'), 'Exception'),
    (_UserOSError('f'), 'FileNotFoundError'),
    (OSError('o'), 'OSError'),
    (SystemExit(3), 'SystemExit'),
    (KeyboardInterrupt(), 'KeyboardInterrupt'),
    (asyncio.CancelledError(), 'CancelledError'),
    (_FakeBuiltin('c'), 'ValueError'),
    (_ImpostorValueError('i'), 'Exception'),
    (_ClaimsErrorsModule('e'), 'BadRequest'),
    (BadRequest('b'), 'BadRequest'),
    (_UserNotFound('n'), 'NotFound'),
    (Reportable('r'), 'Reportable'),
    (Unauthorized('u'), 'Unauthorized'),
])
def test_reply_exc_is_the_family_never_a_user_class(exc, family):
    r = call(_raising(exc), body=b'{}')
    assert r.status >= 400
    assert r.meta['exc'] == family
    assert 'error' not in r.meta


def test_exc_family_of_base_exceptions_and_classes_that_claim_builtins():
    assert exc_family(KeyboardInterrupt()) == 'KeyboardInterrupt'
    assert exc_family(SystemExit(0)) == 'SystemExit'
    assert exc_family(GeneratorExit()) == 'GeneratorExit'
    assert exc_family(asyncio.CancelledError()) == 'CancelledError'
    # A subclass of asyncio's CancelledError is still one; concurrent.futures' is not
    # asyncio's (an Exception outside builtins).
    assert exc_family(type('Mine', (asyncio.CancelledError,), {})()) == 'CancelledError'
    import concurrent.futures
    assert exc_family(concurrent.futures.CancelledError()) == 'Exception'
    # A class counts only if it is the builtins (oxbus.errors) attribute of its name.
    assert exc_family(_FakeBuiltin('x')) == 'ValueError'
    assert exc_family(_ImpostorValueError('x')) == 'Exception'
    assert builtins.ValueError is not _ImpostorValueError
    assert exc_family(_ClaimsErrorsModule('x')) == 'BadRequest'


def test_reply_exc_of_input_output_and_async_errors_and_none_on_success():
    assert call(GetCustomer, body=b'{}').meta['exc'] == 'input'
    assert call(Echo, body=b'{"a": ').meta['exc'] == 'input'
    # A 405 is the service's answer to a verb it has no handler for, not refused input.
    assert call(Items, method='DELETE').meta['exc'] == 'MethodNotAllowed'

    class BadOutput(Service):
        output = 'name'

        def handle(self):
            self.response.payload = {}

    assert call(BadOutput, body=b'{}').meta['exc'] == 'OutputError'

    class AsyncFailing(Service):
        async def handle(self):
            raise KeyError('k')

    d = Dispatcher({AsyncFailing.name: AsyncFailing})
    r = Reply(asyncio.run(d.run_async(3, meta_for(AsyncFailing.name), b'')), 3)
    assert (r.status, r.meta['exc']) == (500, 'KeyError')
    # Success, an unknown service and a status the service chose itself carry no exc.
    assert 'exc' not in call(Echo, body=b'{}').meta
    assert 'exc' not in call(Echo, name='no.such').meta

    class Chose404(Service):
        def handle(self):
            self.response.status_code = 404
            self.response.payload = {'error': 'chosen'}

    assert 'exc' not in call(Chose404, body=b'{}').meta


def test_the_channel_type_comes_from_the_call():
    seen = []

    class Svc(Service):
        def handle(self):
            seen.append(self.channel.type)

    call(Svc, channel='jsonrpc')
    call(Svc, channel='rest')
    call(Svc, channel=None)
    assert seen == ['jsonrpc', 'rest', 'invoke']


# -- invoke and invoke_async ---------------------------------------------------------------


class Callee(Service):
    input = 'x_count'
    output = 'double'

    def handle(self):
        if self.request.input.x_count < 0:
            raise ValueError('negative')
        self.response.payload = {'double': self.request.input.x_count * 2, 'hidden': 1,
                                 'cid': self.cid, 'channel': self.channel.type}


class AsyncCallee(Service):
    async def before_handle(self):
        await asyncio.sleep(0)
        self.hooked = True

    async def handle(self):
        await asyncio.sleep(0)
        self.response.payload = {'async': self.hooked, 'cid': current_invocation.get()[0]}


def test_invoke_runs_the_callee_in_process_and_returns_its_payload():
    results = {}

    class Caller(Service):
        def handle(self):
            results['ok'] = self.invoke(Callee.name, {'x_count': '21'})
            results['async'] = self.invoke(AsyncCallee.name)
            for label, payload in (('bad', {'x_count': 'x'}), ('boom', {'x_count': -1})):
                try:
                    self.invoke(Callee.name, payload)
                except Exception as e:
                    results[label] = e
            try:
                self.invoke('no.such')
            except InvokeError as e:
                results['missing'] = e

    services = [Caller, Callee, AsyncCallee]
    r = call(services)
    assert r.status == 200
    assert results['ok'] == {'double': 42}  # output-filtered, as in Zato
    assert results['async'] == {'async': True, 'cid': 'c1d'}
    # A callee's refused input is the caller's fault: an InvokeError naming the callee and
    # the field, never the callee's BadRequest (which would be the caller's 400).
    assert type(results['bad']) is InvokeError and not isinstance(results['bad'], Reportable)
    assert results['bad'].service == Callee.name
    assert str(results['bad']).startswith(
        '%s invoked %s with input it refused: invalid input: x_count: expected an integer'
        % (Caller.name, Callee.name))
    assert isinstance(results['boom'], ValueError)  # callee exceptions propagate
    assert results['missing'].msg == '%s invoked no.such: no such service' % Caller.name
    assert results['missing'].service == 'no.such'


def test_invoke_async_posts_a_fire_and_forget_call():
    cids = []

    class Caller(Service):
        def handle(self):
            cids.append(self.invoke_async('audit.record', {'event': 'login'}))
            cids.append(self.invoke_async('audit.record'))

    d = Dispatcher({Caller.name: Caller})
    assert call(Caller, dispatcher=d).status == 200
    assert len(d.posted) == 2 and cids[0] != cids[1]
    for frame, cid, body in zip(d.posted, cids, (b'{"event":"login"}', b'')):
        kind, flags, stream, payload = P.decode_frame(frame)
        assert (kind, flags) == (P.CALL, P.FLAG_ASYNC)
        assert stream & P.WORKER_STREAM_BIT and stream & 0x7FFF_FFFF
        meta, got_body = P.decode_call(payload)
        assert meta == {'op': 'invoke', 'service': 'audit.record', 'cid': cid,
                        'data_format': 'json', 'caller': Caller.name}
        assert got_body == body
        assert len(cid) == 20 and int(cid, 16) >= 0


class VerbsOnly(Service):
    def handle_GET(self):
        self.response.payload = {'get': True}


class RaisesNotFound(Service):
    def handle(self):
        raise NotFound('no such customer: 5', details={'customer_id': 5})


class AsyncDoubler(Service):
    input = 'x_count'

    async def handle(self):
        await asyncio.sleep(0)
        self.response.payload = {'double': self.request.input.x_count * 2}


def run_either(d, cls, body, mode):
    """One call of ``cls`` through ``d``: Dispatcher.run, or run_async on a new loop."""
    meta = meta_for(cls.name)
    if mode == 'sync':
        return Reply(d.run(1, meta, body), 1)
    return Reply(asyncio.run(d.run_async(1, meta, body)), 1)


@pytest.mark.parametrize('mode', ['sync', 'async'])
def test_an_invoke_that_cannot_run_its_callee_is_the_callers_500(mode, caplog):
    # The caller's client gets 'internal error' and the cid; the log names the callee and
    # the cause, in one line without a traceback. A plain caller uses self.invoke, an
    # async one await self.ainvoke; each of a plain and an async callee.
    class SyncCaller(Service):
        name = 't.sync-caller'
        input = 'target', '-payload'

        def handle(self):
            self.response.payload = self.invoke(self.request.input.target,
                                                self.request.input.payload or None)

    class AsyncCaller(Service):
        name = 't.async-caller'
        input = 'target', '-payload'

        async def handle(self):
            self.response.payload = await self.ainvoke(self.request.input.target,
                                                       self.request.input.payload or None)

    caller = SyncCaller if mode == 'sync' else AsyncCaller
    d = Dispatcher({c.name: c for c in (caller, Callee, AsyncDoubler, VerbsOnly,
                                        RaisesNotFound)})
    cases = [
        ({'target': 'no.such'}, '%s invoked no.such: no such service' % caller.name),
        ({'target': Callee.name, 'payload': {'x_count': 'x'}},
         '%s invoked %s with input it refused: invalid input: x_count: expected an integer'
         % (caller.name, Callee.name)),
        ({'target': AsyncDoubler.name, 'payload': {'nothing': 1}},
         '%s invoked %s with input it refused: missing input: x_count'
         % (caller.name, AsyncDoubler.name)),
        ({'target': VerbsOnly.name},
         '%s invoked %s, which answers only HTTP methods (GET)' % (caller.name,
                                                                  VerbsOnly.name)),
    ]
    for body, cause in cases:
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            r = run_either(d, caller, json.dumps(body).encode(), mode)
        assert (r.status, r.doc) == (500, {'error': 'internal error', 'cid': 'c1d'}), body
        assert r.meta['exc'] == 'RuntimeError'
        (record,) = [rec for rec in caplog.records if rec.name == caller.name]
        assert record.getMessage() == '%s failed: InvokeError: %s' % (caller.name, cause)
        assert record.exc_info is None
    # A callee's own Reportable is its answer, and reaches the caller's client as it is.
    r = run_either(d, caller, json.dumps({'target': RaisesNotFound.name}).encode(), mode)
    assert (r.status, r.doc) == (404, {'error': 'no such customer: 5', 'customer_id': 5,
                                       'cid': 'c1d'})
    # And a good call answers.
    r = run_either(d, caller, json.dumps({'target': AsyncDoubler.name,
                                          'payload': {'x_count': 4}}).encode(), mode)
    assert (r.status, r.doc) == (200, {'double': 8})


def test_ainvoke_takes_invokes_arguments_and_shapes_the_result_alike():
    seen = {}

    class Slow(Service):
        def handle(self):
            import threading
            seen['slow_thread'] = threading.current_thread().name
            seen['release'].wait(30)
            self.response.payload = {'late': True}

    class Caller(Service):
        async def handle(self):
            import threading
            seen['release'] = threading.Event()
            seen['plain'] = await self.ainvoke(Callee, {'x_count': 3})
            seen['bunch'] = await self.ainvoke(Callee.name, x_count=4, as_bunch=True)
            seen['text'] = await self.ainvoke(Callee.name, {'x_count': 5}, serialize=True)
            seen['async'] = await self.ainvoke(AsyncDoubler.name, {'x_count': 6})
            seen['none'] = await self.ainvoke(Slow.name, timeout=0.01, raise_timeout=False)
            try:
                await self.ainvoke(Slow.name, timeout=0.01)
            except TimeoutError as e:
                seen['timeout'] = str(e)
            seen['release'].set()
            try:
                self.invoke(Callee.name, {'x_count': 1})
            except RuntimeError as e:
                seen['blocking'] = str(e)

    d = Dispatcher({c.name: c for c in (Caller, Callee, AsyncDoubler, Slow)})
    r = Reply(asyncio.run(d.run_async(1, meta_for(Caller.name), b'')), 1)
    assert r.status == 200, r.body
    assert seen['plain'] == {'double': 6}
    assert seen['bunch'] == {'double': 8} and seen['bunch'].double == 8
    assert seen['text'] == '{"double":10}'
    assert seen['async'] == {'double': 12}
    assert seen['none'] is None
    assert seen['timeout'] == 'invoke of %s timed out after 0.01 s' % Slow.name
    assert seen['slow_thread'].startswith('oxbus-ainvoke')
    assert seen['blocking'].startswith("self.invoke('%s') from a coroutine would hold the "
                                       'event loop' % Callee.name)
    assert 'await self.ainvoke(...)' in seen['blocking']


def _depth_services():
    class Loop(Service):
        name = 't.loop'

        def handle(self):
            self.invoke(self.name)

    class ALoop(Service):
        name = 't.aloop'

        async def handle(self):
            await self.ainvoke(self.name)

    class TLoop(Service):
        name = 't.tloop'

        def handle(self):
            self.invoke(self.name, timeout=30)

    # A cycle through both kinds: async ping ainvokes plain pong (off the loop), which
    # invokes async ping (back on a loop).
    class Ping(Service):
        name = 't.ping'

        async def handle(self):
            await self.ainvoke('t.pong')

    class Pong(Service):
        name = 't.pong'

        def handle(self):
            self.invoke('t.ping')

    return [Loop, ALoop, TLoop, Ping, Pong]


@pytest.mark.parametrize('name,mode,chain', [
    ('t.loop', 'sync', 't.loop -> t.loop -> t.loop -> t.loop -> ... -> t.loop'),
    ('t.aloop', 'async', 't.aloop -> t.aloop -> t.aloop -> t.aloop -> ... -> t.aloop'),
    ('t.tloop', 'sync', 't.tloop -> t.tloop -> t.tloop -> t.tloop -> ... -> t.tloop'),
    ('t.ping', 'async', 't.ping -> t.pong -> t.ping -> t.pong -> ... -> t.pong'),
])
def test_a_runaway_invoke_stops_at_the_depth_limit_with_a_short_error(name, mode, chain,
                                                                        caplog):
    from oxbus._dispatch import MAX_INVOKE_DEPTH
    assert MAX_INVOKE_DEPTH == 50
    services = {c.name: c for c in _depth_services()}
    d = Dispatcher(services)
    with caplog.at_level(logging.WARNING):
        r = run_either(d, services[name], b'', mode)
    assert (r.status, r.doc) == (500, {'error': 'internal error', 'cid': 'c1d'})
    (record,) = [rec for rec in caplog.records if rec.levelno >= logging.WARNING]
    assert record.name == name and record.exc_info is None
    message = record.getMessage()
    assert message == ('%s failed: InvokeDepthError: invoke depth limit (50) reached: %s '
                       '(51 nested invokes; a service invoking itself?)' % (name, chain))
    assert len(message.splitlines()) == 1


def test_the_depth_limit_counts_nesting_not_calls():
    # Fifty-one invokes in a row from one service are not nested: no limit applies.
    class Leaf(Service):
        def handle(self):
            self.response.payload = 1

    class Many(Service):
        def handle(self):
            self.response.payload = sum(self.invoke(Leaf) for _ in range(60))

    class AMany(Service):
        async def handle(self):
            self.response.payload = sum([await self.ainvoke(Leaf) for _ in range(60)])

    d = Dispatcher({c.name: c for c in (Leaf, Many, AMany)})
    assert run_either(d, Many, b'', 'sync').doc == 60
    assert run_either(d, AMany, b'', 'async').doc == 60


def test_invoke_outside_a_worker_says_so():
    with pytest.raises(RuntimeError, match='not running inside'):
        Echo().invoke('x')


def test_service_logger_records_carry_cid_and_service(caplog):
    class Chatty(Service):
        def handle(self):
            self.logger.info('hello %s', 'there')

    with caplog.at_level(logging.INFO):
        call(Chatty, cid='abc')
    (record,) = [r for r in caplog.records if r.name == Chatty.name]
    assert record.getMessage() == 'hello there'
    assert (record.cid, record.service) == ('abc', Chatty.name)
    assert current_invocation.get() is None  # reset after the call


# -- trace context ------------------------------------------------------------------------

TRACEPARENT = '00-4bf92f3577b34da6a3ce929d0e0e4736-5d1c6e0b8a2f4c93-01'
TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736'


class Traced(Service):
    def handle(self):
        self.response.payload = {'trace_id': self.trace_id, 'traceparent': self.traceparent}


def test_trace_id_is_the_calls_traceparents_trace_id():
    r = call(Traced, traceparent=TRACEPARENT)
    assert r.doc == {'trace_id': TRACE_ID, 'traceparent': TRACEPARENT}
    # A call without one (an older server) has none; so has a service outside a worker.
    assert call(Traced).doc == {'trace_id': None, 'traceparent': None}
    assert Traced().trace_id is None and Traced().traceparent is None


def test_async_services_read_their_trace_id_too():
    class AsyncTraced(Service):
        async def handle(self):
            await asyncio.sleep(0)
            self.response.payload = {'trace_id': self.trace_id}

    d = Dispatcher({AsyncTraced.name: AsyncTraced})
    frame = asyncio.run(d.run_async(3, meta_for(AsyncTraced.name, traceparent=TRACEPARENT),
                                    b''))
    assert Reply(frame, 3).doc == {'trace_id': TRACE_ID}


TRACESTATE = 'rojo=00f067aa0ba902b7,congo=t61rcWkgMzE'


def test_tracestate_is_the_calls_or_none():
    class Stated(Service):
        def handle(self):
            self.response.payload = {'tracestate': self.tracestate}

    assert call(Stated, traceparent=TRACEPARENT, tracestate=TRACESTATE).doc == {
        'tracestate': TRACESTATE}
    assert call(Stated, traceparent=TRACEPARENT).doc == {'tracestate': None}
    assert Stated().tracestate is None


def test_current_invocation_is_the_three_tuple_it_always_was():
    seen = []

    class Unpacks(Service):
        def handle(self):
            cid, service, stream = current_invocation.get()  # user code does this
            seen.append((cid, service, stream))

    class AsyncUnpacks(Service):
        async def handle(self):
            seen.append(current_invocation.get())

    call(Unpacks, cid='abc', stream=7, traceparent=TRACEPARENT, tracestate=TRACESTATE)
    d = Dispatcher({AsyncUnpacks.name: AsyncUnpacks})
    asyncio.run(d.run_async(9, meta_for(AsyncUnpacks.name, cid='def',
                                        traceparent=TRACEPARENT), b''))
    assert seen == [('abc', Unpacks.name, 7), ('def', AsyncUnpacks.name, 9)]
    assert current_invocation.get() is None
    from oxbus.service import _invocation_meta
    assert _invocation_meta.get() is None  # reset after the call too


def test_invoke_and_invoke_async_keep_the_callers_trace():
    seen = {}

    class Inner(Service):
        def handle(self):
            seen['inner'] = (self.trace_id, self.traceparent, self.tracestate,
                             current_invocation.get())

    class AsyncInner(Service):
        async def handle(self):
            seen['async'] = (self.traceparent, self.tracestate, current_invocation.get())

    class Outer(Service):
        def handle(self):
            self.invoke(Inner.name)
            self.invoke(AsyncInner.name)
            self.invoke_async('audit.record')

    d = Dispatcher({Outer.name: Outer, Inner.name: Inner, AsyncInner.name: AsyncInner})
    assert call(Outer, dispatcher=d, cid='c9', stream=4, traceparent=TRACEPARENT,
                tracestate=TRACESTATE).status == 200
    assert seen['inner'] == (TRACE_ID, TRACEPARENT, TRACESTATE, ('c9', Inner.name, 4))
    assert seen['async'] == (TRACEPARENT, TRACESTATE, ('c9', AsyncInner.name, 4))
    (frame,) = d.posted
    meta, _ = P.decode_call(P.decode_frame(frame)[3])
    assert (meta['traceparent'], meta['tracestate']) == (TRACEPARENT, TRACESTATE)
    # A trace without a tracestate sends none.
    d.posted.clear()
    assert call(Outer, dispatcher=d, traceparent=TRACEPARENT).status == 200
    meta, _ = P.decode_call(P.decode_frame(d.posted[0])[3])
    assert meta['traceparent'] == TRACEPARENT and 'tracestate' not in meta
    assert seen['inner'][2] is None
    # Without a trace of its own the caller sends none: the supervisor starts one.
    d.posted.clear()
    assert call(Outer, dispatcher=d).status == 200
    meta, _ = P.decode_call(P.decode_frame(d.posted[0])[3])
    assert 'traceparent' not in meta and 'tracestate' not in meta


def test_service_logger_records_carry_the_trace_id(caplog):
    class Chatty(Service):
        def handle(self):
            self.logger.info('traced')

    with caplog.at_level(logging.INFO):
        call(Chatty, cid='abc', traceparent=TRACEPARENT)
        call(Chatty, cid='def')
    first, second = [r for r in caplog.records if r.name == Chatty.name]
    assert (first.cid, first.service, first.trace_id) == ('abc', Chatty.name, TRACE_ID)
    assert (second.cid, second.trace_id) == ('def', None)


# -- the channel and who called ----------------------------------------------------------


class WhoCalled(Service):
    name = 't.who-called'

    def handle(self):
        ch = self.channel
        s = ch.security
        self.response.payload = {
            'type': ch.type, 'name': ch.name,
            'security': None if s is None else [s.name, s.type, s.username, s.subject]}


def test_channel_name_and_security_reach_the_service():
    r = call(WhoCalled, channel_name='orders', security={
        'name': 'staff', 'type': 'basic', 'username': 'ann'})
    assert r.doc == {'type': 'rest', 'name': 'orders',
                     'security': ['staff', 'basic', 'ann', None]}
    r = call(WhoCalled, channel_name='orders', security={
        'name': 'idp', 'type': 'jwt', 'subject': 'user-7'})
    assert r.doc['security'] == ['idp', 'jwt', None, 'user-7']
    # Without a caller the channel is shared per (type, name), and says so.
    r = call(WhoCalled, channel_name='open')
    assert r.doc == {'type': 'rest', 'name': 'open', 'security': None}
    r = call(WhoCalled, channel='invoke', channel_name=None)
    assert r.doc == {'type': 'invoke', 'name': None, 'security': None}


def _in_daemon_thread(fn, wait=10):
    """Run ``fn`` in a daemon thread; its result, or 'stuck' past ``wait`` s (a bound so that
    a deadlock fails the test instead of hanging the suite; never reached when it works)."""
    import threading
    got = {}
    t = threading.Thread(target=lambda: got.setdefault('r', fn()), daemon=True)
    t.start()
    t.join(wait)
    return got.get('r', 'stuck')


def test_a_timed_out_plain_callee_gives_its_place_back_and_runs_on_a_daemon_thread(caplog):
    # With a pool of one, a hung callee that timed out must not hold the only place (the
    # next ainvoke would wait for it), nor keep the worker from exiting (a daemon thread).
    import threading
    release = threading.Event()
    seen = {}

    class Hung(Service):
        def handle(self):
            seen['daemon'] = threading.current_thread().daemon
            release.wait(30)
            raise ValueError('failed after its caller gave up')

    class Leaf(Service):
        def handle(self):
            self.response.payload = 'ok'

    class Caller(Service):
        async def handle(self):
            first = await self.ainvoke(Hung.name, timeout=0.01, raise_timeout=False)
            self.response.payload = [first, await self.ainvoke(Leaf.name)]

    d = Dispatcher({c.name: c for c in (Hung, Leaf, Caller)}, offload_threads=1)
    try:
        with caplog.at_level(logging.WARNING):
            r = _in_daemon_thread(lambda: run_either(d, Caller, b'', 'async'))
            assert r != 'stuck', 'the leaf waited for the timed-out callee\'s place'
            assert (r.status, r.doc) == (200, [None, 'ok'])
            assert seen['daemon'] is True

            # The callee's late failure is logged with its traceback (no longer dropped).
            async def late_failure():
                done = asyncio.Event()
                loop = asyncio.get_running_loop()

                class Caller2(Service):
                    async def handle(self):
                        await self.ainvoke(Hung.name, timeout=0.01, raise_timeout=False)
                        release.set()
                        await done.wait()

                logging.getLogger(Caller2.name).addFilter(
                    lambda rec: (loop.call_soon_threadsafe(done.set)
                                 if 'then failed' in rec.getMessage() else None) or True)
                d.services[Caller2.name] = Caller2
                return await asyncio.wait_for(d.run_async(2, meta_for(Caller2.name), b''), 10)

            Reply(asyncio.run(late_failure()), 2)
    finally:
        release.set()
    (record,) = [rec for rec in caplog.records if 'then failed' in rec.getMessage()]
    assert record.exc_info[0] is ValueError


def test_ainvoke_from_a_thread_that_a_plain_callee_started_does_not_deadlock():
    # async top -> ainvoke(plain a) -> a's own threads each self.invoke(async b) -> b
    # ainvokes plain c. Those threads do not carry a's context; with a pool of one, c must
    # not wait for the place that a holds while a waits for c.
    from concurrent.futures import ThreadPoolExecutor

    class C(Service):
        name = 't.c2'

        def handle(self):
            self.response.payload = 1

    class B(Service):
        name = 't.b2'

        async def handle(self):
            self.response.payload = await self.ainvoke(C.name)

    class A(Service):
        name = 't.a2'

        def handle(self):
            with ThreadPoolExecutor(2) as ex:
                self.response.payload = sum(ex.map(lambda _: self.invoke(B.name), range(2)))

    class Top(Service):
        name = 't.top2'

        async def handle(self):
            self.response.payload = await self.ainvoke(A.name)

    d = Dispatcher({c.name: c for c in (A, B, C, Top)}, offload_threads=1)
    r = _in_daemon_thread(lambda: run_either(d, Top, b'', 'async'))
    assert r != 'stuck', 'deadlocked'
    assert (r.status, r.doc) == (200, 2)


def test_nested_ainvokes_run_at_most_offload_threads_plain_callees_at_once():
    # A gather of many ainvokes behind a plain callee (a nested chain) is bounded like a
    # request's: at most offload_threads of them at once. The leaves meet at a barrier of
    # three: reached only if three run at once (its timeout only ends the wait when not).
    import threading
    lock = threading.Lock()
    state = {'now': 0, 'peak': 0}
    barrier = threading.Barrier(3, timeout=2)

    class Leaf(Service):
        name = 't.fan-leaf'

        def handle(self):
            with lock:
                state['now'] += 1
                state['peak'] = max(state['peak'], state['now'])
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                pass
            with lock:
                state['now'] -= 1
            self.response.payload = 1

    class Fan(Service):
        name = 't.fan'

        async def handle(self):
            r = await asyncio.gather(*[self.ainvoke(Leaf.name) for _ in range(12)])
            self.response.payload = sum(r)

    class Plain(Service):
        name = 't.fan-plain'

        def handle(self):
            self.response.payload = self.invoke(Fan.name)

    class Top(Service):
        name = 't.fan-top'

        async def handle(self):
            self.response.payload = await self.ainvoke(Plain.name)

    d = Dispatcher({c.name: c for c in (Leaf, Fan, Plain, Top)}, offload_threads=2)
    r = _in_daemon_thread(lambda: run_either(d, Top, b'', 'async'), 30)
    assert r != 'stuck'
    assert (r.status, r.doc) == (200, 12)
    assert state['peak'] <= 2
