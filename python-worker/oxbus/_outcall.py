"""What the outgoing connections' Python API shares: its exceptions and the call plumbing.

Public names are re-exported by :mod:`oxbus.outgoing` (and the package); this module is
the leaf that :mod:`oxbus.rest`, :mod:`oxbus.sql` and :mod:`oxbus.outgoing` import, so none
of them imports another's internals.

A call is one ``CALL``/``REPLY`` over the worker's IPC connection (``ipc-protocol/SPEC.md``,
"Outgoing connections and secrets"): :class:`Caller` adds the calling invocation's cid and
trace context to the meta, sends it through the worker's ``request`` (or awaits its
``arequest``) and turns a failed call (a REPLY whose meta has ``error``) into the exception
of that error code, with the server's message, which names the connection.
"""

from __future__ import annotations

import sys
from contextvars import ContextVar

from ._protocol import decode_json
from .service import _invocation_meta, current_invocation

TYPE_CHECKING = False  # see _protocol.py: keep ``typing`` out of the worker's startup
if TYPE_CHECKING:
    from typing import Any, Awaitable, Callable, Dict, Optional, Tuple, Type

    Request = Callable[[Any, bytes], Tuple[bytes, bytes]]
    ARequest = Callable[..., Awaitable[Tuple[bytes, bytes]]]
    Notify = Callable[[Dict[str, Any], bytes], None]
    Orphan = Callable[[bytes, bytes], None]

__all__ = [
    'OutgoingError', 'UnknownConnection', 'InvalidCall', 'PoolFull', 'OutgoingTimeout',
    'OutgoingConnectionError', 'ResponseTooLarge', 'AuthError', 'DatabaseError', 'SQLError',
    'IntegrityError', 'ProgrammingError', 'HTTPError', 'RedisError', 'AmqpPublishError', 'AmqpNack',
    'AmqpUnroutable', 'AmqpRefused', 'Caller', 'track', 'untrack',
    'open_invocation', 'close_invocation', 'left_open',
]


class OutgoingError(Exception):
    """A call through an outgoing connection failed (not an answer of the remote system).

    ``conn`` is the connection's name, ``error`` the server's error code (``timeout``,
    ``connect``... see ``docs/OUTGOING.md``), ``status`` the status the server gave it;
    ``str()`` is the server's message, which names the connection (and its address for
    REST).
    """

    def __init__(self, message: str, conn: Optional[str] = None,
                 error: Optional[str] = None, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.message = message
        self.conn = conn
        self.error = error
        self.status = status

    def __str__(self) -> str:
        return self.message


class UnknownConnection(OutgoingError, KeyError):
    """No connection of that name and type exists on the server (or it was deleted).

    A :class:`KeyError` too, as a missing key of ``self.out.rest[...]`` would be in Zato.
    """

    __str__ = OutgoingError.__str__  # not KeyError's repr() of the message


class InvalidCall(OutgoingError, ValueError):
    """The server refused the call itself: a bad method or header, a ``{placeholder}`` of
    the connection's ``url_path`` without a value, a ``:name`` without a bind, an unknown
    transaction or stream (rolled back after being idle)..."""


class PoolFull(OutgoingError):
    """No pooled connection became free within the connection's pool wait."""


class OutgoingTimeout(OutgoingError, TimeoutError):
    """The remote system did not answer in time (connect, statement or whole-call timeout)."""


class OutgoingConnectionError(OutgoingError, ConnectionError):
    """Connecting failed (refused, unreachable, DNS, TLS handshake: ``error == 'connect'``)
    or the connection broke mid-call (``error == 'io'``)."""


class ResponseTooLarge(OutgoingError):
    """The answer exceeds the connection's ``max_response_bytes`` (REST) or ``max_rows``
    (SQL ``execute``: use ``stream`` for large results)."""


class AuthError(OutgoingError):
    """The server could not obtain the connection's credentials (an OAuth2 token endpoint
    refused or did not answer)."""


class DatabaseError(OutgoingError):
    """The database refused the statement. ``code`` is the database's own error code as a
    string (the SQLSTATE on PostgreSQL, the error number on MySQL/MariaDB, the extended
    result code on SQLite), or None; ``str()`` is the database's message.

    DB-API style subclasses: :class:`IntegrityError` (a constraint was violated) and
    :class:`ProgrammingError` (syntax errors, unknown tables or columns). ``SQLError`` is
    another name for this class.
    """

    def __init__(self, message: str, conn: Optional[str] = None,
                 error: Optional[str] = None, status: Optional[int] = None,
                 code: Optional[str] = None) -> None:
        super().__init__(message, conn, error, status)
        self.code = code


SQLError = DatabaseError


class IntegrityError(DatabaseError):
    """A constraint was violated: SQLSTATE class 23 (PostgreSQL), MySQL/MariaDB 1048, 1062,
    1216, 1217, 1451, 1452, SQLite's constraint codes (19 and its extended codes)."""


class ProgrammingError(DatabaseError):
    """The statement is wrong: SQLSTATE class 42 (syntax, unknown table or column,
    privileges), MySQL/MariaDB 1054, 1064, 1146."""


class HTTPError(OutgoingError):
    """Raised by ``Response.raise_for_status()`` for a status of 400 or more: ``response``
    is the answer, ``status_code`` its status."""

    def __init__(self, message: str, conn: Optional[str] = None,
                 response: Any = None) -> None:
        status = getattr(response, 'status_code', None)
        super().__init__(message, conn, 'http', status)
        self.response = response
        self.status_code = status


class AmqpPublishError(OutgoingError):
    """The broker did not take a message: base of :class:`AmqpNack`,
    :class:`AmqpUnroutable` and :class:`AmqpRefused`."""


class AmqpNack(AmqpPublishError):
    """The broker answered the publish with ``basic.nack`` (it could not take it)."""


class AmqpUnroutable(AmqpPublishError):
    """A ``mandatory`` message no queue was bound for came back (``basic.return``):
    ``reply_code`` (312 ``NO_ROUTE``) and ``reply_text``."""

    def __init__(self, message: str, conn: Optional[str] = None,
                 error: Optional[str] = None, status: Optional[int] = None,
                 reply_code: Optional[int] = None, reply_text: Optional[str] = None) -> None:
        super().__init__(message, conn, error, status)
        self.reply_code = reply_code
        self.reply_text = reply_text


class AmqpRefused(AmqpPublishError):
    """The broker refused the publish and closed the channel (a missing exchange, access
    refused to it...); the server opens another channel for the next send."""


class RedisError(OutgoingError):
    """Redis answered an error reply. ``message`` is Redis's own text (``WRONGTYPE
    Operation against a key holding the wrong kind of value``), ``code`` its first word
    (``WRONGTYPE``, ``ERR``, ``EXECABORT``...); ``str()`` names the connection (and, in a
    pipeline, the command)."""

    def __init__(self, text: str, conn: Optional[str] = None, error: Optional[str] = None,
                 status: Optional[int] = None, code: Optional[str] = None,
                 redis_message: Optional[str] = None) -> None:
        super().__init__(text, conn, error, status)
        self.text = text
        self.message = redis_message if redis_message is not None else text
        self.code = code

    def __str__(self) -> str:
        return self.text


_MYSQL_INTEGRITY = frozenset(('1048', '1062', '1216', '1217', '1451', '1452'))
_MYSQL_PROGRAMMING = frozenset(('1054', '1064', '1146'))
# SQLITE_CONSTRAINT (19) and its extended codes: CHECK, FOREIGNKEY, NOTNULL, PRIMARYKEY,
# UNIQUE, ROWID. MySQL's error numbers start at 1000 and none of these is one it uses for
# anything but a constraint (1299/1555/2067/2323 are not MySQL server errors).
_SQLITE_INTEGRITY = frozenset(('19', '275', '787', '1299', '1555', '2067', '2323'))


def database_error_class(code: Optional[str]) -> Type[DatabaseError]:
    """The :class:`DatabaseError` subclass for a database error code."""
    if not code:
        return DatabaseError
    if len(code) == 5 and not code.isdigit():  # an SQLSTATE (PostgreSQL)
        if code.startswith('23'):
            return IntegrityError
        if code.startswith('42'):
            return ProgrammingError
        return DatabaseError
    if len(code) == 5 and code.startswith(('23', '42')):  # all-digit SQLSTATEs: 23505...
        return IntegrityError if code.startswith('23') else ProgrammingError
    if code in _MYSQL_INTEGRITY or code in _SQLITE_INTEGRITY:
        return IntegrityError
    if code in _MYSQL_PROGRAMMING:
        return ProgrammingError
    return DatabaseError


_ERRORS: Dict[str, Type[OutgoingError]] = {
    'unknown_conn': UnknownConnection, 'invalid': InvalidCall, 'pool_full': PoolFull,
    'timeout': OutgoingTimeout, 'connect': OutgoingConnectionError,
    'io': OutgoingConnectionError, 'too_large': ResponseTooLarge, 'auth': AuthError,
    'nacked': AmqpNack, 'refused': AmqpRefused,
}


def raise_error(conn: str, meta: Dict[str, Any], body: bytes) -> None:
    """Raise the exception of a failed call's REPLY (meta ``error`` set, or not a 2xx of
    the server's own)."""
    try:
        doc = decode_json(body) if body else {}
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        doc = {'error': body.decode('utf-8', 'replace')}
    error = meta.get('error')
    status = meta.get('status')
    message = doc.get('error') or ('%s: the server answered %s%s' % (
        conn, status, ' (%s)' % error if error else ''))
    message = str(message)
    if error == 'redis':
        code = doc.get('code')
        raise RedisError(message, conn, error, status, str(code) if code else None,
                         doc.get('message'))
    if error == 'sql':
        code = doc.get('code')
        code = str(code) if code is not None else None
        raise database_error_class(code)(message, conn, error, status, code)
    if error == 'unroutable':
        reply_code = doc.get('reply_code')
        raise AmqpUnroutable(message, conn, error, status,
                             reply_code if isinstance(reply_code, int) else None,
                             str(doc.get('reply_text') or '') or None)
    raise _ERRORS.get(error or '', OutgoingError)(message, conn, error, status)


def invocation_context(cid: Any = None) -> Dict[str, Any]:
    """The meta fields every outgoing call carries: ``cid``, ``traceparent``,
    ``tracestate`` of the invocation running in this thread or task.

    ``cid`` is what the service passed (``self.cid``, Zato's first argument); None or an
    empty one means the running invocation's.
    """
    meta: Dict[str, Any] = {}
    if not cid:
        current = current_invocation.get()
        cid = current[0] if current is not None else None
    if cid:
        meta['cid'] = str(cid)
    call = _invocation_meta.get()
    if call is not None:
        traceparent = call.get('traceparent')
        if traceparent:
            meta['traceparent'] = traceparent
            tracestate = call.get('tracestate')
            if tracestate:
                meta['tracestate'] = tracestate
    return meta


class Caller:
    """Sends outgoing calls through the worker (``request``, ``arequest``) and checks the
    answers; ``notify`` posts a fire-and-forget (``ASYNC``) call, which the server runs and
    does not answer (ending a transaction or stream nobody waits for any more)."""

    __slots__ = ('request', 'arequest', 'notify')

    def __init__(self, request: Request, arequest: Optional[ARequest] = None,
                 notify: Optional[Notify] = None) -> None:
        self.request = request
        self.arequest = arequest
        self.notify = notify or _cannot_notify

    def call(self, conn: str, meta: Dict[str, Any], body: bytes = b''
             ) -> Tuple[Dict[str, Any], bytes]:
        """One call; returns the REPLY's (meta, body) or raises the call's error.

        RuntimeError when called from a coroutine on a running event loop: waiting here
        would stall every task of the loop; the ``a*`` forms are for coroutines."""
        asyncio = sys.modules.get('asyncio')
        if asyncio is not None and asyncio._get_running_loop() is not None:
            raise RuntimeError(
                '%s: a blocking outgoing call from a coroutine would stall the event loop '
                '(every async service of this worker): inside async def use the awaitable '
                'forms, e.g. await conn.aget(...), await db.aexecute(...) / afetch_all / '
                'afetch_one / afetch_value, async with db.atransaction(), async with await '
                'db.astream(...)' % conn)
        raw, data = self.request(meta, body)
        return _checked(conn, raw, data)

    async def acall(self, conn: str, meta: Dict[str, Any], body: bytes = b'',
                    orphan: Optional[Orphan] = None) -> Tuple[Dict[str, Any], bytes]:
        """:meth:`call` for coroutines: the task awaits the REPLY, which another thread
        reads (the CALL itself is written to the socket from the loop's thread).

        ``orphan(raw_meta, body)`` runs (on the loop's thread) when the awaiting task was
        cancelled and the REPLY comes anyway: for a call that opened something on the
        server (a transaction, a stream) that nobody will end now."""
        arequest = self.arequest
        if arequest is None:
            raise RuntimeError('not running inside an oxbus worker: there is no server to '
                               'call')
        if orphan is None:
            raw, data = await arequest(meta, body)
        else:
            raw, data = await arequest(meta, body, orphan=orphan)
        return _checked(conn, raw, data)


def _cannot_notify(meta: Dict[str, Any], body: bytes) -> None:
    raise RuntimeError('not running inside an oxbus worker: there is no server to call')


def _checked(conn: str, raw: bytes, data: bytes) -> Tuple[Dict[str, Any], bytes]:
    try:
        meta = decode_json(raw)
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise OutgoingError('%s: unreadable answer from the server: %r' % (conn, raw[:200]),
                            conn)
    if meta.get('error') is not None:
        raise_error(conn, meta, data)
    return meta, data


# -- what an invocation left open ---------------------------------------------------------

#: The transactions and streams the running invocation opened and has not ended yet:
#: key -> (what, end), ``end()`` posting the ASYNC call that ends it. Set per invocation
#: by the dispatcher (:func:`open_invocation`); None outside invocations (user threads),
#: which are then not tracked. A dict shared by the tasks the invocation creates, which
#: copy the context (and so this reference).
_open: ContextVar[Optional[Dict[Any, Tuple[str, Callable[[], None]]]]] = ContextVar(
    'oxbus_outgoing_open', default=None)


def track(key: Any, what: str, end: Callable[[], None]) -> None:
    """Note that the running invocation opened ``what`` (``end`` ends it on the server).

    The first one of a synchronous invocation creates its registry here, in the handler
    thread's context, which is the dispatcher's: so an invocation that opens nothing costs
    the dispatcher one ``get`` (see :func:`left_open`)."""
    opened = _open.get()
    if opened is None:
        if current_invocation.get() is None:
            return  # outside invocations (a thread of the service's own): not tracked
        opened = {}
        _open.set(opened)
    opened[key] = (what, end)


def untrack(key: Any) -> None:
    """``key`` was ended (or the server ended it)."""
    opened = _open.get()
    if opened is not None:
        opened.pop(key, None)


#: For the dispatcher: whether the invocation running in this context opened anything.
left_open = _open.get


def open_invocation() -> Any:
    """For the dispatcher, as an async invocation starts: its registry, created up front so
    that the tasks it creates share it; a token for :func:`close_invocation`."""
    return _open.set({})


def close_invocation(token: Any, service: str) -> None:
    """For the dispatcher, as an invocation ends: end what it left open on the server
    (without waiting: ASYNC calls) and log a warning naming the service for each.
    ``token`` is :func:`open_invocation`'s, or None when :func:`track` created the
    registry (a synchronous invocation)."""
    opened = _open.get()
    if token is None:
        _open.set(None)
    else:
        _open.reset(token)
    if opened:
        import logging
        log = logging.getLogger('oxbus.outgoing')
        for what, end in list(opened.values()):
            log.warning('service %s ended with %s still open: ending it now (end it in the '
                        'service: commit/rollback, close, with blocks)', service, what)
            try:
                end()
            except Exception:
                log.warning('ending %s left open by service %s failed', what, service,
                            exc_info=True)
        opened.clear()
