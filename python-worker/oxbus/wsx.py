"""``self.wsx``: the clients of the server's WebSocket channels (docs/WEBSOCKET.md).

::

    class Chat(Service):                      # the service of a websocket channel
        def handle(self):
            msg = self.request.payload         # the client's message (JSON, or raw bytes)
            self.wsx.channel['chat'].broadcast({'from': self.wsx.client_id, 'text': msg})
            self.response.payload = {'ok': True}          # goes back to this client only

    self.wsx.send(client_id, 'hello')         # one client, on whichever server it is
    n = self.wsx.channel['chat'].broadcast(b'\\x00\\x01')  # every client of the channel

A channel's service is invoked once per client message, with ``self.channel.type ==
'websocket'``, ``self.channel.name`` the channel's name, ``self.wsx.client_id`` the
client's id and ``self.wsx.event == 'message'``; what it answers (``self.response.payload``)
goes back to that client as one message (nothing when it is empty; a text message for a
str or JSON, a binary one for bytes). The channel's ``on_connect`` and ``on_disconnect``
services are invoked with ``self.wsx.event`` ``'connect'`` or ``'disconnect'`` and no
payload; their answers are not sent.

Pushes are ``CALL`` s to the server (ipc-protocol/SPEC.md, "WebSocket pushes"): ``send``
waits until the message is queued for the client (:class:`UnknownClient` when no server
holds it, :class:`ClientQueueFull` when it does not read fast enough and is being
disconnected); ``broadcast`` queues the message for this server's clients of the channel,
returns how many, and hands it to every other server of the cluster. Inside ``async def``
use ``await self.wsx.asend(...)`` and ``await self.wsx.channel[name].abroadcast(...)``.
"""

from __future__ import annotations

import sys

from ._protocol import decode_json, encode_json

TYPE_CHECKING = False  # see _protocol.py: keep ``typing`` out of the worker's startup
if TYPE_CHECKING:
    from typing import Any, Awaitable, Callable, Dict, Optional, Tuple

    Request = Callable[[Any, bytes], Tuple[bytes, bytes]]
    ARequest = Callable[[Any, bytes], Awaitable[Tuple[bytes, bytes]]]


class WSXError(Exception):
    """A push the server refused; ``.error`` is its code, ``.status`` its status."""

    def __init__(self, message: str, error: Optional[str] = None,
                 status: Optional[int] = None) -> None:
        super().__init__(message)
        self.error = error
        self.status = status


class UnknownClient(WSXError, KeyError):
    """No server of the cluster holds a client of that id (it disconnected)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ''


class ClientQueueFull(WSXError):
    """The client does not read fast enough: its send queue is full and it is being
    disconnected (close code 1008)."""


def _payload(data: Any) -> Tuple[bytes, bool]:
    """The message's bytes and whether it is binary: bytes are sent as a binary message,
    a str as text, anything else as JSON text."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data), True
    if isinstance(data, str):
        return data.encode('utf-8'), False
    return encode_json(data), False


def _result(what: str, raw: bytes, body: bytes) -> Dict[str, Any]:
    try:
        meta = decode_json(raw)
        doc = decode_json(body) if body else {}
    except ValueError:
        raise WSXError('%s: unreadable answer from the server' % what) from None
    if not isinstance(meta, dict) or not isinstance(doc, dict):
        raise WSXError('%s: unreadable answer from the server' % what)
    status = meta.get('status')
    error = meta.get('error')
    if error is None and isinstance(status, int) and status < 300:
        return doc
    message = doc.get('error') or '%s: the server answered %s' % (what, status)
    if error == 'unknown_client':
        raise UnknownClient(str(message), error, status)
    if error == 'queue_full':
        raise ClientQueueFull(str(message), error, status)
    raise WSXError(str(message), error, status)


def _no_blocking_on_loop(what: str) -> None:
    asyncio = sys.modules.get('asyncio')
    if asyncio is not None and asyncio._get_running_loop() is not None:
        raise RuntimeError(
            'self.wsx: a blocking %s from a coroutine would stall the event loop (every async '
            'service of this worker): inside async def use await ...a%s(...)' % (what, what))


class WSXChannel:
    """One WebSocket channel, by name: ``self.wsx.channel['chat']``."""

    __slots__ = ('_api', 'name')

    def __init__(self, api: WSXAPI, name: str) -> None:
        self._api = api
        self.name = name

    def _meta(self, data: Any) -> Tuple[Dict[str, Any], bytes]:
        body, binary = _payload(data)
        return {'op': 'wsx.broadcast', 'channel': self.name, 'binary': binary}, body

    def broadcast(self, data: Any) -> int:
        """Send ``data`` to every client of the channel, on every server; how many of this
        server's clients it was queued for."""
        _no_blocking_on_loop('broadcast')
        meta, body = self._meta(data)
        raw, reply = self._api._request(meta, body)
        return int(_result('broadcast to %s' % self.name, raw, reply).get('local_clients', 0))

    async def abroadcast(self, data: Any) -> int:
        """:meth:`broadcast` for coroutines."""
        meta, body = self._meta(data)
        raw, reply = await self._api._arequest(meta, body)
        return int(_result('broadcast to %s' % self.name, raw, reply).get('local_clients', 0))

    def send(self, client_id: str, data: Any) -> None:
        """Send ``data`` to one client (of this channel or another)."""
        self._api.send(client_id, data)

    async def asend(self, client_id: str, data: Any) -> None:
        """:meth:`send` for coroutines."""
        await self._api.asend(client_id, data)

    def __repr__(self) -> str:
        return 'WSXChannel(%r)' % self.name


class _Channels:
    __slots__ = ('_api',)

    def __init__(self, api: WSXAPI) -> None:
        self._api = api

    def __getitem__(self, name: str) -> WSXChannel:
        if not isinstance(name, str) or not name:
            raise KeyError(name)
        return WSXChannel(self._api, name)

    def get(self, name: str, default: Any = None) -> Any:
        """``self.wsx.channel[name]``, or ``default`` for a name that cannot be one."""
        try:
            return self[name]
        except KeyError:
            return default


class WSXAPI:
    """``self.wsx``: the invocation's client (``client_id``, ``event``) and pushes to any
    client (``send``) or channel (``channel[name].broadcast``)."""

    __slots__ = ('_request', '_arequest', '_meta', 'channel')

    def __init__(self, request: Request, arequest: ARequest,
                 meta: Optional[Dict[str, Any]] = None) -> None:
        self._request = request
        self._arequest = arequest
        self._meta = meta if isinstance(meta, dict) else {}
        #: The channels by name: ``self.wsx.channel['chat'].broadcast(data)``.
        self.channel = _Channels(self)

    @property
    def client_id(self) -> Optional[str]:
        """The id of the client whose message (or connect/disconnect) this invocation is;
        None when the invocation did not come from a WebSocket channel."""
        cid = self._meta.get('client_id')
        return cid if isinstance(cid, str) else None

    @property
    def event(self) -> Optional[str]:
        """``'message'``, ``'connect'`` or ``'disconnect'``; None outside a WebSocket call."""
        ev = self._meta.get('event')
        return ev if isinstance(ev, str) else None

    @property
    def binary(self) -> bool:
        """Whether the client's message was a binary one (its payload is then bytes)."""
        return self._meta.get('binary') is True

    def _send_meta(self, client_id: str, data: Any) -> Tuple[Dict[str, Any], bytes]:
        if not isinstance(client_id, str) or not client_id:
            raise ValueError('client_id must be a WebSocket client id (str), not %r'
                             % (client_id,))
        body, binary = _payload(data)
        return {'op': 'wsx.send', 'client_id': client_id, 'binary': binary}, body

    def send(self, client_id: str, data: Any) -> None:
        """Send ``data`` to client ``client_id``, on whichever server it is connected."""
        _no_blocking_on_loop('send')
        meta, body = self._send_meta(client_id, data)
        raw, reply = self._request(meta, body)
        _result('send to %s' % client_id, raw, reply)

    async def asend(self, client_id: str, data: Any) -> None:
        """:meth:`send` for coroutines."""
        meta, body = self._send_meta(client_id, data)
        raw, reply = await self._arequest(meta, body)
        _result('send to %s' % client_id, raw, reply)

    def __repr__(self) -> str:
        return '<WSXAPI client_id=%r event=%r>' % (self.client_id, self.event)
