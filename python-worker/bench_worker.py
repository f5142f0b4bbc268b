#!/usr/bin/env python3
"""Micro-benchmark of the Python worker alone: pipelined echo calls over the IPC socket.

This script plays the supervisor: it listens on a Unix socket, spawns a real
``python -m oxbus.worker``, completes the handshake and keeps ``--inflight`` CALLs
outstanding for ``--seconds``, re-sending a call on each stream as soon as its REPLY comes
back. The service does the same work as the peer harness's "echo JSON" app
(``json.loads``, add ``"ok": true``, ``json.dumps``), and the CALL meta looks like what
the supervisor sends for an HTTP request (headers included), so the figure is the Python
side's real per-request cost.

It prints calls/s, the wall time per call (1/throughput) and, the number to watch, the
worker's own CPU time per call (user+system from /proc), which is what a request costs the
Python side no matter how the client and the worker share the cores.

    python3 python-worker/bench_worker.py [--seconds 5] [--inflight 64] [--python PATH]
        [--threads 8] [--pin] [--profile FILE]

``--profile FILE`` runs the worker's serving threads under cProfile and writes the stats
to FILE when the benchmark ends (the figures are then slower, of course).

Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from oxbus import _protocol as P  # noqa: E402

# The peer harness's body (199 bytes).
BODY = (b'{"id":12345,"name":"echo-test","tags":["a","b","c"],"payload":"'
        + b'x' * 86 + b'","nested":{"k1":1,"k2":2.5,"k3":null,"k4":false}}')

SERVICE = '''
from oxbus import Service

class Echo(Service):
    name = 'bench.echo'

    def handle(self):
        doc = self.request.payload
        doc['ok'] = True
        self.response.payload = doc
'''


# Run the worker with every pool thread under cProfile; stats are dumped when the client
# hangs up (the worker's "lost the supervisor" exit path).
PROFILED_WORKER = '''
import cProfile, os, sys, threading
from oxbus import _runtime
profile = cProfile.Profile()
thread_main, die = _runtime.Worker._thread_main, _runtime.Worker._die
def profiled(self):
    profile.enable()
    thread_main(self)
def dump(self, code, message):
    profile.disable()
    profile.dump_stats(os.environ['OXBUS_BENCH_PROFILE'])
    os._exit(0)
_runtime.Worker._thread_main, _runtime.Worker._die = profiled, dump
sys.exit(_runtime.main(sys.argv[1:]))
'''


def cpu_seconds(pid: int) -> tuple:
    """(user, system) CPU seconds of a process so far."""
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rsplit(')', 1)[1].split()
    tick = os.sysconf('SC_CLK_TCK')
    return int(fields[11]) / tick, int(fields[12]) / tick


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--seconds', type=float, default=5.0)
    parser.add_argument('--inflight', type=int, default=64)
    parser.add_argument('--threads', type=int, default=8, help='WELCOME threads')
    parser.add_argument('--python', default=sys.executable, help='interpreter of the worker')
    parser.add_argument('--pin', action='store_true',
                        help='pin the worker to CPU 1 and this client to CPU 0')
    parser.add_argument('--profile', metavar='FILE',
                        help='profile the worker with cProfile, write the stats to FILE')
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix='oxbench-')
    sock_path = os.path.join(tmp, 's.sock')
    services = os.path.join(tmp, 'services')
    os.mkdir(services)
    with open(os.path.join(services, 'bench.py'), 'w') as f:
        f.write(SERVICE)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(1)
    env = dict(os.environ, PYTHONPATH=HERE)
    cmd = [args.python, '-m', 'oxbus.worker']
    if args.profile:
        # cProfile is thread-local, so it is switched on inside every pool thread.
        env['OXBUS_BENCH_PROFILE'] = os.path.abspath(args.profile)
        cmd = [args.python, '-c', PROFILED_WORKER]
    cmd += ['--socket', sock_path, '--worker-id', '1', '--token', 'bench']
    if args.pin:
        cmd = ['taskset', '-c', '1'] + cmd
        os.sched_setaffinity(0, {0})
    proc = subprocess.Popen(cmd, env=env)
    try:
        conn, _ = listener.accept()
        reader = P.FrameReader()

        def read_one() -> tuple:
            while True:
                frames = reader.feed(conn.recv_into(reader.writable()))
                if frames:
                    assert len(frames) == 1
                    return frames[0]

        assert read_one()[0] == P.HELLO
        conn.sendall(P.encode_frame(P.WELCOME, P.encode_json({
            'protocol': P.PROTOCOL_VERSION, 'worker_id': 1, 'generation': 1, 'threads': args.threads,
            'services_dir': services, 'heartbeat_ms': 0, 'log_level': 'warning'})))
        kind, _, _, payload = read_one()
        assert kind == P.READY, payload
        print('worker ready: %s' % payload.decode())

        frames = {}
        for stream in range(1, args.inflight + 1):
            meta = {'op': 'invoke', 'service': 'bench.echo', 'cid': '%020x' % stream,
                    'channel': 'rest', 'data_format': 'json', 'method': 'POST',
                    'path': '/echo', 'params': {}, 'query': '',
                    'headers': [['host', '127.0.0.1:17010'], ['user-agent', 'wrk'],
                                ['content-type', 'application/json'],
                                ['content-length', str(len(BODY))]],
                    'deadline_ms': 30000}
            frames[stream] = P.encode_call(stream, meta, BODY)
        expected = json.loads(BODY)
        expected['ok'] = True

        buf = bytearray(1 << 20)
        view = memoryview(buf)
        unpack = struct.Struct('>IBBI').unpack_from
        have = 0
        done = 0
        checked = False
        conn.sendall(b''.join(frames.values()))
        cpu0 = cpu_seconds(proc.pid)
        t0 = time.perf_counter()
        deadline = t0 + args.seconds
        while True:
            n = conn.recv_into(view[have:])
            if not n:
                raise SystemExit('worker closed the connection')
            have += n
            pos = 0
            again = []
            while have - pos >= 10:
                length, kind, _, stream = unpack(buf, pos)
                if have - pos - 10 < length:
                    break
                if kind == P.REPLY:
                    if not checked:  # check one answer, so we know we measure real work
                        meta, body = P.decode_call(bytes(buf[pos + 10:pos + 10 + length]))
                        assert meta['status'] == 200 and json.loads(body) == expected, body
                        checked = True
                    again.append(frames[stream])
                pos += 10 + length
            done += len(again)
            if pos:
                buf[:have - pos] = buf[pos:have]
                have -= pos
            if time.perf_counter() >= deadline:
                break
            if again:
                conn.sendall(b''.join(again))
        elapsed = time.perf_counter() - t0
        user, system = (b - a for a, b in zip(cpu0, cpu_seconds(proc.pid)))
        cpu = user + system
        print('calls=%d seconds=%.2f inflight=%d' % (done, elapsed, args.inflight))
        print('throughput: %.0f calls/s  (%.2f us/call wall)' % (
            done / elapsed, elapsed / done * 1e6))
        print('worker CPU: %.2f us/call (user %.2f, system %.2f; %.0f%% of one core)' % (
            cpu / done * 1e6, user / done * 1e6, system / done * 1e6, cpu / elapsed * 100))
    finally:
        if args.profile:
            conn.close()  # the worker dumps its profile when it sees the hang-up
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        proc.kill()
        proc.wait()
        listener.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
