"""``self.request.amqp``: a message an AMQP channel consumed (docs/CONNECTORS.md, "AMQP
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
``on_error`` and ``max_redeliveries``) when it raised. So ``ack()`` and ``reject()``, which
a Zato service may call, raise :class:`AMQPSettledByServer` with that explanation instead
of doing nothing silently: raise an exception to reject.

A header value that is a byte string and not UTF-8 (or an AMQP byte array) arrives as
``bytes``; every other value as its JSON-like Python value.
"""

from __future__ import annotations

import base64
import json

TYPE_CHECKING = False  # see _protocol.py: keep ``typing`` out of the worker's startup
if TYPE_CHECKING:
    from typing import Any, Dict, Optional, Tuple

__all__ = ['AMQPRequestData', 'AMQPMessage', 'AMQPSettledByServer']

_SETTLED = ('an AMQP channel acknowledges each message itself: it acks once the service '
            'returned without an exception and rejects it (requeued, or dead-lettered past '
            'the channel\'s max_redeliveries) when the service raised. To reject this '
            'message, raise an exception; to ack it, return.')


class AMQPSettledByServer(RuntimeError):
    """Raised by ``ack()`` and ``reject()``: the server settles each message itself."""


def _value(v: Any) -> Any:
    """A header value from the meta: ``{"$bytes": b64}`` back to bytes, recursively."""
    if isinstance(v, dict):
        if len(v) == 1 and '$bytes' in v:
            return base64.b64decode(v['$bytes'])
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
                 'redeliveries')

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
        raise AMQPSettledByServer(_SETTLED)

    def reject(self, *args: Any, **kwargs: Any) -> None:
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
        raise AMQPSettledByServer(_SETTLED)

    def reject(self, *args: Any, **kwargs: Any) -> None:
        raise AMQPSettledByServer(_SETTLED)

    @classmethod
    def from_call(cls, meta: Dict[str, Any], body: bytes) -> Tuple['AMQPRequestData', Any]:
        """The request data and the payload of an ``amqp`` invocation; ValueError when the
        content type says JSON and the body is not."""
        msg = AMQPMessage(meta.get('amqp') or {}, body)
        content_type = msg.content_type
        payload: Any = body
        if _is_json_type(content_type):
            try:
                payload = json.loads(body) if body else None
            except (ValueError, RecursionError) as e:
                raise ValueError('the message says %s but its body is not JSON: %s'
                                 % (content_type, e)) from None
        elif not content_type and body:
            try:
                payload = json.loads(body)
            except (ValueError, RecursionError):
                payload = body
        return cls(msg), payload

    def __repr__(self) -> str:
        return '<AMQPRequestData %r>' % (self.msg,)
