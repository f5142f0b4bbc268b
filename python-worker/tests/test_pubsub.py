"""``self.pubsub`` (oxbus.pubsub) against a fake server, and pub/sub deliveries to services.

Most tests drive :class:`oxbus.pubsub.PubSubAPI` with a fake ``request`` that checks each
CALL's meta and body against ipc-protocol/SPEC.md ("Pub/sub") and answers with canned
REPLYs shaped like the server's (supervisor/src/pubsub/ops.rs). The delivery tests run a
service through the dispatcher with an ``invoke`` CALL of channel ``pubsub``; the last ones
run a real worker process against the FakeSupervisor.
"""

import asyncio
import json

import pytest

from conftest import FakeSupervisor  # noqa: F401  (the sup fixture's class)
from oxbus import Service
from oxbus import _protocol as P
from oxbus import pubsub as PS
from oxbus._dispatch import Dispatcher
from oxbus.pubsub import PubSubAPI, PubSubMessage
from oxbus.service import _invocation_meta, current_invocation

TRACEPARENT = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'


class FakeServer:
    """A ``request`` function: records every call, answers from a queue."""

    def __init__(self):
        self.calls = []       # (meta dict, body bytes)
        self.answers = []     # (meta dict, body bytes)

    def __call__(self, meta, body=b''):
        if isinstance(meta, bytes):
            meta = json.loads(meta)
        assert isinstance(body, bytes)
        P.encode_call(P.WORKER_STREAM_BIT | 1, meta, body)  # a valid frame
        self.calls.append((meta, body))
        reply_meta, reply_body = self.answers.pop(0)
        if not isinstance(reply_body, bytes):
            reply_body = json.dumps(reply_body).encode()
        return json.dumps(reply_meta).encode(), reply_body

    def answer(self, body, status=200, **meta):
        reply = {'status': status, 'content_type': 'application/json'}
        reply.update(meta)
        self.answers.append((reply, body))

    def fail(self, status, error, message):
        self.answer({'error': message}, status=status, error=error)

    @property
    def last(self):
        return self.calls[-1]


@pytest.fixture
def server():
    return FakeServer()


@pytest.fixture
def ps(server):
    return PubSubAPI(server, None, 'crm.orders')


def msg_meta(msg_id, size, **over):
    meta = {'msg_id': msg_id, 'topic': '/orders/new', 'size': size, 'priority': 5,
            'pub_time_ms': 1700000000000, 'expires_at_ms': None, 'mime_type': 'text/plain',
            'correl_id': None, 'in_reply_to': None, 'ext_client_id': None,
            'published_by': 'service:p', 'delivery_count': 1, 'has_gd': True}
    meta.update(over)
    return meta


def get_body(sub_key, msgs):
    """A pubsub.get answer's body: a line of JSON, then the data (SPEC)."""
    head = {'sub_key': sub_key, 'msgs': [m for m, _ in msgs]}
    return json.dumps(head).encode() + b'\n' + b''.join(d for _, d in msgs)


# -- publish ---------------------------------------------------------------------------------

def test_publish_one_message_of_each_kind(server, ps):
    for data, mime, raw in (('zażółć', 'text/plain', 'zażółć'.encode()),
                            (b'\x00\xff', 'application/octet-stream', b'\x00\xff'),
                            ({'id': 42}, 'application/json', b'{"id":42}'),
                            ([1, 'a'], 'application/json', b'[1,"a"]'),
                            (7, 'application/json', b'7')):
        server.answer({'msg_ids': ['zpsm%024x' % 1]})
        assert ps.publish('/orders/new', data) == 'zpsm%024x' % 1
        meta, body = server.last
        assert meta['op'] == 'pubsub.publish'
        assert meta['service'] == 'crm.orders'
        assert meta['topic'] == '/orders/new'
        assert meta['msgs'] == [{'size': len(raw), 'mime_type': mime, 'priority': 5}]
        assert body == raw


def test_publish_carries_the_options(server, ps):
    server.answer({'msg_ids': ['m1']})
    ps.publish('/t', data='x', priority=9, expiration=60000, has_gd=False,
               mime_type='application/xml', correl_id='c1', in_reply_to='m0',
               ext_client_id='ext')
    meta, body = server.last
    assert meta['msgs'] == [{'size': 1, 'mime_type': 'application/xml', 'priority': 9,
                             'expiration_ms': 60000, 'has_gd': False, 'correl_id': 'c1',
                             'in_reply_to': 'm0', 'ext_client_id': 'ext'}]
    # priority=None leaves it to the server (and the topic), as do the other defaults.
    server.answer({'msg_ids': ['m2']})
    ps.publish('/t', data='x', priority=None)
    assert server.last[0]['msgs'] == [{'size': 1, 'mime_type': 'text/plain'}]


def test_publish_data_list_is_one_call_with_the_data_concatenated(server, ps):
    server.answer({'msg_ids': ['m1', 'm2', 'm3']})
    ids = ps.publish('/t', data_list=['ab', b'\x01', {'k': 'v'}], priority=3)
    assert ids == ['m1', 'm2', 'm3']
    meta, body = server.last
    assert [m['size'] for m in meta['msgs']] == [2, 1, 9]
    assert [m['mime_type'] for m in meta['msgs']] == [
        'text/plain', 'application/octet-stream', 'application/json']
    assert all(m['priority'] == 3 for m in meta['msgs'])
    assert body == b'ab\x01{"k":"v"}'
    # A generator is a list of data too.
    server.answer({'msg_ids': ['m4', 'm5']})
    assert ps.publish('/t', data_list=(str(i) for i in range(2))) == ['m4', 'm5']
    assert server.last[1] == b'01'


def test_publish_carries_the_invocations_cid_and_trace(server, ps):
    t1 = current_invocation.set(('cid-9', 'crm.orders', 5))
    t2 = _invocation_meta.set({'traceparent': TRACEPARENT, 'tracestate': 'v=1'})
    try:
        server.answer({'msg_ids': ['m1']})
        ps.publish('/t', 'x')
    finally:
        _invocation_meta.reset(t2)
        current_invocation.reset(t1)
    meta = server.last[0]
    assert (meta['cid'], meta['traceparent'], meta['tracestate']) == (
        'cid-9', TRACEPARENT, 'v=1')


@pytest.mark.parametrize('kwargs, says', [
    ({'topic': '', 'data': 'x'}, 'topic'),
    ({'topic': '/t'}, 'data is None'),
    ({'topic': '/t', 'data': 'x', 'data_list': ['y']}, 'not both'),
    ({'topic': '/t', 'data': 'x', 'priority': 0}, 'priority'),
    ({'topic': '/t', 'data': 'x', 'priority': 10}, 'priority'),
    ({'topic': '/t', 'data': 'x', 'priority': True}, 'priority'),
    ({'topic': '/t', 'data': 'x', 'expiration': 0}, 'expiration'),
    ({'topic': '/t', 'data': 'x', 'expiration': 1.5}, 'expiration'),
    ({'topic': '/t', 'data_list': []}, 'empty'),
    ({'topic': '/t', 'data_list': 'abc'}, 'data_list'),
    ({'topic': '/t', 'data': object()}, 'object'),
])
def test_publish_refuses_bad_arguments_without_a_call(server, ps, kwargs, says):
    with pytest.raises(PS.PubSubInvalid, match=says) as e:
        ps.publish(**kwargs)
    assert isinstance(e.value, ValueError)
    assert server.calls == []


@pytest.mark.parametrize('status, code, cls, bases', [
    (404, 'no_topic', PS.TopicNotFound, (LookupError,)),
    (404, 'no_sub', PS.SubscriptionNotFound, (LookupError,)),
    (403, 'forbidden', PS.PubSubForbidden, (PermissionError,)),
    (400, 'invalid', PS.PubSubInvalid, (ValueError,)),
    (413, 'too_large', PS.MessageTooLarge, (ValueError,)),
    (429, 'full', PS.TopicFull, ()),
    (409, 'conflict', PS.PubSubConflict, ()),
    (503, 'unavailable', PS.PubSubUnavailable, ()),
    (503, 'not_reachable', PS.PubSubNotReachable, (PS.PubSubUnavailable,)),
    (500, 'internal', PS.PubSubError, ()),
])
def test_server_errors_raise_by_code(server, ps, status, code, cls, bases):
    server.fail(status, code, 'topic /orders/new: what went wrong')
    with pytest.raises(cls) as e:
        ps.publish('/orders/new', 'x')
    assert type(e.value) is cls
    for base in bases + (PS.PubSubError,):
        assert isinstance(e.value, base)
    assert str(e.value) == 'topic /orders/new: what went wrong'
    assert (e.value.error, e.value.status) == (code, status)


def test_the_package_exports_the_pubsub_errors():
    import oxbus
    for name in ('PubSubError', 'TopicNotFound', 'SubscriptionNotFound', 'PubSubForbidden',
                 'PubSubInvalid', 'MessageTooLarge', 'PubSubAnswerTooLarge', 'TopicFull',
                 'PubSubConflict', 'PubSubUnavailable', 'PubSubNotReachable'):
        assert getattr(oxbus, name) is getattr(PS, name), name
        assert name in oxbus.__all__


def test_a_publish_over_one_frame_is_message_too_large_without_a_call(server, ps):
    half = b'x' * (P.MAX_FRAME_LENGTH // 2)
    with pytest.raises(PS.MessageTooLarge, match='publish to /big: 2 messages') as e:
        ps.publish('/big', data_list=[half, half])
    assert (e.value.error, e.value.status) == ('too_large', 413)
    assert server.calls == []


@pytest.mark.parametrize('data, says', [
    ('a\ud800b', 'not valid Unicode'),
    ({'k': 'a\udfff'}, 'not valid Unicode'),
    ({'n': float('nan')}, 'JSON'),
    ([float('inf')], 'JSON'),
])
def test_publish_refuses_data_without_a_utf8_or_json_form(server, ps, data, says):
    with pytest.raises(PS.PubSubInvalid, match=says) as e:
        ps.publish('/orders/new', data)
    assert '/orders/new' in str(e.value)
    assert server.calls == []


def test_a_get_answer_over_one_frame_is_not_a_message_too_large(server, ps):
    # The worker's connection answers 502 too_large when the REPLY does not fit in a frame;
    # that is no message over its topic's max_message_bytes (413).
    server.fail(502, 'too_large', 'the reply does not fit in one frame')
    with pytest.raises(PS.PubSubAnswerTooLarge) as e:
        ps.get_messages('/orders/new')
    assert not isinstance(e.value, PS.MessageTooLarge)
    assert (e.value.error, e.value.status) == ('too_large', 502)


@pytest.mark.parametrize('body', [b'not json', b'[1, 2]', b'{"msg_ids": []}', b'{}'])
def test_malformed_answers_are_pubsub_errors(server, ps, body):
    for call in (lambda: ps.publish('/t', 'x'), lambda: ps.subscribe('/t')):
        server.answer(body)
        with pytest.raises(PS.PubSubError, match='unreadable answer'):
            call()
    if body in (b'not json', b'[1, 2]'):
        server.answer(body)
        with pytest.raises(PS.PubSubError, match='ack: unreadable answer'):
            ps.ack('sk.1', ['m1'])


def test_a_server_without_pubsub_is_an_error_too(server, ps):
    # An older server answers an op it does not know with 501 and no error code.
    server.answer({'error': 'unknown op: pubsub.publish'}, status=501)
    with pytest.raises(PS.PubSubError, match='unknown op: pubsub.publish') as e:
        ps.publish('/t', 'x')
    assert e.value.status == 501


# -- subscribe / unsubscribe -----------------------------------------------------------------

def test_subscribe_pull_service_and_other_deliveries(server, ps):
    server.answer({'sub_key': 'sk.1'})
    assert ps.subscribe('/orders/new') == 'sk.1'
    meta = server.last[0]
    assert meta['op'] == 'pubsub.subscribe' and meta['service'] == 'crm.orders'
    assert meta['topic'] == '/orders/new'
    assert 'delivery' not in meta  # the server's default: pull

    server.answer({'sub_key': 'sk.2'})
    assert ps.subscribe('/orders/*', service='orders.handle', batch_size=10,
                        retry={'max_attempts': 3}, dead_letter_topic='/dead') == 'sk.2'
    meta = server.last[0]
    assert meta['delivery'] == {'type': 'service', 'service': 'orders.handle'}
    assert (meta['batch_size'], meta['retry'], meta['dead_letter_topic']) == (
        10, {'max_attempts': 3}, '/dead')

    class Handler(Service):
        name = 'orders.handler'

        def handle(self):
            pass

    server.answer({'sub_key': 'sk.3', 'existing': True})
    assert ps.subscribe('/orders/new', service=Handler) == 'sk.3'
    assert server.last[0]['delivery'] == {'type': 'service', 'service': 'orders.handler'}

    server.answer({'sub_key': 'sk.4'})
    ps.subscribe('/t', delivery={'type': 'push', 'conn': 'crm', 'path': '/in'},
                 sub_key='mine', ack_timeout=5000)
    meta = server.last[0]
    assert meta['delivery'] == {'type': 'push', 'conn': 'crm', 'path': '/in'}
    assert (meta['sub_key'], meta['ack_timeout_ms']) == ('mine', 5000)

    with pytest.raises(PS.PubSubInvalid, match='not both'):
        ps.subscribe('/t', service='a', delivery='pull')
    with pytest.raises(TypeError, match='service'):
        ps.subscribe('/t', service=42)


def test_subscribe_the_current_websocket_client(server, ps):
    token = _invocation_meta.set({'cid': 'c1', 'wsx': {'client_id': 'ws.s1.0123456789abcdef',
                                                      'event': 'message', 'binary': False}})
    try:
        server.answer({'sub_key': 'sk.w'})

        class Gateway(Service):
            name = 'zato.gateway'

            def handle(self):
                pass

        # As Zato's gateway calls it: service=self and cid are not a delivery.
        assert ps.subscribe('/news', use_current_wsx=True, service=Gateway(),
                            cid='c1') == 'sk.w'
        assert server.last[0]['delivery'] == {'type': 'websocket',
                                              'client_id': 'ws.s1.0123456789abcdef'}
        with pytest.raises(PS.PubSubInvalid, match='unsub_on_wsx_close'):
            ps.subscribe('/news', use_current_wsx=True, unsub_on_wsx_close=False)
        with pytest.raises(PS.PubSubInvalid, match='not both'):
            ps.subscribe('/news', use_current_wsx=True, delivery='pull')
    finally:
        _invocation_meta.reset(token)
    token = _invocation_meta.set({'cid': 'c2'})
    try:
        with pytest.raises(PS.PubSubInvalid, match='WebSocket channel'):
            ps.subscribe('/news', use_current_wsx=True)
    finally:
        _invocation_meta.reset(token)


def test_unsubscribe(server, ps):
    server.answer({'sub_key': 'sk.1'})
    assert ps.unsubscribe('sk.1') is None
    assert server.last[0]['op'] == 'pubsub.unsubscribe'
    assert server.last[0]['sub_key'] == 'sk.1'
    server.fail(404, 'no_sub', 'no subscription sk.9')
    with pytest.raises(PS.SubscriptionNotFound, match='sk.9'):
        ps.unsubscribe('sk.9')


# -- pull ------------------------------------------------------------------------------------

def test_get_messages_splits_the_data_and_decodes_text(server, ps):
    body = get_body('sk.1', [(msg_meta('m1', 5), b'hello'),
                             (msg_meta('m2', 2, mime_type='application/octet-stream',
                                       delivery_count=3), b'\xff\n'),
                             (msg_meta('m3', 9, mime_type='application/json'),
                              b'{"k":"v"}')])
    server.answer(body, content_type='application/x-oxbus-pubsub')
    got = ps.get_messages('/orders/new', max_messages=10, wait_ms=2500)
    meta = server.last[0]
    assert meta['op'] == 'pubsub.get'
    assert (meta['topic'], meta['max_messages'], meta['wait_ms']) == ('/orders/new', 10, 2500)
    assert 'sub_key' not in meta
    assert [m['data'] for m in got] == ['hello', b'\xff\n', '{"k":"v"}']
    assert [m['msg_id'] for m in got] == ['m1', 'm2', 'm3']
    assert got[1]['delivery_count'] == 3
    assert all(m['sub_key'] == 'sk.1' for m in got)
    assert set(got[0]) == {'msg_id', 'topic', 'size', 'priority', 'pub_time_ms',
                           'expires_at_ms', 'mime_type', 'correl_id', 'in_reply_to',
                           'ext_client_id', 'published_by', 'delivery_count', 'has_gd',
                           'sub_key', 'data'}


def test_get_messages_by_sub_key_and_when_empty(server, ps):
    server.answer(get_body('sk.7', []), content_type='application/x-oxbus-pubsub')
    assert ps.get_messages(sub_key='sk.7') == []
    meta = server.last[0]
    assert (meta['sub_key'], meta['max_messages'], meta['wait_ms']) == ('sk.7', 100, 0)
    assert 'topic' not in meta


@pytest.mark.parametrize('kwargs, says', [
    ({}, 'sub_key or topic_name'),
    ({'topic_name': '/t', 'max_messages': 0}, 'max_messages'),
    ({'topic_name': '/t', 'max_messages': 1001}, 'max_messages'),
    ({'topic_name': '/t', 'wait_ms': -1}, 'wait_ms'),
])
def test_get_messages_refuses_bad_arguments(server, ps, kwargs, says):
    with pytest.raises(PS.PubSubInvalid, match=says):
        ps.get_messages(**kwargs)
    assert server.calls == []


def test_get_messages_refuses_an_answer_whose_sizes_do_not_add_up(server, ps):
    server.answer(get_body('sk.1', [(msg_meta('m1', 9), b'short')]),
                  content_type='application/x-oxbus-pubsub')
    with pytest.raises(PS.PubSubError, match='unreadable answer'):
        ps.get_messages('/t')
    server.answer(b'{"sub_key": "sk.1", "msgs": []}', content_type='application/json')
    with pytest.raises(PS.PubSubError, match='no head line'):
        ps.get_messages('/t')


def test_no_own_subscription_is_subscription_not_found(server, ps):
    server.fail(404, 'no_sub', 'no subscription of service crm.orders to topic /t')
    with pytest.raises(PS.SubscriptionNotFound, match='crm.orders to topic /t'):
        ps.get_messages('/t')


def test_ack_by_ids_dicts_or_messages(server, ps):
    server.answer({'sub_key': 'sk.1', 'acked': 2})
    assert ps.ack('sk.1', ['m1', {'msg_id': 'm2'}]) == 2
    meta = server.last[0]
    assert (meta['op'], meta['sub_key'], meta['msg_ids']) == ('pubsub.ack', 'sk.1',
                                                              ['m1', 'm2'])
    server.answer({'sub_key': 'sk.1', 'acked': 1})
    assert ps.ack(None, 'm3', topic_name='/t') == 1
    meta = server.last[0]
    assert (meta['topic'], meta['msg_ids']) == ('/t', ['m3'])
    assert 'sub_key' not in meta
    message = PubSubMessage(msg_meta('m4', 1), b'x', 'sk.1')
    server.answer({'sub_key': 'sk.1', 'acked': 0})
    assert ps.ack('sk.1', message) == 0
    assert server.last[0]['msg_ids'] == ['m4']
    with pytest.raises(PS.PubSubInvalid, match='msg_id'):
        ps.ack('sk.1', [None])
    with pytest.raises(PS.PubSubInvalid, match='sub_key or topic_name'):
        ps.ack(None, ['m1'])


# -- the awaitable forms -----------------------------------------------------------------------

def test_async_forms_send_the_same_calls(server):
    async def arequest(meta, body=b'', orphan=None):
        return server(meta, body)

    aps = PubSubAPI(server, arequest, 'crm.orders')

    async def run():
        server.answer({'msg_ids': ['m1']})
        assert await aps.apublish('/t', {'a': 1}, priority=8) == 'm1'
        server.answer({'sub_key': 'sk.1'})
        assert await aps.asubscribe('/t') == 'sk.1'
        server.answer(get_body('sk.1', [(msg_meta('m1', 7), b'{"a":1}')]),
                      content_type='application/x-oxbus-pubsub')
        got = await aps.aget_messages('/t', wait_ms=10)
        assert got[0]['data'] == '{"a":1}'
        server.answer({'sub_key': 'sk.1', 'acked': 1})
        assert await aps.aack(None, got, topic_name='/t') == 1
        server.answer({'sub_key': 'sk.1'})
        await aps.aunsubscribe('sk.1')
        # The blocking forms refuse to run on the loop, naming the awaitable one.
        with pytest.raises(RuntimeError, match=r'await self\.pubsub\.apublish'):
            aps.publish('/t', 'x')

    asyncio.run(run())
    ops = [m['op'] for m, _ in server.calls]
    assert ops == ['pubsub.publish', 'pubsub.subscribe', 'pubsub.get', 'pubsub.ack',
                   'pubsub.unsubscribe']
    assert server.calls[0][1] == b'{"a":1}'
    assert server.calls[3][0]['msg_ids'] == ['m1']


def test_outside_a_worker_says_so():
    class Lonely(Service):
        def handle(self):
            pass

    with pytest.raises(RuntimeError, match='not running inside an oxbus worker'):
        Lonely().pubsub.publish('/t', 'x')
    bare = PubSubAPI(FakeServer(), None, 's')
    with pytest.raises(RuntimeError, match='no server to call'):
        asyncio.run(bare.apublish('/t', 'x'))


# -- deliveries to a service -------------------------------------------------------------------

class Seen:
    last = None


class OnOrders(Service):
    name = 'orders.on-new'
    # A SimpleIO input does not apply to deliveries (the payload is the messages).
    input = 'customer_id'

    def handle(self):
        msgs = self.request.payload
        Seen.last = {
            'channel': (self.channel.type, self.channel.name),
            'payload_is_raw_request': msgs is self.request.raw_request,
            'same_as_pubsub': msgs is self.request.pubsub.messages,
            'sub_key': self.request.pubsub.sub_key,
            'topic': self.request.pubsub.topic,
            'raw': self.request.raw,
            'data': [m.data for m in msgs],
            'ids': [m.msg_id for m in msgs],
            'topic_names': [m.topic_name for m in msgs],
            'counts': [m.delivery_count for m in msgs],
            'json': msgs[1].json(),
            'sizes': [m.size for m in msgs],
        }
        if any(m.data == 'fail' for m in msgs):
            raise ValueError('cannot take it')


def delivery_meta(msgs, sub_key='sk.9', topic='/orders/*'):
    return {'op': 'invoke', 'service': 'orders.on-new', 'cid': 'cid-1', 'channel': 'pubsub',
            'channel_name': sub_key, 'data_format': 'raw',
            'pubsub': {'sub_key': sub_key, 'topic': topic, 'msgs': msgs}}


def test_a_delivery_gives_the_service_its_messages():
    d = Dispatcher({OnOrders.name: OnOrders})
    meta = delivery_meta([msg_meta('m1', 3, topic='/orders/eu'),
                          msg_meta('m2', 8, mime_type='application/json', delivery_count=2),
                          msg_meta('m3', 2, mime_type='application/octet-stream')])
    frame = d.run(1, meta, b'one{"n": 1}\xff\x00')
    kind, _f, stream, payload = P.decode_frame(frame)
    reply, _body = P.decode_call(payload)
    assert reply['status'] == 200, _body
    assert Seen.last == {
        'channel': ('pubsub', 'sk.9'), 'payload_is_raw_request': True,
        'same_as_pubsub': True, 'sub_key': 'sk.9', 'topic': '/orders/*',
        'raw': b'one{"n": 1}\xff\x00', 'data': ['one', '{"n": 1}', b'\xff\x00'],
        'ids': ['m1', 'm2', 'm3'], 'topic_names': ['/orders/eu', '/orders/new', '/orders/new'],
        'counts': [1, 2, 1], 'json': {'n': 1}, 'sizes': [3, 8, 2]}


def test_a_delivery_without_data_format_is_raw_and_its_channel_is_not_cached():
    from oxbus import _dispatch
    d = Dispatcher({OnOrders.name: OnOrders})
    meta = delivery_meta([msg_meta('m1', 3), msg_meta('m2', 8), msg_meta('m3', 2)],
                         sub_key='sk.nodf')
    # A missing data_format means JSON for other channels: a delivery's body is no JSON.
    del meta['data_format']
    frame = d.run(1, meta, b'one{"n": 1}\xff\x00')
    reply, body = P.decode_call(P.decode_frame(frame)[3])
    assert reply['status'] == 200, body
    assert Seen.last['data'] == ['one', '{"n": 1}', b'\xff\x00']
    assert Seen.last['channel'] == ('pubsub', 'sk.nodf')
    assert not any(key[0] == 'pubsub' for key in _dispatch._channels)


def test_a_failing_subscriber_fails_the_delivery():
    d = Dispatcher({OnOrders.name: OnOrders})
    frame = d.run(1, delivery_meta([msg_meta('m1', 2), msg_meta('m2', 4)]), b'{}fail')
    reply, _body = P.decode_call(P.decode_frame(frame)[3])
    assert reply['status'] == 500 and reply['exc'] == 'ValueError'


def test_a_delivery_whose_sizes_do_not_match_is_refused_as_input():
    d = Dispatcher({OnOrders.name: OnOrders})
    for msgs, body in (([msg_meta('m1', 5)], b'abc'),
                       ([msg_meta('m1', 1)], b'abc'),
                       ([{'msg_id': 'm1'}], b'abc')):
        frame = d.run(1, delivery_meta(msgs), body)
        reply, body = P.decode_call(P.decode_frame(frame)[3])
        assert (reply['status'], reply['error']) == (400, 'input')
        assert 'pubsub delivery of sk.9' in json.loads(body)['error']
    meta = delivery_meta([])
    del meta['pubsub']
    reply, body = P.decode_call(P.decode_frame(d.run(1, meta, b''))[3])
    assert reply['status'] == 400 and 'no pubsub object' in json.loads(body)['error']


def test_other_channels_keep_raw_request_as_the_bytes():
    class Echo(Service):
        name = 'echo.raw'

        def handle(self):
            Seen.last = (self.request.raw_request, self.request.pubsub)

    d = Dispatcher({Echo.name: Echo})
    d.run(1, {'op': 'invoke', 'service': 'echo.raw', 'cid': 'c', 'channel': 'rest',
              'data_format': 'raw'}, b'abc')
    assert Seen.last == (b'abc', None)


# -- in a real worker ---------------------------------------------------------------------------

WORKER_SERVICES = {'pssvc.py': '''
    from oxbus import Service
    from oxbus.pubsub import TopicFull

    class Pub(Service):
        def handle(self):
            try:
                ids = self.pubsub.publish('/orders/new', data_list=[{'n': 1}, 'two'],
                                          priority=7)
            except TopicFull as e:
                self.response.payload = {'full': str(e)}
                return
            self.response.payload = {'ids': ids}

    class APull(Service):
        async def handle(self):
            got = await self.pubsub.aget_messages('/orders/new', wait_ms=50)
            n = await self.pubsub.aack(None, got, topic_name='/orders/new')
            self.response.payload = {
                'data': [m['data'] if isinstance(m['data'], str) else m['data'].hex()
                         for m in got],
                'acked': n}

    class Sink(Service):
        def handle(self):
            self.response.payload = {
                'channel': self.channel.type,
                'data': [m.data for m in self.request.raw_request]}
'''}


def test_a_service_publishes_through_the_worker(sup):
    sup.start(WORKER_SERVICES, threads=2)
    sup.call(1, 'pssvc.pub')
    _k, _f, stream, payload = sup.recv_kind(P.CALL)
    assert stream & P.WORKER_STREAM_BIT
    meta, body = P.decode_call(payload)
    assert meta['op'] == 'pubsub.publish' and meta['service'] == 'pssvc.pub'
    assert meta['cid'] == 'cid-1' and meta['topic'] == '/orders/new'
    assert [m['size'] for m in meta['msgs']] == [7, 3]
    assert body == b'{"n":1}two'
    sup.conn.sendall(P.encode_reply(stream, {'status': 200, 'content_type': 'application/json'},
                                    b'{"msg_ids":["m1","m2"]}'))
    meta, data = sup.replies(1)[1]
    assert json.loads(data) == {'ids': ['m1', 'm2']}

    # The topic refuses: the service sees TopicFull with the server's message.
    sup.call(2, 'pssvc.pub')
    _k, _f, stream, payload = sup.recv_kind(P.CALL)
    sup.conn.sendall(P.encode_reply(stream, {'status': 429, 'error': 'full'},
                                    b'{"error":"topic /orders/new is full"}'))
    meta, data = sup.replies(1)[2]
    assert json.loads(data) == {'full': 'topic /orders/new is full'}


def test_an_async_service_pulls_and_acks_through_the_worker(sup):
    sup.start(WORKER_SERVICES, threads=2)
    sup.call(1, 'pssvc.a-pull')
    _k, _f, stream, payload = sup.recv_kind(P.CALL)
    meta, _body = P.decode_call(payload)
    assert (meta['op'], meta['service'], meta['topic'], meta['wait_ms']) == (
        'pubsub.get', 'pssvc.a-pull', '/orders/new', 50)
    sup.conn.sendall(P.encode_reply(
        stream, {'status': 200, 'content_type': 'application/x-oxbus-pubsub'},
        get_body('sk.1', [(msg_meta('m1', 2), b'hi'), (msg_meta('m2', 1), b'\xfe')])))
    _k, _f, stream, payload = sup.recv_kind(P.CALL)
    meta, _body = P.decode_call(payload)
    assert (meta['op'], meta['msg_ids']) == ('pubsub.ack', ['m1', 'm2'])
    sup.conn.sendall(P.encode_reply(stream, {'status': 200}, b'{"sub_key":"sk.1","acked":2}'))
    meta, data = sup.replies(1)[1]
    assert meta['status'] == 200, data
    # The message that is not UTF-8 came as bytes (the service answers their hex).
    assert json.loads(data) == {'data': ['hi', 'fe'], 'acked': 2}


def test_a_delivery_reaches_a_service_in_a_real_worker(sup):
    sup.start(WORKER_SERVICES, threads=2)
    sup.call(1, 'pssvc.sink', b'abcde', channel='pubsub', channel_name='sk.3',
             data_format='raw', method=None, path=None, params=None, query=None,
             headers=None,
             pubsub={'sub_key': 'sk.3', 'topic': '/t',
                     'msgs': [msg_meta('m1', 2), msg_meta('m2', 3)]})
    meta, data = sup.replies(1)[1]
    assert meta['status'] == 200, data
    assert json.loads(data) == {'channel': 'pubsub', 'data': ['ab', 'cde']}
