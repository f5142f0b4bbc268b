"""Unit tests of services without a server: :class:`TestClient`.

::

    from oxbus.testing import TestClient

    def test_greets_and_counts_visits():
        client = TestClient(Greet, outgoing={'CRM': lambda call: {'title': 'Dr'}},
                            cache={'visits:Ann': 41})
        r = client.post({'name': 'Ann', 'greeting': 'Hi'})
        assert r.status == 200
        assert r.json == {'text': 'Hi, Dr Ann!', 'visits': 42}
        assert client.cache.default.get('visits:Ann') == 42

(``python-worker/examples``; the reference is ``docs/TESTING.md``.)

The client runs the service in this process through the worker's own dispatcher (the code
that runs it under a server: the ``CALL`` a channel would send, SimpleIO or model input,
``before_handle``/``after_handle`` and Zato's hooks, the handler, output filtering, the
exception → status mapping, the ``REPLY`` it encodes) and decodes that ``REPLY`` into a
:class:`Result`. Sync and ``async def`` services, Oxbus and Zato-style ones alike.

What a service asks of its server goes to an in-memory server of the client's instead,
which answers the same wire calls the real one does (``ipc-protocol/SPEC.md``), so the
service's own ``self.cache``, ``self.secrets``, ``self.user_config``, ``self.out``,
``self.pubsub.publish`` and ``self.invoke`` code runs unchanged:

- caches: ``cache={...}`` (the ``default`` cache's entries), ``caches={'name': {...}}``
  (other caches, which exist only when named here), with the server's semantics (expiry,
  ``incr``, ``keys``...) on a clock of the client's own: :meth:`TestClient.advance` moves
  it, so expiry is tested without sleeping;
- ``secrets={...}`` and ``user_config={...}``: the values there are;
- ``self.invoke``: ``services=[...]`` (real service classes, run as they would be) and
  ``invoke={'name': stub}`` (a callable taking the payload and returning the callee's
  answer, or a fixed answer), recorded in :attr:`TestClient.invoked`;
- ``self.invoke_async``: recorded in :attr:`TestClient.invoked_async`, not run;
- outgoing connections: ``outgoing={'CRM': stub}`` (any kind; ``'rest:CRM'`` for one
  kind only), a callable taking an :class:`OutCall` or a fixed answer (an
  :class:`HTTPAnswer` or a JSON value for REST, a :class:`SqlAnswer` or rows for SQL...);
  the service gets what the real server would send back for that answer. Every call is in
  :attr:`TestClient.outgoing_calls`;
- ``self.pubsub.publish``: recorded in :attr:`TestClient.published`.

Anything a service uses that the client was not given (a service to invoke, an outgoing
connection, a server call the client does not answer) raises :class:`NotStubbed` from the
client's call, naming the argument to give, even when the service caught the error. An
exception of a stub's own (a failed ``assert`` in it) is raised from the call the same way:
a stub hands the service only what the server would (an ``oxbus.outgoing`` error; for an
``invoke`` stub, a :class:`~oxbus.Reportable` too). A missing cache key, secret or user
config is not that: the service gets what a server without it answers (None,
``KeyError``...).

The client's calls run the service in the calling thread (``async def`` services with
``asyncio.run``; :meth:`TestClient.acall` awaits them from a coroutine, and runs a sync
service in a thread, off the event loop). This module is
imported only by tests (the worker never imports it).
"""

from __future__ import annotations

import base64
import copy
import itertools
import os
import struct
from collections.abc import Mapping

from ._dispatch import Dispatcher
from ._outcall import OutgoingError
from ._protocol import HEADER_SIZE, decode_call, decode_json, encode_json
from .cache import CacheAPI
from .errors import Reportable
from .service import Headers, Service

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, Iterable, List, Optional, Tuple, Type

__all__ = ['TestClient', 'Result', 'NotStubbed', 'OutCall', 'HTTPAnswer', 'SqlAnswer',
           'Invoked', 'AsyncInvoke', 'Published']

_JSON = 'application/json'
_TEXT = 'text/plain; charset=utf-8'
_BYTES = 'application/octet-stream'
_PORT = 17010  # the port an HTTP call of the client's came to (the server's default)
_MAX_KEY_LEN = 4096
_MAX_ITEM_SIZE = 1024 * 1024  # a cache's max_item_size unless defined (cache/src/def.rs)
_MAX_ITEM_SIZE_LIMIT = 16 * 1024 * 1024  # the largest a definition may give
_MAX_EXPIRY_S = 10 * 366 * 24 * 3600  # the server's ten years (cache/src/def.rs)
# The headers of an outgoing REST call that are the server's, refused as invalid (SPEC.md).
_RESERVED_HEADERS = ('host', 'content-length', 'transfer-encoding', 'connection')
_I64 = struct.Struct('>q')
_U32 = struct.Struct('>I')
_MISSING = object()


class NotStubbed(AssertionError):
    """The service used something the :class:`TestClient` was not given: the message says
    what, and which argument of ``TestClient`` gives it."""


# -- what the client records ---------------------------------------------------------------


class Invoked:
    """A ``self.invoke`` of a stub given in ``invoke=``: the service's name and payload."""

    __slots__ = ('service', 'payload')

    def __init__(self, service: str, payload: Any) -> None:
        self.service = service
        self.payload = payload

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Invoked) and other.service == self.service
                and other.payload == self.payload)

    def __repr__(self) -> str:
        return 'Invoked(%r, %r)' % (self.service, self.payload)


class AsyncInvoke:
    """A ``self.invoke_async``: the service named, its payload (the JSON decoded; bytes
    that are not JSON as they are), its ``cid`` and the whole ``CALL`` meta."""

    __slots__ = ('service', 'payload', 'cid', 'meta')

    def __init__(self, service: str, payload: Any, cid: str, meta: Dict[str, Any]) -> None:
        self.service = service
        self.payload = payload
        self.cid = cid
        self.meta = meta

    def __repr__(self) -> str:
        return 'AsyncInvoke(%r, %r, cid=%r)' % (self.service, self.payload, self.cid)


class Published:
    """A message ``self.pubsub.publish`` published: ``topic``, ``data`` (bytes as sent),
    ``payload`` (the data decoded as the publisher's ``mime_type`` says: JSON, text or
    bytes), ``msg_id`` (the one the service got back) and the message's ``meta``
    (``priority``, ``mime_type``, ``correl_id``...)."""

    __slots__ = ('topic', 'data', 'meta', 'msg_id')

    def __init__(self, topic: str, data: bytes, meta: Dict[str, Any], msg_id: str) -> None:
        self.topic = topic
        self.data = data
        self.meta = meta
        self.msg_id = msg_id

    @property
    def payload(self) -> Any:
        mime = str(self.meta.get('mime_type') or '')
        if mime.startswith(_JSON):
            return decode_json(self.data)
        if mime.startswith('text/'):
            return self.data.decode('utf-8', 'replace')
        return self.data

    def __repr__(self) -> str:
        return 'Published(%r, %r)' % (self.topic, self.data)


class OutCall:
    """One call of an outgoing connection, as the server receives it: ``kind``
    (``'rest'``, ``'sql'``, ``'amqp'``, ``'mqtt'``, ``'redis'``), ``conn`` (its name),
    ``meta`` (the wire call's meta) and ``body``; and per kind:

    - REST: ``method``, ``params`` (path and query parameters, as given), ``headers``,
      ``content_type``, ``data`` (the JSON body decoded, None without one), ``body``;
    - SQL: ``action`` (``execute``, ``stream``, ``begin``, ``commit``, ``rollback``...),
      ``sql``, ``params``, ``tx`` (the transaction's id, None outside one);
    - AMQP: ``exchange``, ``routing_key``, ``properties``, ``body``;
    - MQTT: ``topic``, ``qos``, ``retain``, ``body``;
    - Redis: ``commands``, a list of commands, each a list of its arguments (bytes, the
      command's name first).
    """

    __slots__ = ('kind', 'conn', 'meta', 'body', '_doc')

    def __init__(self, kind: str, conn: str, meta: Dict[str, Any], body: bytes) -> None:
        self.kind = kind
        self.conn = conn
        self.meta = meta
        self.body = body
        self._doc: Any = _MISSING

    @property
    def method(self) -> Optional[str]:
        return self.meta.get('method')

    @property
    def headers(self) -> Dict[str, str]:
        """REST: the headers the service gave (``Content-Type`` is :attr:`content_type`)."""
        return dict(self.meta.get('headers') or {})

    @property
    def content_type(self) -> Optional[str]:
        """REST: the body's ``Content-Type`` when the service gave one."""
        return self.meta.get('content_type')

    @property
    def action(self) -> Optional[str]:
        return self.meta.get('action')

    @property
    def tx(self) -> Optional[int]:
        return self.meta.get('tx')

    @property
    def exchange(self) -> Optional[str]:
        return self.meta.get('exchange')

    @property
    def routing_key(self) -> Optional[str]:
        return self.meta.get('routing_key')

    @property
    def properties(self) -> Dict[str, Any]:
        return dict(self.meta.get('properties') or {})

    @property
    def topic(self) -> Optional[str]:
        return self.meta.get('topic')

    @property
    def qos(self) -> Optional[int]:
        return self.meta.get('qos')

    @property
    def retain(self) -> bool:
        return bool(self.meta.get('retain'))

    def _sql_doc(self) -> Dict[str, Any]:
        if self._doc is _MISSING:
            self._doc = decode_json(self.body) if self.body else {}
        return self._doc  # type: ignore[no-any-return]

    @property
    def params(self) -> Any:
        """REST: the parameters the service gave (a dict); SQL: the statement's bind
        parameters (a list, a dict or None), encoded as the server gets them."""
        if self.kind == 'sql':
            return self._sql_doc().get('params')
        return dict(self.meta.get('params') or {})

    @property
    def sql(self) -> Optional[str]:
        return self._sql_doc().get('sql') if self.kind == 'sql' else None

    @property
    def data(self) -> Any:
        """A REST call's body as JSON (None when empty or not JSON)."""
        if not self.body:
            return None
        try:
            return decode_json(self.body)
        except ValueError:
            return None

    @property
    def commands(self) -> List[List[bytes]]:
        """A Redis call's commands, each a list of its arguments."""
        if self.kind != 'redis':
            return []
        out, pos, body = [], 0, self.body
        while pos < len(body):
            argc = _U32.unpack_from(body, pos)[0]
            pos += 4
            args = []
            for _ in range(argc):
                n = _U32.unpack_from(body, pos)[0]
                args.append(body[pos + 4:pos + 4 + n])
                pos += 4 + n
            out.append(args)
        return out

    def __repr__(self) -> str:
        if self.kind == 'rest':
            detail = '%s %r' % (self.method, self.params)
        elif self.kind == 'sql':
            detail = '%s %r' % (self.action, self.sql)
        elif self.kind == 'redis':
            detail = repr(self.commands)
        else:
            detail = repr(self.body)
        return '<OutCall %s %s: %s>' % (self.kind, self.conn, detail)


class HTTPAnswer:
    """What a REST stub answers when a plain JSON value (200) is not enough: ``status``,
    ``json`` (a JSON value) or ``text`` or ``body`` (bytes), ``headers``.

    A stub may also answer a dict or list (200, JSON), a str (200, text), bytes (200,
    ``application/octet-stream``) or None (204)."""

    __slots__ = ('status', 'headers', 'body')

    def __init__(self, status: int = 200, json: Any = _MISSING, text: Optional[str] = None,
                 body: Optional[bytes] = None, headers: Optional[Mapping[str, str]] = None
                 ) -> None:
        given = [x for x in (json is not _MISSING, text is not None, body is not None) if x]
        if len(given) > 1:
            raise TypeError('HTTPAnswer: give one of json=, text= and body=')
        self.status = status
        self.headers = {str(k).lower(): str(v) for k, v in (headers or {}).items()}
        if json is not _MISSING:
            self.body = encode_json(json)
            self.headers.setdefault('content-type', _JSON)
        elif text is not None:
            self.body = text.encode('utf-8')
            self.headers.setdefault('content-type', _TEXT)
        else:
            self.body = bytes(body or b'')

    def __repr__(self) -> str:
        return 'HTTPAnswer(%d, %r)' % (self.status, self.body[:100])


class SqlAnswer:
    """What an SQL stub answers for ``execute``/``stream``: ``rows`` (dicts, or lists with
    ``columns``), ``rowcount`` (the number of rows by default) and ``last_insert_id``.

    A stub may also answer a list of dicts (the rows), an int (the rowcount of a statement
    returning no rows) or None (no rows). Values are typed as the server would type them
    (``int``, ``float``, ``bool``, ``text``, ``json`` for dicts and lists, ``decimal``,
    ``datetime``, ``date``, ``time``, ``bytes``, ``uuid``), so they come back to the
    service as the same Python values."""

    __slots__ = ('rows', 'columns', 'rowcount', 'last_insert_id')

    def __init__(self, rows: Iterable[Any] = (), columns: Optional[List[str]] = None,
                 rowcount: Optional[int] = None, last_insert_id: Optional[int] = None
                 ) -> None:
        rows = list(rows)
        if columns is None:
            if rows and not isinstance(rows[0], Mapping):
                raise TypeError('SqlAnswer: rows that are not dicts need columns=')
            columns = list(rows[0]) if rows else []
        self.columns = list(columns)
        self.rows = [[r.get(c) for c in self.columns] if isinstance(r, Mapping) else list(r)
                     for r in rows]
        self.rowcount = len(self.rows) if rowcount is None else rowcount
        self.last_insert_id = last_insert_id

    def doc(self) -> Dict[str, Any]:
        """The result as the server sends it (SPEC.md ``out.sql``)."""
        types = []
        for i in range(len(self.columns)):
            sample = next((r[i] for r in self.rows if r[i] is not None), None)
            types.append(_sql_type(sample))
        rows = [[_sql_value(v) for v in r] for r in self.rows]
        return {'columns': self.columns, 'types': types, 'rows': rows,
                'rowcount': self.rowcount, 'last_insert_id': self.last_insert_id}


def _sql_type(value: Any) -> str:
    import datetime
    import decimal
    import uuid
    if isinstance(value, bool):
        return 'bool'
    if isinstance(value, int):
        return 'int'
    if isinstance(value, float):
        return 'float'
    if isinstance(value, decimal.Decimal):
        return 'decimal'
    if isinstance(value, datetime.datetime):
        return 'datetimetz' if value.tzinfo is not None else 'datetime'
    if isinstance(value, datetime.date):
        return 'date'
    if isinstance(value, datetime.time):
        return 'time'
    if isinstance(value, (bytes, bytearray, memoryview)):
        return 'bytes'
    if isinstance(value, uuid.UUID):
        return 'uuid'
    if isinstance(value, (dict, list)):
        return 'json'
    return 'text'


def _sql_value(value: Any) -> Any:
    import datetime
    import decimal
    import uuid
    if value is None or isinstance(value, (bool, int, str, dict, list)):
        return value
    if isinstance(value, float):
        if value != value:
            return 'NaN'
        if value in (float('inf'), float('-inf')):
            return 'Infinity' if value > 0 else '-Infinity'
        return value
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.datetime) and value.tzinfo is not None:
        return value.astimezone(datetime.timezone.utc).isoformat()
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode('ascii')
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)


# -- the result of a call --------------------------------------------------------------------


class Result:
    """A service's answer, as the server would send it: ``status``, ``headers`` (the
    response headers, ``content-type`` included; case-insensitive), ``content_type``,
    ``body`` (bytes), ``text``, ``json`` and ``payload``; ``error`` (the REPLY's error
    kind: ``'input'`` when the input was refused before the handler ran) and ``exception``
    (what the service raised, None when it did not)."""

    __slots__ = ('status', 'headers', 'content_type', 'body', 'error', 'exc_family',
                 'exception', 'cid')

    def __init__(self, meta: Dict[str, Any], body: bytes, cid: str,
                 exception: Optional[BaseException]) -> None:
        self.status: int = meta.get('status', 500)
        self.headers = Headers(_reply_headers(meta, cid))
        #: The answer's ``Content-Type``, as the server sends it (None without one).
        self.content_type: Optional[str] = self.headers.get('content-type')
        self.body = body
        #: The REPLY's ``error``: ``'input'`` (the input was refused, 400) or None.
        self.error: Optional[str] = meta.get('error')
        #: The REPLY's ``exc``: the family the server counts the error by.
        self.exc_family: Optional[str] = meta.get('exc')
        self.exception = exception
        self.cid = cid

    @property
    def status_code(self) -> int:
        """Another name for :attr:`status` (``requests``' and Zato's)."""
        return self.status

    @property
    def ok(self) -> bool:
        return self.status < 400

    @property
    def text(self) -> str:
        return self.body.decode('utf-8', 'replace')

    @property
    def json(self) -> Any:
        """The body parsed as JSON; ValueError (saying what the body is) when it is not."""
        try:
            return decode_json(self.body)
        except ValueError:
            raise ValueError('the answer is not JSON (status %d, %s): %r'
                             % (self.status, self.content_type, self.body[:200])) from None

    @property
    def payload(self) -> Any:
        """The body as what it is: parsed JSON, text, bytes, or None when empty."""
        if not self.body:
            return None
        content_type = self.content_type or ''
        if content_type.startswith(_JSON) or content_type.endswith('+json'):
            return self.json
        if content_type.startswith('text/'):
            return self.text
        return self.body

    def __repr__(self) -> str:
        return '<Result %d %s %r>' % (self.status, self.content_type, self.body[:200])


def _reply_headers(meta: Dict[str, Any], cid: str) -> List[Tuple[str, str]]:
    """The response headers the server sends for a REPLY's ``meta`` (the supervisor's
    ``build_reply``, supervisor/src/edge/http.rs): the service's headers in order, then
    ``content-type`` set to the REPLY's ``content_type`` (replacing any the service set;
    the service's stays when the REPLY has none) and ``x-oxbus-cid`` to the call's cid.
    The one place the kit states that rule."""
    pairs = [(str(n).lower(), str(v)) for n, v in meta.get('headers') or ()]
    content_type = meta.get('content_type')
    if content_type:
        pairs = [p for p in pairs if p[0] != 'content-type'] + [('content-type', content_type)]
    return [p for p in pairs if p[0] != 'x-oxbus-cid'] + [('x-oxbus-cid', cid)]


# -- the in-memory server ----------------------------------------------------------------


class _Entry:
    __slots__ = ('value', 'kind', 'expires_at')

    def __init__(self, value: bytes, kind: str, expires_at: float) -> None:
        self.value = value
        self.kind = kind
        self.expires_at = expires_at  # 0: never


class _CacheRefused(Exception):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


def _reply(status: int = 200, body: bytes = b'', content_type: Optional[str] = _JSON,
           error: Optional[str] = None, **extra: Any) -> Tuple[bytes, bytes]:
    meta: Dict[str, Any] = {'status': status}
    if content_type is not None:
        meta['content_type'] = content_type
    if error is not None:
        meta['error'] = error
    meta.update(extra)
    return encode_json(meta), body


def _refusal(status: int, error: str, message: str) -> Tuple[bytes, bytes]:
    return _reply(status, encode_json({'error': message}), error=error)


class _Server:
    """Answers the worker → server calls of the services a :class:`TestClient` runs, as
    the real server does (``ipc-protocol/SPEC.md``), from what the client was given."""

    def __init__(self, client: TestClient, caches: Dict[str, Mapping[str, Any]],
                 secrets: Mapping[str, str], user_config: Mapping[str, Any],
                 outgoing: Mapping[str, Any], max_item_size: Mapping[str, int]) -> None:
        self.client = client
        self.now = 0.0  # the caches' clock, in seconds: moved by TestClient.advance only
        self.caches: Dict[str, Dict[str, _Entry]] = {}
        self.max_item_size: Dict[str, int] = {}
        for name, size in max_item_size.items():
            if name not in caches:
                raise ValueError('TestClient(max_item_size=...): no cache named %r (the '
                                 'caches are default and those given as caches=)' % (name,))
            if (isinstance(size, bool) or not isinstance(size, int)
                    or not 1 <= size <= _MAX_ITEM_SIZE_LIMIT):
                raise ValueError('TestClient(max_item_size=...): cache %s\'s max_item_size '
                                 'is 1 to %d bytes, not %r' % (name, _MAX_ITEM_SIZE_LIMIT, size))
            self.max_item_size[name] = size
        for name, entries in caches.items():
            cache = self.caches[name] = {}
            limit = self.max_item_size.setdefault(name, _MAX_ITEM_SIZE)
            for key, value in entries.items():
                kind, data = self._encode_value(value)
                if len(data) > limit:
                    raise ValueError('TestClient: cache %s\'s entry %r is %d bytes, more than '
                                     'its max_item_size of %d' % (name, key, len(data), limit))
                cache[str(key)] = _Entry(data, kind, 0)
        self.secrets = dict(secrets)
        self.user_config = dict(user_config)
        self.outgoing = dict(outgoing)
        self._ids = itertools.count(1)

    @staticmethod
    def _encode_value(value: Any) -> Tuple[str, bytes]:
        if isinstance(value, (bytes, bytearray, memoryview)):
            return 'bytes', bytes(value)
        return 'json', encode_json(value)

    def request(self, meta: Any, body: bytes = b'') -> Tuple[bytes, bytes]:
        """The worker's CALL-and-wait (``Worker.request``): the REPLY's raw meta and body."""
        return self._serve(meta, body)

    async def arequest(self, meta: Any, body: bytes = b'', orphan: Any = None
                       ) -> Tuple[bytes, bytes]:
        """Its awaitable form (``Worker.arequest``), for the ``a*`` calls of coroutines."""
        return self._serve(meta, body)

    def _serve(self, meta: Any, body: bytes) -> Tuple[bytes, bytes]:
        doc = decode_json(meta) if isinstance(meta, (bytes, bytearray)) else dict(meta)
        op = doc.get('op')
        op = op if isinstance(op, str) else ''
        if op.startswith('cache.'):
            return self._cache(op, doc, body)
        if op == 'secret.get':
            return self._secret(doc)
        if op == 'user_config.get':
            return self._user_config(doc)
        if op.startswith('out.'):
            return self._out(op[4:], doc, body)
        if op == 'pubsub.publish':
            return self._publish(doc, body)
        if op == 'invoke':
            return self._invoke(doc, body)
        raise self.client._not_stubbed(
            'the service made a %s call to the server, which oxbus.testing does not '
            'answer (it answers cache.*, secret.get, user_config.get, out.*, '
            'pubsub.publish and invoke)' % (op or repr(doc.get('op'))))

    # -- caches ----------------------------------------------------------------------------

    def _live(self, cache: Dict[str, _Entry], key: str) -> Optional[_Entry]:
        entry = cache.get(key)
        if entry is not None and entry.expires_at and entry.expires_at <= self.now:
            del cache[key]
            return None
        return entry

    def _expires(self, expiry: Any) -> float:
        if expiry is None or expiry == 0:
            return 0
        if (isinstance(expiry, bool) or not isinstance(expiry, (int, float))
                or not 0 <= expiry <= _MAX_EXPIRY_S):
            raise _CacheRefused(400, 'invalid', 'expiry must be 0 (never) to %d seconds, '
                                'got %s' % (_MAX_EXPIRY_S, expiry))
        return float(self.now + expiry)

    def _cache(self, op: str, doc: Dict[str, Any], body: bytes) -> Tuple[bytes, bytes]:
        kind = doc.get('kind')
        if kind is not None and kind not in ('json', 'bytes'):  # the server's enum
            return _refusal(400, 'invalid', 'bad cache call: unknown variant `%s`, expected '
                            '`json` or `bytes`' % (kind,))
        name = doc.get('cache') or 'default'
        cache = self.caches.get(name)
        if cache is None:
            return _refusal(404, 'unknown_cache', 'no cache named %s (oxbus.testing: the '
                            'caches are default and those given as caches={%r: {...}})'
                            % (name, name))
        try:
            return self._cache_op(op, name, cache, doc, body)
        except _CacheRefused as e:
            return _refusal(e.status, e.kind, str(e))

    def _cache_op(self, op: str, name: str, cache: Dict[str, _Entry], doc: Dict[str, Any],
                  body: bytes) -> Tuple[bytes, bytes]:
        def key(check: bool = True) -> str:
            # The server checks a key's length where it writes (set, delete, expire, incr);
            # get and has just do not find a longer one.
            k = doc.get('key')
            if not isinstance(k, str):
                raise _CacheRefused(400, 'invalid', '%s needs a key' % op)
            if check and len(k.encode('utf-8')) > _MAX_KEY_LEN:
                raise _CacheRefused(400, 'invalid', 'a cache key is at most %d bytes, this '
                                    'one has %d' % (_MAX_KEY_LEN, len(k.encode('utf-8'))))
            return k

        def flag(b: bool) -> Tuple[bytes, bytes]:
            return _reply(200, b'true' if b else b'false')

        prefix = doc.get('prefix') or ''
        if op == 'cache.get':
            entry = self._live(cache, key(check=False))
            if entry is None:
                return _reply(204, b'', content_type=None)
            return _reply(200, entry.value, _BYTES if entry.kind == 'bytes' else _JSON)
        if op == 'cache.set':
            k = key()
            kind = doc.get('kind') or 'json'
            limit = self.max_item_size[name]
            if len(body) > limit:
                raise _CacheRefused(413, 'too_large', 'the value is %d bytes, more than cache '
                                    '%s\'s max_item_size of %d'
                                    % (len(body), name, limit))
            cache[k] = _Entry(bytes(body), kind, self._expires(doc.get('expiry')))
            return _reply(200, b'true')
        if op == 'cache.delete':
            k = key()
            return flag(self._live(cache, k) is not None and cache.pop(k, None) is not None)
        if op == 'cache.has':
            return flag(self._live(cache, key(check=False)) is not None)
        if op == 'cache.expire':
            k = key()
            if doc.get('expiry') is None:
                raise _CacheRefused(400, 'invalid', 'cache.expire needs an expiry')
            expires = self._expires(doc['expiry'])
            entry = self._live(cache, k)
            if entry is not None:
                entry.expires_at = expires
            return flag(entry is not None)
        if op == 'cache.incr':
            k = key()
            by = doc.get('by', 1)
            entry = self._live(cache, k)
            current = 0
            if entry is not None:
                text = entry.value.decode('utf-8', 'replace').strip() if entry.kind == 'json' \
                    else ''
                digits = text[1:] if text[:1] in ('+', '-') else text
                if not (digits.isascii() and digits.isdigit()):
                    raise _CacheRefused(409, 'not_integer', 'the value of %s is not an '
                                        'integer' % encode_json(k).decode())
                current = int(text)
            n = current + by
            if not -2**63 <= n < 2**63:
                raise _CacheRefused(409, 'not_integer', 'incrementing %s overflows a 64-bit '
                                    'integer' % encode_json(k).decode())
            value = str(n).encode('ascii')
            if entry is None:
                cache[k] = _Entry(value, 'json', 0)
            else:
                entry.value = value
            return _reply(200, value)
        if op in ('cache.keys', 'cache.items'):
            keys = sorted(k for k in list(cache) if k.startswith(prefix)
                          and self._live(cache, k) is not None)
            if op == 'cache.keys':
                return _reply(200, encode_json(keys))
            items = []
            for k in keys:
                e = cache[k]
                text = (base64.b64encode(e.value).decode('ascii') if e.kind == 'bytes'
                        else e.value.decode('utf-8', 'replace'))
                items.append([k, e.kind, text])
            return _reply(200, encode_json(items))
        if op == 'cache.clear':
            n = sum(1 for k in list(cache) if self._live(cache, k) is not None)
            cache.clear()
            return _reply(200, str(n).encode('ascii'))
        if op == 'cache.len':
            return _reply(200, str(sum(1 for k in list(cache)
                                       if self._live(cache, k) is not None)).encode('ascii'))
        return _reply(501, encode_json({'error': 'unknown op: %s' % op}))

    # -- secrets, user config --------------------------------------------------------------

    def _secret(self, doc: Dict[str, Any]) -> Tuple[bytes, bytes]:
        name = doc.get('name')
        if name not in self.secrets:
            return _refusal(404, 'unknown_secret', 'no secret named %r (oxbus.testing: give '
                            'it as secrets={%r: ...})' % (name, name))
        return _reply(200, encode_json(str(self.secrets[name])))

    def _user_config(self, doc: Dict[str, Any]) -> Tuple[bytes, bytes]:
        name = doc.get('name')
        if not isinstance(name, str):
            return _refusal(400, 'invalid', 'user_config.get needs a string name')
        if name not in self.user_config:
            return _refusal(404, 'unknown_user_config', 'no user config named %r' % name)
        return _reply(200, encode_json(self.user_config[name]))

    # -- service to service through the server (self.patterns) -----------------------------

    def _invoke(self, doc: Dict[str, Any], body: bytes) -> Tuple[bytes, bytes]:
        dispatcher = self.client._dispatcher
        name = str(doc.get('service'))
        if dispatcher.services.get(name) is None:
            return _refusal(404, 'no_service', 'no such service: %s' % name)
        meta = dict(doc, channel='invoke')
        meta.setdefault('cid', _new_cid())
        meta.setdefault('traceparent', _new_traceparent())
        frame = self.client._run_frame(meta, body)
        self.client._dispatcher.raised.pop(_stream_of(frame), None)  # the caller's to see
        reply, answer = decode_call(frame[HEADER_SIZE:])
        return encode_json(reply), answer

    # -- outgoing connections --------------------------------------------------------------

    def _has_stub(self, kind: str, conn: str) -> bool:
        return '%s:%s' % (kind, conn) in self.outgoing or conn in self.outgoing

    def _stub(self, kind: str, conn: str) -> Any:
        stub = self.outgoing.get('%s:%s' % (kind, conn), _MISSING)
        if stub is _MISSING:
            stub = self.outgoing.get(conn, _MISSING)
        if stub is _MISSING:
            raise self.client._not_stubbed(
                'the service called the outgoing %s connection %r, which is not stubbed: '
                'give it as TestClient(..., outgoing={%r: stub}) (a callable taking an '
                'OutCall, or a fixed answer)' % (kind, conn, conn))
        return stub

    def _answer(self, kind: str, conn: str, doc: Dict[str, Any], body: bytes) -> Any:
        stub = self._stub(kind, conn)
        call = OutCall(kind, conn, doc, body)
        self.client.outgoing_calls.append(call)
        return stub(call) if callable(stub) else copy.deepcopy(stub)

    def _out(self, kind: str, doc: Dict[str, Any], body: bytes) -> Tuple[bytes, bytes]:
        # The real server hands a service only oxbus.outgoing errors: anything else a stub
        # raises (a failed assert, a bug) or a stub's answer causes is the test's error,
        # raised from the client's call even when the service catches what it gets.
        try:
            return self._out_kind(kind, doc, body)
        except OutgoingError:
            raise
        except Exception as e:
            raise self.client._failed(e)

    def _out_kind(self, kind: str, doc: Dict[str, Any], body: bytes) -> Tuple[bytes, bytes]:
        conn = doc.get('conn')
        if conn is None and doc.get('kvdb'):
            # Zato's self.kvdb.conn: the server's connection named kvdb, else default.
            conn = 'kvdb'
            if not self._has_stub(kind, conn) and self._has_stub(kind, 'default'):
                conn = 'default'
        conn = str(conn)
        if kind == 'rest':
            self._stub(kind, conn)
            for name in doc.get('headers') or ():
                if str(name).lower() in _RESERVED_HEADERS:
                    return _refusal(400, 'invalid', '%s: headers: %s is set by the server, '
                                    'not by a call' % (conn, name))
            return self._rest(self._answer(kind, conn, doc, body))
        if kind == 'sql':
            return self._sql(conn, doc, body)
        if kind in ('amqp', 'mqtt'):
            self._answer(kind, conn, doc, body)
            return _reply(200, b'{}')
        if kind == 'redis':
            answer = self._answer(kind, conn, doc, body)
            if doc.get('n') is None:
                return _reply(200, _redis_value(answer), content_type=None)
            return _reply(200, _redis_value(list(answer)), content_type=None)
        raise self.client._not_stubbed('the service made an out.%s call, which oxbus.testing '
                                       'does not answer' % kind)

    @staticmethod
    def _rest(answer: Any) -> Tuple[bytes, bytes]:
        if not isinstance(answer, HTTPAnswer):
            if answer is None:
                answer = HTTPAnswer(204)
            elif isinstance(answer, str):
                answer = HTTPAnswer(text=answer)
            elif isinstance(answer, (bytes, bytearray, memoryview)):
                answer = HTTPAnswer(body=bytes(answer), headers={'content-type': _BYTES})
            else:
                answer = HTTPAnswer(json=answer)
        meta = {'status': answer.status, 'headers': [[k, v] for k, v in answer.headers.items()]}
        return encode_json(meta), answer.body

    def _sql(self, conn: str, doc: Dict[str, Any], body: bytes) -> Tuple[bytes, bytes]:
        action = doc.get('action')
        if action in ('execute', 'stream'):
            answer = self._answer('sql', conn, doc, body)
            if not isinstance(answer, SqlAnswer):
                if answer is None:
                    answer = SqlAnswer()
                elif isinstance(answer, int) and not isinstance(answer, bool):
                    answer = SqlAnswer(rowcount=answer)
                else:
                    answer = SqlAnswer(answer)
            result = answer.doc()
            if action == 'stream':
                result = {'stream': next(self._ids), 'columns': result['columns'],
                          'types': result['types'], 'rows': result['rows'], 'done': True}
            return _reply(200, encode_json(result))
        # Transactions and streams are the server's bookkeeping: recorded, not stubbed.
        self._stub('sql', conn)
        self.client.outgoing_calls.append(OutCall('sql', conn, doc, body))
        if action == 'begin':
            return _reply(200, encode_json({'tx': next(self._ids)}))
        if action == 'next':
            return _reply(200, b'{"rows":[],"done":true}')
        return _reply(200, b'{}')

    # -- pub/sub ---------------------------------------------------------------------------

    def _publish(self, doc: Dict[str, Any], body: bytes) -> Tuple[bytes, bytes]:
        topic = str(doc.get('topic'))
        ids, pos = [], 0
        for msg in doc.get('msgs') or ():
            size = int(msg.get('size', 0))
            msg_id = 'zpsm%016x' % next(self._ids)
            ids.append(msg_id)
            meta = {k: v for k, v in msg.items() if k != 'size'}
            self.client.published.append(Published(topic, body[pos:pos + size], meta, msg_id))
            pos += size
        return _reply(200, encode_json({'msg_ids': ids}))


def _redis_value(value: Any) -> bytes:
    """``value`` in the ``out.redis`` reply encoding (SPEC.md)."""
    if value is None:
        return b'_'
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return b':' + _I64.pack(value)
    if isinstance(value, Exception):
        text = str(value).encode('utf-8')
        return b'-' + _U32.pack(len(text)) + text
    if isinstance(value, str):  # a simple string (OK, PONG...)
        text = value.encode('utf-8')
        return b'+' + _U32.pack(len(text)) + text
    if isinstance(value, (bytes, bytearray, memoryview)):  # a bulk string (GET's answer)
        data = bytes(value)
        return b'$' + _U32.pack(len(data)) + data
    if isinstance(value, (list, tuple)):
        return b'*' + _U32.pack(len(value)) + b''.join(_redis_value(v) for v in value)
    raise TypeError('a Redis stub answers None, an int, bytes (a bulk string), a str (a '
                    'simple string), a list of them or an exception (an error element of a '
                    'pipeline), not %s' % type(value).__name__)


def _stream_of(frame: bytes) -> int:
    """The stream id of an encoded frame (its header: length u32, kind, flags, stream)."""
    return int(_U32.unpack_from(frame, HEADER_SIZE - 4)[0])


def _new_cid() -> str:
    return os.urandom(10).hex()


def _new_traceparent() -> str:
    return '00-%s-%s-00' % (os.urandom(16).hex(), os.urandom(8).hex())


# -- the client --------------------------------------------------------------------------------


class _Services(dict):  # type: ignore[type-arg]
    """The dispatcher's service table: a service it looks up and does not find is noted
    as not stubbed (then the dispatcher answers as a worker without it does)."""

    def __init__(self, services: Dict[str, Type[Service]], client: TestClient) -> None:
        super().__init__(services)
        self._client = client

    def _absent(self, name: Any) -> None:
        if isinstance(name, str):
            self._client._not_stubbed(
                'the service invoked %r, which is not stubbed: give the service class as '
                'TestClient(..., services=[...]) or a stub as invoke={%r: stub}'
                % (name, name))

    def get(self, name: Any, default: Any = None) -> Any:
        cls = dict.get(self, name)  # an unhashable name raises TypeError, as dict's does
        if cls is None:
            self._absent(name)
            return default
        return cls

    def __contains__(self, name: Any) -> bool:  # patterns' check of a callback service
        if dict.__contains__(self, name):
            return True
        self._absent(name)
        return False


class _Dispatcher(Dispatcher):
    """The worker's dispatcher, noting what a service raised (for :attr:`Result.exception`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.raised: Dict[int, BaseException] = {}

    def _error(self, stream: int, cid: str, cls: Type[Service], exc: BaseException,
               kind: Optional[str] = None) -> bytes:
        self.raised[stream] = exc
        return super()._error(stream, cid, cls, exc, kind)


def _copy(value: Any) -> Any:
    """A deep copy of ``value`` (``value`` itself when it cannot be copied)."""
    try:
        return copy.deepcopy(value)
    except Exception:
        return value


def _stub_service(name: str, target: Any, client: TestClient) -> Type[Service]:
    """A service called ``name`` that answers what ``target`` gives (see ``invoke=``)."""

    def handle(self: Service) -> None:
        payload = self.request.payload
        client.invoked.append(Invoked(name, _copy(payload)))
        if not callable(target):
            self.response.payload = copy.deepcopy(target)
            return
        try:
            self.response.payload = target(payload)
        except (Reportable, OutgoingError):
            raise  # what a callee means, or its outgoing call's error: the caller's to see
        except Exception as e:
            raise client._failed(e)  # the stub's own error (a failed assert, a bug)

    return type('Stub', (Service,), {'name': name, 'handle': handle,
                                     '__module__': __name__,
                                     '__qualname__': 'stub of %s' % name})


class TestClient:
    """Runs ``service`` (a :class:`~oxbus.Service` class) in this process.

    ``services``: other service classes its ``self.invoke`` may call (run for real);
    ``invoke``: stubs of services by name (a callable taking the payload and returning the
    answer, a fixed answer, or a service class); ``cache``: the entries of the ``default``
    cache; ``caches``: other caches by name, with their entries; ``secrets``: secret values
    by name; ``user_config``: user configs by name; ``outgoing``: stubs of outgoing
    connections by name (``'CRM'``, or ``'rest:CRM'`` for one kind); ``max_item_size``:
    the largest value, in bytes, a cache takes, by cache name (default 1 MiB, the server's
    default; a larger value is refused with ``ValueTooLarge``); ``cid``: the cid of
    every call (default: a new one per call); ``raise_server_exceptions``: re-raise an
    exception the service raised that is not a :class:`~oxbus.Reportable` (one whose
    answer is a 500 ``internal error``) from the call, with its traceback, instead of
    returning that 500 (default True; the :class:`Result` has it as ``exception`` either
    way).
    """

    __test__ = False  # not a test class, whatever pytest makes of the name

    def __init__(self, service: Type[Service], *, services: Iterable[Type[Service]] = (),
                 invoke: Optional[Mapping[str, Any]] = None,
                 cache: Optional[Mapping[str, Any]] = None,
                 caches: Optional[Mapping[str, Mapping[str, Any]]] = None,
                 secrets: Optional[Mapping[str, str]] = None,
                 user_config: Optional[Mapping[str, Any]] = None,
                 outgoing: Optional[Mapping[str, Any]] = None,
                 max_item_size: Optional[Mapping[str, int]] = None,
                 cid: Optional[str] = None,
                 raise_server_exceptions: bool = True) -> None:
        if not (isinstance(service, type) and issubclass(service, Service)):
            raise TypeError('TestClient(service): a Service subclass, not %r' % (service,))
        if service._oxbus_abstract:
            raise TypeError('TestClient(%s): it defines no handler (handle or handle_GET...)'
                            % service.__name__)
        self.service = service
        #: ``self.invoke`` calls of the stubs given as ``invoke=`` (:class:`Invoked`).
        self.invoked: List[Invoked] = []
        #: ``self.invoke_async`` calls (:class:`AsyncInvoke`), in order; not run.
        self.invoked_async: List[AsyncInvoke] = []
        #: Calls of outgoing connections (:class:`OutCall`), in order.
        self.outgoing_calls: List[OutCall] = []
        #: Messages published (:class:`Published`), in order.
        self.published: List[Published] = []
        #: What fails the next call whatever the service did: NotStubbed, a stub's error.
        self._failures: List[BaseException] = []
        self._cid = cid
        self._raise = raise_server_exceptions
        table: Dict[str, Type[Service]] = {service.name: service}
        for cls in services:
            if not (isinstance(cls, type) and issubclass(cls, Service)):
                raise TypeError('TestClient(services=...): Service subclasses, not %r'
                                % (cls,))
            table[cls.name] = cls
        for name, target in (invoke or {}).items():
            if isinstance(target, type) and issubclass(target, Service):
                table[name] = target
            else:
                table[name] = _stub_service(name, target, self)
        all_caches: Dict[str, Mapping[str, Any]] = {'default': dict(cache or {})}
        for name, entries in (caches or {}).items():
            all_caches[name] = dict(entries or {})
        self._server = _Server(self, all_caches, secrets or {}, user_config or {},
                               outgoing or {}, max_item_size or {})
        self._dispatcher = _Dispatcher(table, post=self._post, request=self._server.request,
                                       arequest=self._server.arequest)
        self._dispatcher.services = _Services(table, self)
        self._streams = itertools.count(1)
        #: The caches, through the API services use: ``client.cache.default.get('k')``,
        #: ``client.cache['sessions'].keys()``.
        self.cache = CacheAPI(self._server.request)

    # -- time ------------------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move the caches' clock forward: entries whose expiry has passed are gone."""
        if seconds < 0:
            raise ValueError('advance(): time only goes forward, not by %r' % (seconds,))
        self._server.now += seconds

    # -- calls -----------------------------------------------------------------------------

    def _not_stubbed(self, message: str) -> NotStubbed:
        error = NotStubbed('%s: %s' % (self.service.__name__, message))
        self._failures.append(error)
        return error

    def _failed(self, error: BaseException) -> BaseException:
        """Note ``error`` (the test's, not the service's) to raise it from the call."""
        if not any(error is e for e in self._failures):
            self._failures.append(error)
        return error

    def _post(self, frame: bytes) -> None:
        """A frame the service posted without waiting (``invoke_async``, an ASYNC
        ``out.sql`` end)."""
        meta, body = decode_call(frame[HEADER_SIZE:])
        if meta.get('op') == 'invoke':
            try:
                payload = decode_json(body) if body else None
            except ValueError:
                payload = body
            self.invoked_async.append(AsyncInvoke(str(meta.get('service')), payload,
                                                  str(meta.get('cid') or ''), meta))
        else:
            self._server._serve(meta, body)

    def _build(self, payload: Any, body: Any, channel: str, method: Optional[str],
               path: Optional[str], path_params: Optional[Mapping[str, Any]],
               query: Any, headers: Any, data_format: str, channel_name: Optional[str],
               security: Optional[Mapping[str, Any]], cid: Optional[str],
               meta: Optional[Mapping[str, Any]]) -> Tuple[Dict[str, Any], bytes]:
        json_body = False
        if body is not None:
            if payload is not None:
                raise TypeError('give payload (a value to send as JSON) or body (the raw '
                                'bytes), not both')
            raw = body.encode('utf-8') if isinstance(body, str) else bytes(body)
        elif payload is None:
            raw = b''
        elif isinstance(payload, (bytes, bytearray, memoryview)):
            raw = bytes(payload)
        else:
            raw = encode_json(payload)
            json_body = True
        call: Dict[str, Any] = {
            'op': 'invoke', 'service': self.service.name,
            'cid': cid or self._cid or _new_cid(), 'channel': channel,
            'data_format': data_format, 'traceparent': _new_traceparent(),
            'deadline_ms': 30000}
        http = method is not None or channel in ('rest', 'jsonrpc')
        if http:
            pairs = _header_list(headers)
            if not any(n == 'host' for n, _ in pairs):  # what a client of port 17010 sends
                pairs.insert(0, ['host', 'localhost:%d' % _PORT])
            if json_body and not any(n == 'content-type' for n, _ in pairs):
                pairs.append(['content-type', _JSON])
            call.update({'method': (method or 'POST').upper(), 'path': path or '/',
                         'params': {str(k): str(v) for k, v in (path_params or {}).items()},
                         'query': _query_string(query), 'headers': pairs,
                         'remote_addr': '127.0.0.1', 'scheme': 'http', 'port': _PORT})
        elif path_params or query or headers:
            raise TypeError('path_params, query and headers come with an HTTP call: use '
                            'get()/post()... or call(method=...)')
        if channel_name is not None:
            call['channel_name'] = channel_name
        if security is not None:
            call['security'] = dict(security)
        if meta:
            call.update(meta)
        return call, raw

    def call(self, payload: Any = None, *, body: Any = None, channel: str = 'invoke',
             method: Optional[str] = None, path: Optional[str] = None,
             path_params: Optional[Mapping[str, Any]] = None, query: Any = None,
             headers: Any = None, data_format: str = 'json',
             channel_name: Optional[str] = None,
             security: Optional[Mapping[str, Any]] = None, cid: Optional[str] = None,
             meta: Optional[Mapping[str, Any]] = None) -> Result:
        """Invoke the service once and return its :class:`Result`.

        ``payload`` is sent as JSON (bytes as they are); ``body`` is the raw body instead.
        Without ``method`` it is a direct invocation (``channel='invoke'``, as another
        service's or the admin API's), with one an HTTP request of a REST channel:
        ``path``, ``path_params`` (the channel's ``{name}`` values), ``query`` (a dict,
        a list value repeating the key, or the raw string) and ``headers`` (a dict or
        pairs). ``channel`` (``'rest'``, ``'jsonrpc'``, ``'scheduler'``...),
        ``channel_name``, ``security`` (``{'name':..., 'type': 'basic', 'username':
        ...}``) and ``data_format`` (``'raw'``: the body is not parsed) are what the
        channel would say; ``meta`` adds or overrides fields of the ``CALL`` meta itself.
        """
        if channel == 'invoke' and method is not None:
            channel = 'rest'
        call, raw = self._build(payload, body, channel, method, path, path_params, query,
                                headers, data_format, channel_name, security, cid, meta)
        return self._result(call, self._run_frame(call, raw))

    async def acall(self, payload: Any = None, **kwargs: Any) -> Result:
        """:meth:`call` from a coroutine (an async test): an ``async def`` service runs on
        the running event loop, a sync one in a thread (as a worker runs it: not on the
        loop's thread)."""
        channel = kwargs.pop('channel', 'invoke')
        if channel == 'invoke' and kwargs.get('method') is not None:
            channel = 'rest'
        args = {k: kwargs.pop(k, None) for k in (
            'body', 'method', 'path', 'path_params', 'query', 'headers', 'channel_name',
            'security', 'cid', 'meta')}
        data_format = kwargs.pop('data_format', 'json')
        if kwargs:
            raise TypeError('acall(): unknown arguments: %s' % ', '.join(sorted(kwargs)))
        call, raw = self._build(payload, args['body'], channel, args['method'], args['path'],
                                args['path_params'], args['query'], args['headers'],
                                data_format, args['channel_name'], args['security'],
                                args['cid'], args['meta'])
        stream = next(self._streams)
        dispatcher = self._dispatcher
        if dispatcher.is_async(call):
            frame = await dispatcher.run_async(stream, call, raw)
        else:
            # A worker runs a sync service in a thread of its own, never on the event loop's
            # (its self.invoke of an async service runs that one to its end there).
            import asyncio
            frame = await asyncio.to_thread(dispatcher.run, stream, call, raw)
        return self._result(call, frame)

    def _run_frame(self, call: Dict[str, Any], raw: bytes) -> bytes:
        stream = next(self._streams)
        dispatcher = self._dispatcher
        if dispatcher.is_async(call):
            import asyncio
            if asyncio._get_running_loop() is not None:
                raise RuntimeError('%s is async and an event loop is running in this thread: '
                                   'use await client.acall(...)' % self.service.__name__)
            return asyncio.run(dispatcher.run_async(stream, call, raw))
        return dispatcher.run(stream, call, raw)

    def _result(self, call: Dict[str, Any], frame: bytes) -> Result:
        stream = _stream_of(frame)
        reply, body = decode_call(frame[HEADER_SIZE:])
        exc = self._dispatcher.raised.pop(stream, None)
        if self._failures:
            error = self._failures[0]
            self._failures.clear()
            raise error
        if (exc is not None and self._raise and not isinstance(exc, Reportable)
                and reply.get('status') == 500):
            raise exc
        return Result(reply, body, call['cid'], exc)

    def get(self, payload: Any = None, **kwargs: Any) -> Result:
        """:meth:`call` as an HTTP GET of a REST channel."""
        return self.call(payload, method='GET', **kwargs)

    def post(self, payload: Any = None, **kwargs: Any) -> Result:
        """:meth:`call` as an HTTP POST of a REST channel."""
        return self.call(payload, method='POST', **kwargs)

    def put(self, payload: Any = None, **kwargs: Any) -> Result:
        """:meth:`call` as an HTTP PUT of a REST channel."""
        return self.call(payload, method='PUT', **kwargs)

    def patch(self, payload: Any = None, **kwargs: Any) -> Result:
        """:meth:`call` as an HTTP PATCH of a REST channel."""
        return self.call(payload, method='PATCH', **kwargs)

    def delete(self, payload: Any = None, **kwargs: Any) -> Result:
        """:meth:`call` as an HTTP DELETE of a REST channel."""
        return self.call(payload, method='DELETE', **kwargs)

    def __repr__(self) -> str:
        return '<TestClient %s>' % self.service.name


def _header_list(headers: Any) -> List[List[str]]:
    if not headers:
        return []
    items = headers.items() if hasattr(headers, 'items') else headers
    pairs: List[List[str]] = []
    for name, value in items:
        name = str(name).lower()
        if isinstance(value, (list, tuple)):
            pairs.extend([name, str(v)] for v in value)
        else:
            pairs.append([name, str(value)])
    return pairs


def _query_string(query: Any) -> str:
    if not query:
        return ''
    if isinstance(query, str):
        return query[1:] if query.startswith('?') else query
    from urllib.parse import urlencode
    items = query.items() if hasattr(query, 'items') else query
    return urlencode([(k, v) for k, v in items], doseq=True)
