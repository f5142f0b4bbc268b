"""Debug mode's start in the worker (oxbus/_debug.py): debugpy listens on 127.0.0.1 at the
port the server gives, a busy port is waited for in a thread, a missing debugpy leaves a
working worker with an error in the log. (integration/tests/debugger.rs runs the real
debugpy with a DAP client.)"""

import logging
import os
import socket
import sys
import threading
import types

import pytest

from oxbus import _debug


class FakeDebugpy(types.ModuleType):
    def __init__(self):
        super().__init__('debugpy')
        self.__version__ = '9.9'
        self.calls = []
        self.listening = threading.Event()

    def listen(self, address, **kw):
        self.calls.append((address, kw))
        self.listening.set()


def free_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def fake(monkeypatch):
    def install():
        mod = FakeDebugpy()
        monkeypatch.setitem(sys.modules, 'debugpy', mod)
        return mod
    return install


def test_normal_mode_starts_nothing(monkeypatch, fake):
    monkeypatch.delenv('OXBUS_DEBUG_PORT', raising=False)
    mod = fake()
    assert _debug.start_from_env() is None
    assert mod.calls == []


def test_listens_on_loopback_in_process_and_hides_the_variables(monkeypatch, fake, caplog):
    port = free_port()
    monkeypatch.setenv('OXBUS_DEBUG_PORT', str(port))
    monkeypatch.setenv('PYDEVD_DISABLE_FILE_VALIDATION', '1')
    mod = fake()
    with caplog.at_level(logging.WARNING, logger='oxbus.debug'):
        assert _debug.start_from_env() == port
    # In the worker's process: the port goes with the worker, however it ends.
    assert mod.calls == [(('127.0.0.1', port), {'in_process_debug_adapter': True})]
    assert 'OXBUS_DEBUG_PORT' not in os.environ
    assert 'PYDEVD_DISABLE_FILE_VALIDATION' not in os.environ
    assert 'debugpy 9.9 listening on 127.0.0.1:%d' % port in caplog.text


def test_a_busy_port_is_waited_for_in_a_thread(monkeypatch, fake, caplog):
    held = socket.socket()
    held.bind(('127.0.0.1', 0))
    held.listen()
    port = held.getsockname()[1]
    monkeypatch.setenv('OXBUS_DEBUG_PORT', str(port))
    mod = fake()
    with caplog.at_level(logging.WARNING, logger='oxbus.debug'):
        # Returns at once: the worker's start is not held up by its predecessor's drain.
        assert _debug.start_from_env() == port
        assert '127.0.0.1:%d is busy' % port in caplog.text
        assert not mod.listening.wait(0.6)
        assert mod.calls == []
        held.close()
        assert mod.listening.wait(10)
    assert mod.calls == [(('127.0.0.1', port), {'in_process_debug_adapter': True})]


def test_without_debugpy_the_worker_serves_on_and_says_how_to_install_it(monkeypatch,
                                                                          caplog):
    monkeypatch.setenv('OXBUS_DEBUG_PORT', '5797')
    # None in sys.modules makes the import fail, as a missing package does.
    monkeypatch.setitem(sys.modules, 'debugpy', None)
    with caplog.at_level(logging.ERROR, logger='oxbus.debug'):
        assert _debug.start_from_env() == 5797
    assert 'cannot import debugpy' in caplog.text
    assert 'pip install debugpy' in caplog.text
