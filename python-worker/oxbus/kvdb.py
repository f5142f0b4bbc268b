"""``self.out.redis``: the server's outgoing Redis connections, and Zato's ``self.kvdb.conn``.

::

    r = self.out.redis['cache']                 # values as bytes (redis-py's default)
    r.set('user:1', b'...', ex=60)
    r.get('user:1')                             # b'...' or None
    r.hset('h', mapping={'a': 1}); r.hgetall('h')
    with r.pipeline() as p:                     # MULTI/EXEC (transaction=True, redis-py's default)
        p.incr('n').expire('n', 10)
        n, _ = p.execute()
    r.execute('OBJECT', 'ENCODING', 'user:1')   # any command the connection allows
    await r.aget('user:1')                      # every method has an awaitable a* form

    s = self.out.redis.get('cache', decode_responses=True)   # values as str
    self.kvdb.conn.get('key')                   # Zato 3.2: str values

The connection (address, password, pool) is defined on the server (docs/CONNECTORS.md,
"Redis"), which keeps its multiplexed connections; the password never reaches the worker.
Each method is one ``out.redis`` call of the IPC protocol (ipc-protocol/SPEC.md), a
pipeline one call for all its commands.

**Replies** keep Redis's types: nil → None, integer → int, bulk string → bytes (str with
``decode_responses``), simple string (``OK``, ``PONG``...) → str, array → list; an error
reply raises :class:`RedisError` (a pipeline's are raised after the pipeline ran, or
returned in place with ``execute(raise_on_error=False)``). The named methods then shape
the reply as redis-py does (``set`` → True/None, ``hgetall`` → dict, ``smembers`` → set,
``sismember``/``expire``/``persist`` → bool, ``zscore`` → float...); :meth:`Redis.execute`
does not. **Arguments**: bytes as they are, str as UTF-8, int and float as their decimal
text (``repr`` for a float); anything else (None, bool...) raises :class:`InvalidCall`.

Errors: :class:`RedisError` (``.message`` is Redis's own text, ``WRONGTYPE Operation against
a key holding the wrong kind of value``; ``.code`` its first word; ``str()`` names the
connection), :class:`OutgoingTimeout` (no answer within the connection's ``timeout_ms``),
:class:`OutgoingConnectionError` (cannot connect, connection lost),
:class:`UnknownConnection`, :class:`InvalidCall` (a refused command: SELECT, AUTH,
SUBSCRIBE, BLPOP... which would hijack the shared connection).
"""

from __future__ import annotations

import struct
import sys

from ._outcall import (Caller, InvalidCall, OutgoingConnectionError, OutgoingError,
                       OutgoingTimeout, RedisError, UnknownConnection, raise_error)
from ._protocol import decode_json, encode_json

TYPE_CHECKING = False  # see _protocol.py: keep ``typing`` out of the worker's startup
if TYPE_CHECKING:
    from typing import Any, Awaitable, Callable, Dict, Iterator, List, Optional, Tuple

__all__ = ['RedisConnections', 'Redis', 'Pipeline', 'KVDB', 'RedisError', 'OutgoingTimeout',
           'OutgoingConnectionError', 'UnknownConnection', 'InvalidCall']

_U32 = struct.Struct('>I')
_I64 = struct.Struct('>q')
_pack_u32 = _U32.pack
_unpack_u32 = _U32.unpack_from
_unpack_i64 = _I64.unpack_from


# -- the body format of out.redis ---------------------------------------------------------

def _arg(conn: Optional[str], a: Any) -> bytes:
    t = type(a)
    if t is bytes:
        raw: bytes = a
        return raw
    if t is str:
        text: str = a
        return text.encode('utf-8')
    if t is int:
        return b'%d' % a
    if t is float:
        return repr(a).encode('ascii')
    if isinstance(a, (bytearray, memoryview)):
        return bytes(a)
    if isinstance(a, int) and not isinstance(a, bool):
        return b'%d' % int(a)
    raise InvalidCall('%s: a Redis argument is bytes, str, int or float, not %s (%r): '
                      'convert it first' % (_label(conn), t.__name__, a), conn, 'invalid')


def _command(conn: Optional[str], args: Tuple[Any, ...], parts: List[bytes]) -> None:
    if not args:
        raise InvalidCall('%s: a command needs at least its name' % _label(conn), conn,
                          'invalid')
    parts.append(_pack_u32(len(args)))
    for a in args:
        b = _arg(conn, a)
        parts.append(_pack_u32(len(b)))
        parts.append(b)


def _value(data: bytes, pos: int, decode: bool) -> Tuple[Any, int]:
    """One reply value at ``pos``: (value, position after it)."""
    tag = data[pos]
    if tag == 0x24:  # '$' bulk string
        n = _unpack_u32(data, pos + 1)[0]
        end = pos + 5 + n
        b = data[pos + 5:end]
        return (b.decode('utf-8') if decode else b), end
    if tag == 0x3a:  # ':' integer
        return _unpack_i64(data, pos + 1)[0], pos + 9
    if tag == 0x5f:  # '_' nil
        return None, pos + 1
    if tag == 0x2b:  # '+' simple string
        n = _unpack_u32(data, pos + 1)[0]
        end = pos + 5 + n
        return data[pos + 5:end].decode('utf-8'), end
    if tag == 0x2a:  # '*' array
        n = _unpack_u32(data, pos + 1)[0]
        pos += 5
        items = []
        for _ in range(n):
            v, pos = _value(data, pos, decode)
            items.append(v)
        return items, pos
    if tag == 0x2d:  # '-' error element
        n = _unpack_u32(data, pos + 1)[0]
        end = pos + 5 + n
        return _ErrorReply(data[pos + 5:end].decode('utf-8', 'replace')), end
    raise OutgoingError('unreadable Redis reply from the server (tag %r at %d)'
                        % (chr(tag), pos))


class _ErrorReply(str):
    """An error element of a pipeline's replies (Redis's message)."""

    __slots__ = ()


#: The REPLY metas seen, parsed once (a success's is the same few bytes every time).
_reply_metas: Dict[bytes, Dict[str, Any]] = {}


def _checked(who: str, raw: bytes, data: bytes) -> bytes:
    """The REPLY's body, or the exception of its ``error``."""
    meta = _reply_metas.get(raw)
    if meta is None:
        try:
            meta = decode_json(raw)
        except ValueError:
            meta = None
        if not isinstance(meta, dict):
            raise OutgoingError('%s: unreadable answer from the server: %r' % (who, raw[:200]),
                                who)
        if meta.get('error') is not None:
            raise_error(who, meta, data)
        if len(_reply_metas) < 64:
            _reply_metas[raw] = meta
    return data


def _label(conn: Optional[str]) -> str:
    return 'self.kvdb.conn' if conn is None else 'Redis connection %r' % conn


# -- reply shapes (redis-py's) ------------------------------------------------------------

def _ok(r: Any) -> Optional[bool]:
    return True if r == 'OK' else None


def _true(r: Any) -> bool:
    return True


def _bool(r: Any) -> bool:
    return bool(r)


def _pairs(r: Any) -> Dict[Any, Any]:
    return dict(zip(r[::2], r[1::2])) if r else {}


def _set_of(r: Any) -> Any:
    return set(r) if r is not None else set()


def _float(r: Any) -> Optional[float]:
    return float(r) if r is not None else None


def _same(r: Any) -> Any:
    return r


def _seconds(t: Any) -> int:
    ts = getattr(t, 'total_seconds', None)
    return int(ts()) if ts is not None else t


def _millis(t: Any) -> int:
    ts = getattr(t, 'total_seconds', None)
    return int(ts() * 1000) if ts is not None else t


def _list(x: Any) -> List[Any]:
    return list(x) if isinstance(x, (list, tuple)) else [x]


# -- the commands, once for connections and pipelines -------------------------------------

class _Commands:
    """The named commands. Each builds its arguments and reply shape and hands them to
    ``_run`` (a connection runs it now, a pipeline queues it); each has an awaitable
    ``a<name>`` form on a connection (see :func:`_awaitable`)."""

    __slots__ = ()

    def _run(self, args: Tuple[Any, ...], shape: Callable[[Any], Any]) -> Any:
        raise NotImplementedError

    # strings and keys
    def get(self, name: Any) -> Any:
        return self._run(('GET', name), _same)

    def set(self, name: Any, value: Any, ex: Any = None, px: Any = None, nx: bool = False,
            xx: bool = False, keepttl: bool = False, get: bool = False) -> Any:
        """SET; True when set, None when ``nx``/``xx`` kept it from being set; with
        ``get=True`` the old value. ``ex`` seconds, ``px`` milliseconds (int or timedelta)."""
        args: List[Any] = ['SET', name, value]
        if ex is not None:
            args += ['EX', _seconds(ex)]
        if px is not None:
            args += ['PX', _millis(px)]
        if nx:
            args.append('NX')
        if xx:
            args.append('XX')
        if keepttl:
            args.append('KEEPTTL')
        if get:
            args.append('GET')
        return self._run(tuple(args), _same if get else _ok)

    def delete(self, *names: Any) -> Any:
        return self._run(('DEL',) + names, _same)

    def exists(self, *names: Any) -> Any:
        return self._run(('EXISTS',) + names, _same)

    def incr(self, name: Any, amount: int = 1) -> Any:
        return self._run(('INCRBY', name, amount), _same)

    incrby = incr

    def decr(self, name: Any, amount: int = 1) -> Any:
        return self._run(('DECRBY', name, amount), _same)

    decrby = decr

    def expire(self, name: Any, time: Any) -> Any:
        return self._run(('EXPIRE', name, _seconds(time)), _bool)

    def ttl(self, name: Any) -> Any:
        return self._run(('TTL', name), _same)

    def persist(self, name: Any) -> Any:
        return self._run(('PERSIST', name), _bool)

    def mget(self, keys: Any, *args: Any) -> Any:
        return self._run(('MGET',) + tuple(_list(keys)) + args, _same)

    def mset(self, mapping: Dict[Any, Any]) -> Any:
        args: List[Any] = ['MSET']
        for k, v in mapping.items():
            args += [k, v]
        return self._run(tuple(args), _true)

    def keys(self, pattern: Any = '*') -> Any:
        return self._run(('KEYS', pattern), _same)

    def scan(self, cursor: int = 0, match: Any = None, count: Optional[int] = None,
             _type: Any = None) -> Any:
        """SCAN: (next cursor, keys); cursor 0 when done."""
        args: List[Any] = ['SCAN', cursor]
        if match is not None:
            args += ['MATCH', match]
        if count is not None:
            args += ['COUNT', count]
        if _type is not None:
            args += ['TYPE', _type]
        return self._run(tuple(args), lambda r: (int(r[0]), r[1]))

    def publish(self, channel: Any, message: Any) -> Any:
        return self._run(('PUBLISH', channel, message), _same)

    def ping(self) -> Any:
        return self._run(('PING',), lambda r: r == 'PONG')

    # hashes
    def hget(self, name: Any, key: Any) -> Any:
        return self._run(('HGET', name, key), _same)

    def hset(self, name: Any, key: Any = None, value: Any = None,
             mapping: Optional[Dict[Any, Any]] = None, items: Optional[List[Any]] = None
             ) -> Any:
        """HSET of ``key``/``value``, the pairs of ``mapping`` and the flat ``items``:
        the number of fields added."""
        args: List[Any] = ['HSET', name]
        if key is not None:
            args += [key, value]
        if mapping:
            for k, v in mapping.items():
                args += [k, v]
        if items:
            args += list(items)
        if len(args) == 2:
            raise InvalidCall('%s: hset needs key and value, mapping or items'
                              % _label(self._conn_name()), self._conn_name(), 'invalid')
        return self._run(tuple(args), _same)

    def hgetall(self, name: Any) -> Any:
        return self._run(('HGETALL', name), _pairs)

    def hdel(self, name: Any, *keys: Any) -> Any:
        return self._run(('HDEL', name) + keys, _same)

    def hincrby(self, name: Any, key: Any, amount: int = 1) -> Any:
        return self._run(('HINCRBY', name, key, amount), _same)

    def hkeys(self, name: Any) -> Any:
        return self._run(('HKEYS', name), _same)

    def hvals(self, name: Any) -> Any:
        return self._run(('HVALS', name), _same)

    def hlen(self, name: Any) -> Any:
        return self._run(('HLEN', name), _same)

    def hexists(self, name: Any, key: Any) -> Any:
        return self._run(('HEXISTS', name, key), _bool)

    # lists
    def lpush(self, name: Any, *values: Any) -> Any:
        return self._run(('LPUSH', name) + values, _same)

    def rpush(self, name: Any, *values: Any) -> Any:
        return self._run(('RPUSH', name) + values, _same)

    def lpop(self, name: Any, count: Optional[int] = None) -> Any:
        args = ('LPOP', name) if count is None else ('LPOP', name, count)
        return self._run(args, _same)

    def rpop(self, name: Any, count: Optional[int] = None) -> Any:
        args = ('RPOP', name) if count is None else ('RPOP', name, count)
        return self._run(args, _same)

    def lrange(self, name: Any, start: int, end: int) -> Any:
        return self._run(('LRANGE', name, start, end), _same)

    def llen(self, name: Any) -> Any:
        return self._run(('LLEN', name), _same)

    # sets
    def sadd(self, name: Any, *values: Any) -> Any:
        return self._run(('SADD', name) + values, _same)

    def srem(self, name: Any, *values: Any) -> Any:
        return self._run(('SREM', name) + values, _same)

    def smembers(self, name: Any) -> Any:
        return self._run(('SMEMBERS', name), _set_of)

    def sismember(self, name: Any, value: Any) -> Any:
        return self._run(('SISMEMBER', name, value), _bool)

    def scard(self, name: Any) -> Any:
        return self._run(('SCARD', name), _same)

    # sorted sets
    def zadd(self, name: Any, mapping: Any = None, *pairs: Any, nx: bool = False,
             xx: bool = False, ch: bool = False, incr: bool = False, **kwargs: Any) -> Any:
        """ZADD of ``{member: score}`` (redis-py 3+); the number added (changed with
        ``ch``); with ``incr`` (one member) its new score, or None.

        Zato 3.2's redis-py 2.x form is accepted too: ``zadd(name, score, member[, score,
        member...])`` (StrictRedis's order) and ``member=score`` keywords."""
        args: List[Any] = ['ZADD', name]
        if nx:
            args.append('NX')
        if xx:
            args.append('XX')
        if ch:
            args.append('CH')
        if incr:
            args.append('INCR')
        if isinstance(mapping, dict):
            if pairs or kwargs:
                raise TypeError('zadd: give a {member: score} mapping or score, member '
                                'pairs, not both')
            for member, score in mapping.items():
                args += [score, member]
        else:
            flat = ((mapping,) if mapping is not None else ()) + pairs
            if len(flat) % 2:
                raise TypeError('zadd: score, member arguments come in pairs')
            args += flat
            for member, score in kwargs.items():
                args += [score, member]
            if len(args) == 2 + nx + xx + ch + incr:
                raise TypeError('zadd: nothing to add')
        return self._run(tuple(args), _float if incr else _same)

    def zrange(self, name: Any, start: int, end: int, desc: bool = False,
               withscores: bool = False, score_cast_func: Callable[[Any], Any] = float
               ) -> Any:
        """ZRANGE by index (ZREVRANGE with ``desc``, as redis-py: any Redis version):
        members, or ``(member, score)`` tuples with ``withscores``."""
        args: List[Any] = ['ZREVRANGE' if desc else 'ZRANGE', name, start, end]
        if withscores:
            args.append('WITHSCORES')

            def shape(r: Any) -> Any:
                return [(m, score_cast_func(s)) for m, s in zip(r[::2], r[1::2])]
            return self._run(tuple(args), shape)
        return self._run(tuple(args), _same)

    def zrem(self, name: Any, *values: Any) -> Any:
        return self._run(('ZREM', name) + values, _same)

    def zscore(self, name: Any, value: Any) -> Any:
        return self._run(('ZSCORE', name, value), _float)

    def zcard(self, name: Any) -> Any:
        return self._run(('ZCARD', name), _same)

    # any command
    def execute_command(self, *args: Any) -> Any:
        """Any command the connection allows, its reply as Redis's types map (no shaping)."""
        return self._run(args, _same)

    def _conn_name(self) -> Optional[str]:
        raise NotImplementedError


#: The named commands, for their a* forms.
_NAMED = [n for n, v in vars(_Commands).items()
          if callable(v) and not n.startswith('_') and n != 'execute_command']


class Redis(_Commands):
    """One Redis connection of the server: ``self.out.redis['name']``. Cheap to make: the
    server holds the connections. ``decode_responses``: bulk string replies as str (UTF-8)
    instead of bytes, as redis-py's option."""

    __slots__ = ('_caller', '_conn', '_decode', '_head', '_one')

    def __init__(self, caller: Caller, conn: Optional[str],
                 decode_responses: bool = False, timeout: Optional[float] = None) -> None:
        self._caller = caller
        self._conn = conn
        self._decode = decode_responses
        # The meta, built as JSON bytes once: ``conn``, or ``kvdb`` for self.kvdb.conn (the
        # server picks); ``deadline_ms`` when the handle has a ``timeout`` (seconds: a call
        # then waits at most that, or the connection's timeout_ms if shorter). No cid or
        # trace context: Redis has nowhere to carry them.
        self._head = (b'{"op":"out.redis","conn":' + encode_json(conn) if conn is not None
                      else b'{"op":"out.redis","kvdb":true')
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or \
                    timeout <= 0:
                raise ValueError('timeout is a positive number of seconds, not %r'
                                 % (timeout,))
            self._head += b',"deadline_ms":%d' % max(1, int(timeout * 1000))
        self._one = self._head + b'}'

    if TYPE_CHECKING:
        # The ``a<command>`` forms are set on the class below, one per named command: to a
        # type checker each is an awaitable method taking what the command takes.
        def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]: ...

    @property
    def name(self) -> Optional[str]:
        """The connection's name (None for ``self.kvdb.conn``: the server picks it)."""
        return self._conn

    @property
    def decode_responses(self) -> bool:
        return self._decode

    def _conn_name(self) -> Optional[str]:
        return self._conn

    def _meta(self, n: int, transaction: bool) -> bytes:
        """A pipeline's meta."""
        return (self._head + b',"n":%d' % n + (b',"transaction":true' if transaction else b'')
                + b'}')

    def _send(self, meta: bytes, body: bytes) -> bytes:
        """One call, waited for: the REPLY's body, or its exception."""
        asyncio = sys.modules.get('asyncio')
        if asyncio is not None and asyncio._get_running_loop() is not None:
            raise RuntimeError(
                '%s: a blocking Redis call from a coroutine would stall the event loop (every '
                'async service of this worker): inside async def use the awaitable forms, e.g. '
                'await r.aget(...), await r.aexecute(...), await pipeline.aexecute()'
                % self._label())
        raw, data = self._caller.request(meta, body)
        return _checked(self._who(), raw, data)

    async def _asend(self, meta: bytes, body: bytes) -> bytes:
        """:meth:`_send` for coroutines."""
        arequest = self._caller.arequest
        if arequest is None:
            raise RuntimeError('not running inside an oxbus worker: there is no server to '
                               'call')
        raw, data = await arequest(meta, body)
        return _checked(self._who(), raw, data)

    def _label(self) -> str:
        return _label(self._conn)

    def _who(self) -> str:
        """The name errors carry as ``conn``."""
        return self._conn if self._conn is not None else 'self.kvdb.conn'

    def _answer(self, data: bytes) -> Any:
        try:
            v, end = _value(data, 0, self._decode)
        except (IndexError, struct.error):
            raise OutgoingError('%s: a truncated reply from the server' % self._label(),
                                self._conn) from None
        return v

    def _run(self, args: Tuple[Any, ...], shape: Callable[[Any], Any]) -> Any:
        parts: List[bytes] = []
        _command(self._conn, args, parts)
        return shape(self._answer(self._send(self._one, b''.join(parts))))

    async def _arun(self, args: Tuple[Any, ...], shape: Callable[[Any], Any]) -> Any:
        parts: List[bytes] = []
        _command(self._conn, args, parts)
        return shape(self._answer(await self._asend(self._one, b''.join(parts))))

    def execute(self, *args: Any) -> Any:
        """Any command the connection allows: ``execute('HSET', 'h', 'f', 1)``; the reply
        as Redis's types map (nil None, int, bytes, simple string str, list)."""
        return self._run(args, _same)

    async def aexecute(self, *args: Any) -> Any:
        """:meth:`execute` for coroutines."""
        return await self._arun(args, _same)

    def pipeline(self, transaction: bool = True) -> Pipeline:
        """Commands queued and sent together by ``execute()`` (one call): inside
        MULTI/EXEC when ``transaction`` (redis-py's default, as Zato's
        ``self.kvdb.conn.pipeline()`` relies on)."""
        return Pipeline(self, transaction)

    def scan_iter(self, match: Any = None, count: Optional[int] = None,
                  _type: Any = None) -> Iterator[Any]:
        """Every key (matching ``match``) by SCAN, one call per batch."""
        cursor = 0
        while True:
            cursor, keys = self.scan(cursor, match=match, count=count, _type=_type)
            yield from keys
            if cursor == 0:
                return

    async def ascan_iter(self, match: Any = None, count: Optional[int] = None,
                         _type: Any = None) -> Any:
        """:meth:`scan_iter` for coroutines (``async for key in r.ascan_iter()``)."""
        cursor = 0
        while True:
            cursor, keys = await self.ascan(cursor, match=match, count=count, _type=_type)
            for k in keys:
                yield k
            if cursor == 0:
                return

    def __repr__(self) -> str:
        return '<Redis %s>' % ('self.kvdb.conn' if self._conn is None else repr(self._conn))


def _awaitable(name: str) -> Callable[..., Any]:
    """``a<name>``: the named command for coroutines (same arguments, awaited reply)."""
    sync = getattr(_Commands, name)

    async def method(self: Redis, *args: Any, **kwargs: Any) -> Any:
        queued = _Queue(self._conn)
        sync(queued, *args, **kwargs)
        (args_, shape), = queued.commands
        return await self._arun(args_, shape)

    method.__name__ = 'a' + name
    method.__qualname__ = 'Redis.a' + name
    method.__doc__ = ':meth:`%s` for coroutines.' % name
    return method


class _Queue(_Commands):
    """Collects what the named commands build (for the a* forms and pipelines)."""

    __slots__ = ('commands', '_conn')

    def __init__(self, conn: Optional[str]) -> None:
        self.commands: List[Tuple[Tuple[Any, ...], Callable[[Any], Any]]] = []
        self._conn = conn

    def _run(self, args: Tuple[Any, ...], shape: Callable[[Any], Any]) -> Any:
        self.commands.append((args, shape))
        return self

    def _conn_name(self) -> Optional[str]:
        return self._conn


for _name in _NAMED:
    setattr(Redis, 'a' + _name, _awaitable(_name))
del _name


class Pipeline(_Queue):
    """``r.pipeline(transaction=True)``: the named commands (and ``execute_command``) are
    queued, each returning the pipeline (so they chain), and sent in one call by
    :meth:`execute` (or awaited :meth:`aexecute`), which returns their replies in order,
    shaped as the methods' own. A ``with`` block discards what was not executed."""

    __slots__ = ('_redis', 'transaction')

    def __init__(self, redis: Redis, transaction: bool = True) -> None:
        super().__init__(redis._conn)
        self._redis = redis
        self.transaction = transaction

    def __len__(self) -> int:
        return len(self.commands)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the queued commands."""
        self.commands = []

    def _request(self) -> Tuple[bytes, bytes]:
        parts: List[bytes] = []
        for args, _ in self.commands:
            _command(self._conn, args, parts)
        return (self._redis._meta(len(self.commands), self.transaction), b''.join(parts))

    def _replies(self, data: bytes, raise_on_error: bool) -> List[Any]:
        commands, self.commands = self.commands, []
        replies = self._redis._answer(data)
        out: List[Any] = []
        first_error = None
        for i, ((args, shape), r) in enumerate(zip(commands, replies)):
            if isinstance(r, _ErrorReply):
                err = _redis_error(self._conn, str(r), 'command %d (%s) of the %s' % (
                    i, _name_of(args), 'transaction' if self.transaction else 'pipeline'))
                if first_error is None:
                    first_error = err
                out.append(err)
            else:
                out.append(shape(r))
        if raise_on_error and first_error is not None:
            raise first_error
        return out

    def execute(self, raise_on_error: bool = True) -> List[Any]:
        """Sends the queued commands (one call) and returns their replies; the pipeline is
        empty again. An error reply of a command raises :class:`RedisError` once all ran
        (``raise_on_error=False``: the error in its place instead). In a transaction a
        command Redis refused to queue (unknown, wrong arguments) aborts it: nothing
        runs and :class:`RedisError` (``EXECABORT``) is raised."""
        if not self.commands:
            return []
        meta, body = self._request()
        try:
            data = self._redis._send(meta, body)
        except BaseException:
            self.commands = []
            raise
        return self._replies(data, raise_on_error)

    async def aexecute(self, raise_on_error: bool = True) -> List[Any]:
        """:meth:`execute` for coroutines."""
        if not self.commands:
            return []
        meta, body = self._request()
        try:
            data = await self._redis._asend(meta, body)
        except BaseException:
            self.commands = []
            raise
        return self._replies(data, raise_on_error)

    def __repr__(self) -> str:
        return '<Pipeline of %r, %d command(s)%s>' % (
            self._redis, len(self.commands), ', transaction' if self.transaction else '')


def _name_of(args: Tuple[Any, ...]) -> str:
    a = args[0]
    return a.decode('utf-8', 'replace') if isinstance(a, (bytes, bytearray)) else str(a)


def _redis_error(conn: Optional[str], message: str, where: str) -> RedisError:
    return RedisError('%s: %s: %s' % (_label(conn), where, message), conn, 'redis', 400,
                      code=message.split(' ', 1)[0], redis_message=message)


class RedisConnections:
    """``self.out.redis``: the Redis connections by name (``self.out.redis['cache']``, or
    ``.get('cache', decode_responses=True)``). Names are checked by the server at call
    time."""

    __slots__ = ('_caller', '_conns', '_kvdb')

    def __init__(self, caller: Caller) -> None:
        self._caller = caller
        self._conns: Dict[Tuple[str, bool], Redis] = {}
        self._kvdb: Optional[KVDB] = None

    def __getitem__(self, name: str) -> Redis:
        return self.get(name)

    def get(self, name: str, decode_responses: bool = False,
            timeout: Optional[float] = None) -> Redis:
        """The handle of connection ``name``; ``timeout`` (seconds): its calls wait at most
        that (sent as ``deadline_ms``; the connection's ``timeout_ms`` still bounds them),
        as rest's ``timeout=``."""
        if timeout is not None:
            return Redis(self._caller, name, bool(decode_responses), timeout)
        key = (name, bool(decode_responses))
        r = self._conns.get(key)
        if r is None:
            if not isinstance(name, str):
                raise TypeError('connection names are strings, not %s' % type(name).__name__)
            r = Redis(self._caller, name, bool(decode_responses))
            if len(self._conns) < 256:
                r = self._conns.setdefault(key, r)
        return r

    @property
    def kvdb(self) -> KVDB:
        """Zato's ``self.kvdb`` (see :class:`KVDB`)."""
        k = self._kvdb
        if k is None:
            k = self._kvdb = KVDB(Redis(self._caller, None, decode_responses=True))
        return k

    def __repr__(self) -> str:
        return '<RedisConnections>'


class KVDB:
    """Zato 3.2's ``self.kvdb``: ``conn`` is its redis-py client, here the server's Redis
    connection named ``kvdb``, else the one named ``default`` (the server picks it at each
    call), with ``decode_responses=True`` as Zato's returns str. What maps: the methods of
    :class:`Redis` (get, set, delete, hset, hgetall, lpush, lrange, pipeline() as a
    transaction...); what does not: redis-py's connection-level objects
    (``connection_pool``, ``pubsub()``, ``lock()``, blocking commands)."""

    __slots__ = ('conn',)

    def __init__(self, conn: Redis) -> None:
        #: The Redis connection (:class:`Redis`).
        self.conn = conn

    def __repr__(self) -> str:
        return '<KVDB>'
