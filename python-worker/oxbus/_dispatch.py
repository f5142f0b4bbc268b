"""The dispatcher: the bridge between the wire and a service.

:class:`Dispatcher` takes a ``CALL``'s meta and body, builds the service instance (its
request, response and channel), runs its hooks and handler and returns the encoded
``REPLY`` frame; it also answers ``self.invoke``/``self.ainvoke``/``self.invoke_async``
(with the invoke depth limit and :class:`~oxbus.errors.InvokeError`) and hands every
other op to :attr:`Dispatcher.ops` (hot deployment). :func:`_error_frame` encodes the
error REPLYs the runtime sends itself.

It owns the wire shape of a reply and nothing else: it knows nothing about sockets or
threads (``oxbus._runtime`` decides where and when it runs, and the tests drive it
directly), and the public service API it runs lives in :mod:`oxbus.service`, which must
not import this module.
"""

from __future__ import annotations

import builtins
import collections
import contextvars
import itertools
import json
import logging
import os
import queue
import sys
import threading
from contextvars import ContextVar
from functools import partial

from . import _protocol
from . import errors as _errors
from .amqp import AMQPRequestData
from ._logctx import carrying, end_call, end_invocation, holding
from ._outcall import close_invocation, left_open, open_invocation
from ._protocol import (REPLY, WORKER_STREAM_BIT, encode_call, encode_json, encode_reply,
                        find_unencodable)
from .cache import CacheAPI
from .errors import BadRequest, InvokeDepthError, InvokeError, MethodNotAllowed, Reportable
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
    from typing import Any, Awaitable, Callable, Dict, List, Optional, Set, Tuple, Type

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


_log = logging.getLogger('oxbus.worker')


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
                 = None, offload_threads: int = 8,
                 on_loop: Optional[Callable[[], bool]] = None) -> None:
        self.services = dict(services)
        #: How many plain services ``await self.ainvoke`` may run at once off the event
        #: loop (the runtime passes the worker's ``threads``); see :meth:`_offload`.
        self.offload_threads = max(1, offload_threads)
        self._offload_gate = _Gate(self.offload_threads)
        self._offload_pool = _DaemonPool('oxbus-ainvoke')
        #: Whether this thread is the worker's event loop thread, where a blocking
        #: ``self.invoke`` is refused (the runtime passes its own check; the default, for
        #: tests, is any running asyncio loop).
        self._on_loop = on_loop or _any_running_loop
        #: ``self.cache`` of every service; its calls go through ``request`` (the worker's
        #: CALL-and-wait to the supervisor).
        self.cache = CacheAPI(request or _no_server,
                              arequest or _inline_arequest(request or _no_server))
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
            if holding or carrying:  # an unfinished print() line, threads it started
                _end_of_call(stream)
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
            if holding or carrying:
                _end_of_call(stream)
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
                           or _channel(channel, name))
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
            try:
                body = encode_json(payload)
            except (TypeError, ValueError, RecursionError):
                raise _unencodable(payload) from None
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
            try:
                body = encode_json(payload)
            except (TypeError, ValueError, RecursionError):
                raise _unencodable(payload) from None
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
        elif isinstance(exc, InvokeError):
            # An invoke that could not run its callee (no such service, input it refused,
            # the depth limit): the calling service's fault, a 500 to its client. The
            # message names the callee and the cause; a traceback would add nothing but
            # length (one frame per level of a runaway self-invoke).
            cls.logger.error('%s failed: %s: %s', cls.name, type(exc).__name__, exc)
            status = 500
            doc = {'error': 'internal error', 'cid': cid}
        elif isinstance(exc, OutputError):
            # The service broke its own contract (or answered with a value JSON has no form
            # for): tell the client which element, and the log, since someone has to fix
            # the service. No traceback: the path says where, and the encoder's frames
            # would only name oxbus's own files.
            if cls._oxbus_output:
                cls.logger.error('%s: %s (declared output: %s)', cls.name, exc,
                                 ', '.join(e.name for e in cls._oxbus_output))
            else:
                cls.logger.error('%s: %s', cls.name, exc)
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
        if self._on_loop():
            # On the event loop's thread a blocking invoke would hold every async request of
            # the worker (a sync callee) or wait on the loop itself (an async one).
            raise RuntimeError(
                'self.invoke(%r) from a coroutine would hold the event loop (every async '
                'service of this worker): inside async def use await self.ainvoke(...)'
                % (name.name if isinstance(name, type) and issubclass(name, Service)
                   else name,))
        name, payload, opts = _invoke_args(name, payload, args, kwargs)
        as_bunch, serialize, timeout, raise_timeout, environ, skip_elem = opts
        if timeout:
            result = _with_timeout(
                lambda: self._invoke(caller, name, payload, environ, skip_elem),
                timeout, raise_timeout, caller, name)
        else:
            result = self._invoke(caller, name, payload, environ, skip_elem)
        return _shape_result(result, as_bunch, serialize)

    async def ainvoke(self, caller: Service, name: Any, payload: Any = None,
                      args: Tuple[Any, ...] = (), kwargs: Optional[Dict[str, Any]] = None
                      ) -> Any:
        """``await self.ainvoke``: :meth:`invoke` for coroutines. An ``async def`` callee is
        awaited on this loop; a plain one runs in another thread (see :meth:`_offload`), so
        the loop goes on serving other requests meanwhile."""
        import asyncio
        name, payload, opts = _invoke_args(name, payload, args, kwargs)
        as_bunch, serialize, timeout, raise_timeout, environ, skip_elem = opts
        run = self._ainvoke(caller, name, payload, environ, skip_elem)
        if timeout:
            # As invoke(timeout=): past it the caller goes on and the callee runs to its end.
            # The places it holds in the offload gates are given back then (see _offload).
            leases: Set[Any] = set()
            lease_token = _timeout_leases.set(leases)
            try:
                task = asyncio.ensure_future(run)
            finally:
                _timeout_leases.reset(lease_token)
            done, _ = await asyncio.wait((task,), timeout=timeout)
            if not done:
                caller.logger.warning('invoke of %s timed out after %s s (cid %s); it goes on '
                                      'in the background', name, timeout, caller.cid)
                for release in list(leases):
                    release()
                task.add_done_callback(partial(_consume_result, caller, name))
                if raise_timeout:
                    raise TimeoutError('invoke of %s timed out after %s s' % (name, timeout))
                return None
            result = task.result()
        else:
            result = await run
        return _shape_result(result, as_bunch, serialize)

    def _callee(self, caller: Service, name: str, payload: Any, environ: Any
                ) -> Tuple[Service, str, bool, Invocation, Dict[str, Any], Tuple[str, ...]]:
        """The callee's instance for an in-process invoke, before its input is parsed:
        (instance, handler name, is async, its invocation, its meta, the invoke chain).

        Raises :class:`InvokeError` for a callee that cannot be run (no such service, HTTP
        verbs only) and :class:`InvokeDepthError` past :data:`MAX_INVOKE_DEPTH`."""
        chain = _invoke_chain.get() or (caller.name,)
        chain += (name,)
        if len(chain) > MAX_INVOKE_DEPTH + 1:
            raise _depth_error(chain)
        cls = self.services.get(name)
        if cls is None:
            raise InvokeError('%s invoked %s: no such service' % (caller.name, name), name)
        try:
            attr, is_async = _pick_handler(cls, None)
        except MethodNotAllowed as e:
            raise InvokeError('%s invoked %s, which answers only HTTP methods (%s)'
                              % (caller.name, name, ', '.join(e.allowed)), name) from None
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
        svc = cls()
        svc.cid = cid
        svc.channel = _channel('invoke')
        svc.request = Request(payload, raw, 'json', meta)
        svc.response = Response()
        svc._oxbus_dispatcher = self
        if environ is not None:
            svc.environ = environ  # the caller's own object, as in Zato
        return svc, attr, is_async, (cid, cls.name, stream), meta, chain

    def _invoke(self, caller: Service, name: str, payload: Any, environ: Any,
                skip_elem: bool = False) -> Any:
        svc, attr, is_async, invocation, meta, chain = self._callee(caller, name, payload,
                                                                    environ)
        token = current_invocation.set(invocation)
        meta_token = _invocation_meta.set(meta)
        chain_token = _invoke_chain.set(chain)
        try:
            _callee_input(svc, meta, caller)
            if is_async:
                # This thread blocks until the coroutine ends: what it ainvokes must not
                # wait for a place that this thread's own callers hold (see _offload).
                self._run_coroutine(_run_hooked(svc, attr, invocation, meta, chain,
                                                _Gate(self.offload_threads)))
            else:
                _run_sync_hooked(svc, attr)
        finally:
            if holding:
                end_invocation(invocation)
            _invoke_chain.reset(chain_token)
            _invocation_meta.reset(meta_token)
            current_invocation.reset(token)
        return _callee_output(svc, skip_elem)

    async def _ainvoke(self, caller: Service, name: str, payload: Any, environ: Any,
                       skip_elem: bool) -> Any:
        svc, attr, is_async, invocation, meta, chain = self._callee(caller, name, payload,
                                                                    environ)
        if is_async:
            token = current_invocation.set(invocation)
            meta_token = _invocation_meta.set(meta)
            chain_token = _invoke_chain.set(chain)
            try:
                _callee_input(svc, meta, caller)
                await _run_hooked(svc, attr, invocation, meta, chain, _offload_gate.get())
            finally:
                _invoke_chain.reset(chain_token)
                _invocation_meta.reset(meta_token)
                current_invocation.reset(token)
        else:
            await self._offload(_off_loop_call(svc, attr, invocation, meta, chain, caller))
        return _callee_output(svc, skip_elem)

    async def _offload(self, call: Callable[[], Any]) -> Any:
        """Run ``call`` in another thread, in a copy of this task's context, and await it:
        the event loop serves other requests meanwhile.

        The thread is a daemon thread of the dispatcher's pool (so a callee still running
        never keeps the worker from exiting), reused when idle. How many such calls run at
        once is bounded by a gate of :attr:`offload_threads` places (the worker's
        ``threads``); calls past that wait for a free place:

        - requests share the dispatcher's gate;
        - a coroutine that a blocked thread waits for (``self.invoke`` of an async service,
          whichever thread calls it: a handler, a plain callee, a thread the callee started)
          gets a gate of its own, so what it ainvokes never waits for a place that the
          blocked thread's own callers hold (that wait could last for ever). Each such
          level of nesting may thus run up to ``offload_threads`` plain callees at once;
        - a timed-out ``ainvoke`` gives its places back when it times out (its callee runs
          on, in a thread past the bound), so hung callees cannot starve the others.
        """
        import asyncio
        loop = asyncio.get_running_loop()
        gate = _offload_gate.get() or self._offload_gate
        await gate.acquire()
        release = _Place(gate)
        leases = _timeout_leases.get()
        if leases is not None:
            leases.add(release)
        try:
            return await self._offload_pool.run(loop, contextvars.copy_context(), call)
        finally:
            release()
            if leases is not None:
                leases.discard(release)

    def notify(self, meta: Dict[str, Any], body: bytes = b'') -> None:
        """Post an ASYNC (fire-and-forget) CALL of a server op: run, never answered."""
        stream = WORKER_STREAM_BIT | ((next(self._stream_ids) - 1) % 0x7FFF_FFFF + 1)
        self._post(encode_call(stream, meta, body, _protocol.FLAG_ASYNC))

    def invoke_async(self, name: str, payload: Any = None,
                     traceparent: Optional[str] = None,
                     tracestate: Optional[str] = None, cid: Optional[str] = None,
                     caller: Optional[str] = None) -> str:
        """``self.invoke_async``: post an ASYNC CALL to the supervisor; return its new cid.

        ``traceparent`` and ``tracestate`` are the caller's trace context (the callee keeps
        the caller's trace); without a traceparent the supervisor starts a new trace.
        ``caller`` is the calling service's name, for the server's log line when the callee
        does not exist.
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
        if caller:
            meta['caller'] = caller
        if traceparent:
            meta['traceparent'] = traceparent
            if tracestate:
                meta['tracestate'] = tracestate
        self._post(encode_call(stream, meta, body, _protocol.FLAG_ASYNC))
        return cid


#: How deep in-process invokes may nest (``self.invoke``, ``self.ainvoke``, with or without
#: ``timeout=``): past it the invoke raises :class:`InvokeDepthError`, a short error naming
#: the chain, instead of a service that invokes itself ending in a ``RecursionError`` whose
#: traceback runs to thousands of lines. Far above what a real composition nests.
MAX_INVOKE_DEPTH = 50

#: The names of the services of the running in-process invoke chain, the outermost caller
#: first; empty outside an in-process invoke (a request's own service sets nothing, so the
#: hot path pays nothing for it). A ContextVar, so a ``timeout=`` thread, an ``ainvoke``'s
#: pool thread and an async callee (set again in :func:`_run_hooked`) all carry it.
_invoke_chain: ContextVar[Tuple[str, ...]] = ContextVar('oxbus_invoke_chain', default=())

#: The gate that ``ainvoke`` of a plain service waits at (see :meth:`Dispatcher._offload`):
#: None for the dispatcher's own, else the one of the coroutine a blocked thread waits for.
#: Carried like :data:`_invoke_chain`.
_offload_gate: ContextVar[Any] = ContextVar('oxbus_offload_gate', default=None)

#: Inside ``ainvoke(timeout=)``: the set that holds the releases of the gate places its
#: callee's chain takes, called when it times out.
_timeout_leases: ContextVar[Optional[Set[Any]]] = ContextVar('oxbus_timeout_leases',
                                                             default=None)


def _any_running_loop() -> bool:
    """The default of Dispatcher's ``on_loop`` (no worker): any running asyncio loop."""
    asyncio = sys.modules.get('asyncio')
    return asyncio is not None and asyncio._get_running_loop() is not None


class _Gate:
    """A counting semaphore that coroutines of any event loop may wait at (an
    ``asyncio.Semaphore`` belongs to one loop; tests run a loop per request)."""

    __slots__ = ('_free', '_waiters', '_lock')

    def __init__(self, places: int) -> None:
        self._free = places
        self._waiters: Any = collections.deque()
        self._lock = threading.Lock()

    async def acquire(self) -> None:
        import asyncio
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return
            future = asyncio.get_running_loop().create_future()
            self._waiters.append(future)
        try:
            await future
        except BaseException:
            with self._lock:
                waiting = future in self._waiters
                if waiting:
                    self._waiters.remove(future)
            if not waiting and future.done() and not future.cancelled():
                self.release()  # handed a place just as it was cancelled: pass it on
            raise

    def release(self) -> None:
        with self._lock:
            if not self._waiters:
                self._free += 1
                return
            future = self._waiters.popleft()
        try:
            future.get_loop().call_soon_threadsafe(self._hand, future)
        except RuntimeError:  # that waiter's loop has closed: the next one's turn
            self.release()

    def _hand(self, future: Any) -> None:
        # On the waiter's loop. A waiter cancelled meanwhile passes its place on.
        if future.done():
            self.release()
        else:
            future.set_result(None)


class _Place:
    """One place taken at a :class:`_Gate`: calling it gives the place back, once."""

    __slots__ = ('_gate',)

    def __init__(self, gate: _Gate) -> None:
        self._gate: Optional[_Gate] = gate

    def __call__(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.release()


class _DaemonPool:
    """Daemon threads for ``ainvoke`` of plain services, made on demand and reused while
    idle (an idle one ends after :attr:`IDLE` s). Daemon threads, unlike a
    ``ThreadPoolExecutor``'s: a callee that timed out and still runs never keeps the worker
    from exiting. How many run at once is bounded by the callers (:class:`_Gate`)."""

    IDLE = 60.0

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._idle: List[Any] = []
        self._lock = threading.Lock()
        self._count = itertools.count(1)

    async def run(self, loop: Any, ctx: Any, call: Callable[[], Any]) -> Any:
        """Run ``call`` in ``ctx`` in one of the pool's threads; await its result."""
        future = loop.create_future()

        def settle(ok: bool, value: Any) -> None:
            if future.done():  # the awaiting task was cancelled
                if not ok:
                    _log.warning('an ainvoke callee whose caller was cancelled failed',
                                 exc_info=value)
            elif ok:
                future.set_result(value)
            else:
                future.set_exception(value)

        def job() -> None:
            try:
                outcome = (True, ctx.run(call))
            except BaseException as e:  # noqa: B036 - handed to the awaiting task
                outcome = (False, e)
            try:
                loop.call_soon_threadsafe(settle, *outcome)
            except RuntimeError:  # its loop has closed meanwhile: nobody awaits it
                if not outcome[0]:
                    _log.warning('an ainvoke callee whose caller is gone failed',
                                 exc_info=outcome[1])

        with self._lock:
            jobs = self._idle.pop() if self._idle else None
        if jobs is None:
            jobs = queue.SimpleQueue()
            threading.Thread(target=self._serve, args=(jobs,), daemon=True,
                             name='%s-%d' % (self._prefix, next(self._count))).start()
        jobs.put(job)
        return await future

    def _serve(self, jobs: Any) -> None:
        while True:
            try:
                job = jobs.get(timeout=self.IDLE)
            except queue.Empty:
                with self._lock:
                    if jobs in self._idle:
                        self._idle.remove(jobs)
                        return
                continue  # taken just now: its job is on the way
            job()
            job = None
            with self._lock:
                self._idle.append(jobs)


def _depth_error(chain: Tuple[str, ...]) -> InvokeDepthError:
    shown = ' -> '.join(chain[:4]) + ' -> ... -> ' + chain[-1]
    return InvokeDepthError('invoke depth limit (%d) reached: %s (%d nested invokes; a '
                            'service invoking itself?)'
                            % (MAX_INVOKE_DEPTH, shown, len(chain) - 1), chain)


def _invoke_args(name: Any, payload: Any, args: Tuple[Any, ...],
                 kwargs: Optional[Dict[str, Any]]) -> Tuple[str, Any, Tuple[Any, ...]]:
    """``self.invoke``'s arguments, Zato's included: (callee name, payload, (as_bunch,
    serialize, timeout, raise_timeout, environ, skip_response_elem))."""
    if not args and not kwargs:
        # The usual call, invoke(name, payload): the defaults, nothing to sort out.
        if isinstance(name, type) and issubclass(name, Service):
            name = name.name
        return name, payload, _DEFAULT_INVOKE_OPTS
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
    opts = (kwargs.pop('as_bunch', False), kwargs.pop('serialize', False),
            kwargs.pop('timeout', None), kwargs.pop('raise_timeout', True),
            kwargs.pop('environ', None), bool(kwargs.pop('skip_response_elem', False)))
    for ignored in _INVOKE_IGNORED:
        kwargs.pop(ignored, None)
    if isinstance(name, type) and issubclass(name, Service):
        name = name.name
    if kwargs:
        if payload:
            raise TypeError('invoke(): unknown keyword arguments with a payload: %s'
                            % ', '.join(sorted(kwargs)))
        payload = kwargs
    return name, payload, opts


def _shape_result(result: Any, as_bunch: Any, serialize: Any) -> Any:
    """The callee's output as ``self.invoke`` returns it (``as_bunch``, ``serialize``)."""
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


def _callee_input(svc: Service, meta: Dict[str, Any], caller: Service) -> None:
    """Parse an in-process callee's input. Its refusal is the caller's fault, not the
    client's: an :class:`InvokeError` naming the callee and every bad field, never the
    callee's 400 (which would show the caller's client a field of an internal service)."""
    cls = type(svc)
    request = svc.request
    payload = request.payload
    try:
        if cls._oxbus_input:
            request.input = parse_input(cls._oxbus_input, payload, None, dict)
        elif cls._oxbus_input_model is not None:
            request.input = _model_input(cls, svc, request, payload, meta, True)
    except BadRequest as e:
        # Its message names the first few bad fields (all of them are in its details).
        raise InvokeError('%s invoked %s with input it refused: %s'
                          % (caller.name, cls.name, e.msg), cls.name, e.details) from None
    if cls._oxbus_zato:
        _zato_request(cls, svc, request, meta)


def _callee_output(svc: Service, skip_elem: bool) -> Any:
    """An in-process callee's answer: its payload through its declared output."""
    cls = type(svc)
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
        if wrap and not (skip_elem and elem is not None
                         and (elem == 'response' or elem.startswith('zato'))):
            result = {elem: result}
        return result
    if cls._oxbus_output_model is not None:
        return _model_output(cls._oxbus_output_model, result)
    return result


def _run_sync_hooked(svc: Service, attr: str) -> None:
    """A plain service's hooks and handler, for an in-process invoke."""
    before, after = type(svc)._oxbus_hooks
    if before:
        svc._oxbus_before()
    getattr(svc, attr)()
    if after:
        svc._oxbus_after()


def _off_loop_call(svc: Service, attr: str, invocation: Invocation, meta: Dict[str, Any],
                   chain: Tuple[str, ...], caller: Service) -> Callable[[], None]:
    """What a pool thread runs for ``ainvoke`` of a plain service (in a copy of the
    caller's context): the callee's input, hooks and handler, as its own invocation.

    Unlike ``self.invoke`` (and an async callee of ``ainvoke``), which share the caller's
    registry of what is open on the server, this callee gets its own, as a ``timeout=``
    callee does: it runs in another thread and may outlive a caller that timed out."""
    def call() -> None:
        current_invocation.set(invocation)
        _invocation_meta.set(meta)
        _invoke_chain.set(chain)
        # What the callee opens (transactions, streams) it closes itself, as a timeout=
        # callee does: the thread's registry, not the caller's task's.
        token = open_invocation()
        try:
            _callee_input(svc, meta, caller)
            _run_sync_hooked(svc, attr)
        finally:
            close_invocation(token, type(svc).name)
            if holding:
                end_invocation(invocation)
    return call


def _consume_result(caller: Service, name: str, task: Any) -> None:
    # A timed-out ainvoke's callee ran on: fetch its outcome so that asyncio does not log
    # "exception was never retrieved" (the timeout was the caller's answer), and log it.
    if not task.cancelled():
        exc = task.exception()
        if exc is not None:
            caller.logger.warning('invoke of %s, which had timed out, then failed (cid %s)',
                                  name, caller.cid, exc_info=exc)

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
        name: str = klass.__name__
        if getattr(home, name, None) is klass:
            return name
    return 'BaseException'  # not reached: every exception class derives from it


def _unencodable(payload: Any) -> OutputError:
    """The OutputError of an answer the JSON encoder refused, naming where in it (the
    error path only: the encoder says neither where nor which key)."""
    path, reason = find_unencodable(payload)
    return OutputError(path, reason)


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
                      meta: Dict[str, Any], chain: Tuple[str, ...] = (),
                      gate: Any = None) -> None:
    """An async service's hooks and handler, for an in-process invoke."""
    # The coroutine may run in another thread's context (the worker's event loop), so the
    # invocation is set again here rather than inherited.
    token = current_invocation.set(invocation)
    meta_token = _invocation_meta.set(meta)
    chain_token = _invoke_chain.set(chain)
    gate_token = _offload_gate.set(gate)
    try:
        before, after = type(svc)._oxbus_hooks
        if before:
            await _maybe_await(svc._oxbus_before())
        await _maybe_await(getattr(svc, attr)())
        if after:
            await _maybe_await(svc._oxbus_after())
    finally:
        if holding:
            end_invocation(invocation)
        _offload_gate.reset(gate_token)
        _invoke_chain.reset(chain_token)
        _invocation_meta.reset(meta_token)
        current_invocation.reset(token)


def _end_of_call(stream: int) -> None:
    """A call ends (in its thread or task, its invocation still current): send the text it
    left unfinished, and threads it started log without its cid from now on."""
    if holding:
        end_invocation(current_invocation.get())
    if carrying:
        end_call(stream)


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
#: :func:`_invoke_args`'s options when none are given.
_DEFAULT_INVOKE_OPTS = (False, False, None, True, None, False)


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
