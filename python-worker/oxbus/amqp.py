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
"""

from __future__ import annotations

from ._outcall import (AmqpNack, AmqpPublishError, AmqpRefused, AmqpUnroutable,
                       invocation_context)
from ._protocol import encode_json

TYPE_CHECKING = False  # see _protocol.py: keep ``typing`` out of the worker's startup
if TYPE_CHECKING:
    from typing import Any, Dict, Mapping, Optional, Tuple

    from ._outcall import Caller

__all__ = ['AmqpOutgoing', 'AmqpPublishError', 'AmqpNack', 'AmqpUnroutable', 'AmqpRefused']

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

