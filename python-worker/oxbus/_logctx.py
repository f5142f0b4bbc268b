"""Every line a service writes reaches the server log with its invocation's cid.

Two gaps that plain ``logging`` leaves, closed once the worker is ready:

* ``print()`` (and writes to ``sys.stderr``): :class:`LogStream` replaces ``sys.stdout`` and
  ``sys.stderr`` and turns each complete line into a log record of logger ``stdout``
  (level info) or ``stderr`` (level warning), handed to the worker's log handler. The line
  then travels as a ``LOG`` frame like the logger's records, so it carries the cid and
  service of the invocation that printed it, and lands in the log in the order it was
  written relative to them (a pipe to the server, as before, was block-buffered and read
  by another task: no cid, and out of order).
* Threads a service starts: a ``contextvars`` value is not inherited by a new thread, so a
  ``threading.Thread`` or a ``concurrent.futures`` thread pool's work would log ``cid=""``.
  :func:`install_thread_context` makes ``Thread.start`` and ``ThreadPoolExecutor.submit``,
  when called during an invocation, carry that invocation (cid, service, stream, trace)
  into the code they run. Outside an invocation they do exactly what they did: the worker's
  own threads start as before. A started thread has the invocation only until the call it
  was started in ends (:func:`end_call`): a library's long-lived thread, started lazily by
  some request, does not log with that request's cid forever.

Nothing here is on a request's path: the hooks run when a service prints or starts a thread;
at the end of a call the dispatcher only tests whether :data:`holding` or :data:`carrying`
is non-empty.
"""

from __future__ import annotations

import codecs
import io
import logging
import sys
import threading
from contextvars import ContextVar

from .service import _invocation_meta, current_invocation

TYPE_CHECKING = False  # see _protocol.py: keep ``typing`` out of the worker's startup
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional, Sequence, Set

__all__ = ['LogStream', 'install_stdio', 'uninstall_stdio', 'install_thread_context',
           'carry_invocation', 'end_invocation', 'end_call', 'live_invocation']

#: A line longer than this is sent in pieces (the server cuts a value at 16 KiB anyway).
MAX_LINE_CHARS = 16 * 1024


class _Line:
    """A thread's unfinished line on one stream, with the invocation that wrote it."""

    __slots__ = ('parts', 'length', 'invocation', 'meta', 'live')

    def __init__(self) -> None:
        self.parts: List[str] = []
        self.length = 0
        self.invocation: Any = None
        self.meta: Any = None
        self.live: Any = None


#: The unfinished lines held now (any thread, any stream). The dispatcher checks it when an
#: invocation ends (an empty set: one truth test) and then sends what that invocation left.
holding: Set[_Line] = set()
#: The streams install_stdio() set up, for end_invocation() and uninstall_stdio().
_streams: List['LogStream'] = []


class _Buffer(io.RawIOBase):
    """``sys.stdout.buffer``: bytes written here are UTF-8 (undecodable bytes as ``\\xNN``)
    text of the stream."""

    def __init__(self, stream: 'LogStream') -> None:
        super().__init__()
        self._stream = stream
        self._local = threading.local()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        decoder = getattr(self._local, 'decoder', None)
        if decoder is None:
            decoder = self._local.decoder = codecs.getincrementaldecoder('utf-8')(
                'backslashreplace')
        data = bytes(data)
        self._stream.write(decoder.decode(data))
        return len(data)

    def flush(self) -> None:
        decoder = getattr(self._local, 'decoder', None)
        if decoder is not None:
            rest = decoder.decode(b'', True)
            if rest:
                self._stream.write(rest)
        self._stream.flush()


class LogStream(io.TextIOBase):
    """A text stream whose lines become log records of ``logger`` at ``level``.

    Each thread keeps its own unfinished line, so two threads printing at once do not mix
    their text; a line is sent when its newline is written (``print`` writes the text and
    the ``end`` separately), on ``flush()``, when the invocation that wrote it ends, or when
    the thread writes for another invocation (a pool thread's next call, another asyncio
    task): always with the cid of the invocation that wrote it. ``fileno()`` is the original
    stream's, so a child process given ``sys.stdout`` still writes somewhere (the worker's
    pipe).
    """

    def __init__(self, handler: logging.Handler, logger: str, level: int,
                 original: Any) -> None:
        super().__init__()
        self._handler = handler
        self._logger = logger
        self._level = level
        self._original = original
        self._local = threading.local()
        self._buffer = _Buffer(self)

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return 'utf-8'

    @property
    def errors(self) -> Optional[str]:  # type: ignore[override]
        return 'backslashreplace'

    @property
    def buffer(self) -> Any:
        return self._buffer

    @property
    def line_buffering(self) -> bool:
        return True

    def reconfigure(self, **kwargs: Any) -> None:
        """Accepted and ignored: the stream is always UTF-8 and sends whole lines."""

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        fileno = getattr(self._original, 'fileno', None)
        if fileno is None:
            raise io.UnsupportedOperation('fileno')
        return int(fileno())

    def _line(self) -> _Line:
        line: Optional[_Line] = getattr(self._local, 'line', None)
        if line is None:
            line = self._local.line = _Line()
        return line

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError('write() argument must be str, not %s' % type(text).__name__)
        line = self._line()
        invocation = current_invocation.get()
        if line.parts and line.invocation is not invocation:
            self._send(line)  # another invocation's text: its own record, with its cid
        if '\n' not in text:
            if text:
                if not line.parts:
                    line.invocation = invocation
                    line.meta = _invocation_meta.get()
                    line.live = _carried_live.get()
                    holding.add(line)
                line.parts.append(text)
                line.length += len(text)
                if line.length > MAX_LINE_CHARS:
                    self._send(line, True)
            return len(text)
        *lines, rest = text.split('\n')
        if line.parts:
            lines[0] = ''.join(line.parts) + lines[0]
            line.parts = []
            line.length = 0
            holding.discard(line)
        for one in lines:
            self._emit(one)
        if rest:
            self.write(rest)
        return len(text)

    def flush(self) -> None:
        line = getattr(self._local, 'line', None)
        if line is not None and line.parts:
            self._send(line)

    def _send(self, line: _Line, whole_pieces: bool = False) -> None:
        """Sends ``line``'s text as a record of the invocation that wrote it (only its
        MAX_LINE_CHARS pieces with ``whole_pieces``: the rest stays held)."""
        text = ''.join(line.parts)
        rest = len(text) % MAX_LINE_CHARS if whole_pieces else 0
        if rest:
            text, tail = text[:-rest], text[-rest:]
            line.parts = [tail]
            line.length = rest
        else:
            line.parts = []
            line.length = 0
            holding.discard(line)
        if line.invocation is current_invocation.get():
            self._emit(text)
            return
        token = current_invocation.set(line.invocation)
        meta_token = _invocation_meta.set(line.meta)
        live_token = _carried_live.set(line.live)
        try:
            self._emit(text)
        finally:
            _carried_live.reset(live_token)
            _invocation_meta.reset(meta_token)
            current_invocation.reset(token)

    def end_invocation(self, invocation: Any) -> None:
        """Sends this thread's unfinished line if ``invocation`` wrote it."""
        line = getattr(self._local, 'line', None)
        if line is not None and line.parts and line.invocation is invocation:
            self._send(line)

    def detach_text(self) -> str:
        """This thread's unfinished line, taken (for uninstall_stdio())."""
        line = getattr(self._local, 'line', None)
        if line is None or not line.parts:
            return ''
        text = ''.join(line.parts)
        line.parts = []
        line.length = 0
        holding.discard(line)
        return text

    def _emit(self, line: str) -> None:
        local = self._local
        if getattr(local, 'emitting', False):
            # The handler itself wrote here (logging's handleError prints to sys.stderr):
            # to the original stream, or it would loop.
            if self._original is not None:
                self._original.write(line + '\n')
            return
        local.emitting = True
        try:
            for start in range(0, max(len(line), 1), MAX_LINE_CHARS):
                record = logging.LogRecord(self._logger, self._level, '', 0,
                                           line[start:start + MAX_LINE_CHARS], None, None)
                self._handler.handle(record)
        finally:
            local.emitting = False


def install_stdio(handler: logging.Handler) -> None:
    """Send ``print()`` and ``sys.stderr`` writes through ``handler`` from now on.

    The original streams stay ``sys.__stdout__``/``sys.__stderr__``: what the worker itself
    writes when it is dying goes there, where the server reads it even without a socket.
    """
    sys.stdout = LogStream(handler, 'stdout', logging.INFO, sys.__stdout__)
    sys.stderr = LogStream(handler, 'stderr', logging.WARNING, sys.__stderr__)
    _streams[:] = [sys.stdout, sys.stderr]


def uninstall_stdio() -> None:
    """Put the original streams back (the worker has sent BYE: no LOG frame goes out any
    more, so atexit handlers and the interpreter's last words go to the process's own
    stdout and stderr, which the server reads). The calling thread's unfinished lines go
    there too."""
    for stream, original in zip(_streams, (sys.__stdout__, sys.__stderr__)):
        text = stream.detach_text()
        if text and original is not None:
            original.write(text)
            original.flush()
    if _streams:
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    _streams[:] = []


def end_invocation(invocation: Any) -> None:
    """``invocation`` ends in this thread: send the text it left unfinished. Called only
    when :data:`holding` is not empty."""
    for stream in _streams:
        stream.end_invocation(invocation)


class _Live:
    """Whether the invocation threads were started in is still running."""

    __slots__ = ('ended',)

    def __init__(self) -> None:
        self.ended = False


#: In a thread started during an invocation: that invocation's :class:`_Live`. The log
#: handler treats the thread as outside any invocation once it has ended, so a library's
#: long-lived thread, lazily started by some request, does not log with its cid forever.
_carried_live: ContextVar[Optional[_Live]] = ContextVar('oxbus_carried_live', default=None)
#: The live invocations (by stream) that threads were started in. The dispatcher checks it
#: when a call ends (an empty dict: one truth test) and marks that call's entry ended.
carrying: Dict[int, _Live] = {}


def end_call(stream: int) -> None:
    """The call on ``stream`` has ended: threads started during it (or the invocations it
    made) no longer log with its cid."""
    live = carrying.pop(stream, None)
    if live is not None:
        live.ended = True


def live_invocation() -> Any:
    """The current invocation, or None in a thread whose invocation has ended."""
    current = current_invocation.get()
    if current is not None:
        live = _carried_live.get()
        if live is not None and live.ended:
            return None
    return current


def carry_invocation(fn: Callable[..., Any], reset: bool) -> Callable[..., Any]:
    """``fn`` run with the current invocation (taken now) as its invocation.

    ``reset``: a pool thread's work, which runs with exactly the submitter's invocation
    (none outside one: the pool's thread may have been started during some invocation) and
    puts the thread's own values back after it, for the work it runs next. Without it (a
    new thread's ``run``), ``fn`` itself outside an invocation, and the invocation only as
    long as the call it belongs to runs: a thread that outlives it logs without its cid.
    """
    invocation = current_invocation.get()
    live = _carried_live.get()
    if not reset:
        if invocation is None or (live is not None and live.ended):
            return fn
        if live is None:
            # setdefault: two threads of one call starting threads at once share one.
            live = carrying.setdefault(invocation[2], _Live())
    meta = _invocation_meta.get(None)

    def in_invocation(*args: Any, **kwargs: Any) -> Any:
        token = current_invocation.set(invocation)
        meta_token = _invocation_meta.set(meta)
        live_token = _carried_live.set(live)
        try:
            return fn(*args, **kwargs)
        finally:
            if reset:
                _carried_live.reset(live_token)
                _invocation_meta.reset(meta_token)
                current_invocation.reset(token)
    return in_invocation


_thread_start = threading.Thread.start


def _start(self: threading.Thread) -> None:
    if current_invocation.get() is not None:
        # The instance attribute wins over the class's run(), which Thread calls.
        self.run = carry_invocation(self.run, False)  # type: ignore[method-assign]
    _thread_start(self)


def start_plain(thread: threading.Thread) -> None:
    """Start ``thread`` without carrying the current invocation (the worker's own pool
    threads, which set their invocation per call)."""
    _thread_start(thread)


def _patch_executor(module: Any) -> None:
    executor = module.ThreadPoolExecutor
    if getattr(executor.submit, '_oxbus_carries', False):
        return
    submit = executor.submit

    def carrying_submit(self: Any, fn: Callable[..., Any], /, *args: Any,
                        **kwargs: Any) -> Any:
        return submit(self, carry_invocation(fn, True), *args, **kwargs)

    carrying_submit._oxbus_carries = True  # type: ignore[attr-defined]
    carrying_submit.__doc__ = submit.__doc__
    executor.submit = carrying_submit


class _ExecutorPatcher:
    """A meta path finder that patches ``concurrent.futures.thread`` when it is imported:
    importing it up front would cost every worker's start about 4 ms for the services
    that never use it."""

    name = 'concurrent.futures.thread'

    def find_spec(self, fullname: str, path: Optional[Sequence[str]] = None,
                  target: Any = None) -> Any:
        if fullname != self.name:
            return None
        import importlib.machinery
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        loader = spec.loader
        exec_module = loader.exec_module

        class PatchingLoader:
            def create_module(self, spec: Any) -> Any:
                return loader.create_module(spec)

            def exec_module(self, module: Any) -> None:
                exec_module(module)
                _patch_executor(module)

        spec.loader = PatchingLoader()  # type: ignore[assignment]
        return spec


def install_thread_context() -> None:
    """Make threads and thread-pool work started during an invocation log with its cid."""
    threading.Thread.start = _start  # type: ignore[method-assign]
    module = sys.modules.get('concurrent.futures.thread')
    if module is not None:
        _patch_executor(module)
    elif not any(isinstance(f, _ExecutorPatcher) for f in sys.meta_path):
        sys.meta_path.insert(0, _ExecutorPatcher())
