#!/usr/bin/env python3
"""bench/redis_get.py - Redis GET from a service through the server's outgoing Redis
connection (`self.out.redis`, issue 21) beside redis-py doing the same in the same worker
processes, at the same concurrency, against the machine's Redis (127.0.0.1:6379).

Two measurements, each REPS times with the order of the targets rotated every rep:

- **loop**: one invocation does K GETs in a row (bench.redis-loop, timed by the driver from
  the first invocation sent to the last answered); CONC invocations run at once through the
  admin API's invoke, so CONC handler threads of the workers call Redis concurrently.
  Reported: GETs/s over the whole batch, and each thread's CPU per GET inside the worker.
- **per invocation**: one GET per invocation (bench.redis-get-oxbus / -redispy behind GET
  channels), driven by wrk with CONNS connections for DURATION s: calls/s, p50, p99. The
  HTTP path is the same for both targets, so this ratio is the end-to-end one.

The server runs `oxbus quickstart <tmp env> --workers W --no-proxy` with the venv's python
for its workers (OXBUS_SERVER_PYTHON); the venv (/tmp/oxbus-redis-bench-venv, `pip install
redis`) is made on the first run. Knobs (environment): OXBUS_BIN (default
target/release/oxbus; OXBUS_BIN=target/debug/oxbus for a smoke run), REPS (3), K (2000),
CONC (8), WORKERS (2), CONNS (32), THREADS (2), DURATION (5), POOL (4: the connection's
pool_size), SIZE (100: value bytes). Prints a JSON summary last.
"""
import http.client, json, os, re, shutil, signal, socket, statistics, subprocess, sys
import tempfile, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
E = os.environ.get
OXBUS = E('OXBUS_BIN') or os.path.join(ROOT, 'target', 'release', 'oxbus')
VENV = E('BENCH_VENV', '/tmp/oxbus-redis-bench-venv')
REPS, K, CONC = int(E('REPS', '3')), int(E('K', '2000')), int(E('CONC', '8'))
WORKERS, CONNS, THREADS = int(E('WORKERS', '2')), int(E('CONNS', '32')), int(E('THREADS', '2'))
DURATION, POOL, SIZE = int(E('DURATION', '5')), int(E('POOL', '4')), int(E('SIZE', '100'))
KEY = 'oxbus-bench:get:%d' % os.getpid()
TARGETS = ['oxbus', 'redispy']


def venv_python():
    py = os.path.join(VENV, 'bin', 'python')
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, '-m', 'venv', VENV])
    if subprocess.run([py, '-c', 'import redis'], capture_output=True).returncode != 0:
        subprocess.check_call([py, '-m', 'pip', 'install', '-q', 'redis'])
    return py


def free_ports(n):
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
    c = http.client.HTTPConnection('127.0.0.1', port, timeout=600)
    headers = {'content-type': 'application/json'}
    if token:
        headers['authorization'] = 'Bearer ' + token
    c.request(method, path, None if doc is None else json.dumps(doc), headers)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def wrk(port, path):
    out = subprocess.run(['wrk', '-t%d' % THREADS, '-c%d' % CONNS, '-d%ds' % DURATION,
                          '--timeout', '10s', '-s', os.path.join(HERE, 'outgoing', 'get.lua'),
                          'http://127.0.0.1:%d%s' % (port, path)],
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r'RESULT (.*?) \(', out)
    if not m:
        raise SystemExit('wrk printed no RESULT line:\n' + out)
    return {k: float(v) for k, v in (kv.split('=') for kv in m.group(1).split())}


def loop(admin_port, token, target):
    """CONC concurrent invocations of K GETs each: GETs/s of the batch, CPU per GET."""
    results, errors = [], []

    def one():
        st, data = request(admin_port, 'POST', '/v1/invoke/bench.redis-loop',
                           {'target': target, 'n': K}, token)
        if st != 200:
            errors.append('%d %s' % (st, data[:300]))
        else:
            results.append(json.loads(data))

    threads = [threading.Thread(target=one) for _ in range(CONC)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise SystemExit('bench.redis-loop %s: %s' % (target, errors[0]))
    cpu = sum(r['thread_cpu_s'] for r in results) / (K * CONC)
    return {'gets_per_s': K * CONC / wall, 'cpu_us_per_get': cpu * 1e6,
            'inner_gets_per_s': sum(K / r['wall_s'] for r in results)}


def main():
    if not os.access(OXBUS, os.X_OK):
        raise SystemExit('%s missing: cargo build --release -j2 -p oxbus-supervisor' % OXBUS)
    py = venv_python()
    if os.path.realpath(sys.prefix) != os.path.realpath(VENV) and not E('BENCH_IN_VENV'):
        os.execve(py, [py] + sys.argv, dict(os.environ, BENCH_IN_VENV='1'))
    import redis
    r = redis.Redis(host='127.0.0.1', port=6379)
    r.set(KEY, os.urandom(SIZE))
    tmp = tempfile.mkdtemp(prefix='oxbus-redis-bench-')
    env_dir = os.path.join(tmp, 'env')
    port = free_ports(2)
    log = open(os.path.join(tmp, 'server.log'), 'w')
    env = dict(os.environ, OXBUS_SERVER_PYTHON=py, BENCH_REDIS_KEY=KEY,
               BENCH_REDISPY_POOL=str(max(POOL, 64)))
    server = subprocess.Popen([OXBUS, 'quickstart', env_dir, '--port', str(port), '--workers',
                               str(WORKERS), '--no-proxy'], stdout=log,
                              stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.time() + 90
        while True:
            try:
                if request(port, 'GET', '/readyz')[0] == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit('the server did not start:\n' + open(log.name).read()[-3000:])
            time.sleep(0.1)
        admin_port = port + 1
        token = open(os.path.join(env_dir, 'admin.token')).read().strip()

        def ok(method, path, doc=None):
            st, data = request(admin_port, method, path, doc, token)
            if st >= 300:
                raise SystemExit('admin %s %s: %d %s' % (method, path, st, data[:500]))
            return data

        ok('POST', '/v1/modules', {'modules': [{
            'name': 'bench_redis_get',
            'source': open(os.path.join(HERE, 'redis_get_svc.py')).read()}]})
        for t in TARGETS:
            ok('POST', '/v1/channels', {'name': 'bench-redis-' + t,
                                        'url_path': '/bench/redis/' + t, 'methods': ['GET'],
                                        'service': 'bench.redis-get-' + t})
        ok('PUT', '/v1/outgoing/redis/bench', {'address': 'redis://127.0.0.1:6379/0',
                                                'pool_size': POOL})
        # Warm-up, and a check that both answer.
        for t in TARGETS:
            deadline = time.time() + 30
            while True:
                st, data = request(port, 'GET', '/bench/redis/' + t)
                if st == 200 and json.loads(data)['len'] == SIZE:
                    break
                if time.time() > deadline:
                    raise SystemExit('/bench/redis/%s: %d %s' % (t, st, data[:300]))
                time.sleep(0.1)
            loop(admin_port, token, t)
        version = subprocess.run([OXBUS, '--version'], capture_output=True,
                                 text=True).stdout.strip()
        commit = subprocess.run(['git', '-C', ROOT, 'describe', '--always', '--dirty'],
                                capture_output=True, text=True).stdout.strip()
        print('# %s (%s) at %s, redis-py %s, %d workers, pool_size %d, %d-byte value; loop: '
              '%d invocations x %d GETs at once; per invocation: wrk -t%d -c%d %d s; %d reps'
              % (version, commit, OXBUS, redis.__version__, WORKERS, POOL, SIZE, CONC, K,
                 THREADS, CONNS, DURATION, REPS), flush=True)
        loops = {t: [] for t in TARGETS}
        calls = {t: [] for t in TARGETS}
        for rep in range(REPS):
            turn = TARGETS[rep % 2:] + TARGETS[:rep % 2]
            for t in turn:
                res = loop(admin_port, token, t)
                loops[t].append(res)
                print('rep %d loop    %-8s %9.0f GETs/s  %6.1f us CPU/GET in the worker thread'
                      % (rep + 1, t, res['gets_per_s'], res['cpu_us_per_get']), flush=True)
            for t in turn:
                res = wrk(port, '/bench/redis/' + t)
                if res['errors']:
                    raise SystemExit('/bench/redis/%s: %d errors' % (t, res['errors']))
                calls[t].append(res)
                print('rep %d per-inv %-8s %9.0f calls/s p50 %6.2f ms p99 %6.2f ms'
                      % (rep + 1, t, res['rps'], res['p50_ms'], res['p99_ms']), flush=True)
        med = statistics.median
        summary = {
            'loop': {t: {'gets_per_s': med(x['gets_per_s'] for x in loops[t]),
                         'cpu_us_per_get': med(x['cpu_us_per_get'] for x in loops[t])}
                     for t in TARGETS},
            'per_invocation': {t: {'calls_per_s': med(x['rps'] for x in calls[t]),
                                   'p50_ms': med(x['p50_ms'] for x in calls[t]),
                                   'p99_ms': med(x['p99_ms'] for x in calls[t])}
                               for t in TARGETS},
        }
        summary['loop']['ratio'] = (summary['loop']['oxbus']['gets_per_s']
                                    / summary['loop']['redispy']['gets_per_s'])
        summary['per_invocation']['ratio'] = (
            summary['per_invocation']['oxbus']['calls_per_s']
            / summary['per_invocation']['redispy']['calls_per_s'])
        print('\nmedians: loop oxbus %.0f vs redis-py %.0f GETs/s -> %.2fx; per invocation '
              'oxbus %.0f vs redis-py %.0f calls/s -> %.2fx (issue 21 target: >= 2x)'
              % (summary['loop']['oxbus']['gets_per_s'],
                 summary['loop']['redispy']['gets_per_s'], summary['loop']['ratio'],
                 summary['per_invocation']['oxbus']['calls_per_s'],
                 summary['per_invocation']['redispy']['calls_per_s'],
                 summary['per_invocation']['ratio']))
        print(json.dumps(summary))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        r.delete(KEY)
        if not E('KEEP_ENV'):
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
