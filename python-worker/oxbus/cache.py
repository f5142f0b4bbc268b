"""The server's named caches, for services: ``self.cache.default.get(key)``.

The API is Zato's, so Zato services keep their cache code::

    self.cache.default.set('customer:42', {'name': 'Ann'}, expiry=60)
    customer = self.cache.default.get('customer:42')        # None when absent
    self.cache.default.incr('hits')                          # atomic on the server
    sessions = self.cache['sessions']                        # another cache, by name

In ``async def`` services every call has an awaitable form, ``a`` + its name, which waits
for the server's answer without holding the event loop (the blocking forms raise
``RuntimeError`` there)::

    customer = await self.cache.default.aget('customer:42')
    await self.cache.default.aset('customer:42', {'name': 'Ann'}, expiry=60)
    hits = await self.cache['sessions'].aincr('hits')

``aget``, ``aset``, ``adelete``, ``ahas_key``, ``aexpire``, ``aincr``, ``adecr``,
``akeys``, ``aitems``, ``aclear`` and ``alen``.

Every call goes over the worker's IPC connection to its server, which holds the caches
(Rust, in memory) and replicates writes to the other servers of the cluster (see
``docs/CACHE.md``). Keys are strings. Values are anything JSON can represent, or bytes;
they come back as what was stored (a tuple comes back as a list, as JSON has no tuples).
"""

from __future__ import annotations

from json.encoder import encode_basestring_ascii as _quote  # C: a str as a JSON string

from ._protocol import decode_json, encode_json

TYPE_CHECKING = False  # see _protocol.py: keep ``typing`` out of the worker's startup
if TYPE_CHECKING:
    from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

    # (CALL meta as JSON bytes, body) -> (REPLY meta as JSON bytes, body)
    Request = Callable[[bytes, bytes], Tuple[bytes, bytes]]
    ARequest = Callable[[bytes, bytes], Awaitable[Tuple[bytes, bytes]]]

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


def _key(key: Any) -> bytes:
    """``key`` as a JSON string, ready to go into a meta."""
    if type(key) is str or isinstance(key, str):
        return _quote(key).encode('ascii')
    raise TypeError('cache keys are strings, not %s' % type(key).__name__)


# The server answers with a handful of distinct metas ({"status":200,"content_type":...}),
# so each is parsed once; at most _MAX_METAS are kept, whatever a server sends.
_metas: Dict[bytes, Dict[str, Any]] = {}
_MAX_METAS = 64


def _meta(raw: bytes) -> Dict[str, Any]:
    meta = _metas.get(raw)
    if meta is None:
        meta = decode_json(raw)
        if not isinstance(meta, dict) or type(meta.get('status')) is not int:
            raise CacheError('unreadable answer from the server: %r' % raw[:200])
        if len(_metas) < _MAX_METAS:
            _metas[raw] = meta
    return meta


class Cache:
    """One named cache of the server."""

    __slots__ = ('name', '_request', '_arequest', '_head')

    def __init__(self, name: str, request: Request, arequest: Optional[ARequest] = None
                 ) -> None:
        self.name = name
        self._request = request
        self._arequest = arequest
        # Every meta starts {"op":"cache.X","cache":NAME, ... : the part after the op.
        self._head = b'","cache":' + _quote(name).encode('ascii')

    def _call(self, op: bytes, rest: bytes = b'', body: bytes = b''
              ) -> Tuple[Dict[str, Any], bytes]:
        raw, data = self._request(b'{"op":"cache.' + op + self._head + rest + b'}', body)
        meta = _meta(raw)
        if meta['status'] >= 400:
            _raise(meta, data)
        return meta, data

    async def _acall(self, op: bytes, rest: bytes = b'', body: bytes = b''
                     ) -> Tuple[Dict[str, Any], bytes]:
        arequest = self._arequest
        if arequest is None:
            raise RuntimeError('not running inside an oxbus worker: there is no server to '
                               'call')
        raw, data = await arequest(b'{"op":"cache.' + op + self._head + rest + b'}', body)
        meta = _meta(raw)
        if meta['status'] >= 400:
            _raise(meta, data)
        return meta, data

    def get(self, key: str, default: Any = None) -> Any:
        """The value under ``key``, or ``default`` (None) when it is absent or expired."""
        meta, data = self._call(b'get', b',"key":' + _key(key))
        return _value(meta, data, default)

    def set(self, key: str, value: Any, expiry: Optional[float] = None) -> None:
        """Store ``value`` under ``key``.

        ``expiry``: seconds (fractions allowed) until it expires; ``None`` = the cache's
        default expiry; 0 = never. bytes/bytearray/memoryview are stored as bytes, anything
        else as JSON (TypeError when it is not JSON-serialisable).
        """
        self._call(b'set', *_set_args(key, value, expiry))

    def delete(self, key: str) -> bool:
        """Remove ``key``; True when it was there."""
        return self._call(b'delete', b',"key":' + _key(key))[1] == b'true'

    def has_key(self, key: str) -> bool:
        """Whether ``key`` is present (does not count as a hit or extend its expiry)."""
        return self._call(b'has', b',"key":' + _key(key))[1] == b'true'

    __contains__ = has_key

    def expire(self, key: str, seconds: float) -> bool:
        """Make ``key`` expire ``seconds`` from now (0 = never); False when it is absent."""
        rest = b',"key":' + _key(key) + b',"expiry":' + _number(seconds)
        return self._call(b'expire', rest)[1] == b'true'

    def incr(self, key: str, by: int = 1) -> int:
        """Add ``by`` to the integer under ``key`` (absent counts as 0); the new value.

        Atomic on the server: concurrent callers on every worker get distinct results.
        """
        return int(self._call(b'incr', _incr_args(key, by))[1])

    def decr(self, key: str, by: int = 1) -> int:
        """Subtract ``by`` from the integer under ``key``; the new value."""
        if type(by) is not int:
            raise TypeError('incr/decr by an int, not %s' % type(by).__name__)
        return self.incr(key, -by)

    def keys(self, prefix: str = '') -> List[str]:
        """The keys starting with ``prefix``, sorted."""
        keys: List[str] = decode_json(self._call(b'keys', b',"prefix":' + _key(prefix))[1])
        return keys

    def items(self, prefix: str = '') -> List[Tuple[str, Any]]:
        """``(key, value)`` of the keys starting with ``prefix``, sorted by key."""
        return _items(self._call(b'items', b',"prefix":' + _key(prefix))[1])

    def clear(self) -> int:
        """Remove every entry; returns how many there were."""
        return int(self._call(b'clear')[1])

    def __len__(self) -> int:
        return int(self._call(b'len')[1])

    # -- the awaitable forms, for async def services: the same calls and answers ----------

    async def aget(self, key: str, default: Any = None) -> Any:
        """:meth:`get`, awaitable."""
        meta, data = await self._acall(b'get', b',"key":' + _key(key))
        return _value(meta, data, default)

    async def aset(self, key: str, value: Any, expiry: Optional[float] = None) -> None:
        """:meth:`set`, awaitable."""
        await self._acall(b'set', *_set_args(key, value, expiry))

    async def adelete(self, key: str) -> bool:
        """:meth:`delete`, awaitable."""
        return (await self._acall(b'delete', b',"key":' + _key(key)))[1] == b'true'

    async def ahas_key(self, key: str) -> bool:
        """:meth:`has_key`, awaitable."""
        return (await self._acall(b'has', b',"key":' + _key(key)))[1] == b'true'

    async def aexpire(self, key: str, seconds: float) -> bool:
        """:meth:`expire`, awaitable."""
        rest = b',"key":' + _key(key) + b',"expiry":' + _number(seconds)
        return (await self._acall(b'expire', rest))[1] == b'true'

    async def aincr(self, key: str, by: int = 1) -> int:
        """:meth:`incr`, awaitable."""
        return int((await self._acall(b'incr', _incr_args(key, by)))[1])

    async def adecr(self, key: str, by: int = 1) -> int:
        """:meth:`decr`, awaitable."""
        if type(by) is not int:
            raise TypeError('incr/decr by an int, not %s' % type(by).__name__)
        return await self.aincr(key, -by)

    async def akeys(self, prefix: str = '') -> List[str]:
        """:meth:`keys`, awaitable."""
        data = (await self._acall(b'keys', b',"prefix":' + _key(prefix)))[1]
        return decode_json(data)  # type: ignore[no-any-return]

    async def aitems(self, prefix: str = '') -> List[Tuple[str, Any]]:
        """:meth:`items`, awaitable."""
        return _items((await self._acall(b'items', b',"prefix":' + _key(prefix)))[1])

    async def aclear(self) -> int:
        """:meth:`clear`, awaitable."""
        return int((await self._acall(b'clear'))[1])

    async def alen(self) -> int:
        """``len(cache)``, awaitable."""
        return int((await self._acall(b'len'))[1])

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

    def __repr__(self) -> str:
        return '<Cache %s>' % self.name


def _value(meta: Dict[str, Any], data: bytes, default: Any) -> Any:
    """The value of a ``cache.get`` answer: ``default`` when absent (204), bytes as stored,
    anything else from its JSON."""
    if meta['status'] == 204:
        return default
    if meta.get('content_type') == _BYTES:
        return data
    return decode_json(data)


def _set_args(key: str, value: Any, expiry: Optional[float]) -> Tuple[bytes, bytes]:
    """The meta fields after the cache's name and the body of a ``cache.set``."""
    rest = b',"key":' + _key(key)
    if isinstance(value, (bytes, bytearray, memoryview)):
        rest += b',"kind":"bytes"'
        body = bytes(value)
    else:
        body = encode_json(value)
    if expiry is not None:
        rest += b',"expiry":' + _number(expiry)
    return rest, body


def _incr_args(key: str, by: int) -> bytes:
    """The meta fields after the cache's name of a ``cache.incr``; ``by`` checked."""
    if type(by) is not int:
        raise TypeError('incr/decr by an int, not %s' % type(by).__name__)
    if not -2**63 <= by < 2**63:
        raise NotAnInteger('incr/decr by %d: outside the 64-bit range' % by)
    return b',"key":' + _key(key) + b',"by":%d' % by


def _items(data: bytes) -> List[Tuple[str, Any]]:
    """The ``(key, value)`` pairs of a ``cache.items`` answer."""
    import base64
    return [(key, base64.b64decode(text) if kind == 'bytes' else decode_json(text))
            for key, kind, text in decode_json(data)]


def _number(seconds: Any) -> bytes:
    if type(seconds) is bool or not isinstance(seconds, (int, float)):
        raise TypeError('an expiry is a number of seconds, not %s' % type(seconds).__name__)
    return encode_json(seconds)


_MISSING = object()


class CacheAPI:
    """``self.cache``: the caches by name; ``.default`` is the one that always exists."""

    __slots__ = ('_request', '_arequest', '_caches')

    def __init__(self, request: Request, arequest: Optional[ARequest] = None) -> None:
        self._request = request
        self._arequest = arequest
        self._caches: Dict[str, Cache] = {}

    def get_cache(self, name: str, cache_name: Optional[str] = None) -> Cache:
        """The cache called ``name``. Unknown names raise :class:`UnknownCache` on first use.

        Zato's two-argument form, ``get_cache('builtin', name)``, is taken too (Oxbus caches
        are all of Zato's built-in kind)."""
        if cache_name is not None:
            if name != 'builtin':
                raise ValueError('only built-in caches exist, not %r' % (name,))
            name = cache_name
        cache = self._caches.get(name)
        if cache is None:
            if not isinstance(name, str):
                raise TypeError('cache names are strings, not %s' % type(name).__name__)
            cache = Cache(name, self._request, self._arequest)
            if len(self._caches) < 256:  # names made up at run time must not pile up
                cache = self._caches.setdefault(name, cache)
        return cache

    __getitem__ = get_cache

    @property
    def default(self) -> Cache:
        """The ``default`` cache."""
        return self.get_cache('default')

    def __repr__(self) -> str:
        return '<CacheAPI>'
