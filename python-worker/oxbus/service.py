"""The service API: ``Service``, ``Request``, ``Response``, ``Channel``.

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

This module is the public API only. What runs a service for a ``CALL`` (building the
instance, hooks, the ``REPLY`` frame) is :mod:`oxbus._dispatch`, which imports this module
and never the other way round; :data:`current_invocation` stays here because service code
reads it too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextvars import ContextVar

from .model import check_model, describe_model, is_model_class
from .simpleio import Bunch, NotGiven, parse_spec

TYPE_CHECKING = False  # see _protocol.py: keep ``typing`` out of the worker's startup
if TYPE_CHECKING:
    from typing import Any, ClassVar, Dict, Iterator, List, Optional, Tuple, Type

    from ._dispatch import Dispatcher
    from .amqp import AMQPRequestData
    from .cache import CacheAPI
    from .forms import MultiDict
    from .kvdb import KVDB
    from .outgoing import OutgoingAPI
    from .pubsub import PubSubAPI, PubSubDelivery
    from .secrets_api import Secrets
    from .patterns import PatternsFacade
    from .user_config import UserConfig
    from .wsx import WSXAPI
    from .simpleio import Elem, Spec

    #: (cid, service name, stream) of the invocation a thread or task is running.
    Invocation = Tuple[str, str, int]

__all__ = ['Service', 'Request', 'HTTPRequest', 'Response', 'Channel', 'Security', 'Headers',
           'current_invocation', 'default_name']

#: The invocation running in the current thread or asyncio task: (cid, service name,
#: stream). A ContextVar rather than a thread-local because async services share one
#: thread; each task gets its own copy. The LOG handler reads it, so records from *any*
#: logger are tagged with cid and service.
current_invocation: ContextVar[Optional[Invocation]] = ContextVar(
    'oxbus_invocation', default=None)

#: The ``CALL`` meta of the running invocation, set beside :data:`current_invocation`: its
#: trace context (``traceparent``, ``tracestate``) is read from it, by the LOG handler and
#: the service logger's filter, only when a record is made. The meta itself rather than a
#: tuple of the two, so that a call pays for no look-up and no allocation. Internal.
_invocation_meta: ContextVar[Optional[Mapping[str, Any]]] = ContextVar(
    'oxbus_invocation_meta', default=None)


def _trace_id_of(meta: Optional[Mapping[str, Any]]) -> Optional[str]:
    """The trace id of a CALL meta's ``traceparent``, None without one."""
    traceparent = meta.get('traceparent') if meta is not None else None
    return traceparent[3:35] if traceparent else None

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


def _uncamelify(text: str) -> str:
    # Zato's uncamelify: a break before a capital that follows a lower-case letter, or before
    # a capital (not the first character) followed by a lower-case letter; the parts joined
    # with '-', lower-cased ('GetHTTPData' -> 'get-http-data', 'Get2FA' -> 'get2fa'). Written
    # as a loop, not Zato's regular expression: compiling one would be paid at every start.
    out = []
    last = len(text) - 1
    for i, ch in enumerate(text):
        if 'A' <= ch <= 'Z' and i and (
                'a' <= text[i - 1] <= 'z' or (i < last and 'a' <= text[i + 1] <= 'z')):
            out.append(' ')
        out.append(ch)
    return '-'.join(''.join(out).split()).lower()


def zato_name(module: str, class_name: str) -> str:
    """The name Zato 3.2 gives a service of ``module.ClassName``: the whole dotted name
    uncamelified, '_' in the module path as '-', a leading '-' of the class part dropped and
    '.-' / '_-' joined up (``sio_example.MyService`` -> ``sio-example.my-service``,
    ``demo.My_Service`` -> ``demo.my_service``, ``myApi.Get`` -> ``my-api.get``)."""
    parts = _uncamelify('%s.%s' % (module, class_name)).split('.')
    path, last = parts[:-1], parts[-1]
    path = [p.replace('_', '-') for p in path]
    last = last[1:] if last.startswith('-') else last
    last = last.replace('_-', '_')
    return '.'.join(path + [last]).replace('.-', '.')


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
    channel), ``'websocket'`` (a client message, see :mod:`oxbus.wsx`), ``'file-transfer'``
    (a file of a watched folder, see :mod:`oxbus.files`), ``'admin'`` (the admin API's
    invoke) or ``'invoke'`` (another service);
    ``name`` the channel's name (None for direct invocations); ``security`` a
    :class:`Security` when the channel checked who called (else None)."""

    __slots__ = ('type', 'name', 'security')

    def __init__(self, type: str, name: Optional[str] = None,  # noqa: A002 - Zato's name
                 security: Optional[Security] = None) -> None:
        self.type = type
        self.name = name
        self.security = security

    @property
    def sec(self) -> Optional[Security]:
        """Zato's short name for :attr:`security`."""
        return self.security

    def __repr__(self) -> str:
        return 'Channel(%r, name=%r, security=%r)' % (self.type, self.name, self.security)


class Headers(Mapping[str, str]):
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
        self._query: Optional[MultiDict] = None
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
            self._params = Bunch(self._meta.get('params') or ())
        return self._params

    @property
    def query_raw(self) -> str:
        """The raw query string, without ``?``."""
        return self._meta.get('query') or ''

    @property
    def query(self) -> MultiDict:
        """The query string decoded into a :class:`~oxbus.forms.MultiDict`: a dict of the
        **last** value of each key (as Django and Starlette read it), with
        ``getlist('k')`` for every value of a repeated key, in order."""
        if self._query is None:
            # oxbus.forms (and urllib.parse behind it) is imported here, not at startup:
            # most services never look at the query string.
            from .forms import MultiDict, parse_query
            raw = self._meta.get('query')
            self._query = parse_query(raw) if raw else MultiDict()
        return self._query

    @property
    def headers(self) -> Headers:
        """The request headers, case-insensitive."""
        if self._headers is None:
            self._headers = Headers(self._meta.get('headers') or ())
        return self._headers

    @property
    def GET(self) -> MultiDict:  # noqa: N802 - Zato's name
        """Zato's name for :attr:`query`."""
        return self.query

    def __repr__(self) -> str:
        return '<HTTPRequest %s %s>' % (self.method, self.path)


class MqttMessage:
    """What an MQTT channel says of the message it hands its service
    (``self.request.mqtt``): ``topic``, ``qos`` (0 or 1), ``retain`` (a retained message
    sent on subscribing), ``dup`` (the broker sends it again: an earlier delivery was not
    acknowledged) and ``pkid`` (its packet id, 0 for QoS 0). The payload is
    ``self.request.payload`` / ``self.request.raw``."""

    __slots__ = ('topic', 'qos', 'retain', 'dup', 'pkid')

    def __init__(self, meta: Dict[str, Any]) -> None:
        self.topic: str = meta.get('topic', '')
        self.qos: int = meta.get('qos', 0)
        self.retain: bool = bool(meta.get('retain'))
        self.dup: bool = bool(meta.get('dup'))
        self.pkid: int = meta.get('pkid', 0)

    def __repr__(self) -> str:
        return '<MqttMessage %s qos=%d%s%s>' % (self.topic, self.qos,
                                                 ' retain' if self.retain else '',
                                                 ' dup' if self.dup else '')


class Request:
    """What a service is asked: ``payload``, ``raw``, ``input`` and ``http``; ``form`` and
    ``files`` of a form body; ``pubsub`` for a delivery of a pub/sub subscription."""

    # ``_form`` and ``_files`` are set the first time ``form`` or ``files`` is read (never
    # in __init__: a request that does not ask pays nothing).
    __slots__ = ('payload', 'raw', 'input', 'data_format', '_meta', '_http', 'pubsub', 'amqp',
                 '_form', '_files')
    _form: MultiDict
    _files: MultiDict

    def __init__(self, payload: Any = None, raw: bytes = b'', data_format: str = 'json',
                 meta: Optional[Dict[str, Any]] = None) -> None:
        #: The parsed JSON body (None for an empty one), a form body's fields
        #: (:class:`~oxbus.forms.FormFields`), or the raw bytes for raw calls.
        self.payload = payload
        #: The body exactly as received.
        self.raw = raw
        #: The declared SimpleIO input, typed; attribute and item access.
        self.input = Bunch()
        self.data_format = data_format
        self._meta = meta if meta is not None else {}
        self._http: Optional[HTTPRequest] = None
        #: A delivery of a pub/sub subscription (``self.channel.type == 'pubsub'``): its
        #: ``sub_key``, ``topic`` and ``messages`` (:class:`oxbus.pubsub.PubSubDelivery`);
        #: None for every other invocation.
        self.pubsub: Optional[PubSubDelivery] = None
        #: A message of an AMQP channel (``self.channel.type == 'amqp'``): ``msg`` with its
        #: ``body``, ``properties``, ``headers`` and ``delivery_info``
        #: (:class:`oxbus.amqp.AMQPRequestData`); None for every other invocation.
        self.amqp: Optional[AMQPRequestData] = None

    @property
    def raw_request(self) -> Any:
        """Zato's name for :attr:`raw`; for a pub/sub delivery, as in Zato, the messages
        (a list of :class:`oxbus.pubsub.PubSubMessage`); for a file of a file-transfer
        channel, Zato's dict of the file (:class:`oxbus.files.FileTransferRequest`)."""
        pubsub = self.pubsub
        return self.raw if pubsub is None else pubsub.messages

    @property
    def mqtt(self) -> Any:
        """A message of an MQTT channel (``self.channel.type == 'mqtt'``): its ``topic``,
        ``qos``, ``retain``, ``dup`` and ``pkid`` (:class:`oxbus.mqtt.MqttMessage`); None
        for every other invocation."""
        m = self._meta.get('mqtt')
        return MqttMessage(m) if isinstance(m, dict) else None

    @property
    def http(self) -> HTTPRequest:
        """Method, path, path params, query and headers of the HTTP request."""
        if self._http is None:
            self._http = HTTPRequest(self._meta)
        return self._http

    @property
    def form(self) -> MultiDict:
        """The fields of an ``application/x-www-form-urlencoded`` or ``multipart/form-data``
        body (by the request's ``Content-Type``), parsed on first use: a
        :class:`~oxbus.forms.MultiDict` of text values (the last of a repeated field;
        ``getlist`` for all). Empty for any other body; :attr:`raw` is the body as received.
        A malformed form raises :class:`~oxbus.errors.BadRequest` (400)."""
        try:
            return self._form
        except AttributeError:
            self._parse_form()
            return self._form

    @property
    def files(self) -> MultiDict:
        """The file parts of a ``multipart/form-data`` body (those with a ``filename``), by
        field name: :class:`~oxbus.forms.UploadedFile` objects with ``filename``,
        ``content_type`` and ``data``; ``getlist`` for a field of several files."""
        try:
            return self._files
        except AttributeError:
            self._parse_form()
            return self._files

    def _parse_form(self) -> None:
        from .forms import FormFields, content_type_of, parse_form
        payload = self.payload
        if type(payload) is FormFields:
            # The dispatcher parsed the body already (a form on a JSON channel): its payload.
            self._form = payload
            self._files = payload.files
            return
        self._form, self._files = parse_form(content_type_of(self._meta.get('headers')),
                                             self.raw)

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


class _Environ:
    """``self.environ``: a :class:`Bunch` made on first use and kept by the instance, so that
    ``before_handle``, ``handle`` and ``after_handle`` of one invocation share it (Zato's
    ``self.environ``). A non-data descriptor: once made (or assigned), the instance's own
    attribute is read directly, and an invocation that never looks at it pays nothing."""

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        if instance is None:
            return self
        environ = instance.__dict__['environ'] = Bunch()
        return environ


class Service:
    """Base class of every service. Subclass it and define ``handle`` (or ``handle_GET``...).

    Class attributes a subclass may set: ``name``, ``input``, ``output``. Per invocation the
    worker sets ``cid``, ``request``, ``response`` and ``channel``; ``trace_id``,
    ``traceparent`` and ``tracestate`` are the invocation's W3C trace context; ``logger`` is a
    ``logging.Logger`` named after the service whose records carry ``cid``, ``service`` and
    ``trace_id``.

    A class that defines no handler at all is taken as an abstract base (common hooks and
    helpers for real services) and is not deployed.
    """

    # Not ClassVars, so that a subclass may annotate what it sets (``name: str = 'crm.get'``,
    # ``output: Spec = ...``) under mypy --strict: a ClassVar cannot be overridden by an
    # annotated attribute. They are read from the class all the same.
    #: The service name; defaults to ``module.kebab-case-class-name``.
    name: str = ''
    #: SimpleIO input declaration (elements or a Model class); see :mod:`oxbus.simpleio`.
    input: Spec = None
    #: SimpleIO output declaration (elements or a Model class); see :mod:`oxbus.simpleio`.
    output: Spec = None
    logger: ClassVar[logging.Logger] = logging.getLogger('oxbus.service')
    #: Per-invocation scratch space shared by the hooks and the handler (Zato's).
    environ = _Environ()

    # Set per invocation by the dispatcher.
    cid: str
    request: Request
    response: Response
    channel: Channel

    # Worked out once per class by __init_subclass__; see the module docstring.
    _oxbus_input: ClassVar[Tuple[Elem, ...]] = ()
    _oxbus_output: ClassVar[Tuple[Elem, ...]] = ()
    #: A Model class declared as input / output (then _oxbus_input/_oxbus_output are empty).
    _oxbus_input_model: ClassVar[Optional[type]] = None
    _oxbus_output_model: ClassVar[Optional[type]] = None
    #: Zato-style service (its base is ``zato.server.service.Service``): Zato's defaults
    #: for absent optional input, untyped names as Text, channel params over the body,
    #: a SimpleIO response payload object, undeclared path/query params in the input.
    _oxbus_zato: ClassVar[bool] = False
    #: Whether any input / output handling applies (the dispatcher's first test).
    _oxbus_in_any: ClassVar[bool] = False
    _oxbus_out_any: ClassVar[bool] = False
    #: Zato SimpleIO's ``skip_empty_keys`` and ``response_elem``.
    _oxbus_skip_empty: ClassVar[bool] = False
    _oxbus_response_elem: ClassVar[Optional[str]] = None
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

    def _oxbus_before(self) -> Any:
        # The dispatcher's one entry to the hooks before the handler (a Zato-style service
        # runs more of them); called only when _oxbus_hooks says there is one.
        return self.before_handle()

    def _oxbus_after(self) -> Any:
        return self.after_handle()

    def invoke(self, name: Any, /, payload: Any = None, *args: Any, **kwargs: Any) -> Any:
        """Run another service of this worker in this thread and return its response payload.

        As in Zato: the callee's input is validated, the exceptions its handler raises
        propagate to the caller, and the return value is the callee's
        ``self.response.payload`` (output-filtered; a model answer as a dict). A callee that
        cannot be run (no such service, input it refuses, nesting past the invoke depth
        limit of 50) raises :class:`~oxbus.errors.InvokeError`: uncaught, this service's
        500. From ``async def`` use :meth:`ainvoke`: this raises ``RuntimeError`` on the
        worker's event loop (not in a loop a plain service runs itself, e.g. with
        ``asyncio.run``). ``name`` may be the service class. Zato's keyword
        arguments: ``as_bunch=True`` returns dicts as :class:`~oxbus.simpleio.Bunch`
        objects, ``serialize=True`` the JSON text, ``environ=`` the callee's
        ``self.environ``, ``timeout=`` seconds to wait (then ``TimeoutError``, or None with
        ``raise_timeout=False``; the callee's thread is not stopped, it runs to its end);
        ``channel``, ``data_format``, ``transport``, ``cid`` and ``skip_response_elem`` are
        accepted and have no effect. Other keyword arguments, with no payload, become the
        payload (``self.invoke('crm.get', customer_id=5)``).
        """
        return self._require_dispatcher().invoke(self, name, payload, args, kwargs)

    async def ainvoke(self, name: Any, /, payload: Any = None, *args: Any, **kwargs: Any
                      ) -> Any:
        """``await self.ainvoke(name, payload)``: :meth:`invoke` for ``async def`` services,
        with the same arguments, result and errors.

        An ``async def`` callee is awaited on the event loop; a plain ``def`` one runs in
        another (daemon) thread, at most ``threads`` at once per level of nesting, so the
        loop serves other requests while it blocks; what such a callee opens on the server
        is its own, closed when it returns (docs/WORKER.md). ``timeout=`` waits that long,
        then raises ``TimeoutError`` (or returns None with ``raise_timeout=False``); the
        callee runs on to its end, no longer counted against ``threads``.
        """
        return await self._require_dispatcher().ainvoke(self, name, payload, args, kwargs)

    def invoke_async(self, name: str, payload: Any = None, cid: Optional[str] = None) -> str:
        """Ask the supervisor to run ``name`` later, fire-and-forget; returns its cid.

        ``payload`` is sent as JSON (bytes are taken to be JSON already). The callee runs in
        this invocation's trace (its ``trace_id`` is this one's), under ``cid`` when given
        (Zato's pattern callbacks share their pattern's cid), else a new one.
        """
        return self._require_dispatcher().invoke_async(name, payload, self.traceparent,
                                                       self.tracestate, cid, self.name)

    @property
    def traceparent(self) -> Optional[str]:
        """The invocation's W3C ``traceparent`` (``00-<trace id>-<parent id>-<flags>``), the
        value to send on to the systems this service calls; None outside a worker.

        A ``traceparent`` header that a trusted proxy (``http.trusted_proxies``) sent is
        passed on as it came (as version ``00``, flags masked to sampled/random): Oxbus
        records no spans, so the parent id stays the proxy's. Every other request, admin
        invoke and scheduled run starts a new trace. ``self.invoke`` and
        ``self.invoke_async`` keep the caller's.
        """
        # Read from the call's meta only when asked: nothing is paid per invocation.
        request = self.__dict__.get('request')
        return request._meta.get('traceparent') if request is not None else None

    @property
    def tracestate(self) -> Optional[str]:
        """The W3C ``tracestate`` that goes with :attr:`traceparent` (send both on), or None:
        a trusted proxy's ``tracestate`` header of at most 512 characters, kept by
        ``self.invoke`` and ``self.invoke_async``; never a client's own."""
        request = self.__dict__.get('request')
        return request._meta.get('tracestate') if request is not None else None

    @property
    def trace_id(self) -> Optional[str]:
        """The invocation's W3C trace id: 32 lower-case hex digits, the same in every
        service of one trace and in the server's log lines of the request; None outside a
        worker."""
        traceparent = self.traceparent
        return traceparent[3:35] if traceparent else None

    @property
    def cache(self) -> CacheAPI:
        """The server's caches: ``self.cache.default.get(key)``, ``self.cache['name']``;
        in ``async def``, ``await self.cache.default.aget(key)`` and the other ``a*`` forms
        (see :mod:`oxbus.cache`)."""
        return self._require_dispatcher().cache

    @property
    def out(self) -> OutgoingAPI:
        """The server's outgoing connections: ``self.out.rest['CRM'].conn.get(self.cid)``,
        ``self.out.sql['crm'].fetch_all(...)`` (see :mod:`oxbus.outgoing`)."""
        return self._require_dispatcher().outgoing

    @property
    def outgoing(self) -> OutgoingAPI:
        """Zato's long name for :attr:`out`."""
        return self._require_dispatcher().outgoing

    @property
    def kvdb(self) -> KVDB:
        """Zato 3.2's ``self.kvdb``: ``self.kvdb.conn`` is the server's Redis connection
        named ``kvdb`` (else ``default``), str values (see :class:`oxbus.kvdb.KVDB`)."""
        return self._require_dispatcher().outgoing.redis.kvdb

    @property
    def pubsub(self) -> PubSubAPI:
        """The server's pub/sub broker, as this service: ``self.pubsub.publish(topic,
        data=...)``, ``subscribe``, ``unsubscribe``, ``get_messages``, ``ack`` and their
        awaitable ``a*`` forms (see :mod:`oxbus.pubsub`)."""
        api = self.__dict__.get('_oxbus_pubsub')
        if api is None:
            api = self.__dict__['_oxbus_pubsub'] = self._require_dispatcher().pubsub(self.name)
        return api

    @property
    def wsx(self) -> WSXAPI:
        """The clients of the server's WebSocket channels: ``self.wsx.client_id`` (the
        invocation's client), ``self.wsx.send(client_id, data)``,
        ``self.wsx.channel['chat'].broadcast(data)`` (see :mod:`oxbus.wsx`)."""
        api = self.__dict__.get('_oxbus_wsx')
        if api is None:
            from .wsx import WSXAPI
            dispatcher = self._require_dispatcher()
            request = self.__dict__.get('request')
            meta = request._meta.get('wsx') if request is not None else None
            api = self.__dict__['_oxbus_wsx'] = WSXAPI(dispatcher.request, dispatcher.arequest,
                                                       meta)
        return api

    @property
    def secrets(self) -> Secrets:
        """The secrets this service may read: ``self.secrets['name']`` (str; KeyError when
        unknown, PermissionError when its ``services`` do not name this service),
        ``.get(name, default)``, ``name in self.secrets``; in ``async def``, ``await
        .aget(name, default)`` and ``await .acontains(name)`` (see :mod:`oxbus.secrets_api`)."""
        from .secrets_api import Secrets
        dispatcher = self._require_dispatcher()
        return Secrets(dispatcher.request, self.name, dispatcher.arequest)

    @property
    def patterns(self) -> PatternsFacade:
        """Zato's integration patterns: ``self.patterns.invoke_retry``, ``.fanout`` and
        ``.parallel`` (see :mod:`oxbus.patterns`)."""
        api = self.__dict__.get('_oxbus_patterns')
        if api is None:
            from .patterns import PatternsFacade
            api = self.__dict__['_oxbus_patterns'] = PatternsFacade(self)
        return api

    @property
    def user_config(self) -> UserConfig:
        """Operator settings kept in the config store (``oxbus user-config set NAME``):
        ``self.user_config.crm.section.key`` (see :mod:`oxbus.user_config`)."""
        api = self.__dict__.get('_oxbus_user_config')
        if api is None:
            from .user_config import UserConfig
            dispatcher = self._require_dispatcher()
            api = self.__dict__['_oxbus_user_config'] = UserConfig(dispatcher.request,
                                                                   dispatcher.arequest)
        return api

    def _require_dispatcher(self) -> Dispatcher:
        dispatcher = self._oxbus_dispatcher
        if dispatcher is None:
            raise RuntimeError('%s is not running inside an oxbus worker' % type(self).__name__)
        return dispatcher

    def __repr__(self) -> str:
        return '<%s %s cid=%s>' % (type(self).__name__, self.name,
                                   getattr(self, 'cid', None))


class _ContextFilter(logging.Filter):
    """Stamps ``cid``, ``service`` and ``trace_id`` of the running invocation on a service
    logger's records."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = record.__dict__
        if 'cid' in fields or 'service' in fields or 'trace_id' in fields:
            # Given with extra=: kept, under another name (the frame's own fields win).
            for key in ('cid', 'service', 'trace_id'):
                if key in fields:
                    fields['extra_' + key] = fields.pop(key)
        record._oxbus_ctx = True  # the cid, service and trace_id below are the frame's
        current = current_invocation.get()
        if current is None:
            record.cid = record.service = record.trace_id = None
        else:
            record.cid, record.service = current[0], current[1]
            record.trace_id = _trace_id_of(_invocation_meta.get())
        return True


_context_filter = _ContextFilter()
_HOOK_NAMES = ('before_handle', 'after_handle')


#: Parsed SimpleIO declarations by value: services declare the same few shapes again and
#: again, and a deploy of 1000 services would otherwise parse them 2000 times and keep as
#: many copies (Elem tuples are never changed after parsing, so sharing them is safe).
_specs: Dict[Any, Tuple[Elem, ...]] = {}


def _parsed_spec(spec: Spec, where: str, text_default: bool = False,
                 missing: Any = NotGiven) -> Tuple[Elem, ...]:
    """:func:`~oxbus.simpleio.parse_spec`, shared by declarations of equal value."""
    try:
        items = spec if spec is None or isinstance(spec, str) else tuple(spec)  # type: ignore
        key = (items, text_default, type(missing), missing)  # 0, 0.0 and False differ
        elems = _specs.get(key)
    except TypeError:  # not iterable, or an unhashable element: parse_spec says what is wrong
        return parse_spec(spec, where, text_default, missing)
    if elems is None:
        elems = parse_spec(items, where, text_default, missing)
        if len(_specs) >= 4096:  # distinct declarations are few; bound it anyway
            _specs.clear()
        _specs[key] = elems
    return elems


_SIO_NAMES = ('input', 'output', 'input_required', 'input_optional', 'output_required',
              'output_optional', 'default_value', 'default_input_value',
              'default_output_value', 'skip_empty_keys', 'response_elem', 'output_repeated')


def _sio_side(sio: Any, side: str, where: str) -> Any:
    """One side (``input``/``output``) of Zato's inner ``class SimpleIO``: its plain form,
    or ``<side>_required`` plus ``<side>_optional`` as one declaration."""
    plain = getattr(sio, side, None)
    required = getattr(sio, side + '_required', None)
    optional = getattr(sio, side + '_optional', None)
    if plain is not None and (required is not None or optional is not None):
        raise TypeError('%s.SimpleIO: %s cannot be given with %s_required or %s_optional'
                        % (where, side, side, side))
    if plain is not None:
        return plain
    if required is None and optional is None:
        return None
    from .simpleio import Elem as _Elem

    def items(value: Any) -> Tuple[Any, ...]:
        if value is None:
            return ()
        return (value,) if isinstance(value, (str, _Elem)) else tuple(value)

    spec = list(items(required))
    # Zato lets a required element win over an optional one of the same name (a subclass's
    # SimpleIO making an inherited optional element required).
    required_names = {(i if isinstance(i, str) else getattr(i, 'name', '')).lstrip('-')
                      .split('=', 1)[0] for i in spec}
    for item in items(optional):
        name = (item if isinstance(item, str) else getattr(item, 'name', '')).lstrip('-')
        if name.split('=', 1)[0] in required_names:
            continue
        if isinstance(item, str):
            spec.append(item if item.startswith('-') else '-' + item)
        elif isinstance(item, _Elem):
            copy = item.copy()  # never the user's own object: it may be declared elsewhere too
            copy.required = False
            spec.append(copy)
        else:
            spec.append(item)  # parse_spec names the bad element
    return tuple(spec)


def _configure_io(cls: Type[Service], where: str) -> None:
    """Read the declarations: class-level ``input``/``output`` (names, elements or a Model)
    or Zato's inner ``class SimpleIO`` (which wins when it declares a side)."""
    sio = getattr(cls, 'SimpleIO', None)
    if sio is not None and not isinstance(sio, type):
        raise TypeError('%s: SimpleIO must be a class, not %r' % (where, sio))
    in_spec: Any = cls.input
    out_spec: Any = cls.output
    missing_in: Any = NotGiven
    missing_out: Any = NotGiven
    zato = cls._oxbus_zato
    if sio is not None:
        unknown = [n for n in vars(sio) if not n.startswith('_') and n not in _SIO_NAMES
                   and n not in ('SkipEmpty', 'CSV', 'XML', 'input_repeated', 'namespace',
                                 'request_elem', 'force_empty_keys', 'bool_parameter_prefixes',
                                 'int_parameters', 'int_parameter_suffixes')]
        if unknown:
            # Zato ignores what it does not know (its CSV and XML options, say): so does a
            # Zato-style service, with a warning; an Oxbus service is told at deploy.
            if not zato:
                raise TypeError('%s.SimpleIO: unknown attribute(s): %s'
                                % (where, ', '.join(unknown)))
            logging.getLogger('oxbus.deploy').warning(
                '%s.SimpleIO: ignoring attribute(s) Oxbus does not use: %s', where,
                ', '.join(unknown))
        side_in = _sio_side(sio, 'input', where)
        side_out = _sio_side(sio, 'output', where)
        if side_in is not None:
            in_spec = side_in
        if side_out is not None:
            out_spec = side_out
        default = getattr(sio, 'default_value', NotGiven)
        missing_in = getattr(sio, 'default_input_value', default)
        missing_out = getattr(sio, 'default_output_value', default)
        cls._oxbus_skip_empty = bool(getattr(sio, 'skip_empty_keys', False))
        elem = getattr(sio, 'response_elem', NotGiven)
        if elem is NotGiven:
            # Zato 3.2's simple-io.conf: response_elem=response, for an inner SimpleIO
            # declaring output with elements (not a model).
            elem = 'response' if zato and side_out is not None and not is_model_class(
                side_out) else None
        if elem is not None and not isinstance(elem, str):
            raise TypeError('%s.SimpleIO: response_elem must be a string' % where)
        cls._oxbus_response_elem = elem or None
    if zato and missing_in is NotGiven:
        missing_in = ''  # Zato's backward-compatible empty value (Bool: False)
    del missing_out  # an absent optional output key is left out, as in Zato
    if is_model_class(in_spec):
        check_model(in_spec)  # resolve the annotations now (nested too): a bad one fails it
        cls._oxbus_input_model, cls._oxbus_input = in_spec, ()
    else:
        cls._oxbus_input_model = None
        cls._oxbus_input = _parsed_spec(in_spec, where + '.input', zato, missing_in)
    if is_model_class(out_spec):
        check_model(out_spec)
        cls._oxbus_output_model, cls._oxbus_output = out_spec, ()
    else:
        cls._oxbus_output_model = None
        cls._oxbus_output = _parsed_spec(out_spec, where + '.output', zato)
    # What the dispatcher tests first, so that a service without any of it pays one look-up.
    cls._oxbus_in_any = bool(cls._oxbus_input or cls._oxbus_input_model is not None or zato)
    cls._oxbus_out_any = bool(cls._oxbus_output or cls._oxbus_output_model is not None
                              or (zato and cls._oxbus_output))


def describe_input(cls: Type[Service]) -> Any:
    """The wire form of the input declaration (a model's fields or the elements)."""
    from .simpleio import describe
    if cls._oxbus_input_model is not None:
        return describe_model(cls._oxbus_input_model)
    return describe(cls._oxbus_input)


def describe_output(cls: Type[Service]) -> Any:
    from .simpleio import describe
    if cls._oxbus_output_model is not None:
        return describe_model(cls._oxbus_output_model)
    return describe(cls._oxbus_output)


def _configure(cls: Type[Service]) -> None:
    """Work out everything the dispatcher needs about a new Service subclass."""
    where = '%s.%s' % (cls.__module__, cls.__qualname__)
    own_name = cls.__dict__.get('name')
    if own_name is not None and (not isinstance(own_name, str) or not own_name.strip()):
        raise TypeError('%s: name must be a non-empty string, not %r' % (where, own_name))
    # Only the class's *own* name counts: a subclass of a named service is another service
    # and must not silently inherit (and then clash with) its parent's name.
    # Zato-style services are named as Zato names them (zato_name).
    cls.name = own_name or (zato_name(cls.__module__, cls.__name__) if cls._oxbus_zato
                            else default_name(cls.__module__, cls.__name__))
    _configure_io(cls, where)

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
