"""``self.pubsub``: the server's publish/subscribe broker (docs/PUBSUB.md), Zato 3.2's API.

::

    msg_id = self.pubsub.publish('/orders/new', data={'id': 42}, priority=7)
    msg_ids = self.pubsub.publish('/orders/new', data_list=['a', 'b'])
    sub_key = self.pubsub.subscribe('/orders/new')                    # a pull subscription
    sub_key = self.pubsub.subscribe('/orders/*', service='orders.handle')   # delivered to it
    for msg in self.pubsub.get_messages('/orders/new', max_messages=50, wait_ms=1000):
        ...                                                # msg['data'], msg['msg_id']...
    self.pubsub.ack(None, [msg['msg_id']], topic_name='/orders/new')   # or ack(sub_key, ids)
    self.pubsub.unsubscribe(sub_key)

Every call is one ``CALL``/``REPLY`` over the worker's IPC connection (ipc-protocol/SPEC.md,
"Pub/sub"): the server's broker answers it, as the calling service (services are trusted:
the permissions of ``pub=`` / ``sub=`` patterns apply to REST endpoints only). Message data
crosses the socket as raw bytes. Inside ``async def`` use the awaitable forms:
``await self.pubsub.apublish(...)``, ``asubscribe``, ``aunsubscribe``, ``aget_messages``,
``aack``.

A service that a subscription delivers to is invoked with ``self.channel.type ==
'pubsub'`` (``self.channel.name`` is the sub_key) and the batch's messages, as
:class:`PubSubMessage` objects, in ``self.request.payload``, in ``self.request.raw_request``
(where Zato puts what a pub/sub delivery hands a service) and in
``self.request.pubsub.messages``; ``self.request.raw`` is their data concatenated. The
delivery is acknowledged when the service returns with a status below 400; an exception
(or a status of 400 or more) fails the batch, which is delivered again per the
subscription's retry policy.

Errors are :class:`PubSubError` and its subclasses, by the server's error code::

    PubSubError                                  base; .error (code), .status, str() the message
    ├── TopicNotFound (LookupError)              no_topic
    ├── SubscriptionNotFound (LookupError)       no_sub
    ├── PubSubForbidden (PermissionError)        forbidden
    ├── PubSubInvalid (ValueError)               invalid (also raised here for bad arguments)
    ├── MessageTooLarge (ValueError)             too_large: over the topic's max_message_bytes
    │                                            (or a publish over one 64 MiB frame)
    ├── PubSubAnswerTooLarge                     too_large (502): a get_messages answer did
    │                                            not fit in one IPC frame (ask fewer)
    ├── TopicFull                                full: the topic is at its depth and refuses
    ├── PubSubConflict                           conflict
    └── PubSubUnavailable                        unavailable: the store is down (a GD publish
        └── PubSubNotReachable                   was not acknowledged: publish again);
                                                 not_reachable: the subscription's server
"""

from __future__ import annotations

import json
import sys

from ._outcall import invocation_context
from .service import _invocation_meta
from ._protocol import MAX_FRAME_LENGTH, decode_json, encode_json

TYPE_CHECKING = False  # see _protocol.py: keep ``typing`` out of the worker's startup
if TYPE_CHECKING:
    from typing import Any, Awaitable, Callable, Dict, Iterable, List, Optional, Tuple, Union

    Request = Callable[[Any, bytes], Tuple[bytes, bytes]]
    ARequest = Callable[..., Awaitable[Tuple[bytes, bytes]]]

__all__ = [
    'PubSubAPI', 'PubSubMessage', 'PubSubDelivery', 'PubSubError', 'TopicNotFound',
    'SubscriptionNotFound', 'PubSubForbidden', 'PubSubInvalid', 'MessageTooLarge',
    'TopicFull', 'PubSubConflict', 'PubSubUnavailable', 'PubSubNotReachable',
    'PubSubAnswerTooLarge',
]

JSON_MIME = 'application/json'
TEXT_MIME = 'text/plain'
BINARY_MIME = 'application/octet-stream'
#: The most messages one ``get_messages`` may ask for (the server's limit).
MAX_MESSAGES = 1000


# -- errors --------------------------------------------------------------------------------

class PubSubError(Exception):
    """A pub/sub call failed. ``error`` is the server's code (``no_topic``, ``full``...; see
    docs/PUBSUB.md), ``status`` the HTTP status the REST API gives it, ``str()`` the
    server's message, which names the topic or subscription."""

    def __init__(self, message: str, error: Optional[str] = None,
                 status: Optional[int] = None) -> None:
        super().__init__(message)
        self.message = message
        self.error = error
        self.status = status

    def __str__(self) -> str:
        return self.message


class TopicNotFound(PubSubError, LookupError):
    """No topic of that name."""


class SubscriptionNotFound(PubSubError, LookupError):
    """No subscription of that sub_key; or, for ``get_messages``/``ack`` by topic, the
    calling service has no pull subscription to that topic."""


class PubSubForbidden(PubSubError, PermissionError):
    """The caller may not do that on that topic."""


class PubSubInvalid(PubSubError, ValueError):
    """The call was refused as malformed: a bad priority, expiration, topic name..."""


class MessageTooLarge(PubSubError, ValueError):
    """A message is over its topic's ``max_message_bytes``; or a publish (all of its
    ``data_list`` together) is over what one IPC frame carries (64 MiB)."""


class PubSubAnswerTooLarge(PubSubError):
    """The server's answer did not fit in one IPC frame (status 502, code ``too_large``):
    not a message over its topic's limit. Pulled messages left unanswered come again after
    the subscription's ``ack_timeout``; ask for fewer (``max_messages``)."""


class TopicFull(PubSubError):
    """The topic is at its depth and refuses publishes (``on_full: refuse``): nothing was
    published; try again later."""


class PubSubConflict(PubSubError):
    """The call conflicts with what exists (e.g. a pull of a subscription that is not
    ``pull``)."""


class PubSubUnavailable(PubSubError):
    """The server could not do it now: the config store is unavailable (a GD publish was
    not acknowledged and nothing of it is delivered: publish again)."""


class PubSubNotReachable(PubSubUnavailable):
    """The server that delivers the subscription could not be reached."""


_ERRORS = {
    'no_topic': TopicNotFound, 'no_sub': SubscriptionNotFound, 'forbidden': PubSubForbidden,
    'invalid': PubSubInvalid, 'too_large': MessageTooLarge, 'full': TopicFull,
    'conflict': PubSubConflict, 'unavailable': PubSubUnavailable,
    'not_reachable': PubSubNotReachable,
}


def _raise(what: str, meta: Dict[str, Any], body: bytes) -> None:
    try:
        doc = decode_json(body) if body else None
    except ValueError:
        doc = None
    message = doc.get('error') if isinstance(doc, dict) else None
    error = meta.get('error')
    status = meta.get('status')
    if not message:
        message = '%s: the server answered %s%s' % (what, status,
                                                    ' (%s)' % error if error else '')
    if error == 'too_large' and status == 502:
        # The worker's own connection refused the REPLY as over one frame: an answer too
        # large, not a message over its topic's max_message_bytes (413).
        raise PubSubAnswerTooLarge(str(message), error, status)
    raise _ERRORS.get(error or '', PubSubError)(str(message), error, status)


def _answer(what: str, raw: bytes, body: bytes) -> Dict[str, Any]:
    """The JSON object of a successful answer; PubSubError naming ``what`` when the
    server's answer is not one."""
    _, body = _checked(what, raw, body)
    try:
        doc = decode_json(body)
    except ValueError as e:
        raise PubSubError('%s: unreadable answer from the server: %s' % (what, e)) from None
    if not isinstance(doc, dict):
        raise PubSubError('%s: unreadable answer from the server: %r' % (what, body[:200]))
    return doc


def _checked(what: str, raw: bytes, body: bytes) -> Tuple[Dict[str, Any], bytes]:
    try:
        meta = decode_json(raw)
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise PubSubError('%s: unreadable answer from the server: %r' % (what, raw[:200]))
    status = meta.get('status')
    if meta.get('error') is not None or not isinstance(status, int) or status >= 300:
        _raise(what, meta, body)
    return meta, body


# -- messages -------------------------------------------------------------------------------

def _data_of(raw: bytes) -> Union[str, bytes]:
    """A message's data as a subscriber gets it: text when it is valid UTF-8 (the REST
    API's rule too), else the bytes."""
    try:
        return raw.decode('utf-8')
    except UnicodeDecodeError:
        return raw


class PubSubMessage:
    """One message as a subscriber gets it: ``data`` (str when valid UTF-8, else bytes;
    ``raw`` is always the bytes), ``msg_id``, ``topic`` (``topic_name``, Zato's name),
    ``size``, ``priority``, ``pub_time_ms``, ``expires_at_ms`` (None: never),
    ``mime_type``, ``correl_id``, ``in_reply_to``, ``ext_client_id``, ``published_by``,
    ``delivery_count`` (1 on the first delivery), ``has_gd``, ``sub_key``."""

    __slots__ = ('raw', 'data', 'msg_id', 'topic', 'size', 'priority', 'pub_time_ms',
                 'expires_at_ms', 'mime_type', 'correl_id', 'in_reply_to', 'ext_client_id',
                 'published_by', 'delivery_count', 'has_gd', 'sub_key')

    def __init__(self, meta: Dict[str, Any], raw: bytes, sub_key: Optional[str]) -> None:
        self.raw = raw
        self.data = _data_of(raw)
        self.msg_id = meta.get('msg_id')
        self.topic = meta.get('topic')
        self.size = len(raw)
        self.priority = meta.get('priority')
        self.pub_time_ms = meta.get('pub_time_ms')
        self.expires_at_ms = meta.get('expires_at_ms')
        self.mime_type = meta.get('mime_type')
        self.correl_id = meta.get('correl_id')
        self.in_reply_to = meta.get('in_reply_to')
        self.ext_client_id = meta.get('ext_client_id')
        self.published_by = meta.get('published_by')
        self.delivery_count = meta.get('delivery_count')
        self.has_gd = meta.get('has_gd')
        self.sub_key = sub_key

    @property
    def topic_name(self) -> Optional[str]:
        """Zato's name for :attr:`topic`."""
        return self.topic

    def json(self) -> Any:
        """The data decoded as JSON (ValueError when it is not JSON)."""
        return decode_json(self.raw)

    def to_dict(self) -> Dict[str, Any]:
        """The message as ``get_messages`` returns one (the REST pull shape, with ``data``
        a str or bytes rather than base64)."""
        return {name: getattr(self, name) for name in _DICT_KEYS}

    def __repr__(self) -> str:
        return '<PubSubMessage %s %s %d bytes>' % (self.msg_id, self.topic, self.size)


_DICT_KEYS = ('msg_id', 'topic', 'size', 'priority', 'pub_time_ms', 'expires_at_ms',
              'mime_type', 'correl_id', 'in_reply_to', 'ext_client_id', 'published_by',
              'delivery_count', 'has_gd', 'sub_key', 'data')


def split_messages(metas: Any, body: bytes, sub_key: Optional[str], what: str
                   ) -> List[PubSubMessage]:
    """The messages of a batch: ``metas`` (each with its ``size``) over ``body``, their
    data concatenated. ValueError naming ``what`` when the sizes do not add up."""
    if not isinstance(metas, list):
        raise ValueError('%s: msgs is not a list' % what)
    out = []
    at = 0
    view = memoryview(body)
    for i, meta in enumerate(metas):
        size = meta.get('size') if isinstance(meta, dict) else None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError('%s: msgs[%d] has no valid size' % (what, i))
        end = at + size
        if end > len(body):
            raise ValueError('%s: msgs[%d] ends at byte %d of a %d-byte body'
                             % (what, i, end, len(body)))
        out.append(PubSubMessage(meta, bytes(view[at:end]), sub_key))
        at = end
    if at != len(body):
        raise ValueError('%s: the sizes add up to %d bytes but the body has %d'
                         % (what, at, len(body)))
    return out


class PubSubDelivery:
    """``self.request.pubsub`` of a service a subscription delivers to: ``sub_key``,
    ``topic`` (the subscription's topic or pattern) and ``messages``."""

    __slots__ = ('sub_key', 'topic', 'messages')

    def __init__(self, sub_key: Optional[str], topic: Optional[str],
                 messages: List[PubSubMessage]) -> None:
        self.sub_key = sub_key
        self.topic = topic
        self.messages = messages

    @classmethod
    def from_call(cls, meta: Dict[str, Any], body: bytes) -> PubSubDelivery:
        """From an ``invoke`` CALL of channel ``pubsub``: its meta's ``pubsub`` and body.
        ValueError when they do not agree."""
        info = meta.get('pubsub')
        if not isinstance(info, dict):
            raise ValueError('pubsub delivery: the meta has no pubsub object')
        sub_key = info.get('sub_key')
        return cls(sub_key, info.get('topic'),
                   split_messages(info.get('msgs'), body, sub_key,
                                  'pubsub delivery of %s' % (sub_key,)))

    def __repr__(self) -> str:
        return '<PubSubDelivery %s: %d messages>' % (self.sub_key, len(self.messages))


# -- the API --------------------------------------------------------------------------------

# Strict JSON for message data: NaN and Infinity are no JSON, and a subscriber's parser
# (the REST API's, another language's) would refuse them.
_data_json = json.JSONEncoder(separators=(',', ':'), ensure_ascii=False, allow_nan=False).encode


def _encode(data: Any, mime_type: Optional[str], topic: str) -> Tuple[bytes, str]:
    """A publish's data as bytes, and its MIME type (``mime_type`` when given)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data), mime_type or BINARY_MIME
    if data is None:
        raise PubSubInvalid('publish to %s: data is None (give data= or data_list=)' % topic,
                            'invalid')
    if isinstance(data, str):
        text, mime = data, mime_type or TEXT_MIME
    else:
        try:
            text, mime = _data_json(data), mime_type or JSON_MIME
        except (TypeError, ValueError, RecursionError) as e:
            raise PubSubInvalid('publish to %s: data of type %s is neither str, bytes nor '
                                'JSON: %s' % (topic, type(data).__name__, e),
                                'invalid') from None
    try:
        return text.encode('utf-8'), mime
    except UnicodeEncodeError as e:
        # A lone surrogate (e.g. from a "\ud800" escape) has no UTF-8 form.
        raise PubSubInvalid('publish to %s: the data is not valid Unicode text: %s'
                            % (topic, e), 'invalid') from None


def _service_name(service: Any) -> Optional[str]:
    if service is None or isinstance(service, str):
        return service
    name = getattr(service, 'name', None)  # a Service subclass or instance
    if isinstance(name, str) and name:
        return name
    raise TypeError('subscribe: service must be a service name or a Service, not %r'
                    % (service,))


def _current_wsx(topic: str, delivery: Any, unsub_on_wsx_close: Any) -> Dict[str, Any]:
    """The delivery to the WebSocket client the running call is handling."""
    if delivery is not None:
        raise PubSubInvalid('subscribe to %s: give use_current_wsx or delivery, not both'
                            % topic, 'invalid')
    if not unsub_on_wsx_close:
        raise PubSubInvalid('subscribe to %s: unsub_on_wsx_close=False is not supported: '
                            'a WebSocket subscription ends with its connection (a client id '
                            'is never reused)' % topic, 'invalid')
    call = _invocation_meta.get()
    wsx = call.get('wsx') if call is not None else None
    client_id = wsx.get('client_id') if isinstance(wsx, dict) else None
    if not isinstance(client_id, str) or not client_id:
        raise PubSubInvalid('subscribe to %s: use_current_wsx=True needs a call from a '
                            'WebSocket channel (this one is not)' % topic, 'invalid')
    return {'type': 'websocket', 'client_id': client_id}


class PubSubAPI:
    """``self.pubsub``: publish, subscribe, unsubscribe, get_messages, ack (and their
    ``a*`` awaitable forms), as the service ``service``."""

    __slots__ = ('_request', '_arequest', '_service')

    def __init__(self, request: Request, arequest: Optional[ARequest], service: str) -> None:
        self._request = request
        self._arequest = arequest
        self._service = service

    # -- building the calls (shared by the blocking and awaitable forms) -----------------

    def _meta(self, op: str) -> Dict[str, Any]:
        meta = {'op': op, 'service': self._service}
        meta.update(invocation_context())
        return meta

    def _publish_call(self, topic: str, data: Any, data_list: Any, priority: Any,
                      expiration: Any, has_gd: Any, mime_type: Any, correl_id: Any,
                      in_reply_to: Any, ext_client_id: Any
                      ) -> Tuple[Dict[str, Any], bytes, bool]:
        if not isinstance(topic, str) or not topic:
            raise PubSubInvalid('publish: the topic must be a non-empty str, not %r'
                                % (topic,), 'invalid')
        if data_list is not None and data is not None:
            raise PubSubInvalid('publish to %s: give data or data_list, not both' % topic,
                                'invalid')
        if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)
                                     or not 1 <= priority <= 9):
            raise PubSubInvalid('publish to %s: priority must be an int from 1 to 9, not %r'
                                % (topic, priority), 'invalid')
        if expiration is not None and (isinstance(expiration, bool)
                                       or not isinstance(expiration, int) or expiration < 1):
            raise PubSubInvalid('publish to %s: expiration must be a number of ms of at '
                                'least 1, not %r' % (topic, expiration), 'invalid')
        many = data_list is not None
        if many:
            if isinstance(data_list, (str, bytes, bytearray, dict)):
                raise PubSubInvalid('publish to %s: data_list must be a list of messages\' '
                                    'data, not a %s' % (topic, type(data_list).__name__),
                                    'invalid')
            items = list(data_list)
            if not items:
                raise PubSubInvalid('publish to %s: data_list is empty' % topic, 'invalid')
        else:
            items = [data]
        common: Dict[str, Any] = {}
        if priority is not None:
            common['priority'] = priority
        if expiration is not None:
            common['expiration_ms'] = expiration
        if has_gd is not None:
            common['has_gd'] = bool(has_gd)
        for key, value in (('correl_id', correl_id), ('in_reply_to', in_reply_to),
                           ('ext_client_id', ext_client_id)):
            if value is not None:
                common[key] = str(value)
        msgs = []
        parts = []
        total = 0
        for item in items:
            raw, mime = _encode(item, mime_type, topic)
            msg = {'size': len(raw), 'mime_type': mime}
            msg.update(common)
            msgs.append(msg)
            parts.append(raw)
            total += len(raw)
        meta = self._meta('pubsub.publish')
        meta['topic'] = topic
        meta['msgs'] = msgs
        # One publish is one CALL frame: its meta and all of its data must fit in it. The
        # meta is measured as sent (it is small next to data of this size).
        if total > MAX_FRAME_LENGTH - 1024 or (
                total + len(encode_json(meta)) + 64 > MAX_FRAME_LENGTH):
            raise MessageTooLarge('publish to %s: %d messages of %d bytes together, over the '
                                  '%d bytes one call carries: publish them in several calls'
                                  % (topic, len(msgs), total, MAX_FRAME_LENGTH),
                                  'too_large', 413)
        return meta, b''.join(parts), many

    def _subscribe_call(self, topic: str, service: Any, delivery: Any, sub_key: Any,
                        batch_size: Any, retry: Any, dead_letter_topic: Any,
                        ack_timeout: Any) -> Dict[str, Any]:
        if not isinstance(topic, str) or not topic:
            raise PubSubInvalid('subscribe: the topic must be a non-empty str, not %r'
                                % (topic,), 'invalid')
        target = _service_name(service)
        if target is not None and delivery is not None:
            raise PubSubInvalid('subscribe to %s: give service or delivery, not both' % topic,
                                'invalid')
        meta = self._meta('pubsub.subscribe')
        meta['topic'] = topic
        if target is not None:
            meta['delivery'] = {'type': 'service', 'service': target}
        elif delivery is not None:
            meta['delivery'] = ({'type': delivery} if isinstance(delivery, str)
                                else dict(delivery))
        for key, value in (('sub_key', sub_key), ('batch_size', batch_size),
                           ('retry', retry), ('dead_letter_topic', dead_letter_topic),
                           ('ack_timeout_ms', ack_timeout)):
            if value is not None:
                meta[key] = value
        return meta

    def _target(self, meta: Dict[str, Any], what: str, topic_name: Any, sub_key: Any) -> None:
        if sub_key:
            meta['sub_key'] = str(sub_key)
        elif topic_name:
            meta['topic'] = str(topic_name)
        else:
            raise PubSubInvalid('%s: give sub_key or topic_name' % what, 'invalid')

    def _get_call(self, topic_name: Any, sub_key: Any, max_messages: Any, wait_ms: Any
                  ) -> Dict[str, Any]:
        meta = self._meta('pubsub.get')
        self._target(meta, 'get_messages', topic_name, sub_key)
        if (isinstance(max_messages, bool) or not isinstance(max_messages, int)
                or not 1 <= max_messages <= MAX_MESSAGES):
            raise PubSubInvalid('get_messages: max_messages must be an int from 1 to %d, '
                                'not %r' % (MAX_MESSAGES, max_messages), 'invalid')
        if isinstance(wait_ms, bool) or not isinstance(wait_ms, int) or wait_ms < 0:
            raise PubSubInvalid('get_messages: wait_ms must be an int of 0 or more, not %r'
                                % (wait_ms,), 'invalid')
        meta['max_messages'] = max_messages
        meta['wait_ms'] = wait_ms
        return meta

    def _ack_call(self, sub_key: Any, msg_ids: Any, topic_name: Any) -> Dict[str, Any]:
        meta = self._meta('pubsub.ack')
        self._target(meta, 'ack', topic_name, sub_key)
        if isinstance(msg_ids, (str, dict, PubSubMessage)):
            msg_ids = [msg_ids]
        ids = []
        for item in msg_ids or ():
            if isinstance(item, dict):
                item = item.get('msg_id')
            elif isinstance(item, PubSubMessage):
                item = item.msg_id
            if not isinstance(item, str) or not item:
                raise PubSubInvalid('ack: %r is not a msg_id' % (item,), 'invalid')
            ids.append(item)
        meta['msg_ids'] = ids
        return meta

    @staticmethod
    def _got(raw: bytes, body: bytes) -> List[Dict[str, Any]]:
        meta, body = _checked('get_messages', raw, body)
        end = body.find(b'\n')
        if end < 0:
            raise PubSubError('get_messages: unreadable answer from the server (no head line)')
        try:
            head = decode_json(body[:end])
            sub_key = head.get('sub_key')
            msgs = split_messages(head.get('msgs'), body[end + 1:], sub_key, 'get_messages')
        except (ValueError, AttributeError) as e:
            raise PubSubError('get_messages: unreadable answer from the server: %s' % e) from None
        return [m.to_dict() for m in msgs]

    def _call(self, what: str, meta: Dict[str, Any], body: bytes = b''
              ) -> Tuple[bytes, bytes]:
        asyncio = sys.modules.get('asyncio')
        if asyncio is not None and asyncio._get_running_loop() is not None:
            raise RuntimeError(
                'self.pubsub.%s: a blocking call from a coroutine would stall the event loop '
                '(every async service of this worker): inside async def use await '
                'self.pubsub.a%s(...)' % (what, what))
        return self._request(meta, body)

    async def _acall(self, meta: Dict[str, Any], body: bytes = b'') -> Tuple[bytes, bytes]:
        if self._arequest is None:
            raise RuntimeError('not running inside an oxbus worker: there is no server to call')
        return await self._arequest(meta, body)

    # -- publish ---------------------------------------------------------------------------

    def publish(self, topic: str, data: Any = None, data_list: Optional[Iterable[Any]] = None,
                priority: Optional[int] = 5, expiration: Optional[int] = None,
                has_gd: Optional[bool] = None, mime_type: Optional[str] = None,
                correl_id: Optional[str] = None, in_reply_to: Optional[str] = None,
                ext_client_id: Optional[str] = None) -> Union[str, List[str]]:
        """Publish ``data`` (or each item of ``data_list``) to ``topic``: its msg_id (a
        list of them, in order, for ``data_list``), once the message is durable (GD) or
        accepted into memory (non-GD).

        ``data``: a str (sent as UTF-8, ``text/plain``), bytes (``application/octet-stream``)
        or anything JSON can encode (``application/json``); ``mime_type`` overrides the
        type. ``priority`` 1-9 (9 first), ``expiration`` in ms (default: the topic's),
        ``has_gd`` (default: the topic's). The other arguments are carried to subscribers
        as they are. A ``data_list`` is published as one call, all or nothing.
        """
        meta, body, many = self._publish_call(topic, data, data_list, priority, expiration,
                                              has_gd, mime_type, correl_id, in_reply_to,
                                              ext_client_id)
        raw, reply = self._call('publish', meta, body)
        return self._published(topic, raw, reply, many)

    async def apublish(self, topic: str, data: Any = None,
                       data_list: Optional[Iterable[Any]] = None,
                       priority: Optional[int] = 5, expiration: Optional[int] = None,
                       has_gd: Optional[bool] = None, mime_type: Optional[str] = None,
                       correl_id: Optional[str] = None, in_reply_to: Optional[str] = None,
                       ext_client_id: Optional[str] = None) -> Union[str, List[str]]:
        """:meth:`publish` for coroutines."""
        meta, body, many = self._publish_call(topic, data, data_list, priority, expiration,
                                              has_gd, mime_type, correl_id, in_reply_to,
                                              ext_client_id)
        raw, reply = await self._acall(meta, body)
        return self._published(topic, raw, reply, many)

    @staticmethod
    def _published(topic: str, raw: bytes, reply: bytes, many: bool) -> Union[str, List[str]]:
        ids = _answer('publish to %s' % topic, raw, reply).get('msg_ids')
        if not isinstance(ids, list) or not ids:
            raise PubSubError('publish to %s: unreadable answer from the server (msg_ids: %r)'
                              % (topic, ids))
        return ids if many else ids[0]

    # -- subscribe / unsubscribe -----------------------------------------------------------

    def subscribe(self, topic: str, service: Any = None, delivery: Any = None,
                  sub_key: Optional[str] = None, batch_size: Optional[int] = None,
                  retry: Optional[Dict[str, Any]] = None,
                  dead_letter_topic: Optional[str] = None,
                  ack_timeout: Optional[int] = None, use_current_wsx: bool = False,
                  unsub_on_wsx_close: bool = True, cid: Any = None) -> str:
        """Subscribe to ``topic`` (a name or a pattern such as ``/orders/*``): the
        subscription's sub_key.

        With ``use_current_wsx=True`` (Zato's argument), in a call from a WebSocket
        channel, the messages go to the WebSocket client this call is handling, on
        whichever server holds it; the subscription ends with its connection
        (``unsub_on_wsx_close``, which cannot be False: a client's id is not reused).
        ``service`` (Zato passes ``service=self``) and ``cid`` are then ignored.

        With ``service`` (a name, or a Service class), the messages are delivered to that
        service (``self.channel.type == 'pubsub'``); without, it is a pull subscription this
        service reads with ``get_messages(topic)``. ``delivery`` gives another delivery as
        the subscription object has it (``{'type': 'push', 'conn': 'crm', 'path': '/in'}``).
        ``batch_size``, ``retry`` (``{'max_attempts': 5, 'backoff_ms': 100, ...}``),
        ``dead_letter_topic`` and ``ack_timeout`` (ms, pull) are the subscription's.
        Subscribing again to the same topic with the same delivery answers the existing
        sub_key (without ``sub_key``: the same one every time, concurrent calls included),
        and that subscription keeps its settings: a different ``batch_size``, ``retry``...
        given again does not change it (the admin API does).
        """
        if use_current_wsx:
            service, delivery = None, _current_wsx(topic, delivery, unsub_on_wsx_close)
        meta = self._subscribe_call(topic, service, delivery, sub_key, batch_size, retry,
                                    dead_letter_topic, ack_timeout)
        raw, reply = self._call('subscribe', meta)
        return self._sub_key(topic, raw, reply)

    async def asubscribe(self, topic: str, service: Any = None, delivery: Any = None,
                         sub_key: Optional[str] = None, batch_size: Optional[int] = None,
                         retry: Optional[Dict[str, Any]] = None,
                         dead_letter_topic: Optional[str] = None,
                         ack_timeout: Optional[int] = None, use_current_wsx: bool = False,
                         unsub_on_wsx_close: bool = True, cid: Any = None) -> str:
        """:meth:`subscribe` for coroutines."""
        if use_current_wsx:
            service, delivery = None, _current_wsx(topic, delivery, unsub_on_wsx_close)
        meta = self._subscribe_call(topic, service, delivery, sub_key, batch_size, retry,
                                    dead_letter_topic, ack_timeout)
        raw, reply = await self._acall(meta)
        return self._sub_key(topic, raw, reply)

    @staticmethod
    def _sub_key(topic: str, raw: bytes, reply: bytes) -> str:
        sub_key = _answer('subscribe to %s' % topic, raw, reply).get('sub_key')
        if not isinstance(sub_key, str):
            raise PubSubError('subscribe to %s: unreadable answer from the server' % topic)
        return sub_key

    def unsubscribe(self, sub_key: str) -> None:
        """Delete subscription ``sub_key``, its queue and dead letters."""
        meta = self._meta('pubsub.unsubscribe')
        meta['sub_key'] = sub_key
        raw, reply = self._call('unsubscribe', meta)
        _checked('unsubscribe %s' % sub_key, raw, reply)

    async def aunsubscribe(self, sub_key: str) -> None:
        """:meth:`unsubscribe` for coroutines."""
        meta = self._meta('pubsub.unsubscribe')
        meta['sub_key'] = sub_key
        raw, reply = await self._acall(meta)
        _checked('unsubscribe %s' % sub_key, raw, reply)

    # -- pull ------------------------------------------------------------------------------

    def get_messages(self, topic_name: Optional[str] = None, sub_key: Optional[str] = None,
                     max_messages: int = 100, wait_ms: int = 0) -> List[Dict[str, Any]]:
        """Up to ``max_messages`` messages of a pull subscription: ``sub_key``'s, or this
        service's own subscription to ``topic_name``. Waits up to ``wait_ms`` for the first
        when none is there (long poll; 0: answers at once).

        Each is a dict: ``msg_id``, ``topic``, ``size``, ``priority``, ``pub_time_ms``,
        ``expires_at_ms``, ``mime_type``, ``correl_id``, ``in_reply_to``,
        ``ext_client_id``, ``published_by``, ``delivery_count``, ``has_gd``, ``sub_key``
        and ``data`` (str when valid UTF-8, else bytes). Ack them (:meth:`ack`): a message
        not acked within the subscription's ``ack_timeout`` is delivered again.
        """
        meta = self._get_call(topic_name, sub_key, max_messages, wait_ms)
        raw, reply = self._call('get_messages', meta)
        return self._got(raw, reply)

    async def aget_messages(self, topic_name: Optional[str] = None,
                            sub_key: Optional[str] = None, max_messages: int = 100,
                            wait_ms: int = 0) -> List[Dict[str, Any]]:
        """:meth:`get_messages` for coroutines (the long poll holds no thread)."""
        meta = self._get_call(topic_name, sub_key, max_messages, wait_ms)
        raw, reply = await self._acall(meta)
        return self._got(raw, reply)

    def ack(self, sub_key: Optional[str], msg_ids: Any, topic_name: Optional[str] = None
            ) -> int:
        """Acknowledge pulled messages: ``msg_ids`` (msg_id strings, or the dicts
        :meth:`get_messages` returned) of ``sub_key``, or of this service's own
        subscription to ``topic_name``. How many were waiting for it (acking an unknown or
        already acked msg_id is no error)."""
        meta = self._ack_call(sub_key, msg_ids, topic_name)
        raw, reply = self._call('ack', meta)
        return self._acked(raw, reply)

    async def aack(self, sub_key: Optional[str], msg_ids: Any,
                   topic_name: Optional[str] = None) -> int:
        """:meth:`ack` for coroutines."""
        meta = self._ack_call(sub_key, msg_ids, topic_name)
        raw, reply = await self._acall(meta)
        return self._acked(raw, reply)

    @staticmethod
    def _acked(raw: bytes, reply: bytes) -> int:
        n = _answer('ack', raw, reply).get('acked')
        return n if isinstance(n, int) else 0

    def __repr__(self) -> str:
        return '<PubSubAPI of %s>' % self._service
