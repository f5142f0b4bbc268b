"""Outgoing REST connections, for services: ``self.out.rest['CRM'].conn.get(self.cid)``.

The API is Zato's::

    crm = self.out.rest['CRM'].conn                   # or self.out.plain_http['CRM'].conn
    response = crm.get(self.cid, params={'id': 42})   # {id} of url_path, the rest ?query
    response = crm.post(self.cid, {'name': 'Ann'})    # dict/list: sent as JSON
    if response.ok:
        customer = response.data                      # parsed JSON (None if not JSON)

    # async def handle(self): the same calls, awaitable
    response = await crm.aget(self.cid, params={'id': 42})

The HTTP call is made by the server (its pool of connections, shared by all workers, with
the connection's TLS settings, auth and retries); the worker sends one ``out.rest`` call
over its IPC connection (``ipc-protocol/SPEC.md``). Error statuses of the remote system do
not raise (as in Zato): check ``response.ok`` or call ``response.raise_for_status()``.
Failures of the call itself raise the exceptions of :mod:`oxbus.outgoing` (timeout,
refused connection, full pool...), whose messages name the connection and its address.
"""

from __future__ import annotations

from ._outcall import HTTPError, invocation_context
from ._protocol import decode_json, encode_json
from .service import Headers

TYPE_CHECKING = False  # see _protocol.py: keep ``typing`` out of the worker's startup
if TYPE_CHECKING:
    from typing import Any, Dict, Mapping, Optional, Tuple

    from ._outcall import Caller

__all__ = ['Response', 'RestConnection', 'RestWrapper', 'RestConnections']

_BYTES_TYPES = (bytes, bytearray, memoryview)
_CONTENT_TYPE = 'content-type'


class Response:
    """The remote system's answer, whatever its status.

    ``status_code``; ``headers`` (case-insensitive; repeated headers joined with ``, ``,
    ``headers.getall(name)`` for each value); ``content`` (bytes); ``text`` (decoded by the
    charset of ``Content-Type``, UTF-8 by default, undecodable bytes replaced); ``data``
    (the parsed JSON when ``Content-Type`` is JSON and the body parses, else None);
    ``json()``; ``ok``; ``raise_for_status()``.
    """

    __slots__ = ('status_code', 'headers', 'content', 'conn', '_text', '_data')

    def __init__(self, status_code: int, headers: Any, content: bytes,
                 conn: str = '') -> None:
        self.status_code = status_code
        self.headers = Headers(headers)
        self.content = content
        #: The connection's name.
        self.conn = conn
        self._text: Optional[str] = None
        self._data: Any = _UNSET

    @property
    def encoding(self) -> str:
        """The charset of ``Content-Type``, or ``utf-8`` when it names none (or an unknown
        one)."""
        charset = _param(self.headers.get(_CONTENT_TYPE, ''), 'charset')
        if charset:
            import codecs
            try:
                return codecs.lookup(charset).name
            except LookupError:
                pass
        return 'utf-8'

    @property
    def text(self) -> str:
        """The body as text (see :attr:`encoding`); undecodable bytes become U+FFFD."""
        if self._text is None:
            self._text = self.content.decode(self.encoding, 'replace')
        return self._text

    @property
    def is_json(self) -> bool:
        """Whether ``Content-Type`` is JSON: ``application/json`` or any ``+json`` type."""
        media = self.headers.get(_CONTENT_TYPE, '').split(';', 1)[0].strip().lower()
        return media == 'application/json' or media.endswith('+json')

    @property
    def data(self) -> Any:
        """The parsed JSON body when ``Content-Type`` says JSON and the body parses; else
        None (an empty body, another content type, or a body that is not JSON)."""
        if self._data is _UNSET:
            data = None
            if self.content and self.is_json:
                try:
                    data = self.json()
                except ValueError:
                    pass
            self._data = data
        return self._data

    def json(self) -> Any:
        """Parse the body as JSON, whatever ``Content-Type`` says; ValueError if it is not
        JSON (an empty body is not)."""
        if self.encoding in ('utf-8', 'ascii'):
            return decode_json(self.content)
        import json
        return json.loads(self.text)

    @property
    def ok(self) -> bool:
        """True for a status below 400."""
        return self.status_code < 400

    def __bool__(self) -> bool:
        return self.ok

    @property
    def reason(self) -> str:
        """The status's standard reason phrase (``'Not Found'``), '' for unknown ones."""
        from http import HTTPStatus
        try:
            return HTTPStatus(self.status_code).phrase
        except ValueError:
            return ''

    def raise_for_status(self) -> None:
        """Raise :class:`~oxbus.outgoing.HTTPError` when the status is 400 or more."""
        if self.status_code >= 400:
            kind = 'client error' if self.status_code < 500 else 'server error'
            raise HTTPError('%s: %d %s (%s)' % (self.conn, self.status_code, self.reason,
                                                kind), self.conn, self)

    def __repr__(self) -> str:
        return '<Response [%d] from %s>' % (self.status_code, self.conn)


_UNSET = object()


def _param(header: str, name: str) -> Optional[str]:
    """A parameter of a header value such as ``text/html; charset=ISO-8859-1``."""
    for part in header.split(';')[1:]:
        key, sep, value = part.partition('=')
        if sep and key.strip().lower() == name:
            return value.strip().strip('"') or None
    return None


def _param_value(name: str, value: Any) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_param_value(name, v) for v in value if v is not None]
    if isinstance(value, _BYTES_TYPES):
        return bytes(value).decode('utf-8')
    raise TypeError('query parameter %r: a str, number, bool or list of them, not %s'
                    % (name, type(value).__name__))


def _params(params: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    """``params`` for the meta: str values, lists for repeated parameters, None dropped."""
    if not params:
        return None
    if not hasattr(params, 'items'):
        raise TypeError('params is a dict (name -> value), not %s' % type(params).__name__)
    return {str(name): _param_value(name, value) for name, value in params.items()
            if value is not None}


def _headers(headers: Optional[Mapping[str, Any]], meta: Dict[str, Any]) -> None:
    """Put ``headers`` into the meta; a ``Content-Type`` among them becomes ``content_type``."""
    if not headers:
        return
    if not hasattr(headers, 'items'):
        raise TypeError('headers is a dict (name -> value), not %s' % type(headers).__name__)
    out = {}
    for name, value in headers.items():
        if value is None:
            continue
        name = bytes(name).decode('latin-1') if isinstance(name, _BYTES_TYPES) else str(name)
        # bytes are the header's octets (HTTP's latin-1), not "b'...'"
        value = (bytes(value).decode('latin-1') if isinstance(value, _BYTES_TYPES)
                 else str(value))
        if name.lower() == _CONTENT_TYPE:
            meta['content_type'] = value
        else:
            out[name] = value
    if out:
        meta['headers'] = out


def _body(data: Any, meta: Dict[str, Any]) -> bytes:
    """The CALL body of ``data``: bytes as they are, str as UTF-8, anything else as JSON."""
    if data is None:
        return b''
    if isinstance(data, _BYTES_TYPES):
        return bytes(data)
    if isinstance(data, str):
        return data.encode('utf-8')
    try:
        body = encode_json(data)
    except (TypeError, ValueError) as e:
        raise TypeError('data is bytes, str or a JSON-serialisable value: %s' % e) from None
    meta['body_kind'] = 'json'
    return body


class RestConnection:
    """One outgoing REST connection (Zato's ``self.out.rest[name].conn``).

    Every method takes the calling invocation's cid first (Zato's form; pass ``self.cid``:
    it is sent as ``X-Oxbus-CID``), then ``params`` (``{placeholder}`` values of the
    connection's ``url_path``, the rest the query string; values str, numbers, bools or
    lists of them, None left out) and ``headers`` (a dict; they add to and override the
    connection's default headers; a ``Content-Type`` here is the body's). ``timeout`` is
    the most this call may take, in seconds (the connection's own limits apply under it).
    ``data`` is the body: bytes as they are, str as UTF-8, anything else (dict, list...)
    as JSON, which the server sends per the connection's data format (JSON, form, raw).

    ``aget``, ``apost``... are the same calls for ``async def`` services: they return an
    awaitable and never block the event loop.
    """

    __slots__ = ('name', '_caller')

    def __init__(self, name: str, caller: Caller) -> None:
        self.name = name
        self._caller = caller

    def _prepare(self, method: str, cid: Any, data: Any, params: Any, headers: Any,
                 timeout: Optional[float]) -> Tuple[Dict[str, Any], bytes]:
        meta: Dict[str, Any] = {'op': 'out.rest', 'conn': self.name, 'method': method}
        meta.update(invocation_context(cid))
        query = _params(params)
        if query:
            meta['params'] = query
        _headers(headers, meta)
        body = _body(data, meta)
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or \
                    timeout <= 0:
                raise ValueError('timeout is a positive number of seconds, not %r'
                                 % (timeout,))
            meta['deadline_ms'] = max(1, int(timeout * 1000))
        return meta, body

    def _response(self, meta: Dict[str, Any], body: bytes) -> Response:
        return Response(int(meta.get('status') or 0), meta.get('headers') or (), body,
                        self.name)

    def request(self, method: str, cid: Any = None, data: Any = '', params: Any = None,
                headers: Any = None, timeout: Optional[float] = None) -> Response:
        """Any method: ``GET``, ``POST``, ``PUT``, ``PATCH``, ``DELETE``, ``OPTIONS``,
        ``HEAD``."""
        meta, body = self._prepare(method.upper(), cid, data, params, headers, timeout)
        return self._response(*self._caller.call(self.name, meta, body))

    async def arequest(self, method: str, cid: Any = None, data: Any = '',
                       params: Any = None, headers: Any = None,
                       timeout: Optional[float] = None) -> Response:
        """:meth:`request`, awaitable."""
        meta, body = self._prepare(method.upper(), cid, data, params, headers, timeout)
        return self._response(*await self._caller.acall(self.name, meta, body))

    # Zato's methods. GET and HEAD send no body.

    def get(self, cid: Any = None, params: Any = None, headers: Any = None,
            timeout: Optional[float] = None) -> Response:
        return self.request('GET', cid, None, params, headers, timeout)

    def head(self, cid: Any = None, params: Any = None, headers: Any = None,
             timeout: Optional[float] = None) -> Response:
        return self.request('HEAD', cid, None, params, headers, timeout)

    def post(self, cid: Any = None, data: Any = '', params: Any = None, headers: Any = None,
             timeout: Optional[float] = None) -> Response:
        return self.request('POST', cid, data, params, headers, timeout)

    send = post  # Zato's other name for post

    def put(self, cid: Any = None, data: Any = '', params: Any = None, headers: Any = None,
            timeout: Optional[float] = None) -> Response:
        return self.request('PUT', cid, data, params, headers, timeout)

    def patch(self, cid: Any = None, data: Any = '', params: Any = None, headers: Any = None,
              timeout: Optional[float] = None) -> Response:
        return self.request('PATCH', cid, data, params, headers, timeout)

    def delete(self, cid: Any = None, data: Any = '', params: Any = None,
               headers: Any = None, timeout: Optional[float] = None) -> Response:
        return self.request('DELETE', cid, data, params, headers, timeout)

    def options(self, cid: Any = None, data: Any = '', params: Any = None,
                headers: Any = None, timeout: Optional[float] = None) -> Response:
        return self.request('OPTIONS', cid, data, params, headers, timeout)

    async def aget(self, cid: Any = None, params: Any = None, headers: Any = None,
                   timeout: Optional[float] = None) -> Response:
        return await self.arequest('GET', cid, None, params, headers, timeout)

    async def ahead(self, cid: Any = None, params: Any = None, headers: Any = None,
                    timeout: Optional[float] = None) -> Response:
        return await self.arequest('HEAD', cid, None, params, headers, timeout)

    async def apost(self, cid: Any = None, data: Any = '', params: Any = None,
                    headers: Any = None, timeout: Optional[float] = None) -> Response:
        return await self.arequest('POST', cid, data, params, headers, timeout)

    async def aput(self, cid: Any = None, data: Any = '', params: Any = None,
                   headers: Any = None, timeout: Optional[float] = None) -> Response:
        return await self.arequest('PUT', cid, data, params, headers, timeout)

    async def apatch(self, cid: Any = None, data: Any = '', params: Any = None,
                     headers: Any = None, timeout: Optional[float] = None) -> Response:
        return await self.arequest('PATCH', cid, data, params, headers, timeout)

    async def adelete(self, cid: Any = None, data: Any = '', params: Any = None,
                      headers: Any = None, timeout: Optional[float] = None) -> Response:
        return await self.arequest('DELETE', cid, data, params, headers, timeout)

    async def aoptions(self, cid: Any = None, data: Any = '', params: Any = None,
                       headers: Any = None, timeout: Optional[float] = None) -> Response:
        return await self.arequest('OPTIONS', cid, data, params, headers, timeout)

    def __repr__(self) -> str:
        return '<RestConnection %s>' % self.name


class RestWrapper:
    """``self.out.rest[name]``: Zato's wrapper, whose ``conn`` makes the calls."""

    __slots__ = ('name', 'conn')

    def __init__(self, name: str, caller: Caller) -> None:
        self.name = name
        self.conn = RestConnection(name, caller)

    def __repr__(self) -> str:
        return '<RestWrapper %s>' % self.name


class RestConnections:
    """``self.out.rest`` (alias ``self.out.plain_http``): the REST connections by name.

    A name is looked up by the server at call time: an unknown one raises
    :class:`~oxbus.outgoing.UnknownConnection` when it is called, not here.
    """

    __slots__ = ('_caller', '_conns')

    def __init__(self, caller: Caller) -> None:
        self._caller = caller
        self._conns: Dict[str, RestWrapper] = {}

    def __getitem__(self, name: str) -> RestWrapper:
        wrapper = self._conns.get(name)
        if wrapper is None:
            if not isinstance(name, str):
                raise TypeError('connection names are strings, not %s' % type(name).__name__)
            wrapper = RestWrapper(name, self._caller)
            if len(self._conns) < 256:  # names made up at run time must not pile up
                wrapper = self._conns.setdefault(name, wrapper)
        return wrapper

    def get(self, name: str) -> RestWrapper:
        """``self[name]`` (Zato's dict-like access; a name is checked only when called)."""
        return self[name]

    def __repr__(self) -> str:
        return '<RestConnections>'

