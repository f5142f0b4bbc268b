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

from ._protocol import decode_json
from .service import _invocation_meta, current_invocation

TYPE_CHECKING = False  # see _protocol.py: keep ``typing`` out of the worker's startup
if TYPE_CHECKING:
    from typing import Any, Awaitable, Callable, Dict, Optional, Tuple, Type

    Request = Callable[[Any, bytes], Tuple[bytes, bytes]]
    ARequest = Callable[[Any, bytes], Awaitable[Tuple[bytes, bytes]]]

__all__ = [
    'OutgoingError', 'UnknownConnection', 'InvalidCall', 'PoolFull', 'OutgoingTimeout',
    'OutgoingConnectionError', 'ResponseTooLarge', 'AuthError', 'DatabaseError', 'SQLError',
    'IntegrityError', 'ProgrammingError', 'HTTPError', 'Caller',
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
    if error == 'sql':
        code = doc.get('code')
        code = str(code) if code is not None else None
        raise database_error_class(code)(message, conn, error, status, code)
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
    answers."""

    __slots__ = ('request', 'arequest')

    def __init__(self, request: Request, arequest: Optional[ARequest] = None) -> None:
        self.request = request
        self.arequest = arequest

    def call(self, conn: str, meta: Dict[str, Any], body: bytes = b''
             ) -> Tuple[Dict[str, Any], bytes]:
        """One call; returns the REPLY's (meta, body) or raises the call's error."""
        raw, data = self.request(meta, body)
        return _checked(conn, raw, data)

    async def acall(self, conn: str, meta: Dict[str, Any], body: bytes = b''
                    ) -> Tuple[Dict[str, Any], bytes]:
        """:meth:`call` for coroutines: the event loop does not block while it waits."""
        arequest = self.arequest
        if arequest is None:
            raise RuntimeError('not running inside an oxbus worker: there is no server to '
                               'call')
        raw, data = await arequest(meta, body)
        return _checked(conn, raw, data)


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
