#!/usr/bin/env python3
"""bench/websocket.py - WebSocket channels (issue 22): round trips through a service beside
a Python `websockets` server doing the same work, and the server's memory per idle client.

- **round trips**: CONNS connections of the load client (bench/ws, Rust, pinned to CPU 1),
  each sending a JSON text message of SIZE bytes and waiting for its answer, for DURATION s.
  Oxbus: one server (`oxbus quickstart --no-proxy`, W workers), the whole server and its
  workers pinned to CPU 0, a `websocket` channel whose service parses the message and
  answers `{"echo": <message>}`. The peer: a `websockets` (asyncio) server, pinned to CPU 0
  too, doing the same (json.loads, json.dumps, send). REPS reps, the order rotated each rep;
  medians and the ratio.
- **memory**: IDLE connections that send nothing (they answer pings); the server process's
  RSS before and after they connected, divided by IDLE: bytes per idle client (the workers'
  memory does not move: an idle client costs them nothing). The same for the peer, for
  context.

Knobs (environment): OXBUS_BIN (target/release/oxbus), REPS (3), CONNS (64), DURATION (5),
SIZE (100), WORKERS (2), IDLE (2000), BENCH_VENV (/tmp/oxbus-ws-bench: `pip install
websockets`, made on the first run). Prints a JSON summary last.
"""
import http.client, json, os, shutil, signal, socket, statistics, subprocess, sys, tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
E = os.environ.get
OXBUS = E('OXBUS_BIN') or os.path.join(ROOT, 'target', 'release', 'oxbus')
CLIENT = os.path.join(ROOT, 'target', 'release', 'oxbus-ws-bench')
VENV = E('BENCH_VENV', '/tmp/oxbus-ws-bench')
REPS, CONNS, DURATION = int(E('REPS', '3')), int(E('CONNS', '64')), int(E('DURATION', '5'))
SIZE, WORKERS, IDLE = int(E('SIZE', '100')), int(E('WORKERS', '2')), int(E('IDLE', '2000'))

SERVICE = '''
from oxbus import Service


class WsEcho(Service):
    """The benchmark's WebSocket service: the message parsed (data_format json), answered
    as {"echo": message}."""

    name = 'bench.ws-echo'

    def handle(self):
        self.response.payload = {'echo': self.request.payload}
'''

PEER = '''
import asyncio, json, sys
import websockets


async def echo(ws):
    async for m in ws:
        await ws.send(json.dumps({'echo': json.loads(m)}))


async def main(port):
    async with websockets.serve(echo, '127.0.0.1', port, max_size=1 << 20, ping_interval=30,
                                compression=None):
        print('listening', flush=True)
        await asyncio.Future()

asyncio.run(main(int(sys.argv[1])))
'''


def venv_python():
    py = os.path.join(VENV, 'bin', 'python')
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, '-m', 'venv', VENV])
    if subprocess.run([py, '-c', 'import websockets'], capture_output=True).returncode != 0:
        subprocess.check_call([py, '-m', 'pip', 'install', '-q', 'websockets'])
    return py


def free_port(n=1):
    """A port P with P..P+n-1 free (quickstart puts its admin API on P+1)."""
    for _ in range(200):
        s = socket.socket()
        s.bind(('127.0.0.1', 0))
        p = s.getsockname()[1]
        s.close()
        try:
            for k in range(1, n):
                t = socket.socket()
                t.bind(('127.0.0.1', p + k))
                t.close()
            return p
        except OSError:
            continue
    raise SystemExit('no run of %d free ports' % n)


def request(port, method, path, doc=None, token=None):
    c = http.client.HTTPConnection('127.0.0.1', port, timeout=120)
    headers = {'content-type': 'application/json'}
    if token:
        headers['authorization'] = 'Bearer ' + token
    c.request(method, path, None if doc is None else json.dumps(doc), headers)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def rss(pid):
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * 1024
    raise SystemExit('no VmRSS for pid %d' % pid)


TICK = os.sysconf('SC_CLK_TCK')


def cpu_s(pid):
    """CPU seconds (user + system) of process `pid` so far."""
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def children(pid):
    try:
        with open('/proc/%d/task/%d/children' % (pid, pid)) as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def roundtrip(url):
    out = subprocess.run(['taskset', '-c', '1', CLIENT, 'roundtrip', url, str(CONNS),
                          str(DURATION), str(SIZE)], capture_output=True, text=True,
                         timeout=DURATION + 120)
    if out.returncode != 0:
        raise SystemExit('the load client failed on %s:\n%s' % (url, out.stderr[-2000:]))
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if r['errors'] or not r['count']:
        raise SystemExit('%s: %s' % (url, r))
    return r


def idle_memory(url, pid):
    """Bytes of the process `pid`'s RSS per idle client, IDLE clients connected."""
    time.sleep(1)
    before = rss(pid)
    p = subprocess.Popen(['taskset', '-c', '1', CLIENT, 'idle', url, str(IDLE)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if not line.startswith('connected'):
        p.kill()
        raise SystemExit('the idle client did not connect: %r' % line)
    time.sleep(2)
    after = rss(pid)
    p.stdin.close()
    p.wait(timeout=60)
    return (after - before) / IDLE, before, after


def wait_until(what, check, timeout=90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit('%s: not within %d s' % (what, timeout))


def main():
    for p in (OXBUS, CLIENT):
        if not os.access(p, os.X_OK):
            raise SystemExit('%s missing: cargo build --release -j2 -p oxbus-supervisor; '
                             'CARGO_TARGET_DIR=target cargo build --release --manifest-path '
                             'bench/ws/Cargo.toml' % p)
    py = venv_python()
    tmp = tempfile.mkdtemp(prefix='oxbus-ws-bench-')
    procs = []
    try:
        # Oxbus, pinned to CPU 0 with its workers.
        port = free_port(4)
        log = open(os.path.join(tmp, 'server.log'), 'w')
        server = subprocess.Popen(
            ['taskset', '-c', '0', OXBUS, 'quickstart', os.path.join(tmp, 'env'), '--port',
             str(port), '--workers', str(WORKERS), '--no-proxy'],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(server)
        try:
            wait_until('oxbus ready', lambda: request(port, 'GET', '/readyz')[0] == 200)
        except SystemExit:
            log.flush()
            print(open(log.name).read()[-3000:], file=sys.stderr)
            raise
        token = open(os.path.join(tmp, 'env', 'admin.token')).read().strip()
        admin = port + 1
        st, body = request(admin, 'POST', '/v1/modules',
                           {'modules': [{'name': 'bench_ws', 'source': SERVICE}],
                            'deployed_by': 'bench'}, token)
        if st != 200:
            raise SystemExit('deploy: %d %s' % (st, body[:500]))
        st, body = request(admin, 'POST', '/v1/channels',
                           {'type': 'websocket', 'name': 'bench.ws', 'url_path': '/bench/ws',
                            'service': 'bench.ws-echo'}, token)
        if st != 201:
            raise SystemExit('channel: %d %s' % (st, body[:500]))
        # The peer, pinned to CPU 0 too.
        peer_port = free_port()
        src = os.path.join(tmp, 'peer.py')
        open(src, 'w').write(PEER)
        peer_log = open(os.path.join(tmp, 'peer.log'), 'w')
        peer = subprocess.Popen(['taskset', '-c', '0', py, src, str(peer_port)],
                                stdout=subprocess.PIPE, stderr=peer_log, text=True,
                                start_new_session=True)
        procs.append(peer)
        if peer.stdout.readline().strip() != 'listening':
            raise SystemExit('the websockets peer did not start')
        urls = {'oxbus': 'ws://127.0.0.1:%d/bench/ws' % port,
                'websockets': 'ws://127.0.0.1:%d/' % peer_port}
        print('# bench/websocket.py: CONNS=%d DURATION=%ds SIZE=%d WORKERS=%d REPS=%d; '
              'websockets %s' % (CONNS, DURATION, SIZE, WORKERS, REPS, subprocess.run(
                  [py, '-c', 'import websockets; print(websockets.__version__)'],
                  capture_output=True, text=True).stdout.strip()), flush=True)
        results = {t: [] for t in urls}
        order = list(urls)
        pids = {'oxbus': server.pid, 'websockets': peer.pid}
        for rep in range(REPS):
            for t in order:
                # CPU of the server process and of its children (Oxbus: the workers).
                kids = children(pids[t])
                before = (cpu_s(pids[t]), sum(cpu_s(k) for k in kids))
                r = roundtrip(urls[t])
                after = (cpu_s(pids[t]), sum(cpu_s(k) for k in kids))
                n = r['round_trips_per_s'] * (DURATION + 1)  # the warm-up second too
                r['cpu_us_server'] = (after[0] - before[0]) / n * 1e6
                r['cpu_us_workers'] = (after[1] - before[1]) / n * 1e6
                results[t].append(r)
                print('rep %d %-10s %9.0f round trips/s  p50 %6d us  p99 %6d us  '
                      'CPU/round trip: process %.1f us, workers %.1f us' % (
                          rep + 1, t, r['round_trips_per_s'], r['p50_us'], r['p99_us'],
                          r['cpu_us_server'], r['cpu_us_workers']), flush=True)
            order.reverse()
        med = {t: {k: statistics.median(r[k] for r in rs)
                   for k in ('round_trips_per_s', 'p50_us', 'p99_us', 'cpu_us_server',
                             'cpu_us_workers')}
               for t, rs in results.items()}
        per_rep = [results['oxbus'][i]['round_trips_per_s']
                   / results['websockets'][i]['round_trips_per_s'] for i in range(REPS)]
        mem = {'oxbus': idle_memory(urls['oxbus'], server.pid),
               'websockets': idle_memory(urls['websockets'], peer.pid)}
        print('medians')
        for t, m in med.items():
            print('  %-10s %9.0f round trips/s  p50 %6d us  p99 %6d us  CPU/round trip: '
                  'process %.1f us, workers %.1f us' % (
                      t, m['round_trips_per_s'], m['p50_us'], m['p99_us'], m['cpu_us_server'],
                      m['cpu_us_workers']))
        ratio = med['oxbus']['round_trips_per_s'] / med['websockets']['round_trips_per_s']
        print('ratio oxbus/websockets round trips: %.2fx (per rep %s)  (target >= 3x)' % (
            ratio, ', '.join('%.2f' % x for x in per_rep)))
        for t, (per, before, after) in mem.items():
            print('memory per idle client, %-10s %7.0f bytes (%d clients: RSS %.1f -> %.1f MiB)'
                  % (t, per, IDLE, before / 2**20, after / 2**20))
        print('(target: oxbus <= 16384 bytes per idle client)')
        print(json.dumps({'medians': med, 'ratio': ratio, 'per_rep': per_rep,
                          'memory_per_idle_client': {t: m[0] for t, m in mem.items()}}))
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
