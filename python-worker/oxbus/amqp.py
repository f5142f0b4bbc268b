"""Outgoing AMQP connections, for services: ``self.out.amqp.send(msg, 'name', exchange,
routing_key)`` (Zato's call), with publisher confirms.

::

    self.out.amqp.send({'order': 42}, 'orders', 'orders.x', 'created')   # dict: JSON
    self.out.amqp.send(b'raw', 'orders', '', 'a-queue',                 # default exchange
                       properties={'priority': 5, 'correlation_id': self.cid},
                       headers={'source': 'crm'}, mandatory=True)

    # async def handle(self): the same call, awaitable
    await self.out.amqp.asend(b'raw', 'orders', 'orders.x', 'created')

The publish is made by the server (a pool of channels in confirm mode per connection,
shared by all workers; ``docs/CONNECTORS.md``): ``send`` returns once the broker confirmed
the message (it is then in every queue it was routed to, on disk when persistent), and
raises otherwise:

- :class:`AmqpNack`: the broker refused it (``basic.nack``);
- :class:`AmqpUnroutable`: ``mandatory=True`` and no queue was bound for it (the broker
  returned it; ``reply_code``, ``reply_text``);
- :class:`AmqpRefused`: the broker refused the publish itself and closed the channel (a
  missing exchange, access refused...);
- :class:`~oxbus.outgoing.OutgoingTimeout`: no confirm within the connection's
  ``confirm_timeout_ms`` (the message may or may not have been taken);
- :class:`~oxbus.outgoing.OutgoingConnectionError`: connecting failed or the connection broke;
- :class:`~oxbus.outgoing.UnknownConnection`: no AMQP connection of that name.

``msg``: ``bytes`` as is, ``str`` as UTF-8 (``content_encoding`` not set), anything else
JSON-encoded with ``content_type`` ``application/json`` unless ``properties`` gives one.
``properties``: ``content_type``, ``content_encoding``, ``delivery_mode`` (2, persistent,
unless given; 1 transient), ``priority``, ``correlation_id``, ``reply_to``, ``expiration``
(milliseconds, int or str), ``message_id``, ``timestamp`` (seconds since the epoch, or a
``datetime``), ``type``, ``user_id``, ``app_id``; ``cluster_id`` (Zato's; deprecated in
AMQP 0-9-1) is accepted and not sent. ``headers``: a dict of str keys and JSON
values (str, int, float, bool, None, lists, dicts).

The other half of AMQP, for a service an AMQP channel invokes: ``self.request.amqp``.

``self.request.amqp``: a message an AMQP channel consumed (docs/CONNECTORS.md, "AMQP
channels"), in Zato 3.2's shape as far as it maps.

A service an AMQP channel invokes sees ``self.channel.type == 'amqp'`` and
``self.channel.name`` (the channel's name), and::

    self.request.raw_request          # the body, bytes, exactly as published
    self.request.payload              # the body parsed as JSON when it is JSON (below)
    msg = self.request.amqp.msg
    msg.body                          # the body, bytes
    msg.properties                    # {'content_type': ..., 'message_id': ..., ...}
    msg.headers                       # the application headers, a dict
    msg.delivery_info                 # consumer_tag, delivery_tag, redelivered,
                                      # exchange, routing_key (and queue)
    msg.delivery_tag, msg.content_type, msg.content_encoding, msg.redeliveries

When the payload is JSON: a ``content_type`` of ``application/json`` (or ``…+json``) means
the body is parsed as JSON, and a body that is not JSON fails the message like an
exception (it is poison: requeued until the channel's limit, then dead-lettered). Without a
``content_type`` the body is parsed if it parses, else the payload is the bytes. With any
other content type, the payload is the bytes.

The server settles each message, not the service: it acks once the service returned
without an exception and rejects it (requeued or dead-lettered, per the channel's
``on_error`` and ``max_redeliveries``) when it raised. So ``ack()``, which Zato services
call, does nothing but log a warning once per service class (the server acks after the
service returns); ``reject()`` and ``requeue()`` raise :class:`AMQPSettledByServer`, which
fails the message as any exception does (requeued or dead-lettered per the channel's
settings, not per the ``requeue`` argument).

A header value that is a byte string and not UTF-8 (or an AMQP byte array) arrives as
``bytes``; every other value as its JSON-like Python value. A header table that happens to
be shaped ``{"$bytes": ...}`` with a value that is not base64 stays that dict.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import logging

from ._outcall import (AmqpNack, AmqpPublishError, AmqpRefused, AmqpUnroutable,
                       invocation_context)
from ._protocol import encode_json

TYPE_CHECKING = False  # see _protocol.py: keep ``typing`` out of the worker's startup
if TYPE_CHECKING:
    from typing import Any, Dict, Mapping, Optional, Tuple

    from ._outcall import Caller

__all__ = ['AmqpOutgoing', 'AmqpPublishError', 'AmqpNack', 'AmqpUnroutable', 'AmqpRefused',
           'AMQPRequestData', 'AMQPMessage', 'AMQPSettledByServer']

_BYTES_TYPES = (bytes, bytearray, memoryview)
_PROPERTIES = frozenset((
    'content_type', 'content_encoding', 'delivery_mode', 'priority', 'correlation_id',
    'reply_to', 'expiration', 'message_id', 'timestamp', 'type', 'user_id', 'app_id',
    'cluster_id'))


def _meta(name: str, exchange: str, routing_key: str, properties: Optional[Mapping[str, Any]],
          headers: Optional[Mapping[str, Any]], mandatory: bool,
          json_body: bool, timeout: Optional[float] = None) -> Dict[str, Any]:
    if not isinstance(name, str):
        raise TypeError('the connection name is a str, not %s' % type(name).__name__)
    if not isinstance(exchange, str):
        raise TypeError('exchange is a str, not %s' % type(exchange).__name__)
    if routing_key is None:
        routing_key = ''
    if not isinstance(routing_key, str):
        raise TypeError('routing_key is a str, not %s' % type(routing_key).__name__)
    meta: Dict[str, Any] = {'op': 'out.amqp', 'conn': name, 'exchange': exchange,
                            'routing_key': routing_key}
    if mandatory:
        meta['mandatory'] = True
    props: Dict[str, Any] = {}
    for key, value in (properties or {}).items():
        if key not in _PROPERTIES:
            raise ValueError('%s: unknown AMQP property %r (known: %s)'
                             % (name, key, ', '.join(sorted(_PROPERTIES))))
        if value is None or key == 'cluster_id':  # Zato's; deprecated in AMQP 0-9-1
            continue
        if key == 'timestamp' and hasattr(value, 'timestamp'):
            value = int(value.timestamp())
        elif key == 'expiration':
            value = str(value)
        props[key] = value
    if json_body and 'content_type' not in props:
        props['content_type'] = 'application/json'
    if props:
        meta['properties'] = props
    if headers:
        bad = [k for k in headers if not isinstance(k, str)]
        if bad:
            raise TypeError('%s: header names are str, not %r' % (name, bad[0]))
        meta['headers'] = dict(headers)
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError('timeout is a positive number of seconds, not %r' % (timeout,))
        meta['deadline_ms'] = max(1, int(timeout * 1000))
    meta.update(invocation_context())
    return meta


def _body(msg: Any) -> Tuple[bytes, bool]:
    if isinstance(msg, _BYTES_TYPES):
        return bytes(msg), False
    if isinstance(msg, str):
        return msg.encode('utf-8'), False
    return encode_json(msg), True


class AmqpOutgoing:
    """``self.out.amqp``: publishes through the outgoing AMQP connections by name."""

    __slots__ = ('_caller',)

    def __init__(self, caller: Caller) -> None:
        self._caller = caller

    def send(self, msg: Any, name: str, exchange: str = '', routing_key: str = '',
             properties: Optional[Mapping[str, Any]] = None,
             headers: Optional[Mapping[str, Any]] = None, *, mandatory: bool = False,
             timeout: Optional[float] = None) -> None:
        """Publish ``msg`` through connection ``name`` and wait for the broker's confirm;
        ``timeout`` (seconds) bounds the whole send, connecting included (by default the
        connection's ``connect_timeout_ms`` + ``confirm_timeout_ms``)."""
        body, as_json = _body(msg)
        meta = _meta(name, exchange, routing_key, properties, headers, mandatory, as_json,
                     timeout)
        self._caller.call(name, meta, body)

    async def asend(self, msg: Any, name: str, exchange: str = '', routing_key: str = '',
                    properties: Optional[Mapping[str, Any]] = None,
                    headers: Optional[Mapping[str, Any]] = None, *,
                    mandatory: bool = False, timeout: Optional[float] = None) -> None:
        """:meth:`send` for coroutines."""
        body, as_json = _body(msg)
        meta = _meta(name, exchange, routing_key, properties, headers, mandatory, as_json,
                     timeout)
        await self._caller.acall(name, meta, body)

    def __repr__(self) -> str:
        return '<AmqpOutgoing>'

_SETTLED = ('an AMQP channel acknowledges each message itself: it acks once the service '
            'returned without an exception and rejects it (requeued, or dead-lettered past '
            'the channel\'s max_redeliveries) when the service raised. To reject this '
            'message, raise an exception; to ack it, return.')


_ACK_IGNORED = ('ack() does nothing here: an AMQP channel acks each message itself once '
                'the service returned without an exception')

_logger = logging.getLogger('oxbus.amqp')


def _ack_ignored() -> None:
    _logger.warning(_ACK_IGNORED)


class AMQPSettledByServer(RuntimeError):
    """Raised by ``reject()`` and ``requeue()``: the server settles each message itself;
    this exception fails the message like any other."""


def _value(v: Any) -> Any:
    """A header value from the meta: ``{"$bytes": b64}`` back to bytes, recursively."""
    if isinstance(v, dict):
        if len(v) == 1 and isinstance(v.get('$bytes'), str):
            try:
                return base64.b64decode(v['$bytes'], validate=True)
            except (binascii.Error, ValueError):
                pass  # a header table shaped like it: kept as it is
        return {k: _value(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_value(x) for x in v]
    return v


def _is_json_type(content_type: Optional[str]) -> bool:
    if not content_type:
        return False
    media = content_type.split(';', 1)[0].strip().lower()
    return media == 'application/json' or media.endswith('+json')


class AMQPMessage:
    """One consumed message (kombu's ``Message`` as Zato hands it, read-only)."""

    __slots__ = ('body', 'properties', 'headers', 'delivery_info', 'delivery_tag',
                 'redeliveries', 'payload')

    def __init__(self, meta: Dict[str, Any], body: bytes) -> None:
        #: The body exactly as published.
        self.body = body
        #: The message's properties by their AMQP names (only those it has).
        self.properties: Dict[str, Any] = dict(meta.get('properties') or {})
        #: The application headers.
        self.headers: Dict[str, Any] = _value(meta.get('headers') or {})
        #: Where it came from, as kombu names it.
        self.delivery_info: Dict[str, Any] = {
            'consumer_tag': meta.get('consumer_tag'),
            'delivery_tag': meta.get('delivery_tag'),
            'redelivered': bool(meta.get('redelivered')),
            'exchange': meta.get('exchange', ''),
            'routing_key': meta.get('routing_key', ''),
            'queue': meta.get('queue'),
        }
        self.delivery_tag: Optional[int] = meta.get('delivery_tag')
        #: How many times it was delivered before (``x-delivery-count`` of a quorum
        #: queue, else as the channel counted).
        self.redeliveries: int = int(meta.get('redeliveries') or 0)
        #: kombu's ``payload``: the body decoded (:meth:`decode`); set by ``from_call``.
        self.payload: Any = body

    @property
    def acknowledged(self) -> bool:
        """kombu's flag: never, while the service runs (the server settles afterwards)."""
        return False

    @property
    def timestamp(self) -> Optional[datetime.datetime]:
        """The ``timestamp`` property as an aware UTC datetime (py-amqp's shape)."""
        ts = self.properties.get('timestamp')
        if ts is None:
            return None
        return datetime.datetime.fromtimestamp(int(ts), tz=datetime.timezone.utc)

    def decode(self) -> Any:
        """kombu's ``decode()``: the payload (JSON when it is JSON, else the bytes)."""
        return self.payload

    @property
    def content_type(self) -> Optional[str]:
        return self.properties.get('content_type')

    @property
    def content_encoding(self) -> Optional[str]:
        return self.properties.get('content_encoding')

    @property
    def redelivered(self) -> bool:
        return bool(self.delivery_info['redelivered'])

    def ack(self, *args: Any, **kwargs: Any) -> None:
        _ack_ignored()

    def reject(self, *args: Any, **kwargs: Any) -> None:
        raise AMQPSettledByServer(_SETTLED)

    def requeue(self) -> None:
        raise AMQPSettledByServer(_SETTLED)

    def __repr__(self) -> str:
        return '<AMQPMessage %s/%s tag=%s %d bytes>' % (
            self.delivery_info['exchange'], self.delivery_info['routing_key'],
            self.delivery_tag, len(self.body))


class AMQPRequestData:
    """``self.request.amqp``: ``msg``, and Zato's ``ack`` / ``reject`` (which explain that
    the server settles the message)."""

    __slots__ = ('msg',)

    def __init__(self, msg: AMQPMessage) -> None:
        self.msg = msg

    def ack(self, *args: Any, **kwargs: Any) -> None:
        _ack_ignored()

    def reject(self, *args: Any, **kwargs: Any) -> None:
        raise AMQPSettledByServer(_SETTLED)

    @classmethod
    def from_call(cls, meta: Dict[str, Any], body: bytes) -> Tuple['AMQPRequestData', Any]:
        """The request data and the payload of an ``amqp`` invocation; ValueError when the
        content type says JSON and the body is not."""
        msg = AMQPMessage(meta.get('amqp') or {}, body)
        content_type = msg.content_type
        payload: Any = body
        # json.loads(bytes) would guess UTF-16/32: the text is strict UTF-8 first.
        if _is_json_type(content_type):
            try:
                payload = json.loads(body.decode('utf-8')) if body else None
            except (ValueError, RecursionError) as e:
                raise ValueError('the message says %s but its body is not UTF-8 JSON: %s'
                                 % (content_type, e)) from None
        elif not content_type and body:
            try:
                payload = json.loads(body.decode('utf-8'))
            except (ValueError, RecursionError):
                payload = body
        msg.payload = payload
        return cls(msg), payload

    def __repr__(self) -> str:
        return '<AMQPRequestData %r>' % (self.msg,)
