"""The service API (``Service``, ``Request``, ``Response``) and the dispatcher that runs it.

Zato's service API is the model, so that a Zato user feels at home and Zato services can
move over with an import change::

    from oxbus import Service

    class GetCustomer(Service):
        name = 'crm.customer.get'               # default: 'module.get-customer'
        input = 'customer_id', '-needs_details' # SimpleIO, see oxbus.simpleio
        output = 'name', '-email'

        def handle(self):                       # or: async def handle(self)
            self.response.payload = {'name': 'Ann'}

Everything a class needs at run time (its name, its parsed SimpleIO, which method answers
which HTTP verb, which of them are coroutines) is worked out once, in
``Service.__init_subclass__``, so that a bad declaration fails the deploy and a request
pays only for dictionary look-ups.

:class:`Dispatcher` is the bridge between the wire and a service: it takes a ``CALL``'s
meta and body and returns the encoded ``REPLY`` frame. It knows nothing about sockets or
threads; ``oxbus._runtime`` decides where and when it runs, and the tests drive it
directly.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Mapping
from contextvars import ContextVar

from . import _protocol
from ._protocol import REPLY, WORKER_STREAM_BIT, encode_call, encode_json, encode_reply
from .cache import CacheAPI
from .errors import BadRequest, MethodNotAllowed, NotFound, Reportable
from .simpleio import Bunch, OutputError, filter_output, parse_input, parse_spec

TYPE_CHECKING = False  # see _protocol.py: keep ``typing`` out of the worker's startup
if TYPE_CHECKING:
    from typing import (Any, Awaitable, Callable, ClassVar, Dict, Iterator, List, Optional,
                        Tuple, Type)

    from .simpleio import Elem, Spec

    #: (cid, service name, stream) of the invocation a thread or task is running.
    Invocation = Tuple[str, str, int]

__all__ = ['Service', 'Request', 'HTTPRequest', 'Response', 'Channel', 'Headers',
           'Dispatcher', 'current_invocation', 'default_name', 'new_cid']

#: The invocation running in the current thread or asyncio task. A ContextVar rather than
#: a thread-local because async services share one thread; each task gets its own copy.
#: The LOG handler reads it, so records from *any* logger are tagged with cid and service.
current_invocation: ContextVar[Optional[Invocation]] = ContextVar(
    'oxbus_invocation', default=None)

JSON_CONTENT_TYPE = 'application/json'
TEXT_CONTENT_TYPE = 'text/plain; charset=utf-8'
BINARY_CONTENT_TYPE = 'application/octet-stream'

# The one reply shape that dominates traffic (200, JSON, no extra headers) gets its meta
# prebuilt: meta_len + meta bytes, so a reply costs one header pack and one concatenation.
_OK_JSON_META = encode_json({'status': 200, 'content_type': JSON_CONTENT_TYPE})
_OK_JSON_PREFIX = _protocol.META_LEN.pack(len(_OK_JSON_META)) + _OK_JSON_META
_OK_JSON_PREFIX_LEN = len(_OK_JSON_PREFIX)

#: The REPLY meta ``error`` kinds (ipc-protocol/SPEC.md): an input refused before the
#: handler ran, and a call of a service this worker does not have.
REPLY_ERROR_INPUT = 'input'
REPLY_ERROR_NO_SERVICE = 'no_service'
_pack_header = _protocol.HEADER.pack
_decode_json = _protocol.decode_json

# Error bodies may carry user-supplied ``details``; ``default=str`` makes sure an odd value
# there degrades to its text instead of turning a 4xx into a crash.
_encode_error_body = json.JSONEncoder(separators=(',', ':'), ensure_ascii=False,
                                      default=str).encode

# inspect.iscoroutinefunction would do, but importing inspect costs more than the rest of
# the package; this is the flag it tests.
_CO_COROUTINE = 0x80


def _is_coroutine_function(func: Any) -> bool:
    code = getattr(getattr(func, '__func__', func), '__code__', None)
    return code is not None and bool(code.co_flags & _CO_COROUTINE)


def default_name(module: str, class_name: str) -> str:
    """Zato's default service name: ``demo.GetCustomer`` -> ``demo.get-customer``.

    A dash goes before every capital that starts a word: one that follows a lower-case
    letter or a digit (``getHTTP``, ``V2Items``), or that is followed by a lower-case
    letter (the ``S`` of ``HTTPServer``). Underscores count as dashes. Written as a loop
    rather than the usual pair of regular expressions because compiling those would be
    paid by every worker at startup.
    """
    out = []
    last = len(class_name) - 1
    for i, ch in enumerate(class_name):
        if ch.isupper() and i:
            prev = class_name[i - 1]
            if prev.islower() or prev.isdigit() or (i < last and class_name[i + 1].islower()):
                out.append('-')
        out.append('-' if ch == '_' else ch.lower())
    kebab = '-'.join(part for part in ''.join(out).split('-') if part)
    return '%s.%s' % (module, kebab)


def new_cid() -> str:
    """A new correlation id: 20 hex digits, the shape the supervisor uses too."""
    return os.urandom(10).hex()


class Security:
    """Who the channel's security definition let in: ``name`` and ``type`` (``'basic'``,
    ``'apikey'``, ``'jwt'``) of the definition, ``username`` (HTTP Basic) or ``subject``
    (the JWT's ``sub``). Never a password, key or token."""

    __slots__ = ('name', 'type', 'username', 'subject')

    def __init__(self, info: Dict[str, Any]) -> None:
        self.name = info.get('name')
        self.type = info.get('type')
        self.username = info.get('username')
        self.subject = info.get('subject')

    def __repr__(self) -> str:
        return 'Security(name=%r, type=%r, username=%r, subject=%r)' % (
            self.name, self.type, self.username, self.subject)


class Channel:
    """Where an invocation came from: ``type`` is ``'rest'``, ``'jsonrpc'`` (a JSON-RPC 2.0
    channel), ``'admin'`` (the admin API's invoke) or ``'invoke'`` (another service);
    ``name`` the channel's name (None for direct invocations); ``security`` a
    :class:`Security` when the channel checked who called (else None)."""

    __slots__ = ('type', 'name', 'security')

    def __init__(self, type: str, name: Optional[str] = None,  # noqa: A002 - Zato's name
                 security: Optional[Security] = None) -> None:
        self.type = type
        self.name = name
        self.security = security

    def __repr__(self) -> str:
        return 'Channel(%r, name=%r, security=%r)' % (self.type, self.name, self.security)


# Channels without a caller are immutable and few, so one shared instance per (type, name)
# saves an allocation per request.
_channels: Dict[Any, Channel] = {}


def _channel(type_: Optional[str], name: Optional[str] = None) -> Channel:
    type_ = type_ or 'invoke'
    channel = _channels.get((type_, name))
    if channel is None:
        channel = _channels[(type_, name)] = Channel(type_, name)
    return channel


class Headers(Mapping):  # type: ignore[type-arg]
    """The request headers: a read-only mapping with case-insensitive names.

    Repeated headers read as one value joined with ``', '`` (``'; '`` for ``cookie``), as
    HTTP allows; :meth:`getall` returns them separately.
    """

    __slots__ = ('_pairs', '_map')

    def __init__(self, pairs: Any = ()) -> None:
        self._pairs: List[Tuple[str, str]] = [(str(n).lower(), str(v)) for n, v in pairs]
        merged: Dict[str, str] = {}
        for name, value in self._pairs:
            if name in merged:
                merged[name] += ('; ' if name == 'cookie' else ', ') + value
            else:
                merged[name] = value
        self._map = merged

    def __getitem__(self, name: str) -> str:
        return self._map[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._map

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def getall(self, name: str) -> List[str]:
        """Every value of ``name``, in arrival order."""
        name = name.lower()
        return [v for n, v in self._pairs if n == name]

    def __repr__(self) -> str:
        return 'Headers(%r)' % (self._pairs,)


class HTTPRequest:
    """The HTTP side of a request. Everything is derived lazily from the call's meta."""

    __slots__ = ('_meta', '_query', '_headers', '_params')

    def __init__(self, meta: Dict[str, Any]) -> None:
        self._meta = meta
        self._query: Optional[Dict[str, str]] = None
        self._headers: Optional[Headers] = None
        self._params: Optional[Dict[str, str]] = None

    @property
    def method(self) -> Optional[str]:
        """The HTTP method, or None for an invocation that did not come over HTTP."""
        return self._meta.get('method')

    @property
    def path(self) -> Optional[str]:
        """The request path as received (percent-encoded)."""
        return self._meta.get('path')

    @property
    def remote_addr(self) -> Optional[str]:
        """The client's IP address (``'203.0.113.7'``, ``'2001:db8::7'``).

        Behind reverse proxies listed in the server's ``http.trusted_proxies`` it is the
        client they report in ``X-Forwarded-For``; otherwise it is the TCP peer. None for an
        invocation that did not come over HTTP.
        """
        return self._meta.get('remote_addr')

    @property
    def scheme(self) -> Optional[str]:
        """``'http'`` or ``'https'``: what the client used (``X-Forwarded-Proto`` behind a
        trusted proxy that terminates TLS). None for an invocation that did not come over
        HTTP."""
        return self._meta.get('scheme')

    @property
    def port(self) -> Optional[int]:
        """The port the client connected to (``X-Forwarded-Port`` behind a trusted proxy).
        None for an invocation that did not come over HTTP."""
        return self._meta.get('port')

    @property
    def params(self) -> Dict[str, str]:
        """The path parameters of the matched channel (``/customer/{id}``)."""
        if self._params is None:
            self._params = dict(self._meta.get('params') or ())
        return self._params

    @property
    def query_raw(self) -> str:
        """The raw query string, without ``?``."""
        return self._meta.get('query') or ''

    @property
    def query(self) -> Dict[str, str]:
        """The query string decoded into a dict; for a repeated key the last value wins."""
        if self._query is None:
            raw = self._meta.get('query')
            if raw:
                # urllib.parse is imported here, not at startup: most services never
                # look at the query string.
                from urllib.parse import parse_qsl
                self._query = dict(parse_qsl(raw, keep_blank_values=True))
            else:
                self._query = {}
        return self._query

    @property
    def headers(self) -> Headers:
        """The request headers, case-insensitive."""
        if self._headers is None:
            self._headers = Headers(self._meta.get('headers') or ())
        return self._headers

    @property
    def GET(self) -> Dict[str, str]:  # noqa: N802 - Zato's name
        """Zato's name for :attr:`query`."""
        return self.query

    def __repr__(self) -> str:
        return '<HTTPRequest %s %s>' % (self.method, self.path)


class Request:
    """What a service is asked: ``payload``, ``raw``, ``input`` and ``http``."""

    __slots__ = ('payload', 'raw', 'input', 'data_format', '_meta', '_http')

    def __init__(self, payload: Any = None, raw: bytes = b'', data_format: str = 'json',
                 meta: Optional[Dict[str, Any]] = None) -> None:
        #: The parsed JSON body (None for an empty one), or the raw bytes for raw calls.
        self.payload = payload
        #: The body exactly as received.
        self.raw = raw
        #: The declared SimpleIO input, typed; attribute and item access.
        self.input = Bunch()
        self.data_format = data_format
        self._meta = meta if meta is not None else {}
        self._http: Optional[HTTPRequest] = None

    @property
    def raw_request(self) -> bytes:
        """Zato's name for :attr:`raw`."""
        return self.raw

    @property
    def http(self) -> HTTPRequest:
        """Method, path, path params, query and headers of the HTTP request."""
        if self._http is None:
            self._http = HTTPRequest(self._meta)
        return self._http

    def __repr__(self) -> str:
        return '<Request %s %d bytes>' % (self.data_format, len(self.raw))


class Response:
    """What a service answers: ``payload``, ``status_code``, ``headers``, ``content_type``.

    The content type follows the payload unless set: dict or list -> JSON, str -> UTF-8
    text, bytes -> ``application/octet-stream``, None -> an empty body.
    """

    __slots__ = ('payload', 'status_code', 'content_type', '_headers')

    def __init__(self) -> None:
        self.payload: Any = None
        self.status_code: int = 200
        self.content_type: Optional[str] = None
        self._headers: Optional[Dict[str, Any]] = None

    @property
    def headers(self) -> Dict[str, Any]:
        """Extra response headers; a list value sends the header once per item."""
        if self._headers is None:
            self._headers = {}
        return self._headers

    @headers.setter
    def headers(self, value: Dict[str, Any]) -> None:
        self._headers = dict(value)

    def __repr__(self) -> str:
        return '<Response %s>' % self.status_code


class Service:
    """Base class of every service. Subclass it and define ``handle`` (or ``handle_GET``...).

    Class attributes a subclass may set: ``name``, ``input``, ``output``. Per invocation the
    worker sets ``cid``, ``request``, ``response`` and ``channel``; ``logger`` is a
    ``logging.Logger`` named after the service whose records carry ``cid`` and ``service``.

    A class that defines no handler at all is taken as an abstract base (common hooks and
    helpers for real services) and is not deployed.
    """

    #: The service name; defaults to ``module.kebab-case-class-name``.
    name: ClassVar[str] = ''
    #: SimpleIO input declaration; see :mod:`oxbus.simpleio`.
    input: ClassVar[Spec] = None
    #: SimpleIO output declaration; see :mod:`oxbus.simpleio`.
    output: ClassVar[Spec] = None
    logger: ClassVar[logging.Logger] = logging.getLogger('oxbus.service')

    # Set per invocation by the dispatcher.
    cid: str
    request: Request
    response: Response
    channel: Channel

    # Worked out once per class by __init_subclass__; see the module docstring.
    _oxbus_input: ClassVar[Tuple[Elem, ...]] = ()
    _oxbus_output: ClassVar[Tuple[Elem, ...]] = ()
    _oxbus_verbs: ClassVar[Dict[str, Tuple[str, bool]]] = {}
    _oxbus_default: ClassVar[Optional[Tuple[str, bool]]] = None
    _oxbus_async: ClassVar[bool] = False
    _oxbus_hooks: ClassVar[Tuple[bool, bool]] = (False, False)
    _oxbus_abstract: ClassVar[bool] = True
    _oxbus_dispatcher: Optional[Dispatcher] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _configure(cls)

    def handle(self) -> Any:
        """Answer the invocation: read ``self.request``, fill in ``self.response``."""
        raise NotImplementedError('%s defines no handle method' % type(self).__name__)

    def before_handle(self) -> Any:
        """Hook run before ``handle`` (after input validation). Zato's name."""

    def after_handle(self) -> Any:
        """Hook run after ``handle`` returned normally. Zato's name."""

    def invoke(self, name: str, payload: Any = None) -> Any:
        """Run another service of this worker in this thread and return its response payload.

        As in Zato: the callee's input is validated, its exceptions propagate to the caller,
        and the return value is the callee's ``self.response.payload`` (output-filtered).
        """
        return self._require_dispatcher().invoke(self, name, payload)

    def invoke_async(self, name: str, payload: Any = None) -> str:
        """Ask the supervisor to run ``name`` later, fire-and-forget; returns its new cid.

        ``payload`` is sent as JSON (bytes are taken to be JSON already).
        """
        return self._require_dispatcher().invoke_async(name, payload)

    @property
    def cache(self) -> CacheAPI:
        """The server's caches: ``self.cache.default.get(key)``, ``self.cache['name']``
        (see :mod:`oxbus.cache`)."""
        return self._require_dispatcher().cache

    def _require_dispatcher(self) -> Dispatcher:
        dispatcher = self._oxbus_dispatcher
        if dispatcher is None:
            raise RuntimeError('%s is not running inside an oxbus worker' % type(self).__name__)
        return dispatcher

    def __repr__(self) -> str:
        return '<%s %s cid=%s>' % (type(self).__name__, self.name,
                                   getattr(self, 'cid', None))


class _ContextFilter(logging.Filter):
    """Stamps ``cid`` and ``service`` of the running invocation on a service logger's records."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = current_invocation.get()
        record.cid, record.service = (current[0], current[1]) if current else (None, None)
        return True


_context_filter = _ContextFilter()
_HOOK_NAMES = ('before_handle', 'after_handle')


#: Parsed SimpleIO declarations by value: services declare the same few shapes again and
#: again, and a deploy of 1000 services would otherwise parse them 2000 times and keep as
#: many copies (Elem tuples are never changed after parsing, so sharing them is safe).
_specs: Dict[Any, Tuple[Elem, ...]] = {}


def _parsed_spec(spec: Spec, where: str) -> Tuple[Elem, ...]:
    """:func:`~oxbus.simpleio.parse_spec`, shared by declarations of equal value."""
    try:
        key = spec if spec is None or isinstance(spec, str) else tuple(spec)  # type: ignore
        elems = _specs.get(key)
    except TypeError:  # not iterable, or an unhashable element: parse_spec says what is wrong
        return parse_spec(spec, where)
    if elems is None:
        elems = parse_spec(key, where)
        if len(_specs) >= 4096:  # distinct declarations are few; bound it anyway
            _specs.clear()
        _specs[key] = elems
    return elems


def _configure(cls: Type[Service]) -> None:
    """Work out everything the dispatcher needs about a new Service subclass."""
    where = '%s.%s' % (cls.__module__, cls.__qualname__)
    own_name = cls.__dict__.get('name')
    if own_name is not None and (not isinstance(own_name, str) or not own_name.strip()):
        raise TypeError('%s: name must be a non-empty string, not %r' % (where, own_name))
    # Only the class's *own* name counts: a subclass of a named service is another service
    # and must not silently inherit (and then clash with) its parent's name.
    cls.name = own_name or default_name(cls.__module__, cls.__name__)
    cls._oxbus_input = _parsed_spec(cls.input, where + '.input')
    cls._oxbus_output = _parsed_spec(cls.output, where + '.output')

    verbs = {}
    # The handle_* names dir(cls) would list, without building and sorting all of them (a
    # deploy of 1000 services creates 1000 classes): Service and object define none.
    names = {attr for klass in cls.__mro__ if klass is not Service and klass is not object
             for attr in vars(klass) if attr[:7] == 'handle_'}
    for attr in sorted(names):
        verb = attr[7:]
        func = getattr(cls, attr)
        if verb.isupper() and callable(func):
            verbs[verb] = (attr, _is_coroutine_function(func))
    default = None
    if cls.handle is not Service.handle:
        default = ('handle', _is_coroutine_function(cls.handle))
    cls._oxbus_verbs = verbs
    cls._oxbus_default = default
    cls._oxbus_abstract = default is None and not verbs
    handlers = list(verbs.values()) + ([default] if default else [])
    cls._oxbus_async = any(is_async for _, is_async in handlers)

    hooks = tuple(getattr(cls, h) is not getattr(Service, h) for h in _HOOK_NAMES)
    cls._oxbus_hooks = hooks  # type: ignore[assignment]
    async_hooks = [h for h in _HOOK_NAMES if _is_coroutine_function(getattr(cls, h))]
    if async_hooks and not all(is_async for _, is_async in handlers):
        raise TypeError('%s: %s is async, so every handler must be async def too'
                        % (where, ' and '.join(async_hooks)))
    if cls._oxbus_abstract and own_name:
        raise TypeError('%s: service %r defines no handle method' % (where, own_name))

    cls.logger = logging.getLogger(cls.name)
    if _context_filter not in cls.logger.filters:
        cls.logger.addFilter(_context_filter)


def _pick_handler(cls: Type[Service], method: Optional[str]) -> Tuple[str, bool]:
    """The (method name, is_async) that answers ``method``, or raise MethodNotAllowed."""
    verbs = cls._oxbus_verbs
    if verbs:
        handler = verbs.get(method) if method else None
        if handler is not None:
            return handler
        # An invocation that did not come over HTTP has no verb; plain handle() takes it.
        if method is None and cls._oxbus_default is not None:
            return cls._oxbus_default
        raise MethodNotAllowed('method not allowed: %s' % (method or '(none)'),
                               allowed=sorted(verbs))
    return cls._oxbus_default  # type: ignore[return-value]


def _header_pairs(headers: Dict[str, Any]) -> List[List[str]]:
    pairs: List[List[str]] = []
    for name, value in headers.items():
        name = str(name).lower()
        if isinstance(value, (list, tuple)):
            pairs.extend([name, str(v)] for v in value)
        else:
            pairs.append([name, str(value)])
    return pairs


class Dispatcher:
    """Runs services: one ``CALL`` (meta + body) in, one encoded ``REPLY`` frame out.

    ``services`` maps names to classes. ``post`` sends a frame to the supervisor (used by
    ``invoke_async``); ``run_coroutine`` runs a coroutine to completion from a plain thread
    (used when ``self.invoke`` targets an async service). The runtime supplies both; the
    defaults suit tests: frames are collected in :attr:`posted`, coroutines run with
    ``asyncio.run``.
    """

    def __init__(self, services: Dict[str, Type[Service]],
                 post: Optional[Callable[[bytes], None]] = None,
                 run_coroutine: Optional[Callable[[Awaitable[Any]], Any]] = None,
                 request: Optional[Callable[[bytes, bytes], Tuple[bytes, bytes]]] = None
                 ) -> None:
        self.services = dict(services)
        #: ``self.cache`` of every service; its calls go through ``request`` (the worker's
        #: CALL-and-wait to the supervisor).
        self.cache = CacheAPI(request or _no_server)
        self.posted: List[bytes] = []
        self._post = post if post is not None else self.posted.append
        self._run_coroutine = run_coroutine or _asyncio_run
        # next() on an itertools.count is atomic under the GIL, so no lock is needed to
        # hand out worker stream ids from many handler threads.
        self._stream_ids = itertools.count(1)
        #: Handlers of the supervisor's other CALL ops (``modules.activate``...), by op name:
        #: ``(stream, meta, body) -> REPLY frame``. Consulted only once a call turned out not
        #: to be an invocation of a known service, so they cost the hot path nothing.
        self.ops: Dict[str, Callable[[int, Dict[str, Any], bytes], bytes]] = {}

    # -- routing ------------------------------------------------------------------------

    def _lookup(self, meta: Dict[str, Any]) -> Optional[Type[Service]]:
        try:
            return self.services.get(meta.get('service'))  # type: ignore[arg-type]
        except TypeError:  # an unhashable "service" (a list...): no such service
            return None

    def is_async(self, meta: Dict[str, Any]) -> bool:
        """Whether this call must run on the event loop rather than in a thread."""
        cls = self._lookup(meta)
        if cls is None or not cls._oxbus_async or meta.get('op') != 'invoke':
            return False
        try:
            return _pick_handler(cls, meta.get('method'))[1]
        except MethodNotAllowed:
            return False  # the 405 is produced by the synchronous path

    # -- running ------------------------------------------------------------------------

    def run(self, stream: int, meta: Dict[str, Any], body: bytes) -> bytes:
        """Run a synchronous service for one CALL and return its REPLY frame. Never raises."""
        try:
            cls = self.services.get(meta.get('service'))  # type: ignore[arg-type]
        except TypeError:  # _lookup(), inlined on this hot path
            cls = None
        if cls is None or meta.get('op') != 'invoke':
            return self._unroutable(stream, meta, body)
        cid = meta.get('cid') or ''
        token = current_invocation.set((cid, cls.name, stream))
        try:
            try:
                svc, attr = self._prepare(cls, meta, body, cid)
            except BadRequest as e:
                return self._error(stream, cid, cls, e, REPLY_ERROR_INPUT)
            before, after = cls._oxbus_hooks
            if before:
                svc.before_handle()
            result = getattr(svc, attr)()
            if result is not None and hasattr(result, '__await__'):
                result.close()  # silence "coroutine was never awaited"
                raise TypeError('%s.%s returned a coroutine but is not declared async def'
                                % (type(svc).__name__, attr))
            if after:
                svc.after_handle()
            return self._reply(stream, svc)
        except BaseException as e:  # noqa: B036 - a service must never take the worker down
            return self._error(stream, cid, cls, e)
        finally:
            current_invocation.reset(token)

    async def run_async(self, stream: int, meta: Dict[str, Any], body: bytes) -> bytes:
        """The coroutine twin of :meth:`run`, for ``async def`` handlers. Never raises."""
        cls = self._lookup(meta)
        if cls is None or meta.get('op') != 'invoke':
            return self._unroutable(stream, meta)
        cid = meta.get('cid') or ''
        token = current_invocation.set((cid, cls.name, stream))
        try:
            try:
                svc, attr = self._prepare(cls, meta, body, cid)
            except BadRequest as e:
                return self._error(stream, cid, cls, e, REPLY_ERROR_INPUT)
            before, after = cls._oxbus_hooks
            if before:
                await _maybe_await(svc.before_handle())
            await _maybe_await(getattr(svc, attr)())
            if after:
                await _maybe_await(svc.after_handle())
            return self._reply(stream, svc)
        except BaseException as e:  # noqa: B036 - see run()
            return self._error(stream, cid, cls, e)
        finally:
            current_invocation.reset(token)

    def _prepare(self, cls: Type[Service], meta: Dict[str, Any], body: bytes,
                 cid: str) -> Tuple[Service, str]:
        """Build the service instance for a wire call; raise Reportable for bad requests.

        A :class:`BadRequest` from here is a refused input (a body that is not JSON, a
        SimpleIO element missing or ill-typed): the callers mark its REPLY ``error: input``,
        which a JSON-RPC channel answers with -32602. The same exception raised later, by
        the service's own code, is the service's answer and carries no such mark.
        """
        # This runs for every request, so the common cases are spelled out inline.
        attr = _pick_handler(cls, meta.get('method'))[0] if cls._oxbus_verbs else 'handle'
        data_format = meta.get('data_format') or 'json'
        if data_format == 'json':
            if body:
                try:
                    payload = _decode_json(body)
                except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
                    raise BadRequest('malformed JSON: %s' % e) from None
                except RecursionError:
                    # The server refuses bodies nested past its limit before they get
                    # here; this is the defence behind it (a deep body is the caller's
                    # fault, not the service's).
                    raise BadRequest('malformed JSON: nested too deeply to decode') from None
            else:
                payload = None
        else:
            payload = body
        svc = cls()
        svc.cid = cid
        channel = meta.get('channel')
        security = meta.get('security')
        if security is not None:
            svc.channel = Channel(channel or 'invoke', meta.get('channel_name'), Security(security))
        else:
            name = meta.get('channel_name')
            svc.channel = (_channels.get((channel, name))
                           or _channel(channel, name))  # type: ignore[arg-type]
        svc.request = request = Request(payload, body, data_format, meta)
        svc.response = Response()
        svc._oxbus_dispatcher = self
        if cls._oxbus_input:
            request.input = parse_input(
                cls._oxbus_input, payload, meta.get('params'),
                lambda: request.http.query, json_body=data_format == 'json')
        return svc, attr

    def _reply(self, stream: int, svc: Service) -> bytes:
        """Encode the service's response as a REPLY frame."""
        response = svc.response
        payload = response.payload
        output = type(svc)._oxbus_output
        if output:
            payload = filter_output(output, payload)
        kind = type(payload)
        if kind is dict or kind is list:
            body = encode_json(payload)
            content_type = JSON_CONTENT_TYPE
        elif payload is None:
            body = b''
            content_type = TEXT_CONTENT_TYPE
        elif kind is str or isinstance(payload, str):
            body = payload.encode('utf-8')
            content_type = TEXT_CONTENT_TYPE
        elif isinstance(payload, (bytes, bytearray, memoryview)):
            body = bytes(payload)
            content_type = BINARY_CONTENT_TYPE
        else:  # numbers, booleans, dict/list subclasses, tuples...
            body = encode_json(payload)
            content_type = JSON_CONTENT_TYPE
        status = response.status_code
        headers = response._headers
        if (status == 200 and content_type is JSON_CONTENT_TYPE and not headers
                and response.content_type is None):
            # The fast path: prebuilt meta, one header pack, one concatenation.
            return (_pack_header(_OK_JSON_PREFIX_LEN + len(body), REPLY, 0, stream)
                    + _OK_JSON_PREFIX + body)
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError('response.status_code must be an int in 100..599, not %r'
                             % (status,))
        meta: Dict[str, Any] = {'status': status,
                                'content_type': response.content_type or content_type}
        if headers:
            meta['headers'] = _header_pairs(headers)
        return encode_reply(stream, meta, body)

    def _error(self, stream: int, cid: str, cls: Type[Service], exc: BaseException,
               kind: Optional[str] = None) -> bytes:
        """Turn an exception from a service (or its input) into an error REPLY.

        ``kind`` is the REPLY's ``error`` field (``REPLY_ERROR_INPUT``), if any.
        """
        headers = None
        if isinstance(exc, Reportable):
            status = exc.status_code
            doc = {'error': exc.msg, **exc.details, 'cid': cid}
            headers = exc.headers
        elif isinstance(exc, OutputError):
            # The service broke its own contract: tell the client which element, and the
            # log, since someone has to fix the service.
            cls.logger.error('%s: %s (declared output: %s)', cls.name, exc,
                             ', '.join(e.name for e in cls._oxbus_output))
            status = 500
            doc = {'error': str(exc), 'field': exc.field, 'cid': cid}
        else:
            # The traceback may hold anything (SQL, paths, secrets): log only, never the client.
            cls.logger.error('%s failed: %s: %s', cls.name, type(exc).__name__, exc,
                             exc_info=exc)
            status = 500
            doc = {'error': 'internal error', 'cid': cid}
        return _error_frame(stream, status, doc, headers, kind)

    def _unroutable(self, stream: int, meta: Dict[str, Any], body: bytes = b'') -> bytes:
        op = meta.get('op')
        cid = meta.get('cid') or ''
        if op != 'invoke':
            handler = self.ops.get(op) if isinstance(op, str) else None
            if handler is not None:
                return handler(stream, meta, body)
            return _error_frame(stream, 501, {'error': 'unknown op: %s' % (op,), 'cid': cid})
        return _error_frame(stream, 404, {'error': 'no such service: %s' % (meta.get('service'),),
                                          'cid': cid}, kind=REPLY_ERROR_NO_SERVICE)

    # -- service to service ---------------------------------------------------------------

    def invoke(self, caller: Service, name: str, payload: Any = None) -> Any:
        """In-process ``self.invoke``: run ``name`` now, in this thread; see Service.invoke."""
        cls = self.services.get(name)
        if cls is None:
            raise NotFound('no such service: %s' % name)
        current = current_invocation.get()
        stream = current[2] if current else 0
        cid = caller.cid
        if payload is None or isinstance(payload, (bytes, bytearray)):
            raw = bytes(payload or b'')
        elif isinstance(payload, str):
            raw = payload.encode('utf-8')
        else:
            raw = encode_json(payload)
        meta = {'op': 'invoke', 'service': name, 'cid': cid, 'channel': 'invoke',
                'data_format': 'json'}
        attr, is_async = _pick_handler(cls, None)
        svc = cls()
        svc.cid = cid
        svc.channel = _channel('invoke')
        svc.request = request = Request(payload, raw, 'json', meta)
        svc.response = Response()
        svc._oxbus_dispatcher = self
        token = current_invocation.set((cid, cls.name, stream))
        try:
            if cls._oxbus_input:
                request.input = parse_input(cls._oxbus_input, payload, None, dict)
            if is_async:
                self._run_coroutine(_run_hooked(svc, attr, (cid, cls.name, stream)))
            else:
                before, after = cls._oxbus_hooks
                if before:
                    svc.before_handle()
                getattr(svc, attr)()
                if after:
                    svc.after_handle()
        finally:
            current_invocation.reset(token)
        output = cls._oxbus_output
        return filter_output(output, svc.response.payload) if output else svc.response.payload

    def invoke_async(self, name: str, payload: Any = None) -> str:
        """``self.invoke_async``: post an ASYNC CALL to the supervisor; return its new cid."""
        cid = new_cid()
        # Worker-opened streams have the high bit set; the low 31 bits cycle through
        # 1..0x7FFFFFFF (ids may be reused, and ASYNC calls are never answered anyway).
        stream = WORKER_STREAM_BIT | ((next(self._stream_ids) - 1) % 0x7FFF_FFFF + 1)
        if payload is None:
            body = b''
        elif isinstance(payload, (bytes, bytearray)):
            body = bytes(payload)
        else:
            body = encode_json(payload)
        meta = {'op': 'invoke', 'service': name, 'cid': cid, 'data_format': 'json'}
        self._post(encode_call(stream, meta, body, _protocol.FLAG_ASYNC))
        return cid


def _error_frame(stream: int, status: int, doc: Dict[str, Any],
                 headers: Optional[Dict[str, str]] = None, kind: Optional[str] = None) -> bytes:
    meta: Dict[str, Any] = {'status': status, 'content_type': JSON_CONTENT_TYPE}
    if headers:
        meta['headers'] = _header_pairs(headers)
    if kind:
        meta['error'] = kind
    return encode_reply(stream, meta, _encode_error_body(doc).encode('utf-8', 'replace'))


async def _maybe_await(result: Any) -> Any:
    # Hooks of an async service may be plain functions; only await what is awaitable.
    if result is not None and hasattr(result, '__await__'):
        return await result
    return result


async def _run_hooked(svc: Service, attr: str, invocation: Invocation) -> None:
    """An async service's hooks and handler, for ``self.invoke`` from a plain thread."""
    # The coroutine may run in another thread's context (the worker's event loop), so the
    # invocation is set again here rather than inherited.
    token = current_invocation.set(invocation)
    try:
        before, after = type(svc)._oxbus_hooks
        if before:
            await _maybe_await(svc.before_handle())
        await _maybe_await(getattr(svc, attr)())
        if after:
            await _maybe_await(svc.after_handle())
    finally:
        current_invocation.reset(token)


def _no_server(meta: bytes, body: bytes) -> Tuple[bytes, bytes]:
    raise RuntimeError('not running inside an oxbus worker: there is no server to call')


def _asyncio_run(coro: Awaitable[Any]) -> Any:
    import asyncio  # only services that are async pay for asyncio
    return asyncio.run(coro)  # type: ignore[arg-type]
