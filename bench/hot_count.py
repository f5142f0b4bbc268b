#!/usr/bin/env python3
"""bench/hot_count.py - instructions and system calls per request of bench/run.sh's workload
(POST /echo, the harness's body.json, through `oxbus quickstart`), on the server or on a
worker, counted rather than timed, so that a busy machine gives the same figure as a quiet one.

One side runs under valgrind's callgrind with instrumentation off; the script warms up,
switches instrumentation on (`callgrind_control -i on`), sends exactly N requests from C
keep-alive connections on loopback, switches it off and dumps: the dump holds the
instructions of those N requests only (plus whatever timers fired meanwhile, which the
quiet side of the process makes small). With ``--syscalls`` the same window is counted with
``perf stat`` instead (kernel tracepoints, attached to the running process: its system
calls by kind, context switches and CPU time per request; the process runs natively).

  --side server   the release server (quickstart, in-process) under callgrind, workers native
  --side worker   one worker under callgrind (``--workers 1``; the interpreter is a wrapper
                  that runs python3 under valgrind), the server native

Requests go out as wrk's do (Host, Content-Type, Content-Length, the JSON body), each
connection waiting for its answer before the next request, so C is the number in flight.
C=1 is the fully serial case (no batching anywhere: every request pays its own wake-ups
and system calls); C=64 is bench/run.sh's.

Usage:  python3 bench/hot_count.py --oxbus target/release/oxbus --side server [-n 2000] [-c 1]
        python3 bench/hot_count.py --oxbus ... --side worker --syscalls -c 64
"""

import argparse
import glob
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

BODY_FILE = '/work/shared/bench/peers/body.json'
#: The system calls counted one by one with --syscalls (all of them are counted in total).
SYSCALLS = ('futex', 'epoll_wait', 'recvfrom', 'sendto', 'read', 'write', 'writev',
            'recvmsg', 'sendmsg', 'clock_nanosleep', 'accept4', 'epoll_ctl')


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_http(port, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen('http://127.0.0.1:%d/readyz' % port, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit('the server did not become ready in %ds' % timeout)


def load(port, body, total, conns):
    """Send exactly ``total`` requests over ``conns`` keep-alive connections; check every
    answer is a 200 carrying ``"ok":true``."""
    req = (b'POST /echo HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n'
           b'Content-Length: %d\r\n\r\n' % (port, len(body))) + body
    sel = selectors.DefaultSelector()
    left = [total]
    done = [0]

    def start(sock, st):
        if left[0] > 0:
            left[0] -= 1
            st['buf'] = b''
            sock.sendall(req)
            return True
        return False

    socks = []
    for _ in range(min(conns, total)):
        s = socket.create_connection(('127.0.0.1', port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        st = {'buf': b''}
        socks.append(s)
        sel.register(s, selectors.EVENT_READ, st)
        start(s, st)
    while done[0] < total:
        for key, _ in sel.select(timeout=120):
            s, st = key.fileobj, key.data
            chunk = s.recv(65536)
            if not chunk:
                raise SystemExit('the server closed a connection')
            st['buf'] += chunk
            head, sep, rest = st['buf'].partition(b'\r\n\r\n')
            if not sep:
                continue
            m = re.search(rb'content-length: *(\d+)', head, re.I)
            if m is None or len(rest) < int(m.group(1)):
                continue
            if not head.startswith(b'HTTP/1.1 200') or b'"ok":true' not in rest:
                raise SystemExit('unexpected answer: %r' % st['buf'][:300])
            done[0] += 1
            start(s, st)
    for s in socks:
        s.close()


def callgrind_total(path):
    total = None
    with open(path) as f:
        for line in f:
            if line.startswith('totals:'):  # at the end ('summary:' at the top may be 0)
                total = int(line.split()[1])
    if total is None:
        raise SystemExit('no total in %s' % path)
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--oxbus', required=True)
    ap.add_argument('--side', choices=('server', 'worker'), required=True)
    ap.add_argument('-n', '--requests', type=int, default=2000)
    ap.add_argument('-c', '--conns', type=int, default=1)
    ap.add_argument('--warmup', type=int, default=300)
    ap.add_argument('--syscalls', action='store_true',
                    help='count system calls and context switches instead (perf stat)')
    ap.add_argument('--keep', action='store_true', help='keep the temp dir')
    args = ap.parse_args()
    oxbus = os.path.abspath(args.oxbus)
    with open(BODY_FILE, 'rb') as f:
        body = f.read().strip()
    tmp = tempfile.mkdtemp(prefix='oxbus-hot.')
    port = free_port()
    env = dict(os.environ, PYTHONHASHSEED='0')
    cg = [] if args.syscalls else ['valgrind', '--tool=callgrind', '--instr-atstart=no',
                                  '--callgrind-out-file=%s/cg.%%p' % tmp]
    workers = 2
    if args.side == 'worker':
        workers = 1
        wrapper = os.path.join(tmp, 'python')
        python = os.path.realpath(shutil.which('python3'))
        with open(wrapper, 'w') as f:
            # Under callgrind one echo takes milliseconds: without a longer hand-off time
            # the watchdog would promote a new leader during nearly every call, which a
            # native worker never does on this workload.
            f.write('#!/bin/sh\n%sexec %s %s "$@"\n'
                    % ('' if args.syscalls else 'export OXBUS_HANDOFF_MS=1000\n',
                       ' '.join(cg), python))
        os.chmod(wrapper, 0o755)
        env['OXBUS_SERVER_PYTHON'] = wrapper
        # A worker under valgrind starts and answers slowly: give it room.
        env['OXBUS_WORKERS_STARTUP_TIMEOUT_MS'] = '600000'
        env['OXBUS_WORKERS_HEARTBEAT_MS'] = '60000'
        server_cmd = [oxbus]
    else:
        server_cmd = cg + [oxbus]
    cmd = server_cmd + ['quickstart', os.path.join(tmp, 'env'), '--port', str(port),
                        '--workers', str(workers), '--no-proxy', '--no-dashboard']
    log = open(os.path.join(tmp, 'server.log'), 'w')
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    try:
        wait_http(port, 900)
        load(port, body, args.warmup, args.conns)
        if args.side == 'server':
            target = proc.pid
        else:
            pids = subprocess.run(['pgrep', '-f', '-P', str(proc.pid), 'oxbus.worker'],
                                  capture_output=True, text=True).stdout.split()
            if len(pids) != 1:
                raise SystemExit('expected one worker process, found %r' % pids)
            target = int(pids[0])
        if args.syscalls:
            out = os.path.join(tmp, 'perf.txt')
            events = ['raw_syscalls:sys_enter', 'context-switches', 'task-clock'] + [
                'syscalls:sys_enter_' + name for name in SYSCALLS]
            st = subprocess.Popen(['perf', 'stat', '-x', ',', '-o', out, '-p', str(target)]
                                  + [a for e in events for a in ('-e', e)])
            time.sleep(0.5)
            load(port, body, args.requests, args.conns)
            st.send_signal(signal.SIGINT)
            st.wait()
            print('%s side, %d conns, %d requests, per request:'
                  % (args.side, args.conns, args.requests))
            with open(out) as f:
                for line in f:
                    cols = line.strip().split(',')
                    if len(cols) > 2 and cols[0] and cols[0][0].isdigit():
                        value = float(cols[0])
                        if value:
                            print('  %-36s %8.3f' % (cols[2].replace('syscalls:sys_enter_', '')
                                                     + (' (ms)' if cols[1] == 'msec' else ''),
                                                     value / args.requests))
            return
        subprocess.run(['callgrind_control', '-i', 'on', str(target)], check=True,
                       capture_output=True)
        load(port, body, args.requests, args.conns)
        subprocess.run(['callgrind_control', '-i', 'off', str(target)], check=True,
                       capture_output=True)
        for old in glob.glob('%s/cg.%d*' % (tmp, target)):
            os.remove(old)
        subprocess.run(['callgrind_control', '-d', 'hot', str(target)], check=True,
                       capture_output=True)
        dumps = glob.glob('%s/cg.%d*' % (tmp, target))
        total = sum(callgrind_total(d) for d in dumps)
        print('%s side, %d conns, %d requests: %.0f instructions/request   (dumps: %s)'
              % (args.side, args.conns, args.requests, total / args.requests,
                 ' '.join(dumps)))
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=120)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print('kept', tmp, file=sys.stderr)


if __name__ == '__main__':
    main()
