"""Shared test fixtures: the package on sys.path, and a fake supervisor for end-to-end tests.

:class:`FakeSupervisor` plays the Rust supervisor's part of ``ipc-protocol/SPEC.md``: it
listens on a Unix socket in a private temp dir, spawns a real ``python -m oxbus.worker``
process and speaks frames to it through the package's own codec (which the golden-vector
tests check independently against the spec's bytes).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import deque

import pytest

PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # python-worker/
if PKG_ROOT not in sys.path:
    sys.path.insert(0, PKG_ROOT)

from oxbus import _protocol as P  # noqa: E402

TOKEN = '9f86d081884c7d65'


def wait_until(predicate, timeout=10.0, what='condition'):
    """Polls ``predicate`` until it holds; fails after ``timeout`` seconds (no fixed waits)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError('timed out waiting for ' + what)
        time.sleep(0.005)


def write_services(directory: str, files: dict) -> str:
    """Write {relative path: source} into ``directory`` (dedented); return the directory."""
    for rel, source in files.items():
        path = os.path.join(directory, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w') as f:
            f.write(textwrap.dedent(source))
    return directory


class FakeSupervisor:
    """One listening socket, one worker process, one connection."""

    def __init__(self) -> None:
        # Not pytest's tmp_path: Unix socket paths are limited to ~107 bytes.
        self.dir = tempfile.mkdtemp(prefix='oxb-')
        self.path = os.path.join(self.dir, 'sup.sock')
        self.services_dir = os.path.join(self.dir, 'services')
        os.mkdir(self.services_dir)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(16)
        self.conn: socket.socket = None  # type: ignore[assignment]
        self.reader = P.FrameReader()
        self.frames: deque = deque()
        self.proc: subprocess.Popen = None  # type: ignore[assignment]
        self.stderr_path = os.path.join(self.dir, 'stderr.txt')
        self.worker_id = 3

    # -- process ---------------------------------------------------------------------

    def spawn(self, worker_id: int = 3, token: str = TOKEN, env: dict = None,
              args: list = None) -> subprocess.Popen:
        self.worker_id = worker_id
        full_env = dict(os.environ)
        full_env['PYTHONPATH'] = os.pathsep.join(
            [PKG_ROOT] + ([full_env['PYTHONPATH']] if full_env.get('PYTHONPATH') else []))
        full_env.update(env or {})
        cmd = [sys.executable, '-m', 'oxbus.worker']
        cmd += args if args is not None else [
            '--socket', self.path, '--worker-id', str(worker_id)]
        if self.proc is not None:  # a second spawn in one test: keep only the new stderr
            self._stderr.close()
        self._stderr = open(self.stderr_path, 'wb')
        # The token on stdin, then EOF, as the server sends it (None: no token at all).
        self.proc = subprocess.Popen(cmd, env=full_env, stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=self._stderr)
        if token is not None:
            self.proc.stdin.write(token.encode() + b'\n')
        self.proc.stdin.close()
        return self.proc

    def accept(self, timeout: float = 10) -> None:
        self.listener.settimeout(timeout)
        self.conn, _ = self.listener.accept()

    def wait_exit(self, timeout: float = 10) -> int:
        return self.proc.wait(timeout)

    @property
    def stderr(self) -> str:
        with open(self.stderr_path, 'rb') as f:
            return f.read().decode('utf-8', 'replace')

    # -- frames ----------------------------------------------------------------------

    def send(self, kind: int, payload: bytes = b'', stream: int = 0, flags: int = 0) -> None:
        self.conn.sendall(P.encode_frame(kind, payload, stream, flags))

    def send_json(self, kind: int, doc: dict) -> None:
        self.send(kind, P.encode_json(doc))

    @staticmethod
    def call_frame(stream: int, service: str, body: bytes = b'', **meta) -> bytes:
        full = {'op': 'invoke', 'service': service, 'cid': 'cid-%d' % stream,
                'channel': 'rest', 'data_format': 'json', 'method': 'POST', 'path': '/x',
                'params': {}, 'query': '', 'headers': [], 'deadline_ms': 30000}
        full.update(meta)
        full = {k: v for k, v in full.items() if v is not None}
        # In the compact form, as the supervisor sends every invocation (SPEC.md).
        fields = P.COMPACT_INVOKE_FIELDS
        compact = [full.get(f) for f in fields] + [
            {k: v for k, v in full.items() if k not in fields}]
        return P.encode_call(stream, P.encode_json(compact), body)

    def call(self, stream: int, service: str, body: bytes = b'', **meta) -> None:
        self.conn.sendall(self.call_frame(stream, service, body, **meta))

    def recv(self, timeout: float = 10) -> tuple:
        """The next frame from the worker; AssertionError on timeout or EOF."""
        deadline = time.monotonic() + timeout
        while not self.frames:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError('no frame from the worker within %.1f s' % timeout)
            self.conn.settimeout(left)
            try:
                n = self.conn.recv_into(self.reader.writable())
            except socket.timeout:
                continue
            if not n:
                raise AssertionError('the worker closed the connection; stderr:\n'
                                     + self.stderr)
            self.frames.extend(self.reader.feed(n))
        return self.frames.popleft()

    def recv_kind(self, kind: int, timeout: float = 10, keep: list = None) -> tuple:
        """Skip (or collect into ``keep``) frames until one of ``kind`` arrives."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.recv(max(0.01, deadline - time.monotonic()))
            if frame[0] == kind:
                return frame
            if keep is not None:
                keep.append(frame)

    def replies(self, count: int, timeout: float = 10, others: list = None) -> dict:
        """Collect ``count`` REPLY frames: {stream: (meta, body)}."""
        got: dict = {}
        deadline = time.monotonic() + timeout
        while len(got) < count:
            kind, flags, stream, payload = self.recv(max(0.01, deadline - time.monotonic()))
            if kind == P.REPLY:
                assert stream not in got, 'two replies on stream %d' % stream
                got[stream] = P.decode_call(payload)
            elif others is not None:
                others.append((kind, flags, stream, payload))
        return got

    def no_frame_within(self, seconds: float) -> list:
        """Every frame that arrives within ``seconds`` (normally expected to be none)."""
        got = []
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return got
            try:
                got.append(self.recv(left))
            except AssertionError as e:
                if 'closed' in str(e):
                    raise
                return got

    # -- protocol steps --------------------------------------------------------------

    def welcome_doc(self, **overrides) -> dict:
        doc = {'protocol': P.PROTOCOL_VERSION, 'worker_id': self.worker_id, 'generation': 1,
               'threads': 4,
               'services_dir': self.services_dir, 'heartbeat_ms': 60000,
               'log_level': 'info'}
        doc.update(overrides)
        return doc

    def handshake(self, **welcome) -> tuple:
        """Accept, read HELLO, send WELCOME, read READY; return (hello, ready) dicts."""
        self.accept()
        kind, _, stream, payload = self.recv()
        assert (kind, stream) == (P.HELLO, 0)
        hello = json.loads(payload)
        self.send_json(P.WELCOME, self.welcome_doc(**welcome))
        kind, _, stream, payload = self.recv()
        assert (kind, stream) == (P.READY, 0), (P.KIND_NAMES.get(kind), payload, self.stderr)
        return hello, json.loads(payload)

    def start(self, files: dict, **welcome) -> tuple:
        write_services(self.services_dir, files)
        self.spawn()
        return self.handshake(**welcome)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc is not None:
            self._stderr.close()
        for s in (self.conn, self.listener):
            if s is not None:
                s.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def sup():
    s = FakeSupervisor()
    try:
        yield s
    finally:
        s.close()
