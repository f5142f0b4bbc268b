"""oxbus.testing: a service run in process by TestClient, through the worker's dispatcher,
with an in-memory server answering its calls and stubs for what it calls elsewhere."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import unittest
from dataclasses import dataclass

import pytest

from oxbus import (BadRequest, Bool, Int, Model, NotFound, Service, UnknownCache,
                   NotAnInteger, OutgoingTimeout)
from oxbus.testing import (HTTPAnswer, NotStubbed, SqlAnswer, TestClient)


# -- services under test ----------------------------------------------------------------------


class Greet(Service):
    name = 't.greet'
    input = 'name', Bool('-loud')
    output = 'text', '-count'

    def before_handle(self):
        self.environ.greeting = self.request.http.headers.get('x-greeting', 'Hello')

    def handle(self):
        count = self.cache.default.incr('greeted:' + self.request.input.name)
        text = '%s %s' % (self.environ.greeting, self.request.input.name)
        self.response.payload = {'text': text.upper() if self.request.input.loud else text,
                                 'count': count, 'dropped': 'not in the output'}


class Http(Service):
    name = 't.http'

    def handle_GET(self):
        http = self.request.http
        self.response.payload = {
            'method': http.method, 'path': http.path, 'params': dict(http.params),
            'query': dict(http.query), 'raw_query': http.query_raw,
            'accept': http.headers.getall('accept'), 'channel': self.channel.type,
            'channel_name': self.channel.name,
            'user': self.channel.security.username if self.channel.security else None,
            'trace_id': self.trace_id, 'cid': self.cid}

    def handle_PUT(self):
        self.response.status_code = 201
        self.response.headers['Location'] = '/things/1'
        self.response.headers['X-Many'] = ['a', 'b']
        self.response.payload = 'made'


class Raw(Service):
    name = 't.raw'

    def handle(self):
        self.response.payload = self.request.payload[::-1]  # raw: the body's bytes


class Fails(Service):
    name = 't.fails'

    def handle(self):
        if self.request.payload == 'missing':
            raise NotFound('no customer 7')
        raise ValueError('a bug')


class AsyncHooks(Service):
    name = 't.async'

    async def before_handle(self):
        await asyncio.sleep(0)
        self.environ.seen = ['before']

    async def handle(self):
        self.cache.default.set('async', self.request.payload)
        self.environ.seen.append('handle')
        self.response.payload = {'seen': self.environ.seen, 'got': self.request.payload}


@dataclass
class Customer(Model):
    id: int
    name: str


class ByModel(Service):
    name = 't.model'
    input = Customer
    output = Customer

    def handle(self):
        inp = self.request.input
        self.response.payload = Customer(id=inp.id, name=inp.name.title())


# -- calls, results, channels -----------------------------------------------------------------


def test_input_hooks_output_and_the_cache_run_as_under_a_server():
    client = TestClient(Greet, cache={'greeted:Ann': 41})
    r = client.post({'name': 'Ann', 'loud': True}, headers={'X-Greeting': 'Hi'})
    assert r.status == 200 and r.status_code == 200 and r.ok
    assert r.json == {'text': 'HI ANN', 'count': 42}  # output filtered: 'dropped' is gone
    assert r.headers['Content-Type'] == 'application/json'
    assert r.payload == r.json and r.exception is None and r.error is None
    assert client.cache.default.get('greeted:Ann') == 42


def test_refused_input_is_a_400_marked_input_before_the_handler_runs():
    client = TestClient(Greet)
    r = client.call({'loud': 'perhaps'})
    assert r.status == 400 and r.error == 'input' and r.exc_family == 'input'
    assert {e['field'] for e in r.json['errors']} == {'name', 'loud'}
    assert isinstance(r.exception, BadRequest)
    assert client.cache.default.keys() == []  # the handler never ran
    assert client.post(body=b'{not json').status == 400


def test_http_meta_path_params_query_headers_and_channel():
    client = TestClient(Http)
    r = client.get(path='/things/7', path_params={'id': 7},
                   query={'tag': ['a', 'b'], 'q': 'x y'},
                   headers=[('Accept', 'text/plain'), ('Accept', 'application/json')],
                   channel_name='things', security={'name': 'api', 'type': 'basic',
                                                   'username': 'ann'}, cid='c1')
    assert r.status == 200, r
    doc = r.json
    assert doc['method'] == 'GET' and doc['path'] == '/things/7'
    assert doc['params'] == {'id': '7'}
    assert doc['raw_query'] == 'tag=a&tag=b&q=x+y'
    assert doc['query'] == {'tag': 'b', 'q': 'x y'}  # the last of a repeated key, as served
    assert doc['accept'] == ['text/plain', 'application/json']
    assert (doc['channel'], doc['channel_name'], doc['user']) == ('rest', 'things', 'ann')
    assert len(doc['trace_id']) == 32 and doc['cid'] == 'c1' and r.cid == 'c1'
    assert client.get(query='?a=1').status == 200


def test_the_call_meta_a_channel_would_send():
    class Echo(Service):
        name = 't.echo'

        def handle(self):
            self.response.payload = {
                'type': self.request.http.headers.get('content-type'),
                'priority': self.request._meta.get('params_priority'),
                'channel': self.channel.type, 'method': self.request.http.method,
                'cid': self.cid}

    client = TestClient(Echo, cid='fixed')
    assert client.post({'a': 1}).json == {'type': 'application/json', 'priority': None,
                                         'channel': 'rest', 'method': 'POST', 'cid': 'fixed'}
    assert client.post({'a': 1}, headers={'Content-Type': 'application/vnd+json'}
                       ).json['type'] == 'application/vnd+json'
    assert client.call(meta={'params_priority': 'msg-over-channel-params'}).json == {
        'type': None, 'priority': 'msg-over-channel-params', 'channel': 'invoke',
        'method': None, 'cid': 'fixed'}
    assert client.call(channel='scheduler', cid='c2').json['cid'] == 'c2'
    assert client.call(channel='jsonrpc').json['method'] == 'POST'


def test_status_headers_and_text_set_by_the_service():
    r = TestClient(Http).put()
    assert r.status == 201
    assert r.headers['location'] == '/things/1'
    assert r.headers.getall('x-many') == ['a', 'b']
    assert r.content_type == 'text/plain; charset=utf-8'
    assert r.text == 'made' and r.payload == 'made' and r.body == b'made'
    with pytest.raises(ValueError, match='not JSON'):
        r.json


def test_a_verb_the_service_does_not_answer_is_a_405_with_allow():
    r = TestClient(Http).post({'a': 1})
    assert r.status == 405
    assert r.headers['allow'] == 'GET, PUT'


def test_raw_data_format_and_bytes_answers():
    r = TestClient(Raw).call(body=b'\x00abc', data_format='raw')
    assert r.body == b'cba\x00' and r.content_type == 'application/octet-stream'
    assert r.payload == b'cba\x00'


def test_a_reportable_error_is_its_status_and_a_bug_is_raised_by_default():
    client = TestClient(Fails)
    r = client.call('missing')
    assert r.status == 404 and r.json['error'] == 'no customer 7'
    assert isinstance(r.exception, NotFound) and r.exc_family == 'NotFound'
    with pytest.raises(ValueError, match='a bug'):
        client.call('other')
    r = TestClient(Fails, raise_server_exceptions=False).call('other')
    assert r.status == 500 and r.json['error'] == 'internal error'
    assert isinstance(r.exception, ValueError) and r.exc_family == 'ValueError'


def test_async_services_and_their_hooks_run_from_sync_and_async_tests():
    client = TestClient(AsyncHooks)
    r = client.call({'n': 1})
    assert r.json == {'seen': ['before', 'handle'], 'got': {'n': 1}}
    assert client.cache.default.get('async') == {'n': 1}

    async def in_a_coroutine():
        with pytest.raises(RuntimeError, match='acall'):
            client.call({'n': 2})
        return await client.acall({'n': 3}, method='POST', headers={'a': 'b'})

    r = asyncio.run(in_a_coroutine())
    assert r.json['got'] == {'n': 3}
    r = asyncio.run(TestClient(Greet).acall({'name': 'Bo'}))  # a sync service from acall
    assert r.json == {'text': 'Hello Bo', 'count': 1}
    with pytest.raises(TypeError, match='unknown arguments: nope'):
        asyncio.run(client.acall(nope=1))


def test_model_input_and_output():
    client = TestClient(ByModel)
    assert client.post({'id': 1, 'name': 'ann lee'}).json == {'id': 1, 'name': 'Ann Lee'}
    r = client.post({'id': 'x'})
    assert r.status == 400 and r.error == 'input'


def test_zato_style_services():
    from zato.server.service import Service as ZatoService

    class GetCustomer(ZatoService):
        name = 't.zato'

        class SimpleIO:
            input_required = Int('customer_id'),
            input_optional = 'region',
            output_required = 'name', 'region'

        def handle(self):
            self.response.payload.name = 'Ann %d' % self.request.input.customer_id
            self.response.payload.region = self.request.input.region

    client = TestClient(GetCustomer)
    r = client.get(path_params={'customer_id': '5'})
    assert r.json == {'response': {'name': 'Ann 5', 'region': ''}}
    assert client.call({'customer_id': 'five'}).status == 400


def test_what_a_client_refuses():
    with pytest.raises(TypeError, match='a Service subclass'):
        TestClient(object)

    class Base(Service):
        pass

    with pytest.raises(TypeError, match='defines no handler'):
        TestClient(Base)
    with pytest.raises(TypeError, match='Service subclasses'):
        TestClient(Greet, services=[len])
    client = TestClient(Greet)
    with pytest.raises(TypeError, match='not both'):
        client.post({'a': 1}, body=b'{}')
    with pytest.raises(TypeError, match='HTTP call'):
        client.call({'name': 'x'}, query={'a': '1'})
    with pytest.raises(ValueError, match='forward'):
        client.advance(-1)


# -- the in-memory server: caches, secrets, user config ---------------------------------------


class CacheOps(Service):
    name = 't.cache'

    def handle(self):
        p = self.request.payload
        cache = self.cache[p.get('cache', 'default')]
        op = p['op']
        if op == 'set':
            cache.set(p['key'], p['value'] if 'hex' not in p else bytes.fromhex(p['hex']),
                      expiry=p.get('expiry'))
            out = None
        elif op == 'get':
            out = cache.get(p['key'], 'absent')
            out = out.hex() if isinstance(out, bytes) else out
        elif op == 'incr':
            out = cache.incr(p['key'], p.get('by', 1))
        elif op == 'expire':
            out = cache.expire(p['key'], p['expiry'])
        elif op == 'dump':
            out = {'keys': cache.keys(p.get('prefix', '')), 'len': len(cache),
                   'items': [[k, v.hex() if isinstance(v, bytes) else v]
                             for k, v in cache.items()],
                   'has': 'a' in cache}
        elif op == 'delete':
            out = cache.delete(p['key'])
        elif op == 'clear':
            out = cache.clear()
        self.response.payload = {'out': out}


def test_caches_answer_as_the_server_does_on_the_clients_clock():
    client = TestClient(CacheOps, cache={'a': {'x': 1}, 'b': b'\x01'},
                        caches={'sessions': {}})

    def op(**p):
        r = client.call(p)
        assert r.status == 200, r
        return r.json['out']

    assert op(op='get', key='a') == {'x': 1}
    assert op(op='get', key='b') == '01'
    op(op='set', key='t', value='soon gone', expiry=30)
    op(op='set', key='raw', hex='ff00')
    assert op(op='dump') == {'keys': ['a', 'b', 'raw', 't'], 'len': 4, 'has': True,
                             'items': [['a', {'x': 1}], ['b', '01'], ['raw', 'ff00'],
                                       ['t', 'soon gone']]}
    client.advance(29.5)
    assert op(op='get', key='t') == 'soon gone'
    client.advance(0.5)
    assert op(op='get', key='t') == 'absent'
    assert op(op='expire', key='a', expiry=10) is True
    assert op(op='expire', key='nope', expiry=10) is False
    client.advance(10)
    assert op(op='dump', prefix='r')['keys'] == ['raw']
    assert op(op='incr', key='n', by=5) == 5 and op(op='incr', key='n', by=-7) == -2
    assert op(op='delete', key='n') is True and op(op='delete', key='n') is False
    assert op(op='clear') == 2
    assert op(op='set', key='k', value=1, cache='sessions') is None
    assert client.cache['sessions'].get('k') == 1
    assert client.cache.default.get('k') is None


def test_cache_refusals_are_the_servers_errors():
    client = TestClient(CacheOps, cache={'s': 'text'})
    with pytest.raises(NotAnInteger, match='not an integer'):
        client.cache.default.incr('s')
    with pytest.raises(NotAnInteger, match='overflows'):
        client.cache.default.incr('big', 2**63 - 1) and client.cache.default.incr('big')
    with pytest.raises(UnknownCache, match=r"no cache named other .*caches=\{'other'"):
        client.cache['other'].get('k')
    r = TestClient(CacheOps, raise_server_exceptions=False).call(
        {'op': 'get', 'key': 'k', 'cache': 'other'})
    assert r.status == 500 and isinstance(r.exception, UnknownCache)
    from oxbus.cache import CacheError
    with pytest.raises(CacheError, match='at most 4096 bytes'):
        client.cache.default.set('k' * 4097, 1)
    with pytest.raises(CacheError, match='expiry must be'):
        client.cache.default.set('k', 1, expiry=-1)


class Settings(Service):
    name = 't.settings'

    def handle(self):
        self.response.payload = {
            'key': self.secrets['crm.key'], 'other': self.secrets.get('other', 'none'),
            'has': 'other' in self.secrets, 'region': self.user_config.crm.api.region,
            'missing': self.user_config.get('missing')}


def test_secrets_and_user_config_are_what_the_client_was_given():
    client = TestClient(Settings, secrets={'crm.key': 's3cret'},
                        user_config={'crm': {'api': {'region': 'eu'}}})
    assert client.call().json == {'key': 's3cret', 'other': 'none', 'has': False,
                                  'region': 'eu', 'missing': None}
    with pytest.raises(KeyError, match='crm.key'):
        TestClient(Settings).call()


# -- stubs: invoke, invoke_async, outgoing connections, pub/sub --------------------------------


class Caller(Service):
    name = 't.caller'

    def handle(self):
        p = self.request.payload or {}
        target = p.get('target', 't.greet')
        try:
            answer = self.invoke(target, p.get('payload'))
        except NotFound as e:
            answer = 'caught: %s' % e  # a service catching the error still fails the test
        self.invoke_async('t.audit', {'did': target})
        self.response.payload = {'answer': answer}


def _raises(exc):
    def stub(payload):
        raise exc
    return stub


def test_invoke_runs_real_services_and_stubs_and_records_the_stubs_calls():
    client = TestClient(Caller, services=[Greet],
                        invoke={'crm.get': lambda p: {'id': p['id'], 'name': 'Ann'},
                                'crm.fixed': {'fixed': True}, 'crm.class': Fails,
                                'crm.gone': _raises(NotFound('gone'))})
    r = client.call({'payload': {'name': 'Bo'}})
    assert r.json == {'answer': {'text': 'Hello Bo', 'count': 1}}
    assert client.call({'target': 'crm.get', 'payload': {'id': 3}}).json == {
        'answer': {'id': 3, 'name': 'Ann'}}
    fixed = client.call({'target': 'crm.fixed'}).json['answer']
    fixed['changed'] = 1
    assert client.call({'target': 'crm.fixed'}).json == {'answer': {'fixed': True}}
    assert client.call({'target': 'crm.gone'}).json == {'answer': 'caught: gone'}
    assert [(i.service, i.payload) for i in client.invoked] == [
        ('crm.get', {'id': 3}), ('crm.fixed', None), ('crm.fixed', None), ('crm.gone', None)]
    assert client.call({'target': 'crm.class', 'payload': 'missing'}).json == {
        'answer': 'caught: no customer 7'}  # a class given in invoke= runs for real
    assert [(a.service, a.payload) for a in client.invoked_async] == [
        ('t.audit', {'did': t}) for t in ('t.greet', 'crm.get', 'crm.fixed', 'crm.fixed',
                                          'crm.gone', 'crm.class')]
    assert all(len(a.cid) == 20 and a.meta['traceparent'] for a in client.invoked_async)


def test_invoking_a_service_not_given_fails_the_call_naming_what_to_give():
    client = TestClient(Caller)
    with pytest.raises(NotStubbed, match=r"Caller: the service invoked 't.greet', which is "
                                         r"not stubbed: .*services=\[\.\.\.\].*invoke="):
        client.call()
    with pytest.raises(NotStubbed, match="invoked 'nope'"):
        TestClient(Caller, services=[Greet]).call({'target': 'nope'})
    # Raised once, not left behind for the next call.
    client = TestClient(Caller, services=[Greet])
    with pytest.raises(NotStubbed):
        client.call({'target': 'nope'})
    assert client.call({'payload': {'name': 'Ed'}}).status == 200


class UsesOutgoing(Service):
    name = 't.out'

    def handle(self):
        p = self.request.payload
        kind = p['kind']
        if kind == 'rest':
            crm = self.out.rest['CRM'].conn
            got = crm.post(self.cid, {'name': 'Ann'}, params={'id': 5, 'tag': ['a', 'b']},
                           headers={'X-A': '1'})
            self.response.payload = {'status': got.status_code, 'data': got.data,
                                     'text': got.text, 'type': got.headers.get('content-type'),
                                     'etag': got.headers.get('etag')}
        elif kind == 'sql':
            db = self.out.sql['crm']
            with db.transaction() as tx:
                count = tx.execute('UPDATE t SET a = :a', {'a': 1}).rowcount
            rows = db.fetch_all('SELECT * FROM t WHERE id = :id', {'id': 1})
            self.response.payload = {'count': count, 'rows': [
                {k: (str(v) if isinstance(v, (decimal.Decimal, datetime.date)) else v)
                 for k, v in r.items()} for r in rows],
                'types': [type(v).__name__ for v in rows[0].values()] if rows else []}
        elif kind == 'redis':
            r = self.out.redis['cache']
            self.response.payload = {'set': r.set('k', 'v'), 'get': r.get('k').decode()}
        elif kind == 'publish':
            self.out.mqtt['sensors'].publish('site/1/temp', {'c': 21.5})
            self.out.amqp.send({'id': 1}, 'orders', 'ex', 'rk')
            self.response.payload = None


def test_rest_stubs_see_the_call_and_answer_what_the_service_gets():
    seen = []

    def crm(call):
        seen.append(call)
        return HTTPAnswer(404, json={'error': 'gone'}, headers={'ETag': 'x1'})

    client = TestClient(UsesOutgoing, outgoing={'CRM': crm})
    r = client.call({'kind': 'rest'})
    assert r.json == {'status': 404, 'data': {'error': 'gone'}, 'text': '{"error":"gone"}',
                      'type': 'application/json', 'etag': 'x1'}
    call, = seen
    assert client.outgoing_calls == [call]
    assert (call.kind, call.conn, call.method) == ('rest', 'CRM', 'POST')
    assert call.params == {'id': '5', 'tag': ['a', 'b']} and call.headers == {'X-A': '1'}
    assert call.data == {'name': 'Ann'} and call.meta['cid'] == r.cid
    assert call.content_type is None  # the service set none: the connection's applies
    assert repr(call) == "<OutCall rest CRM: POST {'id': '5', 'tag': ['a', 'b']}>"
    # Plain answers: a JSON value is a 200; a kind-qualified key wins over the plain name.
    client = TestClient(UsesOutgoing, outgoing={'CRM': 'ignored', 'rest:CRM': {'ok': 1}})
    assert client.call({'kind': 'rest'}).json['data'] == {'ok': 1}
    assert TestClient(UsesOutgoing, outgoing={'CRM': 'plain'}).call(
        {'kind': 'rest'}).json['text'] == 'plain'
    assert TestClient(UsesOutgoing, outgoing={'CRM': None}).call(
        {'kind': 'rest'}).json['status'] == 204


def test_a_stub_raising_an_outgoing_error_is_what_the_service_sees():
    def crm(call):
        raise OutgoingTimeout('CRM: timed out', 'CRM', 'timeout', 504)

    client = TestClient(UsesOutgoing, outgoing={'CRM': crm}, raise_server_exceptions=False)
    r = client.call({'kind': 'rest'})
    assert r.status == 500 and isinstance(r.exception, OutgoingTimeout)


def test_async_services_call_stubs_through_the_awaitable_forms():
    class AsyncOut(Service):
        name = 't.async-out'

        async def handle(self):
            got = await self.out.rest['CRM'].conn.aget(self.cid, params={'id': 1})
            await self.pubsub.apublish('/seen', got.data)
            self.response.payload = got.data

    client = TestClient(AsyncOut, outgoing={'CRM': lambda call: {'id': call.params['id']}})
    assert client.get().json == {'id': '1'}
    assert [(p.topic, p.payload) for p in client.published] == [('/seen', {'id': '1'})]


def test_sql_stubs_answer_rows_and_rowcounts_and_transactions_are_recorded():
    def crm(call):
        if call.sql.startswith('UPDATE'):
            assert call.tx is not None and call.params == {'a': 1}
            return 3
        return [{'id': 1, 'price': decimal.Decimal('9.50'), 'day': datetime.date(2026, 1, 2),
                 'tags': ['a'], 'gone': None}]

    client = TestClient(UsesOutgoing, outgoing={'crm': crm})
    r = client.call({'kind': 'sql'})
    assert r.json == {'count': 3, 'rows': [{'id': 1, 'price': '9.50', 'day': '2026-01-02',
                                           'tags': ['a'], 'gone': None}],
                      'types': ['int', 'Decimal', 'date', 'list', 'NoneType']}
    assert [c.action for c in client.outgoing_calls] == ['begin', 'execute', 'commit',
                                                          'execute']
    rows = SqlAnswer([[1, 'a']], columns=['id', 'name'])
    assert rows.doc()['rows'] == [[1, 'a']] and rows.rowcount == 1
    with pytest.raises(TypeError, match='columns='):
        SqlAnswer([[1]])


def test_sql_streams_rollbacks_and_database_errors():
    from oxbus import IntegrityError

    class Streams(Service):
        name = 't.streams'

        def handle(self):
            db = self.out.sql['crm']
            with db.stream('SELECT id FROM t', batch=1) as stream:
                ids = [row['id'] for batch in stream for row in batch]
            try:
                with db.transaction() as tx:
                    tx.execute('INSERT INTO t VALUES (1)')
            except IntegrityError as e:
                self.response.payload = {'ids': ids, 'error': e.code}

    def crm(call):
        if call.action == 'stream':
            return [{'id': 1}, {'id': 2}]
        raise IntegrityError('duplicate key', 'crm', 'sql', 400, '23505')

    client = TestClient(Streams, outgoing={'crm': crm})
    assert client.call().json == {'ids': [1, 2], 'error': '23505'}
    assert [c.action for c in client.outgoing_calls] == ['stream', 'begin', 'execute',
                                                          'rollback']


def test_a_transaction_left_open_is_rolled_back_as_the_worker_does():
    class LeavesItOpen(Service):
        name = 't.open'

        def handle(self):
            self.out.sql['crm'].transaction().begin().execute('DELETE FROM t')

    client = TestClient(LeavesItOpen, outgoing={'crm': 0})
    assert client.call().status == 200
    # The worker's ASYNC rollback (posted, never answered) reaches the in-memory server.
    assert [(c.action, c.tx) for c in client.outgoing_calls] == [
        ('begin', None), ('execute', 1), ('rollback', 1)]


def test_redis_pipelines_and_zatos_kvdb():
    class Pipes(Service):
        name = 't.pipes'

        def handle(self):
            pipe = self.out.redis['cache'].pipeline()
            pipe.set('a', '1')
            pipe.incr('n')
            pipe.get('a')
            done = pipe.execute(raise_on_error=False)
            self.response.payload = {'pipe': [str(v) for v in done],
                                     'kvdb': self.kvdb.conn.get('z')}

    def cache(call):
        assert call.meta['transaction'] is True and len(call.commands) == 3
        return ['OK', ValueError('ERR not an integer'), b'1']

    client = TestClient(Pipes, outgoing={'cache': cache, 'default': b'zz'})
    doc = client.call().json
    assert doc['pipe'][0] == 'True' and doc['pipe'][2] == "b'1'"
    assert doc['pipe'][1].endswith('command 1 (INCRBY) of the transaction: ERR not an integer')
    assert doc['kvdb'] == 'zz'
    assert client.outgoing_calls[1].conn == 'default'  # no kvdb connection: default, as served
    client = TestClient(Pipes, outgoing={'cache': cache, 'kvdb': b'k', 'default': b'zz'})
    assert client.call().json['kvdb'] == 'k'
    with pytest.raises(NotStubbed, match="redis connection 'kvdb'"):
        TestClient(Pipes, outgoing={'cache': cache}).call()
    with pytest.raises(TypeError, match='a Redis stub answers'):
        TestClient(Pipes, outgoing={'cache': [object()]}).call()


def test_redis_amqp_and_mqtt_stubs():
    def cache(call):
        name = call.commands[0][0]
        return 'OK' if name == b'SET' else b'v'

    client = TestClient(UsesOutgoing, outgoing={'cache': cache})
    assert client.call({'kind': 'redis'}).json == {'set': True, 'get': 'v'}
    assert [c.commands for c in client.outgoing_calls] == [[[b'SET', b'k', b'v']],
                                                           [[b'GET', b'k']]]
    client = TestClient(UsesOutgoing, outgoing={'sensors': None, 'orders': None})
    assert client.call({'kind': 'publish'}).status == 200
    mqtt, amqp = client.outgoing_calls
    assert (mqtt.kind, mqtt.topic, mqtt.qos, mqtt.retain) == ('mqtt', 'site/1/temp', 1, False)
    assert mqtt.data == {'c': 21.5}
    assert (amqp.kind, amqp.exchange, amqp.routing_key, amqp.data) == ('amqp', 'ex', 'rk',
                                                                      {'id': 1})


def test_an_outgoing_connection_not_given_fails_the_call_naming_it():
    client = TestClient(UsesOutgoing, outgoing={'other': {}})
    with pytest.raises(NotStubbed, match=r"outgoing rest connection 'CRM', which is not "
                                         r"stubbed: .*outgoing=\{'CRM': stub\}"):
        client.call({'kind': 'rest'})
    with pytest.raises(NotStubbed, match="outgoing sql connection 'crm'"):
        client.call({'kind': 'sql'})


class Publishes(Service):
    name = 't.publish'

    def handle(self):
        ids = self.pubsub.publish('/orders/new', data_list=[{'id': 1}, 'two'], priority=7)
        self.response.payload = {'ids': ids}
        if self.request.payload == 'subscribe':
            self.pubsub.subscribe('/orders/*')


def test_published_messages_are_recorded_and_other_pubsub_calls_are_not_stubbed():
    client = TestClient(Publishes)
    ids = client.call().json['ids']
    assert [(p.topic, p.payload, p.meta.get('priority'), p.msg_id) for p in client.published] \
        == [('/orders/new', {'id': 1}, 7, ids[0]), ('/orders/new', 'two', 7, ids[1])]
    with pytest.raises(NotStubbed, match='pubsub.subscribe call to the server, which '
                                         'oxbus.testing does not answer'):
        client.call('subscribe')


def test_invokes_through_the_server_reach_the_clients_services():
    # What self.patterns' background calls send: an invoke CALL to the server.
    from oxbus.patterns import TargetFailed, server_invoke

    class ThroughServer(Service):
        name = 't.through-server'

        def handle(self):
            try:
                self.response.payload = server_invoke(self, 't.greet', self.request.payload,
                                                      self.cid)
            except TargetFailed as e:
                self.response.payload = {'failed': str(e)}

    client = TestClient(ThroughServer, services=[Greet])
    assert client.call({'name': 'Cy'}).json == {'text': 'Hello Cy', 'count': 1}
    assert 'missing input: name' in client.call({}).json['failed']
    with pytest.raises(NotStubbed, match="invoked 't.greet'"):
        TestClient(ThroughServer).call({'name': 'Cy'})


def test_works_in_a_unittest_test_case():
    class GreetTest(unittest.TestCase):
        def test_greets(self):
            client = TestClient(Greet)
            self.assertEqual(client.post({'name': 'Di'}).json, {'text': 'Hello Di',
                                                                'count': 1})

        def test_fails(self):
            self.assertEqual(TestClient(Greet).post({'name': 'Di'}).status, 500)

    result = unittest.TestResult()
    unittest.defaultTestLoader.loadTestsFromTestCase(GreetTest).run(result)
    assert result.testsRun == 2 and not result.errors
    assert [t.id().rsplit('.', 1)[1] for t, _ in result.failures] == ['test_fails']


def test_the_worker_never_imports_the_kit():
    import subprocess
    import sys
    from conftest import PKG_ROOT
    code = ('import sys, oxbus, oxbus._runtime, oxbus._deploy; '
            'print("oxbus.testing" in sys.modules)')
    out = subprocess.run([sys.executable, '-c', code], cwd=PKG_ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == 'False'


# -- what the review found ---------------------------------------------------------------------


class Tolerant(Service):
    """Degrades on any failure of what it calls: it would hide a stub's own error."""
    name = 't.tolerant'

    def handle(self):
        try:
            if self.request.payload == 'invoke':
                got = self.invoke('crm.get', {'id': 'WRONG'})
            else:
                got = self.out.rest['CRM'].conn.get(self.cid, params={'id': 'WRONG'}).data
        except Exception:
            got = {'fallback': True}
        self.response.payload = got


def test_a_stub_failing_fails_the_call_even_when_the_service_catches_everything():
    def crm(call):
        assert call.params['id'] == '7', 'the service must ask for customer 7'
        return {'id': 7}

    def crm_get(payload):
        assert payload['id'] == 7, 'customer 7'
        return {'id': 7}

    client = TestClient(Tolerant, outgoing={'CRM': crm}, invoke={'crm.get': crm_get},
                        raise_server_exceptions=False)
    with pytest.raises(AssertionError, match='must ask for customer 7'):
        client.call()
    with pytest.raises(AssertionError, match='customer 7'):
        client.call('invoke')
    # Raised once, not left behind for the next call.
    client = TestClient(Tolerant, outgoing={'CRM': {'id': 7}}, invoke={'crm.get': {'id': 7}})
    assert client.call().json == client.call('invoke').json == {'id': 7}
    # A bad answer of a stub is the test's error too, not the service's.
    with pytest.raises(TypeError, match='a Redis stub answers'):
        TestClient(UsesOutgoing, outgoing={'cache': object()}).call({'kind': 'redis'})
    # What the server (or a callee) would raise still reaches the service.
    def timeout(call):
        raise OutgoingTimeout('CRM: timed out', 'CRM', 'timeout', 504)
    assert TestClient(Tolerant, outgoing={'CRM': timeout}).call().json == {'fallback': True}
    assert TestClient(Tolerant, invoke={'crm.get': _raises(NotFound('gone'))}).call(
        'invoke').json == {'fallback': True}


def test_result_headers_are_what_the_servers_reply_has():
    class SetsHeaders(Service):
        name = 't.sets-headers'

        def handle(self):
            if self.request.payload == 'both':
                self.response.content_type = 'text/csv'
            self.response.payload = 'a,b\n'
            self.response.headers['Content-Type'] = 'application/xml'
            self.response.headers['X-Oxbus-CID'] = 'mine'
            self.response.headers['X-Other'] = 'one'

    # The server appends the service's headers, then sets Content-Type to the reply's
    # content type (the service's Content-Type header is that content type) and X-Oxbus-CID
    # to the call's cid, replacing theirs.
    r = TestClient(SetsHeaders, cid='c1').get()
    assert r.headers.getall('content-type') == ['application/xml']
    assert r.content_type == 'application/xml' and r.body == b'a,b\n'
    assert r.headers.getall('x-oxbus-cid') == ['c1'] and r.headers['x-other'] == 'one'
    r = TestClient(SetsHeaders).call('both')
    assert r.headers.getall('content-type') == ['text/csv'] == [r.content_type]
    assert r.headers['x-oxbus-cid'] == r.cid


def test_acall_runs_a_sync_service_off_the_event_loop():
    import threading

    class AsyncCallee(Service):
        name = 't.async-callee'

        async def handle(self):
            await asyncio.sleep(0)
            self.response.payload = {'a': 1}

    class SyncCaller(Service):
        name = 't.sync-caller'

        def handle(self):
            # A sync service invoking an async one: works on a worker (not on a loop thread).
            self.response.payload = {'got': self.invoke('t.async-callee'),
                                     'thread': threading.current_thread().name}

    async def main():
        return await TestClient(SyncCaller, services=[AsyncCallee]).acall()

    r = asyncio.run(main())
    assert r.json['got'] == {'a': 1}
    assert r.json['thread'] != threading.current_thread().name


def test_cache_values_over_max_item_size_are_refused_as_the_server_does():
    from oxbus.cache import ValueTooLarge
    client = TestClient(CacheOps, caches={'small': {}}, max_item_size={'small': 8})
    mib = 1024 * 1024
    client.cache.default.set('fits', b'x' * mib)  # the default: 1 MiB, as the server's
    with pytest.raises(ValueTooLarge, match="the value is 1048577 bytes, more than cache "
                                            "default's max_item_size of 1048576"):
        client.cache.default.set('big', b'x' * (mib + 1))
    assert client.cache.default.get('big') is None
    client.cache['small'].set('k', '123456')  # 8 bytes of JSON text
    with pytest.raises(ValueTooLarge, match="cache small's max_item_size of 8"):
        client.cache['small'].set('k', '1234567')
    r = TestClient(CacheOps, raise_server_exceptions=False).call(
        {'op': 'set', 'key': 'k', 'value': 'x' * mib})
    assert r.status == 500 and isinstance(r.exception, ValueTooLarge)
    with pytest.raises(ValueError, match='max_item_size'):
        TestClient(CacheOps, max_item_size={'default': 0})
    with pytest.raises(ValueError, match="cache default's entry 'k' is 9 bytes"):
        TestClient(CacheOps, cache={'k': '1234567'}, max_item_size={'default': 8})


def test_cache_key_length_is_checked_where_the_server_checks_it():
    from oxbus.cache import CacheError
    client = TestClient(CacheOps)
    long = 'k' * 4097
    # get and has do not check it (a long key is simply absent); writes refuse it.
    assert client.cache.default.get(long) is None
    assert client.cache.default.has_key(long) is False and long not in client.cache.default
    for write in (lambda c: c.set(long, 1), lambda c: c.delete(long),
                  lambda c: c.expire(long, 5), lambda c: c.incr(long)):
        with pytest.raises(CacheError, match='at most 4096 bytes, this one has 4097'):
            write(client.cache.default)


def test_cache_expiry_limit_and_value_kinds_are_the_servers():
    from oxbus._protocol import decode_json, encode_json
    from oxbus.cache import CacheError
    client = TestClient(CacheOps)
    limit = 10 * 366 * 24 * 3600  # the server's ten years (cache/src/def.rs MAX_EXPIRY_S)
    client.cache.default.set('k', 1, expiry=limit)
    assert client.cache.default.expire('k', limit) is True
    with pytest.raises(CacheError, match='expiry must be 0 \\(never\\) to 316224000 seconds'):
        client.cache.default.set('k', 1, expiry=limit + 1)
    # The server's kind is json or bytes; another is a bad call (400 invalid), stored nowhere.
    meta, body = client._server.request(
        encode_json({'op': 'cache.set', 'key': 'x', 'kind': 'xml'}), b'<a/>')
    assert decode_json(meta)['status'] == 400 and decode_json(meta)['error'] == 'invalid'
    assert 'unknown variant `xml`, expected `json` or `bytes`' in decode_json(body)['error']
    assert client.cache.default.get('x') is None


def test_rest_headers_of_the_servers_own_are_refused_as_the_server_does():
    from oxbus import InvalidCall

    class SetsHost(Service):
        name = 't.sets-host'

        def handle(self):
            conn = self.out.rest['CRM'].conn
            try:
                conn.get(self.cid, headers={self.request.payload: 'x'})
            except InvalidCall as e:
                self.response.payload = {'invalid': str(e), 'status': e.status}
            else:
                self.response.payload = {'sent': True}

    client = TestClient(SetsHost, outgoing={'CRM': {}})
    for name in ('Host', 'Content-Length', 'transfer-encoding', 'CONNECTION'):
        assert client.call(name).json == {
            'invalid': 'CRM: headers: %s is set by the server, not by a call' % name,
            'status': 400}
    assert client.outgoing_calls == []  # refused before anything went out
    assert client.call('X-Ok').json == {'sent': True}


def test_invoked_keeps_the_payload_as_it_was_sent():
    from oxbus.testing import Invoked

    class Reuses(Service):
        name = 't.reuses'

        def handle(self):
            p = {'q': 1}
            self.invoke('x', p)
            p['q'] = 2  # the caller reuses its dict after the call
            self.response.payload = {}

    client = TestClient(Reuses, invoke={'x': {}})
    client.call()
    assert client.invoked == [Invoked('x', {'q': 1})]


def test_a_pattern_callback_not_given_is_not_stubbed():
    class Retries(Service):
        name = 't.retries'

        def handle(self):
            self.response.payload = self.patterns.invoke_retry.invoke(
                'target', {'a': 1}, repeats=2, seconds=0, async_fallback=True,
                callback='my.callback')

    with pytest.raises(NotStubbed, match="invoked 'my.callback', which is not stubbed"):
        TestClient(Retries, invoke={'target': {'ok': 1}}).call()
    client = TestClient(Retries, invoke={'target': {'ok': 1}, 'my.callback': None})
    assert client.call().json == {'ok': 1}


def test_an_http_call_has_the_host_header_a_client_sends():
    class Host(Service):
        name = 't.host'

        def handle(self):
            http = self.request.http
            self.response.payload = {'host': http.headers.getall('host'), 'port': http.port,
                                     'path': http.path}

    client = TestClient(Host)
    assert client.get().json == {'host': ['localhost:17010'], 'port': 17010, 'path': '/'}
    assert client.get(headers={'Host': 'api.example.com'}).json['host'] == ['api.example.com']
    # The channel's URL pattern is the server's: the path is '/' unless given.
    assert client.get(path_params={'id': 7}).json['path'] == '/'
