"""Zato's integration patterns: ``self.patterns.invoke_retry``, ``.fanout``, ``.parallel``.

**Invoke/retry** — call a service, and if it raises, call it again::

    # Blocking: up to 3 more attempts, 2 s apart; the result, or RetryLimitReached.
    result = self.patterns.invoke_retry.invoke('crm.get', {'id': 5}, repeats=3, seconds=2)

    # With a fallback: the first attempt now; if it fails, the retries go on in the
    # background and the callback service gets the outcome. Returns the call's cid then.
    cid = self.patterns.invoke_retry.invoke('crm.get', {'id': 5}, repeats=3, seconds=2,
                                            async_fallback=True, callback='crm.on-result',
                                            context={'order': 7})
    # All attempts in the background from the start:
    cid = self.patterns.invoke_retry.invoke_async('crm.get', {'id': 5}, repeats=3,
                                                  seconds=2, callback='crm.on-result')

``repeats`` counts the attempts after the first failed one (so at most ``1 + repeats``
calls), ``seconds`` or ``minutes`` (exactly one) the pause between them. The callback is
invoked (``invoke_async``) with Zato's dict: ``ok``, ``orig_cid``, ``call_cid``, ``source``,
``target``, ``retry_seconds``, ``retry_repeats``, ``context``, ``req_ts_utc``,
``resp_ts_utc``, ``response`` (None when every attempt failed).

**Fan-out/fan-in** and **parallel execution** — invoke several services at once and be
told of each result, and (fan-out) of all of them::

    cid = self.patterns.fanout.invoke({'crm.get': {'id': 5}, 'billing.get': {'id': 5}},
                                      on_final='order.collect', on_target='order.progress')
    cid = self.patterns.parallel.invoke({'cache.warm': None, 'index.rebuild': None},
                                        on_target='ops.report')

Both return at once with the cid. The targets run concurrently through the server's
invoke, the same path as an HTTP request, so on any worker of this server (a target that is
not deployed answers its failure: 404 no such service). Each finished target invokes every
``on_target`` service with ``phase: 'on-target'``, ``source``, ``target``, ``response``,
``ok``, ``exception`` (the error text, None when ``ok``), ``cid``, ``req_ts_utc``,
``resp_ts_utc``; when all have finished, fan-out invokes every ``on_final`` service with
``phase: 'on-final'``, ``source``, ``req_ts_utc``, ``on_target``, ``on_final`` and ``data``
(the list of the on-target dicts, in the order the targets finished). Every callback runs
under the pattern's cid (its ``self.cid``), as in Zato.

Where Oxbus differs from Zato: the coordination runs in threads of the calling worker, so a
worker that stops (a restart, a crash) ends the pattern runs it was coordinating; the
targets and callbacks themselves run like any invocation. At most 32 targets of one call
run at the same time; a worker runs at most 128 target threads, and its pattern runs wait in
one queue for at most 64 coordinating threads (a call returns at once; with 10,000 runs
waiting it raises ``PatternsBusy``; a background retry's pauses hold a coordinating thread); a call names at most 1000 targets. A target's answer reaches the callbacks as
JSON, or as text (a body that is not JSON is decoded as UTF-8).
"""

from __future__ import annotations

import threading
import time

from ._protocol import decode_json, encode_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

    from .service import Service

__all__ = ['PatternsFacade', 'InvokeRetry', 'FanOut', 'ParallelExec', 'RetryLimitReached',
           'TargetFailed', 'PatternsBusy']

MAX_TARGETS = 1000
MAX_CONCURRENT = 32
#: Pattern threads (coordinators and targets) a worker runs at once, all calls together:
#: a busy fan-out endpoint with slow targets waits for a place rather than exhausting the
#: worker's threads and memory.
MAX_WORKER_THREADS = 128
#: Pattern runs (a fan-out, a parallel call, a background retry) wait in one queue drained by
#: at most this many coordinator threads; a call never blocks its caller (Zato's return at
#: once): with the queue full it raises :class:`PatternsBusy`.
MAX_COORDINATORS = 64
MAX_QUEUED = 10000
_target_threads = threading.BoundedSemaphore(MAX_WORKER_THREADS)


class PatternsBusy(RuntimeError):
    """This worker has :data:`MAX_QUEUED` pattern runs waiting already."""


class _Coordinators:
    """The worker's coordinator threads and their queue, started on first use."""

    def __init__(self) -> None:
        import queue
        self.queue: Any = queue.Queue(MAX_QUEUED)
        self.lock = threading.Lock()
        self.threads = 0
        self.idle = 0

    def submit(self, job: Any) -> None:
        import queue
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise PatternsBusy('%d pattern runs wait in this worker already; try again later'
                               % MAX_QUEUED) from None
        with self.lock:
            start = self.idle == 0 and self.threads < MAX_COORDINATORS
            if start:
                self.threads += 1
        if start:
            threading.Thread(target=self.loop, daemon=True, name='oxbus-pattern').start()

    def loop(self) -> None:
        while True:
            with self.lock:
                self.idle += 1
            ctx, target, args = self.queue.get()
            with self.lock:
                self.idle -= 1
            try:
                ctx.run(target, *args)
            except Exception:  # noqa: BLE001 - one run's bug must not end the thread
                import logging
                logging.getLogger('oxbus.patterns').exception('a pattern run failed')


_coordinators = _Coordinators()


class RetryLimitReached(RuntimeError):
    """Every attempt of a blocking invoke/retry failed: ``attempts`` made, ``last`` the
    last exception."""

    def __init__(self, msg: str, attempts: int, last: BaseException) -> None:
        super().__init__(msg)
        self.attempts = attempts
        self.last = last


class TargetFailed(Exception):
    """A target invoked through the server answered an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__('status %d: %s' % (status, message))
        self.status = status
        self.message = message


def _utcnow_iso() -> str:
    import datetime
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def _new_cid() -> str:
    import os
    return os.urandom(10).hex()


def _names(value: Any, what: str) -> List[str]:
    if value is None:
        return []
    names = [value] if isinstance(value, str) else list(value)
    for n in names:
        if not isinstance(n, str) or not n:
            raise ValueError('%s: service names are non-empty strings, not %r' % (what, n))
    return names


def server_invoke(service: Service, name: str, payload: Any, cid: str) -> Any:
    """Invoke ``name`` through the server (any worker) and return its answer's payload;
    :class:`TargetFailed` for an error status."""
    dispatcher = service._require_dispatcher()
    meta: Dict[str, Any] = {'op': 'invoke', 'service': name, 'cid': cid, 'data_format': 'json'}
    traceparent = service.traceparent
    if traceparent:
        meta['traceparent'] = traceparent
        if service.tracestate:
            meta['tracestate'] = service.tracestate
    if payload is None:
        body = b''
    elif isinstance(payload, (bytes, bytearray)):
        body = bytes(payload)
    else:
        body = encode_json(payload)
    raw, answer = dispatcher.request(encode_json(meta), body)
    reply = decode_json(raw)
    status = reply.get('status', 500) if isinstance(reply, dict) else 500
    content_type = (reply.get('content_type') or '') if isinstance(reply, dict) else ''
    if not 200 <= status < 300:
        try:
            doc = decode_json(answer)
            message = doc.get('error') if isinstance(doc, dict) else None
        except ValueError:
            message = None
        raise TargetFailed(status, message or answer.decode('utf-8', 'replace')[:512])
    if not answer:
        return None
    if content_type.startswith('application/json'):
        return decode_json(answer)
    # Text, and any other body too: a callback's payload is JSON, which has no bytes.
    return answer.decode('utf-8', 'replace')


def _coordinate(target: Any, *args: Any) -> None:
    """Queue ``target(*args)`` for a coordinator thread, in a copy of the caller's context
    (log records keep the invocation's cid and service); never blocks."""
    import contextvars
    _coordinators.submit((contextvars.copy_context(), target, args))


def _spawn(target: Any, *args: Any, pool: Any) -> None:
    """Run ``target(*args)`` in a thread of its own once ``pool`` has a free place (called
    by coordinators only, never by a service's thread), in a copy of the context."""
    import contextvars
    ctx = contextvars.copy_context()
    pool.acquire()

    def run() -> None:
        try:
            ctx.run(target, *args)
        finally:
            pool.release()

    try:
        threading.Thread(target=run, daemon=True, name='oxbus-pattern').start()
    except BaseException:
        pool.release()
        raise


class InvokeRetry:
    """``self.patterns.invoke_retry``: see the module docstring."""

    __slots__ = ('_service',)

    def __init__(self, service: Service) -> None:
        self._service = service

    def _settings(self, target: str, repeats: Any, seconds: Any, minutes: Any,
                  callback: Any, needs_callback: bool) -> float:
        if not isinstance(target, str) or not target:
            raise ValueError('invoke_retry: the target is a service name, not %r' % (target,))
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError('invoke_retry %s: repeats must be an integer of at least 1, not %r'
                             % (target, repeats))
        if (seconds is None) == (minutes is None):
            raise ValueError('invoke_retry %s: give exactly one of seconds and minutes'
                             % target)
        pause = seconds if seconds is not None else minutes * 60
        if isinstance(pause, bool) or not isinstance(pause, (int, float)) or not pause >= 0:
            raise ValueError('invoke_retry %s: the pause must be a number of seconds >= 0, '
                             'not %r' % (target, pause))
        if needs_callback:
            if not isinstance(callback, str) or not callback:
                raise ValueError('invoke_retry %s: a callback service is needed' % target)
            dispatcher = self._service._require_dispatcher()
            if callback not in dispatcher.services:
                raise ValueError('invoke_retry %s: no such callback service: %s'
                                 % (target, callback))
        return float(pause)

    def invoke(self, target: str, payload: Any = None, *, repeats: Any = None,
               seconds: Any = None, minutes: Any = None, async_fallback: bool = False,
               callback: Optional[str] = None, context: Any = None, cid: Optional[str] = None,
               **kwargs: Any) -> Any:
        """Invoke now; on an exception, retry (blocking, or in the background with
        ``async_fallback``). Returns the answer, or the call's cid after a fallback."""
        pause = self._settings(target, repeats, seconds, minutes, callback, async_fallback)
        service = self._service
        call_cid = cid or _new_cid()
        req_ts = _utcnow_iso()
        try:
            return service.invoke(target, payload, **kwargs)
        except Exception as first:  # noqa: BLE001 - any failure of the target is retried
            service.logger.warning('invoke_retry %s: attempt 1/%d failed: %s: %s', target,
                                   1 + repeats, type(first).__name__, first)
            if async_fallback:
                _coordinate(self._background, target, payload, repeats, pause, call_cid,
                            callback, context, req_ts, 1)
                return call_cid
            last: BaseException = first
        for attempt in range(2, repeats + 2):
            time.sleep(pause)
            try:
                return service.invoke(target, payload, **kwargs)
            except Exception as e:  # noqa: BLE001
                last = e
                service.logger.warning('invoke_retry %s: attempt %d/%d failed: %s: %s', target,
                                       attempt, 1 + repeats, type(e).__name__, e)
        raise RetryLimitReached('invoke_retry %s: retry limit reached after %d attempts '
                                '(%s seconds apart), cid %s: %s: %s'
                                % (target, 1 + repeats, pause, service.cid,
                                   type(last).__name__, last), 1 + repeats, last)

    def invoke_async(self, target: str, payload: Any = None, *, repeats: Any = None,
                     seconds: Any = None, minutes: Any = None, callback: Optional[str] = None,
                     context: Any = None, cid: Optional[str] = None, **_ignored: Any) -> str:
        """Every attempt in the background; the callback gets the outcome. Returns the cid."""
        pause = self._settings(target, repeats, seconds, minutes, callback, True)
        call_cid = cid or _new_cid()
        _coordinate(self._background, target, payload, repeats, pause, call_cid, callback,
                    context, _utcnow_iso(), 0)
        return call_cid

    def _background(self, target: str, payload: Any, repeats: int, pause: float, call_cid: str,
                    callback: str, context: Any, req_ts: str, done: int) -> None:
        service = self._service
        total = repeats + 1
        ok, response = False, None
        for attempt in range(done + 1, total + 1):
            if attempt > 1:
                time.sleep(pause)
            try:
                response = server_invoke(service, target, payload, call_cid)
                ok = True
                break
            except Exception as e:  # noqa: BLE001
                service.logger.warning('invoke_retry %s: attempt %d/%d failed: %s', target,
                                       attempt, total, e)
        if not ok:
            service.logger.warning('invoke_retry %s: retry limit reached (%d attempts), '
                                   'call cid %s', target, total, call_cid)
        try:
            service.invoke_async(callback, cid=call_cid, payload={
                'ok': ok, 'orig_cid': service.cid, 'call_cid': call_cid, 'source': service.name,
                'target': target, 'retry_seconds': pause, 'retry_repeats': repeats,
                'context': context, 'req_ts_utc': req_ts, 'resp_ts_utc': _utcnow_iso(),
                'response': response})
        except Exception as e:  # noqa: BLE001 - a background thread has no caller to tell
            service.logger.error('invoke_retry %s: could not invoke the callback %s: %s',
                                 target, callback, e)


class _Parallel:
    """What fan-out and parallel execution share."""

    __slots__ = ('_service',)
    _final = False

    def __init__(self, service: Service) -> None:
        self._service = service

    def _start(self, targets: Any, on_final: Any, on_target: Any, cid: Optional[str]) -> str:
        what = 'fanout' if self._final else 'parallel'
        if not isinstance(targets, dict) or not targets:
            raise ValueError('%s: targets must be a non-empty dict of service name -> payload'
                             % what)
        if len(targets) > MAX_TARGETS:
            raise ValueError('%s: at most %d targets, not %d' % (what, MAX_TARGETS, len(targets)))
        names = _names(list(targets), what + ' targets')
        finals = _names(on_final, what + ' on_final')
        per_target = _names(on_target, what + ' on_target')
        if self._final and not finals:
            raise ValueError('fanout: on_final names at least one service')
        for payload in targets.values():
            if payload is not None and not isinstance(payload, (bytes, bytearray)):
                encode_json(payload)  # refuse what cannot be sent now, not in the background
        cid = cid or self._service.cid or _new_cid()
        _coordinate(self._run, [(n, targets[n]) for n in names], finals, per_target, cid,
                    _utcnow_iso())
        return cid

    def _run(self, items: List[Tuple[str, Any]], finals: List[str], per_target: List[str],
             cid: str, req_ts: str) -> None:
        service = self._service
        results: List[Dict[str, Any]] = []
        lock = threading.Lock()
        gate = threading.Semaphore(MAX_CONCURRENT)
        all_done = threading.Event()
        remaining = [len(items)]

        def one(name: str, payload: Any) -> None:
            try:
                try:
                    response, exc = server_invoke(service, name, payload, cid), None
                except Exception as e:  # noqa: BLE001 - reported to the callbacks
                    response, exc = None, '%s: %s' % (type(e).__name__, e)
                entry = {'source': service.name, 'target': name, 'response': response,
                         'req_ts_utc': req_ts, 'resp_ts_utc': _utcnow_iso(), 'ok': exc is None,
                         'exception': exc, 'cid': cid}
                with lock:
                    results.append(entry)
                for callback in per_target:
                    self._callback(callback, dict(entry, phase='on-target'), cid)
            finally:
                gate.release()
                with lock:
                    remaining[0] -= 1
                    if remaining[0] == 0:
                        all_done.set()

        for name, payload in items:
            gate.acquire()
            _spawn(one, name, payload, pool=_target_threads)
        all_done.wait()
        if self._final:
            message = {'phase': 'on-final', 'source': service.name, 'req_ts_utc': req_ts,
                       'on_target': per_target, 'on_final': finals, 'data': results}
            for callback in finals:
                self._callback(callback, message, cid)

    def _callback(self, name: str, payload: Dict[str, Any], cid: str) -> None:
        try:
            self._service.invoke_async(name, payload, cid=cid)
        except Exception as e:  # noqa: BLE001 - a background thread has no caller to tell
            self._service.logger.error('%s: could not invoke callback %s: %s',
                                       type(self).__name__, name, e)


class FanOut(_Parallel):
    """``self.patterns.fanout``: ``invoke(targets, on_final, on_target=None, cid=None)``."""

    __slots__ = ()
    _final = True

    def invoke(self, targets: Dict[str, Any], on_final: Union[str, Sequence[str]],
               on_target: Union[None, str, Sequence[str]] = None,
               cid: Optional[str] = None) -> str:
        return self._start(targets, on_final, on_target, cid)


class ParallelExec(_Parallel):
    """``self.patterns.parallel``: ``invoke(targets, on_target, cid=None)``."""

    __slots__ = ()

    def invoke(self, targets: Dict[str, Any], on_target: Union[None, str, Sequence[str]],
               cid: Optional[str] = None) -> str:
        return self._start(targets, None, on_target, cid)


class PatternsFacade:
    """``self.patterns``."""

    __slots__ = ('invoke_retry', 'fanout', 'parallel')

    def __init__(self, service: Service) -> None:
        self.invoke_retry = InvokeRetry(service)
        self.fanout = FanOut(service)
        self.parallel = ParallelExec(service)
