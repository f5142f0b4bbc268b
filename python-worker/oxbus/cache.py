"""The server's named caches, for services: ``self.cache.default.get(key)``.

The API is Zato's, so Zato services keep their cache code::

    self.cache.default.set('customer:42', {'name': 'Ann'}, expiry=60)
    customer = self.cache.default.get('customer:42')        # None when absent
    self.cache.default.incr('hits')                          # atomic on the server
    sessions = self.cache['sessions']                        # another cache, by name

Every call goes over the worker's IPC connection to its server, which holds the caches
(Rust, in memory) and replicates writes to the other servers of the cluster (see
``docs/CACHE.md``). Keys are strings. Values are anything JSON can represent, or bytes;
they come back as what was stored (a tuple comes back as a list, as JSON has no tuples).
"""

from __future__ import annotations

from ._protocol import decode_json, encode_json

TYPE_CHECKING = False  # see _protocol.py: keep ``typing`` out of the worker's startup
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional, Tuple

    Request = Callable[[Dict[str, Any], bytes], Tuple[Dict[str, Any], bytes]]

__all__ = ['CacheAPI', 'Cache', 'CacheError', 'UnknownCache', 'ValueTooLarge', 'NotAnInteger']

_BYTES = 'application/octet-stream'


class CacheError(Exception):
    """A cache operation the server refused."""


class UnknownCache(CacheError, LookupError):
    """No cache of that name is defined on the server."""


class ValueTooLarge(CacheError, ValueError):
    """The value is larger than the cache's ``max_item_size``."""


class NotAnInteger(CacheError, TypeError):
    """``incr``/``decr`` of a value that is not an integer (or would overflow 64 bits)."""


_ERRORS = {'unknown_cache': UnknownCache, 'too_large': ValueTooLarge,
           'not_integer': NotAnInteger}


def _raise(meta: Dict[str, Any], body: bytes) -> None:
    try:
        message = decode_json(body).get('error') or body.decode('utf-8', 'replace')
    except (ValueError, AttributeError):
        message = body.decode('utf-8', 'replace')
    cls = _ERRORS.get(meta.get('error') or '', CacheError)
    raise cls(message)


def _check_key(key: Any) -> str:
    if type(key) is str or isinstance(key, str):
        return key
    raise TypeError('cache keys are strings, not %s' % type(key).__name__)


class Cache:
    """One named cache of the server."""

    __slots__ = ('name', '_request')

    def __init__(self, name: str, request: Request) -> None:
        self.name = name
        self._request = request

    def _call(self, meta: Dict[str, Any], body: bytes = b'') -> Tuple[Dict[str, Any], bytes]:
        reply, data = self._request(meta, body)
        if reply['status'] >= 400:
            _raise(reply, data)
        return reply, data

    def get(self, key: str, default: Any = None) -> Any:
        """The value under ``key``, or ``default`` (None) when it is absent or expired."""
        reply, data = self._call({'op': 'cache.get', 'cache': self.name, 'key': _check_key(key)})
        if reply['status'] == 204:
            return default
        if reply.get('content_type') == _BYTES:
            return data
        return decode_json(data)

    def set(self, key: str, value: Any, expiry: Optional[float] = None) -> None:
        """Store ``value`` under ``key``.

        ``expiry``: seconds (fractions allowed) until it expires; ``None`` = the cache's
        default expiry; 0 = never. bytes/bytearray/memoryview are stored as bytes, anything
        else as JSON (TypeError when it is not JSON-serialisable).
        """
        meta = {'op': 'cache.set', 'cache': self.name, 'key': _check_key(key)}
        if isinstance(value, (bytes, bytearray, memoryview)):
            meta['kind'] = 'bytes'
            body = bytes(value)
        else:
            body = encode_json(value)
        if expiry is not None:
            meta['expiry'] = expiry
        self._call(meta, body)

    def delete(self, key: str) -> bool:
        """Remove ``key``; True when it was there."""
        return self._flag('cache.delete', key)

    def has_key(self, key: str) -> bool:
        """Whether ``key`` is present (does not count as a hit or extend its expiry)."""
        return self._flag('cache.has', key)

    __contains__ = has_key

    def expire(self, key: str, seconds: float) -> bool:
        """Make ``key`` expire ``seconds`` from now (0 = never); False when it is absent."""
        reply, data = self._call({'op': 'cache.expire', 'cache': self.name,
                                  'key': _check_key(key), 'expiry': seconds})
        return data == b'true'

    def incr(self, key: str, by: int = 1) -> int:
        """Add ``by`` to the integer under ``key`` (absent counts as 0); the new value.

        Atomic on the server: concurrent callers on every worker get distinct results.
        """
        if type(by) is not int:
            raise TypeError('incr/decr by an int, not %s' % type(by).__name__)
        reply, data = self._call({'op': 'cache.incr', 'cache': self.name,
                                  'key': _check_key(key), 'by': by})
        return int(data)

    def decr(self, key: str, by: int = 1) -> int:
        """Subtract ``by`` from the integer under ``key``; the new value."""
        if type(by) is not int:
            raise TypeError('incr/decr by an int, not %s' % type(by).__name__)
        return self.incr(key, -by)

    def keys(self, prefix: str = '') -> List[str]:
        """The keys starting with ``prefix``, sorted."""
        reply, data = self._call({'op': 'cache.keys', 'cache': self.name,
                                  'prefix': _check_key(prefix)})
        return decode_json(data)

    def items(self, prefix: str = '') -> List[Tuple[str, Any]]:
        """``(key, value)`` of the keys starting with ``prefix``, sorted by key."""
        import base64
        reply, data = self._call({'op': 'cache.items', 'cache': self.name,
                                  'prefix': _check_key(prefix)})
        return [(key, base64.b64decode(text) if kind == 'bytes' else decode_json(text))
                for key, kind, text in decode_json(data)]

    def clear(self) -> int:
        """Remove every entry; returns how many there were."""
        reply, data = self._call({'op': 'cache.clear', 'cache': self.name})
        return int(data)

    def __len__(self) -> int:
        reply, data = self._call({'op': 'cache.len', 'cache': self.name})
        return int(data)

    def __getitem__(self, key: str) -> Any:
        missing = _MISSING
        value = self.get(key, missing)
        if value is missing:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self.set(key, value)

    def __delitem__(self, key: str) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def _flag(self, op: str, key: str) -> bool:
        reply, data = self._call({'op': op, 'cache': self.name, 'key': _check_key(key)})
        return data == b'true'

    def __repr__(self) -> str:
        return '<Cache %s>' % self.name


_MISSING = object()


class CacheAPI:
    """``self.cache``: the caches by name; ``.default`` is the one that always exists."""

    __slots__ = ('_request', '_caches')

    def __init__(self, request: Request) -> None:
        self._request = request
        self._caches: Dict[str, Cache] = {}

    def get_cache(self, name: str) -> Cache:
        """The cache called ``name``. Unknown names raise :class:`UnknownCache` on first use."""
        cache = self._caches.get(name)
        if cache is None:
            if not isinstance(name, str):
                raise TypeError('cache names are strings, not %s' % type(name).__name__)
            cache = self._caches.setdefault(name, Cache(name, self._request))
        return cache

    __getitem__ = get_cache

    @property
    def default(self) -> Cache:
        """The ``default`` cache."""
        return self.get_cache('default')

    def __repr__(self) -> str:
        return '<CacheAPI>'
