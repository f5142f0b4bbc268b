"""Debug mode: the worker under debugpy (``oxbus server --debug``, ``[debug] port``).

The server starts its one worker with ``OXBUS_DEBUG_PORT`` set; the worker then starts
debugpy listening on 127.0.0.1 at that port, for VS Code, PyCharm or any DAP client to
attach to. Deployed modules are compiled under the path of the file they were deployed
from (their origin, see :mod:`oxbus._deploy`), so a breakpoint set in that file is hit.

debugpy's adapter (a child process it starts) holds the port until the worker exits: a
worker started while the one it replaces still runs (a reload) waits for the port in a
thread of its own, so that its start is not held up by its predecessor's drain.
"""

import importlib
import logging
import os
import threading
import time
from typing import Any, Optional

log = logging.getLogger('oxbus.debug')

#: How long a replacement waits for its predecessor's adapter to free the port.
PORT_WAIT_S = 120.0


def start_from_env() -> Optional[int]:
    """Start debugpy if the server asked for it; returns the port, or None in normal mode.

    A failure (debugpy gone since the server checked it, the port held by something else)
    is logged and the worker serves on without a debugger: it is still a working worker.
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
    try:
        debugpy.listen(('127.0.0.1', port))
    except Exception as e:  # debugpy raises RuntimeError, OSError...: all mean "not now"
        log.warning('debug mode: 127.0.0.1:%d is busy (%s); waiting for it in the background '
                    '(the worker this one replaces still holds it)', port, e)
        threading.Thread(target=_listen_when_free, args=(debugpy, port),
                         name='oxbus-debug-listen', daemon=True).start()
        return port
    log.warning('debug mode: debugpy %s listening on 127.0.0.1:%d; attach your IDE there',
                getattr(debugpy, '__version__', '?'), port)
    return port


def _listen_when_free(debugpy: Any, port: int) -> None:
    deadline = time.monotonic() + PORT_WAIT_S
    last: Optional[BaseException] = None
    while time.monotonic() < deadline:
        time.sleep(0.25)
        try:
            debugpy.listen(('127.0.0.1', port))
        except Exception as e:
            last = e
            continue
        log.warning('debug mode: debugpy listening on 127.0.0.1:%d; attach your IDE there',
                    port)
        return
    log.error('debug mode: 127.0.0.1:%d stayed busy for %d s (%s); this worker runs without '
              'a debugger', port, PORT_WAIT_S, last)
