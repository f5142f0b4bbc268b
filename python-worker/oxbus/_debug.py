"""Debug mode: the worker under debugpy (``oxbus server --debug``, ``[debug] port``).

The server starts its one worker with ``OXBUS_DEBUG_PORT`` set; the worker then starts
debugpy listening on 127.0.0.1 at that port, for VS Code, PyCharm or any DAP client to
attach to. Deployed modules are compiled under the path of the file they were deployed
from (their origin, see :mod:`oxbus._deploy`), so a breakpoint set in that file is hit.

debugpy runs its adapter inside the worker (``in_process_debug_adapter``): the port is the
worker's own socket, gone with the worker however it ends — a separate adapter process
would outlive a worker killed before it connected, and hold the port for good. A worker
started while the one it replaces still runs (a reload) finds the port busy: it starts
without waiting and takes the port in a thread of its own once its predecessor is gone.
"""

import importlib
import logging
import os
import socket
import threading
import time
from typing import Any, Optional

log = logging.getLogger('oxbus.debug')

#: How often a busy port is tried again, and after how long the wait is reported.
RETRY_S = 0.25
REPORT_AFTER_S = 120.0


def start_from_env() -> Optional[int]:
    """Start debugpy if the server asked for it; returns the port, or None in normal mode.

    A failure (debugpy gone since the server checked it) is logged and the worker serves on
    without a debugger: it is still a working worker.
    """
    value = os.environ.pop('OXBUS_DEBUG_PORT', None)
    if not value:
        return None
    port = int(value)
    try:
        # Not a typed dependency of the package: only debug mode needs it.
        debugpy: Any = importlib.import_module('debugpy')
    except ImportError as e:
        log.error('debug mode: cannot import debugpy (%s); this worker runs without a '
                  'debugger. Install it in the workers\' interpreter: pip install debugpy', e)
        return port
    if _port_free(port):
        _listen(debugpy, port)
    else:
        log.warning('debug mode: 127.0.0.1:%d is busy; waiting for it in the background '
                    '(the worker this one replaces still holds it, or another program)', port)
        threading.Thread(target=_listen_when_free, args=(debugpy, port),
                         name='oxbus-debug-listen', daemon=True).start()
    return port


def _port_free(port: int) -> bool:
    # debugpy binds in a thread of its own and, if the port is taken, fails there with no
    # way to try again: so the port is tried first with a plain socket.
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(('127.0.0.1', port))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _listen(debugpy: Any, port: int) -> None:
    debugpy.listen(('127.0.0.1', port), in_process_debug_adapter=True)
    # Read by debugpy at its start; user code's subprocesses need not inherit it.
    os.environ.pop('PYDEVD_DISABLE_FILE_VALIDATION', None)
    log.warning('debug mode: debugpy %s listening on 127.0.0.1:%d; attach your IDE there',
                getattr(debugpy, '__version__', '?'), port)


def _listen_when_free(debugpy: Any, port: int) -> None:
    started = time.monotonic()
    reported = False
    while not _port_free(port):
        if not reported and time.monotonic() - started > REPORT_AFTER_S:
            reported = True
            log.error('debug mode: 127.0.0.1:%d is still busy after %d s; this worker has no '
                      'debugger until it is free (still trying)', port, REPORT_AFTER_S)
        time.sleep(RETRY_S)
    _listen(debugpy, port)
