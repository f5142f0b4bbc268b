"""Operator settings for services: ``self.user_config`` (Zato's name).

An operator keeps settings in the config store, as JSON objects with a name::

    oxbus user-config set crm --file crm.json      # {"api": {"timeout": 5, "region": "eu"}}

and a service reads them, Zato style, as attributes (or items)::

    timeout = self.user_config.crm.api.timeout
    region = self.user_config['crm']['api']['region']
    extra = self.user_config.get('optional-settings')      # None when there is none

    # async def handle(self): read it with the awaitable form (the others would hold the
    # event loop), then the name reads as above, from this invocation's copy
    crm = await self.user_config.aget('crm')               # None when there is none

Every server of a cluster has them and a change applies to the next read, with no restart:
each first read of a name in an invocation asks the server (``user_config.get``,
ipc-protocol/SPEC.md); later reads of the same name in that invocation reuse the answer
(that there is none, too).
An unknown name raises ``KeyError`` (``AttributeError`` for attribute access). In Zato the
same settings come from ``user-conf`` files, one per name, with sections; a JSON object
per name, with nested objects for sections, reads the same.
"""

from __future__ import annotations

from json.encoder import encode_basestring_ascii as _quote

from ._protocol import decode_json
from .simpleio import bunchify

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Awaitable, Callable, Dict, Optional, Set, Tuple

    Request = Callable[[bytes, bytes], Tuple[bytes, bytes]]
    ARequest = Callable[[bytes, bytes], Awaitable[Tuple[bytes, bytes]]]

__all__ = ['UserConfig', 'UserConfigError']


class UserConfigError(Exception):
    """The server could not answer a user-config read (other than an unknown name)."""


class UserConfig:
    """``self.user_config``: the config store's user-config objects, by name."""

    __slots__ = ('_request', '_arequest', '_read', '_missing')

    def __init__(self, request: Request, arequest: Optional[ARequest] = None) -> None:
        self._request = request
        self._arequest = arequest
        self._read: Dict[str, Any] = {}
        #: The names the server said it has none of, in this invocation (made on first).
        self._missing: Optional[Set[str]] = None

    def _load(self, name: str) -> Tuple[bool, Any]:
        if not isinstance(name, str):
            raise TypeError('user-config names are strings, not %s' % type(name).__name__)
        if name in self._read:
            return True, self._read[name]
        if self._missing and name in self._missing:
            return False, None
        meta = b'{"op":"user_config.get","name":' + _quote(name).encode('ascii') + b'}'
        raw, body = self._request(meta, b'')
        return self._answer(name, raw, body)

    async def aget(self, name: str, default: Optional[Any] = None) -> Any:
        """:meth:`get`, awaitable (for ``async def`` services). Once read, the name reads
        from this invocation's copy by attribute or item too, with no further call (a name
        the server has none of too: ``get`` then returns its default, an attribute or item
        read raises)."""
        if not isinstance(name, str):
            raise TypeError('user-config names are strings, not %s' % type(name).__name__)
        if name in self._read:
            return self._read[name]
        if self._missing and name in self._missing:
            return default
        if self._arequest is None:
            raise RuntimeError('not running inside an oxbus worker: there is no server to '
                               'call')
        meta = b'{"op":"user_config.get","name":' + _quote(name).encode('ascii') + b'}'
        raw, body = await self._arequest(meta, b'')
        found, value = self._answer(name, raw, body)
        return value if found else default

    def _answer(self, name: str, raw: bytes, body: bytes) -> Tuple[bool, Any]:
        reply = decode_json(raw)
        status = reply.get('status') if isinstance(reply, dict) else None
        if status == 200:
            value = bunchify(decode_json(body))
            self._read[name] = value
            return True, value
        error = reply.get('error') if isinstance(reply, dict) else None
        if error == 'unknown_user_config':
            if self._missing is None:
                self._missing = set()
            self._missing.add(name)
            return False, None
        try:
            message = decode_json(body).get('error') or ''
        except (ValueError, AttributeError):
            message = body.decode('utf-8', 'replace')
        raise UserConfigError('user config %r: %s' % (name, message or 'status %s' % status))

    def __getitem__(self, name: str) -> Any:
        found, value = self._load(name)
        if not found:
            raise KeyError(name)
        return value

    def __getattr__(self, name: str) -> Any:
        if name.startswith('__'):
            raise AttributeError(name)
        found, value = self._load(name)
        if not found:
            raise AttributeError('no user config named %r' % name)
        return value

    def get(self, name: str, default: Optional[Any] = None) -> Any:
        found, value = self._load(name)
        return value if found else default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._load(name)[0]

    def __repr__(self) -> str:
        return '<UserConfig read=%r>' % sorted(self._read)
