"""The dispatcher: the bridge between the wire and a service.

:class:`Dispatcher` takes a ``CALL``'s meta and body, builds the service instance (its
request, response and channel), runs its hooks and handler and returns the encoded
``REPLY`` frame; it also answers ``self.invoke``/``self.invoke_async`` and hands every
other op to :attr:`Dispatcher.ops` (hot deployment). :func:`_error_frame` encodes the
error REPLYs the runtime sends itself.

It owns the wire shape of a reply and nothing else: it knows nothing about sockets or
threads (``oxbus._runtime`` decides where and when it runs, and the tests drive it
directly), and the public service API it runs lives in :mod:`oxbus.service`, which must
not import this module.
"""

from __future__ import annotations

import builtins
import itertools
import json
import os
import sys

from . import _protocol
from . import errors as _errors
from .amqp import AMQPRequestData
from ._outcall import close_invocation, left_open, open_invocation
from ._protocol import REPLY, WORKER_STREAM_BIT, encode_call, encode_json, encode_reply
from .cache import CacheAPI
from .errors import BadRequest, MethodNotAllowed, NotFound, Reportable
from .files import FileTransferRequest, raw_request_from_call
from .outgoing import OutgoingAPI
from .pubsub import PubSubAPI, PubSubDelivery
from .service import (Channel, Request, Response, Security, Service, _invocation_meta,
                      current_invocation)
from .model import (ModelOutputError, Model, model_from_dict,
                    model_to_dict, output_through_model)
from .simpleio import (OutputError, Problems, SimpleIOPayload, bunchify,
                       filter_output, parse_input, problems_error)

TYPE_CHECKING = False  # see _protocol.py: keep ``typing`` out of the worker's startup
if TYPE_CHECKING:
    from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple, Type

    from .service import Invocation

__all__ = ['Dispatcher', 'new_cid']

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


def new_cid() -> str:
    """A new correlation id: 20 hex digits, the shape the supervisor uses too."""
    return os.urandom(10).hex()


# Channels without a caller are immutable and few, so one shared instance per (type, name)
# saves an allocation per request.
_channels: Dict[Any, Channel] = {}


def _channel(type_: Optional[str], name: Optional[str] = None) -> Channel:
    type_ = type_ or 'invoke'
    channel = _channels.get((type_, name))
    if channel is None:
        channel = _channels[(type_, name)] = Channel(type_, name)
    return channel


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
        if method is None:
            raise MethodNotAllowed('method not allowed: (none)', allowed=sorted(verbs))
        # The message is written by _error, with the path, as the server's own 405 is.
        raise MethodNotAllowed(allowed=sorted(verbs))
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
                 request: Optional[Callable[[bytes, bytes], Tuple[bytes, bytes]]] = None,
                 arequest: Optional[Callable[[Any, bytes], Awaitable[Tuple[bytes, bytes]]]]
                 = None) -> None:
        self.services = dict(services)
        #: ``self.cache`` of every service; its calls go through ``request`` (the worker's
        #: CALL-and-wait to the supervisor).
        self.cache = CacheAPI(request or _no_server)
        self.posted: List[bytes] = []
        self._post = post if post is not None else self.posted.append
        #: ``self.out``/``self.outgoing`` of every service: ``request`` for blocking calls,
        #: ``arequest`` (awaitable; the runtime's never waits for the REPLY on the event
        #: loop) for the ``a*`` forms, :meth:`notify` for the ASYNC calls that end what a
        #: cancelled call or a finished invocation left open. Without an ``arequest``
        #: (tests) the ``a*`` forms run ``request`` in line.
        self.outgoing = OutgoingAPI(request or _no_server,
                                    arequest or _inline_arequest(request or _no_server),
                                    self.notify)
        #: The CALL-and-wait itself, for ``self.secrets`` (and other server ops).
        self.request = request or _no_server
        #: Its awaitable form, for ``self.pubsub``'s ``a*`` calls.
        self.arequest = arequest or _inline_arequest(request or _no_server)
        self._run_coroutine = run_coroutine or _asyncio_run
        # next() on an itertools.count is atomic under the GIL, so no lock is needed to
        # hand out worker stream ids from many handler threads.
        self._stream_ids = itertools.count(1)
        #: Handlers of the supervisor's other CALL ops (``modules.activate``...), by op name:
        #: ``(stream, meta, body) -> REPLY frame``. Consulted only once a call turned out not
        #: to be an invocation of a known service, so they cost the hot path nothing.
        self.ops: Dict[str, Callable[[int, Dict[str, Any], bytes], bytes]] = {}

    def pubsub(self, service: str) -> PubSubAPI:
        """``self.pubsub`` of service ``service``: its calls name it as the caller."""
        return PubSubAPI(self.request, self.arequest, service)

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
        meta_token = _invocation_meta.set(meta)
        try:
            try:
                svc, attr = self._prepare(cls, meta, body, cid)
            except BadRequest as e:
                return self._error(stream, cid, cls, e, REPLY_ERROR_INPUT)
            before, after = cls._oxbus_hooks
            if before:
                svc._oxbus_before()
            result = getattr(svc, attr)()
            if result is not None and hasattr(result, '__await__'):
                result.close()  # silence "coroutine was never awaited"
                raise TypeError('%s.%s returned a coroutine but is not declared async def'
                                % (type(svc).__name__, attr))
            if after:
                svc._oxbus_after()
            return self._reply(stream, svc)
        except BaseException as e:  # noqa: B036 - a service must never take the worker down
            return self._error(stream, cid, cls, e)
        finally:
            if left_open() is not None:  # transactions or streams were opened (and may be open)
                close_invocation(None, cls.name)
            _invocation_meta.reset(meta_token)
            current_invocation.reset(token)

    async def run_async(self, stream: int, meta: Dict[str, Any], body: bytes) -> bytes:
        """The coroutine twin of :meth:`run`, for ``async def`` handlers. Never raises."""
        cls = self._lookup(meta)
        if cls is None or meta.get('op') != 'invoke':
            return self._unroutable(stream, meta)
        cid = meta.get('cid') or ''
        token = current_invocation.set((cid, cls.name, stream))
        meta_token = _invocation_meta.set(meta)
        open_token = open_invocation()
        try:
            try:
                svc, attr = self._prepare(cls, meta, body, cid)
            except BadRequest as e:
                return self._error(stream, cid, cls, e, REPLY_ERROR_INPUT)
            before, after = cls._oxbus_hooks
            if before:
                await _maybe_await(svc._oxbus_before())
            await _maybe_await(getattr(svc, attr)())
            if after:
                await _maybe_await(svc._oxbus_after())
            return self._reply(stream, svc)
        except BaseException as e:  # noqa: B036 - see run()
            return self._error(stream, cid, cls, e)
        finally:
            close_invocation(open_token, cls.name)
            _invocation_meta.reset(meta_token)
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
        channel = meta.get('channel')
        if channel == 'file-transfer':
            return self._prepare_file(cls, meta, body, cid), attr
        data_format = meta.get('data_format') or 'json'
        if channel in ('pubsub', 'amqp'):
            # A delivery's body is its messages' data, concatenated: never one JSON document,
            # whatever data_format says. An AMQP message's body is parsed below, by its
            # content type.
            data_format = 'raw'
        if data_format == 'json':
            if body:
                try:
                    payload = _decode_json(body)
                except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
                    # A form (by its Content-Type) is looked for only here, once the body
                    # is not JSON, so a JSON request pays nothing for it: its fields are
                    # the payload, and SimpleIO input reads them as it reads a JSON object.
                    # A body that starts like JSON ({, [ or ", after white space) is
                    # broken JSON whatever its Content-Type says: `curl -d '{...'` sends
                    # a form's type by default, and its error is the JSON one.
                    from .forms import form_payload, looks_like_json
                    payload = (None if looks_like_json(body)
                               else form_payload(meta.get('headers'), body))
                    if payload is None:
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
        security = meta.get('security')
        if security is not None:
            svc.channel = Channel(channel or 'invoke', meta.get('channel_name'), Security(security))
        elif channel == 'pubsub':
            # Its name is the sub_key: one per subscription, so not cached like the few
            # fixed channels (the cache would grow with every subscription ever made).
            svc.channel = Channel('pubsub', meta.get('channel_name'))
        else:
            name = meta.get('channel_name')
            svc.channel = (_channels.get((channel, name))
                           or _channel(channel, name))  # type: ignore[arg-type]
        svc.request = request = Request(payload, body, data_format, meta)
        svc.response = Response()
        svc._oxbus_dispatcher = self
        if channel == 'pubsub':
            # A subscription's delivery: the batch's messages, split from the body by the
            # sizes in the meta. SimpleIO input does not apply (the payload is the list).
            try:
                request.pubsub = delivery = PubSubDelivery.from_call(meta, body)
            except ValueError as e:
                raise BadRequest(str(e)) from None
            request.payload = delivery.messages
            return svc, attr
        if channel == 'amqp':
            # A message an AMQP channel consumed: its properties, headers and delivery info
            # in request.amqp (Zato's name), its body parsed per oxbus/amqp.py.
            try:
                request.amqp, request.payload = AMQPRequestData.from_call(meta, body)
            except ValueError as e:
                raise BadRequest(str(e)) from None
            payload = request.payload
            data_format = 'json' if payload is not body else 'raw'
        if cls._oxbus_in_any:  # one look-up on the hot path, as before any of this existed
            if cls._oxbus_input:
                priority = meta.get('params_priority')
                request.input = parse_input(
                    cls._oxbus_input, payload, meta.get('params'),
                    lambda: request.http.query, json_body=data_format == 'json',
                    params_first=(priority == PARAMS_OVER_MSG if priority
                                  else cls._oxbus_zato))
            elif cls._oxbus_input_model is not None:
                request.input = _model_input(cls, svc, request, payload, meta,
                                             data_format == 'json')
            if cls._oxbus_zato:
                _zato_request(cls, svc, request, meta)
        return svc, attr

    def _prepare_file(self, cls: Type[Service], meta: Dict[str, Any], body: bytes,
                      cid: str) -> Service:
        """:meth:`_prepare` for a file of a file-transfer channel (oxbus/files.py).

        The body is the file's bytes (or nothing), never JSON, whatever data_format says;
        raw_request and payload are Zato's dict of the file. SimpleIO input does not apply.
        """
        try:
            raw_request = raw_request_from_call(meta, body)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        svc = cls()
        svc.cid = cid
        svc.channel = _channel('file-transfer', meta.get('channel_name'))
        svc.request = FileTransferRequest(raw_request, body, meta)
        svc.response = Response()
        svc._oxbus_dispatcher = self
        return svc

    def _reply(self, stream: int, svc: Service) -> bytes:
        """Encode the service's response as a REPLY frame."""
        response = svc.response
        payload = response.payload
        cls = type(svc)
        if cls._oxbus_out_any:
            output = cls._oxbus_output
            if type(payload) is SimpleIOPayload:
                payload = payload.getvalue()
            if output:
                wrap = cls._oxbus_response_elem is not None and (
                    not cls._oxbus_zato or _zato_wraps(response.payload))
                payload = filter_output(output, payload, cls._oxbus_skip_empty)
                if wrap:
                    payload = {cls._oxbus_response_elem: payload}
            elif cls._oxbus_output_model is not None:
                payload = _model_output(cls._oxbus_output_model, payload)
        # A model answered without a declared output model is written out by encode_json
        # (Model.__oxbus_json__), like one nested in a dict: no check here on the hot path.
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
            pairs = _header_pairs(headers)
            if response.content_type is None:
                # headers['Content-Type'] sets the content type (the REPLY's content_type
                # is the one the server sends); response.content_type wins over it.
                for pair in pairs:
                    if pair[0] == 'content-type':
                        meta['content_type'] = pair[1]
            meta['headers'] = [p for p in pairs if p[0] != 'content-type']
        return encode_reply(stream, meta, body)

    def _error(self, stream: int, cid: str, cls: Type[Service], exc: BaseException,
               kind: Optional[str] = None) -> bytes:
        """Turn an exception from a service (or its input) into an error REPLY.

        ``kind`` is the REPLY's ``error`` field (``REPLY_ERROR_INPUT``), if any. The REPLY's
        ``exc`` is the exception's family (:func:`exc_family`), ``input`` for a refused input.
        """
        headers = None
        family = REPLY_ERROR_INPUT if kind == REPLY_ERROR_INPUT else exc_family(exc)
        if isinstance(exc, Reportable):
            status = exc.status_code
            if status == 405:
                _method_not_allowed(cls, exc)
            doc = {'error': exc.msg, **exc.details, 'cid': cid}
            headers = exc.headers
        elif isinstance(exc, ModelOutputError):
            exc = OutputError(exc.field, exc.reason)
            cls.logger.error('%s: %s (declared output: model %s)', cls.name, exc,
                             getattr(cls._oxbus_output_model, '__name__', '-'))
            status = 500
            doc = {'error': str(exc), 'field': exc.field, 'cid': cid}
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
            meta = _invocation_meta.get(None)
            if meta is not None and meta.get('channel') == 'file-transfer':
                # No remote client: the server writes this beside the failed file, for
                # the operator who owns the folder.
                import traceback
                try:
                    doc['exception'] = ''.join(
                        traceback.format_exception_only(type(exc), exc)).strip()[:4096]
                    doc['traceback'] = ''.join(traceback.format_exception(
                        type(exc), exc, exc.__traceback__))[-32768:]
                except Exception:  # noqa: BLE001 - a broken __str__ must not lose the reply
                    doc['exception'] = type(exc).__name__
        return _error_frame(stream, status, doc, headers, kind, family)

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

    def invoke(self, caller: Service, name: Any, payload: Any = None,
               args: Tuple[Any, ...] = (), kwargs: Optional[Dict[str, Any]] = None) -> Any:
        """In-process ``self.invoke``: run ``name`` now, in this thread; see Service.invoke."""
        kwargs = dict(kwargs or ())
        if args:
            # Zato's positional order after the payload.
            if len(args) > len(_INVOKE_POSITIONAL):
                raise TypeError('invoke(): at most %d positional arguments after the payload '
                                '(%s), not %d' % (len(_INVOKE_POSITIONAL),
                                                  ', '.join(_INVOKE_POSITIONAL), len(args)))
            for key, value in zip(_INVOKE_POSITIONAL, args):
                if key in kwargs:
                    raise TypeError('invoke(): %s given twice' % key)
                kwargs[key] = value
        as_bunch = kwargs.pop('as_bunch', False)
        serialize = kwargs.pop('serialize', False)
        timeout = kwargs.pop('timeout', None)
        raise_timeout = kwargs.pop('raise_timeout', True)
        environ = kwargs.pop('environ', None)
        skip_elem = bool(kwargs.pop('skip_response_elem', False))
        for ignored in _INVOKE_IGNORED:
            kwargs.pop(ignored, None)
        if isinstance(name, type) and issubclass(name, Service):
            name = name.name
        if kwargs:
            if payload:
                raise TypeError('invoke(): unknown keyword arguments with a payload: %s'
                                % ', '.join(sorted(kwargs)))
            payload = kwargs
        if timeout:
            result = _with_timeout(
                lambda: self._invoke(caller, name, payload, environ, skip_elem),
                timeout, raise_timeout, caller, name)
        else:
            result = self._invoke(caller, name, payload, environ, skip_elem)
        if isinstance(result, SimpleIOPayload):
            result = result.getvalue()
        if isinstance(result, Model) or (isinstance(result, list) and result
                                          and isinstance(result[0], Model)):
            result = _model_output(None, result)
        if as_bunch:
            result = bunchify(result)
        if serialize:
            result = encode_json(result).decode('utf-8')
        return result

    def _invoke(self, caller: Service, name: str, payload: Any, environ: Any,
                skip_elem: bool = False) -> Any:
        cls = self.services.get(name)
        if cls is None:
            raise NotFound('no such service: %s' % name)
        current = current_invocation.get()
        stream = current[2] if current else 0
        cid = caller.cid
        if isinstance(payload, Model):
            payload = model_to_dict(payload, '')
        if payload is None or isinstance(payload, (bytes, bytearray)):
            raw = bytes(payload or b'')
        elif isinstance(payload, str):
            raw = payload.encode('utf-8')
        else:
            raw = encode_json(payload)
        # The callee runs in the caller's trace.
        meta = {'op': 'invoke', 'service': name, 'cid': cid, 'channel': 'invoke',
                'data_format': 'json', 'traceparent': caller.traceparent,
                'tracestate': caller.tracestate}
        attr, is_async = _pick_handler(cls, None)
        svc = cls()
        svc.cid = cid
        svc.channel = _channel('invoke')
        svc.request = request = Request(payload, raw, 'json', meta)
        svc.response = Response()
        svc._oxbus_dispatcher = self
        if environ is not None:
            svc.environ = environ  # the caller's own object, as in Zato
        invocation = (cid, cls.name, stream)
        token = current_invocation.set(invocation)
        meta_token = _invocation_meta.set(meta)
        try:
            if cls._oxbus_input:
                request.input = parse_input(cls._oxbus_input, payload, None, dict)
            elif cls._oxbus_input_model is not None:
                request.input = _model_input(cls, svc, request, payload, meta, True)
            if cls._oxbus_zato:
                _zato_request(cls, svc, request, meta)
            if is_async:
                self._run_coroutine(_run_hooked(svc, attr, invocation, meta))
            else:
                before, after = cls._oxbus_hooks
                if before:
                    svc._oxbus_before()
                getattr(svc, attr)()
                if after:
                    svc._oxbus_after()
        finally:
            _invocation_meta.reset(meta_token)
            current_invocation.reset(token)
        result = svc.response.payload
        output = cls._oxbus_output
        if output:
            elem = cls._oxbus_response_elem
            wrap = elem is not None and (not cls._oxbus_zato or _zato_wraps(result))
            if type(result) is SimpleIOPayload:
                result = result.getvalue()
            result = filter_output(output, result, cls._oxbus_skip_empty)
            # Zato's skip_response_elem drops only its own kind of wrapper: 'response' or a
            # 'zato...' element; a service's own name for it stays.
            if wrap and not (skip_elem and (elem == 'response' or elem.startswith('zato'))):
                result = {elem: result}
            return result
        if cls._oxbus_output_model is not None:
            return _model_output(cls._oxbus_output_model, result)
        return result

    def notify(self, meta: Dict[str, Any], body: bytes = b'') -> None:
        """Post an ASYNC (fire-and-forget) CALL of a server op: run, never answered."""
        stream = WORKER_STREAM_BIT | ((next(self._stream_ids) - 1) % 0x7FFF_FFFF + 1)
        self._post(encode_call(stream, meta, body, _protocol.FLAG_ASYNC))

    def invoke_async(self, name: str, payload: Any = None,
                     traceparent: Optional[str] = None,
                     tracestate: Optional[str] = None, cid: Optional[str] = None) -> str:
        """``self.invoke_async``: post an ASYNC CALL to the supervisor; return its new cid.

        ``traceparent`` and ``tracestate`` are the caller's trace context (the callee keeps
        the caller's trace); without a traceparent the supervisor starts a new trace.
        """
        cid = cid or new_cid()
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
        if traceparent:
            meta['traceparent'] = traceparent
            if tracestate:
                meta['tracestate'] = tracestate
        self._post(encode_call(stream, meta, body, _protocol.FLAG_ASYNC))
        return cid


def exc_family(exc: BaseException) -> str:
    """The family of ``exc`` that the server counts a service's errors by (REPLY ``exc``).

    The ``oxbus.errors`` class for a :class:`Reportable` (``BadRequest``, ``NotFound``...;
    the nearest one for a subclass), ``OutputError``, ``CancelledError`` for asyncio's, and
    for any other exception the nearest built-in exception class in its MRO (``ValueError``,
    ``KeyError``, ``OSError``, ``KeyboardInterrupt``, ``Exception`` for a direct subclass of
    it). Never a user class name, so the server's label values stay few: a class counts only
    if it *is* the attribute of that name of ``builtins`` (or ``oxbus.errors``), not merely
    one whose ``__module__`` says so (a C extension's class or a user class may claim
    ``builtins``). Runs on the error path only.
    """
    if isinstance(exc, OutputError):
        return 'OutputError'
    # Only a program that imported asyncio can raise its CancelledError (a BaseException
    # subclass outside builtins): no import here.
    asyncio = sys.modules.get('asyncio')
    if asyncio is not None and isinstance(exc, asyncio.CancelledError):
        return 'CancelledError'
    home = _errors if isinstance(exc, Reportable) else builtins
    for klass in type(exc).__mro__:
        if getattr(home, klass.__name__, None) is klass:
            return klass.__name__
    return 'BaseException'  # not reached: every exception class derives from it


def _method_not_allowed(cls: Type[Service], exc: Reportable) -> None:
    """Give a service's 405 the server's shape: ``{"error", "allowed", "cid"}`` and an
    ``allow`` header. Without ``allowed=``, a service with ``handle_<VERB>`` methods allows
    those; a plain ``handle`` takes whatever its channel does, which the server fills in
    (edge/http.rs). The refused method is never among the allowed (a ``handle_POST`` that
    raises it does not allow POST); when none is left there is no ``allow`` header and no
    ``allowed``. Without a message of its own, the message is the server's: method, path
    and allowed methods."""
    meta = _invocation_meta.get(None) or {}
    method = str(meta.get('method') or '').upper()
    own = getattr(exc, 'allowed', None)
    allowed = own or exc.details.get('allowed')
    if not allowed and cls._oxbus_verbs:
        allowed = sorted(cls._oxbus_verbs)
    if allowed:
        allowed = [str(m) for m in allowed if str(m).upper() != method]
        # The constructor's header, from the list before the refused method left it.
        if own and exc.headers.get('allow') == ', '.join(own):
            del exc.headers['allow']
        if allowed:
            exc.details['allowed'] = allowed
            if not any(str(k).lower() == 'allow' for k in exc.headers):
                exc.headers['allow'] = ', '.join(allowed)
        else:
            exc.details.pop('allowed', None)
    if exc.msg == type(exc).reason or exc.msg == MethodNotAllowed.reason:
        exc.msg = 'method %s not allowed for %s' % (meta.get('method') or '(none)',
                                                    meta.get('path') or cls.name)
        if allowed:
            exc.msg += '; allowed: %s' % ', '.join(allowed)


def _error_frame(stream: int, status: int, doc: Dict[str, Any],
                 headers: Optional[Dict[str, str]] = None, kind: Optional[str] = None,
                 family: Optional[str] = None) -> bytes:
    meta: Dict[str, Any] = {'status': status, 'content_type': JSON_CONTENT_TYPE}
    if headers:
        meta['headers'] = _header_pairs(headers)
    if kind:
        meta['error'] = kind
    if family:
        meta['exc'] = family
    return encode_reply(stream, meta, _encode_error_body(doc).encode('utf-8', 'replace'))


async def _maybe_await(result: Any) -> Any:
    # Hooks of an async service may be plain functions; only await what is awaitable.
    if result is not None and hasattr(result, '__await__'):
        return await result
    return result


async def _run_hooked(svc: Service, attr: str, invocation: Invocation,
                      meta: Dict[str, Any]) -> None:
    """An async service's hooks and handler, for ``self.invoke`` from a plain thread."""
    # The coroutine may run in another thread's context (the worker's event loop), so the
    # invocation is set again here rather than inherited.
    token = current_invocation.set(invocation)
    meta_token = _invocation_meta.set(meta)
    try:
        before, after = type(svc)._oxbus_hooks
        if before:
            await _maybe_await(svc._oxbus_before())
        await _maybe_await(getattr(svc, attr)())
        if after:
            await _maybe_await(svc._oxbus_after())
    finally:
        _invocation_meta.reset(meta_token)
        current_invocation.reset(token)


def _no_server(meta: bytes, body: bytes) -> Tuple[bytes, bytes]:
    raise RuntimeError('not running inside an oxbus worker: there is no server to call')


def _inline_arequest(request: Callable[[Any, bytes], Tuple[bytes, bytes]]
                     ) -> Callable[[Any, bytes], Awaitable[Tuple[bytes, bytes]]]:
    async def arequest(meta: Any, body: bytes = b'', orphan: Any = None
                       ) -> Tuple[bytes, bytes]:
        return request(meta, body)  # no await in between: it cannot be cancelled midway
    return arequest


def _asyncio_run(coro: Awaitable[Any]) -> Any:
    import asyncio  # only services that are async pay for asyncio
    return asyncio.run(coro)  # type: ignore[arg-type]


#: A REST channel's ``params_priority`` (Zato's names): path and query parameters win over
#: the body for the same name, or the body wins (``msg-over-channel-params``).
PARAMS_OVER_MSG = 'channel-params-over-msg'
MSG_OVER_PARAMS = 'msg-over-channel-params'

#: Zato's ``invoke`` keyword arguments that have no meaning for an in-process call here.
_INVOKE_IGNORED = ('channel', 'data_format', 'transport', 'cid', 'wsgi_environ', 'zato_ctx',
                   'in_reply_to', 'wmq_ctx', 'channel_info', 'job_type', 'params_priority',
                   'merge_channel_params', 'channel_params', 'channel_item')
#: Zato's ``invoke(name, payload, channel, data_format, transport, serialize, as_bunch,
#: timeout, raise_timeout)``: the names of the positional arguments after the payload.
_INVOKE_POSITIONAL = ('channel', 'data_format', 'transport', 'serialize', 'as_bunch',
                      'timeout', 'raise_timeout')


def _model_input(cls: Type[Service], svc: Service, request: Request, payload: Any,
                 meta: Dict[str, Any], json_body: bool) -> Any:
    """``request.input`` of a service whose input is a Model: the body's object, with the
    path parameters (and, for a Zato-style service or ``channel-params-over-msg``, the query
    string) over it as Zato's channels do; an InputError naming every bad field."""
    model = cls._oxbus_input_model
    if isinstance(payload, Model):
        return payload
    if json_body and payload is not None and not isinstance(payload, dict):
        raise BadRequest('expected a JSON object')
    data = dict(payload) if json_body and payload is not None else {}
    params = meta.get('params')
    priority = meta.get('params_priority')
    params_first = priority == PARAMS_OVER_MSG if priority else cls._oxbus_zato
    # The path parameters win over the query string, as for SimpleIO elements; both win over
    # the body or fill in what it lacks, per the priority.
    extra: Dict[str, Any] = {}
    if meta.get('query'):
        extra.update(request.http.query)
    if params:
        extra.update(params)
    for key, value in extra.items():
        if params_first or key not in data:
            data[key] = value
    problems = Problems()
    instance = model_from_dict(model, data, '', problems, svc)
    if problems:
        raise problems_error(problems)
    return instance


def _zato_request(cls: Type[Service], svc: Service, request: Request,
                  meta: Dict[str, Any]) -> None:
    """What a Zato-style service finds on top of the common request: undeclared path and
    query parameters in ``request.input`` (Zato merges its channel params), and a
    SimpleIO payload object to fill in when the service declares output."""
    inp = request.input
    if isinstance(inp, dict):
        params = meta.get('params')
        if params:
            for key, value in params.items():
                inp.setdefault(key, value)
        if meta.get('query'):
            for key, value in request.http.query.items():
                inp.setdefault(key, value)
    if cls._oxbus_output:
        svc.response.payload = SimpleIOPayload()


def _zato_wraps(payload: Any) -> bool:
    """Whether Zato wraps this answer in ``response_elem``: its payload object, or a dict
    merged into it (Zato's ``_set_payload``); not a list, text, bytes or a number."""
    return type(payload) is SimpleIOPayload or (
        isinstance(payload, dict))


def _model_output(model: Any, payload: Any) -> Any:
    """A model answer as JSON values: through the declared output model, or (``model``
    None) a model or a list holding models; ModelOutputError names a bad field."""
    if model is not None:
        return output_through_model(model, payload)
    if isinstance(payload, Model):
        return model_to_dict(payload, '')
    return [model_to_dict(p, '') if isinstance(p, Model) else p for p in payload]


def _with_timeout(call: Callable[[], Any], timeout: float, raise_timeout: bool,
                  caller: Service, name: str) -> Any:
    """Run ``call`` in a thread of its own, waiting at most ``timeout`` seconds (Zato's
    ``invoke(timeout=)``). The invocation context is copied into the thread."""
    import contextvars
    import threading
    box: Dict[str, Any] = {}
    ctx = contextvars.copy_context()

    def in_context() -> Any:
        # What the callee opens (transactions, streams) is its own to close: a registry of
        # its own, closed when it ends, not the caller's (which returns without waiting).
        token = open_invocation()
        try:
            return call()
        finally:
            close_invocation(token, name)

    def run() -> None:
        try:
            box['result'] = ctx.run(in_context)
        except BaseException as e:  # noqa: B036 - handed to the caller
            box['error'] = e

    thread = threading.Thread(target=run, daemon=True, name='oxbus-invoke-timeout')
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        caller.logger.warning('invoke of %s timed out after %s s (cid %s); it goes on in the '
                              'background', name, timeout, caller.cid)
        if raise_timeout:
            raise TimeoutError('invoke of %s timed out after %s s' % (name, timeout))
        return None
    if 'error' in box:
        raise box['error']
    return box.get('result')
