"""The secrets a service may read: ``self.secrets['name']``.

::

    api_key = self.secrets['crm.api-key']          # str; KeyError when there is no such secret
    token = self.secrets.get('optional', None)     # default when there is no such secret
    if 'crm.api-key' in self.secrets: ...

    # async def handle(self): the awaitable forms, which do not hold the event loop
    api_key = await self.secrets.aget('crm.api-key')   # None when there is no such secret
    if await self.secrets.acontains('crm.api-key'): ...

A secret is stored sealed in the config store (``oxbus secret set NAME --service PATTERN``)
and names the services that may read it (exact names or globs with ``*``, e.g. ``crm.*``);
by default no service may. Each read asks the server over the worker's IPC connection
(``secret.get``, ipc-protocol/SPEC.md), sending the calling service's name: a secret whose
``services`` do not name it raises :class:`PermissionError`, so a change of who may read
applies to the next read with no restart. Nothing is cached here.

The credentials of outgoing connections (``self.out.rest`` / ``self.out.sql``) are not
secrets of this kind: they stay in the server and no call returns them.

The services of one worker share a Python process: ``services`` keeps a value out of the
services that do not ask for it and catches mistakes, it is not a wall against hostile code
deployed in the same server (docs/OUTGOING.md).
"""

from __future__ import annotations

from json.encoder import encode_basestring_ascii as _quote

from ._protocol import decode_json

TYPE_CHECKING = False  # see _protocol.py: keep ``typing`` out of the worker's startup
if TYPE_CHECKING:
    from typing import Any, Awaitable, Callable, Optional, Tuple

    # (CALL meta as JSON bytes, body) -> (REPLY meta as JSON bytes, body)
    Request = Callable[[bytes, bytes], Tuple[bytes, bytes]]
    ARequest = Callable[[bytes, bytes], Awaitable[Tuple[bytes, bytes]]]

__all__ = ['Secrets', 'SecretError']


class SecretError(Exception):
    """The server could not answer a secret read (other than unknown / not allowed)."""


class Secrets:
    """``self.secrets``: the secrets the calling service may read, by name."""

    __slots__ = ('_request', '_arequest', '_service')

    def __init__(self, request: Request, service: str, arequest: Optional[ARequest] = None
                 ) -> None:
        self._request = request
        self._arequest = arequest
        self._service = service

    def _meta(self, name: str) -> bytes:
        if not isinstance(name, str):
            raise TypeError('secret names are strings, not %s' % type(name).__name__)
        return (b'{"op":"secret.get","name":' + _quote(name).encode('ascii')
                + b',"service":' + _quote(self._service).encode('ascii') + b'}')

    def _read(self, name: str) -> Tuple[bool, str]:
        """(True, value), or (False, message) when there is no secret ``name``."""
        raw, body = self._request(self._meta(name), b'')
        return self._answer(name, raw, body)

    async def _aread(self, name: str) -> Tuple[bool, str]:
        meta = self._meta(name)
        if self._arequest is None:
            raise RuntimeError('not running inside an oxbus worker: there is no server to '
                               'call')
        raw, body = await self._arequest(meta, b'')
        return self._answer(name, raw, body)

    def _answer(self, name: str, raw: bytes, body: bytes) -> Tuple[bool, str]:
        reply = decode_json(raw)
        status = reply.get('status') if isinstance(reply, dict) else None
        if status == 200:
            value = decode_json(body)
            if not isinstance(value, str):
                raise SecretError('secret %r: unreadable answer from the server' % name)
            return True, value
        try:
            message = decode_json(body).get('error') or ''
        except (ValueError, AttributeError):
            message = body.decode('utf-8', 'replace')
        error = reply.get('error') if isinstance(reply, dict) else None
        if error == 'unknown_secret':
            return False, message or 'no secret named %r' % name
        if error == 'not_allowed':
            raise PermissionError(message or 'service %r may not read secret %r'
                                  % (self._service, name))
        raise SecretError('secret %r: %s' % (name, message or 'status %s' % status))

    def __getitem__(self, name: str) -> str:
        found, value = self._read(name)
        if not found:
            raise KeyError(name)
        return value

    def get(self, name: str, default: Optional[Any] = None) -> Any:
        """The secret's value, or ``default`` when there is no secret of that name
        (PermissionError still when there is one this service may not read)."""
        found, value = self._read(name)
        return value if found else default

    def __contains__(self, name: object) -> bool:
        """Whether a secret ``name`` exists and this service may read it."""
        if not isinstance(name, str):
            return False
        try:
            return self._read(name)[0]
        except PermissionError:
            return False

    async def aget(self, name: str, default: Optional[Any] = None) -> Any:
        """:meth:`get`, awaitable (for ``async def`` services)."""
        found, value = await self._aread(name)
        return value if found else default

    async def acontains(self, name: str) -> bool:
        """``name in self.secrets``, awaitable."""
        if not isinstance(name, str):
            return False
        try:
            return (await self._aread(name))[0]
        except PermissionError:
            return False

    def __repr__(self) -> str:
        return '<Secrets of %s>' % self._service
