"""MQTT from a service: ``self.out.mqtt[name].publish`` / ``apublish`` against a fake server
(each CALL's meta and body checked against ipc-protocol/SPEC.md ``out.mqtt``), and what an
MQTT channel's invocation gives the service (``self.channel``, ``self.request.mqtt``, the
payload raw or parsed)."""

import asyncio
import json

import pytest

from oxbus import _protocol as P
from oxbus import outgoing as O
from oxbus._dispatch import Dispatcher
from oxbus.outgoing import OutgoingAPI
from oxbus.service import Service, _invocation_meta, current_invocation

TRACEPARENT = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'


class FakeServer:
    """A ``request`` function: records every call, answers from a queue."""

    def __init__(self):
        self.calls = []
        self.answers = []

    def __call__(self, meta, body=b''):
        if isinstance(meta, bytes):
            meta = json.loads(meta)
        assert isinstance(body, bytes)
        P.encode_call(P.WORKER_STREAM_BIT | 1, meta, body)
        self.calls.append((meta, body))
        reply_meta, reply_body = self.answers.pop(0) if self.answers else ({'status': 200}, b'{}')
        if not isinstance(reply_body, bytes):
            reply_body = json.dumps(reply_body).encode()
        return json.dumps(reply_meta).encode(), reply_body


@pytest.fixture
def server():
    return FakeServer()


@pytest.fixture
def invocation():
    t1 = current_invocation.set(('cid-9', 'svc.x', 5))
    t2 = _invocation_meta.set({'traceparent': TRACEPARENT})
    yield
    _invocation_meta.reset(t2)
    current_invocation.reset(t1)


def test_publish_sends_the_payload_raw_with_topic_qos_retain(server, invocation):
    out = OutgoingAPI(server)
    out.mqtt['sensors'].publish('site/1/temp', b'\x00\xff')
    meta, body = server.calls[-1]
    assert meta == {'op': 'out.mqtt', 'conn': 'sensors', 'topic': 'site/1/temp', 'qos': 1,
                    'retain': False, 'cid': 'cid-9', 'traceparent': TRACEPARENT}
    assert body == b'\x00\xff'
    out.mqtt.get('sensors').publish('a', 'żółw', qos=0, retain=True)
    meta, body = server.calls[-1]
    assert (meta['qos'], meta['retain'], body) == (0, True, 'żółw'.encode())
    out.mqtt['sensors'].publish('a', {'c': 21.5, 'ok': True})
    assert json.loads(server.calls[-1][1]) == {'c': 21.5, 'ok': True}
    assert out.mqtt['sensors'] is out.mqtt['sensors']


def test_qos_2_and_bad_arguments_are_refused_before_any_call(server):
    out = OutgoingAPI(server)
    with pytest.raises(O.InvalidCall, match='QoS 2 is not supported'):
        out.mqtt['s'].publish('a', b'', qos=2)
    with pytest.raises(O.InvalidCall):
        out.mqtt['s'].publish('a', b'', qos=True)
    with pytest.raises(TypeError):
        out.mqtt['s'].publish(b'a', b'')
    with pytest.raises(TypeError):
        out.mqtt[1]
    assert server.calls == []


@pytest.mark.parametrize('error,status,exc', [
    ('unknown_conn', 404, O.UnknownConnection),
    ('invalid', 400, O.InvalidCall),
    ('timeout', 504, O.OutgoingTimeout),
    ('connect', 502, O.OutgoingConnectionError),
    ('io', 502, O.OutgoingConnectionError),
    ('too_large', 413, O.ResponseTooLarge),
    ('pool_full', 503, O.PoolFull),
])
def test_each_error_is_its_exception_naming_the_connection(server, error, status, exc):
    out = OutgoingAPI(server)
    server.answers.append(({'status': status, 'error': error},
                           {'error': 'MQTT connection sensors (mqtt://h): ' + error}))
    with pytest.raises(exc) as e:
        out.mqtt['sensors'].publish('a', b'x')
    assert e.value.conn == 'sensors' and e.value.error == error
    assert 'MQTT connection sensors' in str(e.value)


def test_apublish_sends_the_same_call(server):
    async def arequest(meta, body=b'', orphan=None):
        await asyncio.sleep(0)
        return server(meta, body)

    out = OutgoingAPI(server, arequest)

    async def run():
        await out.mqtt['sensors'].apublish('a/b', [1, 2], qos=0)
        server.answers.append(({'status': 504, 'error': 'timeout'}, {'error': 'no PUBACK'}))
        with pytest.raises(O.OutgoingTimeout):
            await out.mqtt['sensors'].apublish('a/b', b'x')

    asyncio.run(run())
    assert server.calls[0][0]['qos'] == 0 and json.loads(server.calls[0][1]) == [1, 2]
    assert server.calls[1][0]['op'] == 'out.mqtt' and server.calls[1][1] == b'x'


class Seen:
    last = None


class OnReading(Service):
    name = 'sensors.on-reading'

    def handle(self):
        m = self.request.mqtt
        Seen.last = {
            'channel': (self.channel.type, self.channel.name),
            'topic': m.topic, 'qos': m.qos, 'retain': m.retain, 'dup': m.dup,
            'pkid': m.pkid, 'payload': self.request.payload,
            'raw': self.request.raw_request,
        }
        if self.request.raw == b'fail':
            raise ValueError('cannot take it')


def mqtt_meta(data_format='raw', **kw):
    m = {'topic': 'site/1/temp', 'qos': 1, 'retain': False, 'dup': False, 'pkid': 7}
    m.update(kw)
    return {'op': 'invoke', 'service': OnReading.name, 'cid': 'cid-1', 'channel': 'mqtt',
            'channel_name': 'sensors', 'data_format': data_format, 'mqtt': m}


def run(meta, body):
    d = Dispatcher({OnReading.name: OnReading})
    frame = d.run(1, meta, body)
    return P.decode_call(P.decode_frame(frame)[3])


def test_a_message_gives_the_service_its_topic_and_payload():
    reply, body = run(mqtt_meta(dup=True), b'\x00raw\xff')
    assert reply['status'] == 200, body
    assert Seen.last == {'channel': ('mqtt', 'sensors'), 'topic': 'site/1/temp', 'qos': 1,
                         'retain': False, 'dup': True, 'pkid': 7,
                         'payload': b'\x00raw\xff', 'raw': b'\x00raw\xff'}
    reply, body = run(mqtt_meta('json', qos=0, pkid=0, retain=True), b'{"c": 1}')
    assert reply['status'] == 200, body
    assert Seen.last['payload'] == {'c': 1} and Seen.last['raw'] == b'{"c": 1}'
    assert (Seen.last['qos'], Seen.last['retain']) == (0, True)


def test_a_failing_service_and_bad_json_are_told_apart():
    reply, _ = run(mqtt_meta(), b'fail')
    assert reply['status'] == 500 and reply['exc'] == 'ValueError'
    # Bad input is refused as such (the channel acknowledges it: it can never succeed).
    reply, _ = run(mqtt_meta('json'), b'not json')
    assert reply.get('error') == 'input'


def test_other_invocations_have_no_mqtt():
    from oxbus.service import Request
    assert Request(b'', b'', 'raw', {'channel': 'rest'}).mqtt is None
