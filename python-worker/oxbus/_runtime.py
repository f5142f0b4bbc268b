"""The Python worker process: connection, handshake and concurrency.

Lifecycle (``ipc-protocol/SPEC.md`` is the authority on every byte):

1. connect to the supervisor's Unix socket, send ``HELLO``, wait for ``WELCOME``;
2. import every module and package in ``services_dir`` and collect the services
   (:mod:`oxbus._loader`);
3. send ``READY`` and serve ``CALL``s until ``DRAIN`` (finish everything, ``BYE``, exit 0)
   or until the supervisor disappears (exit 5). Besides invocations these include the hot
   deployment ops (``modules.check``/``activate``/``remove``), answered by
   :mod:`oxbus._deploy` through ``Dispatcher.ops``.

Concurrency is a leader/follower pool, chosen because the common request is tiny (an echo
takes microseconds) and a per-request hand-off to another thread would cost more than the
request itself:

* One thread at a time is the *leader*. It reads the socket (``recv_into`` a large buffer),
  decodes every complete frame, answers control frames itself and appends ``CALL``s to the
  shared ``pending`` deque. Then it runs the pending calls itself, one after another,
  *inline*, collects their replies in the outbox and sends them with one ``sendall`` every
  ``FLUSH_EVERY`` calls and before it blocks in ``recv`` again. On the fast path there is
  no thread switch at all: one ``recv`` per batch, one ``sendall`` per few calls.
* A *watchdog* thread notices when the leader has been inside one handler for longer than
  the hand-off time (2 ms, ``OXBUS_HANDOFF_MS``). It then promotes another thread (an idle
  follower, or a new one; at most ``threads + 1`` in all) to leader. The new leader first
  sends the replies the slow handler was holding back, then carries on reading and running.
  The demoted thread finishes its handler, sends its reply, takes more pending work if a
  handler slot is free and otherwise waits as an idle follower. While the leader runs
  handlers the watchdog ticks at the hand-off period; once the leader has been out of
  handlers for a while it sleeps on an event and costs nothing. It also enforces the
  heartbeat: no frame from the supervisor for three ``heartbeat_ms`` means exit 5.
* ``threads`` (from ``WELCOME``) caps the number of ``def handle`` calls running at once.
  When all slots are taken the leader still reads the socket, so ``PING``, ``CANCEL`` and
  ``DRAIN`` are always answered, but ``CALL``s wait in ``pending``; whichever thread frees a
  slot takes the next one.
* ``async def handle`` services run on one asyncio event loop in its own thread, started
  only if such a service exists (importing asyncio costs startup time). The leader hands
  each batch of async calls over with a single ``call_soon_threadsafe``.

All shared state lives in :class:`Worker` and is guarded by ``_lock``; ``_send_lock``
serialises writes so that frames leave in the order they were queued.

This module owns the socket and the threads; it may not run a service itself (that is
:mod:`oxbus._dispatch`), load one (:mod:`oxbus._loader`) or deploy one (:mod:`oxbus._deploy`),
and none of those imports it. It is longer than the project's ~800 lines because
:class:`Worker` is one state machine (leader, followers, watchdog, outbox) whose methods all
follow the same ``_lock`` discipline; split across files, that discipline could no longer
be read in one place.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import deque

from . import __version__
from ._protocol import (BYE, CALL, CANCEL, DRAIN, ERROR, HELLO, KIND_NAMES, LOG, PING, PONG,
                        PROTOCOL_VERSION, READY, REPLY, WELCOME, WORKER_STREAM_BIT,
                        FrameReader, ProtocolError, decode_call, decode_json, encode_frame,
                        encode_json, encode_worker_call, split_call)
from ._deploy import Deployer
from ._dispatch import Dispatcher, _error_frame
from ._loader import ImportFailed, load_services_dir, service_info
from ._logctx import (_carried_live, install_stdio, install_thread_context, live_invocation,
                      start_plain, uninstall_stdio)
from .service import _invocation_meta, _trace_id_of, current_invocation

TYPE_CHECKING = False  # see _protocol.py: keep ``typing`` out of the worker's startup
if TYPE_CHECKING:
    from typing import (Any, Awaitable, Callable, Dict, List, NoReturn, Optional, Set, Tuple,
                        Union)

    from ._protocol import Frame

__all__ = ['main', 'Worker', 'FrameLogHandler']

EXIT_OK = 0
EXIT_USAGE = 2          # argparse's own code for a bad command line
EXIT_IMPORT_FAILED = 3
EXIT_HANDSHAKE = 4
EXIT_LOST = 5
EXIT_INTERNAL = 70      # a bug in this runtime (EX_SOFTWARE); never expected

#: How long the leader may stay inside one inline handler before the socket is handed to
#: another thread. Short enough that a slow handler delays nobody noticeably, long enough
#: that ordinary requests never pay for a hand-off.
HANDOFF_MS = 2.0

#: The leader sends the replies it has collected every this many inline calls, not only
#: when its batch is done: the supervisor can then answer those clients while this worker
#: works through the rest, so the two overlap on separate cores. Measured with the echo
#: benchmark on 2 cores: 8 gave ~10% more throughput than flushing per batch, 4 and 16 less;
#: on one core it made no difference beyond noise. 0 = only at the end of a batch.
FLUSH_EVERY = int(os.environ.get('OXBUS_FLUSH_EVERY', '8')) or 1 << 30
#: The supervisor answers HELLO right away; if it does not, it is not going to.
HANDSHAKE_TIMEOUT_S = 30.0

_LOG_LEVELS = {
    'trace': logging.DEBUG, 'debug': logging.DEBUG, 'info': logging.INFO,
    'warn': logging.WARNING, 'warning': logging.WARNING, 'error': logging.ERROR,
    'critical': logging.CRITICAL,
}
_BYE_FRAME = encode_frame(BYE)
_monotonic = time.monotonic
_get_ident = threading.get_ident


# -- logging ---------------------------------------------------------------------------


def _level_name(levelno: int) -> str:
    # By number, not by record.levelname, so custom levels still map onto the five the
    # protocol knows.
    if levelno >= logging.CRITICAL:
        return 'critical'
    if levelno >= logging.ERROR:
        return 'error'
    if levelno >= logging.WARNING:
        return 'warning'
    if levelno >= logging.INFO:
        return 'info'
    return 'debug'


#: What every LogRecord has (and what format() adds): anything else came with ``extra=``.
_RECORD_ATTRS = frozenset(logging.LogRecord('', 0, '', 0, '', None, None).__dict__) | {
    'message', 'asctime', 'taskName'}
_RECORD_ATTR_COUNT = len(logging.LogRecord('', 0, '', 0, '', None, None).__dict__)
#: The LOG frame's own fields. A service logger stamps them on its records (oxbus/service.py's
#: _ContextFilter, which marks the record ``_oxbus_ctx``); given in ``extra=`` they travel as
#: ``extra_cid`` and so on.
_FRAME_FIELDS = frozenset({'cid', 'service', 'trace_id'})
#: An ``extra`` value longer than this (as JSON) goes as its cut text; fields after this
#: many bytes in all are left out (the server cuts a value at 16 KiB anyway).
MAX_EXTRA_VALUE = 16 * 1024
MAX_EXTRA_BYTES = 32 * 1024


def _extra_fields(record: logging.LogRecord) -> Dict[str, Any]:
    """The ``extra={...}`` fields of ``record``, each a JSON value (its text when it has no
    JSON form, cut when longer than MAX_EXTRA_VALUE): they go in the LOG frame's ``extra``."""
    extra: Dict[str, Any] = {}
    stamped = '_oxbus_ctx' in record.__dict__
    total = 0
    left_out = 0
    for key, value in record.__dict__.items():
        if not isinstance(key, str):
            key = str(key)  # logging takes any key: extra={1: 'a'}
        elif key in _RECORD_ATTRS or key.startswith('_'):
            continue
        elif key in _FRAME_FIELDS:
            if stamped:
                continue
            key = 'extra_' + key
        try:
            size = len(encode_json(value))
        except Exception:  # noqa: BLE001 - any value may come here; its text goes instead
            try:
                value = str(value)
            except Exception:  # noqa: BLE001
                value = '<%s>' % type(value).__name__
            size = len(value)
        if size > MAX_EXTRA_VALUE:
            text = value if isinstance(value, str) else encode_json(value).decode('utf-8')
            kept = text[:MAX_EXTRA_VALUE // 4]  # at most MAX_EXTRA_VALUE bytes as UTF-8
            value = '%s…[truncated %d bytes]' % (kept, size - len(kept.encode('utf-8')))
            size = len(value)
        if total + size > MAX_EXTRA_BYTES:
            left_out += 1
            continue
        total += size
        extra[key] = value
    if left_out:
        extra['extra_left_out'] = left_out
    return extra


class FrameLogHandler(logging.Handler):
    """Sends every log record to the supervisor as a ``LOG`` frame.

    Installed on the root logger, so a plain ``logging.getLogger(__name__)`` in user code
    reaches the server log too. The cid, service, stream and trace id of the invocation
    running in the emitting thread or task come from
    :data:`oxbus.service.current_invocation` (the trace id from the invocation's meta beside
    it).
    Until ``READY`` has been sent the frames are kept in :attr:`early` (the protocol allows
    nothing else before it), then ``sink`` is switched to the worker's outbox.
    """

    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.early: List[bytes] = []
        self.sink: Callable[[bytes], None] = self.early.append

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # Counted before format(), which adds ``message`` (and maybe ``asctime``).
            has_extra = len(record.__dict__) > _RECORD_ATTR_COUNT
            doc: Dict[str, Any] = {'level': _level_name(record.levelno), 'logger': record.name,
                                   # format() appends the exception text and stack info when present.
                   'msg': self.format(record)}
            if has_extra:
                extra = _extra_fields(record)
                if extra:
                    doc['extra'] = extra
            stream = 0
            current = current_invocation.get()
            if current is not None and _carried_live.get() is not None:
                current = live_invocation()  # a thread that outlived its invocation: none
            if current is not None:
                doc['cid'], doc['service'], stream = current
                trace_id = _trace_id_of(_invocation_meta.get())
                if trace_id:
                    doc['trace_id'] = trace_id
            self.sink(encode_frame(LOG, encode_json(doc), stream))
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


# -- the worker --------------------------------------------------------------------------


class _Call:
    """One CALL from the supervisor, from arrival to reply."""

    __slots__ = ('stream', 'meta', 'body', 'started', 'cancelled')

    def __init__(self, stream: int, meta: Dict[str, Any], body: bytes) -> None:
        self.stream = stream
        self.meta = meta
        self.body = body
        self.started = False
        # Set by CANCEL: a pending call is skipped, a running one has its reply dropped.
        # A flag on the call, not a set of stream ids, because the supervisor may reuse a
        # cancelled stream id while the old handler is still running.
        self.cancelled = False


class _SyncSlot:
    """A waiter of :meth:`Worker.request`. Whoever reads its REPLY ``append``s it (under
    ``Worker._lock``); a thread parked for it is woken through its own ``sem``, so a REPLY
    wakes exactly the thread it is for, never every waiter."""

    __slots__ = ('payload', 'sem', 'parked')

    def __init__(self) -> None:
        self.payload: Optional[bytes] = None
        # A lock used as a binary semaphore, made (and held) when the thread first parks;
        # the parked thread blocks acquiring it again. Released exactly once per park, by
        # whoever clears ``parked`` (under ``_lock``): with the REPLY in ``payload``, or
        # with the socket handed over (``payload`` still None, ``_rx_busy`` kept True on
        # the woken thread's behalf).
        self.sem: Optional[Any] = None
        self.parked = False

    def append(self, payload: bytes) -> None:
        self.payload = payload
        if self.parked:
            self.parked = False
            self.sem.release()  # type: ignore[union-attr]


class _FutureSlot:
    """A waiter of :meth:`Worker.arequest`: whoever reads the REPLY ``append``s it, as to a
    :class:`_SyncSlot`, and that resolves the future on its own loop's thread.

    ``orphan(raw_meta, body)``, if given, gets a REPLY whose awaiting task was cancelled
    (on the loop's thread): the call may have opened something on the server that must be
    ended now."""

    __slots__ = ('_loop', '_future', 'orphan')

    def __init__(self, loop: Any, future: Any,
                 orphan: Optional[Callable[[bytes, bytes], None]] = None) -> None:
        self._loop = loop
        self._future = future
        self.orphan = orphan

    def append(self, payload: bytes) -> None:
        try:
            self._loop.call_soon_threadsafe(_resolve, self, payload)
        except RuntimeError:
            pass  # the loop is closed: the worker is on its way out, nobody awaits this


def _resolve(slot: _FutureSlot, payload: bytes) -> None:
    future = slot._future
    if not future.done():
        future.set_result(payload)
    else:  # a cancelled waiter's REPLY is dropped, after its orphan hook
        _run_orphan(slot.orphan, payload)


def _run_orphan(orphan: Optional[Callable[[bytes, bytes], None]], payload: bytes) -> None:
    if orphan is None:
        return
    try:
        orphan(*split_call(payload))
    except Exception:
        logging.getLogger('oxbus.worker').warning(
            'handling the late REPLY of a cancelled call failed', exc_info=True)


class Worker:
    """The serving half of the worker: the leader/follower pool described in the module doc."""

    def __init__(self, sock: socket.socket, reader: FrameReader, threads: int,
                 heartbeat_ms: int, worker_id: int = 0,
                 handoff_ms: Optional[float] = None) -> None:
        self._sock = sock
        self._reader = reader
        self._threads = max(1, threads)
        self._worker_id = worker_id
        if handoff_ms is None:
            handoff_ms = float(os.environ.get('OXBUS_HANDOFF_MS') or HANDOFF_MS)
        self._handoff = handoff_ms / 1000.0
        # The supervisor pings every heartbeat; three silent intervals mean it is gone.
        self._silence_limit = 3 * heartbeat_ms / 1000.0 if heartbeat_ms > 0 else None
        self.dispatcher = Dispatcher({})

        self._lock = threading.Lock()
        self._idle_cv = threading.Condition(self._lock)   # idle followers wait here
        self._wd_wake = threading.Event()                 # wakes an idle watchdog
        self._send_lock = threading.Lock()
        self._done = threading.Event()

        # All of the following are guarded by _lock.
        self._outbox: List[bytes] = []
        self._pending: deque[_Call] = deque()
        self._active: Dict[int, _Call] = {}   # stream -> call not yet answered or cancelled
        self._inflight = 0                    # calls registered whose handler has not ended
        self._running = 0                     # def-handle invocations running right now
        self._pool = 0                        # handler/leader threads started
        self._idle = 0                        # of which waiting as idle followers
        self._leader_epoch = 0                # bumped on every promotion
        self._leader_wanted = False           # a promotion waits for a thread to take it
        self._inline_since: Optional[float] = None  # leader's current inline handler start
        self._wd_idle = False                 # the watchdog sleeps until _wd_wake is set
        self._draining = False
        self._bye_sent = False
        self._started = False
        self._exit_code: Optional[int] = None

        # Written without the lock (single writer, read as hints).
        self._inline_ident = 0   # thread id of the leader while it runs handlers inline
        self._last_rx = _monotonic()
        # False while the leader's last inline call was a control op (a deploy), not an
        # invocation: the watchdog then sleeps as soon as it is done instead of lingering.
        self._wd_linger = True
        # (thread id, callable): housekeeping an op asked for, run by the thread that ran
        # the op once its reply is sent (see after_reply).
        self._after_reply: Optional[Tuple[int, Callable[[], Any]]] = None

        self._loop: Any = None   # the asyncio loop, if any service is async
        self._loop_ident = 0
        self._loop_flush_pending = False
        self._tasks: Set[Any] = set()  # asyncio.Task, kept alive until done

        # Calls this worker makes and waits for (``request``). Whoever wants to read the
        # socket claims it with _rx_busy (guarded by _lock): the leader between batches, or
        # a thread waiting for its REPLY. REPLYs are handed to their waiters by whoever reads.
        # Each thread waiting in request() parks on its own _SyncSlot (no shared condition:
        # a batch of REPLYs wakes only the threads they are for). Whoever gives the socket
        # back hands it to one parked thread still without its REPLY (_release_rx_locked),
        # else wakes the leader waiting in _claim_rx, the only waiter of _rx_cv.
        self._rx_busy = False
        self._rx_cv = threading.Condition(self._lock)
        self._rx_waiting = 0                  # leaders waiting on _rx_cv (in _claim_rx)
        self._rx_parked: deque[_SyncSlot] = deque()  # request() threads wanting the socket
        # stream -> _SyncSlot until its REPLY arrives (a _FutureSlot for arequest)
        self._waiters: Dict[int, Any] = {}
        self._request_ids = itertools.count(1)

    # -- public API used by the dispatcher and the log handler ----------------------------

    def post(self, frame: bytes) -> None:
        """Queue a frame for the supervisor (LOG, CALL of invoke_async) and see it sent soon."""
        with self._lock:
            if self._bye_sent:
                return  # nothing may follow BYE
            self._outbox.append(frame)
            if not self._started:
                return  # serve() sends it right after READY
        ident = _get_ident()
        if ident == self._inline_ident:
            return  # the leader flushes as soon as its current batch is done
        if ident == self._loop_ident:
            self._schedule_loop_flush()
        else:
            self._flush()

    def request(self, meta: Union[Dict[str, Any], bytes], body: bytes = b''
                ) -> Tuple[bytes, bytes]:
        """Send a CALL to the supervisor and wait for its REPLY: ``(raw meta JSON, body)``.

        ``meta`` is a dict or its JSON already encoded (the cache API builds its metas as
        bytes: a dict and ``encode_json`` cost more than the round trip's other Python).

        Any thread but the event loop's may call it (a handler, a thread of the service's
        own); on the event loop it is refused (the awaitable form is :meth:`arequest`).
        The waiting thread reads the socket itself when nobody else is reading it (the common
        case: the leader running this handler inline), so a call costs one ``sendall`` and
        one ``recv``; frames for others that arrive meanwhile are queued as usual. When
        another thread holds the socket, this one parks on its own slot until that thread
        hands it the REPLY, or the socket if the REPLY has not come by then (a batch of
        REPLYs wakes only the threads they are for, not every waiter). There is no
        timeout of its own: the supervisor answers every call, and a supervisor that is gone
        ends the worker (heartbeat).
        """
        if _get_ident() == self._loop_ident:
            self._refuse_on_loop(meta)
        stream = WORKER_STREAM_BIT | ((next(self._request_ids) - 1) % 0x7FFF_FFFF + 1)
        frame = encode_worker_call(stream, meta if type(meta) is bytes else encode_json(meta),
                                   body)
        slot = _SyncSlot()
        lock = self._lock
        with lock:
            self._check_can_call_locked()
            self._waiters[stream] = slot
            # Nobody reading (the usual case): this thread reads, right after sending.
            reading = not self._rx_busy
            if reading:
                self._rx_busy = True
        with self._send_lock:
            try:
                self._sock.sendall(frame)
            except OSError as e:
                self._lost('writing to the supervisor failed: %s' % e)
        reader = self._reader
        while True:
            if not reading:
                with lock:
                    payload = slot.payload
                    if payload is None:
                        if self._rx_busy:
                            # Park until the reader hands over the REPLY or the socket.
                            # Decided under the lock that every hand-over takes, so neither
                            # can slip in between (no lost wake-up).
                            sem: Any = slot.sem  # a Lock from here on
                            if sem is None:
                                sem = slot.sem = threading.Lock()
                                sem.acquire()  # held by this thread between wake-ups
                            slot.parked = True
                            self._rx_parked.append(slot)
                        else:
                            self._rx_busy = True
                            reading = True
                if payload is not None:
                    return split_call(payload)
                if not reading:
                    sem.acquire()  # released by _SyncSlot.append or _release_rx_locked
                    payload = slot.payload
                    if payload is not None:
                        return split_call(payload)
                    # Handed the socket: _rx_busy is already set on this thread's behalf.
            reading = False
            try:
                try:
                    n = self._sock.recv_into(reader.writable())
                except OSError as e:
                    self._lost('reading from the supervisor failed: %s' % e)
                if not n:
                    self._lost('the supervisor closed the connection')
                self._last_rx = _monotonic()
                payload = reader.feed_reply(n, stream)
                if payload is not None:
                    # Just our answer, nothing else: skip the general decoding.
                    with lock:
                        del self._waiters[stream]
                        self._release_rx_locked()
                    return split_call(payload)
                try:
                    # Keeps the socket for this thread while its REPLY has not come.
                    self._on_frames(reader.feed(0), slot)
                except ProtocolError as e:
                    self._protocol_error(e)
                if self._outbox:
                    self._flush()  # a PONG, or replies this thread's frames made ready
            except BaseException:
                # Anything else escaping here would leave the socket marked busy with every
                # other waiter (and the leader) parked behind it for good: a bug of this
                # module or a frame it cannot decode. Crash loudly, as a pool thread would
                # (_guard); the supervisor fails this worker's calls and replaces it.
                import traceback
                traceback.print_exc(file=sys.__stderr__)
                self._die(EXIT_INTERNAL, 'internal error in the worker runtime (reading a '
                          'reply)')
            payload = slot.payload
            if payload is not None:
                return split_call(payload)
            reading = True

    @staticmethod
    def _refuse_on_loop(meta: Union[Dict[str, Any], bytes]) -> NoReturn:
        """:meth:`request` on the event loop's thread: waiting there for the REPLY would
        stall every async service of the worker (``self.cache.default.get`` from ``async
        def``...). Refused with the awaitable form to use instead."""
        try:
            op = (decode_json(meta) if type(meta) is bytes else meta).get('op')  # type: ignore
        except (ValueError, AttributeError):
            op = None
        hint = {'cache': 'await self.cache.default.aget(...) / aset / adelete / aincr ...',
                'secret': 'await self.secrets.aget(name)',
                'user_config': 'await self.user_config.aget(name)'}.get(
            str(op).split('.', 1)[0], 'its awaitable a* form')
        raise RuntimeError('a blocking call to the server (%s) from a coroutine would stall '
                           'the event loop (every async service of this worker): inside async '
                           'def use %s' % (op, hint))

    def _check_can_call_locked(self) -> None:
        if not self._started:
            raise RuntimeError('the server can be called only once the worker serves '
                               '(inside handlers), not while modules are imported')
        if self._bye_sent:
            raise RuntimeError('the worker is stopping')

    async def arequest(self, meta: Union[Dict[str, Any], bytes], body: bytes = b'',
                       orphan: Optional[Callable[[bytes, bytes], None]] = None
                       ) -> Tuple[bytes, bytes]:
        """The awaitable form of :meth:`request`, for coroutines on an asyncio loop.

        The event loop never reads the socket and never waits for the REPLY: a waiter is
        registered under the call's stream id, and whichever thread reads the socket next
        (the leader, which is back in ``recv`` as soon as it has handed its batch of async
        calls to the loop, or a thread waiting in :meth:`request`) finds the REPLY among its
        frames and resolves the future with ``loop.call_soon_threadsafe``. A leader stuck in
        a slow inline handler is replaced by the watchdog after the hand-off time, as for
        every other frame, so the REPLY is read then. The CALL itself is written from the
        loop's thread with a blocking ``sendall`` (under the send lock): the loop waits for
        that write, which is short unless the supervisor stops reading the socket.

        Cancelling the awaiting task abandons the call: its REPLY, when it comes, is dropped,
        after ``orphan(raw_meta, body)`` (when given) has seen it on the loop's thread.
        """
        import asyncio
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        stream = WORKER_STREAM_BIT | ((next(self._request_ids) - 1) % 0x7FFF_FFFF + 1)
        frame = encode_worker_call(stream, meta if type(meta) is bytes else encode_json(meta),
                                   body)
        with self._lock:
            self._check_can_call_locked()
            self._waiters[stream] = _FutureSlot(loop, future, orphan)
        with self._send_lock:
            try:
                self._sock.sendall(frame)
            except OSError as e:
                self._lost('writing to the supervisor failed: %s' % e)
        try:
            payload = await future
        except asyncio.CancelledError:
            # Cancelled after the REPLY resolved the future but before this task resumed:
            # the REPLY is as orphaned as one that comes later.
            if future.done() and not future.cancelled():
                _run_orphan(orphan, future.result())
            raise
        return split_call(payload)

    def _claim_rx(self) -> bool:
        """For the leader: claim the socket, or return False when a call became runnable
        while another thread (waiting for its REPLY) was reading."""
        with self._lock:
            while True:
                # Checked on every pass, not only while the socket is taken: the thread that
                # read may have queued calls and released the socket before this one woke.
                if (self._pending and self._running < self._threads) or \
                        self._exit_code is not None:
                    return False
                if not self._rx_busy:
                    self._rx_busy = True
                    return True
                self._rx_waiting += 1
                self._rx_cv.wait()
                self._rx_waiting -= 1

    def _release_rx_locked(self) -> None:
        """Give the socket back after reading (the caller holds ``_lock`` and ``_rx_busy``):
        to one thread parked in :meth:`request` whose REPLY has not come (it then reads for
        everyone), else to whoever claims it next, waking a leader waiting in _claim_rx."""
        parked = self._rx_parked
        while parked:
            slot = parked.popleft()
            if slot.parked:  # else its REPLY came meanwhile and woke it: skip it
                slot.parked = False
                slot.sem.release()  # type: ignore[union-attr]
                self._wake_leader_locked()  # it may have calls to run meanwhile
                return  # _rx_busy stays set: the socket is that thread's now
        self._rx_busy = False
        self._wake_leader_locked()

    def _wake_leader_locked(self) -> None:
        # Exactly the conditions _claim_rx waits for, so a leader is woken only to act.
        if self._rx_waiting and (not self._rx_busy or self._exit_code is not None or
                                 (self._pending and self._running < self._threads)):
            self._rx_cv.notify_all()

    def after_reply(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` in this thread once the reply of the call it is running has been sent:
        for work that must not delay that reply (a deploy's garbage collection)."""
        self._after_reply = (_get_ident(), fn)

    def _housekeeping(self) -> None:
        job = self._after_reply
        if job is not None and job[0] == _get_ident():
            self._after_reply = None
            job[1]()

    def on_loop(self) -> bool:
        """Whether this thread is the worker's event loop thread (not merely a thread with
        a running asyncio loop: a plain service may run its own)."""
        return _get_ident() == self._loop_ident

    def run_coroutine(self, coro: Awaitable[Any]) -> Any:
        """Run a coroutine on the worker's event loop from a handler thread; for self.invoke."""
        if self._loop is None or _get_ident() == self._loop_ident:
            getattr(coro, 'close', lambda: None)()
            where = 'an async service' if self._loop is not None else 'this worker'
            raise RuntimeError('self.invoke of an async service from %s would block the '
                               'event loop; inside async def use await self.ainvoke(...)'
                               % where)
        import asyncio
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()  # type: ignore

    def start_loop(self) -> None:
        """Start the asyncio event loop thread (only called when an async service exists)."""
        import asyncio
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            self._loop_ident = _get_ident()
            loop.call_soon(ready.set)
            loop.run_forever()

        threading.Thread(target=run, name='oxbus-asyncio', daemon=True).start()
        ready.wait()
        self._loop = loop

    def serve(self) -> int:
        """Run until DRAIN completes (returns 0) or the supervisor is lost (exits 5)."""
        with self._lock:
            self._started = True
            self._leader_wanted = True
            self._spawn_locked()
        threading.Thread(target=self._guard(self._watchdog), name='oxbus-watchdog',
                         daemon=True).start()
        self._done.wait()
        return self._exit_code or 0

    # -- threads ------------------------------------------------------------------------

    def _guard(self, target: Callable[[], None]) -> Callable[[], None]:
        # An exception escaping a pool thread is a bug in this module; limping on with a
        # handler slot leaked would hang calls, so crash loudly instead.
        def run() -> None:
            try:
                target()
            except BaseException:
                import traceback
                traceback.print_exc(file=sys.__stderr__)
                self._die(EXIT_INTERNAL, 'internal error in the worker runtime')
        return run

    def _spawn_locked(self) -> None:
        self._pool += 1
        # Not carrying the invocation of the thread that spawns it (_logctx): a pool thread
        # sets its invocation per call.
        start_plain(threading.Thread(target=self._guard(self._thread_main),
                                     name='oxbus-%d' % self._pool, daemon=True))

    def _thread_main(self) -> None:
        """Every pool thread: lead when asked, else run pending calls, else wait idle."""
        lock = self._lock
        while True:
            with lock:
                while True:
                    if self._exit_code is not None:
                        return
                    if self._leader_wanted:
                        self._leader_wanted = False
                        epoch: Optional[int] = self._leader_epoch
                        call = None
                        break
                    if self._pending and self._running < self._threads:
                        call = self._take_locked()
                        if call is not None:
                            self._running += 1
                            epoch = None
                            break
                    self._idle += 1
                    self._idle_cv.wait()
                    self._idle -= 1
            if epoch is not None:
                self._lead(epoch)
                continue
            assert call is not None
            reply = self._execute(call)
            with lock:
                self._complete_locked(call, reply)
            # Not the leader: nobody else would send this reply before the next batch.
            self._flush()
            self._housekeeping()
            self._check_drained()

    def _lead(self, epoch: int) -> None:
        """Read, decode and run calls inline until demoted by the watchdog.

        This is the hot loop of the whole worker, so the per-call bookkeeping that helper
        methods do elsewhere is written out here and attribute look-ups are hoisted.
        """
        lock = self._lock
        reader = self._reader
        recv_into = self._sock.recv_into
        run = self.dispatcher.run
        active = self._active
        me = _get_ident()
        flush_every = FLUSH_EVERY
        # A promoted leader first releases the replies that finished while the previous
        # leader was stuck in a slow handler.
        self._flush()
        call: Optional[_Call] = None
        while True:
            if call is None:
                with lock:
                    call = self._take_inline_locked(me)
            if call is None:
                # Nothing runnable: send the batch's replies, then wait for the supervisor.
                self._inline_ident = 0
                self._flush()
                self._housekeeping()
                if self._draining:
                    self._check_drained()
                if not self._claim_rx():
                    if self._exit_code is not None:
                        return  # on the way out: main() is returning
                    continue  # a thread waiting for its REPLY read calls for us to run
                try:
                    n = recv_into(reader.writable())
                except OSError as e:
                    self._lost('reading from the supervisor failed: %s' % e)
                if not n:
                    self._lost('the supervisor closed the connection')
                self._last_rx = _monotonic()
                try:
                    self._on_frames(reader.feed(n))
                except ProtocolError as e:
                    self._protocol_error(e)
                continue

            stream = call.stream
            meta = call.meta
            self._wd_linger = meta.get('op') == 'invoke'
            try:
                reply = run(stream, meta, call.body)
            except BaseException:  # Dispatcher.run catches everything; this is a last resort
                reply = self._internal_error(call)
            with lock:
                # _complete_locked, inlined.
                self._running -= 1
                self._inflight -= 1
                if not call.cancelled:
                    if active.get(stream) is call:
                        del active[stream]
                    if not self._bye_sent:
                        self._outbox.append(reply)
                if epoch != self._leader_epoch:
                    break  # demoted while in the handler
                # Take the next call under the same lock acquisition.
                call = self._take_inline_locked(me)
                flush_now = call is not None and len(self._outbox) >= flush_every
            if flush_now:
                self._flush()
        self._flush()
        self._housekeeping()
        self._check_drained()

    def _take_locked(self) -> Optional[_Call]:
        pending = self._pending
        while pending:
            call = pending.popleft()
            if not call.cancelled:
                call.started = True
                return call
        return None

    def _take_inline_locked(self, me: int) -> Optional[_Call]:
        """Take a call for the leader to run inline and arm the watchdog, if possible."""
        pending = self._pending
        if pending and self._running < self._threads:
            while pending:
                call = pending.popleft()
                if not call.cancelled:
                    call.started = True
                    self._running += 1
                    self._inline_since = _monotonic()
                    self._inline_ident = me
                    # Set the event once: until the woken watchdog gets the GIL back and
                    # clears _wd_idle, every call would otherwise pay for Event.set().
                    if self._wd_idle and not self._wd_wake.is_set():
                        self._wd_wake.set()
                    return call
        self._inline_since = None
        return None

    def _complete_locked(self, call: _Call, reply: bytes) -> None:
        self._running -= 1
        self._inflight -= 1
        self._answer_locked(call, reply)

    def _answer_locked(self, call: _Call, reply: bytes) -> None:
        if call.cancelled:
            return  # the supervisor gave up on this stream and will not read the reply
        if self._active.get(call.stream) is call:
            del self._active[call.stream]
        if not self._bye_sent:
            self._outbox.append(reply)

    def _execute(self, call: _Call) -> bytes:
        try:
            return self.dispatcher.run(call.stream, call.meta, call.body)
        except BaseException:  # Dispatcher.run catches everything; this is a last resort
            return self._internal_error(call)

    @staticmethod
    def _internal_error(call: _Call) -> bytes:
        logging.getLogger('oxbus.worker').exception('dispatcher failed')
        return _error_frame(call.stream, 500, {'error': 'internal error',
                                               'cid': call.meta.get('cid') or ''},
                            family='internal')

    def _watchdog(self) -> None:
        """Promote a new leader when the current one is stuck in a handler; watch heartbeats.

        The checks read ``_inline_since`` without taking ``_lock`` (an attribute read is
        atomic) and take the lock only to promote: a watchdog that grabbed the lock on every
        tick would collide with the leader, which takes it twice per call, and each
        collision costs a round of GIL and futex hand-offs on the fast path.
        """
        handoff = self._handoff
        silence = self._silence_limit
        wake = self._wd_wake
        sleep = time.sleep
        # While handlers run inline, tick at the hand-off period; keep ticking for a while
        # after the last one, and only then sleep until the leader sets _wd_wake. Under
        # steady load the leader is in and out of handlers all the time, and a wake-up per
        # batch would cost more than a tick every couple of milliseconds. After a control
        # op (a deploy: rare, and all 8 workers get one at once) there is nothing to
        # linger for, and the ticks would only take CPU from the workers still deploying.
        linger = max(0.05, 10 * handoff)
        idle_wait = silence / 3 if silence else None
        last_busy = 0.0
        while self._exit_code is None:
            now = _monotonic()
            if silence is not None and now - self._last_rx > silence:
                self._lost('no frame from the supervisor for %d ms' % (silence * 1000))
            since = self._inline_since
            if since is not None:
                last_busy = now
                if now - since < handoff:
                    sleep(since + handoff - now)
                    continue
                # A handler that keeps calling the server (``request``) reads the socket
                # itself and queues what arrives: it is not blocking anybody until calls
                # wait for a thread. Promoting then would only make two threads take
                # turns at the socket for every one of its calls.
                if now - self._last_rx < handoff and not self._pending:
                    sleep(handoff)
                    continue
                with self._lock:  # re-check: the handler may have just returned
                    since = self._inline_since
                    if since is not None and _monotonic() - since >= handoff:
                        self._promote_locked()
            elif now - last_busy < linger and self._wd_linger:
                sleep(handoff)
            else:
                self._wd_idle = True
                # The leader sets _wd_wake only when it sees the flag, so look once more
                # after raising it, or a handler started in between would go unwatched.
                if self._inline_since is None:
                    wake.wait(idle_wait)
                wake.clear()
                self._wd_idle = False

    def _promote_locked(self) -> None:
        # The current leader keeps running its handler but is no longer the leader: it
        # notices when the handler returns (epoch changed) and becomes a follower.
        self._leader_epoch += 1
        self._leader_wanted = True
        self._inline_since = None
        self._inline_ident = 0
        if self._idle:
            self._idle_cv.notify()
        elif self._pool < self._threads + 1:
            self._spawn_locked()
        # Otherwise every thread is in a handler and the first one to finish leads.

    # -- frames from the supervisor -------------------------------------------------------

    def _on_frames(self, frames: List[Frame], keep: Optional[_SyncSlot] = None) -> None:
        """Apply one batch of frames from the supervisor; called by whichever thread claimed
        the socket (the leader, or a thread waiting in ``request``), and gives it back,
        unless ``keep`` (the reading thread's own slot) is given and its REPLY has not come:
        then that thread keeps the socket and reads on."""
        dispatcher = self.dispatcher
        has_loop = self._loop is not None
        # Phase 1, without the lock: decode, which is the expensive part (every CALL's meta
        # is JSON), so handler threads finishing meanwhile are not kept waiting.
        items: List[Tuple[int, int, Any, bool]] = []
        for kind, _flags, stream, payload in frames:
            if kind == CALL:
                if not stream or stream & WORKER_STREAM_BIT:
                    raise ProtocolError('bad_stream', 'CALL on stream %d, which is not a '
                                        'supervisor stream id' % stream)
                meta, body = decode_call(payload)
                items.append((CALL, stream, _Call(stream, meta, body),
                              has_loop and dispatcher.is_async(meta)))
            elif kind == PING or kind == CANCEL or kind == DRAIN:
                items.append((kind, stream, payload, False))
            elif kind == REPLY:
                items.append((REPLY, stream, payload, False))
            elif kind == PONG:
                pass  # we send no PING
            elif kind == ERROR:
                self._die(EXIT_LOST, 'the supervisor sent ERROR: %s' % _error_text(payload))
            else:
                raise ProtocolError('unexpected_kind', 'a worker does not accept %s frames'
                                    % _kind_name(kind))

        # Phase 2: one lock acquisition for the whole batch, applied in arrival order (a
        # CANCEL may refer to a CALL of the same batch).
        active = self._active
        pending = self._pending
        async_calls: List[_Call] = []
        with self._lock:
            for kind, stream, obj, is_async in items:
                if kind == REPLY:
                    slot = self._waiters.pop(stream, None)
                    if slot is not None:
                        slot.append(obj)
                    continue  # a REPLY nobody waits for (ASYNC calls get none) is dropped
                if self._bye_sent:
                    break  # we are on our way out; nothing may follow BYE
                if kind == CALL:
                    if stream in active:
                        raise ProtocolError('stream_in_use', 'CALL on stream %d, which has '
                                            'a call in flight' % stream)
                    if self._draining:
                        self._outbox.append(_error_frame(stream, 503, {
                            'error': 'the worker is draining',
                            'cid': obj.meta.get('cid') or ''}, family='busy'))
                        continue
                    active[stream] = obj
                    self._inflight += 1
                    if is_async:
                        obj.started = True
                        async_calls.append(obj)
                    else:
                        pending.append(obj)
                elif kind == PING:
                    self._outbox.append(encode_frame(PONG, obj))
                elif kind == CANCEL:
                    call = active.pop(stream, None)
                    if call is not None:
                        call.cancelled = True
                        if not call.started:
                            self._inflight -= 1  # it stays in the deque; takers skip it
                else:  # DRAIN
                    self._draining = True
            # Whoever read these frames gives the socket back (see request / _claim_rx):
            # REPLYs woke their own threads above; the socket goes to one thread still
            # waiting, the leader hears of calls to run.
            if keep is None or keep.payload is not None:
                self._release_rx_locked()
            else:
                self._wake_leader_locked()
        if async_calls:
            # One wake-up of the loop per batch, not per call.
            self._loop.call_soon_threadsafe(self._start_async, async_calls)
        if self._draining:
            self._check_drained()

    # -- async services --------------------------------------------------------------------

    def _start_async(self, calls: List[_Call]) -> None:
        create_task = self._loop.create_task
        for call in calls:
            task = create_task(self._run_async(call))
            # The loop keeps only weak references to tasks; hold them until done.
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_async(self, call: _Call) -> None:
        try:
            reply = await self.dispatcher.run_async(call.stream, call.meta, call.body)
        except BaseException:  # run_async catches everything; this is a last resort
            reply = self._internal_error(call)
        with self._lock:
            self._inflight -= 1
            self._answer_locked(call, reply)
        self._schedule_loop_flush()

    def _schedule_loop_flush(self) -> None:
        # Replies of every task that finishes in this loop iteration share one sendall.
        if not self._loop_flush_pending:
            self._loop_flush_pending = True
            self._loop.call_soon(self._loop_flush)

    def _loop_flush(self) -> None:
        self._loop_flush_pending = False
        self._flush()
        self._check_drained()

    # -- output and exit --------------------------------------------------------------------

    def _flush(self) -> None:
        """Send everything in the outbox with one sendall."""
        with self._send_lock:
            with self._lock:
                out = self._outbox
                if not out:
                    return
                self._outbox = []
            try:
                self._sock.sendall(out[0] if len(out) == 1 else b''.join(out))
            except OSError as e:
                self._lost('writing to the supervisor failed: %s' % e)

    def _check_drained(self) -> None:
        """After DRAIN: once nothing is in flight, send BYE and let main() exit 0."""
        with self._lock:
            if not self._draining or self._inflight or self._bye_sent:
                return
            self._outbox.append(_BYE_FRAME)
            self._bye_sent = True  # from now on nothing else is queued
        self._flush()
        self._exit_clean()

    def _exit_clean(self) -> None:
        with self._lock:
            self._exit_code = EXIT_OK
            self._idle_cv.notify_all()
            self._rx_cv.notify_all()
        self._wd_wake.set()
        self._done.set()  # main() returns 0, so atexit handlers of user code still run

    def _protocol_error(self, e: ProtocolError) -> NoReturn:
        with self._lock:
            self._outbox.append(encode_frame(ERROR, encode_json(
                {'code': e.code, 'message': e.message})))
        try:
            self._flush()
        finally:
            self._die(EXIT_LOST, 'protocol error from the supervisor: %s' % e.message)

    def _lost(self, reason: str) -> NoReturn:
        self._die(EXIT_LOST, 'lost the supervisor: %s' % reason)

    def _die(self, code: int, message: str) -> NoReturn:
        if self._bye_sent:
            # BYE is queued or out: the supervisor closing its end now is expected, not a
            # failure. Let main() exit 0 and park this thread until it does.
            self._exit_clean()
            threading.Event().wait()
        # The process's own stderr (sys.stderr is a LogStream after READY): the server reads
        # it even when the socket is gone.
        stderr = sys.__stderr__ or sys.stderr
        stderr.write('oxbus worker %d: %s\n' % (self._worker_id, message))
        stderr.flush()
        # os._exit, not sys.exit: handler threads may be stuck in user code forever and
        # the supervisor is gone, so there is nobody to drain for.
        os._exit(code)


def _kind_name(kind: int) -> str:
    return KIND_NAMES.get(kind, 'kind %d' % kind)


def _json_object(payload: bytes) -> Dict[str, Any]:
    """Parse a JSON-object payload (HELLO, WELCOME, ERROR...); ValueError if it is not one."""
    doc = decode_json(payload)
    if not isinstance(doc, dict):
        raise ValueError('not a JSON object')
    return doc


def _error_text(payload: bytes) -> str:
    """The human-readable part of an ERROR frame, whatever state it is in."""
    try:
        doc = _json_object(payload)
        return '%s: %s' % (doc.get('code'), doc.get('message'))
    except ValueError:
        return repr(payload[:200])


# -- startup --------------------------------------------------------------------------


def _parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='python -m oxbus.worker',
        description='Oxbus Python worker. Started by the Oxbus server, not by hand.')
    parser.add_argument('--socket', required=True, help="the supervisor's Unix socket path")
    parser.add_argument('--worker-id', type=int, required=True, help='this worker’s id')
    return parser.parse_args(argv)


_MAX_TOKEN = 256


def _read_token() -> str:
    """The one-time token, as the first line of stdin; exits 2 without one.

    The supervisor writes it to a pipe and closes it: on the command line every local user
    could read it (``ps``), in the environment every process of the same user
    (``/proc/PID/environ``). Read with ``os.read`` on fd 0, byte by byte up to the newline,
    so nothing past it is buffered away from user code (there is nothing past it anyway).
    """
    data = b''
    while not data.endswith(b'\n') and len(data) <= _MAX_TOKEN:
        try:
            chunk = os.read(0, 1)
        except OSError as e:
            _fail(EXIT_USAGE, 'oxbus worker: cannot read the token from stdin: %s' % e)
        if not chunk:
            break
        data += chunk
    token = data.strip().decode('ascii', 'replace')
    if not token or len(data) > _MAX_TOKEN:
        _fail(EXIT_USAGE, 'oxbus worker: expected the one-time token as the first line of '
              'stdin (the Oxbus server writes it there); got %s'
              % ('nothing' if not token else 'more than %d bytes' % _MAX_TOKEN))
    return token


def _fail(code: int, message: str) -> NoReturn:
    stderr = sys.__stderr__ or sys.stderr  # the process's own, as in Worker._die
    stderr.write(message.rstrip('\n') + '\n')
    stderr.flush()
    raise SystemExit(code)


def _send_error(sock: socket.socket, code: str, message: str) -> None:
    try:
        sock.sendall(encode_frame(ERROR, encode_json({'code': code, 'message': message})))
    except OSError:
        pass  # we are exiting with the message on stderr anyway


def _handshake(sock: socket.socket, reader: FrameReader, worker_id: int,
               token: str) -> Dict[str, Any]:
    """Send HELLO, return the validated WELCOME; exit 4 or 5 on refusal or silence."""
    hello = {'protocol': PROTOCOL_VERSION, 'worker_id': worker_id, 'pid': os.getpid(),
             'token': token, 'python': '%d.%d.%d' % sys.version_info[:3], 'oxbus': __version__}
    sock.settimeout(HANDSHAKE_TIMEOUT_S)
    try:
        sock.sendall(encode_frame(HELLO, encode_json(hello)))
        frames: List[Frame] = []
        while not frames:
            n = sock.recv_into(reader.writable())
            if not n:
                _fail(EXIT_LOST, 'oxbus worker %d: the supervisor closed the connection '
                      'during the handshake' % worker_id)
            frames = reader.feed(n)
    except ProtocolError as e:
        _send_error(sock, e.code, e.message)
        _fail(EXIT_HANDSHAKE, 'oxbus worker %d: bad frame in the handshake: %s'
              % (worker_id, e.message))
    except OSError as e:  # including socket.timeout
        _fail(EXIT_LOST, 'oxbus worker %d: handshake with the supervisor failed: %s'
              % (worker_id, e))
    sock.settimeout(None)

    kind, _flags, _stream, payload = frames[0]
    if kind == ERROR:
        _fail(EXIT_HANDSHAKE, 'oxbus worker %d: the supervisor refused the handshake: %s'
              % (worker_id, _error_text(payload)))
    if kind != WELCOME or len(frames) > 1:
        message = 'expected WELCOME, got %s' % ', '.join(_kind_name(f[0]) for f in frames)
        _send_error(sock, 'unexpected_kind', message)
        _fail(EXIT_HANDSHAKE, 'oxbus worker %d: %s' % (worker_id, message))
    try:
        welcome = _json_object(payload)
    except ValueError as e:
        _send_error(sock, 'bad_welcome', 'WELCOME is not a JSON object: %s' % e)
        _fail(EXIT_HANDSHAKE, 'oxbus worker %d: WELCOME is not a JSON object: %s'
              % (worker_id, e))

    if welcome.get('protocol') != PROTOCOL_VERSION:
        message = ('oxbus supervisor speaks IPC protocol %s, this worker speaks %d: run the '
                   'oxbus Python package that ships with this server'
                   % (welcome.get('protocol'), PROTOCOL_VERSION))
        _send_error(sock, 'protocol_mismatch', message)
        _fail(EXIT_HANDSHAKE, message)
    problem = _check_welcome(welcome, worker_id)
    if problem:
        _send_error(sock, 'bad_welcome', problem)
        _fail(EXIT_HANDSHAKE, 'oxbus worker %d: %s' % (worker_id, problem))
    return welcome


def _check_welcome(welcome: Dict[str, Any], worker_id: int) -> Optional[str]:
    def is_int(value: Any, low: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= low

    if welcome.get('worker_id') != worker_id:
        return 'WELCOME is for worker %r, this is worker %d' % (welcome.get('worker_id'),
                                                                worker_id)
    for field, low in (('generation', 0), ('threads', 1), ('heartbeat_ms', 0)):
        if not is_int(welcome.get(field), low):
            return 'WELCOME field %s must be an integer >= %d, got %r' % (
                field, low, welcome.get(field))
    if not isinstance(welcome.get('services_dir'), str) or not welcome['services_dir']:
        return 'WELCOME field services_dir must be a non-empty string'
    level = welcome.get('log_level')
    if not isinstance(level, str) or level.lower() not in _LOG_LEVELS:
        return 'WELCOME field log_level must be one of %s, got %r' % (
            '/'.join(_LOG_LEVELS), level)
    return None


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m oxbus.worker``: returns the exit code (or exits with it)."""
    started = _monotonic()
    args = _parse_args(argv)  # exits 2 on a bad command line
    token = _read_token()  # exits 2 without one
    # Ctrl-C in a terminal reaches the whole process group, and systemd's default stop
    # sends SIGTERM to every process of the unit; the supervisor decides how its workers stop
    # (DRAIN, or a kill), so a worker must not die halfway through on its own. (The
    # supervisor already sets these to ignored before exec; this covers a worker started by
    # hand.)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(args.socket)
    except OSError as e:
        _fail(EXIT_LOST, 'oxbus worker %d: cannot connect to the supervisor at %s: %s'
              % (args.worker_id, args.socket, e))
    reader = FrameReader()
    welcome = _handshake(sock, reader, args.worker_id, token)

    root = logging.getLogger()
    root.setLevel(_LOG_LEVELS[welcome['log_level'].lower()])
    log_handler = FrameLogHandler()
    root.addHandler(log_handler)
    logging.captureWarnings(True)
    # Debug mode (oxbus server --debug): debugpy listens before the services load, so a
    # breakpoint in a module's top-level code is hit on its next deploy.
    if os.environ.get('OXBUS_DEBUG_PORT'):
        from oxbus._debug import start_from_env
        start_from_env()

    try:
        services, units = load_services_dir(welcome['services_dir'])
    except ImportFailed as e:
        _send_error(sock, 'import_failed', str(e))
        _fail(EXIT_IMPORT_FAILED, str(e))

    worker = Worker(sock, reader, welcome['threads'], welcome['heartbeat_ms'],
                    worker_id=args.worker_id)
    worker.dispatcher = Dispatcher(services, post=worker.post, request=worker.request,
                                   run_coroutine=worker.run_coroutine,
                                   arequest=worker.arequest,
                                   offload_threads=welcome['threads'],
                                   on_loop=worker.on_loop)
    # Hot deployment (modules.check/activate/remove) rides the normal CALL path: the
    # dispatcher hands it any op that is not an invocation.
    worker.dispatcher.ops.update(Deployer(worker, units).ops())
    if any(cls._oxbus_async for cls in services.values()):
        worker.start_loop()
    # Everything imported so far (stdlib, the services and what they import) lives as long
    # as the worker. Freezing it takes it out of the cyclic collector's generations, so the
    # full collections that steady traffic triggers do not walk it again and again.
    gc.freeze()

    ready = {'services': [service_info(cls) for cls in services.values()],
             'startup_ms': int((_monotonic() - started) * 1000)}
    try:
        sock.sendall(encode_frame(READY, encode_json(ready)))
    except OSError as e:
        _fail(EXIT_LOST, 'oxbus worker %d: lost the supervisor before READY: %s'
              % (args.worker_id, e))
    # From here on records go to the outbox. Switch under the handler's lock so a record
    # emitted by some other thread right now lands in one place or the other, not nowhere.
    log_handler.acquire()
    try:
        for frame in log_handler.early:
            worker.post(frame)
        log_handler.sink = worker.post
    finally:
        log_handler.release()
    # From here on print() and threads a service starts log with the invocation's cid.
    install_stdio(log_handler)
    install_thread_context()
    try:
        return worker.serve()
    finally:
        # BYE is out, no LOG frame follows: what atexit handlers and the interpreter's
        # shutdown write goes to the process's own stdout/stderr again, which the server
        # reads (oxbus::worker::stdout/stderr lines).
        uninstall_stdio()
