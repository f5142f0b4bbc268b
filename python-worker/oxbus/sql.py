"""Outgoing SQL connections, for services: ``self.out.sql['crm'].fetch_all(sql, params)``.

::

    db = self.out.sql['crm']
    rows = db.fetch_all('SELECT id, name FROM customer WHERE region = :region',
                        {'region': 'EU'})                   # [{'id': 1, 'name': 'Ann'}, ...]
    one = db.fetch_one('SELECT * FROM customer WHERE id = $1', [42])   # dict or None
    n = db.fetch_value('SELECT count(*) FROM customer')
    result = db.execute('UPDATE customer SET vip = true WHERE id = :id', {'id': 42})
    result.rowcount

    with db.transaction() as tx:                            # one pooled connection
        tx.execute('INSERT INTO audit (what) VALUES (:what)', {'what': 'vip'})
    # commit on normal exit, rollback (and the exception goes on) otherwise

    with db.stream('SELECT * FROM big', batch=500) as batches:
        for rows in batches:                                # lists of dict rows
            ...

    # async def handle(self): await db.aexecute(...), afetch_one, afetch_all,
    # afetch_value, async with db.atransaction() as tx, async with db.astream(...)

    # Zato's form (SQLAlchemy-like sessions, SQL text only):
    with closing(self.outgoing.sql.get('crm').session()) as session:
        session.execute(text('UPDATE t SET x = :x'), {'x': 1})
        session.commit()

The statements run in the server (its pool, shared by all workers); the worker sends
``out.sql`` calls over its IPC connection (``ipc-protocol/SPEC.md``). Parameters are bound
by the database driver, never interpolated: a list or tuple binds the engine's own
placeholders in order (``$1`` on PostgreSQL, ``?`` on MySQL/MariaDB and SQLite), a dict
binds ``:name`` placeholders. Values: None, bool, int, float, str, Decimal, datetime (aware
-> with offset, naive -> without), date, time, bytes, UUID, lists (arrays) and
:class:`Json` for JSON values; a plain dict is refused (wrap it in ``Json``). Results come
back typed by column: Decimal, datetime (``timestamptz`` aware in UTC, ``timestamp``
naive), date, time, bytes, UUID, JSON values as parsed, arrays as lists.
"""

from __future__ import annotations

import datetime as _dt
from decimal import Decimal
from uuid import UUID

from ._outcall import OutgoingError, invocation_context, raise_error, track, untrack
from ._protocol import decode_json, encode_json

TYPE_CHECKING = False  # see _protocol.py: keep ``typing`` out of the worker's startup
if TYPE_CHECKING:
    from typing import (Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple,
                        Union)

    from ._outcall import Caller

    Params = Union[None, Sequence[Any], Dict[str, Any]]
    RowDict = Dict[str, Any]

__all__ = ['Json', 'text', 'TextClause', 'Database', 'SqlConnections', 'Result', 'Stream',
           'AsyncStream', 'Transaction', 'AsyncTransaction', 'Session', 'SessionResult',
           'Row', 'encode_value', 'decode_value']


class Json:
    """A value to bind as JSON (``json``/``jsonb`` columns): ``Json({'a': 1})``.

    Plain dicts are refused as parameters so that a dict passed by mistake for a scalar
    does not silently become JSON.
    """

    __slots__ = ('obj',)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __repr__(self) -> str:
        return 'Json(%r)' % (self.obj,)


class TextClause:
    """What :func:`text` returns: SQL text with ``:name`` binds (SQLAlchemy's ``text()``
    without SQLAlchemy). ``.text`` is the statement."""

    __slots__ = ('text',)

    def __init__(self, sql: str) -> None:
        if not isinstance(sql, str):
            raise TypeError('text() takes the SQL as a str, not %s' % type(sql).__name__)
        self.text = sql

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return 'text(%r)' % self.text


def text(sql: str) -> TextClause:
    """SQLAlchemy's ``text()`` for code without SQLAlchemy: ``session.execute(text(...))``."""
    return TextClause(sql)


# -- values -----------------------------------------------------------------------------

_I64_MIN, _I64_MAX = -2 ** 63, 2 ** 63 - 1


def _tagged(tag: str, value: Any) -> Dict[str, Any]:
    return {'$t': tag, 'v': value}


def _decimal_text(value: Decimal) -> str:
    if value.is_finite():
        return format(value, 'f')
    return str(value)  # 'NaN', 'Infinity', '-Infinity'


def encode_value(value: Any) -> Any:
    """A Python value as a ``params`` value of SPEC.md (JSON scalar, list or tagged object).

    TypeError for a type that has no mapping (a plain dict among them: wrap it in
    :class:`Json`); ValueError for a float that is NaN or infinite (JSON has no such
    number; ``Decimal('NaN')``/``Decimal('Infinity')`` are sent as text, which PostgreSQL's
    ``numeric`` takes and the other databases refuse).
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if _I64_MIN <= value <= _I64_MAX:
            return int(value)
        return _tagged('decimal', str(int(value)))
    if isinstance(value, float):
        if value != value or value in (float('inf'), float('-inf')):
            raise ValueError('%r cannot be bound as a float parameter (JSON has no such '
                             'number); for a PostgreSQL numeric column bind Decimal(%r) '
                             '(MySQL/MariaDB and SQLite store no NaN or infinity)'
                             % (value, str(Decimal(value))))
        return value
    if isinstance(value, Decimal):
        return _tagged('decimal', _decimal_text(value))
    if isinstance(value, _dt.datetime):  # before date: a datetime is a date
        return _tagged('datetime', value.isoformat())
    if isinstance(value, _dt.date):
        return _tagged('date', value.isoformat())
    if isinstance(value, _dt.time):
        return _tagged('time', value.isoformat())
    if isinstance(value, (bytes, bytearray, memoryview)):
        import base64
        return _tagged('bytes', base64.b64encode(bytes(value)).decode('ascii'))
    if isinstance(value, UUID):
        return _tagged('uuid', str(value))
    if isinstance(value, Json):
        return _tagged('json', value.obj)
    if isinstance(value, (list, tuple)):
        return [encode_value(v) for v in value]
    if isinstance(value, dict):
        raise TypeError('a dict cannot be bound as an SQL parameter: wrap JSON values in '
                        'oxbus.sql.Json(...)')
    raise TypeError('no SQL mapping for a parameter of type %s' % type(value).__name__)


def _encode_params(params: Any) -> Any:
    if params is None:
        return None
    if isinstance(params, dict):
        return {str(name): encode_value(value) for name, value in params.items()}
    if isinstance(params, (list, tuple)):
        return [encode_value(value) for value in params]
    raise TypeError('params is a list or tuple (positional binds), a dict (:name binds) or '
                    'None, not %s' % type(params).__name__)


def _fraction(text: str) -> str:
    """``text`` (an ISO time part) with its fraction cut or padded to 6 digits and a
    trailing ``Z`` spelled ``+00:00``: what ``fromisoformat`` takes on Python 3.9."""
    if text.endswith(('Z', 'z')):
        text = text[:-1] + '+00:00'
    dot = text.find('.')
    if dot < 0:
        return text
    end = dot + 1
    while end < len(text) and text[end].isdigit():
        end += 1
    digits = text[dot + 1:end]
    if len(digits) == 6:
        return text
    return text[:dot] + (('.' + (digits + '000000')[:6]) if digits else '') + text[end:]


#: What PostgreSQL answers for timestamps and dates out of Python's range: kept as text.
_PG_SPECIAL = frozenset(('infinity', '-infinity'))


def _datetime(value: Any) -> Any:
    if not isinstance(value, str) or value in _PG_SPECIAL:
        return value  # SQLite may hold anything in any column (epoch numbers...)
    try:
        return _dt.datetime.fromisoformat(_fraction(value.replace(' ', 'T', 1)))
    except ValueError:
        return value


def _datetimetz(value: Any) -> Any:
    parsed = _datetime(value)
    if not isinstance(parsed, _dt.datetime):
        return parsed
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=_dt.timezone.utc)
    return parsed.astimezone(_dt.timezone.utc)


def _date(value: Any) -> Any:
    if not isinstance(value, str) or value in _PG_SPECIAL:
        return value
    try:
        return _dt.date.fromisoformat(value)
    except ValueError:
        parsed = _datetime(value)  # SQLite: a timestamp in a DATE column
        return parsed.date() if isinstance(parsed, _dt.datetime) else value


def _time(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return _dt.time.fromisoformat(_fraction(value))
    except ValueError:
        return value


def _bytes(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    import base64
    import binascii
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return value  # not base64: SQLite text in a BLOB-typed column


def _float(value: Any) -> Any:
    if isinstance(value, str):  # 'NaN', 'Infinity', '-Infinity' (JSON has no such number)
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _decimal(value: Any) -> Any:
    try:
        return Decimal(value) if isinstance(value, (str, int)) else Decimal(str(value))
    except (ArithmeticError, ValueError, TypeError):
        return value


def _uuid(value: Any) -> Any:
    try:
        return UUID(value) if isinstance(value, str) else value
    except ValueError:
        return value


_DECODERS: Dict[str, Optional[Callable[[Any], Any]]] = {
    'int': None, 'bool': None, 'text': None, 'json': None, 'float': _float,
    'decimal': _decimal, 'datetime': _datetime, 'datetimetz': _datetimetz,
    'date': _date, 'time': _time, 'bytes': _bytes, 'uuid': _uuid,
}


def _decoder(code: Any) -> Optional[Callable[[Any], Any]]:
    """The function that turns a JSON value of type ``code`` into Python; None when the
    JSON value is the Python value (ints, text, JSON...; NULLs are always None)."""
    if isinstance(code, str) and code.endswith('[]'):
        found = _decoder(code[:-2])
        if found is None:
            return None
        item: Callable[[Any], Any] = found

        def array(value: Any, inner: Callable[[Any], Any] = item) -> Any:
            return [None if v is None else (array(v) if isinstance(v, list) else inner(v))
                    for v in value]
        return array
    return _DECODERS.get(code)  # unknown codes: as they come


def decode_value(code: str, value: Any) -> Any:
    """A result value of type ``code`` (SPEC.md) as Python."""
    if value is None:
        return None
    decode = _decoder(code)
    return value if decode is None else decode(value)


class _Shape:
    """The columns of a result and how to turn its JSON rows into dicts."""

    __slots__ = ('columns', 'types', '_decoders')

    def __init__(self, columns: List[str], types: List[str]) -> None:
        self.columns = list(columns)
        self.types = list(types)
        decoders = [(i, _decoder(code)) for i, code in enumerate(self.types)]
        self._decoders = [(i, d) for i, d in decoders if d is not None]

    def values(self, rows: List[List[Any]]) -> List[List[Any]]:
        decoders = self._decoders
        if decoders:
            for row in rows:
                for i, decode in decoders:
                    value = row[i]
                    if value is not None:
                        row[i] = decode(value)
        return rows

    def dicts(self, rows: List[List[Any]]) -> List[RowDict]:
        columns = self.columns
        return [dict(zip(columns, row)) for row in self.values(rows)]


# -- results ----------------------------------------------------------------------------


class Result:
    """What ``execute`` returns: ``rows`` (a list of dicts, column name -> value),
    ``columns``, ``types`` (SPEC.md's type codes), ``rowcount`` (rows returned by a query,
    rows affected by any other statement) and ``last_insert_id`` (MySQL/MariaDB and SQLite,
    else None). Iterating it and ``len()`` go over ``rows``."""

    __slots__ = ('rows', 'columns', 'types', 'rowcount', 'last_insert_id', '_first')

    def __init__(self, doc: Dict[str, Any]) -> None:
        shape = _Shape(doc.get('columns') or [], doc.get('types') or [])
        self.columns: List[str] = shape.columns
        self.types: List[str] = shape.types
        raw = doc.get('rows') or []
        self.rows: List[RowDict] = shape.dicts(raw)
        # The first row as a list (decoded in place by dicts()): a dict keeps only one of
        # two columns of the same name (SELECT a.id, b.id ...).
        self._first: Optional[List[Any]] = raw[0] if raw else None
        self.rowcount: int = doc.get('rowcount') or 0
        self.last_insert_id: Optional[int] = doc.get('last_insert_id')

    def __iter__(self) -> Iterator[RowDict]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> RowDict:
        return self.rows[index]

    def __repr__(self) -> str:
        return '<Result %d rows, rowcount %d>' % (len(self.rows), self.rowcount)


def _first_value(result: Result) -> Any:
    first = result._first
    return first[0] if first else None


# -- the calls --------------------------------------------------------------------------


def _statement(sql: Any) -> str:
    if isinstance(sql, str):
        return sql
    stmt = getattr(sql, 'text', None)
    if isinstance(stmt, str):
        return stmt
    raise TypeError('the statement is a str or an object with a .text str (text()), not %s'
                    % type(sql).__name__)


class _Conn:
    """Builds the ``out.sql`` calls of one connection and reads their answers."""

    __slots__ = ('name', 'caller')

    def __init__(self, name: str, caller: Caller) -> None:
        self.name = name
        self.caller = caller

    def meta(self, action: str, tx: Optional[int] = None,
             stream: Optional[int] = None) -> Dict[str, Any]:
        meta: Dict[str, Any] = {'op': 'out.sql', 'conn': self.name, 'action': action}
        if tx is not None:
            meta['tx'] = tx
        if stream is not None:
            meta['stream'] = stream
        meta.update(invocation_context())
        return meta

    def answer(self, reply: Tuple[Dict[str, Any], bytes]) -> Dict[str, Any]:
        meta, body = reply
        status = meta.get('status')
        if isinstance(status, int) and status >= 300:
            raise_error(self.name, meta, body)
        from ._protocol import decode_json
        try:
            doc = decode_json(body) if body else {}
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise OutgoingError('%s: unreadable answer from the server: %r'
                                % (self.name, body[:200]), self.name)
        return doc

    def call(self, meta: Dict[str, Any], doc: Any = None) -> Dict[str, Any]:
        body = encode_json(doc) if doc is not None else b'{}'
        return self.answer(self.caller.call(self.name, meta, body))

    async def acall(self, meta: Dict[str, Any], doc: Any = None,
                    orphan: Optional[Callable[[bytes, bytes], None]] = None
                    ) -> Dict[str, Any]:
        body = encode_json(doc) if doc is not None else b'{}'
        return self.answer(await self.caller.acall(self.name, meta, body, orphan))

    def ender(self, action: str, key: str) -> Callable[[int], None]:
        """A function that ends transaction or stream ``id`` (``action`` ``rollback`` or
        ``close``, ``key`` ``tx`` or ``stream``) with an ASYNC call, which nobody waits for.
        The meta is built now, in the calling invocation's context, not when it runs."""
        meta = self.meta(action)
        notify = self.caller.notify

        def end(ident: int) -> None:
            notify(dict(meta, **{key: ident}), b'{}')
        return end

    def track_tx(self, tx: int) -> None:
        end = self.ender('rollback', 'tx')
        track((self.name, 'tx', tx), 'transaction %d on %s' % (tx, self.name),
              lambda: end(tx))

    def track_stream(self, stream: Any) -> None:
        end = self.ender('close', 'stream')
        track((self.name, 'stream', stream), 'stream %s on %s' % (stream, self.name),
              lambda: end(stream))

    def orphan(self, action: str, key: str) -> Callable[[bytes, bytes], None]:
        """The hook of a ``begin``/``stream`` call whose awaiting task was cancelled: when
        its REPLY opened a transaction or stream after all, end it on the server."""
        end = self.ender(action, key)

        def orphaned(raw: bytes, body: bytes) -> None:
            meta = decode_json(raw)
            if not isinstance(meta, dict) or meta.get('error') is not None:
                return  # it failed: nothing was opened
            status = meta.get('status')
            if isinstance(status, int) and status >= 300:
                return
            doc = decode_json(body) if body else {}
            if not isinstance(doc, dict) or doc.get('done'):
                return  # a stream whose only batch was the last: the server closed it
            ident = doc.get(key)
            if isinstance(ident, int) and not isinstance(ident, bool):
                end(ident)
        return orphaned

    @staticmethod
    def execute_doc(sql: Any, params: Any) -> Dict[str, Any]:
        return {'sql': _statement(sql), 'params': _encode_params(params)}

    @staticmethod
    def stream_doc(sql: Any, params: Any, batch: int) -> Dict[str, Any]:
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError('batch is a positive number of rows, not %r' % (batch,))
        return {'sql': _statement(sql), 'params': _encode_params(params), 'batch': batch}


class _Executor:
    """``execute`` and its shortcuts, sync and async; ``_tx`` is the transaction (if any)."""

    _conn: _Conn
    _tx: Optional[int] = None

    def _check(self) -> None:
        pass

    def execute(self, sql: Any, params: Params = None) -> Result:
        """Run one statement; its :class:`Result`. Fails ``ResponseTooLarge`` when a query
        returns more than the connection's ``max_rows`` (use :meth:`stream`)."""
        self._check()
        conn = self._conn
        return Result(conn.call(conn.meta('execute', self._tx), conn.execute_doc(sql, params)))

    def fetch_all(self, sql: Any, params: Params = None) -> List[RowDict]:
        """The rows of a query, as dicts."""
        return self.execute(sql, params).rows

    def fetch_one(self, sql: Any, params: Params = None) -> Optional[RowDict]:
        """The first row of a query as a dict, or None when there is none."""
        rows = self.execute(sql, params).rows
        return rows[0] if rows else None

    def fetch_value(self, sql: Any, params: Params = None) -> Any:
        """The first column of the first row, or None when there is no row."""
        return _first_value(self.execute(sql, params))

    def stream(self, sql: Any, params: Params = None, batch: int = 1000) -> Stream:
        """A query's rows in batches of ``batch``: an iterator of lists of dict rows, and a
        context manager that closes the stream on the server when left early."""
        self._check()
        conn = self._conn
        doc = conn.call(conn.meta('stream', self._tx), conn.stream_doc(sql, params, batch))
        stream: Stream = Stream(conn, doc).tracked()
        return stream

    async def aexecute(self, sql: Any, params: Params = None) -> Result:
        """:meth:`execute`, awaitable."""
        self._check()
        conn = self._conn
        return Result(await conn.acall(conn.meta('execute', self._tx),
                                       conn.execute_doc(sql, params)))

    async def afetch_all(self, sql: Any, params: Params = None) -> List[RowDict]:
        return (await self.aexecute(sql, params)).rows

    async def afetch_one(self, sql: Any, params: Params = None) -> Optional[RowDict]:
        rows = (await self.aexecute(sql, params)).rows
        return rows[0] if rows else None

    async def afetch_value(self, sql: Any, params: Params = None) -> Any:
        return _first_value(await self.aexecute(sql, params))

    async def astream(self, sql: Any, params: Params = None, batch: int = 1000
                      ) -> AsyncStream:
        """:meth:`stream`, awaitable: ``async with await db.astream(...) as batches:
        async for rows in batches``."""
        self._check()
        conn = self._conn
        body = conn.stream_doc(sql, params, batch)
        doc = await conn.acall(conn.meta('stream', self._tx), body,
                               conn.orphan('close', 'stream'))
        stream: AsyncStream = AsyncStream(conn, doc).tracked()
        return stream


class _StreamBase:
    __slots__ = ('_conn', '_id', '_shape', '_first', '_done', '_closed')

    def __init__(self, conn: _Conn, doc: Dict[str, Any]) -> None:
        self._conn = conn
        self._id = doc.get('stream')
        self._shape = _Shape(doc.get('columns') or [], doc.get('types') or [])
        self._first: Optional[List[List[Any]]] = doc.get('rows') or []
        self._done = bool(doc.get('done'))
        self._closed = False

    @property
    def columns(self) -> List[str]:
        return self._shape.columns

    @property
    def types(self) -> List[str]:
        return self._shape.types

    @property
    def done(self) -> bool:
        """True once the last batch was received (or the stream closed)."""
        return self._done or self._closed

    def tracked(self) -> Any:
        """Note the open stream in the invocation (closed for it if it ends first)."""
        if not self._done:
            self._conn.track_stream(self._id)
        return self

    def _ended(self) -> None:
        untrack((self._conn.name, 'stream', self._id))


class Stream(_StreamBase):
    """A query's rows in batches: iterate for lists of dict rows. Leaving its ``with``
    block (or calling :meth:`close`) before the last batch closes it on the server."""

    __slots__ = ()

    def __iter__(self) -> Iterator[List[RowDict]]:
        return self

    def __next__(self) -> List[RowDict]:
        first = self._first
        if first is not None:
            self._first = None
            if first:
                return self._shape.dicts(first)
        if self._done or self._closed:
            raise StopIteration
        conn = self._conn
        doc = conn.call(conn.meta('next', stream=self._id))
        self._done = bool(doc.get('done'))
        if self._done:
            self._ended()
        rows = doc.get('rows') or []
        if not rows and self._done:
            raise StopIteration
        return self._shape.dicts(rows)

    def close(self) -> None:
        """Close the stream on the server unless it is done already."""
        if not self._done and not self._closed:
            self._closed = True
            self._ended()
            conn = self._conn
            conn.call(conn.meta('close', stream=self._id))
        self._closed = True

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncStream(_StreamBase):
    """:class:`Stream` for coroutines: ``async for rows in stream``, ``async with``,
    ``await stream.aclose()``."""

    __slots__ = ()

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> List[RowDict]:
        first = self._first
        if first is not None:
            self._first = None
            if first:
                return self._shape.dicts(first)
        if self._done or self._closed:
            raise StopAsyncIteration
        conn = self._conn
        doc = await conn.acall(conn.meta('next', stream=self._id))
        self._done = bool(doc.get('done'))
        if self._done:
            self._ended()
        rows = doc.get('rows') or []
        if not rows and self._done:
            raise StopAsyncIteration
        return self._shape.dicts(rows)

    async def aclose(self) -> None:
        if not self._done and not self._closed:
            self._closed = True
            self._ended()
            conn = self._conn
            await conn.acall(conn.meta('close', stream=self._id))
        self._closed = True

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


class Transaction(_Executor):
    """A transaction on one pooled connection, held for this worker until it ends.

    ``with db.transaction() as tx:`` begins it; ``tx`` has ``execute``, ``fetch_*`` and
    ``stream``. A normal exit commits; an exception rolls back and goes on. ``commit()``
    and ``rollback()`` end it early (the ``with`` exit then does nothing).
    """

    __slots__ = ('_conn', '_tx', '_state')

    def __init__(self, conn: _Conn) -> None:
        self._conn = conn
        self._tx: Optional[int] = None
        self._state = 'new'   # new -> open -> committed / rolled back

    def _check(self) -> None:
        if self._state != 'open':
            raise RuntimeError('the transaction on %s is %s' % (
                self._conn.name, 'not begun' if self._state == 'new' else self._state))

    def begin(self) -> Transaction:
        if self._state != 'new':
            raise RuntimeError('the transaction on %s was begun already' % self._conn.name)
        conn = self._conn
        self._tx = _tx_id(conn, conn.call(conn.meta('begin')))
        self._state = 'open'
        conn.track_tx(self._tx)
        return self

    def commit(self) -> None:
        self._end('commit', 'committed')

    def rollback(self) -> None:
        self._end('rollback', 'rolled back')

    def _end(self, action: str, state: str) -> None:
        self._check()
        conn = self._conn
        self._state = state  # even if the call fails: the server ends it either way
        untrack((conn.name, 'tx', self._tx))
        conn.call(conn.meta(action, self._tx))

    def __enter__(self) -> Transaction:
        return self.begin() if self._state == 'new' else self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._state != 'open':
            return
        if exc_type is None:
            self.commit()
        else:
            try:
                self.rollback()
            except Exception:
                import logging
                logging.getLogger('oxbus.sql').warning(
                    'rollback of a transaction on %s failed', self._conn.name, exc_info=True)

    def __repr__(self) -> str:
        return '<Transaction %s on %s, %s>' % (self._tx, self._conn.name, self._state)


class AsyncTransaction(Transaction):
    """:class:`Transaction` for coroutines: ``async with db.atransaction() as tx:`` then
    ``await tx.aexecute(...)``; ``await tx.acommit()`` / ``arollback()``."""

    __slots__ = ()

    async def abegin(self) -> AsyncTransaction:
        if self._state != 'new':
            raise RuntimeError('the transaction on %s was begun already' % self._conn.name)
        conn = self._conn
        # Cancelled while waiting, the REPLY's transaction is rolled back when it comes.
        self._tx = _tx_id(conn, await conn.acall(conn.meta('begin'), None,
                                                 conn.orphan('rollback', 'tx')))
        self._state = 'open'
        conn.track_tx(self._tx)
        return self

    async def acommit(self) -> None:
        await self._aend('commit', 'committed')

    async def arollback(self) -> None:
        await self._aend('rollback', 'rolled back')

    async def _aend(self, action: str, state: str) -> None:
        self._check()
        conn = self._conn
        self._state = state
        untrack((conn.name, 'tx', self._tx))
        # The CALL is written before the first suspension: cancelled while it waits for
        # the REPLY, the commit or rollback still happens on the server.
        await conn.acall(conn.meta(action, self._tx))

    async def __aenter__(self) -> AsyncTransaction:
        return await self.abegin() if self._state == 'new' else self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._state != 'open':
            return
        if exc_type is None:
            await self.acommit()
        else:
            try:
                await self.arollback()
            except Exception:
                import logging
                logging.getLogger('oxbus.sql').warning(
                    'rollback of a transaction on %s failed', self._conn.name, exc_info=True)


def _tx_id(conn: _Conn, doc: Dict[str, Any]) -> int:
    tx = doc.get('tx')
    if isinstance(tx, bool) or not isinstance(tx, int):
        raise OutgoingError('%s: the server began no transaction (answer %r)'
                            % (conn.name, doc), conn.name)
    return tx


class Database(_Executor):
    """``self.out.sql[name]``: one SQL connection (a pool in the server).

    Every call uses a pooled connection for that call only, in autocommit mode, except in
    a :meth:`transaction`. Zato's ``session()`` is here too (see :class:`Session`).
    """

    __slots__ = ('name', '_conn')

    def __init__(self, name: str, caller: Caller) -> None:
        self.name = name
        self._conn = _Conn(name, caller)

    def transaction(self) -> Transaction:
        """``with db.transaction() as tx:``: commit on normal exit, rollback on exception."""
        return Transaction(self._conn)

    def atransaction(self) -> AsyncTransaction:
        """``async with db.atransaction() as tx:`` for coroutines."""
        return AsyncTransaction(self._conn)

    def session(self) -> Session:
        """Zato's ``session()``: ``with closing(db.session()) as session:``."""
        return Session(self._conn)

    def __repr__(self) -> str:
        return '<Database %s>' % self.name


# -- Zato's session form ----------------------------------------------------------------


class Row(tuple):  # type: ignore[type-arg]
    """A row of a :class:`Session` result: a tuple, with attribute (``row.name``), key
    (``row['name']``) and ``row._mapping`` access, as SQLAlchemy's ``Row``."""

    _keys: Tuple[str, ...] = ()

    def __new__(cls, values: Sequence[Any], keys: Tuple[str, ...]) -> Row:
        row = super().__new__(cls, values)
        row._keys = keys
        return row

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, str):
            try:
                return tuple.__getitem__(self, self._keys.index(index))
            except ValueError:
                raise KeyError(index) from None
        return tuple.__getitem__(self, index)

    def __getattr__(self, name: str) -> Any:
        keys = self.__dict__.get('_keys', ())
        if name in keys:
            return tuple.__getitem__(self, keys.index(name))
        raise AttributeError('row has no column %r' % name)

    @property
    def _mapping(self) -> Dict[str, Any]:
        return dict(zip(self._keys, self))

    def _asdict(self) -> Dict[str, Any]:
        return dict(zip(self._keys, self))

    def keys(self) -> List[str]:
        return list(self._keys)


class SessionResult:
    """What ``session.execute`` returns: SQLAlchemy's result subset: ``fetchall()``,
    ``fetchone()``, ``fetchmany(n)``, ``first()``, ``scalar()``, ``all()``, ``keys()``,
    ``rowcount``, ``lastrowid``, iteration."""

    __slots__ = ('_rows', '_pos', '_keys', 'rowcount', 'lastrowid')

    def __init__(self, doc: Dict[str, Any]) -> None:
        shape = _Shape(doc.get('columns') or [], doc.get('types') or [])
        keys = tuple(shape.columns)
        self._keys = keys
        self._rows = [Row(values, keys) for values in shape.values(doc.get('rows') or [])]
        self._pos = 0
        self.rowcount: int = doc.get('rowcount') or 0
        self.lastrowid: Optional[int] = doc.get('last_insert_id')

    def keys(self) -> List[str]:
        return list(self._keys)

    def fetchall(self) -> List[Row]:
        rows = self._rows[self._pos:]
        self._pos = len(self._rows)
        return rows

    all = fetchall

    def fetchone(self) -> Optional[Row]:
        if self._pos >= len(self._rows):
            return None
        self._pos += 1
        return self._rows[self._pos - 1]

    def fetchmany(self, size: int = 1) -> List[Row]:
        rows = self._rows[self._pos:self._pos + size]
        self._pos += len(rows)
        return rows

    def first(self) -> Optional[Row]:
        row = self.fetchone()
        self._pos = len(self._rows)  # first() closes the result in SQLAlchemy
        return row

    def scalar(self) -> Any:
        row = self.first()
        return row[0] if row is not None and len(row) else None

    def __iter__(self) -> Iterator[Row]:
        while True:
            row = self.fetchone()
            if row is None:
                return
            yield row


class Session:
    """Zato's (SQLAlchemy's) session, for SQL text: ``execute(sql, params)`` with ``sql`` a
    str or ``text()`` and ``params`` a dict of ``:name`` binds (a list binds the engine's
    own placeholders). The first ``execute`` begins a transaction (SQLAlchemy's autobegin);
    ``commit()``/``rollback()`` end it and the next ``execute`` begins another; ``close()``
    rolls back what is still open. ORM use (``query``, ``add``, models) is not supported.
    """

    __slots__ = ('_conn', '_tx')

    def __init__(self, conn: _Conn) -> None:
        self._conn = conn
        self._tx: Optional[Transaction] = None

    def execute(self, sql: Any, params: Params = None) -> SessionResult:
        if self._tx is None:
            self._tx = Transaction(self._conn).begin()
        conn = self._conn
        meta = conn.meta('execute', self._tx._tx)
        return SessionResult(conn.call(meta, conn.execute_doc(sql, params)))

    def scalar(self, sql: Any, params: Params = None) -> Any:
        return self.execute(sql, params).scalar()

    def commit(self) -> None:
        tx, self._tx = self._tx, None
        if tx is not None:
            tx.commit()

    def rollback(self) -> None:
        tx, self._tx = self._tx, None
        if tx is not None:
            tx.rollback()

    def close(self) -> None:
        """Roll back what is still open. A failed rollback is logged, not raised (the
        server ends the transaction either way), so that leaving a ``with`` block or
        ``closing()`` never replaces the exception that is on its way out."""
        try:
            self.rollback()
        except Exception:
            import logging
            logging.getLogger('oxbus.sql').warning(
                'rollback of a session on %s failed', self._conn.name, exc_info=True)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _orm(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError('oxbus SQL sessions run SQL text only: ORM models, '
                                  'query(), add() and flush() are not supported (see '
                                  'docs/OUTGOING.md)')

    query = add = add_all = merge = flush = refresh = expunge = _orm


class SqlConnections:
    """``self.out.sql``: the SQL connections by name (``self.out.sql['crm']``, or
    ``.get('crm')`` as in Zato). Names are checked by the server at call time."""

    __slots__ = ('_caller', '_conns')

    def __init__(self, caller: Caller) -> None:
        self._caller = caller
        self._conns: Dict[str, Database] = {}

    def __getitem__(self, name: str) -> Database:
        db = self._conns.get(name)
        if db is None:
            if not isinstance(name, str):
                raise TypeError('connection names are strings, not %s' % type(name).__name__)
            db = Database(name, self._caller)
            if len(self._conns) < 256:
                db = self._conns.setdefault(name, db)
        return db

    def get(self, name: str) -> Database:
        return self[name]

    def __repr__(self) -> str:
        return '<SqlConnections>'
