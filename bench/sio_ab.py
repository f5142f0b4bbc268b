#!/usr/bin/env python3
"""bench/sio_ab.py - the worker's per-request Python cost, before and after a change, A/B in
one process.

Loads the `oxbus` package of a base revision (`git show REV:python-worker/oxbus/...`, default
the commit before issue 24's SimpleIO work) as `oxbus_base` next to the working tree's
`oxbus`, then times the decoding of a CALL's payload (``decode_call``) and `Dispatcher.run`
(everything the worker does for one CALL: its meta and body, routing, the service instance,
request/response, SimpleIO, hooks, the REPLY frame) on the same CALLs in
both, in interleaved rounds so that machine noise hits both alike. Reports the median µs per
call of each and the ratio B/A, per workload:

  echo       the benchmark's demo.echo: POST /echo, a 199-byte JSON object, no SimpleIO,
             with the CALL meta the server sends for bench/run.sh's request
  simpleio   a service declaring three name-typed inputs and two outputs

With ``--instructions`` it counts CPU instructions per call instead (valgrind's callgrind,
one process per side and workload, a run of 1 call subtracted from a run of N+1 so startup
and imports cancel out; PYTHONHASHSEED=0 so that dict layouts do not vary between runs): the same number on a quiet or a busy machine, so a difference of
0.5 % is a real one.

Usage:  python3 bench/sio_ab.py [--base REV] [--rounds 15] [--calls 20000]
        python3 bench/sio_ab.py --instructions [--calls 5000]
"""

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BODY = json.dumps({'id': 12345, 'name': 'Jane Doe', 'email': 'jane@example.com',
                   'tags': ['a', 'b', 'c'], 'active': True, 'score': 98.6,
                   'address': {'street': '1 Main St', 'city': 'Springfield', 'zip': '12345'},
                   'note': 'x' * 20}, separators=(',', ':')).encode()


def load_base(rev, where):
    files = subprocess.run(['git', '-C', ROOT, 'ls-tree', '--name-only', rev,
                            'python-worker/oxbus/'], check=True, capture_output=True,
                           text=True).stdout.split()
    pkg = os.path.join(where, 'oxbus_base')
    os.makedirs(pkg)
    for f in files:
        data = subprocess.run(['git', '-C', ROOT, 'show', '%s:%s' % (rev, f)], check=True,
                              capture_output=True).stdout
        with open(os.path.join(pkg, os.path.basename(f)), 'wb') as out:
            out.write(data)
    sys.path.insert(0, where)
    return importlib.import_module('oxbus_base')


def services(pkg):
    class Echo(pkg.Service):
        name = 'demo.echo'

        def handle(self):
            payload = self.request.payload
            if not isinstance(payload, dict):
                payload = {'payload': payload}
            payload['ok'] = True
            self.response.payload = payload

    class Typed(pkg.Service):
        name = 'demo.typed'
        input = 'id', 'name', '-is_active'
        output = 'id', '-name'

        def handle(self):
            self.response.payload = dict(self.request.input)

    return {Echo.name: Echo, Typed.name: Typed}


#: The CALL meta the server sends for bench/run.sh's request (wrk's POST /echo through a
#: quickstart environment), as captured from the worker socket: a varying cid, remote
#: address and traceparent, the rest the same on every request.
SERVER_META = {'op': 'invoke', 'service': 'demo.echo', 'cid': 'd1cba197000000003d39',
               'channel': 'rest', 'data_format': 'json', 'method': 'POST', 'path': '/echo',
               'params': {}, 'query': '',
               'headers': [['host', '127.0.0.1:33267'], ['content-type', 'application/json'],
                           ['content-length', '199']],
               'deadline_ms': 29999, 'remote_addr': '127.0.0.2', 'scheme': 'http',
               'port': 33267, 'channel_name': '/echo',
               'traceparent': '00-bbd496f6ee5a4266e97695eae198dad2-f516c1b85093b8f1-00'}


def runner(pkg, service, body):
    """A function running N calls of ``service`` as the worker does for each CALL frame:
    the frame's payload decoded (``decode_call``: meta and body), then ``Dispatcher.run``."""
    dispatch = importlib.import_module(pkg.__name__ + '._dispatch')
    protocol = importlib.import_module(pkg.__name__ + '._protocol')
    d = dispatch.Dispatcher(services(pkg))
    meta = dict(SERVER_META, service=service)
    fields = getattr(protocol, 'COMPACT_INVOKE_FIELDS', None)
    if fields is not None:  # protocol 2: the supervisor sends the compact form
        meta = protocol.encode_json([meta.get(f) for f in fields] + [
            {k: v for k, v in meta.items() if k not in fields}])
    payload = protocol.encode_call(1, meta, body)[10:]  # the frame's payload
    decode_call = protocol.decode_call
    m, b = decode_call(payload)
    frame = d.run(1, m, b)
    assert b'"status":200' in frame[:200] or b'ok' in frame, frame[:200]
    run = d.run

    def timed(n):
        t0 = time.perf_counter()
        for _ in range(n):
            m, b = decode_call(payload)
            run(1, m, b)
        return (time.perf_counter() - t0) / n * 1e6
    return timed


TYPED_BODY = b'{"id":"42","name":"Ann","is_active":"yes","x":1}'
WORKLOADS = (('echo', 'demo.echo', BODY), ('simpleio', 'demo.typed', TYPED_BODY))


def one_side(argv):
    """``--one-side WHICH SERVICE N WHERE``: run N calls of one side (under callgrind)."""
    which, service, n, where = argv
    sys.path.insert(0, os.path.join(ROOT, 'python-worker'))
    sys.path.insert(0, where)
    pkg = importlib.import_module('oxbus_base' if which == 'A' else 'oxbus')
    body = dict((w[1], w[2]) for w in WORKLOADS)[service]
    timed = runner(pkg, service, body)
    if int(n):
        timed(int(n))


def instructions(args, where):
    import re
    import shutil
    if not shutil.which('valgrind'):
        sys.exit('--instructions needs valgrind (apt-get install valgrind)')
    python = os.path.realpath(sys.executable)  # not a pyenv shim: valgrind follows no exec

    def count(which, service, n):
        out = os.path.join(where, 'cg.out')
        log = subprocess.run(['valgrind', '--tool=callgrind', '--callgrind-out-file=' + out,
                              python, os.path.abspath(__file__), '--one-side', which, service,
                              str(n), where], capture_output=True, text=True,
                             env=dict(os.environ, PYTHONHASHSEED='0')).stderr
        m = re.search(r'Collected : (\d+)', log)
        if not m:
            sys.exit('callgrind gave no count:\n' + log[-2000:])
        return int(m.group(1))

    n = args.calls
    for label, service, _ in WORKLOADS:
        per = {}
        for which in ('A', 'B'):
            per[which] = (count(which, service, n + 1) - count(which, service, 1)) / n
        print('%-9s A %8.0f instructions/call   B %8.0f   B/A %.4f'
              % (label, per['A'], per['B'], per['B'] / per['A']))


def main():
    if sys.argv[1:2] == ['--one-side']:
        return one_side(sys.argv[2:])
    ap = argparse.ArgumentParser()
    ap.add_argument('--base', default='f93fe6e')
    ap.add_argument('--rounds', type=int, default=15)
    ap.add_argument('--calls', type=int, default=None)
    ap.add_argument('--instructions', action='store_true')
    args = ap.parse_args()
    if args.calls is None:
        args.calls = 5000 if args.instructions else 20000
    sys.path.insert(0, os.path.join(ROOT, 'python-worker'))
    import oxbus
    with tempfile.TemporaryDirectory() as tmp:
        base = load_base(args.base, tmp)
        rev = subprocess.run(['git', '-C', ROOT, 'rev-parse', '--short', 'HEAD'],
                             capture_output=True, text=True).stdout.strip()
        print('A = %s (oxbus at %s), B = working tree (HEAD %s%s); %s, python %s'
              % ('oxbus_base', args.base, rev,
                 ', modified' if subprocess.run(
                     ['git', '-C', ROOT, 'diff', '--quiet', 'HEAD', '--',
                      'python-worker/oxbus']).returncode else '',
                 'callgrind, %d calls' % args.calls if args.instructions
                 else '%d rounds x %d calls' % (args.rounds, args.calls),
                 sys.version.split()[0]))
        if args.instructions:
            return instructions(args, tmp)
        for label, service, body in WORKLOADS:
            a, b = runner(base, service, body), runner(oxbus, service, body)
            a(2000), b(2000)  # warm up
            ra, rb = [], []
            for i in range(args.rounds):
                # Alternate the order so neither side always runs first in a round.
                if i % 2:
                    ra.append(a(args.calls)); rb.append(b(args.calls))
                else:
                    rb.append(b(args.calls)); ra.append(a(args.calls))
            ma, mb = statistics.median(ra), statistics.median(rb)
            spread = lambda r: (max(r) - min(r)) / statistics.median(r) * 100
            print('%-9s A %6.2f us/call (spread %4.1f%%)   B %6.2f us/call (spread %4.1f%%)   '
                  'B/A %.3f' % (label, ma, spread(ra), mb, spread(rb), mb / ma))


if __name__ == '__main__':
    main()
