"""A service invoked by an AMQP channel (``channel: "amqp"``): ``self.channel``,
``self.request.amqp`` in Zato 3.2's shape, the payload by content type, and ack/reject,
which the server owns."""

import json

import pytest

from oxbus import Service
from oxbus import _protocol as P
from oxbus._dispatch import Dispatcher
from oxbus.amqp import AMQPSettledByServer


class Seen:
    last = None


class OnOrder(Service):
    name = 'orders.take'

    def handle(self):
        msg = self.request.amqp.msg
        Seen.last = {
            'channel': (self.channel.type, self.channel.name),
            'raw_request': self.request.raw_request,
            'payload': self.request.payload,
            'body': msg.body,
            'properties': msg.properties,
            'headers': msg.headers,
            'delivery_info': msg.delivery_info,
            'delivery_tag': msg.delivery_tag,
            'content_type': msg.content_type,
            'redelivered': msg.redelivered,
            'redeliveries': msg.redeliveries,
        }
        if self.request.raw_request == b'fail':
            raise ValueError('cannot take it')


class CallsAck(Service):
    name = 'orders.ack'

    def handle(self):
        what = self.request.raw_request.decode()
        if what == 'ack':
            self.request.amqp.ack()
        elif what == 'msg.ack':
            self.request.amqp.msg.ack()
        elif what == 'msg.reject':
            self.request.amqp.msg.reject(requeue=False)
        elif what == 'msg.requeue':
            self.request.amqp.msg.requeue()
        else:
            self.request.amqp.reject()


def amqp_meta(service='orders.take', **amqp):
    base = {'queue': 'orders', 'consumer_tag': 'oxbus.s1.orders.0.ab', 'delivery_tag': 7,
            'redelivered': False, 'redeliveries': 0, 'exchange': 'ex',
            'routing_key': 'eu.new', 'properties': {}, 'headers': {}}
    base.update(amqp)
    return {'op': 'invoke', 'service': service, 'cid': 'cid-1', 'channel': 'amqp',
            'channel_name': 'orders-in', 'data_format': 'raw', 'amqp': base}


def run(meta, body):
    d = Dispatcher({OnOrder.name: OnOrder, CallsAck.name: CallsAck})
    reply, out = P.decode_call(P.decode_frame(d.run(1, meta, body))[3])
    return reply, out


def test_the_service_sees_the_message_as_zato_shows_it():
    props = {'content_type': 'application/json', 'message_id': 'm-1', 'priority': 3,
             'delivery_mode': 2, 'timestamp': 1700000000, 'type': 'order'}
    headers = {'tenant': 'acme', 'n': 5, 'raw': {'$bytes': '/wA='},
               'nested': {'list': [1, {'$bytes': 'AQ=='}]}}
    reply, out = run(amqp_meta(properties=props, headers=headers, redelivered=True,
                               redeliveries=2), b'{"id": 42}')
    assert reply['status'] == 200, out
    assert Seen.last == {
        'channel': ('amqp', 'orders-in'),
        'raw_request': b'{"id": 42}',
        'payload': {'id': 42},
        'body': b'{"id": 42}',
        'properties': props,
        'headers': {'tenant': 'acme', 'n': 5, 'raw': b'\xff\x00',
                    'nested': {'list': [1, b'\x01']}},
        'delivery_info': {'consumer_tag': 'oxbus.s1.orders.0.ab', 'delivery_tag': 7,
                          'redelivered': True, 'exchange': 'ex', 'routing_key': 'eu.new',
                          'queue': 'orders'},
        'delivery_tag': 7,
        'content_type': 'application/json',
        'redelivered': True,
        'redeliveries': 2,
    }


@pytest.mark.parametrize('content_type, body, payload', [
    (None, b'{"a": [1, 2]}', {'a': [1, 2]}),        # no content type: parsed when it parses
    (None, b'not json', b'not json'),                # ... else the bytes
    (None, b'', b''),
    ('application/vnd.x+json; charset=utf-8', b'[1]', [1]),
    ('text/plain', b'123', b'123'),                  # another type: the bytes, never parsed
    ('application/octet-stream', b'\xff\x00', b'\xff\x00'),
])
def test_the_payload_follows_the_content_type(content_type, body, payload):
    props = {'content_type': content_type} if content_type else {}
    reply, out = run(amqp_meta(properties=props), body)
    assert reply['status'] == 200, out
    assert Seen.last['payload'] == payload
    assert Seen.last['raw_request'] == body


def test_a_json_message_that_is_not_json_fails():
    reply, out = run(amqp_meta(properties={'content_type': 'application/json'}), b'{nope')
    assert (reply['status'], reply.get('error')) == (400, 'input')
    assert 'not UTF-8 JSON' in json.loads(out)['error']


def test_an_exception_fails_the_message():
    reply, _out = run(amqp_meta(), b'fail')
    assert reply['status'] == 500 and reply['exc'] == 'ValueError'


@pytest.mark.parametrize('what', ['reject', 'msg.reject', 'msg.requeue'])
def test_reject_and_requeue_fail_the_message_and_explain_that_the_server_settles(what):
    reply, out = run(amqp_meta(service='orders.ack'), what.encode())
    # A failure like any exception (its family is RuntimeError): the message is rejected.
    assert reply['status'] == 500 and reply['exc'] == 'RuntimeError'
    from oxbus.amqp import AMQPRequestData
    with pytest.raises(AMQPSettledByServer, match='raise an exception; to ack it, return'):
        AMQPRequestData.from_call(amqp_meta(), b'')[0].reject()


def test_ack_as_zato_services_call_it_is_a_logged_no_op(caplog):
    # Zato services call self.request.amqp.ack() (and msg.ack()): the service goes on and
    # the server acks after it returned.
    for what in ('ack', 'msg.ack'):
        with caplog.at_level('WARNING', logger='oxbus.amqp'):
            reply, out = run(amqp_meta(service='orders.ack'), what.encode())
        assert reply['status'] == 200, out
        assert 'ack() does nothing here' in caplog.text


def test_kombu_message_attributes():
    from oxbus.amqp import AMQPRequestData
    data, payload = AMQPRequestData.from_call(
        amqp_meta(properties={'content_type': 'application/json', 'timestamp': 1700000000}),
        b'{"a": 1}')
    msg = data.msg
    assert payload == {'a': 1} and msg.payload == {'a': 1} and msg.decode() == {'a': 1}
    assert msg.acknowledged is False
    assert msg.timestamp.isoformat() == '2023-11-14T22:13:20+00:00'
    assert AMQPRequestData.from_call(amqp_meta(), b'x')[0].msg.timestamp is None


def test_a_header_table_shaped_like_bytes_is_kept_when_not_base64():
    from oxbus.amqp import AMQPRequestData
    headers = {'raw': {'$bytes': '/wA='}, 'table': {'$bytes': 'not base64!'}}
    msg = AMQPRequestData.from_call(amqp_meta(headers=headers), b'')[0].msg
    assert msg.headers == {'raw': b'\xff\x00', 'table': {'$bytes': 'not base64!'}}


def test_a_body_is_json_only_as_strict_utf8():
    # json.loads(bytes) would take UTF-16 for JSON; the payload stays the bytes.
    body = '{"a": 1}'.encode('utf-16')
    reply, out = run(amqp_meta(), body)
    assert reply['status'] == 200, out
    assert Seen.last['payload'] == body
    reply, out = run(amqp_meta(properties={'content_type': 'application/json'}), body)
    assert (reply['status'], reply.get('error')) == (400, 'input')


def test_other_invocations_have_no_amqp():
    class Plain(Service):
        name = 'plain'

        def handle(self):
            self.response.payload = {'amqp': self.request.amqp is None}

    d = Dispatcher({'plain': Plain})
    meta = {'op': 'invoke', 'service': 'plain', 'cid': 'c', 'channel': 'invoke'}
    reply, out = P.decode_call(P.decode_frame(d.run(1, meta, b''))[3])
    assert json.loads(out) == {'amqp': True}
