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
  own threads start as before.

Nothing here is on a request's path: the hooks run when a service prints or starts a thread.
"""

from __future__ import annotations

import io
import logging
import sys
import threading

from .service import _invocation_meta, current_invocation

TYPE_CHECKING = False  # see _protocol.py: keep ``typing`` out of the worker's startup
if TYPE_CHECKING:
    from typing import Any, Callable, List, Optional, Sequence

__all__ = ['LogStream', 'install_stdio', 'install_thread_context', 'carry_invocation']

#: A line longer than this is sent in pieces (the server cuts a value at 16 KiB anyway).
MAX_LINE_CHARS = 16 * 1024


class LogStream(io.TextIOBase):
    """A text stream whose lines become log records of ``logger`` at ``level``.

    Each thread keeps its own unfinished line, so two threads printing at once do not mix
    their text; a line is sent when its newline is written (``print`` writes the text and
    the ``end`` separately), or on ``flush()``. ``fileno()`` is the original stream's, so a
    child process given ``sys.stdout`` still writes somewhere (the worker's pipe).
    """

    def __init__(self, handler: logging.Handler, logger: str, level: int,
                 original: Any) -> None:
        super().__init__()
        self._handler = handler
        self._logger = logger
        self._level = level
        self._original = original
        self._local = threading.local()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return 'utf-8'

    @property
    def errors(self) -> Optional[str]:  # type: ignore[override]
        return 'backslashreplace'

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return int(self._original.fileno())

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError('write() argument must be str, not %s' % type(text).__name__)
        pending: List[str] = getattr(self._local, 'pending', None) or []
        if '\n' not in text:
            pending.append(text)
            self._local.pending = pending
            if sum(map(len, pending)) > MAX_LINE_CHARS:
                self.flush()
            return len(text)
        *lines, rest = text.split('\n')
        lines[0] = ''.join(pending) + lines[0]
        self._local.pending = [rest] if rest else []
        for line in lines:
            self._emit(line)
        return len(text)

    def flush(self) -> None:
        pending = getattr(self._local, 'pending', None)
        if pending:
            self._local.pending = []
            self._emit(''.join(pending))

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


def carry_invocation(fn: Callable[..., Any], reset: bool) -> Callable[..., Any]:
    """``fn`` run with the current invocation (taken now) as its invocation.

    ``reset``: a pool thread's work, which runs with exactly the submitter's invocation
    (none outside one: the pool's thread may have been started during some invocation) and
    puts the thread's own values back after it, for the work it runs next. Without it (a
    new thread's ``run``), ``fn`` itself outside an invocation.
    """
    invocation = current_invocation.get()
    if invocation is None and not reset:
        return fn
    meta = _invocation_meta.get(None)

    def in_invocation(*args: Any, **kwargs: Any) -> Any:
        token = current_invocation.set(invocation)
        meta_token = _invocation_meta.set(meta)
        try:
            return fn(*args, **kwargs)
        finally:
            if reset:
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
