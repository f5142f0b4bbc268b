"""Debug mode's start in the worker (oxbus/_debug.py): debugpy listens on 127.0.0.1 at the
port the server gives, a busy port is waited for in a thread, a missing debugpy leaves a
working worker with an error in the log. (integration/tests/debugger.rs runs the real
debugpy with a DAP client.)"""

import logging
import sys
import threading
import types

import pytest

from oxbus import _debug


class FakeDebugpy(types.ModuleType):
    def __init__(self, busy_times=0):
        super().__init__('debugpy')
        self.__version__ = '9.9'
        self.busy_times = busy_times
        self.calls = []
        self.listening = threading.Event()

    def listen(self, address):
        self.calls.append(address)
        if self.busy_times:
            self.busy_times -= 1
            raise RuntimeError("Can't listen for client connections: [Errno 98] "
                               'Address already in use')
        self.listening.set()


@pytest.fixture
def fake(monkeypatch):
    def install(**kw):
        mod = FakeDebugpy(**kw)
        monkeypatch.setitem(sys.modules, 'debugpy', mod)
        return mod
    return install


def test_normal_mode_starts_nothing(monkeypatch, fake):
    monkeypatch.delenv('OXBUS_DEBUG_PORT', raising=False)
    mod = fake()
    assert _debug.start_from_env() is None
    assert mod.calls == []


def test_listens_on_loopback_at_the_given_port_and_hides_the_variable(monkeypatch, fake,
                                                                       caplog):
    monkeypatch.setenv('OXBUS_DEBUG_PORT', '5799')
    mod = fake()
    with caplog.at_level(logging.WARNING, logger='oxbus.debug'):
        assert _debug.start_from_env() == 5799
    assert mod.calls == [('127.0.0.1', 5799)]
    assert 'OXBUS_DEBUG_PORT' not in __import__('os').environ
    assert 'debugpy 9.9 listening on 127.0.0.1:5799' in caplog.text


def test_a_busy_port_is_waited_for_in_a_thread(monkeypatch, fake, caplog):
    monkeypatch.setenv('OXBUS_DEBUG_PORT', '5798')
    mod = fake(busy_times=3)
    with caplog.at_level(logging.WARNING, logger='oxbus.debug'):
        # Returns at once: the worker's start is not held up by its predecessor's drain.
        assert _debug.start_from_env() == 5798
        assert not mod.listening.is_set()
        assert mod.listening.wait(10), mod.calls
    assert mod.calls == [('127.0.0.1', 5798)] * 4
    assert '127.0.0.1:5798 is busy' in caplog.text


def test_without_debugpy_the_worker_serves_on_and_says_how_to_install_it(monkeypatch,
                                                                          caplog):
    monkeypatch.setenv('OXBUS_DEBUG_PORT', '5797')
    # None in sys.modules makes the import fail, as a missing package does.
    monkeypatch.setitem(sys.modules, 'debugpy', None)
    with caplog.at_level(logging.ERROR, logger='oxbus.debug'):
        assert _debug.start_from_env() == 5797
    assert 'cannot import debugpy' in caplog.text
    assert 'pip install debugpy' in caplog.text
