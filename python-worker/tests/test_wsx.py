"""``self.wsx`` (oxbus.wsx) against a fake server, and WebSocket channel calls to services.

The API tests check each CALL's meta and body against ipc-protocol/SPEC.md ("WebSocket
pushes") and answer with REPLYs shaped like supervisor/src/wsx/ops.rs; the dispatch tests run
a service with an ``invoke`` CALL of channel ``websocket``.
"""

import asyncio
import json

import pytest

from oxbus import Service
from oxbus import _protocol as P
from oxbus._dispatch import Dispatcher
from oxbus.wsx import ClientQueueFull, UnknownClient, WSXAPI, WSXError

CLIENT = 'ws.s1.0123456789abcdef'


class FakeServer:
    def __init__(self):
        self.calls = []
        self.answers = []

    def __call__(self, meta, body=b''):
        assert isinstance(body, bytes)
        P.encode_call(P.WORKER_STREAM_BIT | 1, meta, body)  # a valid frame
        self.calls.append((meta, body))
        reply_meta, reply_body = self.answers.pop(0)
        return json.dumps(reply_meta).encode(), json.dumps(reply_body).encode()

    async def acall(self, meta, body=b''):
        return self(meta, body)

    def answer(self, body, status=200, error=None):
        meta = {'status': status, 'content_type': 'application/json'}
        if error:
            meta['error'] = error
        self.answers.append((meta, body))


@pytest.fixture
def server():
    return FakeServer()


def test_send_names_the_client_and_types_the_data(server):
    api = WSXAPI(server, server.acall)
    server.answer({'sent': True})
    api.send(CLIENT, {'a': 1})
    assert server.calls[-1] == ({'op': 'wsx.send', 'client_id': CLIENT, 'binary': False},
                                b'{"a":1}')
    server.answer({'sent': True})
    api.send(CLIENT, b'\x00\xff')
    assert server.calls[-1] == ({'op': 'wsx.send', 'client_id': CLIENT, 'binary': True},
                                b'\x00\xff')
    server.answer({'sent': True})
    api.send(CLIENT, 'zażółć')
    assert server.calls[-1][1] == 'zażółć'.encode()
    assert server.calls[-1][0]['binary'] is False


def test_send_errors_are_typed(server):
    api = WSXAPI(server, server.acall)
    server.answer({'error': 'no WebSocket client x is connected'}, 404, 'unknown_client')
    with pytest.raises(UnknownClient) as e:
        api.send(CLIENT, 'x')
    assert isinstance(e.value, KeyError)
    assert 'is connected' in str(e.value)
    server.answer({'error': 'full'}, 409, 'queue_full')
    with pytest.raises(ClientQueueFull):
        api.send(CLIENT, 'x')
    server.answer({'error': 'bad'}, 400, 'invalid')
    with pytest.raises(WSXError) as e:
        api.send(CLIENT, 'x')
    assert e.value.error == 'invalid' and e.value.status == 400
    with pytest.raises(ValueError):
        api.send('', 'x')


def test_broadcast_by_channel_name(server):
    api = WSXAPI(server, server.acall)
    server.answer({'local_clients': 3})
    assert api.channel['chat'].broadcast([1, 2]) == 3
    assert server.calls[-1] == ({'op': 'wsx.broadcast', 'channel': 'chat', 'binary': False},
                                b'[1,2]')
    server.answer({'local_clients': 0})
    assert asyncio.run(api.channel['chat'].abroadcast(b'\x01')) == 0
    assert server.calls[-1][0]['binary'] is True
    with pytest.raises(KeyError):
        api.channel['']
    assert api.channel.get('') is None
    assert api.channel.get('chat').name == 'chat'
    # A channel sends to one client too, blocking or awaitable (as WORKER.md's table says).
    server.answer({})
    asyncio.run(api.channel['chat'].asend(CLIENT, 'hi'))
    assert server.calls[-1] == ({'op': 'wsx.send', 'client_id': CLIENT, 'binary': False},
                                b'hi')


def test_blocking_forms_are_refused_on_the_event_loop(server):
    api = WSXAPI(server, server.acall)

    async def inside():
        with pytest.raises(RuntimeError, match='await'):
            api.send(CLIENT, 'x')
        server.answer({'sent': True})
        await api.asend(CLIENT, 'x')

    asyncio.run(inside())
    assert len(server.calls) == 1


class Echo(Service):
    name = 'test.ws.echo'

    def handle(self):
        self.response.payload = {
            'type': self.channel.type,
            'channel': self.channel.name,
            'client': self.wsx.client_id,
            'event': self.wsx.event,
            'binary': self.wsx.binary,
            'got': self.request.payload if not isinstance(self.request.payload, bytes)
            else self.request.payload.hex(),
        }


def _invoke(meta, body):
    d = Dispatcher({'test.ws.echo': Echo})
    frame = d.run(1, meta, body)
    reply, reply_body = P.decode_call(P.decode_frame(frame)[3])
    return reply, json.loads(reply_body)


def test_a_client_message_reaches_the_service_with_its_client():
    meta = {'op': 'invoke', 'service': 'test.ws.echo', 'cid': 'c1', 'channel': 'websocket',
            'channel_name': 'chat', 'data_format': 'json',
            'wsx': {'client_id': CLIENT, 'event': 'message'}}
    rm, body = _invoke(meta, b'{"x": 1}')
    assert rm['status'] == 200
    assert body == {'type': 'websocket', 'channel': 'chat', 'client': CLIENT,
                    'event': 'message', 'binary': False, 'got': {'x': 1}}
    meta = dict(meta, data_format='raw', wsx={'client_id': CLIENT, 'event': 'message',
                                              'binary': True})
    rm, body = _invoke(meta, b'\x00\x01')
    assert body['binary'] is True and body['got'] == '0001'


def test_outside_a_websocket_call_there_is_no_client():
    meta = {'op': 'invoke', 'service': 'test.ws.echo', 'cid': 'c1', 'channel': 'rest',
            'data_format': 'json'}
    rm, body = _invoke(meta, b'')
    assert body['client'] is None and body['event'] is None
