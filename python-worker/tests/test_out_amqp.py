"""``self.out.amqp.send`` / ``asend`` against a fake server: the ``out.amqp`` CALL each makes
(ipc-protocol/SPEC.md) and the exceptions of the server's errors."""

import asyncio
import datetime as dt
import json

import pytest

from oxbus import _protocol as P
from oxbus import outgoing as O
from oxbus.outgoing import OutgoingAPI
from oxbus.service import _invocation_meta, current_invocation

TRACEPARENT = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'


class FakeServer:
    """A worker's ``request``: records every CALL and answers from a queue."""

    def __init__(self):
        self.calls = []
        self.answers = []

    def __call__(self, meta, body=b''):
        assert isinstance(body, bytes)
        P.encode_call(P.WORKER_STREAM_BIT | 1, meta, body)  # must be a valid frame
        self.calls.append((meta, body))
        reply_meta, reply_body = self.answers.pop(0) if self.answers else ({'status': 200}, {})
        return json.dumps(reply_meta).encode(), json.dumps(reply_body).encode()

    def answer(self, meta, body):
        self.answers.append((meta, body))


@pytest.fixture
def server():
    return FakeServer()


@pytest.fixture
def out(server):
    return OutgoingAPI(server)


def test_bytes_go_as_they_are_with_zatos_positional_arguments(out, server):
    t1 = current_invocation.set(('cid-9', 'svc.x', 5))
    t2 = _invocation_meta.set({'traceparent': TRACEPARENT})
    try:
        assert out.amqp.send(b'\x00raw', 'orders', 'orders.x', 'created',
                             {'priority': 5, 'correlation_id': 'c-1'}, {'src': 'crm', 'n': 2}) \
            is None
    finally:
        _invocation_meta.reset(t2)
        current_invocation.reset(t1)
    meta, body = server.calls[-1]
    assert body == b'\x00raw'
    assert meta == {'op': 'out.amqp', 'conn': 'orders', 'exchange': 'orders.x',
                    'routing_key': 'created', 'cid': 'cid-9', 'traceparent': TRACEPARENT,
                    'properties': {'priority': 5, 'correlation_id': 'c-1'},
                    'headers': {'src': 'crm', 'n': 2}}


def test_str_dict_and_properties(out, server):
    out.amqp.send('zażółć', 'q', routing_key='a-queue')
    meta, body = server.calls[-1]
    assert body == 'zażółć'.encode() and 'properties' not in meta
    assert meta['exchange'] == '' and meta['routing_key'] == 'a-queue'
    assert 'mandatory' not in meta

    when = dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)
    out.amqp.send({'id': 1, 'tags': ['a']}, 'q', 'x', 'k', mandatory=True,
                  properties={'expiration': 60000, 'timestamp': when, 'type': 'order',
                              'delivery_mode': 1, 'reply_to': None})
    meta, body = server.calls[-1]
    assert json.loads(body) == {'id': 1, 'tags': ['a']}
    assert meta['mandatory'] is True
    assert meta['properties'] == {'content_type': 'application/json', 'expiration': '60000',
                                  'timestamp': int(when.timestamp()), 'type': 'order',
                                  'delivery_mode': 1}

    out.amqp.send({'a': 1}, 'q', properties={'content_type': 'application/vnd.x+json'})
    assert server.calls[-1][0]['properties'] == {'content_type': 'application/vnd.x+json'}


def test_refused_before_any_call(out, server):
    with pytest.raises(ValueError, match='colour'):
        out.amqp.send(b'x', 'q', properties={'colour': 'red'})
    with pytest.raises(TypeError):
        out.amqp.send(b'x', 'q', 'x', 5)
    with pytest.raises(TypeError):
        out.amqp.send(b'x', 'q', headers={1: 'a'})
    assert server.calls == []


@pytest.mark.parametrize('error,status,cls', [
    ('nacked', 502, O.AmqpNack), ('refused', 502, O.AmqpRefused),
    ('timeout', 504, O.OutgoingTimeout), ('connect', 502, O.OutgoingConnectionError),
    ('io', 502, O.OutgoingConnectionError), ('unknown_conn', 404, O.UnknownConnection),
    ('invalid', 400, O.InvalidCall)])
def test_errors(out, server, error, status, cls):
    server.answer({'status': status, 'error': error}, {'error': 'AMQP connection "q": boom'})
    with pytest.raises(cls) as e:
        out.amqp.send(b'x', 'q', 'x', 'k')
    assert str(e.value) == 'AMQP connection "q": boom'
    assert e.value.conn == 'q' and e.value.error == error
    assert isinstance(e.value, O.OutgoingError)
    if error in ('nacked', 'refused'):
        assert isinstance(e.value, O.AmqpPublishError)


def test_unroutable_carries_the_return(out, server):
    server.answer({'status': 502, 'error': 'unroutable'},
                  {'error': 'AMQP connection "q": returned', 'reply_code': 312,
                   'reply_text': 'NO_ROUTE'})
    with pytest.raises(O.AmqpUnroutable) as e:
        out.amqp.send(b'x', 'q', 'amq.direct', 'nobody', mandatory=True)
    assert (e.value.reply_code, e.value.reply_text) == (312, 'NO_ROUTE')
    assert isinstance(e.value, O.AmqpPublishError)


def test_asend_makes_the_same_call(server):
    async def arequest(meta, body=b'', orphan=None):
        await asyncio.sleep(0)
        return server(meta, body)
    out = OutgoingAPI(server, arequest)

    async def run():
        await out.amqp.asend({'a': 1}, 'q', 'x', 'k', headers={'h': True}, mandatory=True)
        server.answer({'status': 502, 'error': 'nacked'}, {'error': 'nacked'})
        with pytest.raises(O.AmqpNack):
            await out.amqp.asend(b'x', 'q', 'x', 'k')
    asyncio.run(run())
    meta, body = server.calls[0]
    assert meta['headers'] == {'h': True} and meta['mandatory'] is True
    assert json.loads(body) == {'a': 1}


def test_blocking_send_from_a_coroutine_is_refused(out):
    async def run():
        out.amqp.send(b'x', 'q')
    with pytest.raises(RuntimeError, match='event loop'):
        asyncio.run(run())


def test_zatos_cluster_id_is_accepted_and_not_sent(out, server):
    out.amqp.send(b'x', 'q', 'x', 'k', {'cluster_id': 'c1', 'priority': 1})
    assert server.calls[-1][0]['properties'] == {'priority': 1}


def test_timeout_is_the_sends_deadline(out, server):
    out.amqp.send(b'x', 'q', 'x', 'k', timeout=0.25)
    assert server.calls[-1][0]['deadline_ms'] == 250
    out.amqp.send(b'x', 'q', 'x', 'k')
    assert 'deadline_ms' not in server.calls[-1][0]
    for bad in (0, -1, True, '1'):
        with pytest.raises(ValueError, match='timeout'):
            out.amqp.send(b'x', 'q', timeout=bad)
    assert len(server.calls) == 2
