"""Entry point of the Python worker process.

Usage: ``python -m oxbus.worker --socket PATH --worker-id N``, with the one-time token as
the first line of stdin (out of ``ps``'s sight).

The Oxbus server spawns this (never forks it) with the interpreter the operator configured,
so the user's virtualenv and its native wheels are in effect. Everything happens in
:mod:`oxbus._runtime`; this module only exists to give the command its name and stays tiny
so that ``-m`` does not import anything the runtime would not.
"""

import sys

from oxbus._runtime import main

if __name__ == '__main__':
    sys.exit(main())
